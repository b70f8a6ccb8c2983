"""Index builds: write_rows writes the rows a build reads to a vector file, a chunk at a time;
build_and_save builds from it in a child process (build_in_worker), niced, because diskannpy
holds the GIL for a whole build and would stall every other RPC of the server."""
import json
import subprocess
from pathlib import Path

import numpy as np

from memsvc.core.errors import FailedPrecondition
from memsvc.search.children import RUNNING, start_python


def write_rows(src, ids, info, path, step, on_progress) -> np.ndarray:
    """The rows of `ids` in the index's layer at its version into a vector file (indexes.base.
    write_vector_file), `step` tokens at a time, without the zero rows of a cosine index (cosine
    has no direction for them); returns where those are (bool (n,))."""
    from indexes.base import write_vector_file

    zero = np.zeros(len(ids), bool)

    def parts():
        for start in range(0, len(ids), step):
            on_progress(start / max(1, len(ids)))
            rows = src.rows(ids[start:start + step], info.version)
            if info.metric == "cosine":
                zero[start:start + len(rows)] = ~rows.any(axis=1)
            yield rows[~zero[start:start + len(rows)]]

    write_vector_file(path, src.dim, parts())
    return zero


def build_and_save(folder) -> dict:
    """Build the index that folder/config.json describes over the vector file folder/rows.bin
    named by folder/ids.npy (learned_pq: training queries folder/train.npy); save it to
    folder/index. The rows stay mapped: the build reads them a chunk at a time."""
    from indexes.ann import IndexConfig, build_index
    from indexes.base import read_vector_file

    folder = Path(folder)
    config = IndexConfig.from_dict(json.loads((folder / "config.json").read_text()))
    train = np.load(folder / "train.npy") if (folder / "train.npy").exists() else None
    index = build_index(config, np.load(folder / "ids.npy"), read_vector_file(folder / "rows.bin"), train_queries=train)
    index.save(folder / "index")
    return index.stats()


def build_in_worker(folder, entry, niceness=0) -> dict:
    """build_and_save in a child process, `niceness` nicer than the server (entry.worker holds
    it, for drop and close to kill): a crash fails the build instead of the server."""
    code = ("import os, sys, json; os.nice(int(sys.argv[2])); from memsvc.search.builds import build_and_save; "
            "print(json.dumps(build_and_save(sys.argv[1])))")
    proc = start_python(code, folder, int(niceness), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    entry.worker = proc
    try:
        out, err = proc.communicate()
    finally:
        RUNNING.discard(proc)
    if proc.returncode != 0:
        lines = err.strip().splitlines() or [f"exit status {proc.returncode}"]
        raise FailedPrecondition(f"build: {lines[-1]}")
    return json.loads(out.strip().splitlines()[-1])
