"""Banks that serve the backbone's STEM rows from memsvc (the protocol is in clients/backbone/model.py).

RemoteBank: one Lookup per forward for all STEM layers of the step's tokens, over gRPC, with a
version pinned per generation, an LFU hot-token cache (token frequencies are Zipfian, so a small
cache catches most reads), and prefetch of the next step's misses as soon as its tokens are
sampled. LocalBank: a worker on the same host maps the knowledge base's base array read-only and
overlays the delta rows of its pinned version (fetched once from the service): no RPC per step.
Both return exactly the rows the service stores, as float32.
"""
import heapq

import numpy as np
import torch

from clients.backbone.model import ReadyRows
from memsvc.core.dtypes import storage_dtype, to_float32


class LFUCache:
    """Rows of the most frequently used tokens. Frequencies count every access, cached or not;
    a missed token is admitted when the cache has room or it is used more than the coldest one."""

    def __init__(self, capacity: int, row_shape: tuple):
        self.capacity = capacity
        self.rows = np.zeros((capacity, *row_shape), dtype=np.float32)  # (capacity, L, d)
        self.slot_of = {}  # token -> slot in rows
        self.free = list(range(capacity - 1, -1, -1))  # unused slots
        self.freq = {}  # token -> accesses
        self.heap = []  # (freq when pushed, token), stale entries skipped lazily
        self.hits = self.misses = 0

    @property
    def hit_rate(self) -> float:
        return self.hits / max(1, self.hits + self.misses)

    def count(self, tokens) -> list:
        """Record one access of each token; return the ones not cached (the misses)."""
        missing = []
        for t in tokens:
            f = self.freq[t] = self.freq.get(t, 0) + 1
            if t in self.slot_of:
                self.hits += 1
                heapq.heappush(self.heap, (f, t))
            else:
                self.misses += 1
                missing.append(t)
        if len(self.heap) > 4 * self.capacity + 64:  # drop stale entries now and then
            self.heap = [(self.freq[t], t) for t in self.slot_of]
            heapq.heapify(self.heap)
        return missing

    def _coldest(self):
        while self.heap:
            f, t = self.heap[0]
            if t in self.slot_of and self.freq[t] == f:
                return f, t
            heapq.heappop(self.heap)
        return None

    def admit(self, token, row):
        if self.capacity <= 0 or token in self.slot_of:
            return
        if self.free:
            slot = self.free.pop()
        else:
            f, cold = self._coldest()
            if f >= self.freq[token]:
                return
            heapq.heappop(self.heap)
            slot = self.slot_of.pop(cold)
        self.rows[slot] = row
        self.slot_of[token] = slot
        heapq.heappush(self.heap, (self.freq[token], token))

    def warm(self, tokens, rows, counts):
        """Admit rows of tokens another view found frequent (most frequent first), with frequencies
        in proportion to its counts, the coldest at 1: a token this worker reads twice can replace
        the coldest warmed one, the hottest stay until this worker's own counts say otherwise."""
        scale = 1.0 / max(1, int(np.min(counts))) if len(counts) else 1.0
        for t, row, c in zip(tokens, rows, counts):
            self.freq[t] = max(self.freq.get(t, 0), max(1, round(int(c) * scale)))
            self.admit(t, row)

    def drop(self, tokens):
        """Forget the rows of tokens (their rows changed)."""
        for t in tokens:
            slot = self.slot_of.pop(int(t), None)
            if slot is not None:
                self.free.append(slot)


class RemoteRows:
    """Rows of one request: cached ones now, missing ones when their Lookup future completes."""

    def __init__(self, bank, uniq, inverse, futures):
        self.bank, self.uniq, self.inverse, self.futures = bank, uniq, inverse, futures

    def result(self):
        fetched = {}
        for future in {id(f): f for f in self.futures.values()}.values():
            reply = future.result()  # a LookupResult
            fetched.update(zip(reply.unique_ids.tolist(), to_float32(reply.rows, reply.dtype)))  # rows (L, d)
        cache = self.bank.cache
        out = np.empty((len(self.uniq), *cache.rows.shape[1:]), dtype=np.float32)
        tokens = self.uniq.tolist()
        for i, t in enumerate(tokens):  # cached rows first: admitting fetched rows may evict them
            if t not in fetched:
                out[i] = cache.rows[cache.slot_of[t]]
        for i, t in enumerate(tokens):
            if t in fetched:
                out[i] = fetched[t]
                cache.admit(t, fetched[t])
        return torch.from_numpy(out[self.inverse])  # (N, L, d)


class RemoteBank:
    """The backbone's bank over gRPC (see the module docstring).

    cache_tokens: LFU capacity in tokens (0 disables the cache); prefetch: request the next
    step's misses as soon as its tokens are sampled; overrides: RowOps applied to every read
    (a per-request edit, nothing written); warm: fill the cache before the first step with the
    rows of the tokens the server reads most often (HotTokens), so it hits from the first step."""

    WARM_BATCH_BYTES = 16 << 20  # rows per warming Lookup: 200 tokens of a STEM-1B bank (5 x 8,192 bf16)

    def __init__(self, client, table, version=None, cache_tokens=0, prefetch=True, overrides=(), warm=False):
        self.client, self.table, self.prefetch_enabled = client, table, prefetch
        self.version = client.resolve_version(version)
        info = client.describe(table, self.version)
        self.cache = LFUCache(cache_tokens, (info.num_layers, info.dim))
        self.row_bytes = info.num_layers * info.dim * np.dtype(storage_dtype(info.dtype)).itemsize
        self.overrides = list(overrides)
        self.pending = {}  # token -> Lookup future already in flight (prefetched)
        self.lookups = 0
        if warm:
            self.warm()

    def warm(self):
        """Cache the rows of the server's hot tokens that are not cached yet, read at the pinned
        version (with this bank's overrides) in Lookups of at most WARM_BATCH_BYTES."""
        if self.cache.capacity <= 0:
            return
        tokens, counts = self.client.hot_tokens(self.table, self.cache.capacity, self.version)
        todo = [i for i, t in enumerate(tokens.tolist()) if t not in self.cache.slot_of]
        step = max(1, self.WARM_BATCH_BYTES // self.row_bytes)
        for start in range(0, len(todo), step):
            batch = todo[start:start + step]
            rows = self._fetch(tokens[batch]).result().in_request_order()  # (n, L, d) float32
            self.cache.warm(tokens[batch].tolist(), rows, counts[batch])

    def _fetch(self, tokens):
        self.lookups += 1
        return self.client.lookup_future(self.table, tokens, version=self.version, overrides=self.overrides)

    def request(self, token_ids):
        uniq, inverse = np.unique(token_ids.numpy(), return_inverse=True)
        missing = self.cache.count(uniq.tolist())
        futures = {t: self.pending.pop(t) for t in missing if t in self.pending}
        rest = [t for t in missing if t not in futures]
        if rest:
            future = self._fetch(rest)
            futures.update({t: future for t in rest})
        return RemoteRows(self, uniq, inverse, futures)

    def prefetch(self, token_ids):
        if not self.prefetch_enabled:
            return
        todo = [t for t in np.unique(token_ids.numpy()).tolist() if t not in self.cache.slot_of and t not in self.pending]
        if todo:
            future = self._fetch(todo)
            self.pending.update({t: future for t in todo})

    def move_to(self, version=None, warm=False):
        """Pin a newer version: drop only the cached rows that changed in between; warm: then
        cache the server's hot tokens again (rows read at the new version)."""
        new = self.client.resolve_version(version)
        self.cache.drop(self.client.changed_tokens(self.table, self.version, new).tolist())
        self.pending.clear()
        self.version = new
        if warm:
            self.warm()


class LocalBank:
    """The base array memory-mapped read-only, plus the pinned version's delta rows from the service."""

    def __init__(self, client, table, version=None):
        self.client, self.table = client, table
        self.base_path = None
        self.move_to(version)

    def move_to(self, version=None):
        snap = self.client.snapshot(self.table, version)
        if snap["base_path"] != self.base_path:
            self.base = np.load(snap["base_path"], mmap_mode="r")  # (V, L, d), never written
            self.base_path = snap["base_path"]
        self.dtype, self.version = snap["dtype"], snap["version"]
        # ids ascending (the Snapshot contract); rows kept in the table's dtype, widened per read:
        # 100,000 edited STEM-1B tokens are 8 GB of bf16 rows, 16 GB as float32
        self.delta_ids, self.delta_rows = snap["delta_token_ids"], snap["delta_rows"]

    def request(self, token_ids):
        ids = token_ids.numpy()
        rows = to_float32(self.base[np.minimum(ids, len(self.base) - 1)], self.dtype)  # (N, L, d)
        if len(self.delta_ids):
            pos = np.minimum(np.searchsorted(self.delta_ids, ids), len(self.delta_ids) - 1)
            hit = self.delta_ids[pos] == ids
            rows[hit] = to_float32(self.delta_rows[pos[hit]], self.dtype)
        return ReadyRows(torch.from_numpy(rows))


class StoreBank:
    """Rows read synchronously through any store API (a KnowledgeBase or a MemoryClient): the
    simple bank, with no cache and no prefetch, for tools and the in-process server path."""

    def __init__(self, store, table, version=None, overrides=()):
        self.store, self.table, self.overrides = store, table, list(overrides)
        self.version = store.resolve_version(version)

    def request(self, token_ids):
        result = self.store.lookup(self.table, token_ids.numpy(), version=self.version, overrides=self.overrides)
        return ReadyRows(torch.from_numpy(result.in_request_order()))
