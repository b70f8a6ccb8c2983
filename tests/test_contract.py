"""The contract any language can read (docs/contract.md): Lookup replies with one `rows` field,
OUT_OF_RANGE for a layer outside the table wherever layers are named, and a Node.js worker written
only from proto/ that reads, edits, searches and queries a real server exactly as the Python client."""
import base64
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import empty_pb2
from google.protobuf.unknown_fields import UnknownFieldSet

from clients.client import MemoryClient
from clients.mosaic import MosaicClient
from clients.search import SearchClient
from editing.rows import check_layers, plan_row_ops
from memsvc.core.dtypes import storage_dtype, to_float32, to_storage
from memsvc.core.errors import InvalidArgument, OutOfRange
from memsvc.core.values import LookupResult, RowOp
from memsvc.server.spawn import spawn_server, stop_server
from memsvc.store import KnowledgeBase, StoreConfig
from memsvc.v1 import knowledge_pb2 as pb
from memsvc.wire.lookup import lookup_from_wire, lookup_to_wire
from tests.conftest import WORDS, small_bank

NODE_DIR = Path(__file__).resolve().parent / "node"
DTYPES = ("float32", "float16", "bfloat16")


def _fields(wire: bytes) -> list:
    """Top-level field numbers of a protobuf message, in wire order (parsed as unknown fields)."""
    return [field.field_number for field in UnknownFieldSet(empty_pb2.Empty.FromString(wire))]


def _result(dtype, ordered=False):
    rows = np.arange(2 * 3 * 5, dtype=np.float32).reshape(2, 3, 5).astype(storage_dtype(dtype))
    return LookupResult(rows=rows, unique_ids=np.array([7, 3]), inverse=np.array([0, 1, 0]), version=4, dtype=dtype,
                        ordered=ordered)


@pytest.mark.parametrize("dtype", DTYPES)
def test_lookup_reply_has_one_rows_field_that_protobuf_parses(dtype):
    result = _result(dtype)
    wire = lookup_to_wire(result).data
    assert _fields(wire).count(1) == 1  # protobuf.js keeps only the last of repeated `rows` fields
    parsed = pb.LookupResponse.FromString(wire)
    assert (parsed.rows.dtype, list(parsed.rows.shape), parsed.rows.data) == (dtype, [2, 3, 5], result.rows.tobytes())
    in_buffer = lookup_to_wire(result, rows_in_buffer=True).data
    assert _fields(in_buffer).count(1) == 1 and pb.LookupResponse.FromString(in_buffer).rows.data == b""


def test_lookup_reply_is_read_in_any_field_order_without_copying_rows():
    result = _result("float16")
    reply = pb.LookupResponse.FromString(lookup_to_wire(result).data)
    head = pb.LookupResponse(version=4, unique_token_ids=[7, 3], inverse=[0, 1, 0]).SerializeToString()
    header_only = pb.LookupResponse(rows=pb.Tensor(dtype="float16", shape=[2, 3, 5])).SerializeToString()
    data_only = pb.LookupResponse(rows=pb.Tensor(data=result.rows.tobytes())).SerializeToString()
    rows_field = pb.LookupResponse(rows=reply.rows).SerializeToString()
    for wire in (reply.SerializeToString(), head + rows_field, header_only + head + data_only,
                 data_only + head + header_only, lookup_to_wire(result).data):
        back = lookup_from_wire(wire)
        np.testing.assert_array_equal(back.rows, result.rows)
        assert back.dtype == "float16" and back.version == 4
        assert back.unique_ids.tolist() == [7, 3] and back.inverse.tolist() == [0, 1, 0]
        assert not back.rows.flags.owndata and not back.rows.flags.writeable  # a view of the wire bytes


def _reader(table):
    return lambda ids: table[ids]


def test_a_layer_out_of_range_is_out_of_range_and_names_the_field():
    table = small_bank()
    set_layer_5 = [RowOp("set", token_id=0, vector=np.zeros(8, np.float32), layers=[5])]
    with pytest.raises(OutOfRange, match=r"^ops\[0\]\.layers: layer 5 out of range \[0, 3\)$"):
        plan_row_ops(set_layer_5, _reader(table), _reader(table), 3, 8)
    with pytest.raises(OutOfRange, match=r"^overrides\[0\]\.layers: layer 5 out of range \[0, 3\)$"):
        plan_row_ops(set_layer_5, _reader(table), _reader(table), 3, 8, field="overrides")
    with pytest.raises(OutOfRange, match=r"^layers: layer -1 out of range"):
        check_layers([-1], 3, "layers")
    with pytest.raises(InvalidArgument, match=r"^overrides\[1\]\.layers: layers repeat$"):
        plan_row_ops([RowOp("scale", token_id=1, alpha=2.0), RowOp("scale", token_id=1, alpha=2.0, layers=[1, 1])],
                     _reader(table), _reader(table), 3, 8, field="overrides")
    with pytest.raises(InvalidArgument, match=r"^overrides\[0\]\.alpha: must be finite$"):
        plan_row_ops([RowOp("scale", token_id=1, alpha=float("nan"))], _reader(table), _reader(table), 3, 8, field="overrides")
    with pytest.raises(InvalidArgument, match=r"^overrides: the batch is empty$"):
        plan_row_ops([], _reader(table), _reader(table), 3, 8, field="overrides")


# --- a Node.js worker against a real server --------------------------------------------------

QUERIES = np.random.default_rng(7).standard_normal((3, 8)).astype(np.float32)
EDIT_VECTOR = np.linspace(-1, 1, 8, dtype=np.float32)


def _node_modules():
    """Install the worker's pinned packages when missing (the Makefile's test target does the same)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node and npm, "node and npm are needed for the contract test (Node 20: apt-get install nodejs npm)"
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        subprocess.run([npm, "ci" if (NODE_DIR / "package-lock.json").exists() else "install", "--no-audit", "--no-fund"],
                       cwd=NODE_DIR, check=True, capture_output=True, timeout=300)
    return node


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    data = tmp_path_factory.mktemp("contract") / "kb"
    with KnowledgeBase(StoreConfig(data_dir=data, create=True)) as kb:
        for i, dtype in enumerate(DTYPES):
            kb.import_table(dtype, small_bank(seed=i), WORDS, dtype=dtype, message="import")
        kb.mosaic.create("facts", num_layers=1, num_heads=2, key_dim=8, value_dim=4)
        rng = np.random.default_rng(3)
        kb.mosaic.add("facts", 0, 1, rng.standard_normal((20, 8)).astype(np.float32),
                      rng.standard_normal((20, 4)).astype(np.float32))
        head = kb.version
    proc, address = spawn_server(data)
    yield address, head
    stop_server(proc)


def _b64(text, dtype="<f4"):
    return np.frombuffer(base64.b64decode(text), dtype=dtype)


def test_a_node_worker_reads_edits_searches_and_queries_exactly_as_python(served):
    node = _node_modules()
    address, head = served
    lookups = [{"table": t, "tokens": ["Spain", "Germany", "Spain", "w9"], "layers": layers, "version": head}
               for t in DTYPES for layers in ([2, 0], [])]
    plan = {"address": address, "lookups": lookups,
            "edit": {"table": "float32", "token": "Paris", "layers": [1], "vector": EDIT_VECTOR.tolist()},
            "search": {"table": "float16", "layer": 1, "tokens": ["Spain", "Berlin"], "k": 4},
            "mosaic": {"table": "facts", "layer": 0, "head": 1, "queries": QUERIES.tolist(), "beta": 2.0}}
    run = subprocess.run([node, str(NODE_DIR / "worker.js")], input=json.dumps(plan), capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)

    with MemoryClient(address) as client:
        assert {name: (t["kind"], t["dtype"]) for name, t in got["tables"].items()} == \
            {t.name: (t.kind, t.dtype) for t in client.list_tables()}
        for spec, node_rows in zip(lookups, got["lookups"]):
            result = client.lookup(spec["table"], spec["tokens"], layers=spec["layers"] or None, version=head)
            stored = result.request_rows()
            assert (node_rows["dtype"], node_rows["version"]) == (spec["table"], head)
            assert node_rows["shape"][1:] == list(stored.shape[1:])
            assert base64.b64decode(node_rows["stored"]) == np.ascontiguousarray(stored).tobytes()  # bit for bit
            np.testing.assert_array_equal(_b64(node_rows["float32"]).reshape(stored.shape), to_float32(stored, spec["table"]))

        assert (got["edit"]["version"], got["edit"]["rows_changed"]) == (head + 1, 1)
        assert got["edit"]["changes"] == [["Paris", WORDS.index("Paris"), 1]]
        paris = client.lookup("float32", ["Paris"]).request_rows()
        assert got["edited"]["version"] == head + 1 and base64.b64decode(got["edited"]["stored"]) == paris.tobytes()
        assert np.array_equal(paris[0, 1], EDIT_VECTOR) and np.array_equal(paris[0, 0], small_bank(seed=0)[WORDS.index("Paris"), 0])
        for case in ("edit_layer", "override_layer", "lookup_layer"):
            assert got["errors"][case]["code"] == "OUT_OF_RANGE", (case, got["errors"][case])
        assert "ops[0].layers: layer 99 out of range" in got["errors"]["edit_layer"]["details"]
        assert "overrides[0].layers: layer 99 out of range" in got["errors"]["override_layer"]["details"]

        found = SearchClient(client, stream=False).search("float16", layer=1, tokens=["Spain", "Berlin"], k=4)
        assert got["search"]["ids_dtype"] == "int64" and got["search"]["shape"] == [2, 4]
        assert got["search"]["ids"] == found.ids.ravel().tolist()  # exactly
        assert got["search"]["tokens"] == [w for row in found.tokens for w in row]
        np.testing.assert_array_equal(_b64(got["search"]["distances"]), found.distances.ravel())

        mosaic = MosaicClient(client).query("facts", 0, 1, QUERIES, beta=2.0, mode="exact")
        assert (got["mosaic"]["n"], got["mosaic"]["beta"], got["mosaic"]["shape"]) == (20, 2.0, [3, 4])
        np.testing.assert_array_equal(_b64(got["mosaic"]["outputs"]).reshape(3, 4), mosaic.outputs)
        np.testing.assert_array_equal(_b64(got["mosaic"]["lse"]), mosaic.lse)


def test_bfloat16_is_the_upper_half_of_float32():
    values = np.array([1.0, -2.5, 3.140625], np.float32)
    stored = to_storage(values, "bfloat16")
    assert stored.dtype == np.dtype("<u2")
    assert (stored.astype(np.uint32) << 16).view(np.float32).tolist() == values.tolist()
