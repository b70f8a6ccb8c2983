"""Checksums of Memory Mosaic pairs (issue 19, after bank rows): a flipped byte in a stored pair,
a deleted pair row or a deleted pair_sums record makes every read of its (layer, head) at a version
where the pair lives FAILED_PRECONDITION naming store, layer and head, never a result computed
over wrong pairs; fsck names each; the other group reads on; gc keeps the records whole."""
import sqlite3

import numpy as np
import pytest

from clients.client import MemoryClient
from clients.mosaic import MosaicClient
from clients.search import SearchClient
from memsvc.core.errors import FailedPrecondition
from memsvc.store import KnowledgeBase, StoreConfig
from memsvc.store.backup import fsck
from tests.conftest import served_kb, serving

QUERIES = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
VERSIONS = range(2, 6)  # 2 create, 3 add (0, 0), 4 add (0, 1), 5 replace pair 1 of (0, 0)


def mosaic_kb(data):
    """served_kb + store 'facts' (1 layer, 2 heads, 4 -> 4): pairs 0-2 in head 0, 0-1 in head 1,
    then pair 1 of head 0 replaced; returns data and the exact outputs by (version, head)."""
    served_kb(data)
    rng = np.random.default_rng(0)
    with KnowledgeBase(StoreConfig(data_dir=data)) as kb:
        kb.mosaic.create("facts", num_layers=1, num_heads=2, key_dim=4, value_dim=4)
        kb.mosaic.add("facts", 0, 0, rng.standard_normal((3, 4)), rng.standard_normal((3, 4)), labels=["a", "b", "c"])
        kb.mosaic.add("facts", 0, 1, rng.standard_normal((2, 4)), rng.standard_normal((2, 4)))
        kb.mosaic.replace("facts", 0, 0, [1], rng.standard_normal((1, 4)), rng.standard_normal((1, 4)))
        expected = {(v, h): kb.mosaic.query("facts", 0, h, QUERIES, beta=2.0, version=v).outputs
                    for v in VERSIONS for h in (0, 1)}
    return data, expected


def sql(data, statement, params=()):
    with sqlite3.connect(data / "catalog.db") as db:
        return db.execute(statement, params).fetchall()


def flip_pair(data, pair_id, added_in, column="key"):
    (blob,), = sql(data, f"select {column} from mosaic_pairs where head=0 and pair_id=? and added_in=?", [pair_id, added_in])
    flipped = bytearray(blob.encode() if isinstance(blob, str) else blob)
    flipped[-1] ^= 0x01  # the label's last letter, or an exponent bit of the last float32 value: finite, wrong
    flipped = flipped.decode() if isinstance(blob, str) else bytes(flipped)
    sql(data, f"update mosaic_pairs set {column}=? where head=0 and pair_id=? and added_in=?", [flipped, pair_id, added_in])


def served(data, expected, refused):
    """Query both heads at every version from a server: (version, head) in ``refused`` answer
    FailedPrecondition (the messages are returned), every other equals the undamaged result."""
    said = {}
    with serving(data) as address, MemoryClient(address, stream_lookups=False) as client:
        mosaic = MosaicClient(client)
        for v in VERSIONS:
            for h in (0, 1):
                try:
                    out = mosaic.query("facts", 0, h, QUERIES, beta=2.0, version=v).outputs
                except FailedPrecondition as e:
                    said[v, h] = str(e)
                    continue
                np.testing.assert_array_equal(out, expected[v, h])
        for v, h in refused:  # every other read of the group's pairs is refused too
            with pytest.raises(FailedPrecondition, match=f"mosaic store 'facts' layer 0 head {h} at version {v}"):
                mosaic.read_pairs("facts", 0, h, version=v)
            with pytest.raises(FailedPrecondition, match=f"mosaic store 'facts' layer 0 head {h}"):
                SearchClient(client).search("facts", 0, queries=QUERIES, k=2, head=h, version=v)
    assert set(said) == refused
    return said


def test_a_flipped_byte_in_a_stored_pair_is_refused_where_it_lives_and_found_by_fsck(tmp_path):
    data, expected = mosaic_kb(tmp_path / "kb")
    flip_pair(data, pair_id=1, added_in=3, column="value")  # replaced at 5: versions 3 and 4 read it
    said = served(data, expected, {(3, 0), (4, 0)})
    assert said[3, 0] == ("data: mosaic store 'facts' layer 0 head 0 at version 3: pair 1 written by commit 3 "
                          "does not match its checksum; restore the catalog from a backup")
    assert fsck(data).problems == ["pair: mosaic store 'facts' layer 0 head 0 pair 1 commit 3 does not match its checksum"]


def test_a_flipped_label_byte_is_refused_too_and_a_revert_never_carries_a_damaged_pair(tmp_path):
    data, expected = mosaic_kb(tmp_path / "kb")
    flip_pair(data, pair_id=1, added_in=3, column="label")
    served(data, expected, {(3, 0), (4, 0)})
    with KnowledgeBase(StoreConfig(data_dir=data)) as kb:
        with pytest.raises(FailedPrecondition, match="layer 0 head 0: pair 1 written by commit 3 does not match"):
            kb.revert(5)  # would bring the damaged pair back under a new, valid checksum
        assert kb.version == 5


def test_a_deleted_pair_row_and_a_deleted_record_are_refused_and_found_by_fsck(tmp_path):
    data, expected = mosaic_kb(tmp_path / "kb")
    sql(data, "delete from mosaic_pairs where head=0 and pair_id=2")
    sql(data, "delete from pair_sums where commit_id=4")
    said = served(data, expected, {(v, 0) for v in (3, 4, 5)} | {(4, 1), (5, 1)})
    assert said[5, 1] == ("data: mosaic store 'facts' layer 0 head 1 at version 5: pair 0 written by commit 4 has no "
                          "checksum: its commit's pair_sums record is missing; restore the catalog from a backup")
    assert fsck(data).problems == [
        "pair: mosaic store 'facts' layer 0 head 0 pair 2 commit 3 is missing (deleted)",
        "pair: mosaic store 'facts' commit 4: its pair_sums record is missing (deleted); its 2 pairs are unchecked"]


def test_gc_keeps_the_pair_records_whole_and_a_store_from_before_checksums_reads_unchecked(tmp_path):
    data, expected = mosaic_kb(tmp_path / "kb")
    with KnowledgeBase(StoreConfig(data_dir=data)) as kb:
        assert kb.gc(retention_seconds=0)["pairs_deleted"] == 1  # pair 1 as commit 3 wrote it
    report = fsck(data)
    assert report.ok and report.pairs_checked == 5, report.problems
    sql(data, "drop table pair_sums")  # a catalog from before pair checksums
    sql(data, "delete from meta where key='pair_sums_from'")
    report = fsck(data)
    assert report.ok, report.problems
    assert report.notes == ["pair: mosaic store 'facts': the pairs of 3 commits (first 3) have no checksums "
                            "(written before checksums): unchecked"]
    with KnowledgeBase(StoreConfig(data_dir=data)) as kb:
        np.testing.assert_array_equal(kb.mosaic.query("facts", 0, 0, QUERIES, beta=2.0).outputs, expected[5, 0])
