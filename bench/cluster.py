"""Read replicas past one machine (issue 20 item 5, the half without Ray): a primary and
`memsvc serve --follow` replicas as processes on loopback, over a bank of --tokens x 4 layers x
--dim bfloat16 rows (default 65,536 x 4 x 2,048: 1 GiB).

    bootstrap  a fresh replica of the bank: the time its own log reports from the first byte to
               the swap into place (files fsynced), against two baselines, each durable (fsynced)
               on the same disk: the plain file copy (shutil.copytree: sendfile in the kernel, no
               network), and the same files streamed over a raw loopback TCP socket (sendfile out,
               recv_into and write in: "copying it over loopback", the honest comparison). Each is
               run --repeats times, interleaved; medians (the machine is shared).
    lag        single-token edits to the primary at --rate edits/s; for each, the time from the
               edit's reply (commit acknowledged) to a Lookup on the replica that names its
               version as min_version answering (readable there): p50 / p99. The replica waits on
               its commit log's condition, so the figure is not a polling interval.
    torn       bench/load.py's stamps over a replica: one writer sets every row of a group of 8
               tokens to one stamp per commit on the primary while reader threads look groups up
               on the replica; a read mixing stamps is torn, a read whose stamp is not the one
               its version holds is a wrong version. Both must be 0.
    lookups    lookup throughput (16 tokens x 4 layers a call) of --clients client processes x 4
               threads against 1 replica, then spread over 2 replicas.

Targets (issue 20): lag p50 <= 50 ms and p99 <= 250 ms at 20 edits/s; bootstrap <= 2x copying
over loopback; 0 torn reads. Run: .venv/bin/python bench/cluster.py [--quick]. Test:
tests/test_replica.py.
"""
import argparse
import json
import logging
import os
import re
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from bench.load import LoadConfig, bad_reads, latency_table, run_phase  # noqa: E402
from clients.client import MemoryClient  # noqa: E402
from memsvc.core.values import RowOp  # noqa: E402
from memsvc.server.spawn import spawn_server, stop_server  # noqa: E402
from memsvc.store import KnowledgeBase, StoreConfig  # noqa: E402
from memsvc.store.checkpoints import ChunkedRows  # noqa: E402
from memsvc.store.files import fsync_tree  # noqa: E402

LOG = logging.getLogger("bench.cluster")
TABLE = "stem"
STAMPS = 250  # the stamps 1..250 in turn: integers a bfloat16 holds exactly


def make_kb(root: Path, tokens, dim, layers=4):
    """A bank written a slice of tokens at a time (bounded memory), random bfloat16 rows."""
    rng = np.random.default_rng(0)
    rows = ChunkedRows((tokens, layers, dim), np.float32,
                       lambda a, b: rng.standard_normal((b - a, layers, dim), dtype=np.float32))
    with KnowledgeBase(StoreConfig(data_dir=root, create=True)) as kb:
        kb.import_table(TABLE, rows, [f"t{i}" for i in range(tokens)], dtype="bfloat16")


def bootstrap_seconds(log: Path) -> float:
    m = re.search(r"bootstrapped version \d+ in ([\d.]+) s", log.read_text())
    return float(m.group(1))


def file_copy_seconds(src: Path, dst: Path) -> float:
    """The plain file copy of a data directory, fsynced as a replica's files are."""
    start = time.perf_counter()
    shutil.copytree(src, dst)
    fsync_tree(dst)
    seconds = time.perf_counter() - start
    shutil.rmtree(dst)
    return seconds


def socket_copy_seconds(src: Path, dst: Path) -> float:
    """The files of ``src`` streamed over a loopback TCP socket into ``dst`` and fsynced: the
    sender sendfile()s each file, the receiver recv_into()s 4 MiB at a time and writes (the
    sizes known to both: no framing, no checksum, the least a copy over the network does)."""
    files = [p for p in sorted(src.rglob("*")) if p.is_file()]
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(60)

    def send():
        conn, _ = listener.accept()
        with conn:
            for p in files:
                with open(p, "rb") as f:
                    conn.sendfile(f)

    sender = threading.Thread(target=send, name="socket-copy-sender", daemon=True)
    buf = memoryview(bytearray(4 << 20))
    start = time.perf_counter()
    sender.start()
    with socket.create_connection(listener.getsockname(), timeout=60) as s:
        for p in files:
            out = dst / p.relative_to(src)
            out.parent.mkdir(parents=True, exist_ok=True)
            with open(out, "wb") as f:
                left = p.stat().st_size
                while left:
                    n = s.recv_into(buf[:min(left, len(buf))])
                    if not n:
                        raise RuntimeError(f"socket copy: the sender stopped inside {p}")
                    f.write(buf[:n])
                    left -= n
                f.flush()
                os.fsync(f.fileno())
    fsync_tree(dst)
    seconds = time.perf_counter() - start
    sender.join(timeout=60)
    listener.close()
    shutil.rmtree(dst)
    return seconds


def bootstraps(tmp: Path, address, repeats):
    """``repeats`` fresh replicas of the primary at ``address``, each bootstrap timed between a
    file copy and a socket copy of the primary's directory: ([(file copy s, socket s, bootstrap s)],
    [(process, address)] of the first two replicas, left serving: the caller stops them)."""
    times, kept = [], []
    try:
        for i in range(repeats):
            copy_s = file_copy_seconds(tmp / "primary", tmp / "copy")
            socket_s = socket_copy_seconds(tmp / "primary", tmp / "copy")
            proc, replica = spawn_server(tmp / f"replica{i}", "--follow", address, log=tmp / f"replica{i}.log",
                                         timeout=600)
            kept.append((proc, replica))
            times.append((copy_s, socket_s, bootstrap_seconds(tmp / f"replica{i}.log")))
            LOG.info("bootstrap %d: file copy %.3f s, socket copy %.3f s, bootstrap %.3f s", i, *times[-1])
            if len(kept) > 2:
                stop_server(kept.pop()[0])
                shutil.rmtree(tmp / f"replica{i}")
    except BaseException:
        for proc, _ in kept:
            stop_server(proc)
        raise
    return times, kept


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


def stamped_reads(primary, replica, edits, dim, groups=8, group_size=8, readers=2, timeout=120.0) -> dict:
    """bench/load.py's torn-read check over a replica: ``edits`` commits on the primary, each
    setting every row (all layers) of one group of ``group_size`` tokens to one stamp, while
    ``readers`` threads look a group up on the replica, from before the first edit until after the
    replica has applied the last. The groups are set to stamp 0 first and read from that version on. Returns
    {"reads": [(version, group, distinct values, first value)], "edits": [(version, group, stamp)]}
    for load.bad_reads; a reader's error is raised here."""
    def group(g):
        return list(range(g * group_size, (g + 1) * group_size))

    def stamp(g, value):
        return [RowOp("set", token_id=t, vector=np.full(dim, value, np.float32)) for t in group(g)]

    out, errors, reading, done = {"reads": [], "edits": []}, [], threading.Event(), threading.Event()
    with MemoryClient(primary, timeout=60) as p:
        zeroed = p.edit(TABLE, [op for g in range(groups) for op in stamp(g, 0.0)], message="stamp 0").version

        def read(seed):
            rng = np.random.default_rng(seed)
            try:
                with MemoryClient(replica, primary=primary, timeout=60) as r:
                    r.last_write_version = zeroed  # every read at a version where the groups are stamped
                    while not done.is_set():
                        g = int(rng.integers(groups))
                        result = r.lookup(TABLE, group(g))
                        rows = result.in_request_order()
                        out["reads"].append((result.version, g, len(np.unique(rows)), float(rows.flat[0])))
                        reading.set()
            except Exception as e:  # noqa: BLE001 - raised in the caller's thread
                errors.append(e)
                reading.set()

        threads = [threading.Thread(target=read, args=(i,), name=f"stamped-reader-{i}", daemon=True) for i in range(readers)]
        for t in threads:
            t.start()
        try:
            if not reading.wait(timeout):
                raise RuntimeError(f"torn-read check: no read on {replica} in {timeout:g} s")
            for i in range(edits):
                value = float(1 + i % STAMPS)
                out["edits"].append((p.edit(TABLE, stamp(i % groups, value), message=f"stamp {value:g}").version,
                                     i % groups, value))
            with MemoryClient(replica, timeout=60) as r:  # until a read after the replica applied the last edit
                deadline, last = time.monotonic() + timeout, out["edits"][-1][0] if edits else zeroed
                while r.version < last and time.monotonic() < deadline and not errors:
                    time.sleep(0.01)
                seen = len(out["reads"])
                while len(out["reads"]) == seen and time.monotonic() < deadline and not errors:
                    time.sleep(0.01)
        finally:
            done.set()
            for t in threads:
                t.join(timeout=60)
    if errors:
        raise errors[0]
    return out


def cpu_seconds(pid) -> float:
    """CPU time (user + system) process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def lookup_rate(replicas, args) -> tuple:
    """(lookups per second, cores the replica processes used) of args.clients processes x 4
    threads, process p calling replicas[p % len(replicas)] ((process, address) pairs; bench/load.py's
    lookup-only clients)."""
    config = LoadConfig(processes=args.clients, threads=4, vocab=args.tokens, layers=4, dim=args.dim)
    before = sum(cpu_seconds(proc.pid) for proc, _ in replicas)
    phase = run_phase([address for _, address in replicas], config, False, args.lookup_seconds)
    cores = (sum(cpu_seconds(proc.pid) for proc, _ in replicas) - before) / args.lookup_seconds
    return latency_table(phase, args.lookup_seconds)["Lookup"]["per_s"], cores


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=65536)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3, help="bootstraps (each between a file and a socket copy)")
    ap.add_argument("--edits", type=int, default=400)
    ap.add_argument("--rate", type=float, default=20.0, help="edits per second")
    ap.add_argument("--torn-edits", type=int, default=200, help="stamped edits, as fast as the primary takes them")
    ap.add_argument("--clients", type=int, default=4, help="lookup client processes (x 4 threads)")
    ap.add_argument("--lookup-seconds", type=float, default=10.0)
    ap.add_argument("--quick", action="store_true", help="4,096 tokens x 256 (8 MiB), a few seconds: shows the script works")
    args = ap.parse_args()
    if args.quick:
        args.tokens, args.dim, args.repeats, args.edits, args.torn_edits, args.lookup_seconds = 4096, 256, 2, 40, 40, 2.0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        tmp = Path(tmp)
        make_kb(tmp / "primary", args.tokens, args.dim)
        nbytes = sum(f.stat().st_size for f in (tmp / "primary").rglob("*") if f.is_file())
        primary, address = spawn_server(tmp / "primary", timeout=120)
        replicas = []
        try:
            times, replicas = bootstraps(tmp, address, args.repeats)
            replica = replicas[0][1]
            lags = measure_lag(address, replica, args.edits, args.rate, args.dim)
            stamped = stamped_reads(address, replica, args.torn_edits, args.dim)
            torn, wrong = bad_reads(stamped)
            one, one_cores = lookup_rate(replicas[:1], args)
            two, two_cores = lookup_rate(replicas[:2], args) if len(replicas) > 1 else (float("nan"), float("nan"))
        finally:
            for proc, _ in replicas:
                stop_server(proc)
            stop_server(primary)
    copy_s, socket_s, boot_s = (statistics.median(t[i] for t in times) for i in range(3))
    result = {"bank_bytes": nbytes, "repeats": args.repeats, "copy_s": round(copy_s, 3), "socket_copy_s": round(socket_s, 3),
              "bootstrap_s": round(boot_s, 3), "bootstrap_vs_copy": round(boot_s / copy_s, 2),
              "bootstrap_vs_socket_copy": round(boot_s / socket_s, 2), "edits": args.edits, "rate": args.rate,
              "lag_p50_ms": round(float(np.percentile(lags, 50)), 2), "lag_p99_ms": round(float(np.percentile(lags, 99)), 2),
              "lag_max_ms": round(float(lags.max()), 2), "torn_edits": args.torn_edits,
              "reads_checked": len(stamped["reads"]), "versions_read": len({r[0] for r in stamped["reads"]}), "torn_reads": torn,
              "wrong_version_reads": wrong, "lookups_per_s_1_replica": round(one, 1),
              "lookups_per_s_2_replicas": round(two, 1), "two_over_one": round(two / one, 2),
              "replica_cores_1": round(one_cores, 2), "replica_cores_2": round(two_cores, 2), "cores": os.cpu_count()}
    LOG.info("bank %.1f MiB, medians of %d: file copy %.3f s, socket copy %.3f s, bootstrap %.3f s (%.2fx the file copy, "
             "%.2fx the socket copy)", nbytes / 2**20, args.repeats, copy_s, socket_s, boot_s, boot_s / copy_s, boot_s / socket_s)
    LOG.info("lag at %g edits/s over %d edits: p50 %.2f ms, p99 %.2f ms", args.rate, args.edits,
             result["lag_p50_ms"], result["lag_p99_ms"])
    LOG.info("torn reads over a replica during %d edits: %d reads at %d versions, %d torn, %d of a wrong version",
             args.torn_edits, result["reads_checked"], result["versions_read"], torn, wrong)
    LOG.info("lookups/s, %d client processes x 4 threads: 1 replica %.0f (it used %.2f cores), 2 replicas %.0f (%.2fx; "
             "they used %.2f cores together) on a machine of %d cores", args.clients, one, one_cores, two, two / one,
             two_cores, os.cpu_count())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
