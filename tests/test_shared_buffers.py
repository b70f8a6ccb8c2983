"""Lookup replies through shared memory (memsvc/wire/reply_buffers.py, memsvc/server/shared_buffers.py), against a real server on
loopback: the same rows as an ordinary reply, rows that stay valid while later lookups reuse the
pool, growth, fallback, and a server that writes only into a buffer whose key it was given."""
import gc
import mmap
import os

import grpc
import numpy as np
import pytest

from clients.client import MemoryClient
from memsvc.core.values import RowOp
from memsvc.v1 import knowledge_pb2 as pb
from memsvc.v1 import knowledge_pb2_grpc as pb_grpc
from memsvc.wire import reply_buffers
from memsvc.wire.reply_buffers import HEADER_BYTES, KEY_BYTES, SHM_DIR, ReplyBuffer, available
from tests.conftest import WORDS

pytestmark = pytest.mark.skipif(not available(), reason="no writable /dev/shm on this host")


def mine():
    return {p.name for p in SHM_DIR.glob(f"memsvc-{os.getpid()}-*")}


def in_shared_memory(rows) -> bool:
    """Whether the rows are a view of a mapped buffer (else of reply bytes)."""
    owner = rows
    while isinstance(owner, np.ndarray):
        owner = owner.base
    return isinstance(owner.obj, mmap.mmap)


@pytest.fixture(autouse=True)
def any_reply_size(monkeypatch):
    """These rows are 48 bytes: let every reply use a buffer once the client knows the row size."""
    monkeypatch.setattr(reply_buffers, "MIN_REPLY_BYTES", 1)


@pytest.fixture
def clients(server):
    address, _ = server
    with MemoryClient(address) as shared, MemoryClient(address, shared_memory=False) as inline:
        for layers in (None, [2, 0], [1]):
            assert not in_shared_memory(shared.lookup("stem", ["Spain"], layers).rows)  # row size not known yet
        yield shared, inline


def test_small_replies_come_inline_big_ones_through_the_buffer(server, monkeypatch):
    address, _ = server
    monkeypatch.setattr(reply_buffers, "MIN_REPLY_BYTES", 48 * 10)  # 10 rows of 3 x 8 fp16
    with MemoryClient(address) as client:
        client.lookup("stem", ["Spain"])
        assert not in_shared_memory(client.lookup("stem", list(range(9))).rows)
        assert in_shared_memory(client.lookup("stem", list(range(10))).rows)
        assert client.reply_buffers is not None


def test_rows_through_shared_memory_equal_an_ordinary_reply(clients):
    """Every layer without overrides: the server gathers the rows into the buffer in request order
    (duplicates included, edited rows too); chosen layers: de-duplicated rows, as inline."""
    shared, inline = clients
    assert shared.reply_buffers is not None and inline.reply_buffers is None  # loopback: on by default
    shared.edit("stem", [RowOp("set", token="Germany", vector=np.full(8, 0.5))])  # a delta row over the base
    for tokens, layers in ((["Spain", "Germany", "Spain"], None), (list(range(64)), [2, 0]), ([5], [1]),
                           ([WORDS.index("Germany"), 3, WORDS.index("Germany")], None)):
        a, b = shared.lookup("stem", tokens, layers), inline.lookup("stem", tokens, layers)
        assert in_shared_memory(a.rows) and not in_shared_memory(b.rows)
        assert a.ordered == (layers is None) and not b.ordered
        np.testing.assert_array_equal(a.request_rows(), b.request_rows())
        if a.ordered:
            assert a.request_rows() is a.rows  # nothing to reorder, no copy
        assert (a.unique_ids[a.inverse].tolist(), a.version, a.dtype) == (b.unique_ids[b.inverse].tolist(), b.version, b.dtype)
        assert len(a.rows) == (len(tokens) if a.ordered else len(b.rows))
        assert not a.rows.flags.writeable
    future = shared.lookup_future("stem", ["Paris", "Berlin", "Paris"])
    assert in_shared_memory(future.result().rows) and future.result().ordered
    np.testing.assert_array_equal(future.result().rows, inline.lookup("stem", ["Paris", "Berlin", "Paris"]).request_rows())
    assert shared.reply_buffers is not None  # never fell back


def test_held_rows_keep_their_buffer_while_later_lookups_run(clients):
    shared, inline = clients
    first = shared.lookup("stem", ["Spain"])
    view = first.rows[0, 1:]  # a view of the rows keeps the buffer too
    expected = inline.lookup("stem", ["Spain"]).rows[0, 1:].copy()
    del first
    gc.collect()
    for word in WORDS[:20]:  # would overwrite the buffer if it had gone back to the pool
        shared.lookup("stem", [word])
    np.testing.assert_array_equal(view, expected)
    held = len(mine())
    del view
    gc.collect()
    shared.lookup("stem", ["Paris"])
    assert len(mine()) == held  # the buffer came back and was reused, no new one


def test_the_pool_grows_for_big_requests_and_after_a_reply_too_big_for_it(server):
    address, _ = server
    with MemoryClient(address) as client:
        client.lookup("stem", [0])
        client.reply_buffers.initial_size = 16  # smaller than one row (3 layers x 8 x fp16 = 48 bytes)
        sized = client.lookup("stem", list(range(10)))  # the client knows the row size: it grows first
        assert in_shared_memory(sized.rows) and client.reply_buffers.initial_size >= sized.rows.nbytes
        client.reply_buffers.initial_size = 16
        client.row_bytes[("stem", ())] = 1  # as if the rows were 1 byte: it cannot size the buffer
        big = client.lookup("stem", list(range(10)))
        assert not in_shared_memory(big.rows)
        assert client.reply_buffers is not None and client.reply_buffers.initial_size >= big.rows.nbytes
        again = client.lookup("stem", list(range(10)))
        assert in_shared_memory(again.rows)
        np.testing.assert_array_equal(again.rows, big.rows)


def test_client_falls_back_when_the_server_cannot_write_and_removes_its_buffers(server):
    address, _ = server
    client = MemoryClient(address)
    client.lookup("stem", ["Spain"])
    rows = client.lookup("stem", ["Spain"]).rows.copy()
    assert mine()
    buffers = client.reply_buffers
    broken = ReplyBuffer(buffers.initial_size)  # one the server has not mapped yet
    os.unlink(SHM_DIR / broken.name)  # so that it cannot: as if it ran on another host
    buffers.give(broken)  # the next lookup takes it
    assert not in_shared_memory(client.lookup("stem", ["Spain"]).rows)
    assert client.reply_buffers is None
    np.testing.assert_array_equal(client.lookup("stem", ["Spain"]).rows, rows)  # inline from now on
    client.close()
    gc.collect()
    assert not mine()


def test_server_writes_only_with_the_buffer_key_and_refuses_bad_names(server):
    address, _ = server
    channel = grpc.insecure_channel(address)
    stub = pb_grpc.KnowledgeServiceStub(channel)
    victim = ReplyBuffer(1 << 12)
    before = bytes(victim.map[:HEADER_BYTES + 64])
    request = pb.LookupRequest(table="stem", tokens=["Spain"])
    request.reply_buffer.name, request.reply_buffer.size, request.reply_buffer.key = victim.name, victim.size, b"x" * KEY_BYTES
    reply = stub.Lookup(request)
    assert not reply.rows_in_buffer and len(reply.rows.data) == 3 * 8 * 2  # inline, victim untouched
    assert bytes(victim.map[:HEADER_BYTES + 64]) == before

    request.reply_buffer.key = victim.key
    reply = stub.Lookup(request)
    assert reply.rows_in_buffer and reply.rows_in_request_order and reply.rows.data == b""
    assert bytes(victim.map[HEADER_BYTES:HEADER_BYTES + 48]) != before[HEADER_BYTES:HEADER_BYTES + 48]

    for name, field in (("../etc/passwd", "reply_buffer.name"), ("memsvc-a/b", "reply_buffer.name")):
        request.reply_buffer.name = name
        with pytest.raises(grpc.RpcError) as e:
            stub.Lookup(request)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in e.value.details()
    os.truncate(SHM_DIR / victim.name, HEADER_BYTES)  # shrunk under the server's map: no write, no crash
    request.reply_buffer.name = victim.name
    reply = stub.Lookup(request)
    assert not reply.rows_in_buffer and len(reply.rows.data) == 3 * 8 * 2
    request.reply_buffer.name, request.reply_buffer.key = victim.name, b"short"
    with pytest.raises(grpc.RpcError) as e:
        stub.Lookup(request)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "reply_buffer.key" in e.value.details()
    victim.close()
    channel.close()
