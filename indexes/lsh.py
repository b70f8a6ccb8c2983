"""SimHash tables for MagicPIG sampling over a Memory Mosaic store (MagicPIG, ICLR 2025).

Each of L tables hashes a vector to K sign bits sign(w·x) with Gaussian w. For unit q and x at
angle θ one bit agrees with probability p = 1 − θ/π, a whole table with p^K, independently
across tables. A key counts as retrieved when it shares the query's bucket in at least 2 of the
L tables, which happens with probability

    u = 1 − (1 − p^K)^L − L p^K (1 − p^K)^(L−1)

Keys in a narrow cone all land in a few buckets, so keys are centred first: we hash
k̃_i = (k_i − c)/||k_i − c|| (c = mean key) and the raw query q (centring q·k by q·c only shifts
every score of one query by the same amount, which softmax ignores). So p_i is computed on the
hashed vectors: cos(q, k_i − c), not q·k_i.

A read is latency work on random rows (issue #6): it walks q's L buckets (`collide`), then reads
the ~budget·n retrieved rows once each. Given values, the index keeps its own copy of the rows,
packed for that read (`PackedRows`).
"""

import functools
import math
import mmap
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numba
import numpy as np
from tqdm import tqdm

from indexes.lsh_kernels import bitsets, collide, inclusion, read, sample_packed
from memsvc.core.errors import InvalidArgument


@dataclass
class SimHashConfig:
    bits: int = 10  # K: bits per table; MagicPIG uses 8-10 (at most 16: codes are uint16)
    tables: int = 150  # L: size it for a budget with `choose_tables`
    seed: int = 0
    centre: bool = True  # hash keys minus their mean (the mean of the first batch added)


# One formula (lsh_kernels.inclusion), compiled twice: this numpy ufunc (cosines of any shape;
# float64 inside whatever the input dtype) and the kernel's scalar.
inclusion_probability = numba.vectorize(cache=True)(inclusion)  # compiled on first call, not at import


@functools.lru_cache(maxsize=32)
def log_inclusion_table(bits, tables, cells=4096):
    """log u as a cubic per cell of a uniform grid of cosines on [-1, 1]: (cells, 4) coefficients
    a + b x + c x² + d x³ in x ∈ [0, 1] across the cell, NaN rows where that is off by more than
    1e-10 (near cos = ±1, where log u has root and log singularities, and at the switch to the
    leading term): the read kernel computes u exactly there. 128 KB, stays in cache; the exact
    formula costs ~55 ns a key (2.7 ms of a query retrieving 50k keys), as much as reading the
    retrieved rows themselves (issue #6)."""
    nodes = np.linspace(-1.0, 1.0, 3 * cells + 1)  # cell c spans nodes 3c..3c+3
    probes = np.array([1 / 6, 1 / 2, 5 / 6])  # where a cubic through 4 nodes strays most
    with np.errstate(divide="ignore", invalid="ignore"):
        at_nodes = np.lib.stride_tricks.sliding_window_view(np.log(inclusion_probability(nodes, bits, tables)),
                                                            4)[::3]  # (cells, 4)
        cubic = at_nodes @ np.linalg.inv(np.vander(np.arange(4) / 3, 4, increasing=True)).T  # (cells, 4)
        exact = np.log(inclusion_probability(nodes[:-1:3, None] + probes * (2 / cells), bits, tables))
        stray = np.abs(cubic @ np.vander(probes, 4, increasing=True).T - exact).max(axis=1)
    cubic[~(stray <= 1e-10)] = np.nan  # NaN-safe: -inf (u = 0) and NaN rows fail too
    return cubic


def choose_tables(bits, budget, cosines, max_tables=4096):
    """Smallest L whose mean inclusion probability over sample `cosines` reaches `budget`.

    `cosines` are hashed cosines cos(q, k_i − c) for a sample of queries and keys; mean u is the
    expected fraction of keys touched. u grows with L, so bisect.
    """
    low, high = 2, max_tables
    if inclusion_probability(cosines, bits, high).mean() < budget:
        return max_tables
    while low < high:
        mid = (low + high) // 2
        if inclusion_probability(cosines, bits, mid).mean() >= budget:
            high = mid
        else:
            low = mid + 1
    return low


HUGE_PAGE = 2 << 20


def _aligned(rows, width):
    """Zeroed float32 (rows, width) whose rows start on 64-byte cache lines (width: multiple of 16).
    From 2 MB up: on 2 MB boundaries, in transparent huge pages where the kernel offers them
    (madvise). A read touches ~5% of the rows at random: with 4 KB pages nearly every row is a
    TLB miss; 2 MB pages cut a 50k-row gather at n = 10^6 from ~4.3 to ~3.7 ms (issue #6). Small
    arrays stay in ordinary pages, so that many small stores do not take 2 MB each."""
    nbytes = rows * width * 4
    if nbytes < HUGE_PAGE:
        raw = np.zeros(rows * width + 16, np.float32)
        skip = (-raw.ctypes.data % 64) // 4  # numpy's large buffers start 16 bytes past a line
        return raw[skip:skip + rows * width].reshape(rows, width)
    memory = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        memory.madvise(mmap.MADV_HUGEPAGE)
    skip = -np.frombuffer(memory, np.uint8, count=1).ctypes.data % HUGE_PAGE
    return np.frombuffer(memory, np.float32, count=rows * width, offset=skip).reshape(rows, width)


class PackedRows:
    """The rows an LSH read touches, one 64-byte-aligned row per key: the key, then the values,
    both in float16, two to a float32 word (`half`), or both in float32 once some key or value is
    out of float16's range (rows already stored keep their float16 rounding). 256 B a pair at
    dk = dv = 64: a random read of 25k rows at n = 10^6 takes 0.85 ms against 2.0 ms for 384 B
    rows (float32 keys) and more for two separate arrays (issue #6). float16 keys move β q·k by
    ~5e-6·β|q||k| (rounding 2^-12 per component, averaged over d); bench/mosaic.py reports
    how far o moves against reading float32 arrays."""

    def __init__(self, key_dim, value_dim):
        self.key_dim, self.value_dim, self.half = key_dim, value_dim, True
        self.rows = _aligned(0, self._width())

    def _words(self, dim):
        return (dim + 1) // 2 if self.half else dim

    @property
    def value_start(self):
        """The float32 word of a row where its values begin."""
        return self._words(self.key_dim)

    def _width(self):
        return -(-(self._words(self.key_dim) + self._words(self.value_dim)) // 16) * 16

    def _pack(self, keys, values):
        rows = _aligned(len(keys), self._width())
        for start, part in ((0, keys), (self.value_start, values)):
            words = self._words(part.shape[1])
            if self.half:
                halves = np.zeros((len(part), 2 * words), np.float16)
                halves[:, :part.shape[1]] = part
                part = halves.view(np.float32)
            rows[:, start:start + words] = part
        return rows

    def _unpack(self, start, dim):
        words = self.rows[:, start:start + self._words(dim)]
        return np.ascontiguousarray(words).view(np.float16)[:, :dim].astype(np.float32) if self.half \
            else np.array(words)

    def keys(self):
        """(n, dk) float32 keys as stored."""
        return self._unpack(0, self.key_dim)

    def values(self):
        """(n, dv) float32 values as stored."""
        return self._unpack(self.value_start, self.value_dim)

    def add(self, keys, values):
        keys, values = np.asarray(keys, np.float32), np.asarray(values, np.float32)
        if self.half and len(keys) and not max(np.abs(keys).max(), np.abs(values).max()) <= 65000:  # float16 max 65504
            stored = self.keys(), self.values()
            self.half = False
            self.rows = self._pack(*stored)
        fresh = self._pack(keys, values)
        rows = _aligned(len(self.rows) + len(fresh), self.rows.shape[1])
        rows[:len(self.rows)], rows[len(self.rows):] = self.rows, fresh
        self.rows = rows

    def keep(self, mask):
        rows = _aligned(int(mask.sum()), self.rows.shape[1])
        rows[:] = self.rows[mask]
        self.rows = rows


class SimHashIndex:
    """L SimHash tables over ids (rows of the store's keys/values), following commits.

    add/remove are O(L·n) array edits and invalidate the buckets, which the next retrieve
    rebuilds (a radix argsort per table, ~1 s per 10^5 keys·100 tables). The centre is fixed by
    the first add (or given), so codes never change under later commits. Not safe to mutate
    while another thread reads: the store should build a new index and swap, or lock.
    Memory: ~6·L bytes per key (uint16 codes + int32 bucket order), ~1.7 GB at n = 10^6, L = 283,
    plus the packed rows when added with values (2·dk + 2·dv bytes per key, rounded to 64).
    """

    def __init__(self, config: SimHashConfig, dim: int, centre=None):
        if not 1 <= config.bits <= 16 or config.tables < 2:
            raise InvalidArgument("SimHashConfig needs 1 <= bits <= 16 and tables >= 2")
        self.config = config
        rng = np.random.default_rng(config.seed)
        self.planes = rng.standard_normal((dim, config.tables * config.bits)).astype(np.float32)
        self.centre = None if centre is None else np.asarray(centre, np.float32)
        self.ids = np.empty(0, np.int64)
        self.norms = np.empty(0, np.float32)  # ||k_i − c||, to get hashed cosines from q·k_i
        self.codes = np.empty((config.tables, 0), np.uint16)  # (L, n) bucket of each key
        self._buckets = None  # (order (L, n), offsets (L, 2^K + 1)), built on demand
        self._spare = []  # `collide` scratch sets not in use (`_scratch`)
        self.packed = None  # PackedRows in step with ids, once add is given values

    def __len__(self):
        return len(self.ids)

    def _hash(self, x):
        """x (c, d) -> bucket codes (L, c): K sign bits per table packed into an integer.

        One vector (a query) is projected by einsum: BLAS would wake its threads for ~0.1 ms of
        work and leave them spinning on cores that the rest of the read needs (2-core hosts)."""
        projections = x @ self.planes if len(x) > 1 else np.einsum("cd,dk->ck", x, self.planes)  # (c, L·K)
        bits = (projections > 0).reshape(len(x), self.config.tables, self.config.bits)
        powers = (1 << np.arange(self.config.bits)).astype(np.float32)  # float matmul: exact, fast
        return (bits.astype(np.float32) @ powers).T.astype(np.uint16)

    def add(self, ids, keys, values=None, *, block=16384):
        """Hash keys under ids. With values (c, dv), the index also keeps a packed copy of the rows
        and reads that (`regress` then ignores its keys/values): give values on every add or never."""
        ids, keys = np.asarray(ids, np.int64), np.asarray(keys, np.float32)
        if keys.ndim != 2 or keys.shape[1] != self.planes.shape[0] or ids.shape != (len(keys),):
            raise InvalidArgument(f"add needs ids (c,) and keys (c, {self.planes.shape[0]})")
        if (values is None) != (self.packed is None) and len(self.ids):
            raise InvalidArgument("add: give values on every add or never")
        if values is not None:
            values = np.asarray(values, np.float32)
            if values.ndim != 2 or len(values) != len(keys):
                raise InvalidArgument("add needs values (c, dv) alongside keys (c, d)")
            self.packed = self.packed or PackedRows(keys.shape[1], values.shape[1])
            self.packed.add(keys, values)
        if self.centre is None:
            self.centre = keys.mean(axis=0) if self.config.centre else np.zeros(keys.shape[1], np.float32)
        shifted = keys - self.centre
        codes = [self._hash(shifted[s:s + block])
                 for s in tqdm(range(0, len(keys), block), desc="simhash", disable=len(keys) < 8 * block)]
        self.ids = np.concatenate([self.ids, ids])
        self.norms = np.concatenate([self.norms, np.linalg.norm(shifted, axis=1)])
        self.codes = np.concatenate([self.codes, *codes], axis=1)
        self._buckets = None

    def remove(self, ids):
        keep = ~np.isin(self.ids, np.asarray(ids, np.int64))
        self.ids, self.norms, self.codes = self.ids[keep], self.norms[keep], self.codes[:, keep]
        if self.packed is not None:
            self.packed.keep(keep)
        self._buckets = None

    def buckets(self):
        """All tables' slots sorted by code, end to end (a CSR of buckets): table t's bucket b is
        order[starts[t, b]:starts[t, b + 1]]. Built on first use after a change."""
        if self._buckets is None:
            self._build_buckets()
        return self._buckets

    def _build_buckets(self):
        tables, n = self.codes.shape
        order = np.argsort(self.codes, axis=1, kind="stable").astype(np.int32)  # radix sort on uint16
        counts = np.stack([np.bincount(c, minlength=1 << self.config.bits) for c in self.codes])
        starts = np.concatenate([np.zeros((tables, 1), np.int64), counts.cumsum(axis=1)], axis=1)
        self._buckets = order.ravel(), starts + n * np.arange(tables)[:, None]  # (L·n,), (L, 2^K + 1)

    def retrieve(self, q):
        """Keys sharing q's bucket in >= 2 tables -> (ids (c,), centred norms (c,)).

        Reads only the L buckets of q, never the other keys (`collide`)."""
        order, starts = self.buckets()
        codes = self._hash(np.asarray(q, np.float32)[None])  # (L, 1)
        with self._scratch() as (once, twice, buffer):
            slots = collide(codes[:, 0], order, starts, once, twice, buffer, 0, len(self.ids))
            return np.take(self.ids, slots), np.take(self.norms, slots)

    @contextmanager
    def _scratch(self):
        """Bitsets and a slot buffer for `collide`, one set per concurrent read, kept for the
        next: fresh ones page-fault on every read (~110 pages at n = 10^6)."""
        n = len(self.ids)
        try:
            scratch = self._spare.pop()
        except IndexError:
            scratch = None
        if scratch is None or len(scratch[2]) != n:
            scratch = (*bitsets(n), np.empty(n, np.int32))
        yield scratch
        self._spare.append(scratch)  # only after a read that finished: its bitsets are zero again

    def regress(self, queries, keys, values, beta, alive=None):
        """The MagicPIG estimate for each query: over the packed rows (`_regress_packed`) when the
        index keeps them, else over keys/values in one compiled pass (`read`).

        queries (m, d); keys (N, d), values (N, dv): rows addressed by this index's ids, read
        only when the index keeps no packed copy; alive (N,) bool or None: rows to keep (a
        version's mask, by id). -> (o (m, dv), lse_est (m,), retrieved (m,) int: keys used per
        query). The packed path computes in float32 whatever the queries' dtype."""
        mask = np.empty(0, np.bool_) if alive is None else np.asarray(alive, np.bool_)
        if self.packed is not None:
            return self._regress_packed(np.asarray(queries, np.float32), float(beta), mask)
        order, starts = self.buckets()
        codes = self._hash(np.asarray(queries, np.float32))  # (L, m)
        out = np.empty((len(queries), values.shape[1]), queries.dtype)
        lse = np.empty(len(queries), queries.dtype)
        retrieved = np.empty(len(queries), np.int64)
        read(queries, codes, order, starts, self.ids, self.norms, self._centre(), keys, values, float(beta),
              self.config.bits, self.config.tables, log_inclusion_table(self.config.bits, self.config.tables), mask,
              out, lse, retrieved)
        return out, lse, retrieved

    def _centre(self):
        return np.zeros(self.planes.shape[0]) if self.centre is None else self.centre.astype(np.float64)

    def _regress_packed(self, queries, beta, mask):
        """`regress` over `self.packed`, query by query. From `SPLIT_KEYS` keys up the slots are
        cut in two ranges at a multiple of 64 (whole bitset words) and each range is sampled whole
        (`sample_packed`: its share of the bucket walk, then the scoring of its retrieved rows) by
        this thread and `_scorer` at once: random reads wait on memory latency, two cores keep twice the reads in
        flight, and the ranges share nothing (own bitset words, own part of the slot buffer), so
        one hand-off per query covers both phases. The halves merge exactly through their
        max-shifted sums. (Finer ranges taken in turn by both threads were slower: 8 ranges 4.6 ms
        against 3.6 ms a query at n = 10^6.)"""
        order, starts = self.buckets()
        codes = self._hash(queries)  # (L, m)
        n = len(self.ids)
        log_u, centre = log_inclusion_table(self.config.bits, self.config.tables), self._centre()
        rows, dv = self.packed.rows, self.packed.value_dim
        middle = (n // 2) & ~63 if n >= SPLIT_KEYS else 0
        ranges = ((0, middle), (middle, n)) if middle else ((0, n),)
        out = np.empty((len(queries), dv), np.float32)
        lse = np.empty(len(queries), np.float32)
        retrieved = np.zeros(len(queries), np.int64)
        for m, q in enumerate(queries):
            with self._scratch() as (once, twice, buffer):
                args = (q, codes[:, m], order, starts, once, twice, buffer, self.ids, self.norms, rows, q.shape[0],
                        dv, self.packed.half, beta, float(q @ centre), float(np.linalg.norm(q.astype(np.float64))),
                        self.config.bits, self.config.tables, log_u, mask)
                other = [_scorer().submit(sample_packed, lo, hi, *args) for lo, hi in ranges[1:]]
                parts = [sample_packed(*ranges[0], *args)] + [f.result() for f in other]
            top = max(p[1] for p in parts)
            scales = [math.exp(p[1] - top) if p[2] > 0 else 0.0 for p in parts]
            total = sum(p[2] * scale for p, scale in zip(parts, scales))
            retrieved[m] = sum(p[3] for p in parts)
            if total > 0:
                out[m] = sum(p[0] * np.float32(scale) for p, scale in zip(parts, scales)) / total
                lse[m] = top + math.log(total)
            else:
                out[m], lse[m] = 0, -np.inf
        return out, lse, retrieved


# A store of at least this many keys is read by two threads; below, the hand-off costs more than
# it saves. Measured (issue #6, 5% budget): n = 10^5 one thread 0.65-0.88 ms a query, two
# 0.81-1.13 ms; n = 10^6 one 5.4-6.2 ms, two 3.7-4.2 ms.
SPLIT_KEYS = 262144


@functools.lru_cache(maxsize=1)
def _scorer():
    """The second thread of `SimHashIndex._regress_packed` (one per process: with two cores, more
    would only queue); `sample_packed` releases the GIL."""
    return ThreadPoolExecutor(1, thread_name_prefix="lsh-score")
