"""Fuzzing every RPC of a live server with malformed and edge-case requests (hypothesis).

Requests are built from the service descriptors of every memsvc.v1 module, so RPCs added later
are fuzzed without editing this file (streams as streams: a client stream gets a list of messages,
ImportTable also a well-formed header first; a server stream is read to its end): random bytes, fields of every type at their edges (negative
and huge ids, NaN/Inf, empty and unicode words, unknown versions and tables, huge k), tensors
with wrong shapes, dtypes and byte counts, oversize batches. Each answer must be OK or an expected
status code (never UNKNOWN, INTERNAL or UNAVAILABLE), the server must stay up, and a rejected
write must change nothing: every List* RPC answers byte-for-byte the same before and after.

Limits (issue 19): requests built to pass validation and land just past each work limit the
server sets (Lookup tokens, Search k / queries / queries x k / params, QueryMosaic queries / k /
LSH tables, CreateIndex fields and their types, an ImportTable larger than the disk, a mosaic
store's shape) must each get their one code (RESOURCE_EXHAUSTED or INVALID_ARGUMENT) with a
message naming the field, and change nothing; rounds of LookupStream/SearchStream streams past
max_streams (idle, abandoned, closed, or sent garbage) must get RESOURCE_EXHAUSTED beyond the limit,
UNAVAILABLE after the idle timeout, INVALID_ARGUMENT for garbage, while a unary Lookup and a health
check from another client answer. The server runs with --max-streams 4 --stream-idle-seconds 1.

The baseline is the same request stream's share of each status code; the figures that must be 0
are `bad_status` and `changed_by_rejected`.
Run: .venv/bin/python bench/fuzz.py --per-rpc 10000   (every RPC 10,000 times, then the limit
cases and stream rounds; --requests N spreads N over all RPCs; --only ImportTable,ExportTable).
Every --fresh-every requests (2,000) go to a fresh server on a fresh copy of the fuzz KB, each
round with its own hypothesis seed; a line per round says how it went.
Test: tests/test_fuzz.py runs ~200 examples, ~10 of each limit case and 2 stream rounds.
"""
import argparse
import collections
import contextlib
import importlib
import json
import logging
import pkgutil
import queue
import shutil
import sys
import threading
import tempfile
import time
from pathlib import Path

import grpc
from google.protobuf.descriptor import FieldDescriptor as F
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

import memsvc.v1  # noqa: E402
import numpy as np  # noqa: E402

from bench.crash import TABLE, make_kb  # noqa: E402
from memsvc.core.search import BUILDING  # noqa: E402
from memsvc.search.limits import INDEX_LIMITS  # noqa: E402
from memsvc.server.auth import WRITE, required_role  # noqa: E402
from memsvc.server.main import ServerConfig, with_limits  # noqa: E402
from memsvc.server.spawn import spawn_server, stop_server  # noqa: E402
from memsvc.store import KnowledgeBase, StoreConfig  # noqa: E402
from memsvc.store.mosaic_input import MAX_SHAPE  # noqa: E402
from memsvc.v1 import knowledge_pb2 as kpb  # noqa: E402
from memsvc.v1 import mosaic_pb2 as mpb  # noqa: E402
from memsvc.v1 import search_pb2 as spb  # noqa: E402

LOG = logging.getLogger("bench.fuzz")
EXPECTED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.OUT_OF_RANGE,
            grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ALREADY_EXISTS,
            grpc.StatusCode.UNIMPLEMENTED}  # UNIMPLEMENTED: an RPC the servicer does not offer yet
# Server streams that never end by design (a replica's Follow waits for commits): read for this
# long, then the deadline that ends them counts as OK.
ENDLESS, ENDLESS_SECONDS = {"/memsvc.v1.ReplicationService/Follow"}, 0.3
WORDS = [TABLE, "t0", "t1", "t63", "t64", "", " ", "\x00", "Spain", "💥", "t0 ", "x" * 5000, "../etc", "mosaic"]
EDGE_INTS = [0, 1, 2, 3, 4, 5, 7, 8, 63, 64, 65, 255, 4096, 70_000, 2**31 - 1, 2**32 - 1, 2**62, 2**63 - 1, -1, -2, -2**31, -2**63]
RANGE = {F.TYPE_INT32: (-2**31, 2**31 - 1), F.TYPE_SINT32: (-2**31, 2**31 - 1), F.TYPE_SFIXED32: (-2**31, 2**31 - 1),
         F.TYPE_UINT32: (0, 2**32 - 1), F.TYPE_FIXED32: (0, 2**32 - 1), F.TYPE_INT64: (-2**63, 2**63 - 1),
         F.TYPE_SINT64: (-2**63, 2**63 - 1), F.TYPE_SFIXED64: (-2**63, 2**63 - 1), F.TYPE_UINT64: (0, 2**64 - 1),
         F.TYPE_FIXED64: (0, 2**64 - 1)}
DTYPES = ["float32", "float16", "bfloat16", "float64", "int8", "", "FLOAT32"]
# A request that makes the server allocate without bound must fail there, not OOM the machine.
MEMORY_LIMIT = 8 << 30  # the server's address space, bytes (spawn_server(memory_limit=...))
OVERSIZE = 70_000  # more tokens than a lookup accepts (ServerConfig.max_lookup_tokens = 65536)
MOSAIC = "mosaic"  # the fuzzed KB's mosaic store (a name in WORDS, so plain fuzzing reaches it too)
MAX_STREAMS, IDLE_SECONDS = 4, 1.0  # the fuzzed server's --max-streams and --stream-idle-seconds
# Work limits lowered for the fuzzed server (serve --limit) so that the fuzz KB's small tables reach
# them: AddPairs past the message size (64 MiB: still above Search's largest reply, 2^22 results),
# QueryMosaic queries x pairs over head 0's 16 pairs (8,192: past 8,192 queries even over one pair).
FUZZ_LIMITS = {"max_message_bytes": 64 << 20, "mosaic.max_scored": 8192}
SERVE_ARGS = ("--max-streams", str(MAX_STREAMS), "--stream-idle-seconds", str(IDLE_SECONDS),
              *(arg for name, n in FUZZ_LIMITS.items() for arg in ("--limit", f"{name}={n}")))


def make_fuzz_kb(data):
    """bench.crash's KB (bank TABLE, 64 tokens x 3 layers x 8) and mosaic store MOSAIC: 1 layer,
    2 heads, key and value dim 8, 16 pairs in head 0."""
    make_kb(data)
    rng = np.random.default_rng(0)
    with KnowledgeBase(StoreConfig(data_dir=data)) as kb:
        kb.mosaic.create(MOSAIC, num_layers=1, num_heads=2, key_dim=8, value_dim=8)
        kb.mosaic.add(MOSAIC, 0, 0, rng.standard_normal((16, 8)), rng.standard_normal((16, 8)))


def rpc_methods() -> list:
    """(full method path, request class) of every RPC in every memsvc.v1 *_pb2 module."""
    methods = []
    for info in pkgutil.iter_modules(memsvc.v1.__path__):
        if info.name.endswith("_pb2"):
            module = importlib.import_module(f"memsvc.v1.{info.name}")
            for service in module.DESCRIPTOR.services_by_name.values():
                methods += [(f"/{service.full_name}/{m.name}", m.input_type._concrete_class) for m in service.methods]
    return sorted(methods, key=lambda m: m[0])


def method_kinds() -> dict:
    """{full method path: (client streams, server streams)} of every RPC (see rpc_methods)."""
    kinds = {}
    for info in pkgutil.iter_modules(memsvc.v1.__path__):
        if info.name.endswith("_pb2"):
            module = importlib.import_module(f"memsvc.v1.{info.name}")
            for service in module.DESCRIPTOR.services_by_name.values():
                kinds.update({f"/{service.full_name}/{m.name}": (m.client_streaming, m.server_streaming) for m in service.methods})
    return kinds


def scalar(field):
    if field.type in RANGE:
        lo, hi = RANGE[field.type]
        return st.one_of(st.sampled_from([i for i in EDGE_INTS if lo <= i <= hi]), st.integers(lo, hi))
    if field.type == F.TYPE_FLOAT:
        return st.floats(width=32)
    if field.type == F.TYPE_DOUBLE:
        return st.floats()
    if field.type == F.TYPE_BOOL:
        return st.booleans()
    if field.type == F.TYPE_STRING:
        return st.one_of(st.sampled_from(WORDS), st.text(max_size=12))
    if field.type == F.TYPE_BYTES:
        return st.binary(max_size=64)
    if field.type == F.TYPE_ENUM:
        return st.sampled_from([v.number for v in field.enum_type.values] + [99, -1])
    raise TypeError(field.type)


@st.composite
def tensor(draw, cls):
    """A Tensor: sometimes consistent (bytes match dtype and shape), often not."""
    shape = draw(st.lists(st.sampled_from([-1, 0, 1, 2, 3, 4, 8, 9, 16, 2**31 - 1]), max_size=4))
    dtype = draw(st.sampled_from(DTYPES))
    n = 1
    for s in shape:
        n *= max(s, 0)
    size = {"float32": 4, "float64": 8, "int8": 1}.get(dtype, 2)
    fitting = st.binary(min_size=n * size, max_size=n * size) if n * size <= 4096 else st.binary(max_size=64)
    data = draw(st.one_of(fitting, st.binary(max_size=64)))
    return cls(dtype=dtype, shape=shape, data=data)


def message(cls, depth=0):
    """Messages of ``cls`` with a random subset of fields set to edge values."""
    if cls.DESCRIPTOR.name == "Tensor":
        return tensor(cls)
    fields = {}
    for field in cls.DESCRIPTOR.fields:
        if field.type == F.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry or depth >= 2:
                continue
            one = message(field.message_type._concrete_class, depth + 1)
        elif field.name == "table":  # the real table half the time, so requests get past the lookup
            one = st.one_of(st.just(TABLE), scalar(field))
        else:
            one = scalar(field)
        if field.is_repeated:
            many = st.lists(one, max_size=4)
            if field.type in RANGE:  # an oversize batch of ids
                many = st.one_of(many, many, st.just([0] * OVERSIZE))
            one = many
        fields[field.name] = st.one_of(st.none(), one)
    return st.fixed_dictionaries(fields).map(lambda values: build(cls, values))


def build(cls, values):
    msg = cls()
    for name, value in values.items():
        if value is None:
            continue
        target = getattr(msg, name)
        if isinstance(value, list):
            target.extend(value)
        elif hasattr(target, "CopyFrom"):
            target.CopyFrom(value)
        else:
            setattr(msg, name, value)
    return msg


@st.composite
def import_stream(draw, cls):
    """An ImportTable stream that gets past the header half the time: a header of a small new table
    (or a taken name, a bad dtype, words of the wrong count), then row messages that fit it or not."""
    header = cls.DESCRIPTOR.fields_by_name["header"].message_type._concrete_class
    vocab, layers, dim = draw(st.sampled_from([1, 3, 64])), draw(st.sampled_from([1, 3])), draw(st.sampled_from([1, 8]))
    dtype = draw(st.sampled_from(DTYPES[:4]))  # the table dtypes and float64
    words = [f"f{i}" for i in range(vocab + draw(st.sampled_from([0, 0, 0, -1, 1])))]
    first = cls(header=header(table=draw(st.sampled_from(["fz", "fz", TABLE, ""])), dtype=dtype, vocab_size=vocab,
                              num_layers=layers, dim=dim, words=words))
    tensor_cls = cls.DESCRIPTOR.fields_by_name["rows"].message_type._concrete_class
    size = {"float32": 4, "float64": 8}.get(dtype, 2) * layers * dim
    fitting = st.integers(1, vocab).map(lambda n: tensor_cls(dtype=dtype, shape=[n, layers, dim], data=b"\x00" * n * size))
    rows = draw(st.lists(st.one_of(fitting, fitting, tensor(tensor_cls)).map(lambda t: cls(rows=t)), max_size=3))
    return [m.SerializeToString() for m in [first] + rows]


def requests(methods, kinds=None):
    """(method, serialized request): a fuzzed message or raw random bytes; for a client stream, a
    list of them (ImportTable: import_stream besides)."""
    kinds = kinds or method_kinds()

    def one(m):
        single = st.one_of(message(m[1]).map(lambda msg: msg.SerializeToString()), st.binary(max_size=64))
        if not kinds[m[0]][0]:
            return single
        streams = [st.lists(single, max_size=4)] + ([import_stream(m[1])] if m[0].endswith("/ImportTable") else [])
        return st.one_of(*streams)

    return st.sampled_from(methods).flatmap(lambda m: st.tuples(st.just(m[0]), one(m)))


class FuzzTarget:
    """A live server seen through raw-bytes calls; keeps the status-code histogram."""

    def __init__(self, address, timeout=30.0):
        self.connect(address)
        self.timeout = timeout
        self.methods = rpc_methods()
        self.kinds = method_kinds()
        self.listings = [m for m, cls in self.methods if m.rsplit("/", 1)[1].startswith("List")]
        self.histogram = collections.Counter()
        self.per_method = collections.Counter()  # requests sent to each RPC
        self.bad = []  # (method, code, details) answered with an unexpected code
        self.changed = []  # (method, code) rejected writes that changed a listing

    def connect(self, address):
        """Send from now on to the server at ``address`` (the counts go on)."""
        self.address = address
        self.channel = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 256 << 20),
                                                               ("grpc.max_receive_message_length", 256 << 20)])

    def raw(self, method, data):
        """(status code, details) of one call with serialized ``data`` (a list of them: the
        messages of a client stream); a server stream is read to its end (an ENDLESS one for a while)."""
        client_streams, server_streams = self.kinds[method]
        try:
            if client_streams:
                self.channel.stream_unary(method)(iter(data if isinstance(data, list) else [data]), timeout=self.timeout)
            elif server_streams:
                endless = method in ENDLESS
                try:
                    for _ in self.channel.unary_stream(method)(data, timeout=ENDLESS_SECONDS if endless else self.timeout):
                        pass
                except grpc.RpcError as e:
                    if not (endless and e.code() == grpc.StatusCode.DEADLINE_EXCEEDED):
                        raise
            else:
                self.channel.unary_unary(method)(data, timeout=self.timeout)
            return grpc.StatusCode.OK, ""
        except grpc.RpcError as e:
            return e.code(), e.details()

    def state(self) -> tuple:
        """What every List* RPC answers once no index build runs (an accepted CreateIndex's build
        finishing between two listings changes them without any rejected write): a rejected write
        must leave all of it unchanged."""
        deadline = time.monotonic() + self.timeout
        while True:
            listings = tuple(self.channel.unary_unary(m)(b"", timeout=self.timeout) for m in self.listings)
            indexes = spb.ListIndexesResponse.FromString(listings[self.listings.index(LIST_INDEXES)]).indexes
            if all(i.state != BUILDING for i in indexes) or time.monotonic() > deadline:
                return listings
            time.sleep(0.05)

    def send(self, method, data, expect=None) -> grpc.StatusCode:
        """One call, counted; ``expect`` (codes, text): the only codes accepted, and the text the
        details must hold (a limit case's field)."""
        write = required_role(method) == WRITE
        before = self.state() if write else None
        code, details = self.raw(method, data)
        self.histogram[code.name] += 1
        self.per_method[method] += 1
        if code not in EXPECTED or (expect and (code not in expect[0] or expect[1] not in (details or ""))):
            self.bad.append((method, code.name, details))
        elif write and code != grpc.StatusCode.OK and self.state() != before:
            self.changed.append((method, code.name))
        return code

    def serving(self) -> bool:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        reply = health_pb2_grpc.HealthStub(self.channel).Check(health_pb2.HealthCheckRequest(), timeout=self.timeout)
        return reply.status == health_pb2.HealthCheckResponse.SERVING


def survey(n, strategy, each, seed=None):
    """``each`` of ``n`` examples of ``strategy`` (no shrinking: this is a survey); the same
    examples every run, a different series for each ``seed``."""
    if n < 1:
        return

    @settings(max_examples=n, database=None, deadline=None, derandomize=seed is None, phases=["generate"],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def one(example):
        each(example)

    (one if seed is None else hypothesis_seed(seed)(one))()


def fuzz(target: FuzzTarget, n: int, methods=None, seed=None):
    """Send ``n`` hypothesis-generated requests to ``target``, to ``methods`` (default: all)."""
    survey(n, requests(methods or target.methods, target.kinds), lambda request: target.send(*request), seed)


# ---------------------------------------------------------------- the limits

KNOWLEDGE, MOSAIC_SERVICE, SEARCH = "/memsvc.v1.KnowledgeService", "/memsvc.v1.MosaicService", "/memsvc.v1.SearchService"
LIST_INDEXES = f"{SEARCH}/ListIndexes"
RE, IA = grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT
SERVER = with_limits(ServerConfig(), FUZZ_LIMITS)  # the fuzzed server's limits
SEARCH_LIMITS, MOSAIC_LIMITS = SERVER.search, SERVER.mosaic_limits
ROW_BYTES = 8 * 2  # one layer's row of the fuzzed TABLE (bench.crash.make_kb: dim 8, float16)
PAIRS_ADDED = 3  # the version make_fuzz_kb added MOSAIC's 16 pairs at (import 1, create 2); the fuzz has no gc


def past(limit, top=2**31 - 1):
    """A count just past ``limit``, or well past it (up to ``top``)."""
    return st.one_of(st.integers(limit + 1, limit + 64), st.integers(limit + 1, top))


def f32(rows, dim=8):
    return kpb.Tensor(dtype="float32", shape=[rows, dim], data=bytes(4 * rows * dim))


@st.composite
def limit_cases(draw):
    """(method, serialized request, (the codes accepted, text the details name)) built to pass
    every check but one limit."""
    case = draw(st.sampled_from(["lookup_tokens", "search_k", "search_queries", "search_results", "search_params",
                                 "mosaic_queries", "mosaic_k", "mosaic_lsh_tables", "index_limit", "index_type",
                                 "import_size", "mosaic_shape", "lookup_bytes", "mosaic_scored", "add_pairs_size"]))
    if case == "lookup_bytes":  # few enough tokens, but each layer named many times: rows past the message limit
        n = draw(st.integers(4096, SERVER.max_lookup_tokens))
        layers = [0] * ((SERVER.max_message_bytes - (1 << 20)) // (n * ROW_BYTES) + draw(st.integers(1, 64)))
        msg = kpb.LookupRequest(table=TABLE, token_ids=[1] * n, layers=layers)
        return f"{KNOWLEDGE}/Lookup", msg.SerializeToString(), ((RE,), "token_ids:")
    if case == "mosaic_scored":  # at the version that added head 0's 16 pairs (fuzzed writes may remove them later)
        n = draw(st.integers(MOSAIC_LIMITS.max_scored + 1, MOSAIC_LIMITS.max_queries))
        msg = mpb.QueryMosaicRequest(table=MOSAIC, layer=0, head=0, queries=f32(n), k=1, at=kpb.VersionRef(version=PAIRS_ADDED),
                                     mode=draw(st.sampled_from([mpb.QueryMosaicRequest.EXACT, mpb.QueryMosaicRequest.TOPK])))
        return f"{MOSAIC_SERVICE}/QueryMosaic", msg.SerializeToString(), ((RE,), "pairs exceed the limit")
    if case == "add_pairs_size":  # past the server's message size: gRPC refuses it before any work
        n = SERVER.max_message_bytes // (2 * 4 * 8) + draw(st.integers(1, 1024))
        msg = mpb.WritePairsRequest(table=MOSAIC, layer=0, head=1, keys=f32(n), values=f32(n))
        return f"{MOSAIC_SERVICE}/AddPairs", msg.SerializeToString(), ((RE,), "Received message larger than max")
    if case == "lookup_tokens":
        n = draw(st.integers(SERVER.max_lookup_tokens + 1, SERVER.max_lookup_tokens + 8192))
        ids = draw(st.booleans())
        msg = kpb.LookupRequest(table=TABLE, token_ids=[1] * n if ids else [], tokens=[] if ids else ["t1"] * n)
        return f"{KNOWLEDGE}/Lookup", msg.SerializeToString(), ((RE,), "token_ids:")
    if case.startswith("search"):
        n, k = 1, 1
        if case == "search_k":
            k = draw(past(SEARCH_LIMITS.max_k))
        elif case == "search_queries":
            n = draw(st.integers(SEARCH_LIMITS.max_queries + 1, SEARCH_LIMITS.max_queries + 1024))
        elif case == "search_results":
            k = SEARCH_LIMITS.max_k
            n = draw(st.integers(SEARCH_LIMITS.max_results // k + 1, SEARCH_LIMITS.max_queries))
        params = {draw(st.sampled_from(["complexity", "ef_search", "nprobe", "beam_width"])):
                  draw(past(SEARCH_LIMITS.max_search_param, 2**63 - 1))} if case == "search_params" else {}
        msg = spb.SearchRequest(table=TABLE, k=k, params=params, **({"tokens": ["t0"] * n} if draw(st.booleans())
                                                                     else {"queries": f32(n)}))
        field = {"search_queries": "queries:", "search_params": "params."}.get(case, "k:")
        return f"{SEARCH}/Search", msg.SerializeToString(), ((RE,), field)
    if case.startswith("mosaic_") and case != "mosaic_shape":
        n = draw(st.integers(MOSAIC_LIMITS.max_queries + 1, MOSAIC_LIMITS.max_queries + 1024)) if case == "mosaic_queries" else 1
        msg = mpb.QueryMosaicRequest(table=MOSAIC, layer=0, head=draw(st.sampled_from([0, 1])), queries=f32(n))
        if case == "mosaic_k":
            msg.mode, msg.k = mpb.QueryMosaicRequest.TOPK, draw(past(MOSAIC_LIMITS.max_k))
        elif case == "mosaic_lsh_tables":
            msg.mode, msg.lsh.tables = mpb.QueryMosaicRequest.LSH, draw(past(MOSAIC_LIMITS.max_lsh_tables))
        else:
            msg.mode = draw(st.sampled_from([mpb.QueryMosaicRequest.EXACT, mpb.QueryMosaicRequest.TOPK]))
            msg.k = 1
        field = {"mosaic_queries": "queries:", "mosaic_k": "k:", "mosaic_lsh_tables": "lsh.tables:"}[case]
        return f"{MOSAIC_SERVICE}/QueryMosaic", msg.SerializeToString(), ((RE,), field)
    if case.startswith("index_"):
        key = draw(st.sampled_from(sorted(INDEX_LIMITS)))
        if case == "index_limit":
            limit = INDEX_LIMITS[key]
            value = draw(past(limit, 2**62)) if isinstance(limit, int) else draw(st.floats(limit * 1.01, 1e300))
            expect = ((RE,), f"config.{key}:")
        else:
            value, expect = draw(st.sampled_from(["abc", None, [1], {"x": 1}])), ((IA,), f"config.{key}:")
        msg = spb.CreateIndexRequest(name="fz-ix", table=TABLE, kind=draw(st.sampled_from(["exact", "hnsw", "ivfpq"])),
                                     config_json=json.dumps({key: value}))
        return f"{SEARCH}/CreateIndex", msg.SerializeToString(), expect
    if case == "import_size":  # 4 tokens, but layers x dim past any disk
        header = kpb.ImportTableHeader(table="fz-big", dtype="float16", vocab_size=4, words=["a", "b", "c", "d"],
                                       num_layers=draw(st.integers(2**20, 2**31 - 1)), dim=draw(st.integers(2**20, 2**31 - 1)))
        return f"{KNOWLEDGE}/ImportTable", [kpb.ImportTableRequest(header=header).SerializeToString()], ((RE,), "data:")
    shape = {what: 1 for what in MAX_SHAPE}
    what = draw(st.sampled_from(sorted(MAX_SHAPE)))
    shape[what] = draw(past(MAX_SHAPE[what]))
    msg = mpb.CreateMosaicRequest(table="fz-mosaic", **shape)
    return f"{MOSAIC_SERVICE}/CreateMosaic", msg.SerializeToString(), ((IA,), f"{what}:")


def fuzz_limits(target: FuzzTarget, n: int):
    """Send ``n`` limit cases; each must get its code and name its field."""
    survey(n, limit_cases(), lambda case: target.send(*case))


STREAMS = {"LookupStream": kpb.LookupRequest(table=TABLE, tokens=["t1"]),
           "SearchStream": spb.SearchRequest(table=TABLE, tokens=["t1"], k=2)}
STREAM_KINDS = ("idle", "abandoned", "closed", "garbage")  # nothing sent / one message, never read / closed / bad bytes
ENDS = {"idle": grpc.StatusCode.UNAVAILABLE, "abandoned": grpc.StatusCode.UNAVAILABLE, "closed": grpc.StatusCode.OK,
        "garbage": IA}
WAIT = 20.0  # seconds any one answer may take before the round counts as hung


def stream_ok(kind, code, details) -> bool:
    """How a stream of ``kind`` may end: as its kind says, refused past max_streams, or ended idle."""
    return code == ENDS[kind] or (code == RE and details.startswith("streams:")) or \
        (code == grpc.StatusCode.UNAVAILABLE and details.startswith("stream: idle"))


def stream_round(target: FuzzTarget, opened: list):
    """Open ``opened`` [(stream name, kind)] on one channel; while they are open a Lookup and a
    health check from another answer, and each stream ends as stream_ok says, within WAIT."""
    ended, done, feeds, abandoned = [], threading.Condition(), [], []

    def finished(call, kind, method):
        with done:
            ended.append((method, kind, call.code(), call.details() or ""))
            done.notify_all()

    with grpc.insecure_channel(target.address) as channel:
        for name, kind in opened:
            method = f"{SEARCH if name == 'SearchStream' else KNOWLEDGE}/{name}"
            feeds.append(queue.SimpleQueue())
            call = channel.stream_stream(method)(iter(lambda f=feeds[-1]: f.get(timeout=2 * WAIT), None), timeout=WAIT)
            call.add_done_callback(lambda c, k=kind, m=method: finished(c, k, m))
            if kind != "idle":
                feeds[-1].put(b"\xff\xff\xff" if kind == "garbage" else STREAMS[name].SerializeToString())
            if kind == "closed":
                with contextlib.suppress(grpc.RpcError):  # refused: its status is counted below
                    next(call)
                feeds[-1].put(None)
            abandoned += [call] if kind == "abandoned" else []
        code = target.raw(f"{KNOWLEDGE}/Lookup", STREAMS["LookupStream"].SerializeToString())[0]
        if code != grpc.StatusCode.OK or not target.serving():
            target.bad.append((f"{KNOWLEDGE}/Lookup", code.name, "a Lookup or health check beside open streams"))
        for call in abandoned:  # its status reaches the client once its reply is read, after the idle timeout
            with contextlib.suppress(grpc.RpcError):  # counted below
                list(call)
        with done:
            done.wait_for(lambda: len(ended) == len(opened), WAIT)
        for feed in feeds:
            feed.put(None)  # ends the request iterators that idle streams left waiting
    for method, kind, code, details in ended:
        target.histogram[code.name] += 1
        target.per_method[method] += 1
        if not stream_ok(kind, code, details):
            target.bad.append((method, code.name, f"{kind} stream: {details}"))
    if len(ended) < len(opened):
        target.bad.append(("streams", "HUNG", f"{len(opened) - len(ended)} of {len(opened)} streams never ended"))


def fuzz_streams(target: FuzzTarget, rounds: int):
    """``rounds`` stream rounds of MAX_STREAMS + 1 .. + 4 streams of random kinds."""
    stream = st.tuples(st.sampled_from(sorted(STREAMS)), st.sampled_from(STREAM_KINDS))
    opened = st.lists(stream, min_size=MAX_STREAMS + 1, max_size=MAX_STREAMS + 4)  # past the limit, every round
    survey(rounds, opened, lambda streams: stream_round(target, streams))


@contextlib.contextmanager
def fresh_server(kb, work, log=None):
    """A server (process, address) on a copy of the fuzz KB ``kb``, removed after: what one
    round of requests left behind (stores of up to 65,536 groups that every listing then carries)
    never slows the next round."""
    data = Path(tempfile.mkdtemp(dir=work)) / "kb"
    shutil.copytree(kb, data)
    proc, address = spawn_server(data, *SERVE_ARGS, log=log, memory_limit=MEMORY_LIMIT)
    try:
        yield proc, address
    finally:
        stop_server(proc, timeout=30)
        shutil.rmtree(data.parent)


def rounds_of(methods, per_rpc, total, fresh_every):
    """(methods, requests) of each round: per_rpc to each RPC in turn, else total over all, in
    rounds of at most fresh_every requests."""
    plan = [([m], per_rpc) for m in methods] if per_rpc else [(methods, total)]
    return [(ms, min(fresh_every, n - done)) for ms, n in plan for done in range(0, n, fresh_every)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=10_000, help="Requests spread over every RPC at random.")
    parser.add_argument("--per-rpc", type=int, default=0, help="Instead: this many requests to each RPC in turn.")
    parser.add_argument("--fresh-every", type=int, default=2_000, help="A fresh server on a fresh KB every N requests.")
    parser.add_argument("--limit-cases", type=int, default=None, help="Limit cases (default: --per-rpc or 500).")
    parser.add_argument("--stream-rounds", type=int, default=None, help="Stream rounds (default: 1 per 100 limit cases, 5 or more).")
    parser.add_argument("--server-log", default=None, help="Write the servers' logs (tracebacks of INTERNAL) here.")
    parser.add_argument("--only", default=None, help="Fuzz only these RPCs (comma-separated names, e.g. ImportTable,ExportTable).")
    args = parser.parse_args()
    limit_n = args.limit_cases if args.limit_cases is not None else (args.per_rpc or 500)
    rounds = args.stream_rounds if args.stream_rounds is not None else max(5, limit_n // 100)
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
    seconds, up = {}, True
    with tempfile.TemporaryDirectory() as tmp:
        kb = Path(tmp) / "kb"
        make_fuzz_kb(kb)
        target = FuzzTarget("localhost:1")
        if args.only:
            target.methods = [m for m in target.methods if m[0].rsplit("/", 1)[1] in args.only.split(",")]
        start = time.perf_counter()
        for i, (methods, n) in enumerate(rounds_of(target.methods, args.per_rpc, args.requests, args.fresh_every)):
            with fresh_server(kb, tmp, args.server_log) as (proc, address):
                target.connect(address)
                sent, bad = sum(target.histogram.values()), len(target.bad)
                fuzz(target, n, methods, seed=i)
                up = up and proc.poll() is None and target.serving()
            name = methods[0][0].rsplit("/", 1)[1] if len(methods) == 1 else "every RPC"
            print(f"round {i}: {sum(target.histogram.values()) - sent} requests to {name}, "
                  f"{len(target.bad) - bad} unexpected, server {'up' if up else 'DOWN'}, "
                  f"{time.perf_counter() - start:.0f} s in all", flush=True)
        seconds["fuzz"] = time.perf_counter() - start
        fuzzed, bad_fuzz = sum(target.histogram.values()), len(target.bad)
        fewest = min(target.per_method[m] for m, _ in target.methods)
        with fresh_server(kb, tmp, args.server_log) as (proc, address):
            target.connect(address)
            start = time.perf_counter()
            fuzz_limits(target, limit_n)
            seconds["limits"] = time.perf_counter() - start
            limits, bad_limits = sum(target.histogram.values()) - fuzzed, len(target.bad) - bad_fuzz
            start = time.perf_counter()
            fuzz_streams(target, rounds)
            seconds["streams"] = time.perf_counter() - start
            up = up and proc.poll() is None and target.serving()
    total = sum(target.histogram.values())
    print(f"{fuzzed} fuzzed requests to {len(target.methods)} RPCs (at least {fewest} each) in {seconds['fuzz']:.0f} s, "
          f"{limits} limit cases in {seconds['limits']:.0f} s, {total - fuzzed - limits} streams in "
          f"{rounds} rounds in {seconds['streams']:.0f} s; server {'up' if up else 'DOWN'}")
    print(f"{'status':<22} {'count':>7} {'share':>7}")
    for code, count in target.histogram.most_common():
        print(f"{code:<22} {count:>7} {count / total:>7.1%}")
    for method, code, details in target.bad[:20]:
        print(f"UNEXPECTED {code} from {method}: {(details or '')[:200]}")
    for method, code in target.changed[:20]:
        print(f"CHANGED STATE: {method} answered {code} but a listing changed")
    print(json.dumps({"fuzz_requests": fuzzed, "limit_cases": limits, "stream_rounds": rounds, "requests": total,
                      "bad_status": len(target.bad), "bad_limit_cases": bad_limits,
                      "internal_or_unknown": target.histogram["INTERNAL"] + target.histogram["UNKNOWN"],
                      "changed_by_rejected": len(target.changed), "server_up": up,
                      "seconds": {k: round(v, 1) for k, v in seconds.items()}}))


if __name__ == "__main__":
    main()
