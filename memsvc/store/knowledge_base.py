"""The versioned knowledge store: one data directory per knowledge base (KB).

Layout of a data directory::

    catalog.db                 SQLite (WAL): commits, tags, and each table kind's own tables
    bases/<table>/v<N>.npy     immutable token-major base arrays [vocab, layers, dim], memory-mapped
    .lock                      held by the one process that has the KB open

Every mutation is a commit of the CommitLog (commit_log.py) with a KB-wide, monotonically
increasing id (the version). Two table kinds share it: banks (banks.py, embedding rows by token)
and mosaic stores (mosaic.py, key/value pairs). KnowledgeBase opens the directory and dispatches
by table; history.py and maintenance.py hold show/diff and compact/gc.

    >>> kb = KnowledgeBase(StoreConfig(data_dir=tmp, create=True))
    >>> kb.import_table("bank", rows, vocab).version
    1
    >>> kb.edit("bank", [RowOp("set", 5, vector=v)], message="fix").version
    2
    >>> kb.lookup("bank", [5], version=1).version
    1
    >>> kb.checkout(1).lookup("bank", [5]).version     # a read-only handle on one version
    1
"""
import fcntl
import math
import secrets
import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from memsvc.core.dtypes import storage_dtype
from memsvc.core.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from memsvc.core.values import CommitResult, LookupResult, TableExport, TableInfo
from memsvc.store import history, maintenance
from memsvc.store.banks import BankTables
from memsvc.store.commit_log import CommitLog, check_table_name
from memsvc.store.mosaic import MosaicStore


@dataclass
class StoreConfig:
    data_dir: Path
    create: bool = False  # create an empty KB when data_dir holds none
    retention_seconds: float = 7 * 86400.0  # gc keeps versions younger than this (and tagged ones)
    durable: bool = True  # fsync every commit (SQLite synchronous=FULL)
    max_lookup_tokens: int | None = None  # a lookup of more tokens is refused (ResourceExhausted)
    max_message_bytes: int | None = None  # ... and one whose rows exceed this less 1 MiB of reply overhead
    delta_cache_bytes: int = 64 << 20  # delta rows kept in memory once read (LRU); the rest stay in the catalog


class KnowledgeBase:
    """A versioned knowledge base in one data directory (see the module docstring)."""

    def __init__(self, config: StoreConfig):
        self.config = config
        self.root = Path(config.data_dir)
        self.commits = None
        catalog = self.root / "catalog.db"
        if not catalog.exists():
            if not config.create:
                raise FailedPrecondition(f"data: no knowledge base at {self.root} (create one with `memsvc import` or `memsvc serve`)")
            self.root.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.root / ".lock", "a+")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise FailedPrecondition(f"data: {self.root} is open in another process (a running server? send the "
                                     "command to it with --server HOST:PORT or MEMSVC_SERVER=HOST:PORT, or stop it)")
        for stale in self.root.glob(".import-*.tmp"):  # a process killed mid-import left it; none runs while we hold the lock
            stale.unlink(missing_ok=True)
        try:
            self.commits = CommitLog(catalog, config.durable, reload=self._load)
            self._load()
        except BaseException as e:
            self.close()  # at once: the log refers back to this KB, so its lock would outlive it until a gc
            if isinstance(e, sqlite3.DatabaseError):
                raise FailedPrecondition(f"data: {catalog} is not a readable knowledge base catalog ({e})")
            raise

    def _load(self):
        """Rebuild the in-memory mirror of every table kind from the catalog and the base files."""
        self.commits.refresh()
        self.banks = BankTables(self.commits, self.root, self.config)
        self.mosaic = MosaicStore(self.commits)
        self.commits.kinds = [self.banks, self.mosaic]

    def close(self):
        if self.commits is not None:
            self.commits.close()
        if not self._lock_file.closed:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def limit_lookups(self, max_tokens: int | None, max_message_bytes: int | None):
        """The lookup limits a server hands its store (ServerConfig.max_lookup_tokens, max_message_bytes)."""
        self.config.max_lookup_tokens, self.config.max_message_bytes = max_tokens, max_message_bytes

    # ---------------------------------------------------------------- versions

    @property
    def version(self) -> int:
        """The head: the newest commit id (0 for an empty KB)."""
        return self.commits.head

    def list_versions(self) -> list:
        return self.commits.list_versions()

    def resolve_version(self, version=None, tag=None) -> int:
        return self.commits.resolve_version(version, tag)

    def table(self, name, version=None):
        """The bank table's in-memory state (bank_table.TableState)."""
        return self.banks.table(name, version)

    def checkout(self, version=None, tag=None) -> "Checkout":
        """A read-only handle on one version (default: the head now), as MemoryClient.pinned()."""
        return Checkout(self, self.resolve_version(version, tag))

    # ---------------------------------------------------------------- reads

    def list_tables(self, version=None) -> list:
        v = self.resolve_version(version)
        return sorted(self.banks.list_tables(v) + self.mosaic.list_tables(v), key=lambda info: info.name)

    def describe(self, table, version=None) -> TableInfo:
        v = self.resolve_version(version)
        if table in self.mosaic.tables:
            return self.mosaic.describe(table, v)
        return self.banks.describe(table, v)

    def vocabulary(self, table, version=None) -> list:
        """The table's words by token id at a version ('' for ids that do not exist there)."""
        return self.banks.vocabulary(table, self.resolve_version(version))

    def tokenizer(self, table, version=None) -> tuple:
        """(kind, file bytes) of the tokenizer imported with a table; ("", b"") for a word list
        (editing.tokens.Vocabulary.of builds the table's vocabulary from it and its words)."""
        return self.banks.tokenizer(table, self.resolve_version(version))

    def token_ids(self, table, words, version=None, field="tokens"):
        return self.banks.token_ids(table, words, self.resolve_version(version), field)

    def lookup(self, table, tokens, layers=None, version=None, tag=None, overrides=None, *, out=None) -> LookupResult:
        """Rows of tokens (ids, words, or ids then words) at a version or tag (default: the head),
        de-duplicated. ``overrides`` (RowOps) apply to this read only, planned exactly as a
        persistent edit of the same ops would be. ``out(shape, dtype)`` may give an array for the
        rows (a shared reply buffer) or None: every layer without overrides is gathered straight
        into it in request order (``ordered``), anything else copied in; ``in_buffer`` says
        whether it was used. Refused beyond the limits of ``limit_lookups``."""
        v = self.commits.resolve_version(version, tag)
        return self.banks.lookup(table, tokens, layers, v, overrides, out)

    def read_rows(self, table, token_ids, version=None):
        """float32 rows (n, L, d) of token ids at a version (all layers)."""
        return self.banks.read_rows(table, token_ids, self.resolve_version(version))

    def snapshot(self, table, version=None, *, start_token_id=0, max_bytes=None) -> dict:
        """The base file and the delta rows of a version, paged by ``start_token_id`` and
        ``max_bytes`` (BankTables.snapshot)."""
        return self.banks.snapshot(table, self.resolve_version(version), start_token_id, max_bytes)

    def changed_tokens(self, table, from_version, to_version):
        """Token ids whose rows read differently at two versions (what a cache must drop)."""
        a, b = self.resolve_version(from_version), self.resolve_version(to_version)
        return self.banks.table(table, max(a, b)).changed_tokens(a, b)

    def plan(self, table, ops, version=None):
        """The row writes a batch of RowOps implies at a version (the dry run of an edit)."""
        return self.banks.plan(table, ops, self.resolve_version(version))

    def preview(self, table, ops) -> tuple:
        """A dry run of an edit at the head: (RowWrites, [RowChange]), nothing written."""
        v = self.version
        writes = self.banks.plan(table, ops, v)
        return writes, self.banks.planned_changes(table, writes, v)

    # ---------------------------------------------------------------- writes

    def import_table(self, table, rows, vocab, dtype="float32", author="", message="", progress=False,
                     model_layers=(), tokenizer=None) -> CommitResult:
        """A new bank table from rows [V, L, d] (an array or ChunkedRows, written chunk by chunk) and
        V words; ``model_layers``: the transformer layer each table layer feeds; ``tokenizer``:
        (kind, file bytes) of the tokenizer the words come from (editing/tokenizers.py)."""
        return self.banks.import_table(table, rows, vocab, dtype, author, message, progress, model_layers, tokenizer)

    def edit(self, table, ops, author="", message="", request=None, metrics=None) -> CommitResult:
        """Apply a batch of RowOps as one atomic commit; ``changes`` lists the rows it changed."""
        return self.banks.edit(table, ops, author, message, request, metrics)

    def inject_token(self, table, word, vector=None, like=(), author="", message="") -> CommitResult:
        return self.banks.inject_token(table, word, vector, like, author, message)

    def commit(self, kind, tables, write, publish, author="", message="", rows_changed=0, request=None, metrics=None) -> int:
        """One atomic commit of any table kind (CommitLog.commit)."""
        return self.commits.commit(kind, tables, write, publish, author, message, rows_changed, request, metrics)

    def revert(self, version, author="", message="") -> CommitResult:
        """Undo one commit with a new commit: rows it wrote go back to their values just before
        it, tokens it injected are removed, pairs it changed come back. History is never
        rewritten. Refused while a later commit has rewritten any of the same rows (revert that
        one first)."""
        with self.commits.lock:
            v = self.resolve_version(version)
            info = self.commits.commit_info(v)
            if info.kind in ("import", "compact"):
                raise FailedPrecondition(f"version: commit {v} is an {info.kind}; only edits, injections and reverts can be reverted")
            if info.tables and info.tables[0] in self.mosaic.tables:
                return self.mosaic.revert(v, author, message)
            return self.banks.revert(v, info, author, message)

    # ---------------------------------------------------------------- history and tags

    def log(self, table=None, limit=None) -> list:
        """Retained commits, newest first (optionally only those touching one table)."""
        return self.commits.log(table, limit)

    def show(self, version) -> tuple:
        """One commit: its metadata and the rows it changed (with L2 and cosine of the change)."""
        return history.show(self.commits, self.banks, version)

    def diff(self, from_version, to_version, table=None) -> list:
        """Rows that read differently at two versions."""
        return history.diff(self.commits, self.banks, from_version, to_version, table)

    def tag(self, name, version=None) -> int:
        """Name a version; a tagged version is kept by gc."""
        return self.commits.tag(name, version)

    def delete_tag(self, name) -> int:
        return self.commits.delete_tag(name)

    def tags(self) -> dict:
        return self.commits.tags()

    # ---------------------------------------------------------------- maintenance

    def compact(self, author="", message="", progress=False) -> CommitResult:
        """Fold every table's deltas into new base arrays, as one commit that changes no row."""
        return maintenance.compact(self.commits, self.banks, author, message, progress)

    def gc(self, retention_seconds=None, now=None) -> dict:
        """Forget versions older than the retention window that no tag protects, then delete
        what no retained version reads (maintenance.gc)."""
        retention = self.config.retention_seconds if retention_seconds is None else retention_seconds
        with self.commits.lock:
            report = maintenance.gc(self.commits, self.banks, self.mosaic, retention, time.time() if now is None else now)
            self._load()
            return report

    # ---------------------------------------------------------------- whole tables in and out, a chunk at a time

    def import_chunks(self, table, chunks, vocab, dtype, shape, author="", message="", model_layers=(),
                      tokenizer=None) -> CommitResult:
        """Import a table whose rows arrive as chunks of tokens in id order (the ImportTable stream):
        ``vocab`` (words, or a vocabulary file's bytes) and ``shape`` [V, L, d] are checked before the
        first chunk is read, each chunk is checked (finite) and written, with its crc32s, to a temporary
        file in the data directory, which the commit renames into the table's base: the rows are
        written once. Whatever fails or interrupts leaves no file and no version."""
        from memsvc.store.banks import checked_chunk, checked_model_layers
        from memsvc.store.checksums import token_sums
        from memsvc.store.importers import npy_writer, vocab_from_bytes

        words, tokenizer = vocab_from_bytes(vocab, shape[0]) if isinstance(vocab, bytes) else (list(vocab), tokenizer)
        check_table_name(table)
        if len(shape) != 3 or min(shape) < 1:
            raise InvalidArgument(f"shape: expected [vocab_size, num_layers, dim] of at least 1 each, got {list(shape)}")
        if len(words) != shape[0] or len(set(words)) != len(words):
            raise InvalidArgument(f"vocab: expected {shape[0]} distinct words, got {len(words)} ({len(set(words))} distinct)")
        checked_model_layers(model_layers, shape[1])
        nbytes = math.prod(shape) * storage_dtype(dtype).itemsize
        if nbytes > shutil.disk_usage(self.root).free:  # the base, written once
            raise ResourceExhausted(f"data: {self.root} has no room for {nbytes} bytes of rows")
        with self.commits.lock:
            self.commits.check_unused(table)
        tmp = self.root / f".import-{secrets.token_hex(8)}.tmp"  # backup skips *.tmp; a next open removes it
        try:
            sums = []
            with npy_writer(tmp, dtype, shape) as out:
                for i, rows in enumerate(chunks, 1):  # chunk i is ImportTable's message i
                    rows = checked_chunk(rows, dtype)
                    out.write(rows, f"rows (chunk {i})")
                    sums.append(token_sums(rows))
                out.finish()
            return self.banks.import_written(table, tmp, np.concatenate(sums).astype(np.uint32).tobytes(), tuple(shape),
                                             words, dtype, author, message, model_layers, tokenizer)
        finally:
            tmp.unlink(missing_ok=True)  # gone already once the commit renamed it

    def export_table(self, table, version=None, *, chunk_bytes=16 << 20) -> TableExport:
        """The tokens alive at a version in id order with their words, and their rows read a chunk
        of about ``chunk_bytes`` at a time as the export iterates (memory: one chunk)."""
        v = self.resolve_version(version)
        if table in self.mosaic.tables:
            raise FailedPrecondition(f"table: {table!r} is a mosaic store; export its pairs with `memsvc mosaic export`")
        t = self.banks.table(table, v)
        ids = np.flatnonzero(t.alive(v))
        step = max(1, chunk_bytes // (t.num_layers * t.dim * storage_dtype(t.dtype).itemsize))
        chunks = (t.gather(ids[a:a + step], v) for a in range(0, len(ids), step))
        return TableExport(self.banks.describe(table, v), ids, [t.words[i] for i in ids], chunks)


class Checkout:
    """One version of a KnowledgeBase, read-only (LanceDB's checkout): every read is at that
    version, every write is refused."""

    def __init__(self, kb: KnowledgeBase, version: int):
        self.kb, self.version = kb, version

    def vocabulary(self, table) -> list:
        return self.kb.vocabulary(table, self.version)

    def lookup(self, table, tokens, layers=None, overrides=None) -> LookupResult:
        return self.kb.lookup(table, tokens, layers, version=self.version, overrides=overrides)

    def describe(self, table) -> TableInfo:
        return self.kb.describe(table, self.version)

    def list_tables(self) -> list:
        return self.kb.list_tables(self.version)

    def token_ids(self, table, words, field="tokens"):
        return self.kb.token_ids(table, words, self.version, field)

    def tokenizer(self, table) -> tuple:
        return self.kb.tokenizer(table, self.version)

    def read_rows(self, table, token_ids):
        return self.kb.read_rows(table, token_ids, self.version)

    def snapshot(self, table) -> dict:
        return self.kb.snapshot(table, self.version)

    def _refuse(self, *args, **kwargs):
        raise FailedPrecondition(f"checkout: version {self.version} is read-only; write through the KnowledgeBase")

    edit = inject_token = import_table = revert = tag = delete_tag = commit = compact = gc = _refuse
