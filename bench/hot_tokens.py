"""What the HotTokens sketch costs a Lookup, and how well it ranks, side by side in one run.

For Zipfian lookups of 1 and 64 positions (vocabulary 128,256, as STEM-1B's) it times, in process,
KnowledgeBase.lookup of each batch (the baseline: what the servicer's Lookup does besides encoding)
and HotTokens.record of its result (what the servicer adds to every Lookup, flushes included), and
prints the overhead in microseconds and as a fraction of the lookup. Then it compares the sketch's
top 5% with the exact top 5% of the same stream: the share of the stream each would catch in a
cache of that size (1.0 = as good as exact counting).

    .venv/bin/python bench/hot_tokens.py [--tokens 400000 --dim 256]

Prints a table and a JSON line last. Behaviour is tested in tests/test_hot_tokens.py.
"""
import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from memsvc.server.hot_tokens import HotTokens  # noqa: E402
from memsvc.store import KnowledgeBase, StoreConfig  # noqa: E402

LOG = logging.getLogger("bench.hot_tokens")


def zipf(vocab, n, seed=0, s=1.1):
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, vocab + 1) ** s
    return rng.permutation(vocab)[rng.choice(vocab, size=n, p=p / p.sum())]


def time_lookups(kb, stream, batch):
    """(seconds a lookup, seconds a record, the HotTokens fed): each batch looked up, then recorded."""
    hot = HotTokens()
    batches = [stream[i:i + batch] for i in range(0, len(stream), batch)]
    results, start = [], time.perf_counter()
    for ids in batches:
        results.append(kb.lookup("stem", ids))
    lookup = (time.perf_counter() - start) / len(batches)
    start = time.perf_counter()
    for result in results:
        hot.record("stem", result)
    record = (time.perf_counter() - start) / len(batches)
    return lookup, record, hot


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=128_256)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=400_000)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    args = ap.parse_args()
    stream = zipf(args.vocab, args.tokens)
    k = args.vocab // 20
    true = np.bincount(stream, minlength=args.vocab)
    exact = true[np.argsort(-true, kind="stable")[:k]].sum()
    print(f"vocab {args.vocab}, {args.tokens} Zipfian positions, rows {args.layers} x {args.dim} fp16")
    print(f"{'batch':>5} {'lookup us':>10} {'record us':>10} {'overhead':>9} {'top-5% catch / exact':>21}")
    headline = {}
    with tempfile.TemporaryDirectory() as tmp:
        with KnowledgeBase(StoreConfig(data_dir=Path(tmp) / "kb", create=True)) as kb:
            rows = np.ones((args.vocab, args.layers, args.dim), dtype=np.float16)
            kb.import_table("stem", rows, [f"t{i}" for i in range(args.vocab)], dtype="float16")
            for batch in args.batches:
                lookup, record, hot = time_lookups(kb, stream, batch)
                ids, _, _ = hot.top("stem", k, np.ones(args.vocab, dtype=bool))
                catch = true[ids].sum() / exact
                print(f"{batch:>5} {lookup * 1e6:>10.1f} {record * 1e6:>10.2f} {record / lookup:>9.3f} {catch:>21.4f}")
                headline.update({f"record_us_b{batch}": round(record * 1e6, 2),
                                 f"record_over_lookup_b{batch}": round(record / lookup, 4),
                                 f"top_catch_over_exact_b{batch}": round(float(catch), 4)})
    print(json.dumps(headline))


if __name__ == "__main__":
    main()
