"""Read replicas (issue 20, without Ray): `memsvc serve --follow` as a real process on loopback
following a primary (in this process where the test drives compaction itself, a process of its own
where it is killed). Every wait is bounded; every process is stopped in a finally."""
import signal
import sqlite3
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from bench.cluster import stamped_reads
from bench.load import bad_reads
from clients.client import MemoryClient
from clients.mosaic import MosaicClient
from memsvc.core.errors import FailedPrecondition, InvalidArgument
from memsvc.core.values import RowOp
from memsvc.server.main import ServerConfig, create_server
from memsvc.server.spawn import spawn_server, stop_server
from memsvc.store import KnowledgeBase, StoreConfig
from memsvc.store.files import read_ahead
from memsvc.store.replication import PIECE_BYTES, file_pieces, receive_file
from memsvc.v1 import knowledge_pb2 as pb
from memsvc.v1 import knowledge_pb2_grpc as pb_grpc
from memsvc.v1 import replication_pb2 as rpb
from memsvc.v1 import replication_pb2_grpc as rpb_grpc
from tests.conftest import served_kb

START_SECONDS = 60  # a replica process must be serving by then (bootstrap of a tiny KB: about a second)


def follow(data_dir, primary, *args, env=None):
    return spawn_server(data_dir, "--follow", primary, *args, env=env, timeout=START_SECONDS)


def wait_version(client, version, timeout=20.0):
    """Until the server behind ``client`` reads ``version`` (its head), at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while client.version < version:
        assert time.monotonic() < deadline, f"{client.address} stayed at version {client.version}, not {version}"
        time.sleep(0.02)


@pytest.fixture
def primary(tmp_path):
    """A primary in this process (so that the test can compact under it): (kb, address)."""
    data = served_kb(tmp_path / "primary")
    kb = KnowledgeBase(StoreConfig(data_dir=data))
    server, port, _, indexes = create_server(kb, ServerConfig(data_dir=data, port=0))
    try:
        yield kb, f"127.0.0.1:{port}"
    finally:
        server.stop(None).wait()
        indexes.close()
        kb.close()


def retry(call, timeout=20.0):
    """``call()`` until it stops failing to reach a restarted server (gRPC backs off its reconnects)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except FailedPrecondition as e:
            if "cannot reach" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def edit(kb_or_client, token, value, table="stem"):
    return kb_or_client.edit(table, [RowOp("set", token_id=token, vector=np.full(8, value, np.float32))],
                             message=f"set {token}").version


def assert_same(p: MemoryClient, r: MemoryClient, versions, mosaic=None):
    """Every version reads the same on both: Snapshot (base file bytes and delta rows), every row,
    the log, and a mosaic store's pairs."""
    n = len(p.vocabulary("stem"))
    for v in versions:
        a, b = p.snapshot("stem", v), r.snapshot("stem", v)
        assert a["base_path"] != b["base_path"]
        assert Path(a["base_path"]).read_bytes() == Path(b["base_path"]).read_bytes(), v
        assert a["delta_token_ids"].tolist() == b["delta_token_ids"].tolist(), v
        assert a["delta_rows"].tobytes() == b["delta_rows"].tobytes(), v
        alive = [i for i, w in enumerate(p.vocabulary("stem", v)) if w]
        assert p.lookup("stem", alive, version=v).rows.tobytes() == r.lookup("stem", alive, version=v).rows.tobytes()
        if mosaic and v >= mosaic[2]:
            x, y = (MosaicClient(c).read_pairs(mosaic[0], 0, 0, version=v) for c in (p, r))
            assert x["ids"].tolist() == y["ids"].tolist() and x["labels"] == y["labels"], v
            assert x["keys"].tobytes() == y["keys"].tobytes() and x["values"].tobytes() == y["values"].tobytes(), v
    assert [c.__dict__ for c in p.log()] == [c.__dict__ for c in r.log()]
    assert p.tags() == r.tags()
    assert n == len(r.vocabulary("stem"))


def catalog_rows(data_dir):
    """Every catalog table's rows but the tags' creation times (a replica names them when it learns them)."""
    with sqlite3.connect(f"file:{data_dir / 'catalog.db'}?mode=ro", uri=True) as db:
        names = [r[0] for r in db.execute("select name from sqlite_master where type='table' and name!='tags'")]
        out = {n: db.execute(f"select * from {n} order by rowid").fetchall() for n in names}
        out["tags"] = db.execute("select name, version from tags order by name").fetchall()
    return out


def test_replica_follows_every_commit_byte_for_byte(primary, tmp_path):
    kb, address = primary
    edit(kb, 3, 1.0)
    proc, replica = follow(tmp_path / "replica", address)
    try:
        with MemoryClient(address) as p, MemoryClient(replica) as r:
            assert r.version == 2  # bootstrapped at the primary's head
            edit(p, 4, 2.0)
            p.edit("stem", [RowOp("copy", token_id=5, source_token_id=0, layers=[1])], message="copy")
            p.inject_token("stem", "Atlantis", like=["Spain", "France"])
            mosaic = MosaicClient(p)
            created = mosaic.create("facts", 1, 1, 4, 4).version
            rng = np.random.default_rng(0)
            mosaic.add("facts", 0, 0, rng.standard_normal((6, 4)), rng.standard_normal((6, 4)), labels=list("abcdef"))
            mosaic.replace("facts", 0, 0, [1, 2], rng.standard_normal((2, 4)), rng.standard_normal((2, 4)))
            mosaic.remove("facts", 0, 0, [4])
            p.tag("before-compact")
            compacted = kb.compact().version  # a new base file travels in chunks
            edit(p, 3, 5.0)
            head = p.revert(compacted - 2).version  # undo the mosaic replace (a revert commit)
            wait_version(r, head)
            assert_same(p, r, range(1, head + 1), mosaic=("facts", 0, created))
            state = pb_grpc.KnowledgeServiceStub(r.channel).DescribeTable(pb.DescribeTableRequest(table="stem"), timeout=10).replica
            assert (state.role, state.primary, state.applied_version, state.lag_versions) == ("replica", address, head, 0)
            status = rpb_grpc.ReplicationServiceStub(p.channel).ReplicaStatus(rpb.ReplicaStatusRequest(), timeout=10)
            assert (status.role, status.applied_version) == ("primary", head)
    finally:
        stop_server(proc)
    assert catalog_rows(tmp_path / "replica") == catalog_rows(kb.root)


def test_read_your_writes_and_writes_refused(primary, tmp_path):
    kb, address = primary
    proc, replica = follow(tmp_path / "replica", address, "--min-version-wait", "0.5")
    try:
        with MemoryClient(replica, primary=address) as c, MemoryClient(replica) as plain:
            for value in (1.0, 2.0, 3.0):
                v = edit(c, 7, value)  # to the primary; the read goes to the replica and waits for v
                assert c.last_write_version == v
                assert c.lookup("stem", [7]).version >= v
                assert np.all(c.read_rows("stem", [7]) == value)
            with pytest.raises(FailedPrecondition, match=f"read replica; send Edit to its primary at {address}"):
                edit(plain, 7, 9.0)
            with pytest.raises(FailedPrecondition, match=f"send Tag to its primary at {address}"):
                plain.tag("x")
            with pytest.raises(FailedPrecondition, match="send ImportTable"):
                plain.import_table("new", np.zeros((2, 1, 4), np.float32), ["a", "b"])
            stub = pb_grpc.KnowledgeServiceStub(plain.channel)
            with pytest.raises(grpc.RpcError) as e:
                stub.Log(pb.LogRequest(min_version=kb.version + 100), timeout=10)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
            assert f"has applied version {kb.version}, not yet {kb.version + 100}" in e.value.details()
            assert kb.version == 4  # nothing the replica refused reached the primary
    finally:
        stop_server(proc)


def test_replica_killed_mid_bootstrap_and_mid_follow_converges(primary, tmp_path):
    kb, address = primary
    for i in range(3):
        edit(kb, i, float(i))
    data = tmp_path / "replica"
    with pytest.raises(RuntimeError, match="exit 77"):  # killed after the catalog's copy, before the base
        follow(data, address, env={"MEMSVC_CRASH_AT": "bootstrap:after-file"})
    assert not (data / "catalog.db").exists()  # nothing to serve: the next start bootstraps again
    proc, replica = follow(data, address, env={"MEMSVC_CRASH_AT": "replica:before-commit"})
    try:
        edit(kb, 5, 5.0)  # the replica dies applying it, inside its transaction
        assert proc.wait(timeout=30) == 77
    finally:
        stop_server(proc)
    proc, replica = follow(data, address)
    writer_done, stop = threading.Event(), threading.Event()

    def write():
        for i in range(200):
            if stop.is_set():
                break
            edit(kb, 10 + i % 20, float(i))
        writer_done.set()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        with MemoryClient(replica) as r:
            wait_version(r, kb.version + 3)  # it follows the edits as they land ...
        proc.send_signal(signal.SIGKILL)  # ... and is killed mid-stream
        proc.wait(timeout=30)
        proc, replica = follow(data, address)
        writer_done.wait(timeout=60)
        stop.set()
        writer.join(timeout=30)
        with MemoryClient(address) as p, MemoryClient(replica) as r:
            wait_version(r, kb.version)
            assert_same(p, r, range(1, kb.version + 1, 7))
            assert_same(p, r, [kb.version])
    finally:
        stop.set()
        writer.join(timeout=30)
        stop_server(proc)
    assert catalog_rows(data) == catalog_rows(kb.root)


def test_primary_killed_replica_serves_then_catches_up(tmp_path):
    data = served_kb(tmp_path / "primary")
    primary, address = spawn_server(data, timeout=START_SECONDS)
    port = address.rsplit(":", 1)[1]
    replica_proc = None
    try:
        replica_proc, replica = follow(tmp_path / "replica", address, "--min-version-wait", "20")
        with MemoryClient(address) as p:
            v = edit(p, 9, 4.0)
            rows = p.read_rows("stem", [9, 10])
        with MemoryClient(replica, primary=address, stream_lookups=False) as r:
            wait_version(r, v)
            primary.send_signal(signal.SIGKILL)
            primary.wait(timeout=30)
            assert r.version == v and np.array_equal(r.read_rows("stem", [9, 10]), rows)  # reads go on
            with pytest.raises(FailedPrecondition, match="cannot reach memsvc"):
                edit(r, 9, 5.0)  # the write goes to the dead primary, and says so
            primary, _ = spawn_server(data, "--port", port, timeout=START_SECONDS)
            v = retry(lambda: edit(r, 9, 6.0))  # the primary is back; the replica reconnects and reads the write
            assert np.all(r.read_rows("stem", [9]) == 6.0) and r.version == v
    finally:
        if replica_proc is not None:
            stop_server(replica_proc)
        stop_server(primary)


def test_receive_file_refuses_a_damaged_missing_or_repeated_piece(tmp_path):
    """What Bootstrap and Follow send of a file, damaged on the way, never lands under its name."""
    body = np.random.default_rng(0).bytes(2 * PIECE_BYTES + 123)
    (tmp_path / "v1.npy").write_bytes(body)
    with open(tmp_path / "v1.npy", "rb") as f:
        pieces = [(size, offset, data, crc) for _, _, size, offset, data, crc in file_pieces("bases/stem/v1.npy", f)]
    assert [p[1] for p in pieces] == [0, PIECE_BYTES, 2 * PIECE_BYTES] and pieces[0][3] == pieces[1][3] == 0
    out = tmp_path / "replica"
    assert receive_file(out, "bases/stem/v1.npy", iter(pieces)) == len(body)
    assert (out / "bases/stem/v1.npy").read_bytes() == body
    flipped = bytearray(pieces[1][2])
    flipped[77] ^= 1
    broken = [
        ("does not match its size and checksum", [pieces[0], pieces[1][:2] + (bytes(flipped), 0), pieces[2]]),
        ("does not match its size and checksum", pieces[:2]),  # the stream ended before the last piece
        (f"a piece at {2 * PIECE_BYTES}, expected {PIECE_BYTES}", [pieces[0], pieces[2]]),
        (f"a piece at 0, expected {PIECE_BYTES}", [pieces[0], pieces[0], pieces[1], pieces[2]]),
    ]
    for why, sent in broken:
        with pytest.raises(FailedPrecondition, match=why):
            receive_file(tmp_path / "bad", "bases/stem/v1.npy", iter(sent))
        assert list((tmp_path / "bad" / "bases/stem").iterdir()) == []  # neither the file nor its .tmp
    with pytest.raises(InvalidArgument, match="outside the data directory"):
        receive_file(out, "../escape.npy", iter(pieces))
    with pytest.raises(FailedPrecondition, match=f"v1.npy needs {1 << 60} bytes, more than .* can hold"):
        receive_file(tmp_path / "bad", "bases/stem/v1.npy", iter([(1 << 60,) + pieces[0][1:]]))
    assert list((tmp_path / "bad" / "bases/stem").iterdir()) == []


def test_read_ahead_raises_the_producers_error_and_stops_with_its_consumer():
    def failing():
        yield from (1, 2)
        raise ValueError("disk gone")

    got = []
    with pytest.raises(ValueError, match="disk gone"):
        for x in read_ahead(failing()):
            got.append(x)
    assert got == [1, 2]
    produced = []

    def endless():
        while True:
            produced.append(len(produced))
            yield produced[-1]

    items = read_ahead(endless(), depth=2, name="test-read-ahead")
    assert next(items) == 0
    items.close()  # the consumer stops early: the producer thread ends instead of filling memory
    assert not any(t.name == "test-read-ahead" for t in threading.enumerate())
    assert len(produced) <= 4


def test_no_torn_read_over_a_replica_during_edits(primary, tmp_path):
    """bench/load.py's stamps over a replica: while the primary commits, each setting a group of
    8 tokens to one stamp, readers on the replica never see a group mixing stamps, nor a stamp that
    is not the one the version they were answered at holds."""
    kb, address = primary
    proc, replica = follow(tmp_path / "replica", address)
    try:
        reads = stamped_reads(address, replica, edits=60, dim=8, groups=4, readers=2, timeout=60)
    finally:
        stop_server(proc)
    assert len(reads["edits"]) == 60 and len({v for v, *_ in reads["reads"]}) > 1  # reads spanned the edits
    assert bad_reads(reads) == (0, 0)
