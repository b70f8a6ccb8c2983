"""Load: 32 concurrent clients against one `memsvc serve` mixing lookups (90%), ANN searches and mosaic queries
and edits; throughput, p50/p99 latency per RPC, errors, and torn reads.

Every edit sets all rows of one group of 8 tokens to one unique stamp in a single commit, so a
lookup of a group must see one stamp across all its rows and layers (else: torn), and that stamp
must be the one the newest edit at or below the version the reply names wrote (else: wrong
version); both are checked for every lookup after the run. The baseline is the same clients
doing lookups only, measured first in the same run: the table shows the mixed run's lookup
latency as a ratio of it.

Clients are 4 processes x 8 threads (one Python process cannot drive 32 clients; the machine
has 2 cores, shared with the server). Run: .venv/bin/python bench/load.py   (~1.5 min)
"""
import argparse
import json
import logging
import multiprocessing as mp
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from bench.crash import TABLE, spawn_server  # noqa: E402
from clients.client import MemoryClient  # noqa: E402
from clients.mosaic import MosaicClient  # noqa: E402
from clients.search import SearchClient  # noqa: E402
from memsvc.core.errors import MemsvcError  # noqa: E402
from memsvc.core.values import RowOp  # noqa: E402
from memsvc.store import KnowledgeBase, StoreConfig  # noqa: E402

LOG = logging.getLogger("bench.load")
MOSAIC = "mem"


@dataclass
class LoadConfig:
    processes: int = 4
    threads: int = 8  # clients = processes x threads
    seconds: float = 60.0
    baseline_seconds: float = 15.0
    lookup_share: float = 0.90
    search_share: float = 0.05  # half ANN searches of the bank, half mosaic queries; the rest are edits
    vocab: int = 4096
    layers: int = 4
    dim: int = 256
    groups: int = 64  # edited token groups: tokens [g*group_size, (g+1)*group_size)
    group_size: int = 8
    batch: int = 16  # tokens per lookup: one group + random others (a decode step)
    pairs: int = 20_000  # mosaic pairs searched
    key_dim: int = 64
    seed: int = 0


def make_kb(data, config):
    """Table rows are 0 for the edited groups (stamp 0 = never edited), random elsewhere."""
    rows = np.random.default_rng(config.seed).standard_normal((config.vocab, config.layers, config.dim)).astype(np.float32)
    rows[:config.groups * config.group_size] = 0.0
    with KnowledgeBase(StoreConfig(data_dir=data, create=True)) as kb:
        kb.import_table(TABLE, rows, [f"t{i}" for i in range(config.vocab)], dtype="float32")


def make_mosaic(address, config):
    rng = np.random.default_rng(config.seed)
    keys = rng.standard_normal((config.pairs, config.key_dim)).astype(np.float32)
    keys /= np.linalg.norm(keys, axis=1, keepdims=True)
    with MemoryClient(address) as c:
        mosaic = MosaicClient(c)
        mosaic.create(MOSAIC, num_layers=1, num_heads=1, key_dim=config.key_dim, value_dim=config.key_dim)
        mosaic.add(MOSAIC, 0, 0, keys, rng.standard_normal((config.pairs, config.key_dim)).astype(np.float32))


def client_thread(address, config, mixed, stop, client_id, out):
    """One client: calls until ``stop``; appends (rpc, seconds, ok) and lookup/edit observations."""
    rng = np.random.default_rng((config.seed, client_id))
    with MemoryClient(address, timeout=60) as c:
        mosaic, search, seq = MosaicClient(c), SearchClient(c), 0
        while not stop.is_set():
            r, g = rng.random(), int(rng.integers(config.groups))
            group = np.arange(g * config.group_size, (g + 1) * config.group_size)
            start = time.perf_counter()
            try:
                if not mixed or r < config.lookup_share:
                    rpc = "Lookup"
                    others = rng.integers(config.groups * config.group_size, config.vocab, config.batch - config.group_size)
                    result = c.lookup(TABLE, np.concatenate([group, others]).tolist())
                    seen = result.in_request_order()[:config.group_size]
                    out["reads"].append((result.version, g, len(np.unique(seen)), float(seen.flat[0])))
                elif r < config.lookup_share + config.search_share / 2:
                    rpc = "Search"  # nearest tokens of an edited group's token: never stale while edits land
                    search.search(TABLE, 0, tokens=[f"t{int(group[0])}"], k=10)
                elif r < config.lookup_share + config.search_share:
                    rpc = "QueryMosaic"
                    mosaic.query(MOSAIC, 0, 0, rng.standard_normal((1, config.key_dim)).astype(np.float32), beta=8.0)
                else:
                    rpc, seq = "Edit", seq + 1
                    stamp = float(client_id * 100_000 + seq)  # unique, exact in float32
                    ops = [RowOp("set", token_id=int(t), vector=np.full(config.dim, stamp, np.float32)) for t in group]
                    out["edits"].append((c.edit(TABLE, ops, message=f"load {stamp}").version, g, stamp))
                ok = True
            except MemsvcError:
                ok = False
            out["calls"].append((rpc, time.perf_counter() - start, ok))


def client_process(address, config, mixed, seconds, proc_id, queue):
    out = {"calls": [], "reads": [], "edits": []}
    stop = threading.Event()
    threads = [threading.Thread(target=client_thread, args=(address, config, mixed, stop, proc_id * config.threads + i, out))
               for i in range(config.threads)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(timeout=120)
    queue.put(out)


def run_phase(addresses, config, mixed, seconds) -> dict:
    """All client processes for ``seconds``, process p calling addresses[p % len(addresses)] (one
    server, or replicas with the clients spread over them); their observations merged."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=client_process, args=(addresses[p % len(addresses)], config, mixed, seconds, p, queue))
             for p in range(config.processes)]
    for p in procs:
        p.start()
    try:
        outs = [queue.get(timeout=seconds + 300) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    return {k: [x for o in outs for x in o[k]] for k in ("calls", "reads", "edits")}


def bad_reads(phase) -> tuple:
    """(torn reads, reads whose stamp is not the one their version holds)."""
    torn = sum(1 for _, _, distinct, _ in phase["reads"] if distinct != 1)
    history = {}  # group -> sorted [(version, stamp)]
    for version, g, stamp in sorted(phase["edits"]):
        history.setdefault(g, []).append((version, stamp))
    wrong = 0
    for version, g, distinct, value in phase["reads"]:
        writes = [s for v, s in history.get(g, []) if v <= version]
        wrong += distinct == 1 and value != (writes[-1] if writes else 0.0)
    return torn, wrong


def latency_table(phase, seconds) -> dict:
    stats = {}
    for rpc in sorted({c[0] for c in phase["calls"]}):
        t = np.array([s for name, s, _ in phase["calls"] if name == rpc])
        errors = sum(1 for name, _, ok in phase["calls"] if name == rpc and not ok)
        stats[rpc] = {"calls": len(t), "per_s": len(t) / seconds, "p50_ms": 1e3 * np.percentile(t, 50),
                      "p99_ms": 1e3 * np.percentile(t, 99), "errors": errors}
    return stats


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=LoadConfig.seconds)
    parser.add_argument("--baseline-seconds", type=float, default=LoadConfig.baseline_seconds)
    args = parser.parse_args()
    config = LoadConfig(seconds=args.seconds, baseline_seconds=args.baseline_seconds)
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        make_kb(Path(tmp) / "kb", config)
        proc, address = spawn_server(Path(tmp) / "kb")
        try:
            make_mosaic(address, config)
            baseline = latency_table(run_phase([address], config, False, config.baseline_seconds), config.baseline_seconds)
            mixed_phase = run_phase([address], config, True, config.seconds)
        finally:
            proc.terminate()
            proc.wait(30)
    mixed = latency_table(mixed_phase, config.seconds)
    torn, wrong = bad_reads(mixed_phase)
    errors = sum(s["errors"] for s in mixed.values())
    clients = config.processes * config.threads
    print(f"{clients} clients, {config.seconds:.0f} s mixed ({config.lookup_share:.0%} lookups of {config.batch} tokens x "
          f"{config.layers} x {config.dim} fp32, {config.search_share:.0%} searches (half ANN over the bank, half mosaic queries over {config.pairs} pairs), rest edits)")
    print(f"{'rpc':<14} {'calls':>8} {'per s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for rpc, s in mixed.items():
        print(f"{rpc:<14} {s['calls']:>8} {s['per_s']:>8.0f} {s['p50_ms']:>8.2f} {s['p99_ms']:>8.2f} {s['errors']:>7}")
    b = baseline["Lookup"]
    print(f"{'Lookup alone':<14} {b['calls']:>8} {b['per_s']:>8.0f} {b['p50_ms']:>8.2f} {b['p99_ms']:>8.2f} {b['errors']:>7}  (baseline, {config.baseline_seconds:.0f} s)")
    ratio50, ratio99 = mixed["Lookup"]["p50_ms"] / b["p50_ms"], mixed["Lookup"]["p99_ms"] / b["p99_ms"]
    print(f"lookup latency mixed / lookups alone: p50 x{ratio50:.2f}, p99 x{ratio99:.2f}")
    print(f"reads checked: {len(mixed_phase['reads'])}; torn: {torn}; wrong version: {wrong}; errors: {errors}")
    print(json.dumps({"clients": clients, "total_per_s": round(sum(s["per_s"] for s in mixed.values()), 1),
                      "lookup_p50_ms": round(mixed["Lookup"]["p50_ms"], 3), "lookup_p99_ms": round(mixed["Lookup"]["p99_ms"], 3),
                      "lookup_p50_mixed_over_alone": round(ratio50, 3), "errors": errors, "torn_reads": torn,
                      "wrong_version_reads": wrong}))


if __name__ == "__main__":
    main()
