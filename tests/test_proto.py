"""The committed gRPC stubs are exactly what proto/ generates (run `make proto` when this fails)."""
from memsvc.protogen import ROOT, generate


def test_committed_stubs_are_fresh(tmp_path):
    protos = generate(tmp_path)
    assert protos, "no .proto files found"
    for proto in protos:
        stem = proto[: -len(".proto")]
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            fresh = (tmp_path / (stem + suffix)).read_text()
            committed = (ROOT / (stem + suffix)).read_text()
            assert committed == fresh, f"{stem}{suffix} is stale: run `make proto`"
