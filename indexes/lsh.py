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

A read is latency work on random rows (issue #6): it walks q's L buckets (`_collide`), then reads
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
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.cpython.unsafe.numbers import trailing_zeros
from numba.extending import intrinsic
from tqdm import tqdm

from memsvc.core.errors import InvalidArgument


@dataclass
class SimHashConfig:
    bits: int = 10  # K: bits per table; MagicPIG uses 8-10 (at most 16: codes are uint16)
    tables: int = 150  # L: size it for a budget with `choose_tables`
    seed: int = 0
    centre: bool = True  # hash keys minus their mean (the mean of the first batch added)


def _inclusion(cosine, bits, tables):
    """u(p) = P[at least 2 of L tables collide], p = 1 − arccos(cos)/π, in float64.

    1 − P[0] − P[1] cancels when L·p^K is small, and a retrieved key's weight is 1/u, so there
    we use the leading term C(L, 2) t² (1 − t)^(L−2) (relative error < L·t/3 < 1e-5).
    """
    p = 1.0 - math.acos(min(max(cosine, -1.0), 1.0)) / math.pi
    t = p**bits  # P[one table collides]
    miss = math.log1p(-min(t, 1.0 - 1e-16))  # log(1 − t), finite when p = 1
    if tables * t < 3e-5:
        return tables * (tables - 1) / 2 * t * t * math.exp((tables - 2) * miss)
    return -math.expm1(tables * miss) - tables * t * math.exp((tables - 1) * miss)


# One formula, compiled twice: a numpy ufunc (cosines of any shape; float64 inside whatever the
# input dtype) and a scalar for the kernel.
inclusion_probability = numba.vectorize(cache=True)(_inclusion)  # compiled on first call, not at import
_inclusion_scalar = numba.njit(cache=True)(_inclusion)


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
        self._spare = []  # `_collide` scratch sets not in use (`_scratch`)
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

        Reads only the L buckets of q, never the other keys (`_collide`)."""
        order, starts = self.buckets()
        codes = self._hash(np.asarray(q, np.float32)[None])  # (L, 1)
        with self._scratch() as (once, twice, buffer):
            slots = _collide(codes[:, 0], order, starts, once, twice, buffer, 0, len(self.ids))
            return np.take(self.ids, slots), np.take(self.norms, slots)

    @contextmanager
    def _scratch(self):
        """Bitsets and a slot buffer for `_collide`, one set per concurrent read, kept for the
        next: fresh ones page-fault on every read (~110 pages at n = 10^6)."""
        n = len(self.ids)
        try:
            scratch = self._spare.pop()
        except IndexError:
            scratch = None
        if scratch is None or len(scratch[2]) != n:
            scratch = (*_bitsets(n), np.empty(n, np.int32))
        yield scratch
        self._spare.append(scratch)  # only after a read that finished: its bitsets are zero again

    def regress(self, queries, keys, values, beta, alive=None):
        """The MagicPIG estimate for each query: over the packed rows (`_regress_packed`) when the
        index keeps them, else over keys/values in one compiled pass (`_read`).

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
        _read(queries, codes, order, starts, self.ids, self.norms, self._centre(), keys, values, float(beta),
              self.config.bits, self.config.tables, log_inclusion_table(self.config.bits, self.config.tables), mask,
              out, lse, retrieved)
        return out, lse, retrieved

    def _centre(self):
        return np.zeros(self.planes.shape[0]) if self.centre is None else self.centre.astype(np.float64)

    def _regress_packed(self, queries, beta, mask):
        """`regress` over `self.packed`, query by query. From `SPLIT_KEYS` keys up the slots are
        cut in two ranges at a multiple of 64 (whole bitset words) and each range is sampled whole
        (`_sample_packed`: its share of the bucket walk, then the scoring of its retrieved rows) by
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
                other = [_scorer().submit(_sample_packed, lo, hi, *args) for lo, hi in ranges[1:]]
                parts = [_sample_packed(*ranges[0], *args)] + [f.result() for f in other]
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
    would only queue); `_sample_packed` releases the GIL."""
    return ThreadPoolExecutor(1, thread_name_prefix="lsh-score")


def _bitsets(n):
    """Zeroed scratch for `_collide`: seen-once and seen-twice bits over n slots."""
    words = (n + 63) // 64
    return np.zeros(words, np.uint64), np.zeros(words, np.uint64)


@numba.njit(cache=True, nogil=True)
def _collide(code, order, starts, once, twice, slots, lo, hi):
    """Slots in [lo, hi) sharing a bucket with `code` (L,) in >= 2 tables, ascending: writes them
    to slots[lo:] and returns them. once, twice: `_bitsets`, zero on entry and on exit in the words
    of [lo, hi); lo is a multiple of 64, so callers with disjoint ranges share the bitsets. A
    bucket's slots are ascending (a stable sort), so binary search finds the range in each.

    Two bitsets (125 KB each at n = 10^6, in L2) rather than a byte counter per slot (1 MB): the
    list comes from scanning the seen-twice words, skipping zero ones, and only those words are
    cleared (2.7 -> 1.9 ms a query at n = 10^6, 328k collisions, issue #6). Ascending slots make
    the row reads that follow move forward through memory."""
    for t in range(code.shape[0]):
        first, end = starts[t, code[t]], starts[t, code[t] + 1]
        bucket = order[first:end]
        for j in range(first + np.searchsorted(bucket, lo), first + np.searchsorted(bucket, hi)):
            s = order[j]
            bit = np.uint64(1) << np.uint64(s & 63)
            twice[s >> 6] |= once[s >> 6] & bit
            once[s >> 6] |= bit
    count = lo
    for w in range(lo >> 6, (hi + 63) >> 6):
        bits = twice[w]
        if bits:
            twice[w] = 0
            while bits:
                slots[count] = (w << 6) + trailing_zeros(bits)
                count += 1
                bits &= bits - np.uint64(1)
    once[lo >> 6:(hi + 63) >> 6] = 0
    return slots[lo:count]


@intrinsic
def _prefetch(typingctx, array, index):
    """Ask the CPU for the cache line of array[index] now (llvm.prefetch: read, keep cached);
    index: an integer or a tuple of them."""

    def codegen(context, builder, signature, args):
        array_type, index_type = signature.args
        array = context.make_array(array_type)(context, builder, args[0])
        if isinstance(index_type, types.BaseTuple):
            index = [context.cast(builder, a, t, types.intp)
                     for a, t in zip(cgutils.unpack_tuple(builder, args[1]), index_type.types)]
        else:
            index = [context.cast(builder, args[1], index_type, types.intp)]
        pointer = cgutils.get_item_pointer(context, builder, array_type, array, index)
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                            "llvm.prefetch.p0i8")
        builder.call(fn, [builder.bitcast(pointer, i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return types.void(array, index), codegen


@intrinsic
def _half(typingctx, rows, row, j):
    """The j-th float16 of rows[row] (float32 words holding float16 pairs, low half first) as a
    float32. One float16 per call keeps a row's loop contiguous, so LLVM vectorises it into
    8-wide F16C conversions: scoring 2.9x faster than unpacking a word's two halves together."""

    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        array = context.make_array(array_type)(context, builder, args[0])
        start = [context.cast(builder, args[1], signature.args[1], types.intp), context.get_constant(types.intp, 0)]
        halves = builder.bitcast(cgutils.get_item_pointer(context, builder, array_type, array, start),
                                 ir.IntType(16).as_pointer())
        bits = builder.load(builder.gep(halves, [context.cast(builder, args[2], signature.args[2], types.intp)]))
        return builder.fpext(builder.bitcast(bits, ir.HalfType()), ir.FloatType())

    return types.float32(rows, row, j), codegen


@numba.njit(cache=True, nogil=True, inline="always")  # as a call: ~25% of the scoring pass
def _log_inclusion(cosine, log_u, bits, tables):
    """log u_i from the `log_inclusion_table` cubics, or exactly where they are NaN (or cos ∉ [-1, 1])."""
    if -1.0 <= cosine <= 1.0:
        x = (cosine + 1.0) * (log_u.shape[0] / 2)
        cell = min(int(x), log_u.shape[0] - 1)
        x -= cell
        if log_u[cell, 0] == log_u[cell, 0]:
            return log_u[cell, 0] + x * (log_u[cell, 1] + x * (log_u[cell, 2] + x * log_u[cell, 3]))
    return math.log(_inclusion_scalar(cosine, bits, tables))


@numba.njit(cache=True, nogil=True, inline="always")
def _online_weight(score, cosine, top, total, acc, log_u, bits, tables):
    """One retrieved key of the online softmax, score = β q·k_i: -> (top, total, w_i / e^top) with
    top the running max and total Σ w / e^top so far; acc is rescaled in place when top grows."""
    if score > top:
        scale = math.exp(top - score)
        total *= scale
        acc *= acc.dtype.type(scale)
        top = score
    weight = math.exp(score - top - _log_inclusion(cosine, log_u, bits, tables))
    return top, total + weight, weight


# Rows asked for ahead of use: enough to keep several random reads in flight, few enough that
# they are still cached when used (4 and 8 measured alike at n = 10^6, d = 64; none: 1.6x slower).
_AHEAD = 4


@numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _weigh(q, slots, rows, norms, keys, values, beta, shift, q_norm, bits, tables, log_u, alive):
    """-> (Σ_S w_i v_i / e^top (dv,), top, Σ_S w_i / e^top, |S|), w_i = exp(β q·k_i)/u_i over
    the retrieved slots (rows: their ids) whose rows are alive (all when `alive` is empty).
    One pass, each row read once: top is the running max of β q·k (online softmax; acc is
    rescaled when it grows). Dot products and acc in the store's dtype, weights and u in float64."""
    top, total, kept = -np.inf, 0.0, 0
    acc = np.zeros(values.shape[1], values.dtype)  # local: no aliasing with the rows, so it vectorises
    for i in range(slots.shape[0]):
        if i + _AHEAD < slots.shape[0]:  # random rows: prefetch, or wait for each in turn
            ahead = rows[i + _AHEAD]
            for j in range(0, keys.shape[1], 64 // keys.itemsize):  # each 64-byte line of the row
                _prefetch(keys, (ahead, j))
            for j in range(0, values.shape[1], 64 // values.itemsize):
                _prefetch(values, (ahead, j))
            _prefetch(norms, slots[i + _AHEAD])
        row = rows[i]
        if alive.shape[0] and not alive[row]:
            continue
        kept += 1
        dot = keys.dtype.type(0)
        for j in range(keys.shape[1]):
            dot += q[j] * keys[row, j]
        cosine = (dot - shift) / (q_norm * max(norms[slots[i]], 1e-12))  # the hashed cosine
        top, total, weight = _online_weight(beta * np.float64(dot), cosine, top, total, acc, log_u, bits, tables)
        w = values.dtype.type(weight)
        for j in range(values.shape[1]):
            acc[j] += w * values[row, j]
    return acc, top, total, kept


@numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _weigh_packed(q, slots, ids, norms, rows, dk, dv, half, beta, shift, q_norm, bits, tables, log_u, alive):
    """`_weigh` over a `PackedRows` copy: row slots[i] holds the key (dk values) then the dv values,
    float16 pairs in float32 words when `half`, else float32; ids (n,): every slot's id, for
    `alive`. float32 sums."""
    top, total, kept = -np.inf, 0.0, 0
    key_words = np.uint64((dk + 1) // 2 if half else dk)
    acc = np.zeros(dv, np.float32)
    for i in range(slots.shape[0]):
        if i + _AHEAD < slots.shape[0]:
            for j in range(0, rows.shape[1], 16):  # each 64-byte line of the row
                _prefetch(rows, (slots[i + _AHEAD], j))
            _prefetch(norms, slots[i + _AHEAD])
        row = np.uint64(slots[i])  # unsigned indexes skip numba's negative-index wraparound, which kept
        if alive.shape[0] and not alive[ids[row]]:  # the row loops from vectorising (scoring 1.8x slower)
            continue
        kept += 1
        dot = np.float32(0)
        if half:
            for j in range(dk):
                dot += q[j] * _half(rows, row, j)
        else:
            for j in range(key_words):
                dot += q[j] * rows[row, j]
        cosine = (dot - shift) / (q_norm * max(norms[row], 1e-12))  # the hashed cosine
        top, total, weight = _online_weight(beta * np.float64(dot), cosine, top, total, acc, log_u, bits, tables)
        w = np.float32(weight)
        if half:
            for j in range(dv):
                acc[j] += w * _half(rows, row, 2 * key_words + j)
        else:
            for j in range(dv):
                acc[j] += w * rows[row, key_words + j]
    return acc, top, total, kept


@numba.njit(cache=True, nogil=True)
def _sample_packed(lo, hi, q, code, order, starts, once, twice, buffer, ids, norms, rows, dk, dv, half, beta, shift,
                   q_norm, bits, tables, log_u, alive):
    """`_collide` over slots [lo, hi), then `_weigh_packed` over what it retrieved: one range's
    whole read, GIL released."""
    slots = _collide(code, order, starts, once, twice, buffer, lo, hi)
    return _weigh_packed(q, slots, ids, norms, rows, dk, dv, half, beta, shift, q_norm, bits, tables, log_u, alive)


@numba.njit(cache=True, nogil=True)
def _read(queries, codes, order, starts, ids, norms, centre, keys, values, beta, bits, tables, log_u, alive, out, lse,
          retrieved):
    """For each query m: S = `_collide` of its codes[:, m], then `_weigh` over S. Writes
    out[m] = Σ_S w_i v_i / Σ_S w_i, lse[m] = log Σ_S w_i and retrieved[m] = |S| (0, -inf, 0 when
    S is empty: the empty-shard convention). Scratch is per call, so reads may run in parallel."""
    once = np.zeros((ids.shape[0] + 63) // 64, np.uint64)
    twice = np.zeros_like(once)
    buffer = np.empty(ids.shape[0], np.int32)
    for m in range(queries.shape[0]):
        q = queries[m].astype(keys.dtype)
        shift = (q.astype(np.float64) * centre).sum()  # hashed cosine = (q·k − q·c) / (|q| |k − c|)
        q_norm = math.sqrt((q.astype(np.float64) ** 2).sum())
        slots = _collide(codes[:, m], order, starts, once, twice, buffer, 0, ids.shape[0])
        # ids gathered first: read inside the loop they delay each prefetch by a dependent load
        acc, top, total, retrieved[m] = _weigh(q, slots, ids[slots], norms, keys, values, beta, shift, q_norm,
                                               bits, tables, log_u, alive)
        if total > 0:
            out[m] = acc / total
            lse[m] = top + math.log(total)
        else:
            out[m] = 0
            lse[m] = -np.inf
