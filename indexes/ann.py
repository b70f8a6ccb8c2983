"""Entry points: build_index and load_index over every kind (see indexes/base.py for the contract).

    from indexes.ann import IndexConfig, build_index, load_index
    index = build_index(IndexConfig(kind="diskann", metric="cosine"), ids, vectors)
    ids, dist = index.search(queries, 10, params={"complexity": 128})
    index.save("kb/indexes/tokens"); index = load_index("kb/indexes/tokens")
"""

import json
from pathlib import Path

from indexes.base import FORMAT_VERSION, Index, IndexConfig, check_shape, check_vectors
from indexes.diskann_index import DiskannDisk, DiskannDynamic, DiskannMemory
from indexes.faiss_index import ExactIndex, FaissIndex
from indexes.learned_pq import LearnedPQIndex
from memsvc.core.errors import FailedPrecondition, InvalidArgument, NotFound

__all__ = ["IndexConfig", "Index", "build_index", "load_index"]

CLASS_OF_KIND = {"exact": ExactIndex, "diskann": DiskannMemory, "diskann_dynamic": DiskannDynamic,
                 "diskann_disk": DiskannDisk, "hnsw": FaissIndex, "ivfpq": FaissIndex,
                 "pq": FaissIndex, "opq": FaissIndex, "learned_pq": LearnedPQIndex}


def build_index(config: IndexConfig, ids, vectors, *, train_queries=None) -> Index:
    """Build an index of `config.kind` over rows `vectors` (n, d) float32 named by `ids` (n,) int64,
    in memory or mapped from a file (indexes.base.read_vector_file): read a chunk at a time.

    learned_pq needs `train_queries` (m, d): a sample of the queries it will serve.
    """
    config = config.validate()
    vectors = check_shape("vectors", vectors)
    train = {}
    if config.kind == "learned_pq":
        if train_queries is None:
            raise InvalidArgument("train_queries: learned_pq needs a sample of training queries")
        train["train_queries"] = check_vectors("train_queries", train_queries, vectors.shape[1])
    elif train_queries is not None:
        raise InvalidArgument(f"train_queries: only learned_pq uses them, not {config.kind}")
    return CLASS_OF_KIND[config.kind](config, vectors.shape[1]).build(ids, vectors, **train)


def load_index(path) -> Index:
    """Open an index written by index.save(path)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise NotFound(f"path: no index at {path} (config.json missing)")
    meta = json.loads((path / "config.json").read_text())
    if meta.get("format") != FORMAT_VERSION:
        raise FailedPrecondition(f"path: index format {meta.get('format')} at {path}, "
                                 f"this code reads {FORMAT_VERSION}; rebuild the index")
    try:
        config = IndexConfig.from_dict(meta["config"])
    except InvalidArgument as e:  # e.g. a learned_pq index of the one-level code (lpq_init, lpq_floor)
        raise FailedPrecondition(f"path: the index at {path} was written with settings this code "
                                 f"does not read ({e}); drop and create it again") from None
    return CLASS_OF_KIND[config.kind].load(path, meta)
