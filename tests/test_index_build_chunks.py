"""Index builds in bounded memory (issue 17): every kind reads its rows a chunk at a time from a
mapped vector file and trains on a bounded sample, with the results of a build from the whole
array; what a build allocates stays far below the layer; kinds that hold every row refuse large
layers with a clear error."""
import json
import tracemalloc

import numpy as np
import pytest

from indexes.ann import IndexConfig, build_index
from indexes.base import KINDS, read_vector_file, training_sample, write_vector_file
from indexes.exact import exact_knn
from indexes.synthetic import clustered_table
from memsvc.core.errors import ResourceExhausted
from memsvc.search.builds import build_and_save
from memsvc.search.config import SearchConfig
from memsvc.search.manager import IndexManager

N, DIM = 3000, 32
CHUNK = 256 * DIM * 4  # 256 rows: the table is ~12 chunks
TRAIN = 2000 * DIM * 4  # a 2,000-row training sample, drawn from the 3,000 rows
# one thread: faiss and DiskANN then build the same index from the same rows, run to run
BASE = dict(progress=False, num_threads=1, graph_degree=16, complexity=32, train_bytes=TRAIN,
            lpq_coarse_bits=4, pq_m=4, lpq_train_rows=2000, lpq_epochs=2, lpq_candidates=20)
SAME_IDS = ("exact", "pq", "opq", "ivfpq", "learned_pq")  # deterministic: equal hits, chunked or not


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    rows, queries = clustered_table(N, DIM, 50, clusters=50, seed=3)
    path = tmp_path_factory.mktemp("rows") / "rows.bin"
    assert write_vector_file(path, DIM, np.array_split(rows, 7)) == N
    ids = np.arange(N, dtype=np.int64) * 3 + 5
    truth = ids[exact_knn(queries, rows, 10, "l2")[0]]
    return rows, queries, ids, path, truth


def recall(found, truth):
    return np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found.tolist(), truth.tolist())])


def test_vector_file_is_diskann_format_and_maps_back(table):
    rows, _, _, path, _ = table
    assert np.fromfile(path, np.int32, count=2).tolist() == [N, DIM]
    assert path.stat().st_size == 8 + rows.nbytes
    mapped = read_vector_file(path)
    assert isinstance(mapped, np.memmap) and np.array_equal(mapped, rows)


def test_training_sample_is_every_row_below_the_budget_and_a_seeded_choice_above():
    config = IndexConfig(train_bytes=100 * 8 * 4)
    assert np.array_equal(training_sample(80, 8, config), np.arange(80))
    picked = training_sample(1000, 8, config)
    assert len(picked) == 100 and np.all(np.diff(picked) > 0)
    assert np.array_equal(picked, training_sample(1000, 8, config))  # seeded: a chunked build trains alike


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_built_in_chunks_from_a_file_answers_like_a_build_from_the_whole_array(table, kind):
    rows, queries, ids, path, truth = table
    train = {"train_queries": queries} if kind == "learned_pq" else {}
    # learned_pq's fine-tuning holds the rows of its candidate lists and of a 4,096-row sample: here all 3,000
    config = {**BASE, "train_bytes": N * DIM * 4} if kind == "learned_pq" else BASE
    whole = build_index(IndexConfig(kind=kind, build_chunk_bytes=1 << 30, **config), ids, rows, **train)
    chunked = build_index(IndexConfig(kind=kind, build_chunk_bytes=CHUNK, **config), ids, read_vector_file(path),
                          **train)
    assert len(chunked) == len(whole) == N
    got, _ = chunked.search(queries, 10)
    want, _ = whole.search(queries, 10)
    if kind in SAME_IDS:
        assert np.array_equal(got, want)
    else:  # graphs: chunked inserts change the graph, not how good it is
        assert recall(got, truth) >= recall(want, truth) - 0.05
    assert recall(got, truth) >= (1.0 if kind == "exact" else 0.9 if kind not in ("pq", "opq", "ivfpq", "learned_pq")
                                  else 0.2)


def test_learned_pq_fine_tuning_refuses_more_rows_than_train_bytes(table):
    rows, queries, ids, path, _ = table
    with pytest.raises(ResourceExhausted, match=r"config.lpq_epochs: learned_pq's fine-tuning .* 3,000 rows x 32"):
        build_index(IndexConfig(kind="learned_pq", build_chunk_bytes=CHUNK, **BASE), ids, read_vector_file(path),
                    train_queries=queries)


def test_a_build_allocates_a_small_fraction_of_the_layer(tmp_path):
    """The build a worker runs (build_and_save over a mapped rows.bin): numpy allocations peak
    at the training sample and a few chunks, not the 20 MB layer."""
    n, dim = 10_000, 512
    rng = np.random.default_rng(0)
    parts = (rng.standard_normal((1000, dim), dtype=np.float32) for _ in range(n // 1000))
    write_vector_file(tmp_path / "rows.bin", dim, parts)
    np.save(tmp_path / "ids.npy", np.arange(n, dtype=np.int64))
    config = IndexConfig(kind="pq", pq_m=8, progress=False, num_threads=1, build_chunk_bytes=256 << 10,
                         train_bytes=1 << 20)
    (tmp_path / "config.json").write_text(json.dumps(vars(config)))
    layer = n * dim * 4
    tracemalloc.start()
    try:
        stats = build_and_save(tmp_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stats["count"] == n
    print(f"peak numpy allocations {peak / 2**20:.2f} MB, layer {layer / 2**20:.1f} MB")
    assert peak < layer / 4, f"peak {peak / 2**20:.1f} MB of numpy allocations against a {layer / 2**20:.0f} MB layer"


def test_kinds_holding_every_row_refuse_a_large_layer_and_code_kinds_build_it_in_chunks(kb):
    """`kb`: the small bank of tests/conftest.py; the limit set below its layer."""
    t = kb.table("stem")
    layer = len(t.words) * t.dim * 4
    manager = IndexManager(kb, SearchConfig(build_in_worker=False, max_resident_index_bytes=layer // 2, read_chunk=16))
    try:
        for kind in ("exact", "hnsw", "diskann", "diskann_dynamic"):
            with pytest.raises(ResourceExhausted, match=rf"config.kind: {kind} holds every row in memory"):
                manager.create(f"big-{kind}", "stem", 0, {"kind": kind})
        assert manager.list() == []
        info = manager.create("codes", "stem", 0, {"kind": "pq", "pq_m": 4, "pq_nbits": 4,
                                                   "build_chunk_bytes": 8 * t.dim * 4}, wait=True)
        assert info.state == "READY" and info.count == len(t.words)
        hits = manager.search("stem", 0, tokens=["France"], k=3, index="codes")
        assert hits.index == "codes" and hits.ids.shape == (1, 3)
    finally:
        manager.close()
