"""STEM bank lookup over gRPC against Redis MGET and an in-process numpy gather, side by side.

One decode step reads the rows of every STEM layer for a batch's tokens. For batches of 1 to 4096
tokens (ids drawn Zipfian, as in text, duplicates included) each backend returns the same array,
(batch, layers, dim) float16 in request order, with its decode included in the timing:

- gRPC: MemoryClient.lookup against `memsvc serve` in its own process (no shared GIL), then
  `request_rows()`, as a client on the server's host gets it by default: requests down one open
  LookupStream, rows gathered by the server straight into the client's shared-memory reply
  buffer in request order (so `request_rows()` copies nothing; rows that travel in a reply come
  de-duplicated and `request_rows()` is rows[inverse]). Two more
  columns show the parts: unary Lookup calls (rows still in shared memory), and unary calls with
  the rows inside the reply (what a client on another host gets, here over loopback).
- Redis: MGET of the batch's distinct tokens (one key per token holding its raw [layers, dim]
  fp16 bytes; de-duplicated client-side like the service does), bytes joined into one array,
  then rows[inverse]. A private redis-server on loopback, no persistence.
- numpy: np.take on the bank in this process: the physical limit, no service at all.
- gRPC floor: a message down an open stream to a do-nothing Python gRPC server (its own
  process, like memsvc's) answering 64 bytes, about what a reply carries when its rows went to
  the shared buffer: what any Python gRPC lookup costs before it touches a row.

Calls are sequential (one request in flight, as at a decode step); rows/s counts request
positions, one row = all layers of one token. Targets (issue 2): gRPC throughput ≥ 2× Redis for
batches ≥ 64, and gRPC single-token latency ≤ 3× Redis.
Run: .venv/bin/python bench/lookup.py            (32k vocab x 4 layers x 2048 fp16; ~2 min, 2 cores)
     .venv/bin/python bench/lookup.py --vocab 4096 --dim 256 --seconds 0.3   (a quick look)
"""
import argparse
import json
import logging
import multiprocessing
import queue
import signal
import sys
import tempfile
import time
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from bench.redis_server import free_port, redis_server  # noqa: E402
from clients.client import MemoryClient  # noqa: E402
from memsvc.server.spawn import spawn_server, stop_server  # noqa: E402
from memsvc.store import KnowledgeBase, StoreConfig  # noqa: E402

LOG = logging.getLogger("bench.lookup")
ROOT = Path(__file__).resolve().parent.parent
TABLE = "bank"


@dataclass
class BenchConfig:
    vocab: int = 32_000
    layers: int = 4
    dim: int = 2048
    batches: tuple = (1, 4, 16, 64, 256, 1024, 4096)
    zipf_s: float = 1.0  # token frequency ∝ 1/rank^s (Zipf's law for text: s ≈ 1)
    distinct_batches: int = 16  # the timed calls cycle through this many different batches
    warmup_calls: int = 5
    seconds: float = 1.0  # timed seconds per (backend, batch), at least min_calls calls
    min_calls: int = 20
    seed: int = 0


def make_bank(config) -> np.ndarray:
    """Deterministic float16 rows (vocab, layers, dim), built in chunks to keep memory flat."""
    rng = np.random.default_rng(config.seed)
    rows = np.empty((config.vocab, config.layers, config.dim), dtype=np.float16)
    step = 1024
    for start in tqdm(range(0, config.vocab, step), desc="bank", unit="chunk", leave=False):
        chunk = rows[start:start + step]
        chunk[...] = rng.standard_normal(chunk.shape, dtype=np.float32)
    return rows


def zipf_batches(config, size) -> list:
    """``distinct_batches`` token-id arrays of ``size``; hot tokens are scattered over the vocab."""
    rng = np.random.default_rng([config.seed, size])
    p = 1.0 / np.arange(1, config.vocab + 1) ** config.zipf_s
    token_of_rank = np.random.default_rng(config.seed).permutation(config.vocab)
    return [token_of_rank[rng.choice(config.vocab, size, p=p / p.sum())] for _ in range(config.distinct_batches)]


@contextmanager
def memsvc_server(rows, workdir, *serve_args):
    """`memsvc serve *serve_args` in its own process over a KB holding ``rows`` as table 'bank'
    (in workdir/kb); yields its address."""
    data = Path(workdir) / "kb"
    with KnowledgeBase(StoreConfig(data_dir=data, create=True, durable=False)) as kb:
        kb.import_table(TABLE, rows, [f"t{i}" for i in range(len(rows))], dtype="float16", progress=True)
    proc, address = spawn_server(data, *serve_args)
    try:
        yield address
    finally:
        stop_server(proc)


def serve_messages(port, answer):
    """A bare Python gRPC server (the process's main loop): `answer(message bytes) -> reply bytes`
    for each message of one stream method, /bench.Echo/Stream."""
    server = grpc.server(futures.ThreadPoolExecutor(4))
    handler = grpc.stream_stream_rpc_method_handler(lambda requests, context: (answer(m) for m in requests))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("bench.Echo", {"Stream": handler})])
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    # SIGTERM (grpc_floor's exit) stops the server and returns, so the process exits through
    # multiprocessing's finalizers: killed outright it leaves its semaphores to the resource tracker.
    signal.signal(signal.SIGTERM, lambda *_: server.stop(0))
    server.wait_for_termination()


def _echo_serve(port):
    serve_messages(port, lambda message: b"x" * 64)


@contextmanager
def grpc_floor(serve=_echo_serve, args=(), ready_seconds=30):
    """call(message bytes) -> reply bytes: one message on an open stream to the bare gRPC server
    `serve(port, *args)` in its own process (default: a do-nothing echo answering 64 bytes)."""
    port = free_port()
    proc = multiprocessing.get_context("spawn").Process(target=serve, args=(port, *args), daemon=True)
    proc.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    grpc.channel_ready_future(channel).result(timeout=ready_seconds)
    outbox = queue.SimpleQueue()
    replies = channel.stream_stream("/bench.Echo/Stream")(iter(outbox.get, None))

    def call(message):
        outbox.put(message)
        return next(replies)
    try:
        yield call
    finally:
        outbox.put(None)
        channel.close()
        proc.terminate()


def load_redis(r, rows, chunk=1024):
    """One key per token id holding its raw (layers, dim) fp16 bytes."""
    for start in tqdm(range(0, len(rows), chunk), desc="redis load", unit="chunk", leave=False):
        r.mset({start + i: row.tobytes() for i, row in enumerate(rows[start:start + chunk])})


def grpc_gather(client):
    return lambda ids: client.lookup(TABLE, ids).request_rows()


def redis_gather(r, layers, dim, dedupe):
    """MGET of the batch's keys as they come, or (dedupe) of its distinct keys then rows[inverse]."""
    def gather(ids):
        if not dedupe:
            return np.frombuffer(b"".join(r.mget(ids.tolist())), dtype=np.float16).reshape(len(ids), layers, dim)
        unique, inverse = np.unique(ids, return_inverse=True)
        values = r.mget(unique.tolist())
        return np.frombuffer(b"".join(values), dtype=np.float16).reshape(len(unique), layers, dim)[inverse]
    return gather


def numpy_gather(rows):
    return lambda ids: np.take(rows, ids, axis=0)


def measure(backends, batches, config) -> dict:
    """name -> (request rows per second, p50 seconds per call) of sequential calls. The backends
    take turns call by call, so load from elsewhere on the machine falls on all of them alike."""
    for ids in batches[:config.warmup_calls]:
        for gather in backends.values():
            gather(ids)
    times = {name: [] for name in backends}
    start = time.perf_counter()
    calls = 0
    while calls < config.min_calls or time.perf_counter() - start < config.seconds * len(backends):
        ids = batches[calls % len(batches)]
        for name, gather in backends.items():
            t0 = time.perf_counter()
            gather(ids)
            times[name].append(time.perf_counter() - t0)
        calls += 1
    return {name: (calls * len(ids) / sum(t), float(np.median(t))) for name, t in times.items()}


def checked_measure(backends, rows, config, size, unchecked=()) -> tuple:
    """(measure() of the backends on Zipf batches of ``size``, the batches), after checking each
    backend's rows for the first batch against np.take (except the ``unchecked`` ones)."""
    batches = zipf_batches(config, size)
    expected = np.take(rows, batches[0], axis=0)
    for name, gather in backends.items():
        if name not in unchecked and not np.array_equal(gather(batches[0]), expected):
            raise AssertionError(f"{name} returned different rows for a batch of {size}")
    return measure(backends, batches, config), batches


def main(config: BenchConfig):
    rows = make_bank(config)
    mb = rows[0].nbytes / 1e6
    print(f"bank: {config.vocab} tokens x {config.layers} layers x {config.dim} float16 "
          f"({rows.nbytes / 1e9:.2f} GB, {mb * 1e3:.0f} KB per token); Zipf s = {config.zipf_s}")
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-lookup-") as workdir, \
            memsvc_server(rows, workdir) as address, MemoryClient(address) as client, redis_server() as r, \
            MemoryClient(address, stream_lookups=False) as unary, \
            MemoryClient(address, stream_lookups=False, shared_memory=False) as inline, grpc_floor() as floor:
        load_redis(r, rows)
        backends = {"grpc": grpc_gather(client), "grpc_unary": grpc_gather(unary), "grpc_inline": grpc_gather(inline),
                    "redis": redis_gather(r, config.layers, config.dim, dedupe=False),
                    "redis_dedup": redis_gather(r, config.layers, config.dim, dedupe=True), "numpy": numpy_gather(rows),
                    "floor": lambda ids: floor(b"ids")}
        for size in tqdm(config.batches, desc="batches", leave=False):
            results[size], batches = checked_measure(backends, rows, config, size, unchecked=("floor",))
            results[size]["unique"] = np.mean([len(np.unique(b)) / size for b in batches])
    report(results, config, mb)


def report(results, config, mb):
    """The table (rows/s and p50 per backend, gRPC over Redis ratios) and the JSON headline."""
    names = ("grpc", "grpc_unary", "grpc_inline", "redis", "redis_dedup", "numpy", "floor")
    print(f"\n{'':12}|" + "|".join(f"{n:^22}" for n in ("gRPC", "gRPC unary", "gRPC unary inline", "Redis MGET",
                                                        "Redis MGET dedup", "numpy", "gRPC floor")) +
          f"| {'gRPC/Redis':^15} | {'gRPC/Redis dedup':^15}")
    print(f"{'batch':>6} {'uniq':>5}|" + "|".join(f"{'rows/s':>11} {'p50':>10}" for _ in names) +
          f"| {'thr':>7} {'lat':>7} | {'thr':>7} {'lat':>7}")
    for size in config.batches:
        res = results[size]
        cells = "|".join(f"{res[n][0]:11,.0f} {res[n][1] * 1e3:8.3f}ms" for n in names)
        ratios = " | ".join(f"{res['grpc'][0] / res[b][0]:6.2f}x {res['grpc'][1] / res[b][1]:6.2f}x" for b in ("redis", "redis_dedup"))
        print(f"{size:6d} {res['unique']:5.0%}|{cells}| {ratios}")
    big = config.batches[-1]
    print("\nthr = throughput ratio (higher is better for gRPC), lat = p50 latency ratio (lower is better).")
    print(f"At {big} tokens, MB/s of request-order rows: " +
          ", ".join(f"{n} {results[big][n][0] * mb:,.0f}" for n in names if n != "floor"))
    headline = {}
    for baseline, suffix in (("redis", ""), ("redis_dedup", "_dedup")):
        for i, what in ((0, "throughput"), (1, "latency")):
            headline |= {f"grpc_over_redis{suffix}_{what}_b{s}": round(results[s]["grpc"][i] / results[s][baseline][i], 3)
                         for s in config.batches}
    headline["grpc_p50_ms_b1"] = round(results[config.batches[0]]["grpc"][1] * 1e3, 4)
    for variant in ("grpc_unary", "grpc_inline"):
        headline |= {f"{variant}_over_redis_{what}_b{s}": round(results[s][variant][i] / results[s]["redis"][i], 3)
                     for s in (1, 64) if s in config.batches for i, what in ((0, "throughput"), (1, "latency"))}
    headline |= {f"floor_over_redis_latency_b{s}": round(results[s]["floor"][1] / results[s]["redis"][1], 3)
                 for s in (1, 64) if s in config.batches}
    headline[f"grpc_over_numpy_throughput_b{big}"] = round(results[big]["grpc"][0] / results[big]["numpy"][0], 4)
    print(json.dumps(headline))


def parse_args() -> BenchConfig:
    defaults = BenchConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocab", type=int, default=defaults.vocab)
    parser.add_argument("--layers", type=int, default=defaults.layers)
    parser.add_argument("--dim", type=int, default=defaults.dim)
    parser.add_argument("--seconds", type=float, default=defaults.seconds, help="timed seconds per backend and batch")
    parser.add_argument("--zipf", type=float, default=defaults.zipf_s, help="Zipf exponent of token frequencies")
    parser.add_argument("--batches", type=int, nargs="+", default=defaults.batches, help="batch sizes (tokens per call)")
    args = parser.parse_args()
    return BenchConfig(vocab=args.vocab, layers=args.layers, dim=args.dim, seconds=args.seconds, zipf_s=args.zipf,
                       batches=tuple(args.batches))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
    main(parse_args())
