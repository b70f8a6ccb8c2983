"""Memory Mosaic reads through the service: what the store (version masks, index upkeep) and gRPC
add on top of the raw math of indexes/mosaic.py, measured side by side in one run.

One group of n pairs (d = dv = 64, random unit keys), 16 queries per call. For each mode:
raw (the indexes/mosaic.py function on numpy arrays), store (KnowledgeBase.mosaic.query, in
process) and grpc (MosaicClient.query against a real `memsvc serve` on loopback). Also: reading
an old version (a mask over the slots) against the head, and the first LSH read after a commit
of 1,000 pairs (the index catches up) against a read with the index current.

Run: .venv/bin/python -m bench.mosaic_service   (from the repo root, which holds tests/; ~1-2 min, 2 cores)
Test: tests/test_mosaic_service.py checks the same paths against kernel_regression.
"""
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clients.client import MemoryClient
from clients.mosaic import MosaicClient
from indexes.lsh import SimHashConfig, SimHashIndex
from indexes.mosaic import kernel_regression, lsh_regression, topk_regression
from memsvc.core.mosaic import LshParams
from memsvc.server.spawn import spawn_server, stop_server
from memsvc.store import KnowledgeBase, StoreConfig

LOG = logging.getLogger("bench.mosaic_service")


@dataclass
class BenchConfig:
    pairs: int = 100_000
    dim: int = 64
    queries: int = 16
    beta: float = 8.0
    k: int = 64
    lsh_bits: int = 8
    lsh_tables: int = 40
    repeats: int = 5


def best_ms(fns: dict, repeats) -> dict:
    """Best time (ms) of each function, run round-robin so that load on the machine hits all alike."""
    for fn in fns.values():
        fn()  # warm: builds indexes
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * min(t) for name, t in times.items()}


def main(config=BenchConfig()):
    rng = np.random.default_rng(0)
    keys = rng.standard_normal((config.pairs, config.dim)).astype(np.float32)
    keys /= np.linalg.norm(keys, axis=1, keepdims=True)
    values = rng.standard_normal((config.pairs, config.dim)).astype(np.float32)
    queries = rng.standard_normal((config.queries, config.dim)).astype(np.float32)
    lsh = LshParams(bits=config.lsh_bits, tables=config.lsh_tables)
    data = Path(tempfile.mkdtemp()) / "kb"
    with KnowledgeBase(StoreConfig(data_dir=data, create=True, durable=False)) as kb:
        kb.mosaic.create("m", 1, 1, config.dim, config.dim, topk_index="exact")
        half = config.pairs // 2
        kb.mosaic.add("m", 0, 0, keys[:half], values[:half])
        old = kb.mosaic.add("m", 0, 0, keys[half:], values[half:]).version - 1
    proc, address = spawn_server(data)
    simhash = SimHashIndex(SimHashConfig(bits=config.lsh_bits, tables=config.lsh_tables), config.dim)
    simhash.add(np.arange(config.pairs), keys)
    raw = {"exact": lambda: kernel_regression(queries, keys, values, config.beta),
           "topk": lambda: topk_regression(queries, keys, values, config.beta, config.k),
           "lsh": lambda: lsh_regression(queries, keys, values, config.beta, simhash)}
    rows = []
    try:
        with MemoryClient(address) as client, KnowledgeBase(StoreConfig(data_dir=Path(tempfile.mkdtemp()) / "kb", create=True)) as local:
            remote = MosaicClient(client)
            # the in-process store: the same pairs in a second KB (the server holds the first one's lock)
            local.mosaic.create("m", 1, 1, config.dim, config.dim, topk_index="exact")
            local.mosaic.add("m", 0, 0, keys[:half], values[:half])
            local.mosaic.add("m", 0, 0, keys[half:], values[half:])
            for mode in ("exact", "topk", "lsh"):
                args = dict(beta=config.beta, mode=mode, k=config.k, lsh=lsh)
                row = {"mode": mode, **best_ms({
                    "raw": raw[mode],
                    "store": lambda: local.mosaic.query("m", 0, 0, queries, **args),
                    "grpc": lambda: remote.query("m", 0, 0, queries, **args),
                    "grpc_old": lambda: remote.query("m", 0, 0, queries, version=old, **args)}, config.repeats)}
                rows.append(row)
            more_keys, more_values = keys[:1000] * -1, values[:1000]
            remote.add("m", 0, 0, more_keys, more_values)
            start = time.perf_counter()
            lag = remote.query("m", 0, 0, queries, beta=config.beta, mode="lsh", lsh=lsh).index_lag
            catch_up = 1e3 * (time.perf_counter() - start)
            current = best_ms({"lsh": lambda: remote.query("m", 0, 0, queries, beta=config.beta, mode="lsh", lsh=lsh)},
                              config.repeats)["lsh"]
    finally:
        stop_server(proc)
    print(f"Memory Mosaic reads, n={config.pairs}, d={config.dim}, {config.queries} queries per call (best of {config.repeats}, ms)")
    print(f"{'mode':<6} {'raw':>9} {'store':>9} {'grpc':>9} {'grpc old v':>11} {'store/raw':>10} {'grpc/store':>11} {'old/head':>9}")
    for r in rows:
        print(f"{r['mode']:<6} {r['raw']:>9.2f} {r['store']:>9.2f} {r['grpc']:>9.2f} {r['grpc_old']:>11.2f} "
              f"{r['store'] / r['raw']:>10.2f} {r['grpc'] / r['store']:>11.2f} {r['grpc_old'] / r['grpc']:>9.2f}")
    print(f"LSH after a 1,000-pair commit: {catch_up:.1f} ms (index caught up {lag} pairs) vs {current:.1f} ms current "
          f"-> {catch_up / current:.1f}x")
    by = {r["mode"]: r for r in rows}
    print(json.dumps({
        "mosaic_svc_exact_grpc_over_raw": round(by["exact"]["grpc"] / by["exact"]["raw"], 3),
        "mosaic_svc_topk_grpc_over_raw": round(by["topk"]["grpc"] / by["topk"]["raw"], 3),
        "mosaic_svc_lsh_grpc_over_raw": round(by["lsh"]["grpc"] / by["lsh"]["raw"], 3),
        "mosaic_svc_exact_over_lsh_grpc": round(by["exact"]["grpc"] / by["lsh"]["grpc"], 3),
        "mosaic_svc_old_over_head_exact": round(by["exact"]["grpc_old"] / by["exact"]["grpc"], 3),
        "mosaic_svc_lsh_catchup_over_current": round(catch_up / current, 2),
    }))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
