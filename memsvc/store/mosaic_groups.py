"""One (layer, head) group of a Memory Mosaic store in memory (mosaic.py): its pairs as arrays
over slots (Pairs), what a commit changes in it (GroupChange), and an index that follows its
newest pairs (FollowingIndex)."""
import threading
from dataclasses import dataclass

import numpy as np

from memsvc.core.errors import NotFound
from memsvc.store.commit_log import NEVER, alive

@dataclass(frozen=True)
class Pairs:
    """One (layer, head) group as arrays over slots. Immutable: a commit swaps in a new one, so
    a reader that took it sees one consistent state."""

    ids: np.ndarray  # (s,) int64
    keys: np.ndarray  # (s, dk) float32, unit rows
    values: np.ndarray  # (s, dv) float32
    labels: tuple  # (s,) str
    added_in: np.ndarray  # (s,) int64
    removed_in: np.ndarray  # (s,) int64, NEVER while alive

    @classmethod
    def empty(cls, key_dim, value_dim):
        return cls(np.zeros(0, np.int64), np.zeros((0, key_dim), np.float32), np.zeros((0, value_dim), np.float32),
                   (), np.zeros(0, np.int64), np.zeros(0, np.int64))

    def alive(self, version) -> np.ndarray:
        return alive(self.added_in, self.removed_in, version)

    def live(self, alive) -> tuple:
        """(keys, values) of the slots in `alive`; no copy when every slot is alive (the common head read)."""
        if alive.all():
            return self.keys, self.values
        return self.keys[alive], self.values[alive]

    def last_change(self) -> int:
        """The newest commit that changed this group (0 for none)."""
        closed = self.removed_in[self.removed_in < NEVER]
        return int(max(self.added_in.max(initial=0), closed.max(initial=0)))

    def slots_of(self, ids, version, field="ids") -> np.ndarray:
        """Slots of pair ids alive at a version; NotFound names the first missing id."""
        alive = np.flatnonzero(self.alive(version))
        slot_of = dict(zip(self.ids[alive].tolist(), alive.tolist()))
        missing = [i for i in ids.tolist() if i not in slot_of]
        if missing:
            raise NotFound(f"{field}: pair id {missing[0]} does not exist at version {version}")
        return np.array([slot_of[i] for i in ids.tolist()], dtype=np.int64)

    def changed(self, version, remove_slots, ids, keys, values, labels) -> "Pairs":
        removed_in = self.removed_in.copy()
        removed_in[remove_slots] = version
        return Pairs(np.concatenate([self.ids, ids]), np.concatenate([self.keys, keys]),
                     np.concatenate([self.values, values]), self.labels + tuple(labels),
                     np.concatenate([self.added_in, np.full(len(ids), version, np.int64)]),
                     np.concatenate([removed_in, np.full(len(ids), NEVER, np.int64)]))


@dataclass
class GroupChange:
    """What one commit does to one group: close some slots, append some pairs."""

    layer: int
    head: int
    remove_slots: np.ndarray
    ids: np.ndarray
    keys: np.ndarray
    values: np.ndarray
    labels: list

    def __len__(self):
        return len(self.remove_slots) + len(self.ids)


class FollowingIndex:
    """An index over a group's slots brought up to date (add / remove) right before each use.
    `make(slots, keys)` builds it (`make(slots, keys, values)` and `add(slots, keys, values)` for
    an index that keeps its own copy of the rows: `values`); callers hold `lock` from sync to the
    end of the search."""

    def __init__(self, make, values=False):
        self.make, self.index, self.covered, self.lock = make, None, np.zeros(0, bool), threading.Lock()
        self.values = values

    def sync(self, pairs: Pairs, target: np.ndarray) -> int:
        """Make the index hold exactly the slots in `target`; returns how many it had to change."""
        covered = np.zeros(len(target), bool)
        covered[:len(self.covered)] = self.covered
        add, drop = np.flatnonzero(target & ~covered), np.flatnonzero(covered & ~target)
        rows = (pairs.keys[add], pairs.values[add]) if self.values else (pairs.keys[add],)  # slots never change
        if self.index is None and len(add):
            self.index = self.make(add, *rows)
        elif len(add):
            self.index.add(add, *rows)
        if len(drop):
            self.index.remove(drop)
        self.covered = target.copy()
        return len(add) + len(drop)
