"""ANN search over knowledge tables that is never stale after edits.

An index covers one (table, layer) as it read at one version iv (rows are tokens, ids are token
ids). Let D(a, b) be the tokens whose row in that layer reads differently at versions a and b
(edited, injected or removed in between, in either direction). A search at version v returns the
k best of

    index hits whose id is not in D(iv, v)        approximate, from the index
    rows of D(iv, v) that exist at v, as at v     exact, brute force, same distance convention

merged by distance. So an edited row is found where it is now and never where it was, and a
search at an old version gives that version's answer. When D grows past `refresh_rows` it is
folded into the index in the background (remove + add: native for dynamic DiskANN and faiss,
an exact fresh buffer for static graphs) and iv moves to the head.

Distances are "smaller is closer" (indexes/base.py): l2 = squared L2, ip = -q.x,
cosine = 1 - cos(q, x); a zero row has cosine distance 1 and is kept out of cosine indexes.

Layout in the data directory::

    indexes/<name>/meta.json       the catalog entry (written atomically)
    indexes/<name>/v<iv>/          the saved index (Index.save)
    indexes/querylog/<table>@<layer>.npz   the query sample learned PQ trains on

The KB tag ``index:<name>`` pins iv so gc keeps it readable (D(iv, v) needs rows at iv).
Builds run in a spawned worker process: diskannpy holds the GIL for a whole call, which would
stall every other RPC of the server for the length of a build.

    >>> manager = IndexManager(kb)
    >>> manager.create("tokens", "stem", layer=0, config={"kind": "hnsw", "metric": "cosine"}, wait=True)
    >>> manager.search("stem", layer=0, tokens=["France"], k=5).tokens[0]
    ['France', 'Paris', ...]
"""
import atexit
import bisect
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from memsvc.dtypes import to_float32
from memsvc.errors import (Conflict, FailedPrecondition, InvalidArgument, NotFound,
                           ResourceExhausted)
from memsvc.types import split_tokens

LOG = logging.getLogger("memsvc.search")
BUILDING, READY, FAILED = "BUILDING", "READY", "FAILED"


@dataclass
class SearchConfig:
    max_k: int = 1024  # larger k gets RESOURCE_EXHAUSTED naming `k`
    max_queries: int = 16384  # query vectors or tokens per request
    query_log_size: int = 4096  # queries sampled per (table, layer) (reservoir)
    min_log_queries: int = 256  # learned_pq trains on the log once it holds this many, else on rows
    refresh_rows: int = 2048  # fold the delta into the index in the background past this many rows
    build_in_worker: bool = True  # build in a spawned process (diskannpy holds the GIL)
    read_chunk: int = 4096  # tokens per chunk when reading a layer


@dataclass
class IndexInfo:
    name: str
    table: str
    layer: int
    kind: str
    metric: str
    state: str = BUILDING  # BUILDING, READY or FAILED
    stage: str = "queued"  # what a build is doing now
    progress: float = 0.0  # of the build, 0..1
    version: int = 0  # the version whose rows the index holds (iv)
    error: str = ""
    count: int = 0  # rows in the index
    lag_commits: int = 0  # commits to the table after iv (computed on describe)
    lag_rows: int = 0  # rows read differently at the head than at iv: searched exactly
    created: float = 0.0
    train_queries_from: str = ""  # learned_pq: "query log (n)" or "rows (n)"
    config: dict = field(default_factory=dict)  # the IndexConfig


@dataclass
class SearchResult:
    ids: np.ndarray  # (n, k) int64 token ids, -1 padding
    distances: np.ndarray  # (n, k) float32, +inf padding; smaller is closer
    tokens: list  # n lists of k words ('' for padding)
    version: int  # the version read
    index: str  # the index used; '' = exact search over the whole layer
    index_version: int  # iv of that index
    lag_rows: int  # rows searched exactly because they changed since iv
    metric: str


def wait_for_build(describe, name, poll_seconds=0.2, on_progress=None) -> IndexInfo:
    """Poll ``describe(name)`` until the build ends: the READY info, or FailedPrecondition
    with the build's error. ``on_progress(info)`` sees every poll (a progress bar)."""
    while True:
        info = describe(name)
        if on_progress is not None:
            on_progress(info)
        if info.state == READY:
            return info
        if info.state != BUILDING:
            raise FailedPrecondition(f"index: build of {name!r} failed: {info.error}")
        time.sleep(poll_seconds)


# ---------------------------------------------------------------- exact search and merging

def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; zero rows stay zero (cosine distance 1 to everything)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def exact_search(queries, ids, rows, k, metric):
    """Brute-force top-k of `rows` named by `ids`: (ids (n, k'), distances (n, k')), k' = min(k, len(rows))."""
    from indexes.base import exact_knn  # faiss: imported on first use, not at server start

    if metric == "cosine":
        queries, rows = unit_rows(queries), unit_rows(rows)
    pos, dist = exact_knn(np.ascontiguousarray(queries), np.ascontiguousarray(rows, dtype=np.float32), k,
                          "l2" if metric == "l2" else "ip")
    return ids[pos], (1 + dist if metric == "cosine" else dist).astype(np.float32)


def merge_topk(ids_a, dist_a, ids_b, dist_b, k):
    """The k closest of two (n, *) candidate lists, padded with -1 / +inf (stable on ties)."""
    ids, dist = np.concatenate([ids_a, ids_b], axis=1), np.concatenate([dist_a, dist_b], axis=1)
    dist = np.where(ids >= 0, dist, np.inf)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    ids, dist = np.take_along_axis(ids, order, 1), np.take_along_axis(dist, order, 1)
    pad = k - ids.shape[1]
    return (np.pad(ids, ((0, 0), (0, pad)), constant_values=-1).astype(np.int64),
            np.pad(dist, ((0, 0), (0, pad)), constant_values=np.inf).astype(np.float32))


def empty_hits(n):
    return np.empty((n, 0), np.int64), np.empty((n, 0), np.float32)


# ---------------------------------------------------------------- what changed between versions

def alive(t, ids, version):
    return (t.added_in[ids] <= version) & (t.removed_in[ids] > version)


def alive_ids(t, version) -> np.ndarray:
    """Token ids that exist at a version (an inject may be growing the arrays right now)."""
    n = min(len(t.added_in), len(t.removed_in))
    return np.flatnonzero(alive(t, np.arange(n), version))


def layer_rows(t, ids, version, layer, chunk=4096):
    """float32 rows (n, d) of token ids in one layer at a version, read in chunks."""
    out = np.empty((len(ids), t.dim), np.float32)
    for start in range(0, len(ids), chunk):
        part = ids[start:start + chunk]
        out[start:start + len(part)] = to_float32(t.gather(part, version)[:, layer], t.dtype)
    return out


def commits_since(t, version) -> int:
    """How many commits after `version` changed the table's rows or vocabulary."""
    commits = {c for cs, _ in list(t.history.values()) for c in cs[bisect.bisect_right(cs, version):]}
    commits |= set(t.added_in[t.added_in > version].tolist()) | set(t.removed_in[(t.removed_in > version) & (t.removed_in < 2**62)].tolist())
    return len(commits)


# ---------------------------------------------------------------- query log

class QueryLog:
    """A uniform sample of the queries one (table, layer) received, with the version each read
    (reservoir sampling, Vitter's algorithm R): what learned PQ trains on."""

    def __init__(self, size, dim, seed=0):
        self.size, self.seen = size, 0
        self._queries, self._versions = np.empty((size, dim), np.float32), np.empty(size, np.int64)
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()

    @property
    def queries(self) -> np.ndarray:
        return self._queries[:min(self.seen, self.size)]

    @property
    def versions(self) -> np.ndarray:
        return self._versions[:min(self.seen, self.size)]

    def add(self, queries, version):
        with self._lock:
            fill = min(self.seen, self.size)
            take = min(len(queries), self.size - fill)
            self._queries[fill:fill + take], self._versions[fill:fill + take] = queries[:take], version
            seen = self.seen + take + np.arange(len(queries) - take)  # each later query takes a random
            slot = self._rng.integers(0, seen + 1)  # slot with probability size / (seen + 1)
            hit = slot < self.size
            self._queries[slot[hit]], self._versions[slot[hit]] = queries[take:][hit], version
            self.seen += len(queries)

    def save(self, path):
        with self._lock:
            np.savez(path, queries=self.queries, versions=self.versions, seen=self.seen)

    @classmethod
    def load(cls, path, size):
        with np.load(path) as f:
            log = cls(size, f["queries"].shape[1])
            n = min(size, len(f["queries"]))
            log._queries[:n], log._versions[:n] = f["queries"][:n], f["versions"][:n]
            log.seen = n if n < size else int(f["seen"])
        return log


# ---------------------------------------------------------------- builds (run in a worker process)

ROOT = Path(__file__).resolve().parent.parent
_WORKERS: set = set()  # build processes still running, killed when the server exits
atexit.register(lambda: [proc.kill() for proc in list(_WORKERS)])


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


def build_in_worker(folder, entry) -> dict:
    """build_and_save in a fresh interpreter: no fork of a threaded gRPC server, no re-import of
    the caller's __main__, and a crash fails the build instead of the server."""
    code = "import sys, json; from memsvc.search import build_and_save; print(json.dumps(build_and_save(sys.argv[1])))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    entry.worker = proc
    _WORKERS.add(proc)
    try:
        out, err = proc.communicate()
    finally:
        _WORKERS.discard(proc)
    if proc.returncode != 0:
        lines = err.strip().splitlines() or [f"exit status {proc.returncode}"]
        raise FailedPrecondition(f"build: {lines[-1]}")
    return json.loads(out.strip().splitlines()[-1])


# ---------------------------------------------------------------- the manager

class _Entry:
    """One index: its catalog info, the loaded Index, and the lock its searches and refreshes take."""

    def __init__(self, info: IndexInfo, unindexed=()):
        self.info, self.index = info, None
        self.unindexed = np.asarray(unindexed, np.int64)  # zero rows kept out of a cosine index
        self.lock = threading.Lock()
        self.dropped = self.refreshing = False
        self.worker = None  # the build process, killed by drop


class IndexManager:
    """The indexes of one KnowledgeBase: create (background build), drop, list, describe, search,
    refresh; persisted under data_dir/indexes and reloaded here."""

    def __init__(self, kb, config: SearchConfig | None = None):
        self.kb, self.config = kb, config or SearchConfig()
        self.root = Path(kb.root) / "indexes"
        self._lock = threading.RLock()
        self._entries: dict[str, _Entry] = {}
        self._logs: dict[tuple, QueryLog] = {}
        self._changed = OrderedDict()  # (table, created_in, layer, a, b) -> D(a, b); versions never change
        self._load()

    # ------------------------------------------------ catalog

    def _load(self):
        logs = self.root / "querylog"
        for path in sorted(logs.glob("*.npz")) if logs.is_dir() else []:
            table, layer = path.stem.rsplit("@", 1)
            self._logs[(table, int(layer))] = QueryLog.load(path, self.config.query_log_size)
        for meta in sorted(self.root.glob("*/meta.json")):
            saved = json.loads(meta.read_text())
            entry = _Entry(IndexInfo(**saved["info"]), saved.get("unindexed", []))
            if entry.info.state == BUILDING:
                entry.info = replace(entry.info, state=FAILED, error="interrupted by a restart; drop and create it again")
            elif entry.info.state == READY:
                try:
                    from indexes.ann import load_index

                    entry.index = load_index(self._index_dir(entry.info))
                except Exception as e:  # noqa: BLE001 - a broken index must not stop the server
                    LOG.exception("cannot load index %s", entry.info.name)
                    entry.info = replace(entry.info, state=FAILED, error=f"cannot load: {e}")
            self._entries[entry.info.name] = entry

    def _index_dir(self, info: IndexInfo) -> Path:
        return self.root / info.name / f"v{info.version}"

    def _save_meta(self, entry: _Entry):
        folder = self.root / entry.info.name
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / "meta.json.tmp"
        tmp.write_text(json.dumps({"info": asdict(entry.info), "unindexed": entry.unindexed.tolist()}, indent=1))
        os.replace(tmp, folder / "meta.json")

    def _entry(self, name, field_name="index") -> _Entry:
        entry = self._entries.get(name)
        if entry is None:
            raise NotFound(f"{field_name}: unknown index {name!r}")
        return entry

    def _pin(self, name, version):
        """Move (or, with None, delete) the tag that keeps the index's version readable through gc."""
        tag = f"index:{name}"
        if tag in self.kb.tags():
            self.kb.delete_tag(tag)
        if version is not None:
            self.kb.tag(tag, version)

    def close(self):
        """Save the query logs (indexes are saved as they change)."""
        for (table, layer), log in list(self._logs.items()):
            self._save_log(table, layer, log)

    def _save_log(self, table, layer, log):
        folder = self.root / "querylog"
        folder.mkdir(parents=True, exist_ok=True)
        log.save(folder / f"{table}@{layer}.npz")

    # ------------------------------------------------ create and drop

    def create(self, name, table, layer=0, config=None, version=None, tag=None, wait=False) -> IndexInfo:
        """Start building an index of `table`'s `layer` as it reads at a version (default head);
        ``config``: an IndexConfig or a dict of its fields. Returns at once unless ``wait``."""
        from indexes.base import IndexConfig

        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name or "") or name == "querylog":
            raise InvalidArgument(f"name: invalid index name {name!r} (letters, digits, _ . -)")
        v = self.kb.resolve_version(version, tag)
        t = self.kb.table(table, v)
        t.check_layers([layer], "layer")
        config = config if isinstance(config, IndexConfig) else IndexConfig.from_dict(dict(config or {}))
        config = replace(config, progress=False).validate()  # the service reports progress itself
        with self._lock:
            if name in self._entries:
                raise Conflict(f"name: index {name!r} already exists")
            info = IndexInfo(name=name, table=table, layer=int(layer), kind=config.kind, metric=config.metric,
                             version=v, created=time.time(), config=asdict(config))
            entry = self._entries[name] = _Entry(info)
            self._save_meta(entry)
        thread = threading.Thread(target=self._build, args=(entry,), name=f"build-{name}", daemon=True)
        thread.start()
        if wait:
            thread.join()
        return self.describe(name)

    def _build(self, entry: _Entry):
        info = entry.info
        folder = self.root / info.name / "build.tmp"
        try:
            t = self.kb.table(info.table, info.version)
            ids = alive_ids(t, info.version)
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            rows = np.lib.format.open_memmap(folder / "rows.npy", mode="w+", dtype=np.float32, shape=(len(ids), t.dim))
            step = self.config.read_chunk
            for start in range(0, len(ids), step):
                self._progress(entry, "reading rows", 0.3 * start / max(1, len(ids)))
                rows[start:start + step] = layer_rows(t, ids[start:start + step], info.version, info.layer)
            zero = np.linalg.norm(rows, axis=1) == 0 if info.metric == "cosine" else np.zeros(len(ids), bool)
            np.save(folder / "rows.npy", np.asarray(rows[~zero]))
            np.save(folder / "ids.npy", ids[~zero])
            del rows
            self._write_train_queries(entry, folder)
            (folder / "config.json").write_text(json.dumps(info.config))
            self._progress(entry, "building", 0.3)
            stats = build_in_worker(folder, entry) if self.config.build_in_worker else build_and_save(folder)
            self._progress(entry, "loading", 0.9)
            from indexes.ann import load_index

            final = self._index_dir(info)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(folder / "index", final)
            index = load_index(final)
            with self._lock:
                if entry.dropped:
                    shutil.rmtree(self.root / info.name, ignore_errors=True)
                    return
                entry.index, entry.unindexed = index, ids[zero]
                entry.info = replace(entry.info, state=READY, stage="ready", progress=1.0, count=stats["count"])
                self._pin(info.name, info.version)
                self._save_meta(entry)
        except Exception as e:  # noqa: BLE001 - a failed build is reported by DescribeIndex
            LOG.exception("index build %s failed", info.name)
            with self._lock:
                entry.info = replace(entry.info, state=FAILED, stage="failed", error=str(e) or type(e).__name__)
                if not entry.dropped:
                    self._save_meta(entry)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _progress(self, entry, stage, fraction):
        entry.info = replace(entry.info, stage=stage, progress=round(fraction, 4))

    def _write_train_queries(self, entry, folder):
        """learned_pq trains on the query log of its (table, layer) once that holds enough
        queries, else on a sample of the rows (for "nearest tokens" the queries are rows)."""
        info = entry.info
        if info.kind != "learned_pq":
            return
        log = self._logs.get((info.table, info.layer))
        if log is not None and len(log.queries) >= self.config.min_log_queries:
            queries, source = log.queries.copy(), "query log"
        else:
            rows = np.load(folder / "rows.npy", mmap_mode="r")
            pick = np.random.default_rng(0).choice(len(rows), min(len(rows), self.config.query_log_size), replace=False)
            queries, source = np.asarray(rows[np.sort(pick)]), "rows"
        entry.info = replace(info, train_queries_from=f"{source} ({len(queries)})")
        np.save(folder / "train.npy", queries)

    def drop(self, name) -> IndexInfo:
        """Forget an index (a running build is abandoned) and delete its files and tag."""
        with self._lock:
            entry = self._entry(name)
            del self._entries[name]
            entry.dropped = True
            if entry.worker is not None:
                entry.worker.kill()
            self._pin(name, None)
            shutil.rmtree(self.root / name, ignore_errors=True)
        return entry.info

    # ------------------------------------------------ describe

    def wait(self, name, poll_seconds=0.05, on_progress=None) -> IndexInfo:
        return wait_for_build(self.describe, name, poll_seconds, on_progress)

    def list(self) -> list:
        return [self.describe(name) for name in sorted(self._entries)]

    def describe(self, name) -> IndexInfo:
        """The index's catalog entry with its lag behind the head."""
        entry = self._entry(name)
        info = entry.info
        if info.state != READY:
            return info
        t = self.kb.table(info.table)
        return replace(info, count=len(entry.index), lag_commits=commits_since(t, info.version),
                       lag_rows=len(self.changed(t, info.layer, info.version, self.kb.version)))

    def changed(self, t, layer, a, b) -> np.ndarray:
        """D(a, b) for a table, cached; split at compactions so each full-layer compare runs once."""
        lo, hi = min(a, b), max(a, b)
        cuts = [lo] + [bv for bv, _ in t.bases if lo < bv <= hi] + [hi]
        parts = []
        for x, y in zip(cuts, cuts[1:]):
            key = (t.name, t.created_in, layer, x, y)
            with self._lock:
                hit = self._changed.get(key)
            if hit is None:
                hit = t.changed_tokens(x, y, layer)
                with self._lock:
                    self._changed[key] = hit
                    while len(self._changed) > 256:
                        self._changed.popitem(last=False)
            parts.append(hit)
        return np.unique(np.concatenate(parts)) if parts else np.empty(0, np.int64)

    def query_log(self, table, layer) -> QueryLog | None:
        return self._logs.get((table, int(layer)))

    # ------------------------------------------------ search

    def search(self, table, layer=0, queries=None, tokens=(), k=10, index=None, params=None,
               version=None, tag=None, metric=None) -> SearchResult:
        """The k nearest tokens of each query in `table`'s `layer` at a version (default head).

        Queries are vectors (n, d) or tokens (words or ids: their rows in that layer at that
        version). ``index``: a READY index by name; None picks a READY index of (table, layer)
        with ``metric`` (if given), else searches exactly."""
        v = self.kb.resolve_version(version, tag)
        t = self.kb.table(table, v)
        layer = int(t.check_layers([layer], "layer")[0])
        k = self._check_k(k)
        entry = self._pick(table, layer, index, metric)
        metric = entry.info.metric if entry else (metric or "l2")
        if metric not in ("l2", "ip", "cosine"):
            raise InvalidArgument(f"metric: {metric!r} is not one of l2, ip, cosine")
        q = self._queries(t, layer, v, queries, tokens)
        self._log_queries(table, layer, q, v)
        if entry is None:
            if params:
                raise InvalidArgument(f"params: exact search (no index on {table!r} layer {layer}) takes no params")
            ids, dist, iv, lag = *self._exact_layer(t, layer, v, q, k, metric), 0, 0
        else:
            ids, dist, iv, lag = self._search_index(entry, t, v, q, k, params)
        words = [[t.words[i] if i >= 0 else "" for i in row] for row in ids.tolist()]
        return SearchResult(ids=ids, distances=dist, tokens=words, version=v,
                            index=entry.info.name if entry else "", index_version=iv, lag_rows=lag, metric=metric)

    def _check_k(self, k):
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InvalidArgument(f"k: expected a positive integer, got {k!r}")
        if k > self.config.max_k:
            raise ResourceExhausted(f"k: {k} exceeds the limit of {self.config.max_k} results per query")
        return int(k)

    def _pick(self, table, layer, name, metric) -> _Entry | None:
        if name:
            entry = self._entry(name)
            info = entry.info
            if (info.table, info.layer) != (table, layer):
                raise InvalidArgument(f"index: {name!r} indexes table {info.table!r} layer {info.layer}, not {table!r} layer {layer}")
            if metric and metric != info.metric:
                raise InvalidArgument(f"metric: index {name!r} uses {info.metric}, not {metric}")
            if info.state != READY:
                raise FailedPrecondition(f"index: {name!r} is {info.state.lower()}" +
                                         (f" ({info.progress:.0%})" if info.state == BUILDING else f": {info.error}"))
            return entry
        ready = [e for e in list(self._entries.values()) if e.info.state == READY and
                 (e.info.table, e.info.layer) == (table, layer) and (not metric or e.info.metric == metric)]
        return max(ready, key=lambda e: e.info.version, default=None)

    def _queries(self, t, layer, v, queries, tokens):
        if (queries is None) == (not len(tokens)):
            raise InvalidArgument("queries: give query vectors or tokens (exactly one of them)")
        n = len(tokens) if queries is None else len(queries)
        if n > self.config.max_queries:
            raise ResourceExhausted(f"queries: {n} queries exceed the limit of {self.config.max_queries} per request")
        if queries is not None:
            from indexes.base import check_vectors

            return check_vectors("queries", queries, t.dim)
        ids, words = split_tokens(tokens)
        ids = t.check_ids(ids + [t.id_of(w, v, "tokens") for w in words], v, "token_ids")
        return layer_rows(t, ids, v, layer)

    def _log_queries(self, table, layer, q, v):
        with self._lock:
            log = self._logs.setdefault((table, layer), QueryLog(self.config.query_log_size, q.shape[1]))
        before = log.seen
        log.add(q, v)
        if before // 1024 != log.seen // 1024:  # persist now and then: a server has no clean close
            self._save_log(table, layer, log)

    def _exact_layer(self, t, layer, v, q, k, metric):
        """Exact top-k over every token of the layer at v, a chunk of rows at a time."""
        ids = alive_ids(t, v)
        best = empty_hits(len(q))
        for start in range(0, len(ids), self.config.read_chunk):
            part = ids[start:start + self.config.read_chunk]
            best = merge_topk(*best, *exact_search(q, part, layer_rows(t, part, v, layer), k, metric), k)
        return best

    def _search_index(self, entry, t, v, q, k, params):
        """Index hits not in D(iv, v), merged with an exact search over D(iv, v) at v."""
        with entry.lock:  # a refresh swaps the index and iv together
            info, index = entry.info, entry.index
            try:
                self.kb.resolve_version(info.version)
            except NotFound:  # iv was garbage-collected (its tag deleted): answer exactly, still correct
                return *self._exact_layer(t, info.layer, v, q, k, info.metric), info.version, -1
            stale = np.union1d(self.changed(t, info.layer, info.version, v), entry.unindexed)
            fetch = min(k + len(stale), len(index))
            ids, dist = index.search(q, fetch, params=params) if fetch else empty_hits(len(q))
        keep = ~np.isin(ids, stale)
        fresh = stale[alive(t, stale, v)]
        exact = exact_search(q, fresh, layer_rows(t, fresh, v, info.layer), k, info.metric) if len(fresh) else empty_hits(len(q))
        ids, dist = merge_topk(np.where(keep, ids, -1), dist, *exact, k)
        if len(stale) - len(entry.unindexed) > self.config.refresh_rows and not entry.refreshing:
            entry.refreshing = True
            threading.Thread(target=self._refresh_quietly, args=(info.name,), name=f"refresh-{info.name}", daemon=True).start()
        return ids, dist, info.version, len(stale)

    # ------------------------------------------------ refresh

    def _refresh_quietly(self, name):
        try:
            self.refresh(name)
        except Exception:  # noqa: BLE001 - searches stay exact without the refresh
            LOG.exception("refreshing index %s failed", name)

    def refresh(self, name) -> IndexInfo:
        """Fold D(iv, head) into the index (remove the old rows, add the new) and move iv to the
        head; saved like a build, so a restart reloads the refreshed index."""
        entry = self._entry(name)
        try:
            with entry.lock:
                info = entry.info
                if info.state != READY:
                    raise FailedPrecondition(f"index: {name!r} is {info.state.lower()}")
                head = self.kb.version
                if head == info.version:
                    return self.describe(name)
                t = self.kb.table(info.table, head)
                stale = self.changed(t, info.layer, info.version, head)
                new = stale[alive(t, stale, head)]
                rows = layer_rows(t, new, head, info.layer)
                zero = np.linalg.norm(rows, axis=1) == 0 if info.metric == "cosine" else np.zeros(len(new), bool)
                from indexes.ann import load_index

                try:
                    self._apply(entry, stale[alive(t, stale, info.version) & ~np.isin(stale, entry.unindexed)],
                                new[~zero], rows[~zero])
                except Exception:
                    entry.index = load_index(self._index_dir(info))  # back to exactly iv's rows
                    raise
                unindexed = np.union1d(np.setdiff1d(entry.unindexed, stale), new[zero])
                updated = replace(info, version=head, count=len(entry.index))
                entry.index.save(self._index_dir(updated))
                index = load_index(self._index_dir(updated))  # disk kinds read the files they were loaded from
                with self._lock:
                    if entry.dropped:
                        return updated
                    entry.info, entry.index, entry.unindexed = updated, index, unindexed
                    self._save_meta(entry)
                    self._pin(name, head)
                if head != info.version:
                    shutil.rmtree(self._index_dir(info), ignore_errors=True)
            return self.describe(name)
        finally:
            entry.refreshing = False

    @staticmethod
    def _apply(entry, old_ids, new_ids, new_rows):
        if len(old_ids):
            entry.index.remove(old_ids)
        if len(new_ids):
            entry.index.add(new_ids, new_rows)
