"""One config and one interface for every ANN index kind.

Contract (faiss-style, shared by all kinds):

    index.search(queries (n, d) float32, k, *, params=None) -> (ids (n, k) int64, dist (n, k) float32)

Rows are padded with id -1 and distance +inf. Distances are "smaller is closer" for every metric:
l2 = squared L2, ip = -q·x, cosine = 1 - cos(q, x).

Ids are the caller's int64 ids. Internally every row gets a *slot* (0, 1, 2, ... in insertion
order) and backends only ever see slots; the base class maps slots back to ids. Kinds that cannot
delete natively hide removed slots with a mask and over-fetch by the number of masked rows, so a
removed id is never returned. Kinds that cannot insert natively (static DiskANN graphs) keep added
rows in a small exact "fresh" buffer that is searched by brute force and merged by distance, as
FreshDiskANN does with its in-memory temp index (Singh et al., 2021).
"""

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from tqdm import tqdm

from indexes.exact import empty_hits, exact_knn, merge_topk, top_k
from memsvc.core.errors import InvalidArgument, NotFound

KINDS = ("exact", "diskann", "diskann_dynamic", "diskann_disk", "hnsw", "ivfpq", "pq", "opq",
         "learned_pq")
METRICS = ("l2", "ip", "cosine")
# kinds that hold every row as float32 in memory, built and served (faiss Flat and HNSW storage,
# DiskANN's in-memory graphs); the others hold codes (pq, opq, ivfpq, learned_pq) or read rows from
# disk (diskann_disk)
RESIDENT_KINDS = ("exact", "hnsw", "diskann", "diskann_dynamic")
FORMAT_VERSION = 1


@dataclass
class IndexConfig:
    kind: str = "exact"
    metric: str = "l2"
    num_threads: int = 0  # 0 = every core
    progress: bool = True  # tqdm bars on long builds
    # DiskANN (Vamana graph; Subramanya et al., NeurIPS 2019)
    graph_degree: int = 64  # R: max out-degree
    complexity: int = 100  # L at build: candidate list size
    alpha: float = 1.2  # RNG pruning slack; >1 keeps long edges
    saturate_graph: bool = True  # dynamic only: without it graphs come out ~4x sparser
    search_complexity: int = 64  # default L at search (param "complexity")
    max_vectors: int = 0  # dynamic capacity; 0 = twice the build size (at least 1024)
    beam_width: int = 4  # disk only: parallel SSD reads per hop (param "beam_width")
    num_nodes_to_cache: int = 1000  # disk only: graph nodes cached in RAM
    pq_disk_bytes: int = 0  # disk only: 0 keeps full-precision vectors on disk
    search_memory_gb: float = 0.0  # disk only: RAM for the PQ navigation codes; 0 = 32 B/row
    build_memory_gb: float = 4.0  # disk only
    # faiss
    hnsw_m: int = 32
    ef_construction: int = 200
    ef_search: int = 64  # param "ef_search"
    nlist: int = 0  # IVF lists; 0 = 4*sqrt(n)
    nprobe: int = 16  # param "nprobe"
    pq_m: int = 8  # sub-quantisers; bytes per vector = pq_m * pq_nbits / 8
    pq_nbits: int = 8
    opq_iterations: int = 20  # faiss default 50: 2.5x the build time (minutes at 200k on 2 cores)
    opq_train_rows: int = 16384  # OPQ training sample (64 per centroid); faiss default 65536
    use_gpu: bool = True  # use GPU faiss / torch when one is present
    # learned PQ: a coarse cell + residual PQ in pq_m * pq_nbits bits, trained on rows resampled
    # to the query distribution, then fine-tuned with a ListNet ranking loss (indexes/learned_pq.py)
    lpq_coarse_bits: int = 8  # of the code's bits, these name the cell; pq_m residual codes share the rest
    lpq_train_rows: int = 65536  # query-matched training sample (16384: -0.6 points at 200k)
    lpq_neighbours: int = 50  # a row's weight counts the training queries with it in their top-k
    lpq_prior_queries: int = 200  # a uniform prior over rows weighs as much as this many queries
    lpq_epochs: int = 10  # ListNet adds 0.05-0.15 points after the query-matched training
    lpq_lr: float = 2e-4  # 1e-3: +0.1 at 200k; lost 2 points held-out on the one-level code
    lpq_candidates: int = 100  # list length per training query (exact + ADC hard negatives)
    lpq_temperature: float = 1.0  # x the per-query gap d10 - d1; 0.05 and 0.3 measured worse
    lpq_recon_weight: float = 0.1  # keeps codebooks good for encoding rows added later
    seed: int = 0
    # What a build holds at once (issue 17: a STEM-1B layer is 4.2 GB as float32): rows are read,
    # checked and added this many bytes at a time, and trained on a sample of at most train_bytes
    # (every row when they fit; else training_sample's seeded choice, the same for any chunk size).
    build_chunk_bytes: int = 64 << 20
    train_bytes: int = 256 << 20

    def validate(self):
        if self.kind not in KINDS:
            raise InvalidArgument(f"config.kind: {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.metric not in METRICS:
            raise InvalidArgument(f"config.metric: {self.metric!r} is not one of {', '.join(METRICS)}")
        if self.kind == "diskann_disk" and self.metric == "ip":
            raise InvalidArgument("config.metric: diskann_disk supports l2 and cosine, not ip")
        if self.kind == "learned_pq" and (not self.pq_m or self.lpq_coarse_bits % self.pq_m
                                          or not 1 <= self.lpq_residual_bits <= 16):
            raise InvalidArgument(
                f"config.lpq_coarse_bits: {self.lpq_coarse_bits} must be a multiple of pq_m "
                f"({self.pq_m}) that leaves each of the pq_m residual codes 1 to 16 bits of the "
                f"code's pq_m * pq_nbits = {self.pq_m * self.pq_nbits}")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in (int, float) and value < 0:
                raise InvalidArgument(f"config.{f.name}: must be >= 0, got {value}")
        return self

    @property
    def lpq_residual_bits(self) -> int:
        """learned_pq: bits of each residual PQ code once the coarse cell has its share."""
        return self.pq_nbits - self.lpq_coarse_bits // max(self.pq_m, 1)

    @classmethod
    def from_dict(cls, d: dict) -> "IndexConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InvalidArgument(f"config: unknown field(s) {', '.join(unknown)}")
        return cls(**d).validate()


def check_shape(name: str, x, dim: int | None = None) -> np.ndarray:
    """check_vectors without reading the rows (x may be a file mapped in memory): its type, float
    dtype and (n, dim) shape, or InvalidArgument naming `name`."""
    if not isinstance(x, np.ndarray):
        raise InvalidArgument(f"{name}: expected a numpy array, got {type(x).__name__}")
    if x.dtype.kind != "f":
        raise InvalidArgument(f"{name}: expected float32, got {x.dtype}")
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise InvalidArgument(f"{name}: expected a non-empty (n, d) array, got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise InvalidArgument(f"{name}: expected dimension {dim}, got {x.shape[1]}")
    return x


def check_vectors(name: str, x, dim: int | None = None) -> np.ndarray:
    """Return x as a C-contiguous float32 (n, dim) array, or raise InvalidArgument naming `name`."""
    check_shape(name, x, dim)
    if not np.isfinite(x).all():
        raise InvalidArgument(f"{name}: contains NaN or inf")
    return np.ascontiguousarray(x, dtype=np.float32)


def training_sample(n: int, dim: int, config: IndexConfig, rows: int | None = None) -> np.ndarray:
    """Sorted positions of the rows a build trains on: all n when they fit in config.train_bytes
    (and `rows`, when given), else a seeded uniform choice of as many as fit."""
    m = min(n, rows or n, max(1, config.train_bytes // (4 * dim)))
    if m == n:
        return np.arange(n)
    return np.sort(np.random.default_rng(config.seed).choice(n, m, replace=False))


class Rows:
    """The rows a build reads, (n, d) float32 in memory or mapped from a file, `build_chunk_bytes`
    at a time: each piece is checked (finite) and prepared (cosine: unit rows) as it is read, so a
    build holds a chunk and its training sample, never the whole layer (issue 17)."""

    def __init__(self, vectors: np.ndarray, index: "Index"):
        self.vectors, self.index = check_shape("vectors", vectors, index.dim), index
        self.step = max(1, index.config.build_chunk_bytes // (4 * index.dim))

    def __len__(self):
        return len(self.vectors)

    def _checked(self, x: np.ndarray, positions) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not np.isfinite(x).all():
            raise InvalidArgument("vectors: contains NaN or inf")
        return self.index._prepare("vectors", x, positions)

    def chunks(self, desc: str):
        """(slice, its prepared rows) over every row in order, with a tqdm bar."""
        for part in chunks(len(self), self.step, desc, self.index.config.progress):
            yield part, self._checked(self.vectors[part], range(part.start, part.stop))

    def take(self, positions: np.ndarray) -> np.ndarray:
        """The prepared rows at sorted `positions`, read a chunk at a time."""
        out = np.empty((len(positions), self.index.dim), np.float32)
        for start in range(0, len(positions), self.step):
            part = positions[start:start + self.step]
            out[start:start + len(part)] = self._checked(self.vectors[part], part)  # a mapped file: these rows only
        return out

    def sample(self, rows: int | None = None) -> np.ndarray:
        """The training sample (training_sample), prepared."""
        return self.take(training_sample(len(self), self.index.dim, self.index.config, rows))

    def knn(self, queries: np.ndarray, k: int, space: str):
        """Exact top-k over every row, a chunk at a time: (positions (n, k'), distances (n, k')),
        k' = min(k, len(self)); `queries` prepared like the rows."""
        k, best = min(k, len(self)), empty_hits(len(queries))
        for part, x in self.chunks("exact top-k"):
            pos, dist = exact_knn(queries, x, k, space)
            best = merge_topk(*best, pos + part.start, dist, k)
        return best

    def std(self) -> float:
        """The standard deviation of every value, over chunks (float64 sums)."""
        total = squares = 0.0
        for _, x in self.chunks("std"):
            total += float(x.sum(dtype=np.float64))
            squares += float(np.square(x, dtype=np.float64).sum())
        count = len(self) * self.index.dim
        return float(np.sqrt(max(0.0, squares / count - (total / count) ** 2)))


def write_vector_file(path, dim: int, parts) -> int:
    """DiskANN's binary vector file (int32 count, int32 dim, then the float32 rows), written a part
    at a time from the (m, dim) arrays `parts`; the count goes in last. Returns it."""
    count = 0
    with open(path, "wb") as f:
        f.write(np.array([0, dim], np.int32).tobytes())
        for x in parts:
            f.write(np.ascontiguousarray(x, dtype=np.float32).tobytes())
            count += len(x)
        f.seek(0)
        f.write(np.array([count, dim], np.int32).tobytes())
    return count


def read_vector_file(path) -> np.ndarray:
    """The rows of a write_vector_file file, mapped read-only: (count, dim) float32."""
    count, dim = np.fromfile(path, np.int32, count=2)
    if count == 0:  # nothing to map (mmap refuses an empty range)
        return np.empty((0, int(dim)), np.float32)
    return np.memmap(path, np.float32, mode="r", offset=8, shape=(int(count), int(dim)))


def check_ids(name: str, ids, n: int | None = None) -> np.ndarray:
    """Return ids as a unique int64 (n,) array without -1, or raise InvalidArgument."""
    if not isinstance(ids, np.ndarray) or ids.dtype.kind not in "iu":
        raise InvalidArgument(f"{name}: expected an integer numpy array")
    if ids.ndim != 1 or len(ids) == 0 or (n is not None and len(ids) != n):
        want = f"({n},)" if n is not None else "(n,) with n > 0"
        raise InvalidArgument(f"{name}: expected shape {want}, got {ids.shape}")
    ids = ids.astype(np.int64)
    if (ids == -1).any():
        raise InvalidArgument(f"{name}: -1 is reserved for padding")
    if len(np.unique(ids)) != len(ids):
        raise InvalidArgument(f"{name}: contains duplicates")
    return ids


def chunks(n: int, size: int, desc: str, progress: bool):
    """Slices covering range(n) in steps of `size`, with a tqdm bar over rows."""
    with tqdm(total=n, desc=desc, unit="row", disable=not progress or n <= size) as bar:
        for start in range(0, n, size):
            yield slice(start, min(n, start + size))
            bar.update(min(n, start + size) - start)


class Index:
    """Base class. Subclasses implement _build, _add, _search, _save, _load (and _remove)."""

    native_add = True  # False: rows added after the build go to the exact fresh buffer
    native_remove = False  # False: removed rows are masked at search time
    search_params: tuple[str, ...] = ()  # per-query knobs accepted in search(params=...)

    def __init__(self, config: IndexConfig, dim: int):
        self.config, self.dim = config, dim
        # the space the backend searches in after cosine rows are normalised: "l2" or "ip"
        self.space = "l2" if config.metric == "l2" else "ip"
        self._ids = np.empty(0, np.int64)  # slot -> caller id
        self._live = np.empty(0, bool)  # slot -> not removed
        self._slot_of: dict[int, int] = {}  # live caller id -> slot
        self._n_main = 0  # slots held by the backend; later slots live in the fresh buffer
        self._dead_main = 0  # masked slots the backend still returns
        self._fresh_slots = np.empty(0, np.int64)
        self._fresh = np.empty((0, dim), np.float32)

    # ---- subclass hooks -------------------------------------------------------------------

    def _build(self, rows: "Rows", **train):
        """Build over every row of `rows` (read them a chunk at a time: rows.chunks, rows.sample)."""
        raise NotImplementedError

    def _add(self, slots: np.ndarray, vectors: np.ndarray):
        raise NotImplementedError

    def _remove(self, slots: np.ndarray):
        raise NotImplementedError

    def _search(self, queries: np.ndarray, k: int, params: dict):
        """(slots (n, k) int64 with -1 padding, distances (n, k) in self.space, smaller=closer)"""
        raise NotImplementedError

    def _save(self, path: Path):
        raise NotImplementedError

    def _load(self, path: Path):
        raise NotImplementedError

    def _stats(self) -> dict:
        return {}

    # ---- public API -----------------------------------------------------------------------

    def __len__(self):
        return len(self._slot_of)

    @property
    def threads(self) -> int:
        import os

        return self.config.num_threads or os.cpu_count() or 1

    def build(self, ids, vectors, **train):
        """Build over (n, d) float32 `vectors`, in memory or mapped from a file (read_vector_file):
        read a chunk at a time (config.build_chunk_bytes)."""
        rows = Rows(vectors, self)
        ids = check_ids("ids", ids, len(rows))
        self._build(rows, **train)
        self._register(ids)
        self._n_main = len(ids)
        return self

    def add(self, ids, vectors):
        vectors = check_vectors("vectors", vectors, self.dim)
        ids = check_ids("ids", ids, len(vectors))
        present = [i for i in ids.tolist() if i in self._slot_of]
        if present:
            raise InvalidArgument(f"ids: already in the index: {present[:10]}; remove them first")
        x = self._prepare("vectors", vectors)
        slots = np.arange(len(self._ids), len(self._ids) + len(ids))
        if self.native_add:
            self._add(slots, x)
            self._n_main += len(slots)
        else:
            self._fresh_slots = np.concatenate([self._fresh_slots, slots])
            self._fresh = np.concatenate([self._fresh, x])
        self._register(ids)

    def remove(self, ids):
        ids = check_ids("ids", ids)
        missing = [i for i in ids.tolist() if i not in self._slot_of]
        if missing:
            raise NotFound(f"ids: not in the index: {missing[:10]}")
        slots = np.array([self._slot_of.pop(i) for i in ids.tolist()], np.int64)
        self._live[slots] = False
        main = slots[slots < self._n_main]
        if self.native_remove and len(main):
            self._remove(main)
        else:
            self._dead_main += len(main)
        keep = ~np.isin(self._fresh_slots, slots)
        self._fresh_slots, self._fresh = self._fresh_slots[keep], self._fresh[keep]

    def search(self, queries, k: int, *, params: dict | None = None):
        queries = check_vectors("queries", queries, self.dim)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InvalidArgument(f"k: expected a positive integer, got {k!r}")
        params = self._check_params(params)
        q = self._prepare("queries", queries)
        # over-fetch by the masked rows so that k live ones survive the filter
        k_main = min(int(k) + self._dead_main, self._n_main)
        slots, dist = (self._search(q, k_main, params) if k_main else
                       (np.empty((len(q), 0), np.int64), np.empty((len(q), 0), np.float32)))
        if len(self._fresh_slots):
            pos, fresh_dist = exact_knn(q, self._fresh, int(k), self.space)
            slots = np.concatenate([slots, self._fresh_slots[pos]], axis=1)
            dist = np.concatenate([dist, fresh_dist], axis=1)
        return self._finish(slots, dist, int(k))

    def save(self, path):
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT_VERSION, "dim": self.dim, "config": asdict(self.config),
                "n_main": self._n_main, "dead_main": self._dead_main}
        (path / "config.json").write_text(json.dumps(meta, indent=1))
        np.savez(path / "slots.npz", ids=self._ids, live=self._live,
                 fresh_slots=self._fresh_slots, fresh=self._fresh)
        self._save(path)

    @classmethod
    def load(cls, path: Path, meta: dict) -> "Index":
        index = cls(IndexConfig.from_dict(meta["config"]), meta["dim"])
        with np.load(path / "slots.npz") as saved:
            index._ids, index._live = saved["ids"], saved["live"]
            index._fresh_slots, index._fresh = saved["fresh_slots"], saved["fresh"]
        live = np.flatnonzero(index._live)
        index._slot_of = dict(zip(index._ids[live].tolist(), live.tolist()))
        index._n_main, index._dead_main = meta["n_main"], meta["dead_main"]
        index._load(path)
        return index

    def stats(self) -> dict:
        return {"kind": self.config.kind, "metric": self.config.metric, "dim": self.dim,
                "count": len(self), "masked_deleted": self._dead_main,
                "fresh": len(self._fresh_slots), **self._stats()}

    # ---- helpers --------------------------------------------------------------------------

    def _register(self, ids: np.ndarray) -> np.ndarray:
        slots = np.arange(len(self._ids), len(self._ids) + len(ids))
        self._ids = np.concatenate([self._ids, ids])
        self._live = np.concatenate([self._live, np.ones(len(ids), bool)])
        self._slot_of.update(zip(ids.tolist(), slots.tolist()))
        return slots

    def _prepare(self, name: str, x: np.ndarray, positions=None) -> np.ndarray:
        """Cosine works on unit vectors: normalise here, once, for every backend (`positions`:
        the row number of each row of x, for the message; default 0, 1, ...)."""
        if self.config.metric != "cosine":
            return x
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        if (norms == 0).any():
            row = int(np.argmin(norms))
            row = row if positions is None else int(positions[row])
            raise InvalidArgument(f"{name}: row {row} is zero; cosine needs non-zero vectors")
        return np.ascontiguousarray(x / norms, dtype=np.float32)

    def _check_params(self, params: dict | None) -> dict:
        params = dict(params or {})
        for key, value in params.items():
            if key not in self.search_params:
                allowed = ", ".join(self.search_params) or "none"
                raise InvalidArgument(f"params: unknown key {key!r} for {self.config.kind} "
                                      f"(accepted: {allowed})")
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise InvalidArgument(f"params.{key}: expected a positive integer, got {value!r}")
        return params

    def _finish(self, slots: np.ndarray, dist: np.ndarray, k: int):
        """Drop masked and padded slots, keep the k closest, map slots to ids, pad, convert. A
        backend's hits come sorted, padding last: with nothing masked or appended they stay so."""
        valid = slots >= 0
        if self._dead_main:  # else every slot a backend or the fresh buffer returns is live
            valid[valid] = self._live[slots[valid]]
        if valid.all():  # the usual case: two array operations instead of five
            dist, ids = dist.astype(np.float32, copy=False), self._ids[slots]
        else:
            dist = np.where(valid, dist, np.inf).astype(np.float32)
            ids = np.where(valid, self._ids[np.maximum(slots, 0)], -1)
        if self._dead_main or slots.shape[1] != k:  # masked rows amid the hits, or fresh hits beside them
            ids, dist = top_k(ids, dist, k)
        return ids.astype(np.int64, copy=False), self._to_metric(dist)

    def _to_metric(self, dist: np.ndarray) -> np.ndarray:
        """Backend distances -> the configured metric (cosine rows are unit vectors)."""
        if self.config.metric != "cosine":
            return dist
        # ip space: dist = -cos, so 1 - cos = 1 + dist; l2 space: |a-b|^2 = 2 - 2cos
        return (1 + dist if self.space == "ip" else dist / 2).astype(np.float32)
