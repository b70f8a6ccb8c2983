"""One bank table in memory (TableState): memory-mapped base arrays, the vocabulary with each
token's lifetime, and where the delta rows of edits are (their keys and crc32s: delta_rows.py
reads a row from the catalog when a read needs it), so that memory holds no row per edit."""
import bisect
import errno
import mmap
import os
import threading
import zlib

import numpy as np

from memsvc.core.dtypes import storage_dtype
from memsvc.core.errors import FailedPrecondition, InvalidArgument, NotFound, OutOfRange
from memsvc.store.checksums import joined_sum, token_sums
from memsvc.store.commit_log import NEVER, alive
from memsvc.store.delta_rows import UNCHECKED

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
    offset = base.offset + start * base.strides[0]
    _move_base_bytes(base, stop, len(view), lambda fd, done: os.preadv(fd, [view[done:]], offset + done))
    return out


def _move_base_bytes(base, stop, nbytes, move):
    """Call ``move(fd, done)`` on the base file open for reading (a read or copy of its bytes from
    ``done`` on, returning how many it moved) until ``nbytes`` have moved."""
    fd = os.open(base.filename, os.O_RDONLY)
    try:
        done = 0
        while done < nbytes:
            n = move(fd, done)
            if n == 0:
                raise FailedPrecondition(f"data: base file {base.filename} ends before row {stop}")
            done += n
    finally:
        os.close(fd)


class BaseCopy:
    """Rows [0, n) of a base copied into a new base file (``fd``, rows from ``offset``) inside the
    kernel (copy_file_range), 4 chunks at a time on a thread, so that compaction computes its
    edited tokens' rows while the disk copies the rest (one after the other, at STEM-1B, a compaction
    took 2.3x a copy of the base with cp); ``wait(stop)`` returns once rows [0, stop) are in place.
    Where the file system cannot copy in the kernel, the thread copies through a bounded buffer.
    The rows are never read into this process, so a damaged one is carried with the checksum it
    does not match: the copy neither hides damage nor finds it; fsck does."""

    def __init__(self, base, n, fd, offset):
        self.base, self.n, self.fd, self.offset = base, n, fd, offset
        self.copied, self.error, self.cancelled, self.in_kernel = 0, None, False, True
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="base-copy", daemon=True)
        self._thread.start()

    def wait(self, stop):
        with self._changed:
            while self.copied < min(stop, self.n) and self.error is None:
                self._changed.wait()
        if self.error is not None:
            raise self.error

    def close(self):
        """Stop after the piece being copied (a failed compaction) and wait for the thread."""
        self.cancelled = True
        self._thread.join()

    def _run(self):
        row = self.base.strides[0]
        step = max(1, 4 * CHUNK_BYTES // row)
        try:
            for start in range(0, self.n, step):
                if self.cancelled:
                    return
                stop = min(self.n, start + step)
                self._copy(start, stop, row)
                with self._changed:
                    self.copied = stop
                    self._changed.notify_all()
        except BaseException as e:  # raised in the compaction's thread by wait
            with self._changed:
                self.error = e
                self._changed.notify_all()

    def _copy(self, start, stop, row):
        src, dst, nbytes = self.base.offset + start * row, self.offset + start * row, (stop - start) * row
        if self.in_kernel:
            try:
                return _move_base_bytes(self.base, stop, nbytes, lambda fd_in, done: os.copy_file_range(
                    fd_in, self.fd, nbytes - done, src + done, dst + done))
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                self.in_kernel = False
        rows = np.empty((stop - start, *self.base.shape[1:]), self.base.dtype)
        write_at(self.fd, read_base_rows(self.base, start, stop, rows).data, dst)


def write_at(fd, data, offset):
    """All of ``data`` written into file ``fd`` at ``offset`` (pwrite may write part of it)."""
    view, done = memoryview(data).cast("B"), 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


class TableState:
    """One table in memory: its bases (mmapped), vocabulary and the keys of its delta rows, read
    through ``reader`` (a delta_rows.DeltaReader)."""

    def __init__(self, name, kind, dtype, dim, num_layers, created_in, reader):
        self.name, self.kind, self.dtype = name, kind, dtype
        self.dim, self.num_layers, self.created_in = dim, num_layers, created_in
        self.bases = []  # [(version, array (V, L, d))] sorted by version
        self.words = []  # token id -> word
        self.ids_of_word = {}  # word -> [token ids] (a removed word may come back with a new id)
        self.added_in = np.zeros(0, dtype=np.int64)
        self.removed_in = np.zeros(0, dtype=np.int64)
        self.history = {}  # token id -> ([commit ids ascending], [{layer: crc32 of the row it wrote, or UNCHECKED}])
        self.reader = reader
        self.compactions = []  # versions of the compactions that folded this table, ascending
        self.folds = {}  # compaction version -> (token id, layer) pairs (n, 2) whose rows it changed
        self.unread = {}  # base version -> bool per base row: not yet gathered since the KB opened
        self.base_sums = {}  # base version -> crc32 of each token's rows, uint32 (none for a base from before
        # checksums; None when its record is lost: damage, checksums.py)
        self.lost = []  # [(commit, why, up to the next base)]: reads at versions it reaches are refused (check_records)
        self.lifetime_damage = {}  # token id -> (first version its lifetime is wrong at, why) (lifetimes.py)
        self.edited = np.zeros(0, dtype=bool)
        self.first_write = np.zeros(0, dtype=np.int64)  # by token: the first commit that wrote a row of it (NEVER: none)
        self.last_write = np.zeros(0, dtype=np.int64)  # ... and the last (-1: none)
        self.damaged = {}  # (token id, layer, commit) -> why the delta row is not to be served (checksums.py)
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
        self.first_write = np.concatenate([self.first_write, np.full(n, NEVER, dtype=np.int64)])
        self.last_write = np.concatenate([self.last_write, np.full(n, -1, dtype=np.int64)])

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
        if self.lifetime_damage:
            self.check_lifetimes(ids.tolist(), version)
        gone = ids[~alive(self.added_in[ids], self.removed_in[ids], version)]
        if len(gone):
            raise OutOfRange(f"{field}: token id {int(gone[0])} does not exist in table {self.name!r} at version {version}")
        return ids

    def check_lifetimes(self, ids, version):
        """FailedPrecondition when one of token ``ids`` (or every token: None) has a lifetime that
        disagrees with its removals record at ``version`` (whether it exists there is unknown)."""
        for tok, (start, why) in self.lifetime_damage.items():
            if start <= version and (ids is None or tok in ids):
                raise FailedPrecondition(f"data: table {self.name!r} token {tok} at version {version}: its lifetime {why}; "
                                         "restore the catalog from a backup")

    def check_records(self, base_version, version):
        """FailedPrecondition when a read at ``version`` over ``base_version`` needs a commit whose
        record is lost with its rows (it wrote rows that no base at or below holds) or whose removals
        record is lost (it may have ended any token): which rows are right is unknown."""
        for commit, why, until_base in self.lost:
            if commit <= version and (commit > base_version or not until_base):
                raise FailedPrecondition(f"data: table {self.name!r} at version {version}: commit {commit} {why}; "
                                         "restore the catalog from a backup")

    def id_of(self, word, version, field="token"):
        if self.lifetime_damage:
            self.check_lifetimes(self.ids_of_word.get(word, []), version)
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

    def latest_writes(self, token_id, version, base_version) -> dict:
        """{layer: (commit, crc32)} of the rows that commits in (base_version, version] wrote last
        for a token: the layers a read at the version takes from delta rows, not the base."""
        entry = self.history.get(int(token_id))
        if entry is None:
            return {}
        commits, writes = entry
        j, out = bisect.bisect_right(commits, version) - 1, {}
        while j >= 0 and commits[j] > base_version and len(out) < self.num_layers:
            for layer, crc in writes[j].items():
                out.setdefault(layer, (commits[j], crc))
            j -= 1
        return out

    def overlay(self, rows, positions, ids, version, base_version, cache=True) -> list:
        """Write the delta rows that token ``ids`` read at a version into rows[positions] (which
        hold their base rows), read and checked by the reader; returns the (position, layer)
        pairs written. A damaged delta row is FailedPrecondition, never served."""
        keys, placed = [], []
        for pos, tok in zip(positions.tolist(), ids.tolist()):
            for layer, (commit, crc) in sorted(self.latest_writes(tok, version, base_version).items()):
                why = self.damaged.get((tok, layer, commit)) if self.damaged else None
                if why:
                    raise self.delta_damage(tok, layer, commit, version, why)
                keys.append((tok, layer, commit, crc))
                placed.append((pos, layer))
        if keys:
            got = self.reader.read(self, keys, version, cache)
            for (pos, layer), (tok, _, commit, _) in zip(placed, keys):
                rows[pos, layer] = got[tok, layer, commit]
        return placed

    def delta_damage(self, token, layer, commit, version, why) -> FailedPrecondition:
        """Mark a delta row damaged (for every later read too) and say so."""
        why = self.damaged.setdefault((token, layer, commit), why)
        return FailedPrecondition(f"data: table {self.name!r} token {token} at version {version}: its layer {layer} "
                                  f"row written by commit {commit} {why}; restore the catalog from a backup")

    def gather(self, ids, version, out=None, cache=True):
        """Rows (n, L, d) of token ids at a version, storage dtype (a copy, into ``out`` if given).
        Base rows read for the first time are asked for at once (will_need) and checked before
        the gather (a damaged one is FailedPrecondition); delta rows come from the reader (and
        stay in its cache unless ``cache`` is False: a pass over many tokens)."""
        base_version, _ = self.base_at(version)
        rows = self.base_rows(ids, version, out)
        edited = np.flatnonzero(self.edited[ids])
        if len(edited):
            self.overlay(rows, edited, np.asarray(ids)[edited], version, base_version, cache)
        return rows

    def delta_page(self, page, version) -> np.ndarray:
        """Rows (n, L, d) at a version of the tokens of ``page`` [(token, latest_writes(token))],
        ascending: a Snapshot page. The delta rows are read by token range (DeltaReader.read_range),
        and base rows only for tokens that some layer still reads from the base."""
        base = self.base_at(version)[1]
        ids = np.array([tok for tok, _ in page], np.int64)
        rows = np.empty((len(ids), self.num_layers, self.dim), base.dtype)
        partial = np.array([len(w) < self.num_layers for _, w in page], bool)
        if partial.any():
            rows[partial] = self.base_rows(ids[partial], version)
        return self.overlay_page(page, rows, version)

    def overlay_page(self, page, rows, version) -> np.ndarray:
        """Write the delta rows of the tokens of ``page`` [(token, latest_writes(token))],
        ascending, into ``rows`` (which hold what the base has for the layers no delta wrote),
        read by token range (DeltaReader.read_range); returns ``rows``."""
        keys = []
        for i, (tok, writes) in enumerate(page):
            for layer, (commit, crc) in writes.items():
                why = self.damaged.get((tok, layer, commit)) if self.damaged else None
                if why:
                    raise self.delta_damage(tok, layer, commit, version, why)
                keys.append((tok, layer, commit, crc, i))
        self.reader.read_range(self, keys, rows, version, self.base_at(version)[0])
        return rows

    def base_rows(self, ids, version, out=None):
        """Rows (n, L, d) of token ids in the base a version reads (storage dtype; a copy, into
        ``out`` if given), checked on their first read since the KB opened."""
        base_version, base = self.base_at(version)
        if self.lost:
            self.check_records(base_version, version)
        base_ids = np.minimum(ids, base.shape[0] - 1)
        unread = self.unread.get(base_version)
        if unread is None:  # two threads may both create it: each then asks for some rows twice, harmless
            unread = self.unread[base_version] = np.ones(base.shape[0], bool)
        first = base_ids[unread[base_ids]]
        if len(first):
            first = np.unique(first)
            will_need(base, first)
            self._check_base_rows(base_version, base, first, version)
            unread[first] = False
        return np.take(base.view(np.ndarray), base_ids, axis=0, out=out, mode="clip")

    def _check_base_rows(self, base_version, base, ids, version):
        """Base rows against their checksums, on their first read since the KB opened (the rows
        are being read anyway: ~32 us per 80 KB row, on first touch only): a damaged one is
        FailedPrecondition at every read (it stays unread)."""
        sums = self.base_sums.get(base_version)
        if sums is None:
            if base_version in self.base_sums:
                raise self._base_damage(base, int(ids[0]), version, base_version)
            return
        rows = base.view(np.ndarray)  # a plain view: memmap's per-row __getitem__ cost 2 us
        for tok in ids.tolist():
            if zlib.crc32(rows[tok]) != sums[tok]:
                raise self._base_damage(base, tok, version)

    def _base_damage(self, base, token_id, version, lost=None) -> FailedPrecondition:
        """A base row that fails its checksum, or (``lost``: the base's version) has none from
        base_sums_from on: its record was deleted."""
        if lost is not None:
            return FailedPrecondition(f"data: table {self.name!r} token {token_id} at version {version}: base file "
                                      f"{base.filename} (version {lost}) has no checksums: its base_sums record is "
                                      "missing (deleted); restore the catalog from a backup")
        return FailedPrecondition(f"data: table {self.name!r} token {token_id} at version {version}: its row in base file "
                                  f"{base.filename} does not match its checksum; restore the file from a backup")

    def rows_in_range(self, start, stop, version) -> np.ndarray:
        """Rows of token ids [start, stop) at a version (storage dtype; zeros for ids past the
        base that no commit up to the version wrote), the base part read sequentially: what a
        whole-table pass reads chunk by chunk."""
        base_version, base = self.base_at(version)
        self.check_records(base_version, version)
        rows = np.empty((stop - start, self.num_layers, self.dim), base.dtype)
        n_base = max(0, min(stop, base.shape[0]) - start)
        read_base_rows(base, start, start + n_base, rows[:n_base])
        sums = self.base_sums.get(base_version)
        if sums is None and base_version in self.base_sums and n_base:
            raise self._base_damage(base, start, version, base_version)
        if sums is not None and n_base:
            bad = np.flatnonzero(token_sums(rows[:n_base]) != sums[start:start + n_base])
            if len(bad):
                raise self._base_damage(base, start + int(bad[0]), version)
        rows[n_base:] = 0
        edited = np.flatnonzero(self.edited[start:stop])
        if len(edited):  # a whole-table pass: its delta rows do not push lookups' rows out of the cache
            self.overlay(rows, edited, edited + start, version, base_version, cache=False)
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
        tokens injected or removed in between included. The candidates are the tokens commits in
        between wrote and those each compaction in between recorded as folded (every token across
        a compaction that has no record); they are compared by their checksums (_same_by_sums),
        and only the rows of those the checksums cannot decide are read."""
        lo, hi = min(a, b), max(a, b)
        for v in (lo, hi):  # a lost commit's tokens are unknown: refused, never left out (compactions'
            self.check_records(self.base_at(v)[0], v)  # folds cover the commits between lo and hi's base)
        self.check_lifetimes(None, hi)
        n = min(len(self.added_in), len(self.removed_in), len(self.last_write))  # a concurrent inject may have grown one
        added, removed = self.added_in[:n], self.removed_in[:n]
        moved = np.flatnonzero(((added > lo) & (added <= hi)) | ((removed > lo) & (removed <= hi)))
        edited = np.flatnonzero(self.wrote_between(np.arange(n), lo, hi))
        folded = self.folded_pairs(lo, hi)
        if folded is None:
            candidates = np.arange(n, dtype=np.int64)
        else:
            folded = folded[:, 0] if layer is None else folded[folded[:, 1] == layer, 0]
            candidates = np.union1d(edited, folded[folded < n]).astype(np.int64)
        both = candidates[(added[candidates] <= lo) & (removed[candidates] > hi)]
        decided, same = self._same_by_sums(both, lo, hi, layer)
        unsure = both[~decided]
        cols = slice(None) if layer is None else [layer]
        step = self.chunk_tokens()
        differ = [part[np.any(self.gather(part, lo)[:, cols] != self.gather(part, hi)[:, cols], axis=(1, 2))]
                  for part in (unsure[i:i + step] for i in range(0, len(unsure), step))]
        return np.union1d(moved, np.concatenate([both[decided & ~same]] + differ)).astype(np.int64)

    def wrote_between(self, ids, lo, hi) -> np.ndarray:
        """Whether some commit in (lo, hi] wrote a row of each token id (from the first and last
        commit that wrote it; the history only for a token written before and after)."""
        first, last = self.first_write[ids], self.last_write[ids]
        out = (first <= hi) & (last > lo)
        for i in np.flatnonzero(out & (first <= lo) & (last > hi)).tolist():
            commits = self.history[int(ids[i])][0]
            out[i] = bisect.bisect_right(commits, hi) > bisect.bisect_right(commits, lo)
        return out

    def _same_by_sums(self, ids, lo, hi, layer):
        """(decided, same) masks over token ids: whether their rows (in ``layer``, or all) read
        the same at lo and hi, decided from the rows' sources and crc32s without reading a row
        (issue 17: comparing rows across a compaction took 1.9 s at STEM-1B size). Equal crc32s
        count as equal rows (a chance of 2^-32 per row of a change unseen)."""
        (base_lo, _), (base_hi, _) = self.base_at(lo), self.base_at(hi)
        decided, same = np.zeros(len(ids), bool), np.zeros(len(ids), bool)
        plain = ~self.wrote_between(ids, base_lo, lo) & ~self.wrote_between(ids, base_hi, hi)  # base rows at both
        sums_lo, sums_hi = self.base_sums.get(base_lo), self.base_sums.get(base_hi)
        if base_lo == base_hi:
            decided[plain] = same[plain] = True
        elif layer is None and sums_lo is not None and sums_hi is not None:
            ok = plain & (ids < len(sums_lo)) & (ids < len(sums_hi))
            decided[ok] = True
            same[ok] = sums_lo[ids[ok]] == sums_hi[ids[ok]]
        for i in np.flatnonzero(~decided).tolist():
            tok = int(ids[i])
            answer = self._token_same(tok, (lo, base_lo), (hi, base_hi), layer)
            if answer is not None:
                decided[i], same[i] = True, answer
        return decided, same

    def _token_same(self, tok, at_lo, at_hi, layer):
        """Whether one token's rows read the same at two (version, base version): per layer by
        source (the same base or commit) or delta crc32s, else by the whole token's crc32 (a
        base's, or one joined from every layer's delta crc32); None when neither decides."""
        (lo, base_lo), (hi, base_hi) = at_lo, at_hi
        wa, wb = self.latest_writes(tok, lo, base_lo), self.latest_writes(tok, hi, base_hi)
        undecided = False
        for l in range(self.num_layers) if layer is None else [layer]:
            a, b = wa.get(l), wb.get(l)
            if (a is None and b is None and base_lo == base_hi) or (a and b and a[0] == b[0]):
                continue  # one source
            if a and b and a[1] != UNCHECKED and b[1] != UNCHECKED:
                if a[1] != b[1]:
                    return False
                continue
            undecided = True
        if not undecided:
            return True
        if layer is not None:
            return None
        sum_a, sum_b = self._token_sum(tok, wa, base_lo), self._token_sum(tok, wb, base_hi)
        return None if sum_a is None or sum_b is None else sum_a == sum_b

    def _token_sum(self, tok, writes, base_version):
        """crc32 of a token's rows (L, d) that read ``writes`` over a base, or None when unknown."""
        if not writes:
            sums = self.base_sums.get(base_version)
            return int(sums[tok]) if sums is not None and tok < len(sums) else None
        crcs = [writes[l][1] if l in writes else UNCHECKED for l in range(self.num_layers)]
        if UNCHECKED in crcs:
            return None
        return joined_sum(crcs, self.dim * storage_dtype(self.dtype).itemsize)

    def record(self, commit, token_ids, layers, crcs, stored_vectors):
        """Note a commit's row writes in the history (commit > every earlier one): their keys and
        crc32s; the rows go to the reader's cache (a row just written is likely read next)."""
        for t, l, crc in zip(token_ids.tolist(), layers.tolist(), crcs):
            commits, writes = self.history.setdefault(t, ([], []))
            if not commits or commits[-1] != commit:
                commits.append(commit)
                writes.append({})
            writes[-1][l] = crc
        self.edited[token_ids] = True
        self.first_write[token_ids] = np.minimum(self.first_write[token_ids], commit)
        self.last_write[token_ids] = commit
        self.reader.put(self.name, list(zip(token_ids.tolist(), layers.tolist(), [commit] * len(token_ids))),
                        stored_vectors)
