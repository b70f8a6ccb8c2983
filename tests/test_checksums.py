"""Checksums (issue 19 item 13): damage SQLite cannot see (a flipped byte in a delta row or a base
row, a deleted delta row) is a finding of fsck and FAILED_PRECONDITION naming table, token and
version from the server, never a row served as truth; catalogs from before checksums still open."""
import sqlite3

import numpy as np
import pytest
from click.testing import CliRunner

from clients.client import MemoryClient
from memsvc.cli import cli
from memsvc.core.errors import FailedPrecondition
from memsvc.core.values import RowOp
from memsvc.store import KnowledgeBase, StoreConfig
from memsvc.store.backup import fsck
from tests.conftest import WORDS, served_kb, serving

ROW_BYTES = 3 * 8 * 2  # a token's rows in the float16 base: 3 layers x 8


def edited_kb(data):
    """served_kb + 2: Spain (0) set in layer 1; 3: Spain scaled in layer 2 (a partial write over 2's row);
    4: France (2) set in every layer."""
    served_kb(data)
    with KnowledgeBase(StoreConfig(data_dir=data)) as kb:
        kb.edit("stem", [RowOp("set", token="Spain", vector=np.full(8, 2.0), layers=[1])])
        kb.edit("stem", [RowOp("scale", token="Spain", alpha=3.0, layers=[2])])
        kb.edit("stem", [RowOp("set", token="France", vector=np.full(8, 5.0))])
        expected = np.stack([kb.lookup("stem", np.arange(64), version=v).in_request_order() for v in range(1, 5)])
    return data, expected


def sql(data, statement, params=()):
    with sqlite3.connect(data / "catalog.db") as db:
        db.execute(statement, params)


def flip_delta(data, token, layer, commit):
    with sqlite3.connect(data / "catalog.db") as db:
        blob = bytearray(db.execute("select data from deltas where token_id=? and layer=? and commit_id=?",
                                    [token, layer, commit]).fetchone()[0])
        blob[1] ^= 0x01  # the low mantissa bit of a float16: a finite value, wrong
        db.execute("update deltas set data=? where token_id=? and layer=? and commit_id=?", [bytes(blob), token, layer, commit])


def flip_base(data, token):
    path = data / "bases" / "stem" / "v1.npy"
    raw = bytearray(path.read_bytes())
    raw[len(raw) - (64 - token) * ROW_BYTES + 3] ^= 0x01
    path.write_bytes(bytes(raw))


def served_rows(data, expected, damaged_versions):
    """Read every (version, token) alone from a server: the damaged (version, token) pairs are
    refused with FailedPrecondition (their messages returned); every other row equals expected."""
    refusals = {}
    with serving(data) as address, MemoryClient(address, stream_lookups=False) as client:
        for v in range(1, len(expected) + 1):
            for tok in range(64):
                try:
                    row = client.lookup("stem", [tok], version=v).in_request_order()[0]
                except FailedPrecondition as e:
                    refusals[v, tok] = str(e)
                    continue
                np.testing.assert_array_equal(row, expected[v - 1, tok])
    assert set(refusals) == damaged_versions
    return refusals


def fsck_lines(data):
    result = CliRunner().invoke(cli, ["fsck", "--data", str(data)])
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def test_a_flipped_byte_in_a_delta_row_is_refused_at_every_version_that_reads_it_and_found_by_fsck(tmp_path):
    data, expected = edited_kb(tmp_path / "kb")
    flip_delta(data, token=0, layer=1, commit=2)
    refusals = served_rows(data, expected, {(2, 0), (3, 0), (4, 0)})  # 3 wrote Spain's layer 2 over 2's row
    assert refusals[3, 0] == ("data: table 'stem' token 0 at version 3: its layer 1 row written by commit 2 does not "
                              "match its checksum; restore the catalog from a backup")
    code, output = fsck_lines(data)
    assert code == 1 and "problem: delta: table 'stem' token 0 layer 1 commit 2 does not match its checksum\n" in output
    assert "DAMAGED: 0 versions, 1 base files, 5 delta rows checked; 1 problems" in output


def test_a_deleted_delta_row_is_refused_and_found_by_fsck(tmp_path):
    data, expected = edited_kb(tmp_path / "kb")
    sql(data, "delete from deltas where token_id=2 and layer=0 and commit_id=4")
    refusals = served_rows(data, expected, {(4, 2)})
    assert refusals[4, 2].startswith("data: table 'stem' token 2 at version 4: its layer 0 row written by commit 4 is missing")
    code, output = fsck_lines(data)
    assert code == 1 and "problem: delta: table 'stem' token 2 layer 0 commit 4 is missing (deleted)\n" in output


def test_every_deleted_row_of_a_commit_and_an_added_row_are_found(tmp_path):
    data, expected = edited_kb(tmp_path / "kb")
    sql(data, "delete from deltas where commit_id=4")
    sql(data, "insert into deltas values ('stem', 5, 0, 3, ?)", [np.zeros(8, np.float16).tobytes()])
    served_rows(data, expected, {(4, 2), (3, 5), (4, 5)})
    report = fsck(data)
    assert sorted(report.problems) == [
        "delta: table 'stem' token 2 layer 0 commit 4 is missing (deleted)",
        "delta: table 'stem' token 2 layer 1 commit 4 is missing (deleted)",
        "delta: table 'stem' token 2 layer 2 commit 4 is missing (deleted)",
        "delta: table 'stem' token 5 layer 0 commit 3 is not listed in its commit's checksums (added)"]


def test_a_flipped_byte_in_a_base_row_is_refused_on_read_and_by_compaction_that_reads_it_and_found_by_fsck(tmp_path):
    data, expected = edited_kb(tmp_path / "kb")
    flip_base(data, token=0)  # Spain: compaction reads its base row (layer 0 was never edited)
    refusals = served_rows(data, expected, {(v, 0) for v in range(1, 5)})
    assert refusals[1, 0] == (f"data: table 'stem' token 0 at version 1: its row in base file "
                              f"{data / 'bases' / 'stem' / 'v1.npy'} does not match its checksum; restore the file from a backup")
    with KnowledgeBase(StoreConfig(data_dir=data)) as kb:
        with pytest.raises(FailedPrecondition, match="token 0 at version 1: its row in base file"):
            kb.compact()  # a whole-table pass never folds a damaged row it reads into a new base
        assert kb.version == 4
    code, output = fsck_lines(data)
    assert code == 1 and ("problem: base: bases/stem/v1.npy (table 'stem', version 1): the rows of 1 tokens "
                          "do not match their checksums (first token 0)\n") in output


def test_compaction_copies_a_damaged_unedited_base_row_with_its_checksum_so_it_stays_refused(tmp_path):
    """Compaction copies the rows of unedited tokens unread: a damaged one is not found there, but
    it keeps the checksum it does not match, so the new base refuses it too and fsck finds both."""
    data, expected = edited_kb(tmp_path / "kb")
    flip_base(data, token=40)
    with KnowledgeBase(StoreConfig(data_dir=data)) as kb:
        assert kb.compact().version == 5
    expected = np.concatenate([expected, expected[-1:]])
    refusals = served_rows(data, expected, {(v, 40) for v in range(1, 6)})
    assert refusals[5, 40] == (f"data: table 'stem' token 40 at version 5: its row in base file "
                               f"{data / 'bases' / 'stem' / 'v5.npy'} does not match its checksum; restore the file from a backup")
    code, output = fsck_lines(data)
    assert code == 1
    for version in (1, 5):
        assert (f"problem: base: bases/stem/v{version}.npy (table 'stem', version {version}): the rows of 1 tokens "
                "do not match their checksums (first token 40)\n") in output


def test_a_catalog_from_before_checksums_opens_reads_and_fsck_says_unchecked(tmp_path):
    data, expected = edited_kb(tmp_path / "kb")
    sql(data, "drop table delta_sums")  # a catalog from before checksums: no tables, no markers
    sql(data, "drop table base_sums")
    sql(data, "drop table pair_sums")
    sql(data, "delete from meta where key like '%_sums_from'")
    served_rows(data, expected, set())
    report = fsck(data)
    assert report.ok, report.problems
    assert "base: bases/stem/v1.npy (table 'stem', version 1) has no checksums (written before checksums): unchecked" in report.notes
    assert "delta: table 'stem': the rows of 3 commits (first 2) have no checksums (written before checksums): unchecked" in report.notes
    with KnowledgeBase(StoreConfig(data_dir=data)) as kb:  # new commits and bases get checksums
        kb.edit("stem", [RowOp("set", token="Berlin", vector=np.ones(8))])
        kb.compact()
    flip_delta(data, token=WORDS.index("Berlin"), layer=0, commit=5)
    problems = fsck(data).problems
    assert problems == ["delta: table 'stem' token 4 layer 0 commit 5 does not match its checksum"], problems


def test_a_deleted_delta_sums_record_is_damage_refused_and_found_by_fsck(tmp_path):
    data, expected = edited_kb(tmp_path / "kb")
    sql(data, "delete from delta_sums where commit_id=4")  # France (2), every layer: rows intact, record gone
    refusals = served_rows(data, expected, {(4, 2)})
    assert refusals[4, 2] == ("data: table 'stem' token 2 at version 4: its layer 0 row written by commit 4 has no "
                              "checksum: its commit's delta_sums record is missing; restore the catalog from a backup")
    code, output = fsck_lines(data)
    assert code == 1 and ("problem: delta: table 'stem' commit 4: its delta_sums record is missing (deleted); "
                          "its 3 rows are unchecked\n") in output
    assert "unchecked\n" not in output.replace("its 3 rows are unchecked\n", "")  # not taken for an old commit


def test_a_catalog_upgraded_mid_history_checks_only_the_commits_after_the_upgrade(tmp_path):
    data, expected = edited_kb(tmp_path / "kb")
    sql(data, "drop table delta_sums")  # commits 2-4 written before checksums
    sql(data, "delete from meta where key='delta_sums_from'")
    with KnowledgeBase(StoreConfig(data_dir=data)) as kb:  # the upgrade: from commit 5 on, records are certain
        kb.edit("stem", [RowOp("set", token="Berlin", vector=np.ones(8))])
        expected = np.concatenate([expected, kb.lookup("stem", np.arange(64), version=5).in_request_order()[None]])
    sql(data, "delete from delta_sums where commit_id=5")
    served_rows(data, expected, {(5, WORDS.index("Berlin"))})
    problems = fsck(data).problems
    assert problems == ["delta: table 'stem' commit 5: its delta_sums record is missing (deleted); its 3 rows are unchecked"]


def test_gc_drops_the_checksums_of_the_rows_it_deletes_and_fsck_stays_clean(tmp_path):
    data, expected = edited_kb(tmp_path / "kb")
    with KnowledgeBase(StoreConfig(data_dir=data)) as kb:
        kb.compact()
        kb.gc(retention_seconds=0)
        assert kb.list_versions() == [5]
        np.testing.assert_array_equal(kb.lookup("stem", np.arange(64)).in_request_order(), expected[-1])
    report = fsck(data)
    assert report.ok and report.deltas_checked == 0 and not report.notes, (report.problems, report.notes)
    with sqlite3.connect(data / "catalog.db") as db:
        assert db.execute("select count(*) from delta_sums").fetchone()[0] == 0
        assert db.execute("select tbl, version from base_sums").fetchall() == [("stem", 5)]


def test_a_damaged_base_row_under_a_partial_edit_is_refused_at_every_version_not_carried_into_history(tmp_path):
    data, expected = edited_kb(tmp_path / "kb")
    flip_base(data, token=0)  # Spain: commits 2 and 3 wrote one layer each over its base row
    refusals = served_rows(data, expected, {(v, 0) for v in range(1, 5)})
    assert refusals[3, 0] == (f"data: table 'stem' token 0 at version 3: its row in base file "
                              f"{data / 'bases' / 'stem' / 'v1.npy'} does not match its checksum; restore the file from a backup")
