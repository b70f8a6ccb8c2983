"""One bank table in memory (TableState): memory-mapped base arrays, the vocabulary with each
token's lifetime, and the full-row history of edits, so that any retained version is read
without touching SQLite."""
import bisect

import numpy as np

from memsvc.core.errors import InvalidArgument, NotFound, OutOfRange
from memsvc.store.commit_log import NEVER, alive


class TableState:
    """One table in memory: its bases (mmapped), vocabulary and the full-row history of edits."""

    def __init__(self, name, kind, dtype, dim, num_layers, created_in):
        self.name, self.kind, self.dtype = name, kind, dtype
        self.dim, self.num_layers, self.created_in = dim, num_layers, created_in
        self.bases = []  # [(version, array (V, L, d))] sorted by version
        self.words = []  # token id -> word
        self.ids_of_word = {}  # word -> [token ids] (a removed word may come back with a new id)
        self.added_in = np.zeros(0, dtype=np.int64)
        self.removed_in = np.zeros(0, dtype=np.int64)
        self.history = {}  # token id -> ([commit ids], [full rows (L, d) storage dtype])
        self.edited = np.zeros(0, dtype=bool)
        self._word_array = np.array([""], dtype=object)  # see word_array()
        self.model_layers = []  # the transformer layer each table layer feeds (from an imported model), or []
        self.tokenizer = ("", b"")  # (kind, file bytes) of the tokenizer imported with the table; kind "" = a word list

    def add_tokens(self, words, added_in):
        start = len(self.words)
        for i, w in enumerate(words):
            self.words.append(w)
            self.ids_of_word.setdefault(w, []).append(start + i)
        n = len(words)
        self.added_in = np.concatenate([self.added_in, np.full(n, added_in, dtype=np.int64)])
        self.removed_in = np.concatenate([self.removed_in, np.full(n, NEVER, dtype=np.int64)])
        self.edited = np.concatenate([self.edited, np.zeros(n, dtype=bool)])

    def word_array(self) -> np.ndarray:
        """Words by token id with '' at index -1, so that ``word_array()[ids]`` names an array of
        hits (padding -1 included) in one numpy take instead of a Python loop per id. Words are
        only ever appended, so a copy of the right length is current."""
        array = self._word_array
        if len(array) != len(self.words) + 1:
            array = self._word_array = np.array(self.words + [""], dtype=object)
        return array

    def base_at(self, version):
        i = bisect.bisect_right([b for b, _ in self.bases], version) - 1
        return self.bases[i]

    def vocab_size(self, version):
        return int(np.count_nonzero(self.alive(version)))

    def alive(self, version) -> np.ndarray:
        return alive(self.added_in, self.removed_in, version)

    def check_ids(self, ids, version, field="token_ids"):
        ids = np.asarray(ids, dtype=np.int64)
        if ids.ndim != 1:
            raise InvalidArgument(f"{field}: expected a flat list of token ids")
        bad = ids[(ids < 0) | (ids >= len(self.words))]
        if len(bad):
            raise OutOfRange(f"{field}: token id {int(bad[0])} out of range [0, {len(self.words)}) for table {self.name!r}")
        gone = ids[~alive(self.added_in[ids], self.removed_in[ids], version)]
        if len(gone):
            raise OutOfRange(f"{field}: token id {int(gone[0])} does not exist in table {self.name!r} at version {version}")
        return ids

    def id_of(self, word, version, field="token"):
        for token_id in reversed(self.ids_of_word.get(word, [])):
            if alive(self.added_in[token_id], self.removed_in[token_id], version):
                return token_id
        raise NotFound(f"{field}: unknown token {word!r} in table {self.name!r}")

    def check_layers(self, layers, field="layers"):
        if layers is None or len(layers) == 0:
            return None
        if all(type(x) is int and 0 <= x < self.num_layers for x in layers):  # the usual case, without
            return np.array(layers, dtype=np.int64)  # numpy's compares (~40 us after a search, issue 5)
        arr = np.asarray(layers, dtype=np.int64)
        bad = arr[(arr < 0) | (arr >= self.num_layers)]
        if len(bad):
            raise OutOfRange(f"{field}: layer {int(bad[0])} out of range [0, {self.num_layers}) for table {self.name!r}")
        return arr

    def edited_row(self, token_id, version, base_version):
        """The full row a commit in (base_version, version] wrote last, or None."""
        entry = self.history.get(int(token_id))
        if entry is None:
            return None
        commits, rows = entry
        j = bisect.bisect_right(commits, version) - 1
        return rows[j] if j >= 0 and commits[j] > base_version else None

    def gather(self, ids, version, out=None):
        """Rows (n, L, d) of token ids at a version, storage dtype (a copy, into ``out`` if given)."""
        base_version, base = self.base_at(version)
        rows = np.take(base, np.minimum(ids, base.shape[0] - 1), axis=0, out=out, mode="clip")
        for i in np.flatnonzero(self.edited[ids]):
            row = self.edited_row(ids[i], version, base_version)
            if row is not None:
                rows[i] = row
        return rows

    def changed_tokens(self, a, b, layer=None) -> np.ndarray:
        """Sorted token ids whose rows (in ``layer``, or any layer) read differently at a and b,
        tokens injected or removed in between included. Within one base the in-memory history
        names the candidates; across a compaction the folded deltas may be gone (gc), so the
        whole table is compared."""
        lo, hi = min(a, b), max(a, b)
        n = min(len(self.added_in), len(self.removed_in))  # a concurrent inject may have grown one already
        added, removed = self.added_in[:n], self.removed_in[:n]
        moved = np.flatnonzero(((added > lo) & (added <= hi)) | ((removed > lo) & (removed <= hi)))
        if self.base_at(lo)[0] != self.base_at(hi)[0]:
            candidates = np.arange(n, dtype=np.int64)
        else:
            candidates = np.array([tok for tok, (commits, _) in list(self.history.items())
                                   if tok < n and bisect.bisect_right(commits, hi) > bisect.bisect_right(commits, lo)],
                                  dtype=np.int64)
        both = candidates[(added[candidates] <= lo) & (removed[candidates] > hi)]
        cols = slice(None) if layer is None else [layer]
        differ = [part[np.any(self.gather(part, lo)[:, cols] != self.gather(part, hi)[:, cols], axis=(1, 2))]
                  for part in np.array_split(both, max(1, len(both) // 4096))]
        return np.union1d(moved, np.concatenate(differ)).astype(np.int64)

    def record(self, commit, token_ids, layers, stored_vectors):
        """Mirror a commit's row writes as full rows in the history (commit > every earlier one)."""
        full = {}
        for t, l, v in zip(token_ids.tolist(), layers.tolist(), stored_vectors):
            if t not in full:
                full[t] = self.gather(np.array([t]), commit - 1)[0]
            full[t][l] = v
        for t, row in full.items():
            commits, rows = self.history.setdefault(t, ([], []))
            commits.append(commit)
            rows.append(row)
            self.edited[t] = True
