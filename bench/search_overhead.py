"""Where a batch-64 search through the service spends its time beyond the index (issue 5).

The same index kind over the same rows, searched in-process and through four servers, each in its
own process, from raw clients (prebuilt request bytes down one open stream, replies not parsed, so
the client library is not in the figures), in alternating slices:

    floor     a bare Python gRPC server: raw float32 batch in, raw ids + distances out (its own
              index over the rows, as bench/ann_service.py's floor column)
    proto     the same server speaking SearchRequest / SearchResponse around that index
    servicer  memsvc's SearchServicer and IndexManager in the bare server (versions, the
              never-stale merge, checks, the query log; no interceptors), over a KB
    memsvc    `memsvc serve` (interceptors: metrics, parsing, errors; server options)

A row's "step" is its ms per call minus the row above: what that layer costs. Requests ask for
ids and distances only (ids_only), as index.search answers.
Run: .venv/bin/python bench/search_overhead.py [--rows 20000] [--kind ivfpq] [--rounds 30]
"""
import argparse
import json
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from bench.ann_service import _index_serve, built_index  # noqa: E402
from bench.lookup import TABLE, grpc_floor, serve_messages  # noqa: E402
from clients.client import OpenStream  # noqa: E402
from indexes.synthetic import clustered_table  # noqa: E402
from memsvc.search.config import SearchConfig  # noqa: E402
from memsvc.search.manager import IndexManager  # noqa: E402
from memsvc.server.search_servicer import SearchServicer  # noqa: E402
from memsvc.server.spawn import spawn_server, stop_server  # noqa: E402
from memsvc.store import KnowledgeBase, StoreConfig  # noqa: E402
from memsvc.v1 import search_pb2 as spb  # noqa: E402
from memsvc.wire.knowledge import tensor_to_pb  # noqa: E402

SEARCH_STREAM = "/memsvc.v1.SearchService/SearchStream"


def _proto_serve(port, kind, rows_path, k):
    """The floor's server speaking SearchRequest / SearchResponse: its own index over the rows."""
    index = built_index(kind, rows_path)

    def answer(message):
        request = spb.SearchRequest.FromString(message)
        ids, dist = index.search(np.frombuffer(request.queries.data, np.float32).reshape(tuple(request.queries.shape)), k)
        reply = spb.SearchResponse(version=1, index=kind)
        tensor_to_pb(ids, "int64", out=reply.ids)
        tensor_to_pb(dist, out=reply.distances)
        return reply.SerializeToString()
    serve_messages(port, answer)


def _servicer_serve(port, data):
    """memsvc's SearchServicer over the KB at `data` (its indexes loaded) in the bare server."""
    searcher = SearchServicer(IndexManager(KnowledgeBase(StoreConfig(data_dir=data))))
    serve_messages(port, lambda message: searcher.Search(spb.SearchRequest.FromString(message), None).SerializeToString())


@contextmanager
def memsvc_stream(data):
    """call(request bytes) -> reply bytes down one SearchStream of `memsvc serve` over data."""
    proc, address = spawn_server(data)
    channel = grpc.insecure_channel(address)
    stream = OpenStream(channel.stream_stream(SEARCH_STREAM), None, None, address)
    try:
        yield stream.call
    finally:
        stream.close()
        channel.close()
        stop_server(proc)


def ms_per_call(call, messages, seconds):
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        call(messages[calls % len(messages)])
        calls += 1
    return 1000 * (time.perf_counter() - start) / calls


def main(args):
    rows, queries = clustered_table(args.rows, 128, 64 * 8, seed=0)
    rows16 = rows.astype(np.float16)
    batches = list(queries.reshape(8, 64, 128))
    requests = []
    for batch in batches:
        request = spb.SearchRequest(table=TABLE, layer=0, k=10, index=args.kind, ids_only=True)
        tensor_to_pb(batch, out=request.queries)
        requests.append(request.SerializeToString())
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as servers:
        tmp = Path(tmp)
        with KnowledgeBase(StoreConfig(data_dir=tmp / "kb", create=True, durable=False)) as kb:
            kb.import_table(TABLE, rows16[:, None, :], [f"t{i}" for i in range(args.rows)], dtype="float16", progress=True)
            IndexManager(kb, SearchConfig(build_in_worker=False)).create(args.kind, TABLE, 0, {"kind": args.kind}, wait=True)
        np.save(tmp / "rows32.npy", rows16.astype(np.float32))
        index = built_index(args.kind, tmp / "rows32.npy")
        for layer in ("servicer", "memsvc"):
            shutil.copytree(tmp / "kb", tmp / layer)  # a KB per server process
        built = (args.kind, tmp / "rows32.npy", 10)
        sides = {"in-process": (lambda b: index.search(b, 10), batches),
                 "floor": (servers.enter_context(grpc_floor(_index_serve, built, 3600)), [b.tobytes() for b in batches]),
                 "proto": (servers.enter_context(grpc_floor(_proto_serve, built, 3600)), requests),
                 "servicer": (servers.enter_context(grpc_floor(_servicer_serve, (tmp / "servicer",), 3600)), requests),
                 "memsvc": (servers.enter_context(memsvc_stream(tmp / "memsvc")), requests)}
        for call, messages in sides.values():
            ms_per_call(call, messages, 1.0)  # warm-up, and past a young query log's many entries a batch
        runs = {side: [] for side in sides}
        for _ in range(args.rounds):
            for side, (call, messages) in sides.items():
                runs[side].append(ms_per_call(call, messages, args.seconds))
    ms = {side: float(np.median(r)) for side, r in runs.items()}
    print(f"\n{args.kind}, {args.rows} rows x 128, batch 64, k 10; median of {args.rounds} alternating slices")
    print(f"{'side':<11} {'ms/call':>8} {'step ms':>8} {'QPS / in-process':>17}")
    previous = None
    for side, value in ms.items():
        step = "" if previous is None else f"{value - previous:+.3f}"
        print(f"{side:<11} {value:>8.3f} {step:>8} {ms['in-process'] / value:>17.3f}")
        previous = value
    print(json.dumps({f"{args.kind}_{side}_ms_per_call": round(value, 3) for side, value in ms.items()}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--kind", default="ivfpq")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=0.25, help="per slice")
    main(parser.parse_args())
