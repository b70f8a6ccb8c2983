"""The committed gRPC stubs are exactly what proto/ generates (run `make proto` when this fails)."""
from memsvc.wire.protogen import ROOT, generate


def test_committed_stubs_are_fresh(tmp_path):
    protos = generate(tmp_path)
    assert protos, "no .proto files found"
    for proto in protos:
        stem = proto[: -len(".proto")]
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            fresh = (tmp_path / (stem + suffix)).read_text()
            committed = (ROOT / (stem + suffix)).read_text()
            assert committed == fresh, f"{stem}{suffix} is stale: run `make proto`"


def test_lookup_wire_bytes_are_an_ordinary_lookup_response():
    import numpy as np
    import pytest

    from memsvc.core.dtypes import storage_dtype
    from memsvc.core.values import LookupResult
    from memsvc.v1 import knowledge_pb2 as pb
    from memsvc.wire.lookup import lookup_from_wire, lookup_to_wire

    for dtype in ("float32", "float16", "bfloat16"):
        rows = np.arange(2 * 3 * 5, dtype=np.float32).reshape(2, 3, 5).astype(storage_dtype(dtype))
        result = LookupResult(rows=rows, unique_ids=np.array([7, 3]), inverse=np.array([0, 1, 0]), version=4, dtype=dtype)
        wire = lookup_to_wire(result).data
        parsed = pb.LookupResponse.FromString(wire)  # any protobuf parser reads it
        assert lookup_to_wire(result).rows_served == 2 * 3
        assert (parsed.rows.dtype, list(parsed.rows.shape), parsed.version) == (dtype, [2, 3, 5], 4)
        assert parsed.rows.data == rows.tobytes() and list(parsed.unique_token_ids) == [7, 3] and list(parsed.inverse) == [0, 1, 0]
        back = lookup_from_wire(wire)
        np.testing.assert_array_equal(back.rows, rows)
        assert back.unique_ids.tolist() == [7, 3] and back.inverse.tolist() == [0, 1, 0] and back.version == 4
        np.testing.assert_array_equal(lookup_from_wire(parsed.SerializeToString()).rows, rows)  # and it reads protobuf's own bytes
    with pytest.raises(ValueError):
        lookup_from_wire(b"\x0f\x00")
