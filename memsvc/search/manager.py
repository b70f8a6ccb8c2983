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

The manager ties together: sources.py (what an index covers), catalog.py (the saved entries),
builds.py and search_worker.py (the child processes, children.py starts them), query_log.py
(what learned PQ trains on), config.py (the knobs), and indexes/exact.py (the exact top-k and
merge of the exact part).

    >>> manager = IndexManager(kb)
    >>> manager.create("tokens", "stem", layer=0, config={"kind": "hnsw", "metric": "cosine"}, wait=True)
    >>> manager.search("stem", layer=0, tokens=["France"], k=5).tokens[0]
    ['France', 'Paris', ...]
"""
import json
import logging
import os
import re
import shutil
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from indexes.base import read_vector_file
from indexes.exact import empty_hits, exact_search, merge_topk, top_k
from memsvc.core.errors import Conflict, FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from memsvc.core.search import BUILDING, FAILED, READY, IndexInfo, SearchResult, place, wait_for_build, where_of
from memsvc.search.builds import build_and_save, build_in_worker, write_rows
from memsvc.search.catalog import Catalog, Entry
from memsvc.search.config import SearchConfig
from memsvc.search.limits import check_resident, checked_index_config
from memsvc.search.query_log import QueryLog, QueryLogs
from memsvc.search.search_worker import GIL_HOLDING_KINDS, SearchWorker
from memsvc.store.files import fsync_dir, fsync_tree
from memsvc.search.sources import BankLayer, MosaicGroup

LOG = logging.getLogger("memsvc.search")
MAX_NAME_BYTES = 255  # an index's name is its directory's name: most file systems allow 255 bytes


class IndexManager:
    """The indexes of one KnowledgeBase: create (background build), drop, list, describe, search,
    refresh; persisted under data_dir/indexes and reloaded here."""

    def __init__(self, kb, config: SearchConfig | None = None):
        self.kb, self.config = kb, config or SearchConfig()
        self.root = Path(kb.root) / "indexes"
        self._lock = threading.RLock()
        self.query_logs = QueryLogs(self.root / "querylog", self.config.query_log_size,
                                    self.config.query_log_save_seconds)
        self.catalog = Catalog(self.root)
        self._changed = OrderedDict()  # (source cache_key, a, b) -> D(a, b); versions never change
        self._worker = SearchWorker(self.config.search_worker_niceness)  # searches of GIL_HOLDING_KINDS
        self._tasks: list[threading.Thread] = []  # builds and refreshes: close() ends them before the KB closes
        self._closing = False
        self._warm_worker([e.info.kind for e in self.catalog.entries() if e.info.state == READY])

    # ------------------------------------------------ worker, tasks, tags, close

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
        for entry in self.catalog.entries():
            if entry.worker is not None:
                entry.worker.kill()
        for thread in tasks:
            thread.join()
        self._worker.close()
        self.query_logs.save_all()

    def background_tasks(self) -> list:
        """The build and refresh threads still running."""
        with self._lock:
            return [t for t in self._tasks if t.is_alive()]

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
        if len(name) > MAX_NAME_BYTES:  # a directory name: longer ones fail to mkdir
            raise InvalidArgument(f"name: {len(name)} bytes, over the limit of {MAX_NAME_BYTES}")
        v = self.kb.resolve_version(version, tag)
        src = self._source(table, layer, head, v)
        if not len(src.alive_ids(v)):
            raise FailedPrecondition(f"table: {place(src.where)} holds no rows at version {v}; add pairs first")
        config = config if isinstance(config, IndexConfig) else checked_index_config(config or {}, self.config.index_limits)
        config = replace(config, progress=False).validate()  # the service reports progress itself
        check_resident(config.kind, len(src.alive_ids(v)), src.dim, self.config.max_resident_index_bytes)
        with self._lock:
            if name in self.catalog:
                raise Conflict(f"name: index {name!r} already exists")
            info = IndexInfo(name=name, table=table, layer=src.where[1], kind=config.kind, metric=config.metric,
                             version=v, created=time.time(), config=asdict(config),
                             head=src.where[2] if src.kind == "mosaic" else None)
            entry = Entry(info)
            self.catalog.add(entry)
        thread = self._start_task(self._build, (entry,), f"build-{name}")
        if wait:
            thread.join()
        return self.describe(name)

    def _build(self, entry: Entry):
        info = entry.info
        folder = self.root / info.name / "build.tmp"
        try:
            src = self._source(info.table, info.layer, info.head, info.version)
            ids = src.alive_ids(info.version)
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            zero = write_rows(src, ids, info, folder / "rows.bin", self.config.read_chunk,
                              lambda fraction: self._progress(entry, "reading rows", 0.3 * fraction))
            np.save(folder / "ids.npy", ids[~zero])
            self._write_train_queries(entry, folder)
            (folder / "config.json").write_text(json.dumps(info.config))
            self._progress(entry, "building", 0.3)
            stats = (build_in_worker(folder, entry, self.config.build_niceness) if self.config.build_in_worker
                     else build_and_save(folder))
            self._progress(entry, "loading", 0.9)
            from indexes.ann import load_index

            final = self.catalog.index_dir(info)
            shutil.rmtree(final, ignore_errors=True)
            fsync_tree(folder / "index")  # durable before it is named: a crash leaves the old index or this one
            os.replace(folder / "index", final)
            fsync_dir(final.parent)
            index = load_index(final)
            self._warm_worker([info.kind])
            with self._lock:
                if entry.dropped:
                    shutil.rmtree(self.root / info.name, ignore_errors=True)
                    return
                self._pin(info.name, info.version)  # READY is published last: a caller that saw it may close the KB
                entry.index, entry.unindexed = index, ids[zero]
                entry.info = replace(entry.info, state=READY, stage="ready", progress=1.0, count=stats["count"])
                self.catalog.save(entry)
        except Exception as e:  # noqa: BLE001 - a failed build is reported by DescribeIndex
            if self._closing:  # killed by close(): the saved BUILDING reloads as interrupted
                return
            LOG.exception("index build %s failed", info.name)
            with self._lock:
                entry.info = replace(entry.info, state=FAILED, stage="failed", error=str(e) or type(e).__name__)
                if not entry.dropped:
                    self.catalog.save(entry)
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
        log = self.query_logs.get(info.where())
        if log is not None and len(log.queries) >= self.config.min_log_queries:
            queries, source = log.queries.copy(), "query log"
        else:
            rows = read_vector_file(folder / "rows.bin")
            pick = np.random.default_rng(0).choice(len(rows), min(len(rows), self.config.query_log_size), replace=False)
            queries, source = np.asarray(rows[np.sort(pick)]), "rows"  # query_log_size rows, not the layer
        entry.info = replace(info, train_queries_from=f"{source} ({len(queries)})")
        np.save(folder / "train.npy", queries)

    def drop(self, name) -> IndexInfo:
        """Forget an index (a running build is abandoned) and delete its files and tag."""
        with self._lock:
            entry = self.catalog.get(name)
            self.catalog.remove(name)
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
        return [self.describe(name) for name in self.catalog.names()]

    def describe(self, name) -> IndexInfo:
        """The index's catalog entry with its lag behind the head."""
        entry = self.catalog.get(name)
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
        return self.query_logs.get(where_of(table, layer, head))

    # ------------------------------------------------ search

    def search(self, table, layer=0, queries=None, tokens=(), k=10, index=None, params=None,
               version=None, tag=None, metric=None, head=None, names=True, exact=False) -> SearchResult:
        """The k nearest rows of each query in `table`'s `layer` at a version (default head): a
        bank's tokens, or (with `head`, default 0) the pairs of a mosaic store's (layer, head).

        Queries are vectors (n, d) or, for a bank, tokens (words or ids: their rows in that layer
        at that version). ``index``: a READY index by name; None picks a READY index of the same
        rows with ``metric`` (if given), else searches exactly; ``exact=True`` searches exactly
        whatever indexes exist. ``names=False`` leaves tokens and labels empty (ids and distances only)."""
        v = self.kb.resolve_version(version, tag)
        src = self._source(table, layer, head, v)
        k = self._check_k(k)
        if exact and index:
            raise InvalidArgument(f"exact: give exact or an index, not both (index {index!r})")
        entry = None if exact else self._pick(src.where, index, metric)
        metric = entry.info.metric if entry else (metric or "l2")
        if metric not in ("l2", "ip", "cosine"):
            raise InvalidArgument(f"metric: {metric!r} is not one of l2, ip, cosine")
        q = self._queries(src, v, queries, tokens)
        self._check_work(len(q), k, params)
        self.query_logs.add(src.where, q, v)
        if entry is None:
            if params:
                why = "asked for" if exact else f"no index on {place(src.where)}"
                raise InvalidArgument(f"params: exact search ({why}) takes no params")
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

    def _check_work(self, n, k, params):
        if n * k > self.config.max_results:
            raise ResourceExhausted(f"k: {n} queries x k {k} exceed the limit of {self.config.max_results} results "
                                    f"per request")
        for key, value in (params or {}).items():
            if isinstance(value, (int, np.integer)) and value > self.config.max_search_param:
                raise ResourceExhausted(f"params.{key}: {value} exceeds the limit of {self.config.max_search_param}")

    def _pick(self, where, name, metric) -> Entry | None:
        if name:
            entry = self.catalog.get(name)
            info = entry.info
            if info.where() != where:
                raise InvalidArgument(f"index: {name!r} indexes {place(info.where())}, not {place(where)}")
            if metric and metric != info.metric:
                raise InvalidArgument(f"metric: index {name!r} uses {info.metric}, not {metric}")
            if info.state != READY:
                raise FailedPrecondition(f"index: {name!r} is {info.state.lower()}" +
                                         (f" ({info.progress:.0%})" if info.state == BUILDING else f": {info.error}"))
            return entry
        ready = [e for e in self.catalog.entries() if e.info.state == READY and
                 e.info.where() == where and (not metric or e.info.metric == metric)]
        return max(ready, key=lambda e: e.info.version, default=None)

    def _queries(self, src, v, queries, tokens):
        if (queries is None) == (not len(tokens)):
            raise InvalidArgument("queries: give query vectors or tokens (exactly one of them)")
        from indexes.base import check_shape, check_vectors

        if queries is not None:
            check_shape("queries", queries, src.dim)  # before len(): a 0-d tensor has none
        n = len(tokens) if queries is None else len(queries)
        if n > self.config.max_queries:
            raise ResourceExhausted(f"queries: {n} queries exceed the limit of {self.config.max_queries} per request")
        if queries is not None:
            return check_vectors("queries", queries, src.dim)
        return src.query_rows(tokens, v)

    def _exact_all(self, src, v, q, k, metric):
        """Exact top-k over every row of the source at v, a chunk of rows at a time."""
        ids = src.alive_ids(v)
        if len(q) * len(ids) > self.config.max_scored:
            raise ResourceExhausted(f"queries: {len(q)} queries x {len(ids)} rows exceed the limit of "
                                    f"{self.config.max_scored} scored by an exact search; send fewer or build an index")
        best = empty_hits(len(q))
        for start in range(0, len(ids), self.config.read_chunk):
            part = ids[start:start + self.config.read_chunk]
            best = merge_topk(*best, *exact_search(q, part, src.rows(part, v), k, metric), k)
        return best if best[0].shape[1] == k else top_k(*best, k)  # padded

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
                ids, dist = self._worker.search((info.name, info.created, info.version), self.catalog.index_dir(info), q, fetch, params)
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
        entry = self.catalog.get(name)
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
                from indexes.ann import load_index

                try:
                    zero = self._apply(entry, src, head, info.metric,
                                       stale[src.alive(stale, info.version) & ~np.isin(stale, entry.unindexed)], new)
                except Exception:
                    entry.index = load_index(self.catalog.index_dir(info))  # back to exactly iv's rows
                    raise
                unindexed = np.union1d(np.setdiff1d(entry.unindexed, stale), zero)
                updated = replace(info, version=head, count=len(entry.index))
                try:
                    entry.index.save(self.catalog.index_dir(updated))
                    fsync_tree(self.catalog.index_dir(updated))  # durable before meta.json names it
                except BaseException:  # a full disk: the index stays at iv, as saved
                    shutil.rmtree(self.catalog.index_dir(updated), ignore_errors=True)
                    entry.index = load_index(self.catalog.index_dir(info))
                    raise
                index = load_index(self.catalog.index_dir(updated))  # disk kinds read the files they were loaded from
                with self._lock:
                    if entry.dropped:
                        return updated
                    entry.info, entry.index, entry.unindexed = updated, index, unindexed
                    self.catalog.save(entry)
                    self._pin(name, head)
                if head != info.version:
                    shutil.rmtree(self.catalog.index_dir(info), ignore_errors=True)
            return self.describe(name)
        finally:
            entry.refreshing = False

    def _apply(self, entry, src, head, metric, old_ids, new_ids) -> np.ndarray:
        """Remove old_ids from the index, then add the rows of new_ids at head a read_chunk at a
        time (after many edits they are a large part of a layer); returns the new ids left out
        because their rows are zero (a cosine index has no direction for them)."""
        if len(old_ids):
            entry.index.remove(old_ids)
        zero = []
        for start in range(0, len(new_ids), self.config.read_chunk):
            ids = new_ids[start:start + self.config.read_chunk]
            rows = src.rows(ids, head)
            zeros = np.linalg.norm(rows, axis=1) == 0 if metric == "cosine" else np.zeros(len(ids), bool)
            if (~zeros).any():
                entry.index.add(ids[~zeros], rows[~zeros])
            zero.append(ids[zeros])
        return np.concatenate([np.zeros(0, np.int64)] + zero)
