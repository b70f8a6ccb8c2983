"""Recall@10 against QPS for every index kind, in one process, with exact search measured alongside.

Data: SIFT 5k (real descriptors, shipped ground truth) and a synthetic clustered table
(default 200k x 128, queries from a shifted distribution; --n shrinks it). Also measures
learned PQ against OPQ at 64x compression on held-out queries, and a dynamic DiskANN index after
rounds of 1% row edits against a fresh static build of the edited table.
Writes bench/out/ann.png and bench/out/ann.md; the last line printed is one JSON object.

Learned PQ is always scored on queries it did not train on. The synthetic table has its own
training queries (a disjoint sample of the same distribution). SIFT 5k ships only 100 real
queries and no query log, so there learned PQ is 2-fold cross-fitted: trained on one half of the
queries and scored on the other, then the other way round; its recall is over all 100 queries,
each scored by the model that did not see it. (The first version trained on base rows used as
queries: a different distribution, and each such query's top hit was itself.) With 50 training
queries and 100 scored ones, the SIFT figure is a sanity check, not evidence either way.

    .venv/bin/python bench/ann.py --n 50000
    .venv/bin/python bench/ann.py --n 200000 --kinds exact,opq,learned_pq   # the PQ rows only
"""

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# before faiss/torch start OpenMP: idle threads sleep rather than spin on the 2 shared cores
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from indexes.ann import IndexConfig, build_index  # noqa: E402
from indexes.exact import exact_knn  # noqa: E402
from indexes.synthetic import clustered_table  # noqa: E402

LOG = logging.getLogger("bench.ann")
OUT = Path(__file__).resolve().parent / "out"
SIFT = Path(__file__).resolve().parents[2] / "shared" / "data" / "sift5k"  # ../shared beside the checkout
# per-kind search knob and the values swept (one point where the kind has no knob)
SWEEPS = {"exact": (None, [None]), "diskann": ("complexity", [16, 32, 64, 128, 256]),
          "diskann_dynamic": ("complexity", [16, 32, 64, 128, 256]),
          "diskann_disk": ("complexity", [32, 64, 128, 256]),
          "hnsw": ("ef_search", [16, 32, 64, 128, 256]), "ivfpq": ("nprobe", [4, 16, 64]),
          "pq": (None, [None]), "opq": (None, [None]),
          "learned_pq": ("nprobe", [16, 256])}  # 256 = every cell: every row scored, as (O)PQ does


EVERY_CELL = {"nprobe": 256}  # learned PQ scoring every row, to set beside OPQ


def recall_at_10(found, truth):
    return float(np.mean([len(set(f[:10]) & set(t[:10])) / 10 for f, t in zip(found, truth)]))


def measure(index, queries, truth, params):
    """(recall@10, queries per second): best of two timed batch searches."""
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        found, _ = index.search(queries, 10, params=params)
        seconds.append(time.perf_counter() - start)
    return recall_at_10(found, truth), len(queries) / min(seconds)


def sweep(dataset, index, queries, truth):
    """One row per knob value: dataset, kind, knob, recall@10, qps."""
    knob, values = SWEEPS[index.config.kind]
    rows = []
    for value in values:
        params = {knob: value} if knob else None
        recall, qps = measure(index, queries, truth, params)
        rows.append({"dataset": dataset, "kind": index.config.kind,
                     "knob": f"{knob}={value}" if knob else "", "recall10": recall, "qps": qps})
        LOG.info("%s %s %s recall@10=%.3f qps=%.0f", *list(rows[-1].values()))
    return rows


def bench_dataset(dataset, rows, queries, truth, train_queries, threads, kinds):
    ids = np.arange(len(rows), dtype=np.int64)
    results, indexes = [], {}
    for kind in kinds:
        config = IndexConfig(kind=kind, num_threads=threads)
        start = time.perf_counter()
        train = {"train_queries": train_queries} if kind == "learned_pq" else {}
        indexes[kind] = build_index(config, ids, rows, **train)
        build_s = time.perf_counter() - start  # the build alone, not the sweep after it
        LOG.info("%s: built %s in %.1f s", dataset, kind, build_s)
        results += [{**r, "build_s": build_s} for r in sweep(dataset, indexes[kind], queries, truth)]
    return results, indexes


def cross_fitted_learned_pq(dataset, rows, queries, truth, threads, seed=0):
    """Learned PQ on a dataset whose only queries are the evaluation queries: 2-fold cross-fitting
    (train on one half, score the other, swap). One row, recall over every query held out."""
    ids = np.arange(len(rows), dtype=np.int64)
    halves = np.array_split(np.random.default_rng(seed).permutation(len(queries)), 2)
    found, build_s = np.empty((len(queries), 10), np.int64), []
    for train, held_out in (halves, halves[::-1]):
        start = time.perf_counter()
        index = build_index(IndexConfig(kind="learned_pq", num_threads=threads), ids, rows,
                            train_queries=queries[train])
        build_s.append(time.perf_counter() - start)
        found[held_out] = index.search(queries[held_out], 10, params=EVERY_CELL)[0]
    row = {"dataset": dataset, "kind": "learned_pq", "knob": "2-fold",
           "recall10": recall_at_10(found, truth),
           "qps": measure(index, queries, truth, EVERY_CELL)[1],
           "build_s": float(np.mean(build_s))}
    LOG.info("%s learned_pq 2-fold cross-fitted recall@10=%.3f", dataset, row["recall10"])
    return [row]


def add_qps_ratio(results):
    """qps_over_exact on every row (NaN when exact was not run)."""
    exact_qps = next((r["qps"] for r in results if r["kind"] == "exact"), float("nan"))
    for r in results:
        r["qps_over_exact"] = r["qps"] / exact_qps
    return results


def edit_rounds(dynamic, rows, queries, threads, rounds=10, fraction=0.01, seed=0):
    """A dynamic DiskANN index (built over `rows`) after `rounds` of remove + re-add of changed
    rows, against a fresh static build of the edited table.

    Returns (dynamic recall@10, static recall@10) at the default search complexity."""
    rng = np.random.default_rng(seed)
    rows = rows.copy()
    ids = np.arange(len(rows), dtype=np.int64)
    spread = rows.std(0)
    for _ in range(rounds):
        changed = rng.choice(len(rows), size=max(1, int(fraction * len(rows))), replace=False)
        rows[changed] += (rng.normal(size=(len(changed), rows.shape[1])) * spread * 0.5
                          ).astype(np.float32)
        dynamic.remove(ids[changed])
        dynamic.add(ids[changed], rows[changed])
    truth, _ = exact_knn(queries, rows, 10, "l2")
    static = build_index(IndexConfig(kind="diskann", num_threads=threads), ids, rows)
    return (recall_at_10(dynamic.search(queries, 10)[0], truth),
            recall_at_10(static.search(queries, 10)[0], truth))


def best(results, kind, *, min_recall=None, min_ratio=None):
    """Best recall at >= min_ratio x exact QPS, or best QPS ratio at >= min_recall."""
    points = [r for r in results if r["kind"] == kind]
    if min_ratio is not None:
        return max([r["recall10"] for r in points if r["qps_over_exact"] >= min_ratio],
                   default=0.0)
    return max([r["qps_over_exact"] for r in points if r["recall10"] >= min_recall], default=0.0)


def plot_and_table(results, path_png, path_md):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r["dataset"] for r in results))
    fig, axes = plt.subplots(1, len(datasets), figsize=(7 * len(datasets), 5))
    for ax, dataset in zip(np.atleast_1d(axes), datasets):
        for kind in dict.fromkeys(r["kind"] for r in results):
            pts = [r for r in results if r["dataset"] == dataset and r["kind"] == kind]
            ax.plot([p["recall10"] for p in pts], [p["qps"] for p in pts], "o-", label=kind)
        ax.set(title=dataset, xlabel="recall@10", ylabel="queries / s", yscale="log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path_png, dpi=120)
    lines = ["| dataset | kind | knob | recall@10 | QPS | QPS / exact | build s |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['dataset']} | {r['kind']} | {r['knob']} | {r['recall10']:.3f} | "
              f"{r['qps']:.0f} | {r['qps_over_exact']:.2f} | {r['build_s']:.1f} |"
              for r in results]
    path_md.write_text("\n".join(lines) + "\n")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="rows in the synthetic table")
    parser.add_argument("--queries", type=int, default=1000, help="held-out synthetic queries")
    parser.add_argument("--train-queries", type=int, default=2000, help="for learned PQ")
    parser.add_argument("--threads", type=int, default=0, help="0 = every core")
    parser.add_argument("--kinds", default=",".join(SWEEPS),
                        help="comma-separated index kinds (default: all); QPS ratios need exact, "
                             "the edit rounds diskann_dynamic")
    args = parser.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = sorted(set(kinds) - set(SWEEPS))
    if unknown:
        parser.error(f"--kinds: unknown {', '.join(unknown)} (known: {', '.join(SWEEPS)})")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    OUT.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    base, sift_queries = np.load(SIFT / "base.npy"), np.load(SIFT / "queries.npy")
    sift_truth = np.load(SIFT / "groundtruth_top100.npy")[:, :10]
    results, _ = bench_dataset("sift5k", base, sift_queries, sift_truth, None, args.threads,
                               [k for k in kinds if k != "learned_pq"])
    if "learned_pq" in kinds:  # SIFT has 100 real queries and no log: see the module docstring
        results += cross_fitted_learned_pq("sift5k", base, sift_queries, sift_truth, args.threads)
    add_qps_ratio(results)

    rows, queries = clustered_table(args.n, 128, args.queries + args.train_queries, seed=0)
    held_out, train = queries[:args.queries], queries[args.queries:]
    truth, _ = exact_knn(held_out, rows, 10, "l2")
    name = f"clustered{args.n // 1000}k"
    synthetic, built = bench_dataset(name, rows, held_out, truth, train, args.threads, kinds)
    results += add_qps_ratio(synthetic)
    headline = {"n": args.n}
    if "diskann_dynamic" in built:
        start = time.perf_counter()
        dynamic_recall, static_recall = edit_rounds(built["diskann_dynamic"], rows, held_out,
                                                    args.threads)
        LOG.info("edit rounds and static rebuild: %.0f s", time.perf_counter() - start)
        headline["dynamic_after_edits_minus_static_recall10"] = dynamic_recall - static_recall

    print(plot_and_table(results, OUT / "ann.png", OUT / "ann.md"))
    for kind in ("diskann", "hnsw"):
        if kind in built:
            headline[f"{kind}_qps_over_exact_at_recall95"] = best(synthetic, kind, min_recall=0.95)
    if "diskann" in built:
        headline["diskann_recall10_at_3x_exact_qps"] = best(synthetic, "diskann", min_ratio=3.0)
    if {"learned_pq", "opq"} <= set(kinds):
        # learned PQ's last row is nprobe=256: every row scored, like OPQ
        recall_of = {(r["dataset"], r["kind"]): r["recall10"] for r in results}
        lpq, opq = recall_of[name, "learned_pq"], recall_of[name, "opq"]
        sift_lpq, sift_opq = recall_of["sift5k", "learned_pq"], recall_of["sift5k", "opq"]
        print(f"learned PQ vs OPQ at {rows.shape[1] * 4 // 8}x compression (8 bytes/row) on "
              f"held-out queries: {name} {lpq:.3f} vs {opq:.3f} ({100 * (lpq - opq):+.1f} points; "
              f"{args.train_queries} training, {args.queries} held-out queries); sift5k "
              f"{sift_lpq:.3f} vs {sift_opq:.3f} ({100 * (sift_lpq - sift_opq):+.1f} points; "
              "2-fold over its 100 real queries)")
        headline.update(learned_pq_recall10=lpq, opq_recall10=opq,
                        learned_pq_minus_opq_recall10=lpq - opq,
                        sift_learned_pq_minus_opq_recall10=sift_lpq - sift_opq)
    if "diskann_dynamic" in built:
        print(f"dynamic DiskANN after 10 rounds of 1% edits: recall@10 {dynamic_recall:.3f}, "
              f"fresh static build {static_recall:.3f}")
    print(f"total bench time {time.perf_counter() - started:.0f} s")
    headline["total_s"] = time.perf_counter() - started
    print(json.dumps(headline))


if __name__ == "__main__":
    main()
