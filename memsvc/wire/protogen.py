"""Generate the Python gRPC stubs in memsvc/v1/ from proto/ (run by `make proto`).

The stubs are committed so that an installed memsvc needs no protoc; tests/test_proto.py
regenerates them into a temporary folder and fails when the committed ones are stale.
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "proto"


def generate(out_dir: Path) -> list:
    """Write *_pb2.py, *_pb2.pyi and *_pb2_grpc.py for every .proto under proto/ into out_dir."""
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    include = str(Path(grpc_tools.__file__).parent / "_proto")
    args = ["protoc", f"-I{PROTO_DIR}", f"-I{include}", f"--python_out={out_dir}",
            f"--pyi_out={out_dir}", f"--grpc_python_out={out_dir}", *protos]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return protos


if __name__ == "__main__":
    print("generated from", ", ".join(generate(ROOT)), file=sys.stderr)
