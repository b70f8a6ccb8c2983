"""The versioned knowledge store: one data directory per knowledge base (KB).

Layout of a data directory::

    catalog.db                 SQLite (WAL): tables, tokens, commits, tags, row deltas, bases
    bases/<table>/v<N>.npy     immutable token-major base arrays [vocab, layers, dim], memory-mapped
    .lock                      held by the one process that has the KB open

Every mutation is a commit with a KB-wide, monotonically increasing id (the version). Reading
version v of a table = the newest base at or below v, overlaid with the rows that commits in
(base, v] wrote. The whole delta history is mirrored in memory as full rows per edited token, so
any retained version (head included) is read without touching SQLite; SQLite is the durable log.

    >>> kb = KnowledgeBase(StoreConfig(data_dir=tmp, create=True))
    >>> kb.import_table("bank", rows, vocab).version
    1
    >>> kb.edit("bank", [RowOp("set", 5, vector=v)], message="fix").version
    2
    >>> kb.lookup("bank", [5], version=1).version
    1
"""
import bisect
import fcntl
import getpass
import json
import logging
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sqlite_utils
from tqdm import tqdm

from editing.inject import inject_request
from editing.rows import plan_row_ops
from memsvc.core.dtypes import storage_dtype, to_float32, to_storage
from memsvc.core.errors import Conflict, FailedPrecondition, InvalidArgument, NotFound, OutOfRange
from memsvc.core.values import (
    CommitInfo,
    CommitResult,
    EditRequest,
    LookupResult,
    RowChange,
    RowWrites,
    TableInfo,
    split_tokens,
)

LOG = logging.getLogger("memsvc.store")
NEVER = 2**62  # removed_in of a token that was never removed
FORMAT = "1"


@dataclass
class StoreConfig:
    data_dir: Path
    create: bool = False  # create an empty KB when data_dir holds none
    retention_seconds: float = 7 * 86400.0  # gc keeps versions younger than this (and tagged ones)
    durable: bool = True  # fsync every commit (SQLite synchronous=FULL)


def _crash_point(name: str):
    """Fault injection for the atomicity tests: MEMSVC_CRASH_AT=<name> kills the process here."""
    if os.environ.get("MEMSVC_CRASH_AT") == name:
        os._exit(77)


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
        return int(np.count_nonzero((self.added_in <= version) & (self.removed_in > version)))

    def check_ids(self, ids, version, field="token_ids"):
        ids = np.asarray(ids, dtype=np.int64)
        if ids.ndim != 1:
            raise InvalidArgument(f"{field}: expected a flat list of token ids")
        bad = ids[(ids < 0) | (ids >= len(self.words))]
        if len(bad):
            raise OutOfRange(f"{field}: token id {int(bad[0])} out of range [0, {len(self.words)}) for table {self.name!r}")
        gone = ids[(self.added_in[ids] > version) | (self.removed_in[ids] <= version)]
        if len(gone):
            raise OutOfRange(f"{field}: token id {int(gone[0])} does not exist in table {self.name!r} at version {version}")
        return ids

    def id_of(self, word, version, field="token"):
        for token_id in reversed(self.ids_of_word.get(word, [])):
            if self.added_in[token_id] <= version < self.removed_in[token_id]:
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


class KnowledgeBase:
    """A versioned knowledge base in one data directory (see the module docstring)."""

    def __init__(self, config: StoreConfig):
        self.config = config
        self.root = Path(config.data_dir)
        self._write_lock = threading.RLock()
        self._db_lock = threading.RLock()
        self._open()

    # ---------------------------------------------------------------- opening and closing

    def _open(self):
        catalog = self.root / "catalog.db"
        if not catalog.exists():
            if not self.config.create:
                raise FailedPrecondition(f"data: no knowledge base at {self.root} (create one with `memsvc import` or `memsvc serve`)")
            self.root.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.root / ".lock", "a+")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise FailedPrecondition(f"data: {self.root} is open in another process (a running server? use --server)")
        try:
            self._conn = sqlite3.connect(catalog, check_same_thread=False, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(f"PRAGMA synchronous={'FULL' if self.config.durable else 'NORMAL'}")
            self.db = sqlite_utils.Database(self._conn)
            self._create_schema()
            self._load()
        except sqlite3.DatabaseError as e:
            self.close()
            raise FailedPrecondition(f"data: {catalog} is not a readable knowledge base catalog ({e})")

    def _create_schema(self):
        db = self.db
        db["meta"].create({"key": str, "value": str}, pk="key", if_not_exists=True)
        db["tables"].create({"name": str, "kind": str, "dtype": str, "dim": int, "num_layers": int,
                             "created_in": int}, pk="name", if_not_exists=True)
        db["bases"].create({"tbl": str, "version": int, "file": str, "vocab_size": int},
                           pk=("tbl", "version"), if_not_exists=True)
        db["tokens"].create({"tbl": str, "token_id": int, "token": str, "added_in": int, "removed_in": int},
                            pk=("tbl", "token_id"), if_not_exists=True)
        db["commits"].create({"id": int, "time": float, "author": str, "message": str, "kind": str,
                              "tables": str, "rows_changed": int, "request": str, "metrics": str,
                              "gone": int}, pk="id", if_not_exists=True)
        db["deltas"].create({"tbl": str, "token_id": int, "layer": int, "commit_id": int, "data": bytes},
                            pk=("tbl", "token_id", "layer", "commit_id"), if_not_exists=True)
        db["deltas"].create_index(["commit_id"], if_not_exists=True)
        db["tags"].create({"name": str, "version": int, "time": float}, pk="name", if_not_exists=True)
        if not db.execute("select 1 from meta where key='format'").fetchone():
            db.execute("insert into meta values ('format', ?)", [FORMAT])

    def _load(self):
        """Rebuild the in-memory mirror from the catalog and the base files."""
        self.tables = {}
        row = self.db.execute("select max(id) from commits").fetchone()
        self._head = row[0] or 0
        self._gone = {r[0] for r in self.db.execute("select id from commits where gone=1")}
        for r in self.db["tables"].rows:
            t = TableState(r["name"], r["kind"], r["dtype"], r["dim"], r["num_layers"], r["created_in"])
            for b in self.db.execute("select version, file from bases where tbl=? order by version", [t.name]):
                t.bases.append((b[0], self._map_base(b[1], t)))
            toks = self.db.execute("select token, added_in, removed_in from tokens where tbl=? order by token_id", [t.name]).fetchall()
            t.add_tokens([w for w, _, _ in toks], 0)
            t.added_in = np.array([a for _, a, _ in toks], dtype=np.int64)
            t.removed_in = np.array([r_ for _, _, r_ in toks], dtype=np.int64)
            dt = storage_dtype(t.dtype)
            cur = self.db.execute("select commit_id, token_id, layer, data from deltas where tbl=? order by commit_id", [t.name])
            self._replay(t, cur, dt)
            self.tables[t.name] = t
        from memsvc.store.mosaic import MosaicStore  # here, not at the top: memsvc.mosaic builds on this module's KB

        self.mosaic = MosaicStore(self)  # the mosaic table kind: its own catalog tables, same commits

    def _replay(self, table, cursor, dt):
        batch, commit = [], None
        for c, token_id, layer, data in list(cursor) + [(None, None, None, None)]:
            if c != commit and batch:
                ids, layers, vecs = zip(*batch)
                table.record(commit, np.array(ids), np.array(layers), vecs)
                batch = []
            commit = c
            if c is not None:
                batch.append((token_id, layer, np.frombuffer(data, dtype=dt)))

    def _map_base(self, file, table):
        path = self.root / file
        try:
            arr = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise FailedPrecondition(f"data: base file {path} of table {table.name!r} is missing or unreadable ({e})")
        if arr.ndim != 3 or arr.shape[1:] != (table.num_layers, table.dim) or arr.dtype != storage_dtype(table.dtype):
            raise FailedPrecondition(f"data: base file {path} has shape {arr.shape} {arr.dtype}, the catalog says [*, {table.num_layers}, {table.dim}] {table.dtype}")
        return arr

    def close(self):
        conn = getattr(self, "_conn", None)
        if conn is not None:
            conn.close()
            self._conn = None
        if not self._lock_file.closed:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---------------------------------------------------------------- versions

    @property
    def version(self) -> int:
        """The head: the newest commit id (0 for an empty KB)."""
        return self._head

    def list_versions(self) -> list:
        """Every readable version, oldest first."""
        return [r[0] for r in self.db.execute("select id from commits where gone=0 order by id")]

    def resolve_version(self, version=None, tag=None) -> int:
        """A version number or tag -> a readable version id; None/0 and no tag mean the head."""
        if tag:
            row = self._query("select version from tags where name=?", [tag]).fetchone()
            if row is None:
                raise NotFound(f"tag: unknown tag {tag!r}")
            version = row[0]
        if not version:
            return self._head
        version = int(version)
        if version > self._head or version < 0:
            raise NotFound(f"version: version {version} does not exist (head is {self._head})")
        if version in self._gone:
            raise NotFound(f"version: version {version} no longer exists. Was it cleaned up by gc?")
        return version

    def table(self, name, version=None) -> TableState:
        version = self._head if version is None else version
        t = self.tables.get(name)
        if t is None or t.created_in > version:
            raise NotFound(f"table: unknown table {name!r}" + ("" if t is None else f" at version {version}"))
        return t

    # ---------------------------------------------------------------- reads

    def list_tables(self, version=None) -> list:
        v = self.resolve_version(version)
        banks = [self.describe(name, v) for name, t in sorted(self.tables.items()) if t.created_in <= v]
        return sorted(banks + self.mosaic.list_tables(v), key=lambda info: info.name)

    def describe(self, name, version=None) -> TableInfo:
        v = self.resolve_version(version)
        if name in self.mosaic.tables:
            return self.mosaic.describe(name, v)
        t = self.table(name, v)
        return TableInfo(name=t.name, kind=t.kind, dtype=t.dtype, vocab_size=t.vocab_size(v),
                         num_layers=t.num_layers, dim=t.dim, created_version=t.created_in,
                         base_version=t.base_at(v)[0], version=v)

    def vocabulary(self, name, version=None) -> list:
        """The table's words by token id at a version ('' for ids that do not exist there)."""
        v = self.resolve_version(version)
        t = self.table(name, v)
        alive = (t.added_in <= v) & (t.removed_in > v)
        return [w if a else "" for w, a in zip(t.words, alive)]

    def token_ids(self, name, words, version=None, field="tokens") -> np.ndarray:
        v = self.resolve_version(version)
        t = self.table(name, v)
        return np.array([t.id_of(w, v, field) for w in words], dtype=np.int64)

    def lookup(self, name, token_ids, layers=None, version=None, tag=None, overrides=None) -> LookupResult:
        """Rows of tokens (ids or words) at a version, de-duplicated; ``overrides`` (RowOps) apply to this read
        only, planned exactly as a persistent edit of the same ops would be."""
        v = self.resolve_version(version, tag)
        t = self.table(name, v)
        ids = self._requested_ids(t, token_ids, v)
        layer_idx = t.check_layers(layers)
        unique_ids, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")  # first-occurrence order
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        unique_ids, inverse = unique_ids[order], rank[inverse]
        rows = t.gather(unique_ids, v)
        if overrides:
            rows = self._apply_overrides(t, v, unique_ids, rows, overrides)
        if layer_idx is not None:
            rows = rows[:, layer_idx]
        return LookupResult(rows=rows, unique_ids=unique_ids, inverse=inverse, version=v, dtype=t.dtype)

    def lookup_in_order(self, name, token_ids, out_for, version=None) -> LookupResult | None:
        """Rows of every layer of tokens (ids or words) at a version in request order, duplicates
        included, gathered straight into ``out_for(shape, dtype)`` (a shared reply buffer: no
        intermediate copy, nothing for the client to reorder); None when out_for returns None."""
        v = self.resolve_version(version)
        t = self.table(name, v)
        ids = self._requested_ids(t, token_ids, v)
        out = out_for((len(ids), t.num_layers, t.dim), storage_dtype(t.dtype))
        if out is None:
            return None
        t.gather(ids, v, out=out)
        return LookupResult(rows=out, unique_ids=ids, inverse=np.arange(len(ids)), version=v, dtype=t.dtype,
                            ordered=True)

    @staticmethod
    def _requested_ids(t, token_ids, v) -> np.ndarray:
        ids, words = split_tokens(token_ids)
        ids = t.check_ids(ids + [t.id_of(w, v, "tokens") for w in words], v)
        if len(ids) == 0:
            raise InvalidArgument("token_ids: the request names no tokens")
        return ids

    def _apply_overrides(self, t, v, unique_ids, rows, overrides):
        writes = self.plan(t.name, overrides, v)
        stored = to_storage(writes.vectors, t.dtype)
        position = {int(tok): i for i, tok in enumerate(unique_ids)}
        for tok, layer, vec in zip(writes.token_ids.tolist(), writes.layers.tolist(), stored):
            if tok in position:
                rows[position[tok], layer] = vec
        return rows

    def snapshot(self, name, version=None) -> dict:
        """A version as its read-only base file plus the full rows of every token edited since
        that base: what a worker on the same host maps instead of asking per row."""
        v = self.resolve_version(version)
        t = self.table(name, v)
        base_version, base = t.base_at(v)
        edited = [(tok, t.edited_row(tok, v, base_version)) for tok in np.flatnonzero(t.edited).tolist()]
        edited = [(tok, row) for tok, row in edited if row is not None]
        rows = np.stack([row for _, row in edited]) if edited else np.zeros((0, t.num_layers, t.dim), storage_dtype(t.dtype))
        return dict(version=v, base_version=base_version, base_path=str(Path(base.filename).resolve()),
                    delta_token_ids=np.array([tok for tok, _ in edited], dtype=np.int64), delta_rows=rows,
                    vocab_size=len(t.words), dtype=t.dtype)

    def changed_tokens(self, name, from_version, to_version) -> np.ndarray:
        """Token ids whose rows read differently at two versions (what a cache must drop)."""
        a, b = self.resolve_version(from_version), self.resolve_version(to_version)
        return self.table(name, max(a, b)).changed_tokens(a, b)

    def read_rows(self, name, token_ids, version=None) -> np.ndarray:
        """float32 rows (n, L, d) of token ids at a version (all layers)."""
        v = self.resolve_version(version)
        t = self.table(name, v)
        return to_float32(t.gather(t.check_ids(token_ids, v), v), t.dtype)

    def plan(self, name, ops, version=None) -> RowWrites:
        """The row writes a batch of RowOps implies at a version (the dry run of an edit)."""
        v = self.resolve_version(version)
        t = self.table(name, v)
        for i, op in enumerate(ops):
            if op.token_id is None:
                op.token_id = t.id_of(op.token, v, f"ops[{i}].token") if op.token else None
            if op.source_token_id is None and op.source_token:
                op.source_token_id = t.id_of(op.source_token, v, f"ops[{i}].source_token")
            if op.token_id is None:
                raise InvalidArgument(f"ops[{i}].token: name the token by id or by word")
            t.check_ids([op.token_id], v, f"ops[{i}].token_id")
            if op.source_token_id is not None:
                t.check_ids([op.source_token_id], v, f"ops[{i}].source_token_id")
        return plan_row_ops(ops, lambda ids: to_float32(t.gather(ids, v), t.dtype),
                            lambda ids: self._base_rows(t, ids, v), t.num_layers, t.dim)

    def _base_rows(self, t, ids, v):
        """Rows as the table's first base had them (an injected token's base is its injected row)."""
        first_base_version, first_base = t.bases[0]
        out = np.empty((len(ids), t.num_layers, t.dim), dtype=np.float32)
        for i, tok in enumerate(ids.tolist()):
            if tok < first_base.shape[0]:
                out[i] = to_float32(first_base[tok], t.dtype)
            else:
                commits, rows = t.history[tok]
                out[i] = to_float32(rows[0], t.dtype)
        return out

    # ---------------------------------------------------------------- writes

    @contextmanager
    def _transaction(self):
        with self._db_lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            _crash_point("commit:before-commit")
            self._conn.execute("COMMIT")

    def _query(self, sql, params=()):
        with self._db_lock:
            return self._conn.execute(sql, params)

    def _insert_commit(self, conn, kind, tables, author, message, rows_changed, request=None, metrics=None):
        commit = self._head + 1
        conn.execute(
            "insert into commits (id, time, author, message, kind, tables, rows_changed, request, metrics, gone) values (?,?,?,?,?,?,?,?,?,0)",
            [commit, time.time(), author or getpass.getuser(), message or "", kind,
             json.dumps(sorted(tables)), rows_changed, json.dumps((request or EditRequest()).__dict__),
             json.dumps(metrics or {})])
        return commit

    def _write_base(self, table_name, version, rows, progress=False) -> str:
        """Write an immutable base array atomically (tmp file, fsync, rename); returns its path
        relative to the data dir."""
        folder = self.root / "bases" / table_name
        folder.mkdir(parents=True, exist_ok=True)
        rel = f"bases/{table_name}/v{version}.npy"
        tmp = self.root / (rel + ".tmp")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=rows.dtype, shape=rows.shape)
        step = max(1, (1 << 24) // max(1, rows[0].nbytes))  # ~16 MB per chunk
        for start in tqdm(range(0, rows.shape[0], step), desc=f"writing {table_name} base", unit="chunk", disable=not progress):
            out[start:start + step] = rows[start:start + step]
        out.flush()
        del out
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.root / rel)
        dir_fd = os.open(folder, os.O_RDONLY)
        os.fsync(dir_fd)
        os.close(dir_fd)
        return rel

    def import_table(self, name, rows, vocab, dtype="float32", author="", message="", progress=False) -> CommitResult:
        """Create a table from token-major rows (V, L, d) and a vocabulary of V words."""
        if not name or "/" in name or name.startswith("."):
            raise InvalidArgument(f"table: invalid table name {name!r}")
        if rows.ndim != 3 or 0 in rows.shape:
            raise InvalidArgument(f"rows: expected a non-empty [vocab, layers, dim] array, got shape {rows.shape}")
        if len(vocab) != rows.shape[0]:
            raise InvalidArgument(f"vocab: {len(vocab)} words for {rows.shape[0]} rows")
        if len(set(vocab)) != len(vocab):
            raise InvalidArgument("vocab: words repeat")
        stored = rows if rows.dtype == storage_dtype(dtype) else to_storage(rows, dtype)
        step = max(1, (1 << 24) // max(1, stored[0].nbytes))
        if not all(np.isfinite(to_float32(stored[i:i + step], dtype)).all() for i in range(0, len(stored), step)):
            raise InvalidArgument("rows: contain NaN or Inf")
        with self._write_lock:
            if name in self.tables or name in self.mosaic.tables:
                raise Conflict(f"table: table {name!r} already exists")
            rel = self._write_base(name, self._head + 1, stored, progress)
            n_rows = int(rows.shape[0] * rows.shape[1])

            def write(conn, version):
                conn.execute("insert into tables values (?,?,?,?,?,?)", [name, "bank", dtype, rows.shape[2], rows.shape[1], version])
                conn.execute("insert into bases values (?,?,?,?)", [name, version, rel, rows.shape[0]])
                conn.executemany("insert into tokens values (?,?,?,?,?)", [(name, i, w, version, NEVER) for i, w in enumerate(vocab)])

            def publish(version):
                t = TableState(name, "bank", dtype, rows.shape[2], rows.shape[1], version)
                t.bases.append((version, self._map_base(rel, t)))
                t.add_tokens(list(vocab), version)
                self.tables[name] = t

            version = self.commit("import", [name], write, publish, author, message or f"import {name}", n_rows)
            return CommitResult(version=version, rows_changed=n_rows)

    def edit(self, name, ops, author="", message="", request=None, metrics=None) -> CommitResult:
        """Apply a batch of RowOps as one atomic commit."""
        with self._write_lock:
            writes = self.plan(name, ops)
            return self._commit_rows(name, writes, "edit", author, message, request, metrics)

    def commit(self, kind, tables, write, publish, author="", message="", rows_changed=0, request=None, metrics=None) -> int:
        """One atomic commit of any table kind; returns its version.

        ``write(conn, version)`` runs inside the SQLite transaction (a crash or an exception
        leaves the previous head intact); ``publish(version)`` then mirrors the commit in memory.
        Readers resolve the head before reading and the head moves last, so no reader sees half
        a commit."""
        with self._write_lock:
            with self._transaction() as conn:
                version = self._insert_commit(conn, kind, tables, author, message, rows_changed, request, metrics)
                write(conn, version)
                _crash_point("commit:after-rows")
            try:
                publish(version)
                self._head = version
            except Exception:
                # The commit is durable: rebuild memory from the catalog so that it and the head agree.
                LOG.exception("publishing commit %d failed; reloading the knowledge base", version)
                self._load()
            return version

    def _commit_rows(self, name, writes, kind, author, message, request=None, metrics=None, new_tokens=(), removed_tokens=()):
        t = self.tables[name]
        stored = to_storage(writes.vectors, t.dtype)

        def write(conn, commit):
            conn.executemany("insert into tokens values (?,?,?,?,?)",
                             [(name, len(t.words) + i, w, commit, NEVER) for i, w in enumerate(new_tokens)])
            conn.executemany("update tokens set removed_in=? where tbl=? and token_id=?",
                             [(commit, name, tok) for tok in removed_tokens])
            conn.executemany("insert into deltas values (?,?,?,?,?)",
                             [(name, tok, layer, commit, vec.tobytes()) for tok, layer, vec in
                              zip(writes.token_ids.tolist(), writes.layers.tolist(), stored)])

        def publish(commit):
            if new_tokens:
                t.add_tokens(list(new_tokens), commit)
            for tok in removed_tokens:
                t.removed_in[tok] = commit
            t.record(commit, writes.token_ids, writes.layers, stored)

        version = self.commit(kind, [name], write, publish, author, message, len(writes), request, metrics)
        return CommitResult(version=version, rows_changed=len(writes))

    def inject_token(self, name, word, vector=None, like=(), author="", message="") -> CommitResult:
        """Grow the vocabulary by one token whose rows (every layer) are a vector, another
        token's rows, or the mean of several tokens' rows. The commit's request records the word
        and its source (editing/inject.py inject_request)."""
        with self._write_lock:
            t = self.table(name)
            v = self._head
            if not word or not word.strip():
                raise InvalidArgument("token: the new token is empty")
            if any(t.added_in[i] <= v < t.removed_in[i] for i in t.ids_of_word.get(word, [])):
                raise Conflict(f"token: {word!r} already exists in table {name!r}")
            if (vector is None) == (not like):
                raise InvalidArgument("vector: give exactly one of a vector or tokens to copy (like)")
            like_ids = self.token_ids(name, like, v, "like") if like else []
            if like:
                rows = self.read_rows(name, like_ids, v).mean(axis=0)
            else:
                rows = np.asarray(vector, dtype=np.float32)
                if rows.shape == (t.dim,):  # one vector for every layer
                    rows = np.broadcast_to(rows, (t.num_layers, t.dim))
                if rows.shape != (t.num_layers, t.dim):
                    raise InvalidArgument(f"vector: expected {t.dim} values (or {t.num_layers}x{t.dim}), got shape {np.shape(vector)}")
                if not np.isfinite(rows).all():
                    raise InvalidArgument("vector: contains NaN or Inf")
            new_id = len(t.words)
            writes = RowWrites(token_ids=np.full(t.num_layers, new_id, dtype=np.int64),
                               layers=np.arange(t.num_layers, dtype=np.int64), vectors=rows.astype(np.float32))
            request = inject_request(word, [t.words[i] for i in like_ids], like_ids)  # workers rebuild its input embedding from it
            return self._commit_rows(name, writes, "inject", author, message or f"inject {word}", request, new_tokens=[word])

    def revert(self, version, author="", message="") -> CommitResult:
        """Undo one commit with a new commit: rows it wrote go back to their values just before
        it, tokens it injected are removed. History is never rewritten. Refused while a later
        commit has rewritten any of the same rows (revert that one first)."""
        with self._write_lock:
            v = self.resolve_version(version)
            info = self._commit_info(v)
            if info.kind in ("import", "compact"):
                raise FailedPrecondition(f"version: commit {v} is an {info.kind}; only edits, injections and reverts can be reverted")
            if info.tables and info.tables[0] in self.mosaic.tables:
                return self.mosaic.revert(v, author, message)
            before = self.resolve_version(v - 1)
            name = info.tables[0]
            t = self.tables[name]
            cur = self._query("select token_id, layer from deltas where commit_id=? and tbl=?", [v, name]).fetchall()
            later = self._query("select min(d.commit_id) from deltas d join deltas e on d.tbl=e.tbl and d.token_id=e.token_id "
                                "and d.layer=e.layer where e.commit_id=? and e.tbl=? and d.commit_id>?", [v, name, v]).fetchone()[0]
            if later is not None:
                raise FailedPrecondition(f"version: rows written by commit {v} were changed again by commit {later}; revert {later} first")
            injected = np.flatnonzero((t.added_in == v) & (t.removed_in > self._head)).tolist()
            restore = [(tok, layer) for tok, layer in cur if tok not in injected]
            old = {tok: to_float32(t.gather(np.array([tok]), before)[0], t.dtype) for tok, _ in restore}
            writes = RowWrites(token_ids=np.array([tok for tok, _ in restore], dtype=np.int64),
                               layers=np.array([layer for _, layer in restore], dtype=np.int64),
                               vectors=np.array([old[tok][layer] for tok, layer in restore], dtype=np.float32).reshape(-1, t.dim))
            return self._commit_rows(name, writes, "revert", author, message or f"revert {v}: {info.message}",
                                     removed_tokens=injected)

    # ---------------------------------------------------------------- history

    def _commit_info(self, version, tags=None) -> CommitInfo:
        r = self._query("select id, time, author, message, kind, tables, rows_changed, request, metrics from commits where id=?", [version]).fetchone()
        if r is None:
            raise NotFound(f"version: version {version} does not exist")
        if tags is None:
            tags = [n for (n,) in self._query("select name from tags where version=?", [version])]
        return CommitInfo(version=r[0], time=r[1], author=r[2], message=r[3], kind=r[4], tables=json.loads(r[5]),
                          rows_changed=r[6], request=EditRequest(**json.loads(r[7])), metrics=json.loads(r[8]), tags=tags)

    def log(self, table=None, limit=None) -> list:
        """Retained commits, newest first (optionally only those touching one table)."""
        tags = {}
        for n, v in self._query("select name, version from tags"):
            tags.setdefault(v, []).append(n)
        ids = [r[0] for r in self._query("select id, tables from commits where gone=0 order by id desc")
               if table is None or table in json.loads(r[1])]
        return [self._commit_info(v, tags.get(v, [])) for v in ids[:limit]]

    def show(self, version) -> tuple:
        """One commit: its metadata and the rows it changed (with L2 and cosine of the change)."""
        v = self.resolve_version(version)
        info = self._commit_info(v)
        if info.kind in ("import", "compact") or (v - 1) in self._gone or v == 1:
            return info, []
        return info, self.diff(v - 1, v)

    def diff(self, from_version, to_version, table=None) -> list:
        """Rows that read differently at two versions."""
        a, b = self.resolve_version(from_version), self.resolve_version(to_version)
        lo, hi = min(a, b), max(a, b)
        changes = []
        for name in sorted(self.tables) if table is None else [table]:
            t = self.table(name, max(a, b))
            if t.created_in > lo:
                continue
            keys = set(self._query("select token_id, layer from deltas where tbl=? and commit_id>? and commit_id<=?", [name, lo, hi]).fetchall())
            (ba, base_a), (bb, base_b) = t.base_at(a), t.base_at(b)
            if ba != bb:
                keys |= _differing_rows(base_a, base_b)
            changes += self._row_changes(t, sorted(keys), a, b)
        return changes

    def _row_changes(self, t, keys, a, b):
        tokens = sorted({tok for tok, _ in keys})
        if not tokens:
            return []
        ids = np.array(tokens, dtype=np.int64)
        old, new = (to_float32(t.gather(ids, v), t.dtype) for v in (a, b))
        pos = {tok: i for i, tok in enumerate(tokens)}
        changes = (_row_change(t, tok, layer, old[pos[tok], layer], new[pos[tok], layer]) for tok, layer in keys)
        return [c for c in changes if c is not None]

    def preview(self, name, ops, version=None) -> tuple:
        """A dry run of an edit: (RowWrites, [RowChange]) — what would change, nothing written."""
        v = self.resolve_version(version)
        writes = self.plan(name, ops, v)
        t = self.table(name, v)
        new = to_float32(to_storage(writes.vectors, t.dtype), t.dtype)  # as the table would store them
        old = to_float32(t.gather(writes.token_ids, v), t.dtype)[np.arange(len(writes)), writes.layers]
        changes = (_row_change(t, tok, layer, x, y) for tok, layer, x, y in
                   zip(writes.token_ids.tolist(), writes.layers.tolist(), old, new))
        return writes, [c for c in changes if c is not None]

    # ---------------------------------------------------------------- tags

    def tag(self, name, version=None) -> int:
        """Name a version; a tagged version is kept by gc."""
        if not name or not name.strip():
            raise InvalidArgument("tag: the tag name is empty")
        with self._write_lock:
            v = self.resolve_version(version)
            if self._query("select 1 from tags where name=?", [name]).fetchone():
                raise Conflict(f"tag: tag {name!r} already exists")
            with self._transaction() as conn:
                conn.execute("insert into tags values (?,?,?)", [name, v, time.time()])
            return v

    def delete_tag(self, name) -> int:
        with self._write_lock:
            row = self._query("select version from tags where name=?", [name]).fetchone()
            if row is None:
                raise NotFound(f"tag: unknown tag {name!r}")
            with self._transaction() as conn:
                conn.execute("delete from tags where name=?", [name])
            return row[0]

    def tags(self) -> dict:
        return dict(self._query("select name, version from tags order by version, name").fetchall())

    # ---------------------------------------------------------------- compaction and gc

    def compact(self, author="", message="", progress=False) -> CommitResult:
        """Fold every table's deltas into new base arrays, as one commit that changes no row."""
        with self._write_lock:
            version = self._head + 1
            files = {}
            for name, t in self.tables.items():
                ids = np.arange(len(t.words), dtype=np.int64)
                files[name] = self._write_base(name, version, t.gather(ids, self._head), progress)

            def write(conn, version):
                conn.executemany("insert into bases values (?,?,?,?)",
                                 [(name, version, rel, len(self.tables[name].words)) for name, rel in files.items()])

            def publish(version):
                for name, rel in files.items():
                    t = self.tables[name]
                    t.bases.append((version, self._map_base(rel, t)))

            self.commit("compact", list(files), write, publish, author, message or "compact")
            return CommitResult(version=version, rows_changed=0)

    def gc(self, retention_seconds=None, now=None) -> dict:
        """Forget versions older than the retention window that no tag protects, then delete
        the deltas and base files that no retained version reads. Every retained version
        reads exactly what it read before."""
        retention = self.config.retention_seconds if retention_seconds is None else retention_seconds
        now = time.time() if now is None else now
        with self._write_lock:
            tagged = set(self.tags().values())
            rows = self._query("select id, time from commits where gone=0").fetchall()
            retained = {v for v, t in rows if t >= now - retention or v in tagged or v == self._head}
            dropped = [v for v, _ in rows if v not in retained]
            stale_deltas, stale_bases = [], []
            for name, t in self.tables.items():
                live = [v for v in retained if v >= t.created_in]
                base_of = {v: t.base_at(v)[0] for v in live}
                stale_bases += [(name, b) for b, _ in t.bases if b not in base_of.values()]
                for c, tok, layer in self._query("select commit_id, token_id, layer from deltas where tbl=?", [name]):
                    if not any(base_of[v] < c <= v for v in live):
                        stale_deltas.append((name, tok, layer, c))
            files = [self._query("select file from bases where tbl=? and version=?", sb).fetchone()[0] for sb in stale_bases]
            with self._transaction() as conn:
                conn.executemany("update commits set gone=1 where id=?", [(v,) for v in dropped])
                conn.executemany("delete from deltas where tbl=? and token_id=? and layer=? and commit_id=?", stale_deltas)
                conn.executemany("delete from bases where tbl=? and version=?", stale_bases)
                pairs_deleted = self.mosaic.gc(conn, retained)
            for f in files:
                (self.root / f).unlink(missing_ok=True)
            self._load()
            return {"versions_dropped": len(dropped), "deltas_deleted": len(stale_deltas), "bases_deleted": len(files),
                    "pairs_deleted": pairs_deleted}


def _row_change(t, token_id, layer, old, new):
    """The change of one row (L2 distance, cosine of old and new), or None when it is equal."""
    if np.array_equal(old, new):
        return None
    denom = float(np.linalg.norm(old) * np.linalg.norm(new))
    return RowChange(table=t.name, token_id=token_id, token=t.words[token_id], layer=layer,
                     l2=float(np.linalg.norm(new - old)), cosine=float(old @ new / denom) if denom else 0.0)


def _differing_rows(base_a, base_b, chunk=4096) -> set:
    """(token, layer) pairs whose rows differ between two base arrays (compared in chunks)."""
    n = min(base_a.shape[0], base_b.shape[0])
    keys = set()
    for start in range(0, n, chunk):
        diff = np.any(base_a[start:start + chunk] != base_b[start:start + chunk], axis=2)
        keys |= {(start + int(i), int(l)) for i, l in zip(*np.nonzero(diff))}
    keys |= {(i, l) for i in range(n, max(base_a.shape[0], base_b.shape[0])) for l in range(base_a.shape[1])}
    return keys
