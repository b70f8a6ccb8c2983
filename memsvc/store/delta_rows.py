"""Delta rows of bank tables, kept in the catalog and read when a read touches them (issue 17).

At start a table learns only where its delta rows are: the (token, layer, commit) keys of the
``deltas`` table (from its primary-key index, without the rows) and their crc32s from
``delta_sums``. A server over a STEM-1B bank with 10,000 delta tokens used to load and check
~900 MB of rows at start (5.3 s cold); now it reads the keys, and a row is read and checked
(checksums.py) the first time a lookup, a snapshot or a whole-table pass needs it, then kept in
a bounded LRU cache (StoreConfig.delta_cache_bytes). A key whose row is missing, unlisted in its
commit's checksums or unequal to its checksum is recorded in TableState.damaged and refused
whenever it is read, never served.
"""
import threading
import zlib
from collections import OrderedDict

import numpy as np

from memsvc.core.dtypes import storage_dtype
from memsvc.store.checksums import MISSING, NEVER

SQL_TOKENS = 500  # token ids per read of delta rows (SQLite's default limit is 32,766 parameters)
RANGE_TOKENS = 4096  # tokens per query of a Snapshot page's read by token range (read_range)
UNCHECKED = -1  # crc of a key whose commit has no checksum record (written before checksums)


def load_history(t, log, sums_from=NEVER):
    """Fill TableState t's history with the keys and crc32s of its delta rows, marking keys that
    are missing or not listed in their commit's checksums as damaged, and the rows of a commit
    from ``sums_from`` on whose record is lost (checksums.summed_from). Reads no row."""
    keys = np.array(log.query("select commit_id, token_id, layer from deltas where tbl=?", [t.name]).fetchall(),
                    np.int64).reshape(-1, 3)
    sums = dict(log.query("select commit_id, rows from delta_sums where tbl=?", [t.name]).fetchall())
    listed = np.concatenate([np.zeros((0, 4), np.int64)] + [
        np.column_stack([np.full(len(r), c, np.int64), r]) for c, r in
        ((c, np.frombuffer(rows, np.int64).reshape(-1, 3)) for c, rows in sums.items())])  # (commit, token, layer, crc)
    checked = np.isin(keys[:, 0], np.array(list(sums), np.int64))
    for c, tok, layer in keys[~checked & (keys[:, 0] >= sums_from)].tolist():
        t.damaged[tok, layer, c] = MISSING.format("delta_sums")
    entries = [np.column_stack([keys[~checked], np.full(int((~checked).sum()), UNCHECKED, np.int64)])]
    mine, theirs = _sorted(keys[checked]), _sorted(listed)
    if np.array_equal(mine, theirs[:, :3]):  # the usual case: every listed row is there, and no other
        entries.append(theirs)
    else:
        crc_of = {(c, tok, layer): crc for c, tok, layer, crc in theirs.tolist()}
        found = set(map(tuple, mine.tolist()))
        for c, tok, layer in found - set(crc_of):
            t.damaged[tok, layer, c] = "is not listed in its commit's checksums (added)"
            crc_of[c, tok, layer] = UNCHECKED
        for c, tok, layer in set(crc_of) - found:
            t.damaged[tok, layer, c] = "is missing (deleted)"
        entries.append(np.array([(*k, crc) for k, crc in crc_of.items()], np.int64).reshape(-1, 4))
    rows = np.concatenate(entries)
    rows = rows[np.lexsort((rows[:, 2], rows[:, 0], rows[:, 1]))]  # by token, commit, layer
    if len(rows):
        new = np.flatnonzero(np.diff(rows[:, 1]) | np.diff(rows[:, 0])) + 1  # where a (token, commit) starts
        starts, ends = [0] + new.tolist(), new.tolist() + [len(rows)]
        layers, crcs = rows[:, 2].tolist(), rows[:, 3].tolist()
        for tok, c, start, end in zip(rows[starts, 1].tolist(), rows[starts, 0].tolist(), starts, ends):
            commits, writes = t.history.setdefault(tok, ([], []))
            commits.append(c)
            writes.append(dict(zip(layers[start:end], crcs[start:end])))
        toks = np.unique(rows[:, 1])
        t.edited[toks] = True
        starts = np.searchsorted(rows[:, 1], toks)
        t.first_write[toks] = rows[starts, 0]
        t.last_write[toks] = rows[np.append(starts[1:], len(rows)) - 1, 0]


def _sorted(rows):
    return rows[np.lexsort(rows[:, 2::-1].T)] if len(rows) else rows.reshape(-1, rows.shape[1])


class DeltaReader:
    """Delta rows read from the catalog by key and checked against their crc32, through an LRU
    cache of at most ``cache_bytes`` (rows a lookup reads again come from memory)."""

    def __init__(self, log, cache_bytes):
        self.log, self.cache_bytes = log, cache_bytes
        self.cache = OrderedDict()  # (table, token, layer, commit) -> row (d,) storage dtype
        self.cached_bytes = 0
        self.lock = threading.Lock()

    def put(self, table, keys, rows):
        """Cache rows (n, d) of keys [(token, layer, commit)]: the last that fit when they do not all."""
        fit = self.cache_bytes // max(1, rows[0].nbytes) if len(rows) else 0
        with self.lock:
            for (tok, layer, c), row in zip(keys[len(keys) - fit:], rows[len(rows) - fit:]):
                key = (table, tok, layer, c)
                if key not in self.cache:
                    self.cache[key] = row = np.array(row)  # a copy: never a view that keeps a whole commit's rows
                    self.cached_bytes += row.nbytes
            while self.cached_bytes > self.cache_bytes:
                self.cached_bytes -= self.cache.popitem(last=False)[1].nbytes

    def read(self, t, keys, version, cache=True) -> dict:
        """Rows {(token, layer, commit): row (d,)} of keys [(token, layer, commit, crc)]; a row that
        is missing or fails its checksum is marked damaged and FailedPrecondition."""
        out, todo = {}, []
        with self.lock:
            for tok, layer, c, crc in keys:
                row = self.cache.get((t.name, tok, layer, c))
                if row is None:
                    todo.append((tok, layer, c, crc))
                else:
                    self.cache.move_to_end((t.name, tok, layer, c))
                    out[tok, layer, c] = row
        dt = storage_dtype(t.dtype)
        for start in range(0, len(todo), SQL_TOKENS):
            part = todo[start:start + SQL_TOKENS]
            want = {(tok, layer, c): crc for tok, layer, c, crc in part}
            toks, commits = sorted({k[0] for k in part}), sorted({k[2] for k in part})
            found = self.log.query(
                f"select token_id, layer, commit_id, data from deltas where tbl=? and token_id in ({','.join('?' * len(toks))}) "
                f"and +commit_id in ({','.join('?' * len(commits))})", [t.name, *toks, *commits]).fetchall()
            for tok, layer, c, data in found:
                crc = want.pop((tok, layer, c), None)
                if crc is None:
                    continue  # a row of another key of these tokens and commits
                if (crc != UNCHECKED and zlib.crc32(data) != crc) or len(data) != t.dim * dt.itemsize:
                    raise t.delta_damage(tok, layer, c, version, "does not match its checksum")
                out[tok, layer, c] = np.frombuffer(data, dt)
            for tok, layer, c in want:
                raise t.delta_damage(tok, layer, c, version, "is missing (deleted)")
        if cache and todo:
            keys = [k[:3] for k in todo]
            self.put(t.name, keys, [out[k] for k in keys])
        return out

    def read_range(self, t, keys, rows, version, base_version):
        """Write the delta rows of keys [(token, layer, commit, crc, i)] (ascending token) into
        rows[i, layer], read by one query per RANGE_TOKENS tokens over the primary key (token
        order) and checked against their crc32; uncached (a Snapshot page: every edited token
        once). A row missing or failing its checksum is marked damaged and FailedPrecondition."""
        dt, flat = storage_dtype(t.dtype), rows.reshape(-1, t.dim)
        for start in range(0, len(keys), RANGE_TOKENS * t.num_layers):
            part = keys[start:start + RANGE_TOKENS * t.num_layers]
            want = {(tok, layer, c): (i * t.num_layers + layer, crc) for tok, layer, c, crc, i in part}
            found = self.log.query(
                "select token_id, layer, commit_id, data from deltas where tbl=? and token_id between ? and ? "
                "and +commit_id > ? and +commit_id <= ?", [t.name, part[0][0], part[-1][0], base_version, version])
            for tok, layer, c, data in found:
                hit = want.pop((tok, layer, c), None)
                if hit is None:
                    continue  # a row of these tokens that an earlier or a later commit wrote
                if (hit[1] != UNCHECKED and zlib.crc32(data) != hit[1]) or len(data) != t.dim * dt.itemsize:
                    raise t.delta_damage(tok, layer, c, version, "does not match its checksum")
                flat[hit[0]] = np.frombuffer(data, dt)  # the one copy of the row
            for tok, layer, c in want:
                raise t.delta_damage(tok, layer, c, version, "is missing (deleted)")
