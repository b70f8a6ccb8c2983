"""The native ceiling of issue 2's lookup targets: how far a server with no Python in it would get.

bench/native_lookup/lookupd.cc is a C++ gRPC server (Debian's libgrpc++, built here into a temp
dir) that answers LookupStream for one bank file the way `memsvc serve` answers the decode hot
path: rows in request order straight into the client's shared-memory reply buffer. It has no
versions, edits or vocabulary, so it is not a product path: it measures what the same Python
MemoryClient and the gRPC stack cost when the server costs only a memcpy of the rows.

Side by side in one loop (bench/lookup.py's measure): MemoryClient -> `memsvc serve`, the same
MemoryClient -> lookupd, Redis MGET. If lookupd / Redis stays under a target, no server-side
work can reach it from a Python client on this machine.
Run: .venv/bin/python bench/native_lookup.py   (~1 min; apt-get installs libgrpc++-dev,
     protobuf-compiler-grpc and pkg-config when grpc_cpp_plugin is missing)
"""
import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from bench.lookup import (  # noqa: E402
    TABLE,
    BenchConfig,
    checked_measure,
    grpc_gather,
    load_redis,
    make_bank,
    memsvc_server,
    redis_gather,
)
from bench.redis_server import ensure_debian_tool, free_port, redis_server  # noqa: E402
from clients.client import MemoryClient  # noqa: E402

SOURCE = Path(__file__).resolve().parent / "native_lookup" / "lookupd.cc"


def build_lookupd(workdir: Path) -> Path:
    """Compile lookupd with the C++ stubs of proto/memsvc/v1/knowledge.proto into ``workdir``."""
    plugin = ensure_debian_tool("grpc_cpp_plugin", "libgrpc++-dev", "protobuf-compiler-grpc", "pkg-config")
    subprocess.run(["protoc", f"-I{ROOT / 'proto'}", f"--cpp_out={workdir}", f"--grpc_out={workdir}",
                    f"--plugin=protoc-gen-grpc={plugin}", "memsvc/v1/knowledge.proto"], check=True)
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "grpc++", "protobuf"], check=True,
                           capture_output=True, text=True).stdout.split()
    binary = workdir / "lookupd"
    stubs = [str(workdir / "memsvc/v1/knowledge.pb.cc"), str(workdir / "memsvc/v1/knowledge.grpc.pb.cc")]
    subprocess.run(["g++", "-O2", "-std=c++17", f"-I{workdir}", "-o", str(binary), str(SOURCE), *stubs, *flags], check=True)
    return binary


def main(config: BenchConfig):
    rows = make_bank(config)
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-native-") as tmp:
        workdir = Path(tmp)
        binary = build_lookupd(workdir)
        np.save(workdir / "bank.npy", rows)
        port = free_port()
        native = subprocess.Popen([str(binary), str(port), str(workdir / "bank.npy")], stdout=subprocess.PIPE, text=True)
        try:
            if native.stdout.readline().strip() != "serving":
                raise RuntimeError(f"lookupd did not start (exit {native.wait()})")
            with memsvc_server(rows, workdir) as address, MemoryClient(address) as client, redis_server() as r, \
                    MemoryClient(f"127.0.0.1:{port}") as native_client:
                native_client.row_bytes[(TABLE, ())] = rows[0].nbytes  # lookupd answers no DescribeTable
                load_redis(r, rows)
                backends = {"memsvc": grpc_gather(client), "native": grpc_gather(native_client),
                            "redis": redis_gather(r, config.layers, config.dim, dedupe=False)}
                for size in config.batches:
                    results[size], _ = checked_measure(backends, rows, config, size)
        finally:
            native.kill()
    print(f"\n{'batch':>6} | {'memsvc p50':>11} {'native p50':>11} {'Redis p50':>10} | "
          f"{'memsvc/Redis thr':>16} {'native/Redis thr':>16} | {'memsvc/Redis lat':>16} {'native/Redis lat':>16}")
    headline = {}
    for size, res in results.items():
        thr = {n: res[n][0] / res["redis"][0] for n in ("memsvc", "native")}
        lat = {n: res[n][1] / res["redis"][1] for n in ("memsvc", "native")}
        print(f"{size:6d} | {res['memsvc'][1] * 1e3:9.3f}ms {res['native'][1] * 1e3:9.3f}ms {res['redis'][1] * 1e3:8.3f}ms | "
              f"{thr['memsvc']:15.2f}x {thr['native']:15.2f}x | {lat['memsvc']:15.2f}x {lat['native']:15.2f}x")
        headline |= {f"{n}_over_redis_throughput_b{size}": round(thr[n], 3) for n in thr}
        headline |= {f"{n}_over_redis_latency_b{size}": round(lat[n], 3) for n in lat}
    print(json.dumps(headline))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.7, help="timed seconds per backend and batch")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64, 256], help="batch sizes (tokens per call)")
    args = parser.parse_args()
    main(BenchConfig(seconds=args.seconds, batches=tuple(args.batches)))
