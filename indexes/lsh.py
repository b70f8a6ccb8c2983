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
"""

from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from memsvc.errors import InvalidArgument


@dataclass
class SimHashConfig:
    bits: int = 10  # K: bits per table; MagicPIG uses 8-10 (at most 16: codes are uint16)
    tables: int = 150  # L: size it for a budget with `choose_tables`
    seed: int = 0
    centre: bool = True  # hash keys minus their mean (the mean of the first batch added)


def inclusion_probability(cosines, bits, tables):
    """u(p) = P[at least 2 of L tables collide], p = 1 − arccos(cos)/π, in float64.

    1 − P[0] − P[1] cancels when L·p^K is small, and a retrieved key's weight is 1/u, so there
    we use the leading term C(L, 2) t² (1 − t)^(L−2) (relative error < L·t/3 < 1e-5).
    """
    p = 1.0 - np.arccos(np.clip(np.asarray(cosines, np.float64), -1.0, 1.0)) / np.pi
    t = p**bits  # P[one table collides]
    miss = np.log1p(-np.minimum(t, 1.0 - 1e-16))  # log(1 − t), finite when p = 1
    u = -np.expm1(tables * miss) - tables * t * np.exp((tables - 1) * miss)
    rare = tables * (tables - 1) / 2 * t**2 * np.exp((tables - 2) * miss)
    return np.where(tables * t < 3e-5, rare, u)


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


class SimHashIndex:
    """L SimHash tables over ids (rows of the store's keys/values), following commits.

    add/remove are O(L·n) array edits and invalidate the buckets, which the next retrieve
    rebuilds (a radix argsort per table, ~1 s per 10^5 keys·100 tables). The centre is fixed by
    the first add (or given), so codes never change under later commits. Not safe to mutate
    while another thread reads: the store should build a new index and swap, or lock.
    Memory: ~6·L bytes per key (uint16 codes + int32 bucket order), ~1.7 GB at n = 10^6, L = 283.
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

    def add(self, ids, keys, *, block=16384):
        ids, keys = np.asarray(ids, np.int64), np.asarray(keys, np.float32)
        if keys.ndim != 2 or keys.shape[1] != self.planes.shape[0] or ids.shape != (len(keys),):
            raise InvalidArgument(f"add needs ids (c,) and keys (c, {self.planes.shape[0]})")
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
        self._buckets = None

    def _build_buckets(self):
        """All tables' slots sorted by code, end to end (a CSR of buckets): table t's bucket b is
        order[starts[t, b]:starts[t, b + 1]]."""
        tables, n = self.codes.shape
        order = np.argsort(self.codes, axis=1, kind="stable").astype(np.int32)  # radix sort on uint16
        counts = np.stack([np.bincount(c, minlength=1 << self.config.bits) for c in self.codes])
        starts = np.concatenate([np.zeros((tables, 1), np.int64), counts.cumsum(axis=1)], axis=1)
        self._buckets = order.ravel(), starts + n * np.arange(tables)[:, None]  # (L·n,), (L, 2^K + 1)

    def retrieve(self, q):
        """Keys sharing q's bucket in >= 2 tables -> (ids (c,), centred norms (c,)).

        Reads only the L buckets of q, never the other keys. Collisions are counted with
        bincount into an n-slot scratch (one memset): ~5x faster in numpy than sorting them, and
        than a reused scratch written at the hit slots only (numpy's scatter is slow).
        """
        if self._buckets is None:
            self._build_buckets()
        order, starts = self._buckets
        code = self._hash(np.asarray(q, np.float32)[None])[:, 0].astype(np.int64)  # (L,) q's bucket per table
        bucket = starts[np.arange(len(code)), code]
        end = starts[np.arange(len(code)), code + 1]
        hits = np.concatenate([order[a:b] for a, b in zip(bucket.tolist(), end.tolist())])  # (Σ bucket sizes,)
        slots = np.flatnonzero(np.bincount(hits, minlength=len(self.ids)) >= 2)
        return np.take(self.ids, slots), np.take(self.norms, slots)

    def inclusion_probability(self, q, q_dot_keys, centred_norms):
        """u_i from q·k_i: cos(q, k_i − c) = (q·k_i − q·c) / (||q|| ||k_i − c||)."""
        q = np.asarray(q, np.float64)
        shift = 0.0 if self.centre is None else q @ self.centre  # None: nothing added yet
        cosines = (q_dot_keys - shift) / (np.linalg.norm(q) * np.maximum(centred_norms, 1e-12))
        return inclusion_probability(cosines, self.config.bits, self.config.tables)
