"""Index builds: build_and_save runs in a child process (build_in_worker), niced, because
diskannpy holds the GIL for a whole build and would stall every other RPC of the server."""
import json
import subprocess
from pathlib import Path

import numpy as np

from memsvc.core.errors import FailedPrecondition
from memsvc.search.children import RUNNING, start_python


def build_and_save(folder) -> dict:
    """Build the index that folder/config.json describes over folder/rows.npy named by
    folder/ids.npy (learned_pq: training queries folder/train.npy); save it to folder/index."""
    from indexes.ann import IndexConfig, build_index

    folder = Path(folder)
    config = IndexConfig.from_dict(json.loads((folder / "config.json").read_text()))
    train = np.load(folder / "train.npy") if (folder / "train.npy").exists() else None
    index = build_index(config, np.load(folder / "ids.npy"), np.load(folder / "rows.npy"), train_queries=train)
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
