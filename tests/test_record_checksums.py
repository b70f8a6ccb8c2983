"""The checksum gaps of issue 19: a lost base_sums record, a commit whose rows and record are both
deleted (bank deltas, mosaic pairs), and lifetimes (removed_in of tokens and pairs, with the
removals record of the commit that set them). Each is refused at the versions it reaches,
naming table and version, and is a finding of fsck; gc and catalogs from before the records stay
clean."""
import shutil
import sqlite3

import numpy as np
import pytest

from memsvc.core.errors import FailedPrecondition, OutOfRange
from memsvc.search.config import SearchConfig
from memsvc.search.manager import IndexManager
from memsvc.store import KnowledgeBase, StoreConfig
from memsvc.store.backup import fsck
from memsvc.store.replication import apply_commit, commit_pieces
from tests.test_checksums import edited_kb, served_rows, sql
from tests.test_pair_checksums import QUERIES, mosaic_kb, served

NEVER = 2**62


def test_a_deleted_base_sums_record_is_damage_refused_naming_table_and_version_and_found_by_fsck(tmp_path):
    data, expected = edited_kb(tmp_path / "kb")
    sql(data, "delete from base_sums where version=1")
    refusals = served_rows(data, expected, {(v, tok) for v in range(1, 5) for tok in range(64)})
    assert refusals[3, 7] == (f"data: table 'stem' token 7 at version 3: base file {data / 'bases' / 'stem' / 'v1.npy'} "
                              "(version 1) has no checksums: its base_sums record is missing (deleted); restore the "
                              "catalog from a backup")
    assert "base: bases/stem/v1.npy (table 'stem', version 1): its base_sums record is missing (deleted); its rows " \
           "are unchecked" in fsck(data).problems
    with KnowledgeBase(StoreConfig(data_dir=data)) as kb:
        with pytest.raises(FailedPrecondition, match="its base_sums record is missing"):
            kb.compact()  # a whole-table pass refuses it too
        assert kb.version == 4


def test_a_base_from_before_the_base_sums_marker_is_unchecked_and_later_bases_are_certain(tmp_path):
    data, expected = edited_kb(tmp_path / "kb")
    sql(data, "drop table base_sums")  # written before base checksums: no records, no marker
    sql(data, "delete from meta where key='base_sums_from'")
    served_rows(data, expected, set())
    with KnowledgeBase(StoreConfig(data_dir=data)) as kb:
        assert kb.compact().version == 5  # the first base with a certain record
    report = fsck(data)
    assert report.ok, report.problems
    assert report.notes == ["base: bases/stem/v1.npy (table 'stem', version 1) has no checksums (written before "
                            "checksums): unchecked"]
    sql(data, "delete from base_sums where version=5")
    with KnowledgeBase(StoreConfig(data_dir=data)) as kb:
        np.testing.assert_array_equal(kb.lookup("stem", [7], version=4).in_request_order(), expected[3, [7]])
        with pytest.raises(FailedPrecondition, match="token 7 at version 5: base file .* \\(version 5\\) has no checksums"):
            kb.lookup("stem", [7])


def test_a_commit_whose_rows_and_delta_sums_record_are_both_deleted_is_refused_where_it_is_needed(tmp_path):
    data, expected = edited_kb(tmp_path / "kb")
    sql(data, "delete from deltas where commit_id=4")  # France (2), every layer: nothing left to compare
    sql(data, "delete from delta_sums where commit_id=4")
    refusals = served_rows(data, expected, {(4, tok) for tok in range(64)})  # which tokens it wrote is unknown
    assert refusals[4, 9] == ("data: table 'stem' at version 4: commit 4 (edit, 3 rows) wrote rows of it, but they "
                              "and its delta_sums record are missing (deleted); restore the catalog from a backup")
    assert fsck(data).problems == ["delta: table 'stem' commit 4 (edit, 3 rows) wrote rows of it, but they and its "
                                   "delta_sums record are missing (deleted)"]
    with KnowledgeBase(StoreConfig(data_dir=data)) as kb:
        with pytest.raises(FailedPrecondition, match="commit 4 .* wrote rows of it"):
            kb.changed_tokens("stem", 3, 4)  # never an answer that leaves its tokens out


def test_gc_of_a_commits_rows_is_not_taken_for_damage(tmp_path):
    data, expected = edited_kb(tmp_path / "kb")
    with KnowledgeBase(StoreConfig(data_dir=data)) as kb:
        kb.compact()
        kb.tag("keep", 2)  # version 2 stays readable: commit 2's rows stay, 3's and 4's go with their records
        kb.gc(retention_seconds=0)
        assert kb.list_versions() == [2, 5]
        np.testing.assert_array_equal(kb.lookup("stem", np.arange(64), version=2).in_request_order(), expected[1])
        np.testing.assert_array_equal(kb.lookup("stem", np.arange(64)).in_request_order(), expected[3])
    report = fsck(data)
    assert report.ok and not report.notes, (report.problems, report.notes)


def test_a_mosaic_commit_whose_pairs_and_pair_sums_record_are_both_deleted_is_refused_from_it_on(tmp_path):
    data, expected = mosaic_kb(tmp_path / "kb")
    sql(data, "delete from mosaic_pairs where added_in=4")  # head 1's two pairs: nothing left to compare
    sql(data, "delete from pair_sums where commit_id=4")
    said = served(data, expected, {(v, h) for v in (4, 5) for h in (0, 1)})  # which group it wrote is unknown
    assert said[5, 0] == ("data: mosaic store 'facts' layer 0 head 0 at version 5: commit 4 (mosaic-add, 2 pairs) wrote pairs of it, "
                          "but they and its pair_sums record are missing (deleted); restore the catalog from a backup")
    assert fsck(data).problems == ["pair: mosaic store 'facts' commit 4 (mosaic-add, 2 pairs) wrote pairs of it, but "
                                   "they and its pair_sums record are missing (deleted)"]


def injected_and_reverted(data):
    """edited_kb + 5: inject 'Atlantis' (token 64), 6: revert 5 (Atlantis removed at 6)."""
    data, expected = edited_kb(data)
    with KnowledgeBase(StoreConfig(data_dir=data)) as kb:
        kb.inject_token("stem", "Atlantis", vector=np.ones(8))
        kb.revert(5)
        expected = np.concatenate([expected, kb.lookup("stem", np.arange(64), version=5).in_request_order()[None],
                                   kb.lookup("stem", np.arange(64), version=6).in_request_order()[None]])
    return data, expected


def test_a_flipped_removed_in_of_a_token_is_refused_never_served_as_alive_or_gone(tmp_path):
    data, expected = injected_and_reverted(tmp_path / "kb")
    sql(data, "update tokens set removed_in=? where token_id=64", [NEVER])  # Atlantis back to life
    sql(data, "update tokens set removed_in=4 where token_id=9")  # a live token (w3) dies at 4
    refusals = served_rows(data, expected, {(v, 9) for v in (4, 5, 6)})
    assert refusals[4, 9] == ("data: table 'stem' token 9 at version 4: its lifetime ends at version 4, which no "
                              "removals record lists; restore the catalog from a backup")
    with KnowledgeBase(StoreConfig(data_dir=data)) as kb:
        np.testing.assert_array_equal(kb.lookup("stem", [64], version=5).in_request_order()[0], np.ones((3, 8)))
        for read in (lambda: kb.lookup("stem", [64], version=6), lambda: kb.lookup("stem", ["Atlantis"], version=6)):
            with pytest.raises(FailedPrecondition, match="token 64 at version 6: its lifetime ends never, its "
                                                         "removals record says 6"):
                read()
        with pytest.raises(FailedPrecondition, match="token 9 at version 6: its lifetime ends at version 4"):
            kb.vocabulary("stem", version=6)  # a word list with or without them would be a guess
        assert kb.vocabulary("stem", version=3)[9] == "w3"
    assert sorted(fsck(data).problems) == [
        "lifetime: table 'stem' token 64 ends never, its removals record says 6",
        "lifetime: table 'stem' token 9 ends at version 4, which no removals record lists"]


def test_search_over_a_table_with_a_flipped_removed_in_is_refused_where_the_lifetime_is_wrong(tmp_path):
    data, _ = injected_and_reverted(tmp_path / "kb")
    with KnowledgeBase(StoreConfig(data_dir=data)) as kb:
        manager = IndexManager(kb, SearchConfig(build_in_worker=False))
        before = manager.search("stem", 0, tokens=["w3"], k=64, version=6)
        before4 = manager.search("stem", 0, tokens=["w3"], k=64, version=4)
    sql(data, "update tokens set removed_in=? where token_id=64", [NEVER])  # Atlantis back to life at 6
    with KnowledgeBase(StoreConfig(data_dir=data)) as kb:
        manager = IndexManager(kb, SearchConfig(build_in_worker=False))
        assert manager.search("stem", 0, tokens=["w3"], k=64, version=4).ids.tolist() == before4.ids.tolist()  # before it
        with pytest.raises(FailedPrecondition, match="token 64 at version 6: its lifetime ends never"):
            manager.search("stem", 0, tokens=["w3"], k=64, version=6)  # would have found Atlantis
        assert 64 not in before.ids[0]


def test_a_deleted_removals_record_is_refused_from_its_commit_on_and_an_intact_kb_reads_as_before(tmp_path):
    data, expected = injected_and_reverted(tmp_path / "kb")
    with KnowledgeBase(StoreConfig(data_dir=data)) as kb:  # intact: Atlantis is gone at 6, as it was
        with pytest.raises(OutOfRange, match="token id 64 does not exist in table 'stem' at version 6"):
            kb.lookup("stem", [64], version=6)
    assert fsck(data).ok
    sql(data, "delete from removals where commit_id=6")
    refusals = served_rows(data, expected, {(6, tok) for tok in range(64)})
    assert refusals[6, 0] == ("data: table 'stem' at version 6: commit 6 may have ended rows of it, but its removals "
                              "record is missing (deleted); restore the catalog from a backup")
    assert fsck(data).problems == ["lifetime: table 'stem' commit 6 may have ended rows of it, but its removals record "
                                   "is missing (deleted)"]


def test_a_flipped_removed_in_of_a_mosaic_pair_is_refused_and_gc_keeps_the_removals_records_whole(tmp_path):
    data, expected = mosaic_kb(tmp_path / "kb")
    with KnowledgeBase(StoreConfig(data_dir=data)) as kb:  # 6: remove pair 0 of head 1
        kb.mosaic.remove("facts", 0, 1, [0])
        for h in (0, 1):
            expected[6, h] = kb.mosaic.query("facts", 0, h, QUERIES, beta=2.0).outputs
    sql(data, "update mosaic_pairs set removed_in=? where head=1 and pair_id=0", [NEVER])  # back to life
    with KnowledgeBase(StoreConfig(data_dir=data)) as kb:
        np.testing.assert_array_equal(kb.mosaic.query("facts", 0, 1, QUERIES, beta=2.0, version=5).outputs, expected[5, 1])
        with pytest.raises(FailedPrecondition, match="layer 0 head 1 at version 6: the lifetime of pair 0 added by "
                                                     "commit 4 ends never, its removals record says 6"):
            kb.mosaic.query("facts", 0, 1, QUERIES, beta=2.0, version=6)
        np.testing.assert_array_equal(kb.mosaic.query("facts", 0, 0, QUERIES, beta=2.0).outputs, expected[6, 0])
    assert fsck(data).problems == ["lifetime: mosaic store 'facts' layer 0 head 1 pair 0 added by commit 4 ends never, "
                                   "its removals record says 6"]
    sql(data, "update mosaic_pairs set removed_in=6 where head=1 and pair_id=0")  # repaired
    with KnowledgeBase(StoreConfig(data_dir=data)) as kb:
        assert kb.gc(retention_seconds=0)["pairs_deleted"] == 2  # pair 1 of head 0 (replaced at 5), pair 0 of head 1
    report = fsck(data)
    assert report.ok, report.problems
    with sqlite3.connect(data / "catalog.db") as db:
        assert db.execute("select commit_id, length(keys) from removals order by commit_id").fetchall() == [(5, 0), (6, 0)]
    with KnowledgeBase(StoreConfig(data_dir=data)) as kb:
        for h in (0, 1):
            np.testing.assert_array_equal(kb.mosaic.query("facts", 0, h, QUERIES, beta=2.0).outputs, expected[6, h])


def test_served_mosaic_reads_refuse_a_deleted_removals_record(tmp_path):
    data, expected = mosaic_kb(tmp_path / "kb")
    sql(data, "delete from removals where commit_id=5")  # the replace of pair 1 in head 0
    said = served(data, expected, {(5, 0), (5, 1)})
    assert said[5, 1].startswith("data: mosaic store 'facts' layer 0 head 1 at version 5: commit 5 may have ended rows of it")


def replica_at_5(primary, replica):
    """A copy of ``primary``'s KB (injected_and_reverted) as a replica holds it at version 5."""
    shutil.rmtree(replica, ignore_errors=True)
    shutil.copytree(primary, replica)
    for statement in ("delete from commits where id=6", "delete from removals where commit_id=6",
                      "delete from delta_sums where commit_id=6"):
        sql(replica, statement)
    sql(replica, "update tokens set removed_in=? where removed_in=6", [NEVER])
    return replica


def ship_6(primary, replica):
    """Apply the primary's commit 6 to the replica as it ships (replication.commit_pieces, apply_commit)."""
    kb = KnowledgeBase(StoreConfig(data_dir=replica))
    with sqlite3.connect(f"file:{primary / 'catalog.db'}?mode=ro", uri=True) as db:
        apply_commit(kb, 6, [piece[1:] for piece in commit_pieces(primary, db, 6) if piece[0] == "rows"])
    return kb


def test_a_replica_applying_a_commit_checks_the_lifetimes_it_ends(tmp_path):
    primary, _ = injected_and_reverted(tmp_path / "primary")
    with ship_6(primary, replica_at_5(primary, tmp_path / "replica")) as kb:
        with pytest.raises(OutOfRange, match="token id 64 does not exist in table 'stem' at version 6"):
            kb.lookup("stem", [64], version=6)  # intact: Atlantis ended, as on the primary
    sql(primary, "update tokens set removed_in=? where token_id=64", [NEVER])  # flipped on the primary: not shipped
    with ship_6(primary, replica_at_5(primary, tmp_path / "replica")) as kb:
        with pytest.raises(FailedPrecondition, match="token 64 at version 6: its lifetime ends never, its removals "
                                                     "record says 6"):
            kb.lookup("stem", [64], version=6)
