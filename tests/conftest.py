"""Shared fixtures: a small real bank, a temp-path knowledge base, a real server process."""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from memsvc.store import KnowledgeBase, StoreConfig

ROOT = Path(__file__).resolve().parent.parent
WORDS = ["Spain", "Germany", "France", "Madrid", "Berlin", "Paris"] + [f"w{i}" for i in range(58)]


def small_bank(seed=0, vocab=len(WORDS), layers=3, dim=8):
    return np.random.default_rng(seed).standard_normal((vocab, layers, dim)).astype(np.float32)


@pytest.fixture
def kb(tmp_path):
    """A KB with one float32 table 'stem' (64 tokens x 3 layers x 8) at version 1."""
    store = KnowledgeBase(StoreConfig(data_dir=tmp_path / "kb", create=True))
    store.import_table("stem", small_bank(), WORDS, dtype="float32", message="import")
    yield store
    store.close()


def start_server(data_dir, *extra_args, env=None):
    """`memsvc serve` as a real process on a free loopback port; returns (process, address)."""
    cmd = [sys.executable, "-m", "memsvc", "serve", "--data", str(data_dir), "--port", "0", "--no-seed", *extra_args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            env={**os.environ, **(env or {})})
    for line in proc.stdout:
        m = re.search(r"on ([\d.]+):(\d+) ", line)
        if m:
            return proc, f"{m.group(1)}:{m.group(2)}"
    raise RuntimeError(f"server did not start (exit {proc.wait()})")


def stop_server(proc):
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def server(tmp_path):
    """A real server process over a KB like `kb`'s; yields (address, data_dir)."""
    data = tmp_path / "served"
    with KnowledgeBase(StoreConfig(data_dir=data, create=True)) as store:
        store.import_table("stem", small_bank(), WORDS, dtype="float16", message="import")
    proc, address = start_server(data)
    yield address, data
    stop_server(proc)
