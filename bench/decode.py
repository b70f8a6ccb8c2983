"""Decoding speed of the STEM backbone against memsvc, side by side in one run.

(a) in-process bank (the reference), (b) remote bank without cache or prefetch, (c) remote bank
with an LFU cache (5% of the vocabulary) and prefetch, (d) local bank (mmap + delta rows).
The tokens are a Zipfian stream fed step by step through the KV-cached model, as a decode loop
would (the demo model's bank fits in any cache and would prove nothing).

Default: a 32k x 8 x 2048 fp16 bank with random weights, held in memory for (a); (c) first
decodes another stream of the same distribution to learn its frequencies itself.

--preset stem-1b (issue 17 item 7): a STEM-1B bank, 128,256 tokens x 5 layers x 8,192 bf16
(10.5 GB), written to disk a chunk at a time and never held in memory (--scale 0.01 shrinks the
vocabulary for a quick run); (a) gathers rows from the bank's file, mapped read-only. The server
first serves a different stream of the same distribution (--first-pass-tokens, default 8 x the
vocabulary, as Lookups of 256 positions: other workers' traffic), then (c)'s cache is warmed from
HotTokens before its first step. Beside (c)'s hit rate it prints those of a cold LFU cache and of
an oracle, a cache holding the distribution's true top tokens, fed the same steps (no RPC): what
the server's view could at best give. A hit rate counts the distinct tokens of each step, as
RemoteBank asks for them. The first pass reads layer 0 only (the sketch counts positions,
whatever the layers), so 8 x the vocabulary costs what 1.6 x would at every layer.

    .venv/bin/python bench/decode.py [--vocab 32768 --layers 8 --d-ff 2048 --steps 48]
    .venv/bin/python bench/decode.py --preset stem-1b [--scale 0.01 --steps 8 --repeats 1]

Prints a table of tokens/s and ratios to (a), the cache hit rate, and a JSON line last.
"""
import argparse
import copy
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from clients.backbone.model import InProcessBank, KVCache, ModelConfig, ReadyRows, StemTransformer  # noqa: E402
from clients.banks import LFUCache, LocalBank, RemoteBank  # noqa: E402
from clients.client import MemoryClient  # noqa: E402
from memsvc.core.dtypes import storage_dtype, to_float32, to_storage  # noqa: E402
from memsvc.server.spawn import spawn_server, stop_server  # noqa: E402
from memsvc.store import KnowledgeBase, StoreConfig  # noqa: E402

LOG = logging.getLogger("bench.decode")
# issue 17: a 1B STEM model's bank (10.5 GB in bf16)
PRESETS = {"stem-1b": dict(vocab=128_256, layers=5, d_ff=8192, dtype="bfloat16")}
CHUNK_BYTES = 64 << 20  # float32 rows generated at a time when the bank is written to disk
FIRST_PASS_BATCH = 256  # request positions per Lookup of the first pass


def zipf_order(vocab):
    """Token ids from the most frequent down: fixed per vocabulary (one language)."""
    return np.random.default_rng(vocab).permutation(vocab)


def zipf_stream(vocab, batch, steps, s=1.1, seed=0):
    """Token ids (batch, steps) with text-like frequencies: p(rank r) ~ 1 / r^s. Streams of
    different seeds are different text of the same distribution (zipf_order)."""
    order = zipf_order(vocab)
    p = 1.0 / np.arange(1, vocab + 1) ** s
    ranks = np.random.default_rng(seed).choice(vocab, size=(batch, steps), p=p / p.sum())
    return torch.from_numpy(order[ranks])


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


class MappedBank:
    """(a) at real size: rows gathered in process from the bank's .npy file, mapped read-only."""

    def __init__(self, path, dtype):
        self.base, self.dtype = np.load(path, mmap_mode="r"), dtype  # (V, L, d)

    def request(self, token_ids):
        return ReadyRows(torch.from_numpy(to_float32(self.base[token_ids.numpy()], self.dtype)))


def write_bank(path, vocab, layers, d_ff, dtype, seed=0):
    """A random bank (V, L, d) written to a .npy file a chunk at a time; returns it mapped read-only."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=storage_dtype(dtype), shape=(vocab, layers, d_ff))
    rng = np.random.default_rng(seed)
    step = max(1, CHUNK_BYTES // (layers * d_ff * 4))
    for start in tqdm(range(0, vocab, step), desc="writing the bank", unit="chunk"):
        rows = rng.standard_normal((min(step, vocab - start), layers, d_ff), dtype=np.float32) * 0.5 + 1
        out[start:start + len(rows)] = to_storage(rows, dtype)
    out.flush()
    del out
    return np.load(path, mmap_mode="r")


def serve_first_pass(client, vocab, n_tokens, seed=99):
    """The server serves n_tokens of another stream of the same distribution (what it learns from)."""
    stream = zipf_stream(vocab, 1, n_tokens, seed=seed)[0].numpy()
    for start in tqdm(range(0, n_tokens, FIRST_PASS_BATCH), desc="first pass", unit="lookup", leave=False):
        client.lookup("stem", stream[start:start + FIRST_PASS_BATCH], layers=[0])


def cold_hit_rate(tokens, capacity):
    """Hit rate of a cold LFUCache fed the steps of tokens (B, T) as RemoteBank feeds it."""
    cache = LFUCache(capacity, (1,))
    for t in range(tokens.shape[1]):
        uniq = np.unique(tokens[:, t].numpy()).tolist()
        for token in cache.count(uniq):
            cache.admit(token, 0.0)
    return cache.hit_rate


def oracle_hit_rate(tokens, capacity, vocab):
    """Hit rate, counted as cold_hit_rate counts it, of a cache that holds the distribution's
    `capacity` most frequent tokens (zipf_order): the best a warmed cache of that size can do."""
    top = set(zipf_order(vocab)[:capacity].tolist())
    steps = [np.unique(tokens[:, t].numpy()).tolist() for t in range(tokens.shape[1])]
    return sum(t in top for step in steps for t in step) / sum(len(step) for step in steps)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), help="a real-size bank, built on disk")
    ap.add_argument("--scale", type=float, default=1.0, help="with --preset: fraction of its vocabulary")
    ap.add_argument("--first-pass-tokens", type=int, help="with --preset: tokens the server serves first (default 2 x vocab)")
    ap.add_argument("--workdir", help="where the KB goes (the preset needs twice the bank's size while importing)")
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--d-ff", type=int, default=2048)
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--cache-fraction", type=float, default=0.05)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    args.dtype = "float16"
    if args.preset:
        vars(args).update(PRESETS[args.preset])
        args.vocab = max(64, int(args.vocab * args.scale))
        args.first_pass_tokens = args.first_pass_tokens or 8 * args.vocab
    torch.set_num_threads(1)  # the other core serves
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=args.vocab, n_layer=args.layers, n_head=8, d_model=args.d_model, d_ff=args.d_ff,
                         max_seq_len=args.steps + 1)
    model = StemTransformer(config).eval()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        kb_dir, reference = Path(tmp) / "kb", None
        with KnowledgeBase(StoreConfig(data_dir=kb_dir, create=True)) as kb:
            if args.preset:
                rows = write_bank(Path(tmp) / "bank.npy", args.vocab, args.layers, args.d_ff, args.dtype)
            else:
                rows = (np.random.default_rng(0).standard_normal((args.vocab, args.layers, args.d_ff), dtype=np.float32) * 0.5 + 1).astype(np.float16)
                reference = InProcessBank(config, torch.from_numpy(to_float32(rows, "float16")))
            kb.import_table("stem", rows, [f"t{i}" for i in range(args.vocab)], dtype=args.dtype, progress=True)
        del rows
        (Path(tmp) / "bank.npy").unlink(missing_ok=True)
        proc, address = spawn_server(kb_dir)
        try:
            with MemoryClient(address) as client:
                if args.preset:
                    reference = MappedBank(client.snapshot("stem")["base_path"], args.dtype)
                    serve_first_pass(client, args.vocab, args.first_pass_tokens)
                results = run(model, reference, client, args)
        finally:
            stop_server(proc)
    print_table(results, args)


def run(model, reference, client, args):
    """{batch: ({bank: median tokens/s}, hit rate of (c), of a cold cache, of the oracle)}."""
    cache_tokens = int(args.cache_fraction * args.vocab)
    warmed = None
    if args.preset:  # warmed once, before the server sees any of the timed streams, and copied for each run
        warmed = RemoteBank(client, "stem", cache_tokens=cache_tokens, warm=True).cache
        warmed.hits = warmed.misses = 0

    def cached():
        bank = RemoteBank(client, "stem", cache_tokens=0 if warmed else cache_tokens, prefetch=True)
        if warmed:
            bank.cache = copy.deepcopy(warmed)
        return bank

    results = {}
    for batch in args.batches:
        tokens = zipf_stream(args.vocab, batch, args.steps, seed=batch)
        warm = zipf_stream(args.vocab, batch, args.steps, seed=1000 + batch)  # other text, same distribution
        banks = {
            "a in-process": lambda: reference,
            "b remote, no cache": lambda: RemoteBank(client, "stem", cache_tokens=0, prefetch=False),
            "c remote, cache+prefetch": cached,
            "d local": lambda: LocalBank(client, "stem"),
        }
        speeds = {name: [] for name in banks}
        hit_rate = 0.0
        for _ in range(args.repeats):  # interleaved, so drift hits every bank alike
            for name, make in banks.items():
                bank = make()
                # the preset's caches come warm from the server; there the pass only warms up the model
                decode_stream(model, reference if warmed else bank, warm)
                if isinstance(bank, RemoteBank):
                    bank.cache.hits = bank.cache.misses = 0
                speeds[name].append(decode_stream(model, bank, tokens))
                if name.startswith("c"):
                    hit_rate = bank.cache.hit_rate
        results[batch] = ({name: float(np.median(v)) for name, v in speeds.items()}, hit_rate,
                          cold_hit_rate(tokens, cache_tokens), oracle_hit_rate(tokens, cache_tokens, args.vocab))
    return results


def print_table(results, args):
    size = args.vocab * args.layers * args.d_ff * np.dtype(storage_dtype(args.dtype)).itemsize
    print(f"\n{args.preset or 'default'}: bank {args.vocab} x {args.layers} x {args.d_ff} {args.dtype} ({size / 1e9:.2f} GB), "
          f"d_model {args.d_model}, {args.steps} steps, cache {args.cache_fraction:.0%} of vocab"
          + (f", warmed from HotTokens after {args.first_pass_tokens} served tokens" if args.preset else ""))
    print(f"{'batch':>5}  {'bank':<26} {'tokens/s':>10} {'x (a)':>7}")
    headline = {}
    for batch, (speeds, hit_rate, cold, oracle) in results.items():
        base = speeds["a in-process"]
        for name, speed in speeds.items():
            print(f"{batch:>5}  {name:<26} {speed:>10.1f} {speed / base:>7.2f}")
            headline[f"{name[0]}_over_a_b{batch}"] = round(speed / base, 3)
        print(f"{'':>5}  cache hit rate (c): {hit_rate:.3f}   on the same steps, a cold LFU cache: {cold:.3f}, "
              f"the oracle: {oracle:.3f}")
        headline[f"hit_rate_b{batch}"] = round(hit_rate, 3)
        headline[f"cold_hit_rate_b{batch}"] = round(cold, 3)
        headline[f"oracle_hit_rate_b{batch}"] = round(oracle, 3)
    print(json.dumps(headline))


if __name__ == "__main__":
    main()
