"""Shared fixtures: a small real bank, a temp-path knowledge base, a server in this process
(create_server: milliseconds to start) and a real `memsvc serve` process for the tests that need
one (signals, crashes, shutdown, TLS, serve's own options); a micro demo backbone trained once per
session and a KB over its bank."""
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



@pytest.fixture
def client(server):
    """A MemoryClient of `server`."""
    from clients.client import MemoryClient

    address, _ = server
    with MemoryClient(address) as c:
        yield c


# ---------------------------------------------------------------- a micro demo backbone (edit tests)

import shutil  # noqa: E402

from clients.backbone.model import ModelConfig  # noqa: E402
from memsvc.cli.demo import MODEL_DIR, import_checkpoint  # noqa: E402
from research.corpus import CorpusConfig  # noqa: E402
from research.train import TrainConfig, train_demo  # noqa: E402

MICRO_CORPUS = CorpusConfig(n_entities=8, n_languages=3, n_currencies=3, n_continents=2)


@pytest.fixture(scope="session")
def micro_model(tmp_path_factory):
    """A micro demo backbone trained once per test session (seconds on one core)."""
    out = tmp_path_factory.mktemp("micro") / "model"
    config = TrainConfig(corpus=MICRO_CORPUS, steps=400, lr=1e-2, batch_size=32, swap_pairs=2, num_threads=1)
    metrics = train_demo(ModelConfig(d_model=32, d_ff=64, n_layer=2, n_head=2, max_seq_len=16), config, out, progress=False)
    assert metrics["fact_accuracy"] >= 0.9, metrics
    return out


@pytest.fixture
def micro_kb(micro_model, tmp_path):
    """A KB over the micro model's bank (table 'stem'), its checkpoint under models/demo."""
    data = tmp_path / "kb"
    shutil.copytree(micro_model, data / MODEL_DIR)
    with KnowledgeBase(StoreConfig(data_dir=data, create=True)) as kb:
        import_checkpoint(kb, data / MODEL_DIR)
    return data
