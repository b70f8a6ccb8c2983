"""Faults without damage: streams that never close, a full disk, damaged files (issue 19).

Against real `memsvc serve` processes over a small KB (64 tokens x 3 layers x 8, float16):

    streams  200 idle or abandoned LookupStreams, then a Lookup and a health check from a new
             client: how long each took (today's figure against the 1 s target; before the
             stream limit the server froze at 16)
    disk     the KB on an 8 MB tmpfs (root only) filled up: what Edit and Tag answered, whether
             reads still matched, whether a SIGTERM on the full disk lost the saved query log,
             and whether writes came back once space was freed
    damage   each kind of file damaged in a fresh copy of the KB (a flipped byte in a delta row,
             a base row or a mosaic pair, a deleted delta row, pair or checksum record, a commit's
             rows or pairs deleted with their record, a flipped removed_in of a token or a pair,
             a deleted removals record included):
             what `memsvc serve` said (its one line, or that it served) and fsck's findings, every
             (version, token) row read alone and every (version, head) mosaic query compared with
             the undamaged KB's: equal, refused (and the first refusal's message), or wrong
             (served with status OK and different)

The figures are counts and what each side said: no timing baseline. Run:
.venv/bin/python bench/faults.py (~1 min). Tests: tests/test_limits.py and tests/test_faults.py.
"""
import json
import logging
import os
import queue
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from clients.client import MemoryClient  # noqa: E402
from clients.mosaic import MosaicClient  # noqa: E402
from clients.search import SearchClient  # noqa: E402
from memsvc.core.errors import MemsvcError  # noqa: E402
from memsvc.core.values import RowOp  # noqa: E402
from memsvc.server.spawn import spawn_server, stop_server  # noqa: E402
from memsvc.store import KnowledgeBase, StoreConfig  # noqa: E402
from memsvc.store.backup import fsck  # noqa: E402
from memsvc.v1 import knowledge_pb2 as pb  # noqa: E402

LOG = logging.getLogger("bench.faults")
WORDS = [f"w{i}" for i in range(64)]
MOSAIC_VERSIONS = (8, 9, 10)  # after the bank's 6 and the store's create (7): pairs added to heads 0, 1, one replaced
QUERIES = np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)


def make_kb(data):
    """The KB: an import and 5 edits (delta rows), a mosaic store 'facts' (1 layer, 2 heads, 8 -> 8;
    versions 7-10), an exact index and a query log."""
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((64, 3, 8)).astype(np.float32)
    with KnowledgeBase(StoreConfig(data_dir=data, create=True)) as kb:
        kb.import_table("stem", rows, WORDS, dtype="float16", message="import")
        for i in range(5):
            kb.edit("stem", [RowOp("copy", token=f"w{i}", source_token=f"w{63 - i}")], message=f"e{i}")
        kb.mosaic.create("facts", num_layers=1, num_heads=2, key_dim=8, value_dim=8)
        kb.mosaic.add("facts", 0, 0, rng.standard_normal((4, 8)), rng.standard_normal((4, 8)))
        kb.mosaic.add("facts", 0, 1, rng.standard_normal((3, 8)), rng.standard_normal((3, 8)))
        kb.mosaic.replace("facts", 0, 0, [0], rng.standard_normal((1, 8)), rng.standard_normal((1, 8)))
    proc, address = spawn_server(data)
    with MemoryClient(address) as client:
        SearchClient(client).create("ix", "stem", config={"kind": "exact"}, wait=True)
        SearchClient(client).search("stem", tokens=WORDS[:8], k=3)
    stop_server(proc)
    return data


def all_rows(address) -> np.ndarray:
    with MemoryClient(address, timeout=20) as client:
        return np.stack([client.lookup("stem", list(range(64)), version=v).in_request_order() for v in range(1, 7)])


def all_outputs(address) -> dict:
    """EXACT outputs of QUERIES over each mosaic (version, head)."""
    with MemoryClient(address, timeout=20) as client:
        return {(v, h): MosaicClient(client).query("facts", 0, h, QUERIES, beta=2.0, version=v).outputs
                for v in MOSAIC_VERSIONS for h in (0, 1)}


def streams(data) -> dict:
    proc, address = spawn_server(data)
    channels = [grpc.insecure_channel(address) for _ in range(20)]
    feeds, calls = [], []
    message = pb.LookupRequest(table="stem", tokens=["w1"]).SerializeToString()
    for i, channel in enumerate(channels):
        for _ in range(10):
            feed = queue.SimpleQueue()
            if i % 2:
                feed.put(message)  # abandoned: one message, its reply never read
            calls.append(channel.stream_stream("/memsvc.v1.KnowledgeService/LookupStream")(iter(feed.get, None)))
            feeds.append(feed)
    time.sleep(1.0)  # let every stream reach the server
    result = {}
    with grpc.insecure_channel(address) as channel:
        start = time.perf_counter()
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
        result["health_ms"] = round(1000 * (time.perf_counter() - start), 1)
    with MemoryClient(address, timeout=30, stream_lookups=False) as client:
        start = time.perf_counter()
        client.lookup("stem", ["w1"])
        result["lookup_ms"] = round(1000 * (time.perf_counter() - start), 1)
    result["refused_streams"] = sum(1 for c in calls if c.done() and c.code() == grpc.StatusCode.RESOURCE_EXHAUSTED)
    for feed in feeds:
        feed.put(None)
    for call in calls:
        call.cancel()
    for channel in channels:
        channel.close()
    stop_server(proc)
    return result


def fill(folder) -> Path:
    """Fills the file system of folder; returns the filler file (delete it to free the space)."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:  # unbuffered: a full disk fails the write, not the close
        try:
            while True:
                f.write(b"\0" * (1 << 16))
        except OSError:
            pass
    return filler


def full_disk(template, workdir) -> dict:
    if os.geteuid() != 0:
        return {"skipped": "mounting a tmpfs needs root"}
    fs = workdir / "fs"
    fs.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(fs)], check=True)
    try:
        data = shutil.copytree(template, fs / "kb")
        log = data / "indexes" / "querylog" / "stem@0.npz"
        saved = log.read_bytes()
        proc, address = spawn_server(data)
        expected = all_rows(address)
        said = {}
        with MemoryClient(address, timeout=20) as client:
            SearchClient(client).search("stem", tokens=WORDS * 4, k=2)  # the log changes: saved at SIGTERM
            filler = fill(fs)
            for name, write in (("edit", lambda: client.edit("stem", [RowOp("copy", token="w9", source_token="w8")])),
                                ("tag", lambda: client.tag("full"))):
                try:
                    said[name] = f"OK version {write()}"
                except MemsvcError as e:
                    said[name] = f"{type(e).__name__}: {e}"
            said["version_after"] = client.version
        said["reads_equal"] = bool((all_rows(address) == expected).all())
        stop_server(proc)  # SIGTERM on the full disk: the query log save fails whole
        said["query_log_kept"] = log.read_bytes() == saved
        filler.unlink()
        proc, address = spawn_server(data)
        with MemoryClient(address, timeout=20) as client:
            said["edit_after_space"] = client.edit("stem", [RowOp("copy", token="w9", source_token="w8")]).version
        stop_server(proc)
        return said
    finally:
        subprocess.run(["umount", "-l", str(fs)], check=True)


def _overwrite(path, offset, garbage):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(garbage)


def _flip_delta(data):
    with sqlite3.connect(data / "catalog.db") as db:
        rowid, blob = db.execute("select rowid, data from deltas order by rowid limit 1").fetchone()
        flipped = bytearray(blob)
        flipped[3] ^= 0x40
        db.execute("update deltas set data=? where rowid=?", [bytes(flipped), rowid])


def _delete_delta(data):
    with sqlite3.connect(data / "catalog.db") as db:
        db.execute("delete from deltas where rowid=(select max(rowid) from deltas)")


def _sql(data, statement, params=()):
    with sqlite3.connect(data / "catalog.db") as db:
        return db.execute(statement, params).fetchall()


def _flip_pair(data):
    """One bit of the key of the first pair stored (head 0, commit 8; replaced at 10)."""
    (rowid, key), = _sql(data, "select rowid, key from mosaic_pairs order by rowid limit 1")
    _sql(data, "update mosaic_pairs set key=? where rowid=?", [bytes([key[0] ^ 0x01]) + key[1:], rowid])


def _flip_base(data):
    """One bit of token 40's row (a token no edit writes) in the base's data, past its header."""
    path = data / "bases" / "stem" / "v1.npy"
    offset = path.stat().st_size - (64 - 40) * 3 * 8 * 2 + 5
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


DAMAGE = {
    "base truncated to 0 bytes": lambda d: (d / "bases" / "stem" / "v1.npy").write_bytes(b""),
    "base header overwritten": lambda d: _overwrite(d / "bases" / "stem" / "v1.npy", 0, b"garbage!"),
    "catalog header": lambda d: _overwrite(d / "catalog.db", 0, b"not a sqlite header!"),
    "catalog b-tree page": lambda d: _overwrite(d / "catalog.db", 12 * 4096, b"\x0d\x00\x13" * 300),
    "catalog first-page flips": lambda d: _overwrite(d / "catalog.db", 200, bytes(np.random.default_rng(3).integers(0, 256, 16, np.uint8))),
    "index meta.json": lambda d: (d / "indexes" / "ix" / "meta.json").write_bytes(b"{not json"),
    "query log 0 bytes": lambda d: (d / "indexes" / "querylog" / "stem@0.npz").write_bytes(b""),
    "delta row byte flipped": _flip_delta,
    "delta row deleted": _delete_delta,
    "delta_sums record deleted": lambda d: _sql(d, "delete from delta_sums where commit_id=(select max(commit_id) from delta_sums)"),
    "base row byte flipped": _flip_base,
    "mosaic pair byte flipped": _flip_pair,
    "mosaic pair deleted": lambda d: _sql(d, "delete from mosaic_pairs where rowid=(select max(rowid) from mosaic_pairs)"),
    "pair_sums record deleted": lambda d: _sql(d, "delete from pair_sums where commit_id=(select min(commit_id) from pair_sums)"),
    "base_sums record deleted": lambda d: _sql(d, "delete from base_sums"),
    "a commit's delta rows and record deleted": lambda d: (_sql(d, "delete from deltas where commit_id=6"),
                                                           _sql(d, "delete from delta_sums where commit_id=6")),
    "a commit's pairs and record deleted": lambda d: (_sql(d, "delete from mosaic_pairs where added_in=9"),
                                                      _sql(d, "delete from pair_sums where commit_id=9")),
    "token removed_in flipped": lambda d: _sql(d, "update tokens set removed_in=3 where token_id=40"),
    "pair removed_in flipped": lambda d: _sql(d, "update mosaic_pairs set removed_in=? where removed_in=10", [2**62]),
    "removals record deleted": lambda d: _sql(d, "delete from removals where commit_id=10"),
}


def rows_one_by_one(address, expected) -> dict:
    """Every (version, token) read alone: how many were served equal, served wrong, or refused
    (and the first refusal), so one damaged row cannot hide the others' answers."""
    said = {"rows_equal": 0, "wrong_rows": 0, "refused_rows": 0}
    with MemoryClient(address, timeout=20, stream_lookups=False) as client:
        for v in range(1, 7):
            for tok in range(64):
                try:
                    row = client.lookup("stem", [tok], version=v).in_request_order()[0]
                except MemsvcError as e:
                    said["refused_rows"] += 1
                    said.setdefault("first_refusal", f"{type(e).__name__}: {str(e)[:200]}")
                    continue
                said["rows_equal" if (row == expected[v - 1, tok]).all() else "wrong_rows"] += 1
    return said


def pairs_one_by_one(address, expected) -> dict:
    """Every mosaic (version, head) queried alone: answers equal to the undamaged KB's, wrong
    (status OK, different: computed over a wrong pair), or refused (and the first refusal)."""
    said = {"pair_reads_equal": 0, "wrong_pair_reads": 0, "refused_pair_reads": 0}
    with MemoryClient(address, timeout=20, stream_lookups=False) as client:
        for (v, h), outputs in expected.items():
            try:
                got = MosaicClient(client).query("facts", 0, h, QUERIES, beta=2.0, version=v).outputs
            except MemsvcError as e:
                said["refused_pair_reads"] += 1
                said.setdefault("first_pair_refusal", f"{type(e).__name__}: {str(e)[:200]}")
                continue
            said["pair_reads_equal" if np.array_equal(got, outputs) else "wrong_pair_reads"] += 1
    return said


def damage(template, workdir, expected, expected_pairs) -> dict:
    results = {}
    for i, (kind, hurt) in enumerate(DAMAGE.items()):
        data = shutil.copytree(template, workdir / f"damaged{i}")
        hurt(data)
        report = fsck(data)
        said = {"fsck": "ok" if report.ok else f"DAMAGED: {' | '.join(p[:160] for p in report.problems[:3])}"}
        try:
            proc, address = spawn_server(data)
        except RuntimeError as e:
            said["serve"] = str(e).strip().splitlines()[-1][:200]
        else:
            said["serve"] = "served"
            said.update(rows_one_by_one(address, expected))
            said.update(pairs_one_by_one(address, expected_pairs))
            stop_server(proc)
        results[kind] = said
        LOG.info("%-28s %s", kind, said)
    return results


def main():
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        template = make_kb(workdir / "template")
        proc, address = spawn_server(template)
        expected, expected_pairs = all_rows(address), all_outputs(address)
        stop_server(proc)
        streams_said = streams(shutil.copytree(template, workdir / "streams"))
        LOG.info("200 open streams: %s", streams_said)
        disk_said = full_disk(template, workdir)
        LOG.info("full disk: %s", disk_said)
        damage_said = damage(template, workdir, expected, expected_pairs)
    wrong = sum(d.get("wrong_rows", 0) for d in damage_said.values())
    wrong_pairs = sum(d.get("wrong_pair_reads", 0) for d in damage_said.values())
    tracebacks = sum("Traceback" in json.dumps(d) or "Aborted" in json.dumps(d) for d in damage_said.values())
    print(json.dumps({"streams": streams_said, "full_disk": disk_said, "damage": damage_said,
                      "wrong_rows_served": wrong, "wrong_pair_reads_served": wrong_pairs, "tracebacks": tracebacks}))


if __name__ == "__main__":
    main()
