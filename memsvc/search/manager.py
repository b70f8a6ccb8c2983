"""ANN search over knowledge tables that is never stale after edits.

An index covers one *source* as it read at one version iv:

    a bank layer (table, layer)               ids are token ids, results name tokens (BankLayer)
    a mosaic group (store, layer, head)       ids are pair ids, rows are their unit keys, results
                                              name the pairs' labels (MosaicGroup)

Let D(a, b) be the ids whose row reads differently at versions a and b (edited, injected,
added, replaced or removed in between, in either direction). A search at version v returns the
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
    indexes/querylog/<store>@<layer>.<head>.npz   (a mosaic group's)

The KB tag ``index:<name>`` pins iv so gc keeps it readable (D(iv, v) needs rows at iv).
Builds run in a spawned worker process: diskannpy holds the GIL for a whole call, which would
stall every other RPC of the server for the length of a build. The worker is niced: a build is
background work, and Lookups (a decode step waits on each) come first. For the same reason
searches of diskann kinds run in a second worker process (SearchWorker), not niced: they are
requests too.

    >>> manager = IndexManager(kb)
    >>> manager.create("tokens", "stem", layer=0, config={"kind": "hnsw", "metric": "cosine"}, wait=True)
    >>> manager.search("stem", layer=0, tokens=["France"], k=5).tokens[0]
    ['France', 'Paris', ...]
"""
import atexit
import bisect
import json
import logging
import math
import os
import pickle
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from memsvc.core.dtypes import to_float32
from memsvc.core.errors import Conflict, FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from memsvc.core.search import BUILDING, FAILED, READY, IndexInfo, SearchResult, place, wait_for_build, where_of
from memsvc.core.values import split_tokens

LOG = logging.getLogger("memsvc.search")


@dataclass
class SearchConfig:
    max_k: int = 1024  # larger k gets RESOURCE_EXHAUSTED naming `k`
    max_queries: int = 16384  # query vectors or tokens per request
    query_log_size: int = 4096  # queries sampled per (table, layer) (reservoir)
    query_log_save_seconds: float = 30.0  # persist a changed log at most this often, off the request path
    min_log_queries: int = 256  # learned_pq trains on the log once it holds this many, else on rows
    refresh_rows: int = 2048  # fold the delta into the index in the background past this many rows
    build_in_worker: bool = True  # build in a spawned process (diskannpy holds the GIL)
    # Added to the build worker's niceness. 10 against 0, one client looking up in a loop during
    # 20k diskann builds on 2 cores: Lookup p99 11.3 -> 7.8 ms (alone ~5), lookups served +20%,
    # builds 15.7 -> 20.3 s (slower only while the server is busy; bench/ann_service.py --builds).
    build_niceness: int = 10
    read_chunk: int = 4096  # tokens per chunk when reading a layer
    search_in_worker: bool = True  # search diskann kinds in a child process (diskannpy holds the GIL)
    # 0: the worker competes for the CPU like the in-process search it stands for. It was 5: on a
    # shared 2-core machine every wake-up of the niced worker (two process hand-offs a search)
    # waited behind other jobs, and diskann through the service fell to 0.54-0.64x (issue 5).
    search_worker_niceness: int = 0


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


# ---------------------------------------------------------------- what an index covers

class BankLayer:
    """One layer of a bank as the manager reads it: ids are token ids, names are words."""

    kind = "bank"

    def __init__(self, t, layer, chunk=4096):
        self.t, self.layer, self.chunk = t, int(t.check_layers([layer], "layer")[0]), chunk
        self.dim, self.where = t.dim, where_of(t.name, self.layer)
        self.cache_key = (t.name, t.created_in, self.layer)  # D(a, b) of one table's lifetime

    def alive_ids(self, version) -> np.ndarray:
        return alive_ids(self.t, version)

    def alive(self, ids, version) -> np.ndarray:
        return alive(self.t, ids, version)

    def rows(self, ids, version) -> np.ndarray:
        return layer_rows(self.t, ids, version, self.layer, self.chunk)

    def cuts(self, lo, hi) -> list:
        """Compactions in (lo, hi]: D is computed between them, so each full-layer compare runs once."""
        return [bv for bv, _ in self.t.bases if lo < bv <= hi]

    def changed(self, a, b) -> np.ndarray:
        return self.t.changed_tokens(a, b, self.layer)

    def commits_since(self, version) -> int:
        return commits_since(self.t, version)

    def names(self, ids, version) -> list:
        return self.t.word_array()[ids].tolist()

    def query_rows(self, tokens, version) -> np.ndarray:
        ids, words = split_tokens(tokens)
        ids = self.t.check_ids(ids + [self.t.id_of(w, version, "tokens") for w in words], version, "token_ids")
        return self.rows(ids, version)


class MosaicGroup:
    """One (layer, head) group of a mosaic store as the manager reads it: ids are pair ids (a
    replace keeps the id and changes the key), rows are unit keys, names are labels. Reads one
    immutable Pairs snapshot, so a commit landing meanwhile changes nothing here."""

    kind = "mosaic"

    def __init__(self, t, layer, head):
        self.pairs = t.group(layer, head)  # OutOfRange names `layer` or `head`
        self.dim, self.where = t.key_dim, where_of(t.name, layer, head)
        self.cache_key = (t.name, t.created_in, int(layer), int(head))
        self._by_id = {}  # version -> (sorted pair ids alive there, their slots)

    def _alive_at(self, version):
        if version not in self._by_id:
            slots = np.flatnonzero(self.pairs.alive(version))
            order = np.argsort(self.pairs.ids[slots], kind="stable")
            self._by_id[version] = self.pairs.ids[slots][order], slots[order]
        return self._by_id[version]

    def slots(self, ids, version) -> np.ndarray:
        """The slot of each pair id alive at a version, -1 for the others."""
        sorted_ids, slots = self._alive_at(version)
        if not len(sorted_ids):
            return np.full(np.shape(ids), -1, np.int64)
        pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
        return np.where(sorted_ids[pos] == ids, slots[pos], -1)

    def alive_ids(self, version) -> np.ndarray:
        return self._alive_at(version)[0]

    def alive(self, ids, version) -> np.ndarray:
        return self.slots(ids, version) >= 0

    def rows(self, ids, version) -> np.ndarray:
        return self.pairs.keys[self.slots(ids, version)]  # ids alive at the version

    def cuts(self, lo, hi) -> list:
        return []

    def changed(self, a, b) -> np.ndarray:
        """Pair ids alive through a different slot (or at one version only): D(a, b)."""
        return np.unique(self.pairs.ids[self.pairs.alive(a) != self.pairs.alive(b)])

    def commits_since(self, version) -> int:
        from memsvc.store.commit_log import NEVER  # removed_in of a live pair

        p = self.pairs
        return len(np.union1d(p.added_in[p.added_in > version], p.removed_in[(p.removed_in > version) & (p.removed_in < NEVER)]))

    def names(self, ids, version) -> list:
        slots = self.slots(ids, version)
        return [[self.pairs.labels[s] if s >= 0 else "" for s in row] for row in slots.tolist()]

    def query_rows(self, tokens, version):
        raise InvalidArgument(f"tokens: {place(self.where)} is a mosaic store, searched by query vectors; "
                              "tokens and token_ids name rows of a bank")


# ---------------------------------------------------------------- query log

class QueryLog:
    """A uniform sample of the queries one (table, layer) received, with the version each read:
    what learned PQ trains on.

    Reservoir sampling with skips (Li's algorithm L). Give every query a uniform random key; the
    sample is the `size` queries with the smallest keys and W is the largest key in it. A later
    query enters when its key is below W, so the gap to the next one that enters is geometric,

        gap = floor(log u / log(1 - W))             u ~ U(0, 1]
        W  <- W * u'^(1 / size)                     after it enters (u' ~ U(0, 1])

    and a search pays a few scalar draws, not a random number per query (algorithm R drew 64
    for a batch of 64: 0.1 ms of a search, issue 5). Which queries hold the smallest keys is
    independent of W, and W after n queries ~ Beta(size, n - size + 1): a reloaded log draws it
    afresh, so the saved file needs no more than the sample."""

    def __init__(self, size, dim, seed=0):
        self.size, self.seen = size, 0
        self._queries, self._versions = np.empty((size, dim), np.float32), np.empty(size, np.int64)
        self._rng = random.Random(seed)
        self._w = self._gap = 0  # set when the sample fills: W, and the queries to pass before the next enters
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
            if take:
                self._queries[fill:fill + take], self._versions[fill:fill + take] = queries[:take], version
                if fill + take == self.size:  # full now
                    self._start_skipping(self.size)
            i, entered = take + self._gap, {}  # slot -> the query entering it (a later one wins)
            while self._w and i < len(queries):  # query i enters, in a random slot (W > 0: full)
                entered[int(self._rng.random() * self.size)] = i
                self._w *= (1.0 - self._rng.random()) ** (1 / self.size)
                self._draw_gap()
                i += 1 + self._gap
            if entered:  # one copy for all (a young log takes dozens a batch)
                slots = list(entered)
                self._queries[slots], self._versions[slots] = queries[list(entered.values())], version
            self._gap = i - len(queries)  # 0 while the sample is not full
            self.seen += len(queries)

    def _start_skipping(self, seen):
        """W of a full sample after `seen` queries, and the first gap."""
        self._w = self._rng.betavariate(self.size, seen - self.size + 1)
        self._draw_gap()

    def _draw_gap(self):
        self._gap = int(math.log(1.0 - self._rng.random()) / math.log1p(-self._w)) if self._w < 1 else 0

    def save(self, path):
        with self._lock:  # copy under the lock, write outside it: adds never wait on the disk
            queries, versions, seen = self.queries.copy(), self.versions.copy(), self.seen
        np.savez(path, queries=queries, versions=versions, seen=seen)

    @classmethod
    def load(cls, path, size, seed=0):
        with np.load(path) as f:
            log = cls(size, f["queries"].shape[1], seed)
            n = min(size, len(f["queries"]))
            log._queries[:n], log._versions[:n] = f["queries"][:n], f["versions"][:n]
            log.seen = n if n < size else int(f["seen"])
        if log.seen >= size > 0:
            log._start_skipping(log.seen)
        return log


# ---------------------------------------------------------------- builds (run in a worker process)

ROOT = Path(__file__).resolve().parents[2]
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


def build_in_worker(folder, entry, niceness=0) -> dict:
    """build_and_save in a fresh interpreter, `niceness` nicer than the server: no fork of a
    threaded gRPC server, no re-import of the caller's __main__, and a crash fails the build
    instead of the server."""
    code = ("import os, sys, json; os.nice(int(sys.argv[2])); from memsvc.search.manager import build_and_save; "
            "print(json.dumps(build_and_save(sys.argv[1])))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder), str(int(niceness))], stdout=subprocess.PIPE,
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


# ---------------------------------------------------------------- searches in a worker process

GIL_HOLDING_KINDS = ("diskann", "diskann_dynamic", "diskann_disk")  # diskannpy: one call holds the GIL


def serve_searches(cache_size=4, niceness=0):
    """The search worker's loop: pickled (key, path, queries, k, params) on stdin, pickled
    ("ok", (ids, dist)) or ("error", (class name, message)) on the fd that was stdout. Indexes
    are loaded from `path` on first use and kept (LRU) under `key`."""
    from indexes.ann import load_index

    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # C++ prints (diskannpy) go to stderr, never into the replies
    os.nice(niceness)
    cache = OrderedDict()
    while True:
        try:
            key, path, queries, k, params = pickle.load(sys.stdin.buffer)
        except EOFError:  # the server closed the pipe: exit
            return
        try:
            if key not in cache:
                cache[key] = load_index(path)
                while len(cache) > cache_size:
                    cache.popitem(last=False)
            cache.move_to_end(key)
            reply = ("ok", cache[key].search(queries, k, params=params))
        except Exception as e:  # noqa: BLE001 - reported to the caller, which raises it
            reply = ("error", (type(e).__name__, str(e)))
        pickle.dump(reply, replies)
        replies.flush()


class SearchWorker:
    """Runs index searches in a child process. diskannpy holds the GIL for a whole call (issue 5:
    a batch-64 search stalled every Lookup and health check of the server for its length); in
    the worker it holds the worker's GIL, and the server's threads only wait on a pipe, which
    releases theirs. Started on first use (or `start()`), restarted if it dies."""

    def __init__(self, niceness=0):
        self._proc, self.niceness = None, int(niceness)
        self._lock = threading.Lock()  # one request in flight: replies come back in order

    def start(self):
        with self._lock:
            self._ensure()

    def _ensure(self):
        if self._proc is None or self._proc.poll() is not None:
            code = f"from memsvc.search.manager import serve_searches; serve_searches(niceness={self.niceness})"
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
            self._proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
            _WORKERS.add(self._proc)
        return self._proc

    def search(self, key, path, queries, k, params):
        """index.search(queries, k, params=params) of the index saved at `path`, in the worker."""
        from memsvc.core import errors

        with self._lock:
            proc = self._ensure()
            try:
                pickle.dump((key, str(path), queries, k, params), proc.stdin)
                proc.stdin.flush()
                status, value = pickle.load(proc.stdout)
            except (EOFError, OSError, pickle.UnpicklingError):
                self._stop()
                raise FailedPrecondition("index: the search worker exited during the search; it restarts on the next one") from None
        if status == "error":
            name, message = value
            error = getattr(errors, name, None)
            raise (error if isinstance(error, type) and issubclass(error, errors.MemsvcError) else FailedPrecondition)(message)
        return value

    def _stop(self):
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            _WORKERS.discard(self._proc)
            self._proc = None

    def close(self):
        with self._lock:
            if self._proc is not None:
                self._proc.stdin.close()  # the worker exits at EOF
                try:
                    self._proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
            self._stop()


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
        self._changed = OrderedDict()  # (source cache_key, a, b) -> D(a, b); versions never change
        self._worker = SearchWorker(self.config.search_worker_niceness)  # searches of GIL_HOLDING_KINDS
        self._log_saved = time.monotonic()  # when the query logs were last persisted
        self._log_saving = False
        self._log_save_lock = threading.Lock()
        self._tasks: list[threading.Thread] = []  # builds and refreshes: close() ends them before the KB closes
        self._closing = False
        self._load()

    # ------------------------------------------------ catalog

    def _load(self):
        logs = self.root / "querylog"
        for path in sorted(logs.glob("*.npz")) if logs.is_dir() else []:
            table, layer = path.stem.rsplit("@", 1)  # layer or layer.head
            self._logs[(table, *map(int, layer.split(".")))] = QueryLog.load(path, self.config.query_log_size)
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
        self._warm_worker([e.info.kind for e in self._entries.values() if e.info.state == READY])

    def _warm_worker(self, kinds):
        """Start the search worker (imports, not indexes) before the first search of these kinds needs it."""
        if self.config.search_in_worker and any(kind in GIL_HOLDING_KINDS for kind in kinds):
            self._worker.start()

    def _start_task(self, target, args, name):
        """A build or refresh in a thread of its own, which close() waits for."""
        with self._lock:
            self._tasks = [t for t in self._tasks if t.is_alive()]
            thread = threading.Thread(target=target, args=args, name=name, daemon=True)
            self._tasks.append(thread)
        thread.start()
        return thread

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
        """Before the KB closes: kill running build workers and wait for the build and refresh
        threads (a killed build reloads as interrupted), save the query logs (indexes are saved as
        they change) and stop the search worker."""
        with self._lock:
            self._closing = True
            tasks = list(self._tasks)
        for entry in list(self._entries.values()):
            if entry.worker is not None:
                entry.worker.kill()
        for thread in tasks:
            thread.join()
        self._worker.close()
        for where, log in list(self._logs.items()):
            self._save_log(where, log)

    def _save_log(self, where, log):
        folder = self.root / "querylog"
        folder.mkdir(parents=True, exist_ok=True)
        with self._log_save_lock:  # a background save and close() may overlap
            log.save(folder / f"{where[0]}@{'.'.join(map(str, where[1:]))}.npz")

    def _source(self, table, layer, head, version):
        """What (table, layer[, head]) names at a version: a BankLayer or a MosaicGroup."""
        if table in self.kb.mosaic.tables:
            return MosaicGroup(self.kb.mosaic.table(table, version), layer, 0 if head is None else head)
        t = self.kb.table(table, version)
        if head is not None:
            raise InvalidArgument(f"head: {table!r} is a bank; only mosaic stores have heads")
        return BankLayer(t, layer, self.config.read_chunk)

    # ------------------------------------------------ create and drop

    def create(self, name, table, layer=0, config=None, version=None, tag=None, wait=False, head=None) -> IndexInfo:
        """Start building an index of `table`'s `layer` (a mosaic store: the keys of (layer,
        `head`)) as it reads at a version (default head); ``config``: an IndexConfig or a dict of
        its fields. Returns at once unless ``wait``."""
        from indexes.base import IndexConfig

        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name or "") or name == "querylog":
            raise InvalidArgument(f"name: invalid index name {name!r} (letters, digits, _ . -)")
        v = self.kb.resolve_version(version, tag)
        src = self._source(table, layer, head, v)
        if not len(src.alive_ids(v)):
            raise FailedPrecondition(f"table: {place(src.where)} holds no rows at version {v}; add pairs first")
        config = config if isinstance(config, IndexConfig) else IndexConfig.from_dict(dict(config or {}))
        config = replace(config, progress=False).validate()  # the service reports progress itself
        with self._lock:
            if name in self._entries:
                raise Conflict(f"name: index {name!r} already exists")
            info = IndexInfo(name=name, table=table, layer=src.where[1], kind=config.kind, metric=config.metric,
                             version=v, created=time.time(), config=asdict(config),
                             head=src.where[2] if src.kind == "mosaic" else None)
            entry = self._entries[name] = _Entry(info)
            self._save_meta(entry)
        thread = self._start_task(self._build, (entry,), f"build-{name}")
        if wait:
            thread.join()
        return self.describe(name)

    def _build(self, entry: _Entry):
        info = entry.info
        folder = self.root / info.name / "build.tmp"
        try:
            src = self._source(info.table, info.layer, info.head, info.version)
            ids = src.alive_ids(info.version)
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            rows = np.lib.format.open_memmap(folder / "rows.npy", mode="w+", dtype=np.float32, shape=(len(ids), src.dim))
            step = self.config.read_chunk
            for start in range(0, len(ids), step):
                self._progress(entry, "reading rows", 0.3 * start / max(1, len(ids)))
                rows[start:start + step] = src.rows(ids[start:start + step], info.version)
            zero = np.linalg.norm(rows, axis=1) == 0 if info.metric == "cosine" else np.zeros(len(ids), bool)
            np.save(folder / "rows.npy", np.asarray(rows[~zero]))
            np.save(folder / "ids.npy", ids[~zero])
            del rows
            self._write_train_queries(entry, folder)
            (folder / "config.json").write_text(json.dumps(info.config))
            self._progress(entry, "building", 0.3)
            stats = (build_in_worker(folder, entry, self.config.build_niceness) if self.config.build_in_worker
                     else build_and_save(folder))
            self._progress(entry, "loading", 0.9)
            from indexes.ann import load_index

            final = self._index_dir(info)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(folder / "index", final)
            index = load_index(final)
            self._warm_worker([info.kind])
            with self._lock:
                if entry.dropped:
                    shutil.rmtree(self.root / info.name, ignore_errors=True)
                    return
                self._pin(info.name, info.version)  # READY is published last: a caller that saw it may close the KB
                entry.index, entry.unindexed = index, ids[zero]
                entry.info = replace(entry.info, state=READY, stage="ready", progress=1.0, count=stats["count"])
                self._save_meta(entry)
        except Exception as e:  # noqa: BLE001 - a failed build is reported by DescribeIndex
            if self._closing:  # killed by close(): the saved BUILDING reloads as interrupted
                return
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
        """learned_pq trains on the query log of its (table, layer[, head]) once that holds
        enough queries, else on a sample of the rows (for "nearest tokens" the queries are rows)."""
        info = entry.info
        if info.kind != "learned_pq":
            return
        log = self._logs.get(info.where())
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
        head = self.kb.version
        src = self._source(info.table, info.layer, info.head, head)
        return replace(info, count=len(entry.index), lag_commits=src.commits_since(info.version),
                       lag_rows=len(self.changed(src, info.version, head)))

    def changed(self, src, a, b) -> np.ndarray:
        """D(a, b) of a source (BankLayer or MosaicGroup), cached (versions never change); split
        at a bank's compactions so each full-layer compare runs once."""
        lo, hi = min(a, b), max(a, b)
        if lo == hi:  # an index searched at its own version: the usual case, no work
            return np.empty(0, np.int64)
        cuts = [lo] + src.cuts(lo, hi) + [hi]
        parts = []
        for x, y in zip(cuts, cuts[1:]):
            key = (*src.cache_key, x, y)
            with self._lock:
                hit = self._changed.get(key)
            if hit is None:
                hit = src.changed(x, y)
                with self._lock:
                    self._changed[key] = hit
                    while len(self._changed) > 256:
                        self._changed.popitem(last=False)
            parts.append(hit)
        return np.unique(np.concatenate(parts)) if parts else np.empty(0, np.int64)

    def query_log(self, table, layer, head=None) -> QueryLog | None:
        return self._logs.get(where_of(table, layer, head))

    # ------------------------------------------------ search

    def search(self, table, layer=0, queries=None, tokens=(), k=10, index=None, params=None,
               version=None, tag=None, metric=None, head=None, names=True) -> SearchResult:
        """The k nearest rows of each query in `table`'s `layer` at a version (default head): a
        bank's tokens, or (with `head`, default 0) the pairs of a mosaic store's (layer, head).

        Queries are vectors (n, d) or, for a bank, tokens (words or ids: their rows in that layer
        at that version). ``index``: a READY index by name; None picks a READY index of the same
        rows with ``metric`` (if given), else searches exactly. ``names=False`` leaves tokens and
        labels empty (ids and distances only)."""
        v = self.kb.resolve_version(version, tag)
        src = self._source(table, layer, head, v)
        k = self._check_k(k)
        entry = self._pick(src.where, index, metric)
        metric = entry.info.metric if entry else (metric or "l2")
        if metric not in ("l2", "ip", "cosine"):
            raise InvalidArgument(f"metric: {metric!r} is not one of l2, ip, cosine")
        q = self._queries(src, v, queries, tokens)
        self._log_queries(src.where, q, v)
        if entry is None:
            if params:
                raise InvalidArgument(f"params: exact search (no index on {place(src.where)}) takes no params")
            ids, dist, iv, lag = *self._exact_all(src, v, q, k, metric), 0, 0
        else:
            ids, dist, iv, lag = self._search_index(entry, src, v, q, k, params)
        names = src.names(ids, v) if names else []
        return SearchResult(ids=ids, distances=dist, tokens=names if src.kind == "bank" else [], version=v,
                            index=entry.info.name if entry else "", index_version=iv, lag_rows=lag, metric=metric,
                            labels=names if src.kind == "mosaic" else [])

    def _check_k(self, k):
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InvalidArgument(f"k: expected a positive integer, got {k!r}")
        if k > self.config.max_k:
            raise ResourceExhausted(f"k: {k} exceeds the limit of {self.config.max_k} results per query")
        return int(k)

    def _pick(self, where, name, metric) -> _Entry | None:
        if name:
            entry = self._entry(name)
            info = entry.info
            if info.where() != where:
                raise InvalidArgument(f"index: {name!r} indexes {place(info.where())}, not {place(where)}")
            if metric and metric != info.metric:
                raise InvalidArgument(f"metric: index {name!r} uses {info.metric}, not {metric}")
            if info.state != READY:
                raise FailedPrecondition(f"index: {name!r} is {info.state.lower()}" +
                                         (f" ({info.progress:.0%})" if info.state == BUILDING else f": {info.error}"))
            return entry
        ready = [e for e in list(self._entries.values()) if e.info.state == READY and
                 e.info.where() == where and (not metric or e.info.metric == metric)]
        return max(ready, key=lambda e: e.info.version, default=None)

    def _queries(self, src, v, queries, tokens):
        if (queries is None) == (not len(tokens)):
            raise InvalidArgument("queries: give query vectors or tokens (exactly one of them)")
        n = len(tokens) if queries is None else len(queries)
        if n > self.config.max_queries:
            raise ResourceExhausted(f"queries: {n} queries exceed the limit of {self.config.max_queries} per request")
        if queries is not None:
            from indexes.base import check_vectors

            return check_vectors("queries", queries, src.dim)
        return src.query_rows(tokens, v)

    def _log_queries(self, where, q, v):
        with self._lock:
            log = self._logs.get(where)
            if log is None:  # not setdefault: that would allocate a log (and its rng) on every search
                log = self._logs[where] = QueryLog(self.config.query_log_size, q.shape[1])
        log.add(q, v)
        # Persist now and then, in the background (close() saves the rest): a save per 1024
        # queries in the request path (np.savez of up to 2 MB, ~40 ms on a busy disk) was 15% of
        # IndexManager.search's time over 200 batch-64 hnsw searches (cProfile, issue 5).
        with self._lock:
            due = not self._log_saving and time.monotonic() - self._log_saved >= self.config.query_log_save_seconds
            self._log_saving = self._log_saving or due
        if due:
            threading.Thread(target=self._save_logs_quietly, name="save-query-logs", daemon=True).start()

    def _save_logs_quietly(self):
        try:
            for where, log in list(self._logs.items()):
                self._save_log(where, log)
        except Exception:  # noqa: BLE001 - the log is a sample; close() tries again
            LOG.exception("saving query logs failed")
        finally:
            self._log_saved, self._log_saving = time.monotonic(), False

    def _exact_all(self, src, v, q, k, metric):
        """Exact top-k over every row of the source at v, a chunk of rows at a time."""
        ids = src.alive_ids(v)
        best = empty_hits(len(q))
        for start in range(0, len(ids), self.config.read_chunk):
            part = ids[start:start + self.config.read_chunk]
            best = merge_topk(*best, *exact_search(q, part, src.rows(part, v), k, metric), k)
        return best if best[0].shape[1] == k else merge_topk(*best, *empty_hits(len(q)), k)  # padded

    def _search_index(self, entry, src, v, q, k, params):
        """Index hits not in D(iv, v), merged with an exact search over D(iv, v) at v."""
        with entry.lock:  # a refresh swaps the index and iv together
            info, index = entry.info, entry.index
            try:
                self.kb.resolve_version(info.version)
            except NotFound:  # iv was garbage-collected (its tag deleted): answer exactly, still correct
                return *self._exact_all(src, v, q, k, info.metric), info.version, -1
            stale = self.changed(src, info.version, v)
            stale = np.union1d(stale, entry.unindexed) if len(entry.unindexed) else stale
            fetch = min(k + len(stale), len(index))
            if not fetch:
                ids, dist = empty_hits(len(q))
            elif self.config.search_in_worker and info.kind in GIL_HOLDING_KINDS:
                ids, dist = self._worker.search((info.name, info.created, info.version), self._index_dir(info), q, fetch, params)
            else:
                ids, dist = index.search(q, fetch, params=params)
        if len(stale) or ids.shape[1] != k:  # else the index's k best are the answer as they are
            keep = ~np.isin(ids, stale)
            fresh = stale[src.alive(stale, v)]
            exact = exact_search(q, fresh, src.rows(fresh, v), k, info.metric) if len(fresh) else empty_hits(len(q))
            ids, dist = merge_topk(np.where(keep, ids, -1), dist, *exact, k)
        if len(stale) - len(entry.unindexed) > self.config.refresh_rows and not entry.refreshing:
            entry.refreshing = True
            self._start_task(self._refresh_quietly, (info.name,), f"refresh-{info.name}")
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
                src = self._source(info.table, info.layer, info.head, head)
                stale = self.changed(src, info.version, head)
                new = stale[src.alive(stale, head)]
                rows = src.rows(new, head)
                zero = np.linalg.norm(rows, axis=1) == 0 if info.metric == "cosine" else np.zeros(len(new), bool)
                from indexes.ann import load_index

                try:
                    self._apply(entry, stale[src.alive(stale, info.version) & ~np.isin(stale, entry.unindexed)],
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
