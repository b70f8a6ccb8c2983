"""What CreateIndex accepts: each IndexConfig field of the type it declares and within the bound
SearchConfig.index_limits sets (issue 19: `graph_degree=abc` answered INTERNAL, `hnsw_m=1e6` or
`nlist=1e8` grew the build worker to several GB)."""
import math
from dataclasses import fields

from memsvc.core.errors import InvalidArgument, ResourceExhausted

# The largest value each numeric IndexConfig field may take in a server. Each is far above what
# a useful index needs (the defaults: graph_degree 64, hnsw_m 32, nlist 4*sqrt(n), pq_m 8...) and
# well below what exhausts memory or time: builds allocate per row x graph_degree / hnsw_m x 2,
# nlist centroids x dim, 2^pq_nbits x dim per sub-quantiser.
INDEX_LIMITS = {
    "num_threads": 1024, "graph_degree": 512, "complexity": 4096, "alpha": 10.0, "search_complexity": 65536,
    "max_vectors": 1 << 31, "beam_width": 128, "num_nodes_to_cache": 1 << 24, "pq_disk_bytes": 4096,
    "search_memory_gb": 1024.0, "build_memory_gb": 1024.0, "hnsw_m": 256, "ef_construction": 4096,
    "ef_search": 65536, "nlist": 1 << 20, "nprobe": 1 << 20, "pq_m": 512, "pq_nbits": 16,
    "opq_iterations": 1000, "opq_train_rows": 1 << 22, "lpq_coarse_bits": 32, "lpq_train_rows": 1 << 22,
    "lpq_neighbours": 1024, "lpq_prior_queries": 1 << 20, "lpq_epochs": 1000, "lpq_lr": 1.0,
    "lpq_candidates": 4096, "lpq_temperature": 100.0, "lpq_recon_weight": 100.0, "seed": (1 << 32) - 1,
    "build_chunk_bytes": 1 << 30, "train_bytes": 1 << 30,
}
TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def checked_index_config(config, limits: dict):
    """``config`` (a dict of IndexConfig fields, as JSON gives it) as an IndexConfig: a key of the
    wrong type (``"abc"``, null, a list, an object) is InvalidArgument naming it, a number above
    ``limits`` ResourceExhausted naming it and its limit."""
    from indexes.base import IndexConfig

    if not isinstance(config, dict):
        raise InvalidArgument(f"config: expected an object of IndexConfig fields, got {type(config).__name__}")
    types = {f.name: f.type for f in fields(IndexConfig)}
    unknown = sorted(set(config) - set(types))
    if unknown:
        raise InvalidArgument(f"config: unknown field(s) {', '.join(map(str, unknown))}; known: {', '.join(types)}")
    for key, value in config.items():
        want = types[key]
        ok = isinstance(value, want) and (want is bool or not isinstance(value, bool))
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if want is int and isinstance(value, float) and value.is_integer():  # JSON 1e6
            ok, value = True, int(value)
        if not ok or (want is float and not math.isfinite(value)):
            raise InvalidArgument(f"config.{key}: expected {TYPE_NAMES[want]}, got {value!r}")
        if key in limits and value > limits[key]:
            raise ResourceExhausted(f"config.{key}: {value} exceeds the limit of {limits[key]}")
        config = {**config, key: value}
    return IndexConfig(**config).validate()


def check_resident(kind, n, dim, limit):
    """ResourceExhausted naming config.kind when an index of a kind that holds every row in memory
    (indexes.base.RESIDENT_KINDS) over n rows of dim float32 would exceed `limit` bytes."""
    from indexes.base import RESIDENT_KINDS

    if kind in RESIDENT_KINDS and n * dim * 4 > limit:
        raise ResourceExhausted(
            f"config.kind: {kind} holds every row in memory as float32, {n:,} rows x {dim} = "
            f"{n * dim * 4 / 2**30:.2f} GB, over the limit of {limit / 2**30:.2f} GB; pq, opq, ivfpq and "
            f"learned_pq hold codes, diskann_disk reads rows from disk")
