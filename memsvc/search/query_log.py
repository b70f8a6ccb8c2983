"""The queries each (table, layer[, head]) received, sampled: what learned PQ trains on."""
import logging
import math
import random
import threading
import time
from pathlib import Path

import numpy as np

from memsvc.store.files import write_atomic

LOG = logging.getLogger("memsvc.search")


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
        write_atomic(path, lambda f: np.savez(f, queries=queries, versions=versions, seen=seen))

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


class QueryLogs:
    """One QueryLog per (table, layer[, head]) searched, saved under `folder` as
    <table>@<layer>[.<head>].npz now and then in the background and on close."""

    def __init__(self, folder, size, save_seconds):
        self.folder, self.size, self.save_seconds = Path(folder), size, save_seconds
        self._logs: dict[tuple, QueryLog] = {}
        self._lock = threading.Lock()
        self._save_lock = threading.Lock()  # a background save and close() may overlap
        self._saved = time.monotonic()  # when the logs were last persisted
        self.saving = False  # a background save is running
        for path in sorted(self.folder.glob("*.npz")) if self.folder.is_dir() else []:
            try:
                table, layer = path.stem.rsplit("@", 1)  # layer or layer.head
                self._logs[(table, *map(int, layer.split(".")))] = QueryLog.load(path, size)
            except Exception as e:  # noqa: BLE001 - a sample of queries: a damaged one is dropped, not fatal
                LOG.warning("query log %s is damaged (%s); dropping it", path, e)
                path.unlink(missing_ok=True)

    def get(self, where) -> QueryLog | None:
        return self._logs.get(where)

    def add(self, where, queries, version):
        with self._lock:
            log = self._logs.get(where)
            if log is None:  # not setdefault: that would allocate a log (and its rng) on every search
                log = self._logs[where] = QueryLog(self.size, queries.shape[1])
        log.add(queries, version)
        # Persist now and then, in the background (close() saves the rest): a save per 1024
        # queries in the request path (np.savez of up to 2 MB, ~40 ms on a busy disk) was 15% of
        # IndexManager.search's time over 200 batch-64 hnsw searches (cProfile, issue 5).
        with self._lock:
            due = not self.saving and time.monotonic() - self._saved >= self.save_seconds
            self.saving = self.saving or due
        if due:
            threading.Thread(target=self._save_all_quietly, name="save-query-logs", daemon=True).start()

    def _save_all_quietly(self):
        try:
            self.save_all()
        except Exception:  # noqa: BLE001 - the log is a sample; close() tries again
            LOG.exception("saving query logs failed")
        finally:
            self._saved, self.saving = time.monotonic(), False

    def save_all(self):
        """Saves every log; one that cannot be written (a full disk) keeps its last saved file."""
        for where, log in list(self._logs.items()):
            try:
                self.save(where, log)
            except OSError as e:
                LOG.warning("query log of %s not saved (%s); the last saved one stays", where, e)

    def save(self, where, log):
        self.folder.mkdir(parents=True, exist_ok=True)
        with self._save_lock:
            log.save(self.folder / f"{where[0]}@{'.'.join(map(str, where[1:]))}.npz")
