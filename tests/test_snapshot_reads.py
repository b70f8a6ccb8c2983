"""A Snapshot page's delta rows, read by token range over the catalog's primary key (issue 17):
the rows every version reads, whichever commits wrote which layers (partial writes, rewrites,
writes folded by a compaction, writes after the version), and damage refused, never served; pages
through a client's shared-memory buffer on the server's host, in the reply otherwise."""
import sqlite3

import grpc
import numpy as np
import pytest

from clients.client import MemoryClient
from clients.snapshots import page_rows
from memsvc.core.errors import FailedPrecondition
from memsvc.core.values import RowOp
from memsvc.store import KnowledgeBase, StoreConfig
from memsvc.v1 import knowledge_pb2 as pb
from memsvc.v1 import knowledge_pb2_grpc as pb_grpc
from memsvc.wire.reply_buffers import ReplyBuffer
from tests.conftest import WORDS, serving, small_bank


def snapshot_rows(kb, version, max_bytes=None):
    """Every page of a snapshot: (token ids, rows)."""
    ids, rows, start = [], [], 0
    while True:
        page = kb.snapshot("stem", version, start_token_id=start, max_bytes=max_bytes)
        ids += page["delta_token_ids"].tolist()
        rows.append(page["delta_rows"])
        start = page["next_token_id"]
        if not start:
            return ids, np.concatenate(rows)


@pytest.fixture
def history(tmp_path):
    """v2: tokens 0-9 layer 1; v3: tokens 5-14 every layer; v4 compaction; v5: tokens 3, 12, 20
    layer 2; v6: token 20 every layer; v7: token 3 layer 0 again."""
    kb = KnowledgeBase(StoreConfig(data_dir=tmp_path / "kb", create=True, durable=False))
    kb.import_table("stem", small_bank(), WORDS, dtype="float16")
    kb.edit("stem", [RowOp("set", token_id=i, vector=np.full(8, i + 0.5), layers=[1]) for i in range(10)])
    kb.edit("stem", [RowOp("scale", token_id=i, alpha=2.0) for i in range(5, 15)])
    kb.compact()
    kb.edit("stem", [RowOp("set", token_id=i, vector=np.full(8, -i), layers=[2]) for i in (3, 12, 20)])
    kb.edit("stem", [RowOp("scale", token_id=20, alpha=0.5)])
    kb.edit("stem", [RowOp("set", token_id=3, vector=np.full(8, 7.0), layers=[0])])
    yield kb
    kb.close()


WRITTEN = {2: range(10), 3: range(5, 15), 5: (3, 12, 20), 6: (20,), 7: (3,)}  # commit -> tokens it wrote


def test_every_version_and_page_size_reads_the_rows_a_lookup_reads(history):
    kb = history
    row_bytes = 3 * 8 * 2
    for v in range(1, kb.version + 1):
        base_version = kb.table("stem").base_at(v)[0]
        want = sorted({i for c in range(base_version + 1, v + 1) for i in WRITTEN.get(c, ())})
        for max_bytes in (None, row_bytes, 4 * row_bytes + 1):
            ids, rows = snapshot_rows(kb, v, max_bytes)
            assert ids == want, (v, max_bytes)
            if ids:
                looked_up = kb.lookup("stem", ids, version=v).in_request_order()
                np.testing.assert_array_equal(rows, looked_up.astype(np.float16))


def corrupt(kb, statement, params):
    with sqlite3.connect(kb.root / "catalog.db") as db:
        db.execute(statement, params)


def test_a_damaged_or_missing_delta_row_is_refused_naming_token_layer_and_commit(history):
    kb = history
    blob = bytearray(np.full(8, -12, np.float16).tobytes())
    blob[1] ^= 0x01
    corrupt(kb, "update deltas set data=? where token_id=12 and layer=2 and commit_id=5", [bytes(blob)])
    with pytest.raises(FailedPrecondition,
                       match=r"token 12 at version 7: its layer 2 row written by commit 5 does not match its checksum"):
        snapshot_rows(kb, 7)
    corrupt(kb, "delete from deltas where token_id=20 and layer=1 and commit_id=6", [])
    with pytest.raises(FailedPrecondition, match=r"token 20 at version 6: its layer 1 row written by commit 6 is "
                                                 r"missing"):
        kb.snapshot("stem", 6, start_token_id=13)
    assert snapshot_rows(kb, 4)[0] == []  # the compacted version reads no delta row


def test_pages_come_through_shared_memory_on_the_servers_host_and_in_the_reply_otherwise(history, tmp_path):
    kb = history
    want_ids, want_rows = snapshot_rows(kb, 7)
    kb.close()
    with serving(kb.root) as address:
        for shared in (True, False):
            with MemoryClient(address, shared_memory=shared) as client:
                snap = client.snapshot("stem", 7, page_bytes=4 * 3 * 8 * 2)  # 4 tokens a page
                assert snap["delta_token_ids"].tolist() == want_ids
                np.testing.assert_array_equal(snap["delta_rows"], want_rows)
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.KnowledgeServiceStub(channel)
            roomy, small = ReplyBuffer(1 << 10), ReplyBuffer(16)
            try:
                for buffer, in_buffer in ((roomy, True), (small, False)):
                    request = pb.SnapshotRequest(table="stem", at=pb.VersionRef(version=7), max_bytes=1 << 10)
                    request.reply_buffer.name, request.reply_buffer.size, request.reply_buffer.key = (
                        buffer.name, buffer.size, buffer.key)
                    r = stub.Snapshot(request, timeout=30)
                    assert r.rows_in_buffer == in_buffer and (len(r.delta_rows.data) == 0) == in_buffer
                    np.testing.assert_array_equal(page_rows(r, buffer), want_rows[:len(r.delta_token_ids)])
            finally:
                roomy.close()
                small.close()
