"""Shared fixtures: a small real bank, a temp-path knowledge base, a server in this process
(create_server: milliseconds to start) and a real `memsvc serve` process for the tests that need
one (signals, crashes, shutdown, TLS, serve's own options)."""
import os
from contextlib import contextmanager
from pathlib import Path

# Before torch/faiss start OpenMP: idle OpenMP threads sleep instead of spinning, which on 2 shared
# cores (tests, the servers they start, index builds) otherwise costs several times the work.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest
import torch

from memsvc.server.main import ServerConfig, create_server
from memsvc.server.spawn import spawn_server, stop_server
from memsvc.store import KnowledgeBase, StoreConfig

ROOT = Path(__file__).resolve().parent.parent
# test_cli, test_cli_edits, test_search and test_backbone_memory still import these names from here
start_server = spawn_server
torch.set_num_threads(1)  # test processes share 2 cores with the servers they start
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


def served_kb(data_dir):
    """A KB like `kb`'s, stored as float16 as a served bank usually is; returns data_dir."""
    with KnowledgeBase(StoreConfig(data_dir=data_dir, create=True)) as store:
        store.import_table("stem", small_bank(), WORDS, dtype="float16", message="import")
    return data_dir


@contextmanager
def serving(data_dir, metrics=None, state=None, **config):
    """create_server over the KB in data_dir on a free loopback port, in this process (ServerConfig
    fields as keywords; metrics and serving state as serve() passes them); yields its address. At
    exit the server stops and its index manager and the KB close."""
    kb = KnowledgeBase(StoreConfig(data_dir=data_dir))
    try:
        server, port, _, indexes = create_server(kb, ServerConfig(data_dir=data_dir, port=0, **config), metrics, state)
        try:
            yield f"127.0.0.1:{port}"
        finally:
            server.stop(None).wait()
            indexes.close()
    finally:
        kb.close()


@pytest.fixture
def server(tmp_path):
    """A fresh in-process server over `served_kb`; yields (address, data_dir)."""
    data = served_kb(tmp_path / "served")
    with serving(data) as address:
        yield address, data


@pytest.fixture
def server_process(tmp_path):
    """A real `memsvc serve` process over `served_kb`; yields (process, address, data_dir)."""
    data = served_kb(tmp_path / "served")
    proc, address = spawn_server(data)
    yield proc, address, data
    stop_server(proc)
