"""Peak anonymous memory of an index build over one real-size bank layer (issue 17).

Writes a one-layer bank (default 128,256 x 8,192, float16 in the .npy, imported as bfloat16: the
STEM-1B layer, 2.1 GB stored, 4.2 GB as the float32 a build reads) a chunk at a time, imports it,
then builds one index of it (`--kind`, default pq, the fastest kind to build) through an
IndexManager in this process, with the build in its worker process as the server runs it. The
RssAnon of this process (the manager reading the layer) and of the build worker are sampled
every 0.1 s; the baseline beside them is the layer's float32 size, what a build that reads the
layer whole holds at least. A recall@10 of the index over 64 rows of the layer as queries, against
an exact search, shows that the index is sound.

Run: .venv/bin/python bench/index_build.py [--scale 0.02] [--work /var/tmp/ib]   (full size: ~5 GB free)
The last line is a JSON object of the figures.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from bench.decode import write_bank  # noqa: E402
from memsvc.core.search import READY  # noqa: E402
from memsvc.search.children import RUNNING  # noqa: E402
from memsvc.search.manager import IndexManager  # noqa: E402
from memsvc.store import KnowledgeBase, StoreConfig  # noqa: E402

GIB = 1 << 30


def anon_bytes(pid) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


class Peaks:
    """Peak RssAnon of this process and of the build workers it starts, sampled every 0.1 s."""

    def __init__(self):
        self.manager = self.worker = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self):
        while not self.done.wait(0.1):
            self.manager = max(self.manager, anon_bytes(os.getpid()))
            for proc in list(RUNNING):
                self.worker = max(self.worker, anon_bytes(proc.pid))

    def stop(self):
        self.done.set()
        self.thread.join(timeout=5)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the 128,256-token vocabulary")
    parser.add_argument("--d-ff", type=int, default=8192)
    parser.add_argument("--kind", default="pq")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one under /tmp, removed)")
    args = parser.parse_args()
    vocab = int(round(128_256 * args.scale))
    work = Path(args.work or tempfile.mkdtemp(prefix="memsvc-index-build-", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        source = write_bank(work / "bank.npy", vocab, 1, args.d_ff, "float16")
        (work / "words.txt").write_text("\n".join(f"t{i}" for i in range(vocab)))
        subprocess.run([sys.executable, "-m", "memsvc", "import", str(work / "bank.npy"),
                        "--vocab", str(work / "words.txt"), "--table", "stem", "--dtype", "bfloat16",
                        "--data", str(work / "kb")], check=True, timeout=3600)
        layer_bytes = vocab * args.d_ff * 4
        with KnowledgeBase(StoreConfig(data_dir=work / "kb")) as kb:
            manager = IndexManager(kb)
            try:
                peaks, start = Peaks(), time.perf_counter()
                info = manager.create("layer0", "stem", 0, {"kind": args.kind}, wait=True)
                seconds = time.perf_counter() - start
                peaks.stop()
                if info.state != READY:
                    raise SystemExit(f"build failed: {info.error}")
                queries = np.random.default_rng(1).choice(vocab, 64, replace=False)
                got = manager.search("stem", 0, tokens=queries.tolist(), k=10, index="layer0").ids
                exact = manager.search("stem", 0, tokens=queries.tolist(), k=10, exact=True).ids
            finally:
                manager.close()
        recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got.tolist(), exact.tolist())]))
        del source
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    out = {"vocab": vocab, "d_ff": args.d_ff, "kind": args.kind, "build_s": round(seconds, 1),
           "layer_float32_gb": round(layer_bytes / GIB, 3), "manager_peak_anon_gb": round(peaks.manager / GIB, 3),
           "worker_peak_anon_gb": round(peaks.worker / GIB, 3),
           "worker_over_layer": round(peaks.worker / layer_bytes, 3), "recall10": round(recall, 3)}
    print(f"{args.kind} build over {vocab:,} x {args.d_ff}: {seconds:.1f} s; peak anon: manager "
          f"{peaks.manager / GIB:.3f} GB, worker {peaks.worker / GIB:.3f} GB (the layer as float32: "
          f"{layer_bytes / GIB:.3f} GB); recall@10 {recall:.3f}", flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
