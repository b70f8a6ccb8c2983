"""One bank table in memory (TableState): memory-mapped base arrays, the vocabulary with each
token's lifetime, and the full-row history of edits, so that any retained version is read
without touching SQLite."""
import bisect
import mmap
import os
import zlib

import numpy as np

from memsvc.core.dtypes import storage_dtype
from memsvc.core.errors import FailedPrecondition, InvalidArgument, NotFound, OutOfRange
from memsvc.store.checksums import token_sums
from memsvc.store.commit_log import NEVER, alive

CHUNK_BYTES = 1 << 24  # whole-table passes (compact, index builds) hold ~16 MB of rows at a time


def map_for_lookups(path) -> np.memmap:
    """A base file mapped read-only for lookups, which touch a few rows each: MADV_RANDOM turns
    off the kernel's read-ahead around each first-touched page, which made a cold first lookup
    of 10 MB of rows read 0.98 GB from disk at STEM-1B size (issue 17; bench/cold_reads.py)."""
    arr = np.load(path, mmap_mode="r")
    if hasattr(mmap, "MADV_RANDOM"):
        arr._mmap.madvise(mmap.MADV_RANDOM)
    return arr


def will_need(base, ids):
    """MADV_WILLNEED on the rows of ``ids`` of a mapped base: their reads are queued at once, not
    one page fault at a time (MADV_RANDOM faults read one page each). A cold b=32 lookup of
    STEM-1B rows: 44 ms -> 2.7 ms, the same bytes read; on cached rows it costs about as much as
    the gather, so the store asks only for rows it has not read before (bench/cold_reads.py)."""
    if not hasattr(mmap, "MADV_WILLNEED"):
        return
    map_start = base.offset - base.offset % mmap.ALLOCATIONGRANULARITY  # numpy maps from here
    row = base.strides[0]
    for tok in ids.tolist():
        lo = base.offset - map_start + tok * row
        aligned = lo - lo % mmap.PAGESIZE
        base._mmap.madvise(mmap.MADV_WILLNEED, aligned, lo + row - aligned)


def read_base_rows(base, start, stop, out) -> np.ndarray:
    """Rows [start, stop) of a mapped base file read into ``out`` with pread: a whole-table pass
    reads sequentially with the kernel's read-ahead, which the map's MADV_RANDOM turns off."""
    view = memoryview(out.reshape(-1).view(np.uint8))
    offset, done = base.offset + start * base.strides[0], 0
    fd = os.open(base.filename, os.O_RDONLY)
    try:
        while done < len(view):
            n = os.preadv(fd, [view[done:]], offset + done)
            if n == 0:
                raise FailedPrecondition(f"data: base file {base.filename} ends before row {stop}")
            done += n
    finally:
        os.close(fd)
    return out


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
        self.compactions = []  # versions of the compactions that folded this table, ascending
        self.folds = {}  # compaction version -> (token id, layer) pairs (n, 2) whose rows it changed
        self.unread = {}  # base version -> bool per base row: not yet gathered since the KB opened
        self.base_sums = {}  # base version -> crc32 of each token's rows, uint32 (none for a base from before checksums)
        self.edited = np.zeros(0, dtype=bool)
        self.damaged = {}  # (token id, commit) -> why the history row it wrote is not to be served (checksums.py)
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

    def edited_row(self, token_id, version, base_version, check=True):
        """The full row a commit in (base_version, version] wrote last, or None. A row built from
        a delta row that failed its checksum is FailedPrecondition (unless ``check`` is False)."""
        entry = self.history.get(int(token_id))
        if entry is None:
            return None
        commits, rows = entry
        j = bisect.bisect_right(commits, version) - 1
        if j < 0 or commits[j] <= base_version:
            return None
        if check and self.damaged and (int(token_id), commits[j]) in self.damaged:
            raise FailedPrecondition(f"data: table {self.name!r} token {int(token_id)} at version {version}: "
                                     f"{self.damaged[int(token_id), commits[j]]}")
        return rows[j]

    def _damage_before(self, token_id, commit):
        """Why the row a token reads just before ``commit`` is damaged, or None."""
        entry = self.history.get(token_id)
        if not self.damaged or entry is None:
            return None
        j = bisect.bisect_right(entry[0], commit - 1) - 1
        if j < 0 or entry[0][j] <= self.base_at(commit - 1)[0]:
            return None
        return self.damaged.get((token_id, entry[0][j]))

    def gather(self, ids, version, out=None, check=True, damaged=None):
        """Rows (n, L, d) of token ids at a version, storage dtype (a copy, into ``out`` if given).
        Base rows read for the first time are asked for at once (will_need) and checked before
        the gather: a damaged one is FailedPrecondition, or noted in ``damaged`` {token: why}
        when given (replay). ``check`` False reads history rows marked damaged (record)."""
        base_version, base = self.base_at(version)
        base_ids = np.minimum(ids, base.shape[0] - 1)
        unread = self.unread.get(base_version)
        if unread is None:  # two threads may both create it: each then asks for some rows twice, harmless
            unread = self.unread[base_version] = np.ones(base.shape[0], bool)
        first = base_ids[unread[base_ids]]
        if len(first):
            first = np.unique(first)
            will_need(base, first)
            bad = self._check_base_rows(base_version, base, first, version, damaged)
            unread[first] = False
            unread[bad] = True  # checked again, and refused, at every read
        rows = np.take(base, base_ids, axis=0, out=out, mode="clip")
        for i in np.flatnonzero(self.edited[ids]):
            row = self.edited_row(ids[i], version, base_version, check)
            if row is not None:
                rows[i] = row
        return rows

    def _check_base_rows(self, base_version, base, ids, version, damaged=None) -> list:
        """Base rows against their checksums, on their first read since the KB opened (the rows
        are being read anyway: ~32 us per 80 KB row, on first touch only); returns the damaged
        ids noted in ``damaged`` (raises on the first when it is None)."""
        sums = self.base_sums.get(base_version)
        if sums is None:
            return []
        rows, bad = base.view(np.ndarray), []  # a plain view: memmap's per-row __getitem__ cost 2 us
        for tok in ids.tolist():
            if zlib.crc32(rows[tok]) != sums[tok]:
                if damaged is None:
                    raise self._base_damage(base, tok, version)
                damaged[tok] = (f"its row in base file {base.filename} does not match its checksum; "
                                "restore the file from a backup")
                bad.append(tok)
        return bad

    def _base_damage(self, base, token_id, version) -> FailedPrecondition:
        return FailedPrecondition(f"data: table {self.name!r} token {token_id} at version {version}: its row in base file "
                                  f"{base.filename} does not match its checksum; restore the file from a backup")

    def rows_in_range(self, start, stop, version) -> np.ndarray:
        """Rows of token ids [start, stop) at a version (storage dtype; zeros for ids past the
        base that no commit up to the version wrote), the base part read sequentially: what a
        whole-table pass reads chunk by chunk."""
        base_version, base = self.base_at(version)
        rows = np.empty((stop - start, self.num_layers, self.dim), base.dtype)
        n_base = max(0, min(stop, base.shape[0]) - start)
        read_base_rows(base, start, start + n_base, rows[:n_base])
        sums = self.base_sums.get(base_version)
        if sums is not None and n_base:
            bad = np.flatnonzero(token_sums(rows[:n_base]) != sums[start:start + n_base])
            if len(bad):
                raise self._base_damage(base, start + int(bad[0]), version)
        rows[n_base:] = 0
        for tok in (np.flatnonzero(self.edited[start:stop]) + start).tolist():
            row = self.edited_row(tok, version, base_version)
            if row is not None:
                rows[tok - start] = row
        return rows

    def chunk_tokens(self) -> int:
        """Tokens per chunk of a whole-table pass (CHUNK_BYTES of rows)."""
        return max(1, CHUNK_BYTES // (self.num_layers * self.dim * storage_dtype(self.dtype).itemsize))

    def folded_pairs(self, lo, hi):
        """(token, layer) pairs (n, 2) whose rows some compaction in (lo, hi] changed, from the
        records compactions keep in the catalog (the deltas they folded may be gone after gc);
        None when one of them has no record (compacted before records were kept)."""
        parts = [np.zeros((0, 2), np.int64)]
        for version in self.compactions[bisect.bisect_right(self.compactions, lo):bisect.bisect_right(self.compactions, hi)]:
            if version not in self.folds:
                return None
            parts.append(self.folds[version])
        return np.concatenate(parts)

    def changed_tokens(self, a, b, layer=None) -> np.ndarray:
        """Sorted token ids whose rows (in ``layer``, or any layer) read differently at a and b,
        tokens injected or removed in between included. The candidates are the tokens the
        in-memory history wrote in between and those each compaction in between recorded as
        folded; only they are read (every token across a compaction that has no record)."""
        lo, hi = min(a, b), max(a, b)
        n = min(len(self.added_in), len(self.removed_in))  # a concurrent inject may have grown one already
        added, removed = self.added_in[:n], self.removed_in[:n]
        moved = np.flatnonzero(((added > lo) & (added <= hi)) | ((removed > lo) & (removed <= hi)))
        edited = np.array([tok for tok, (commits, _) in list(self.history.items())
                           if tok < n and bisect.bisect_right(commits, hi) > bisect.bisect_right(commits, lo)],
                          dtype=np.int64)
        folded = self.folded_pairs(lo, hi)
        if folded is None:
            candidates = np.arange(n, dtype=np.int64)
        else:
            folded = folded[:, 0] if layer is None else folded[folded[:, 1] == layer, 0]
            candidates = np.union1d(edited, folded[folded < n]).astype(np.int64)
        both = candidates[(added[candidates] <= lo) & (removed[candidates] > hi)]
        cols = slice(None) if layer is None else [layer]
        step = self.chunk_tokens()
        differ = [part[np.any(self.gather(part, lo)[:, cols] != self.gather(part, hi)[:, cols], axis=(1, 2))]
                  for part in (both[i:i + step] for i in range(0, len(both), step))]
        return np.union1d(moved, np.concatenate([np.zeros(0, np.int64)] + differ)).astype(np.int64)

    def record(self, commit, token_ids, layers, stored_vectors, damaged=None):
        """Mirror a commit's row writes as full rows in the history (commit > every earlier one).
        A token the commit writes in every layer needs no earlier row, so replaying it at start
        reads no base row (issue 17: a cold restart read each edited token's base row).
        ``damaged`` {token: why} marks rows built from delta rows that failed their checksums;
        a partial write over a damaged row is damaged too."""
        written = {}
        for t, l in zip(token_ids.tolist(), layers.tolist()):
            written.setdefault(t, set()).add(l)
        partial = np.array([t for t, ls in written.items() if len(ls) < self.num_layers], dtype=np.int64)
        damaged = dict(damaged or {})
        full = dict(zip(partial.tolist(), self.gather(partial, commit - 1, check=False, damaged=damaged))) if len(partial) else {}
        for t in written:
            why = damaged.get(t) or (self._damage_before(t, commit) if t in full else None)
            if why:
                self.damaged[t, commit] = why
        for t in written:
            if t not in full:
                full[t] = np.empty((self.num_layers, self.dim), storage_dtype(self.dtype))
        for t, l, v in zip(token_ids.tolist(), layers.tolist(), stored_vectors):
            full[t][l] = v
        for t, row in full.items():
            commits, rows = self.history.setdefault(t, ([], []))
            commits.append(commit)
            rows.append(row)
            self.edited[t] = True
