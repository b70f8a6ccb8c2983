"""Which tokens the server reads most often, per table: what a worker's cache should hold from its
first step (issue 17 item 5). Token frequencies are Zipfian, so a worker that learns them in its own
short generation starts cold; the server sees every worker's lookups.

Memory is fixed whatever the traffic: a count-min sketch (depth x width counters, conservative
update, so a count is over-estimated only by collisions that raised every one of its cells) and a
list of the `heavy` tokens with the highest estimates (the "count-min + heap" heavy hitters of
Cormode & Muthukrishnan, 2005). A Lookup appends the ids it served to a short list; the one that
fills it to `flush_tokens` folds the list into the sketch, where numpy's per-call cost is shared by
thousands of ids (bench/hot_tokens.py: 0.15-0.4 us a request position, flushes included, on 2
loaded cores). Other Lookups never wait for a flush.
A count is how many times a token was requested (request positions, duplicates included), so
it does not depend on how workers batch their lookups. Counts start at 0 when the server starts.
"""
import threading
from dataclasses import dataclass

import numpy as np

from memsvc.core.errors import InvalidArgument


@dataclass
class SketchConfig:
    depth: int = 4  # hash rows: a count errs by more than e/width x total with probability e^-depth
    width_bits: int = 16  # 65,536 counters a row: 4 x 65,536 x 8 B = 2 MiB a table
    heavy: int = 16384  # tokens tracked with their estimates: HotTokens answers at most this many
    flush_tokens: int = 16384  # served ids buffered before the sketch takes them


class TokenSketch:
    """Estimated request counts of token ids in fixed memory; thread-safe."""

    def __init__(self, config: SketchConfig = SketchConfig(), seed: int = 0):
        self.config = config
        rng = np.random.default_rng(seed)
        # multiply-shift hashing (Dietzfelbinger et al.): odd 64-bit multipliers, the top bits index a row
        self.mul = rng.integers(1, 2**63, size=(config.depth, 1), dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self.add = rng.integers(0, 2**63, size=(config.depth, 1), dtype=np.uint64)
        self.shift = np.uint64(64 - config.width_bits)
        self.offsets = (np.arange(config.depth, dtype=np.int64) << config.width_bits)[:, None]  # row r's first cell
        self.counters = np.zeros(config.depth << config.width_bits, dtype=np.int64)
        self.heavy_ids = np.zeros(0, dtype=np.int64)  # sorted by id
        self.heavy_counts = np.zeros(0, dtype=np.int64)  # estimates of heavy_ids
        self.total = 0  # requested positions counted
        self.pending, self.pending_tokens = [], 0
        self.lock = threading.Lock()  # guards pending: a Lookup never waits for another's flush
        self.sketch_lock = threading.RLock()  # guards the counters and the heavy list (top holds it to flush)

    def record(self, ids: np.ndarray, inverse: np.ndarray | None = None):
        """Count one lookup: ``ids`` once each, or ``ids[inverse]`` (one per request position)."""
        with self.lock:
            self.pending.append((ids, inverse))
            self.pending_tokens += len(ids) if inverse is None else len(inverse)
            if self.pending_tokens < self.config.flush_tokens:
                return
        self._flush()

    def top(self, n: int, alive: np.ndarray) -> tuple:
        """(token ids, estimated counts, positions counted): the n most requested tokens with
        alive[id] true, most requested first (fewer when fewer are tracked); an estimate is never
        below the true count."""
        with self.sketch_lock:
            self._flush()
            ids, counts = self.heavy_ids, self.heavy_counts
            keep = alive[np.minimum(ids, len(alive) - 1)] & (ids < len(alive))
            ids, counts = ids[keep], counts[keep]
            order = np.argsort(-counts, kind="stable")[:n]
            return ids[order], counts[order], self.total

    def _cells(self, ids):
        """(depth, n) indexes into counters of each id's cell in each row."""
        hashed = (self.mul * ids.astype(np.uint64)[None, :] + self.add) >> self.shift  # wraps mod 2^64
        return hashed.astype(np.int64) + self.offsets

    def _flush(self):
        """The pending ids into the sketch; ids sorted and counted before taking sketch_lock."""
        with self.lock:
            pending, self.pending, self.pending_tokens = self.pending, [], 0
        if not pending:
            return
        ids, counts = np.unique(np.concatenate([u if inv is None else u[inv] for u, inv in pending]), return_counts=True)
        cells = self._cells(ids)
        with self.sketch_lock:
            # conservative update: raise each cell only to the token's new estimate
            estimates = self.counters[cells].min(axis=0) + counts
            for row in cells:
                np.maximum.at(self.counters, row, estimates)
            self.total += int(counts.sum())
            self._track(ids, estimates)

    def _track(self, ids, estimates):
        """Keep the `heavy` tokens with the highest estimates (ids sorted, estimates refreshed).
        ids: sorted, unique. Newcomers are merged in, not re-sorted with the list (16,384 ids
        argsorted at every flush was half of its time)."""
        at = np.searchsorted(self.heavy_ids, ids)
        known = at < len(self.heavy_ids)
        known[known] = self.heavy_ids[at[known]] == ids[known]
        self.heavy_counts[at[known]] = estimates[known]
        new_ids, new_counts = ids[~known], estimates[~known]
        heavy = self.config.heavy
        if len(self.heavy_ids) >= heavy:
            enter = new_counts > self.heavy_counts.min()
            new_ids, new_counts = new_ids[enter], new_counts[enter]
        if not len(new_ids):
            return
        old_ids, old_counts = self.heavy_ids, self.heavy_counts
        if len(old_ids) + len(new_ids) > heavy:  # the highest `heavy` of both stay, in their order
            both = np.concatenate([old_counts, new_counts])
            stays = np.zeros(len(both), dtype=bool)
            stays[np.argpartition(-both, heavy - 1)[:heavy]] = True
            old, new = stays[:len(old_ids)], stays[len(old_ids):]
            old_ids, old_counts, new_ids, new_counts = old_ids[old], old_counts[old], new_ids[new], new_counts[new]
        where = np.searchsorted(old_ids, new_ids)
        self.heavy_ids, self.heavy_counts = np.insert(old_ids, where, new_ids), np.insert(old_counts, where, new_counts)


class HotTokens:
    """A TokenSketch per table, made on the table's first lookup (KnowledgeServicer.Lookup feeds it)."""

    def __init__(self, config: SketchConfig = SketchConfig()):
        self.config = config
        self.sketches = {}
        self.lock = threading.Lock()

    def record(self, table: str, result):
        """Count the tokens a LookupResult served (one per request position)."""
        sketch = self.sketches.get(table)
        if sketch is None:
            with self.lock:
                sketch = self.sketches.setdefault(table, TokenSketch(self.config))
        sketch.record(result.unique_ids, None if result.ordered else result.inverse)

    def top(self, table: str, n: int, alive: np.ndarray) -> tuple:
        """(ids, estimated counts, positions counted) of the table's n most requested tokens
        among those with alive[id] true (a token removed since, or not yet injected, is left out)."""
        if n <= 0:
            raise InvalidArgument(f"n: must be at least 1, got {n}")
        sketch = self.sketches.get(table)
        if sketch is None:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), 0
        return sketch.top(min(n, self.config.heavy), alive)
