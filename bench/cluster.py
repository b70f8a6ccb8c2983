"""Read replicas past one machine (issue 20 item 5, the half without Ray): a primary and a
`memsvc serve --follow` replica as processes on loopback, over a bank of --tokens x 4 layers x
--dim bfloat16 rows (default 65,536 x 4 x 2,048: 1 GiB).

    lag        single-token edits to the primary at --rate edits/s; for each, the time from the
               edit's reply (commit acknowledged) to a Lookup on the replica that names its
               version as min_version answering (readable there): p50 / p99. The replica waits on
               its commit log's condition, so the figure is not a polling interval.
    bootstrap  a fresh replica of the bank: the time its own log reports from the first byte to
               the swap into place (files fsynced), against copying the primary's data directory
               with shutil.copytree and fsyncing the copy (the plain file copy, same disk).

Targets (issue 20): lag p50 <= 50 ms and p99 <= 250 ms at 20 edits/s; bootstrap <= 2x the copy.
Run: .venv/bin/python bench/cluster.py [--quick]. Test: tests/test_replica.py.
"""
import argparse
import json
import logging
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from clients.client import MemoryClient  # noqa: E402
from memsvc.core.values import RowOp  # noqa: E402
from memsvc.server.spawn import spawn_server, stop_server  # noqa: E402
from memsvc.store import KnowledgeBase, StoreConfig  # noqa: E402
from memsvc.store.checkpoints import ChunkedRows  # noqa: E402
from memsvc.store.files import fsync_tree  # noqa: E402

LOG = logging.getLogger("bench.cluster")


def make_kb(root: Path, tokens, dim, layers=4):
    """A bank written a slice of tokens at a time (bounded memory), random bfloat16 rows."""
    rng = np.random.default_rng(0)
    rows = ChunkedRows((tokens, layers, dim), np.float32,
                       lambda a, b: rng.standard_normal((b - a, layers, dim), dtype=np.float32))
    with KnowledgeBase(StoreConfig(data_dir=root, create=True)) as kb:
        kb.import_table("stem", rows, [f"t{i}" for i in range(tokens)], dtype="bfloat16")


def bootstrap_seconds(log: Path) -> float:
    m = re.search(r"bootstrapped version \d+ in ([\d.]+) s", log.read_text())
    return float(m.group(1))


def measure_lag(primary, replica, edits, rate, dim):
    lags = []
    with MemoryClient(primary) as p, MemoryClient(replica, primary=primary) as r:
        period = 1.0 / rate
        start = time.perf_counter()
        for i in range(edits):
            time.sleep(max(0.0, start + i * period - time.perf_counter()))  # a steady rate, not a burst
            v = p.edit("stem", [RowOp("set", token_id=i % 100, vector=np.full(dim, i, np.float32), layers=[0])]).version
            acknowledged = time.perf_counter()
            r.last_write_version = v  # what a client that wrote v asks its replica for
            assert r.lookup("stem", [i % 100], layers=[0]).version >= v
            lags.append(time.perf_counter() - acknowledged)
    return np.array(lags) * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=65536)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--edits", type=int, default=400)
    ap.add_argument("--rate", type=float, default=20.0, help="edits per second")
    ap.add_argument("--quick", action="store_true", help="4,096 tokens x 256 (8 MiB), 40 edits: shows the script works")
    args = ap.parse_args()
    if args.quick:
        args.tokens, args.dim, args.edits = 4096, 256, 40
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        tmp = Path(tmp)
        make_kb(tmp / "primary", args.tokens, args.dim)
        nbytes = sum(f.stat().st_size for f in (tmp / "primary").rglob("*") if f.is_file())
        start = time.perf_counter()
        shutil.copytree(tmp / "primary", tmp / "copy")
        fsync_tree(tmp / "copy")  # durable, as the replica's files are
        copy_s = time.perf_counter() - start
        shutil.rmtree(tmp / "copy")
        primary, address = spawn_server(tmp / "primary", timeout=120)
        replica_proc = None
        try:
            replica_proc, replica = spawn_server(tmp / "replica", "--follow", address, log=tmp / "replica.log",
                                                 timeout=600)
            boot_s = bootstrap_seconds(tmp / "replica.log")
            lags = measure_lag(address, replica, args.edits, args.rate, args.dim)
        finally:
            if replica_proc is not None:
                stop_server(replica_proc)
            stop_server(primary)
    result = {"bank_bytes": nbytes, "copy_s": round(copy_s, 3), "bootstrap_s": round(boot_s, 3),
              "bootstrap_vs_copy": round(boot_s / copy_s, 2), "edits": args.edits, "rate": args.rate,
              "lag_p50_ms": round(float(np.percentile(lags, 50)), 2), "lag_p99_ms": round(float(np.percentile(lags, 99)), 2),
              "lag_max_ms": round(float(lags.max()), 2)}
    LOG.info("bank %.1f MiB: copy %.3f s, bootstrap %.3f s (%.2fx)", nbytes / 2**20, copy_s, boot_s, boot_s / copy_s)
    LOG.info("lag at %g edits/s over %d edits: p50 %.2f ms, p99 %.2f ms", args.rate, args.edits,
             result["lag_p50_ms"], result["lag_p99_ms"])
    print(json.dumps(result))


if __name__ == "__main__":
    main()
