"""What an index covers, read at a version: a bank layer (BankLayer) or a mosaic group
(MosaicGroup). Both answer the same questions (which ids exist, their rows, their names, which
ids changed between two versions), so the manager handles either without asking which."""
import bisect
from functools import lru_cache

import numpy as np

from editing.tokens import Vocabulary

from memsvc.core.dtypes import to_float32
from memsvc.core.errors import InvalidArgument, NotFound
from memsvc.core.search import place, where_of
from memsvc.core.values import split_tokens


@lru_cache(maxsize=4)
def tokenized_vocabulary(t, version) -> Vocabulary:
    """The words of bank table ``t`` at a version with the tokenizer it was imported with."""
    return Vocabulary.stored([w if a else "" for w, a in zip(t.words, t.alive(version))], t.tokenizer)


def alive(t, ids, version):
    """Which of ids exist at a version; FailedPrecondition where a lifetime is damaged (lifetimes.py)."""
    if t.lifetime_damage:
        t.check_lifetimes(np.atleast_1d(ids).tolist(), version)
    return _alive(t, ids, version)


def alive_ids(t, version) -> np.ndarray:
    """Token ids that exist at a version (an inject may be growing the arrays right now);
    FailedPrecondition when the lifetime of any token is damaged there."""
    if t.lifetime_damage:
        t.check_lifetimes(None, version)
    n = min(len(t.added_in), len(t.removed_in))
    return np.flatnonzero(_alive(t, np.arange(n), version))


def _alive(t, ids, version):
    return (t.added_in[ids] <= version) & (t.removed_in[ids] > version)


def layer_rows(t, ids, version, layer, chunk=4096):
    """float32 rows (n, d) of token ids in one layer at a version, read in chunks of at most
    ``chunk`` tokens and the store's chunk of bytes. A dense ascending run of ids (an index build
    or an exact search reads every alive token) is read sequentially (TableState.rows_in_range):
    the base's map is advised for random lookups, without read-ahead."""
    out = np.empty((len(ids), t.dim), np.float32)
    step = min(chunk, t.chunk_tokens())
    for start in range(0, len(ids), step):
        part = ids[start:start + step]
        lo, hi = int(part[0]), int(part[-1]) + 1
        if hi - lo <= 2 * len(part) and np.all(np.diff(part) > 0):
            rows = t.rows_in_range(lo, hi, version)[part - lo, layer]
        else:
            rows = t.gather(part, version)[:, layer]
        out[start:start + len(part)] = to_float32(rows, t.dtype)
    return out


def commits_since(t, version) -> int:
    """How many commits after `version` changed the table's rows or vocabulary."""
    commits = {c for cs, _ in list(t.history.values()) for c in cs[bisect.bisect_right(cs, version):]}
    commits |= set(t.added_in[t.added_in > version].tolist()) | set(t.removed_in[(t.removed_in > version) & (t.removed_in < 2**62)].tolist())
    return len(commits)


# ---------------------------------------------------------------- the two kinds of source

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
        ids = self.t.check_ids(ids + [self.word_id(w, version) for w in words], version, "token_ids")
        return self.rows(ids, version)

    def word_id(self, word, version) -> int:
        """A typed word: the exact token, else, for a table imported with its tokenizer, the one
        piece the tokenizer reads for it in running text ("Paris" -> "paris" uncased, "ĠSpain")."""
        try:
            return self.t.id_of(word, version, "tokens")
        except NotFound:
            if not self.t.tokenizer[0]:
                raise
        return tokenized_vocabulary(self.t, version).resolve(word, "tokens")


class MosaicGroup:
    """One (layer, head) group of a mosaic store as the manager reads it: ids are pair ids (a
    replace keeps the id and changes the key), rows are unit keys, names are labels. Reads one
    immutable Pairs snapshot, so a commit landing meanwhile changes nothing here."""

    kind = "mosaic"

    def __init__(self, t, layer, head):
        self.pairs = t.group(layer, head)  # OutOfRange names `layer` or `head`
        self.check_intact = lambda version: t.check_intact(layer, head, version)  # a damaged pair: never searched
        self.dim, self.where = t.key_dim, where_of(t.name, layer, head)
        self.cache_key = (t.name, t.created_in, int(layer), int(head))
        self._by_id = {}  # version -> (sorted pair ids alive there, their slots)

    def _alive_at(self, version):
        if version not in self._by_id:
            self.check_intact(version)
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

