"""Decoding speed of the STEM backbone against memsvc, side by side in one run.

(a) in-process bank (the reference), (b) remote bank without cache or prefetch, (c) remote bank
with an LFU cache (5% of the vocabulary) and prefetch, (d) local bank (mmap + delta rows).
The bank has a realistic shape (default vocab 32k, 8 STEM layers, d_ff 2048, fp16, random
weights); the tokens are a Zipfian stream fed step by step through the KV-cached model, as a
decode loop would (the demo model's bank fits in any cache and would prove nothing).

    .venv/bin/python bench/decode.py [--vocab 32768 --layers 8 --d-ff 2048 --steps 48]

Prints a table of tokens/s and ratios to (a), the cache hit rate, and a JSON line last.
"""
import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from clients.backbone.model import InProcessBank, KVCache, ModelConfig, StemTransformer  # noqa: E402
from clients.banks import LocalBank, RemoteBank  # noqa: E402
from clients.client import MemoryClient  # noqa: E402
from memsvc.core.dtypes import to_float32  # noqa: E402
from memsvc.server.spawn import spawn_server, stop_server  # noqa: E402
from memsvc.store import KnowledgeBase, StoreConfig  # noqa: E402

LOG = logging.getLogger("bench.decode")


def zipf_stream(vocab, batch, steps, s=1.1, seed=0):
    """Token ids (batch, steps) with text-like frequencies: p(rank r) ~ 1 / r^s, ranks shuffled."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, vocab + 1) ** s
    ranks = rng.choice(vocab, size=(batch, steps), p=p / p.sum())
    return torch.from_numpy(rng.permutation(vocab)[ranks])


@torch.no_grad()
def decode_stream(model, bank, tokens):
    """Feed tokens (B, T) one step at a time with a KV cache; the next step's tokens go to
    bank.prefetch as soon as they are known, as after sampling. Returns tokens/s."""
    B, T = tokens.shape
    cache = KVCache(model.config, B)
    start = time.perf_counter()
    for t in range(T):
        model(tokens[:, t : t + 1], bank, cache)
        if t + 1 < T and hasattr(bank, "prefetch"):
            bank.prefetch(tokens[:, t + 1])
    return B * T / (time.perf_counter() - start)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--d-ff", type=int, default=2048)
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--cache-fraction", type=float, default=0.05)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)  # the other core serves
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=args.vocab, n_layer=args.layers, n_head=8, d_model=args.d_model, d_ff=args.d_ff,
                         max_seq_len=args.steps + 1)
    model = StemTransformer(config).eval()
    rows16 = (np.random.default_rng(0).standard_normal((args.vocab, args.layers, args.d_ff), dtype=np.float32) * 0.5 + 1).astype(np.float16)
    reference = InProcessBank(config, torch.from_numpy(to_float32(rows16, "float16")))
    with tempfile.TemporaryDirectory() as tmp:
        with KnowledgeBase(StoreConfig(data_dir=Path(tmp) / "kb", create=True)) as kb:
            kb.import_table("stem", rows16, [f"t{i}" for i in range(args.vocab)], dtype="float16", progress=True)
        del rows16
        proc, address = spawn_server(Path(tmp) / "kb")
        try:
            results = run(model, reference, MemoryClient(address), args)
        finally:
            stop_server(proc)
    print_table(results, args)


def run(model, reference, client, args):
    cache_tokens = int(args.cache_fraction * args.vocab)
    results = {}
    for batch in args.batches:
        tokens = zipf_stream(args.vocab, batch, args.steps, seed=batch)
        warm = zipf_stream(args.vocab, batch, args.steps, seed=1000 + batch)  # warms the cache on other text
        banks = {
            "a in-process": lambda: reference,
            "b remote, no cache": lambda: RemoteBank(client, "stem", cache_tokens=0, prefetch=False),
            "c remote, cache+prefetch": lambda: RemoteBank(client, "stem", cache_tokens=cache_tokens, prefetch=True),
            "d local": lambda: LocalBank(client, "stem"),
        }
        speeds = {name: [] for name in banks}
        hit_rate = 0.0
        for _ in range(args.repeats):  # interleaved, so drift hits every bank alike
            for name, make in banks.items():
                bank = make()
                decode_stream(model, bank, warm)
                if isinstance(bank, RemoteBank):
                    bank.cache.hits = bank.cache.misses = 0
                speeds[name].append(decode_stream(model, bank, tokens))
                if name.startswith("c"):
                    hit_rate = bank.cache.hit_rate
        results[batch] = ({name: float(np.median(v)) for name, v in speeds.items()}, hit_rate)
    return results


def print_table(results, args):
    print(f"\nbank {args.vocab} x {args.layers} x {args.d_ff} fp16, d_model {args.d_model}, "
          f"{args.steps} steps, cache {args.cache_fraction:.0%} of vocab")
    print(f"{'batch':>5}  {'bank':<26} {'tokens/s':>10} {'x (a)':>7}")
    headline = {}
    for batch, (speeds, hit_rate) in results.items():
        base = speeds["a in-process"]
        for name, speed in speeds.items():
            print(f"{batch:>5}  {name:<26} {speed:>10.1f} {speed / base:>7.2f}")
            headline[f"{name[0]}_over_a_b{batch}"] = round(speed / base, 3)
        print(f"{'':>5}  cache hit rate (c): {hit_rate:.3f}")
        headline[f"hit_rate_b{batch}"] = round(hit_rate, 3)
    print(json.dumps(headline))


if __name__ == "__main__":
    main()
