"""Fuzzing every RPC of a live server with malformed and edge-case requests (hypothesis).

Requests are built from the service descriptors of every memsvc.v1 module, so RPCs added later
are fuzzed without editing this file (streams as streams: a client stream gets a list of messages,
ImportTable also a well-formed header first; a server stream is read to its end): random bytes, fields of every type at their edges (negative
and huge ids, NaN/Inf, empty and unicode words, unknown versions and tables, huge k), tensors
with wrong shapes, dtypes and byte counts, oversize batches. Each answer must be OK or an expected
status code (never UNKNOWN, INTERNAL or UNAVAILABLE), the server must stay up, and a rejected
write must change nothing: every List* RPC answers byte-for-byte the same before and after.

The baseline is the same request stream's share of each status code; the figures that must be 0
are `bad_status` and `changed_by_rejected`.
Run: .venv/bin/python bench/fuzz.py --requests 10000   (~2-4 min on 2 cores; --only ImportTable,ExportTable)
Test: tests/test_fuzz.py runs ~200 examples.
"""
import argparse
import collections
import importlib
import json
import logging
import pkgutil
import sys
import tempfile
import time
from pathlib import Path

import grpc
from google.protobuf.descriptor import FieldDescriptor as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

import memsvc.v1  # noqa: E402
from bench.crash import TABLE, make_kb  # noqa: E402
from memsvc.server.auth import WRITE, required_role  # noqa: E402
from memsvc.server.spawn import spawn_server  # noqa: E402

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
        self.channel = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 256 << 20),
                                                               ("grpc.max_receive_message_length", 256 << 20)])
        self.timeout = timeout
        self.methods = rpc_methods()
        self.kinds = method_kinds()
        self.listings = [m for m, cls in self.methods if m.rsplit("/", 1)[1].startswith("List")]
        self.histogram = collections.Counter()
        self.per_method = collections.Counter()  # requests sent to each RPC
        self.bad = []  # (method, code, details) answered with an unexpected code
        self.changed = []  # (method, code) rejected writes that changed a listing

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
        """What every List* RPC answers: a rejected write must leave all of it unchanged."""
        return tuple(self.channel.unary_unary(m)(b"", timeout=self.timeout) for m in self.listings)

    def send(self, method, data) -> grpc.StatusCode:
        write = required_role(method) == WRITE
        before = self.state() if write else None
        code, details = self.raw(method, data)
        self.histogram[code.name] += 1
        self.per_method[method] += 1
        if code not in EXPECTED:
            self.bad.append((method, code.name, details))
        elif write and code != grpc.StatusCode.OK and self.state() != before:
            self.changed.append((method, code.name))
        return code

    def serving(self) -> bool:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        reply = health_pb2_grpc.HealthStub(self.channel).Check(health_pb2.HealthCheckRequest(), timeout=self.timeout)
        return reply.status == health_pb2.HealthCheckResponse.SERVING


def fuzz(target: FuzzTarget, n: int, seed: int = 0):
    """Send ``n`` hypothesis-generated requests to ``target`` (no shrinking: this is a survey)."""
    @settings(max_examples=n, database=None, deadline=None, derandomize=True, phases=["generate"],
              suppress_health_check=list(HealthCheck))
    @given(requests(target.methods, target.kinds))
    def one(request):
        target.send(*request)

    one()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--server-log", default=None, help="Write the server's log (tracebacks of INTERNAL) here.")
    parser.add_argument("--only", default=None, help="Fuzz only these RPCs (comma-separated names, e.g. ImportTable,ExportTable).")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        make_kb(Path(tmp) / "kb")
        proc, address = spawn_server(Path(tmp) / "kb", log=args.server_log, memory_limit=MEMORY_LIMIT)
        try:
            target = FuzzTarget(address)
            if args.only:
                target.methods = [m for m in target.methods if m[0].rsplit("/", 1)[1] in args.only.split(",")]
            start = time.perf_counter()
            fuzz(target, args.requests)
            seconds = time.perf_counter() - start
            up = proc.poll() is None and target.serving()
        finally:
            proc.terminate()
            proc.wait(30)
    total = sum(target.histogram.values())
    fewest = min(target.per_method[m] for m, _ in target.methods)
    print(f"{total} requests to {len(target.methods)} RPCs (at least {fewest} each) in {seconds:.0f} s; "
          f"server {'up' if up else 'DOWN'}")
    print(f"{'status':<22} {'count':>7} {'share':>7}")
    for code, count in target.histogram.most_common():
        print(f"{code:<22} {count:>7} {count / total:>7.1%}")
    for method, code, details in target.bad[:20]:
        print(f"UNEXPECTED {code} from {method}: {details[:200]}")
    for method, code in target.changed[:20]:
        print(f"CHANGED STATE: {method} answered {code} but a listing changed")
    print(json.dumps({"fuzz_requests": total, "bad_status": len(target.bad), "internal_or_unknown":
                      target.histogram["INTERNAL"] + target.histogram["UNKNOWN"],
                      "changed_by_rejected": len(target.changed), "server_up": up}))


if __name__ == "__main__":
    main()
