"""Memory Mosaic reads: TOPK and LSH (MagicPIG) against EXACT kernel regression, side by side.

1. Accuracy at n = 10^5 pairs: relative error ||o_est − o_exact|| / ||o_exact|| (mean over
   queries) for TOPK and LSH at the same budget (k = the mean number of keys LSH touched), across
   β from wide kernels (long-tailed attention) to sharp ones. `tail` is the softmax mass outside
   the top-budget keys: what top-k throws away.
2. Latency per query at n = 10^4, 10^5, 10^6: EXACT with one query per call (a decode step
   reading one store) and with 16 queries per call (BLAS gemm), TOPK (exact search, k = LSH's
   touched count) and LSH one query at a time, and two parts of LSH's work alone: `retrieve`
   (hashing the query and counting its bucket collisions) and `fetch` (numpy reading the
   retrieved rows of the index's packed copy: random reads, the memory floor of the scoring
   pass). EXACT's BLAS uses both cores, and so does LSH from 262,144 keys up (the slots cut in two
   ranges, each walked and scored by its own thread, indexes/lsh.py SPLIT_KEYS). `f16 Δo`: how far
   the packed copy's float16 keys and values move o from reading float32 arrays (same retrieved set).

Data (chosen to be hard for plain SimHash): keys in a narrow cone (mean pairwise cosine ~0.8)
made of 256 clusters; values = a random vector per cluster + noise, so o(q) depends on which
clusters the kernel reaches. Queries come from the same clusters. d = dv = 64 (a head dim).
Run: .venv/bin/python bench/mosaic.py   (writes bench/out/mosaic.png; ~3-5 min, 2 cores)
Test: tests/test_mosaic_math.py checks the same functions against a float64 brute force.
"""

import copy
import json
import logging
import os
import time
from dataclasses import dataclass

import numpy as np

from indexes.lsh import SimHashConfig, SimHashIndex, choose_tables
from indexes.mosaic import kernel_regression, lsh_regression, topk_regression

LOG = logging.getLogger("bench.mosaic")


@dataclass
class BenchConfig:
    dim: int = 64
    clusters: int = 256
    cone: float = 2.0  # cluster centres = unit(cone·axis + N(0, 1/d)): larger is narrower
    spread: float = 0.5  # keys = unit(centre + spread·N(0, 1/d))
    queries: int = 16
    bits: int = 10  # K, MagicPIG's typical value
    budget: float = 0.05  # fraction of keys LSH should touch
    error_pairs: int = 100_000
    betas: tuple = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0)
    latency_pairs: tuple = (10_000, 100_000, 1_000_000)
    seed: int = 0


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


class ClusteredCone:
    """Keys, values and queries drawn from clusters inside one narrow cone."""

    def __init__(self, config: BenchConfig):
        self.config = config
        self.rng = np.random.default_rng(config.seed)
        d = config.dim
        axis = unit(self.rng.standard_normal(d))
        self.centres = unit(config.cone * axis + self.rng.standard_normal((config.clusters, d)) / np.sqrt(d))
        self.value_centres = self.rng.standard_normal((config.clusters, d))

    def keys(self, n):
        labels = self.rng.integers(0, self.config.clusters, n)
        noise = self.rng.standard_normal((n, self.config.dim)) / np.sqrt(self.config.dim)
        return unit(self.centres[labels] + self.config.spread * noise).astype(np.float32), labels

    def pairs(self, n):
        keys, labels = self.keys(n)
        values = self.value_centres[labels] + 0.5 * self.rng.standard_normal((n, self.config.dim))
        return keys, values.astype(np.float32)


def build_index(config, keys, values, tables):
    index = SimHashIndex(SimHashConfig(bits=config.bits, tables=tables, seed=config.seed), keys.shape[1])
    index.add(np.arange(len(keys)), keys, values)  # reads its packed copy of the rows, as memsvc's does
    index.retrieve(keys[0])  # build the buckets outside the timed region
    return index


def tables_for_budget(config, data, keys, queries):
    """L for the budget, from hashed cosines cos(q, k − c) on a sample (indexes/lsh.choose_tables)."""
    sample = keys[data.rng.choice(len(keys), 4000, replace=False)]
    cosines = unit(sample - keys.mean(axis=0)) @ unit(queries).T
    return choose_tables(config.bits, config.budget, cosines.ravel())


def relative_error(estimate, exact):
    return float(np.mean(np.linalg.norm(estimate - exact, axis=1) / np.linalg.norm(exact, axis=1)))


def accuracy(config, data):
    keys, values = data.pairs(config.error_pairs)
    queries = data.keys(config.queries)[0]
    tables = tables_for_budget(config, data, keys, queries)
    index = build_index(config, keys, values, tables)
    rows = []
    for beta in config.betas:
        o_exact, lse_exact, n = kernel_regression(queries, keys, values, beta)
        o_lsh, _, _, touched = lsh_regression(queries, keys, values, beta, index)
        k = max(1, int(round(touched.mean() * n)))
        o_topk, lse_topk, _ = topk_regression(queries, keys, values, beta, k)
        rows.append(dict(beta=beta, tail=float(np.mean(1 - np.exp(lse_topk - lse_exact))),
                         touched=float(touched.mean()), k=k, topk=relative_error(o_topk, o_exact),
                         lsh=relative_error(o_lsh, o_exact)))
    return tables, rows


def seconds_per_query(readers, queries, repeats=5, settle=0.3):
    """readers: name -> (read, queries per call). Median seconds per query over repeats; the
    readers take turns within each repeat so that load from other processes hits them alike.
    Each starts after `settle` seconds idle: OpenBLAS's threads spin for ~0.1 s after a call and
    would hold the second core against whoever runs next (LSH's two threads after TOPK: 4.2 ->
    6.9 ms a query at n = 10^6, issue #6)."""
    times = {name: [] for name in readers}
    for _ in range(repeats):
        for name, (read, batch) in readers.items():
            time.sleep(settle)
            start = time.perf_counter()
            for s in range(0, len(queries), batch):
                read(queries[s:s + batch])
            times[name].append((time.perf_counter() - start) / len(queries))
    return {name: float(np.median(t)) for name, t in times.items()}


def latency(config, data, tables):
    rows = []
    for n in config.latency_pairs:
        keys, values = data.pairs(n)
        queries = data.keys(config.queries)[0]
        LOG.info("latency: n=%d, building %d SimHash tables", n, tables)
        index = build_index(config, keys, values, tables)
        float32 = copy.copy(index)  # the same tables reading the float32 arrays
        float32.packed = None
        o_f16, _, _, touched = lsh_regression(queries, keys, values, 10.0, index)
        o_f32 = lsh_regression(queries, keys, values, 10.0, float32)[0]
        f16_error = float(np.max(np.linalg.norm(o_f16 - o_f32, axis=1) / np.linalg.norm(o_f32, axis=1)))
        touched = float(touched.mean())
        k = max(1, int(round(touched * n)))
        exact = lambda q: kernel_regression(q, keys, values, 10.0)
        topk = lambda q: topk_regression(q, keys, values, 10.0, k)
        lsh = lambda q: lsh_regression(q, keys, values, 10.0, index)
        retrieved = {q.tobytes(): index.retrieve(q)[0] for q in queries}
        retrieve = lambda q: index.retrieve(q[0])  # LSH's first part: counting bucket collisions
        fetch = lambda q: np.take(index.packed.rows, retrieved[q[0].tobytes()], axis=0)  # ids = slots here
        row = seconds_per_query({"exact_1": (exact, 1), "exact_16": (exact, 16), "topk": (topk, 1),
                                 "lsh": (lsh, 1), "retrieve": (retrieve, 1), "fetch": (fetch, 1)}, queries)
        rows.append(dict(row, n=n, touched=touched, f16_error=f16_error))
    return rows


def plot(config, accuracy_rows, latency_rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    betas = [r["beta"] for r in accuracy_rows]
    for name in ("topk", "lsh", "tail"):
        left.loglog(betas, [r[name] for r in accuracy_rows], marker="o", label=name)
    left.set(xlabel="β", ylabel="relative error of o (tail: mass missed by top-k)",
             title=f"accuracy at a {config.budget:.0%} budget, n = {config.error_pairs}")
    left.legend()
    ns = [r["n"] for r in latency_rows]
    for name in ("exact_1", "exact_16", "lsh"):
        right.loglog(ns, [r[name] * 1e3 for r in latency_rows], marker="o", label=name)
    right.set(xlabel="pairs n", ylabel="ms per query", title="latency")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(config=BenchConfig()):
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    data = ClusteredCone(config)
    tables, accuracy_rows = accuracy(config, data)
    latency_rows = latency(config, data, tables)

    print(f"\nAccuracy, n = {config.error_pairs}, K = {config.bits}, L = {tables}, "
          f"budget {config.budget:.0%} (TOPK k = LSH's mean touched count)")
    print(f"{'beta':>6} {'tail':>7} {'touched':>8} {'k':>6} {'TOPK err':>9} {'LSH err':>9} {'LSH/TOPK':>9}")
    for r in accuracy_rows:
        print(f"{r['beta']:6g} {r['tail']:7.3f} {r['touched']:8.3%} {r['k']:6d} {r['topk']:9.4f} "
              f"{r['lsh']:9.4f} {r['lsh'] / r['topk']:9.3f}")
    print(f"\nLatency per query (median of 5 interleaved runs, {config.queries} queries, β = 10)")
    print(f"{'n':>9} {'touched':>8} {'EXACT m=1':>10} {'EXACT m=16':>11} {'TOPK':>9} {'LSH':>9} {'retrieve':>9} "
          f"{'fetch':>9} {'EXACT1/LSH':>11} {'EXACT16/LSH':>12} {'f16 Δo':>8}")
    for r in latency_rows:
        print(f"{r['n']:9d} {r['touched']:8.3%} {r['exact_1'] * 1e3:8.2f}ms {r['exact_16'] * 1e3:9.2f}ms "
              f"{r['topk'] * 1e3:7.2f}ms {r['lsh'] * 1e3:7.2f}ms {r['retrieve'] * 1e3:7.2f}ms "
              f"{r['fetch'] * 1e3:7.2f}ms {r['exact_1'] / r['lsh']:11.2f} {r['exact_16'] / r['lsh']:12.2f} "
              f"{r['f16_error']:8.1e}")
    print("(TOPK: exact top-k by a full scan, k = LSH's touched count. LSH per query: retrieve (hash q, mark\n"
          " its bucket collisions in two bitsets) then score the retrieved rows of the packed copy (float16\n"
          " key and values, 256 B rows in 2 MB pages) as they are read; from 262,144 keys two threads, each\n"
          " on half the slots; retrieve alone = one thread over all slots; fetch = numpy reading the rows alone\n"
          " on one thread, the random-read floor of one thread. EXACT's BLAS uses 2 threads. f16 Δo: max\n"
          " relative change of o from the float16 keys and values, against the same read of float32 arrays)")

    os.makedirs("bench/out", exist_ok=True)
    plot(config, accuracy_rows, latency_rows, "bench/out/mosaic.png")
    widest, largest = accuracy_rows[0], latency_rows[-1]
    print(json.dumps({
        "mosaic_lsh_over_topk_error_beta%g" % widest["beta"]: round(widest["lsh"] / widest["topk"], 4),
        "mosaic_lsh_over_topk_error_best": round(min(r["lsh"] / r["topk"] for r in accuracy_rows), 4),
        "mosaic_lsh_tables_for_budget": tables,
        "mosaic_exact1_over_lsh_latency_1e6": round(largest["exact_1"] / largest["lsh"], 2),
        "mosaic_exact16_over_lsh_latency_1e6": round(largest["exact_16"] / largest["lsh"], 2),
        "mosaic_lsh_touched_1e6": round(largest["touched"], 4),
        "mosaic_lsh_retrieve_share_1e6": round(largest["retrieve"] / largest["lsh"], 3),
        "mosaic_lsh_fetch_share_1e6": round(largest["fetch"] / largest["lsh"], 3),
        "mosaic_lsh_f16_output_change_1e6": float("%.2g" % largest["f16_error"]),
        "mosaic_exact1_over_topk_latency_1e6": round(largest["exact_1"] / largest["topk"], 2),
    }))


if __name__ == "__main__":
    main()
