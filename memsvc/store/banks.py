"""The bank table kind: token-major embedding rows [vocab, layers, dim] with a vocabulary.

Catalog tables: tables, bases, tokens, deltas. Reading version v of a table = the newest base at
or below v, overlaid with the rows that commits in (base, v] wrote (bank_table.TableState knows
where they are, delta_rows.py reads them); every write is a commit of the KB's CommitLog.
"""
import json
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from editing.inject import inject_request
from editing.rows import plan_row_ops
from memsvc.core.dtypes import storage_dtype, to_float32, to_storage
from memsvc.core.errors import Conflict, FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from memsvc.core.values import CommitResult, LookupResult, RowChange, RowWrites, TableInfo
from memsvc.store import bank_table, lifetimes
from memsvc.store.bank_table import BaseCopy, TableState, map_for_lookups, write_at
from memsvc.store.checksums import MISSING, check_commit, create_tables, delta_sums, row_sums, summed_from, token_sums
from memsvc.store.commit_log import NEVER, CommitLog, alive, check_table_name
from memsvc.store.delta_rows import UNCHECKED, DeltaReader, load_history
from memsvc.store.files import fsync_dir


class BankTables:
    """Every bank table of one knowledge base, loaded from its catalog and base files."""

    def __init__(self, log: CommitLog, root: Path, limits):
        self.log, self.root, self.limits = log, root, limits
        db = log.db
        db["tables"].create({"name": str, "kind": str, "dtype": str, "dim": int, "num_layers": int,
                             "created_in": int}, pk="name", if_not_exists=True)
        db["bases"].create({"tbl": str, "version": int, "file": str, "vocab_size": int},
                           pk=("tbl", "version"), if_not_exists=True)
        db["tokens"].create({"tbl": str, "token_id": int, "token": str, "added_in": int, "removed_in": int},
                            pk=("tbl", "token_id"), if_not_exists=True)
        db["deltas"].create({"tbl": str, "token_id": int, "layer": int, "commit_id": int, "data": bytes},
                            pk=("tbl", "token_id", "layer", "commit_id"), if_not_exists=True)
        db["deltas"].create_index(["commit_id"], if_not_exists=True)
        # what an import knew of the model: its layer mapping and its tokenizer file (immutable)
        db["table_models"].create({"tbl": str, "model_layers": str, "tokenizer_kind": str, "tokenizer": bytes},
                                  pk="tbl", if_not_exists=True)
        # what each compaction folded: the (token, layer) pairs whose rows its base changed, as int64 (n, 2)
        db["folds"].create({"tbl": str, "version": int, "pairs": bytes}, pk=("tbl", "version"), if_not_exists=True)
        create_tables(db)  # delta_sums, base_sums (a catalog from before checksums gains them empty)
        self.reader = DeltaReader(log, limits.delta_cache_bytes)
        self.sums_from = summed_from(log.query, "delta_sums")  # from this commit on, a missing record is damage
        self.tables = {}
        for r in db["tables"].rows:
            self.tables[r["name"]] = self.load_table(r)

    def load_table(self, r) -> TableState:
        """One table's memory from the catalog (``r``: its row of ``tables``): bases mapped,
        vocabulary, compaction records, and where its delta rows are (delta_rows.load_history:
        their keys and checksums, no row)."""
        log = self.log
        t = TableState(r["name"], r["kind"], r["dtype"], r["dim"], r["num_layers"], r["created_in"], self.reader)
        for b in log.query("select version, file from bases where tbl=? order by version", [t.name]).fetchall():
            t.bases.append((b[0], self.map_base(b[1], t)))
        for version, sums in log.query("select version, sums from base_sums where tbl=?", [t.name]).fetchall():
            t.base_sums[version] = np.frombuffer(sums, np.uint32)
        toks = log.query("select token, added_in, removed_in from tokens where tbl=? order by token_id", [t.name]).fetchall()
        t.add_tokens([w for w, _, _ in toks], 0)
        t.added_in = np.array([a for _, a, _ in toks], dtype=np.int64)
        t.removed_in = np.array([r_ for _, _, r_ in toks], dtype=np.int64)
        # the compactions that folded it (gc may have deleted their bases)
        t.compactions = [v for v, tables in log.query("select id, tables from commits where kind='compact' order by id")
                         if t.name in json.loads(tables)]
        for version, pairs in log.query("select version, pairs from folds where tbl=?", [t.name]).fetchall():
            t.folds[version] = np.frombuffer(pairs, np.int64).reshape(-1, 2)
        load_history(t, log, self.sums_from)
        lifetimes.mark_bank_table(t, log.query)
        model = log.query("select model_layers, tokenizer_kind, tokenizer from table_models where tbl=?", [t.name]).fetchone()
        if model is not None:
            t.model_layers, t.tokenizer = json.loads(model[0]), (model[1], model[2] or b"")
        return t

    def map_base(self, file, table):
        path = self.root / file
        try:
            arr = map_for_lookups(path)
        except (OSError, ValueError, EOFError) as e:  # EOFError: a file truncated to 0 bytes
            raise FailedPrecondition(f"data: base file {path} of table {table.name!r} is missing or unreadable ({e})")
        if arr.ndim != 3 or arr.shape[1:] != (table.num_layers, table.dim) or arr.dtype != storage_dtype(table.dtype):
            raise FailedPrecondition(f"data: base file {path} has shape {arr.shape} {arr.dtype}, the catalog says [*, {table.num_layers}, {table.dim}] {table.dtype}")
        return arr

    def write_base(self, table_name, version, shape, dtype, chunks, progress=False, copy_from=None) -> tuple:
        """Write an immutable base array of ``shape`` atomically (tmp file, fsync, rename) from
        ``chunks``, (first token, rows) blocks written straight into the file as they come, so no
        more than one is in memory (over and after the rows of ``copy_from``: _write_npy);
        returns its path relative to the data dir and the crc32s of its token rows
        (checksums.py), for ``insert_base``."""
        folder = self.root / "bases" / table_name
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"v{version}.npy.tmp"
        try:
            sums = _write_npy(tmp, shape, dtype, chunks, f"writing {table_name} base", progress, copy_from)
        except BaseException:
            tmp.unlink(missing_ok=True)  # a refused, failed or interrupted write leaves nothing
            if not any(folder.iterdir()):
                folder.rmdir()
            raise
        return self.place_base(table_name, version, tmp), sums

    def place_base(self, table_name, version, written) -> str:
        """Name a written, synced base file (``written``: a temporary name in the data directory)
        the base of a table at a version: renamed, its folder synced. Returns its path relative
        to the data directory."""
        folder = self.root / "bases" / table_name
        folder.mkdir(parents=True, exist_ok=True)
        rel = f"bases/{table_name}/v{version}.npy"
        os.replace(written, self.root / rel)
        fsync_dir(folder)
        return rel

    @staticmethod
    def insert_base(conn, table_name, version, written, vocab_size):
        """Name a base that write_base wrote, with its checksums, in a commit's transaction."""
        rel, sums = written
        conn.execute("insert into bases values (?,?,?,?)", [table_name, version, rel, vocab_size])
        conn.execute("insert into base_sums values (?,?,?)", [table_name, version, sums])

    def table(self, name, version=None) -> TableState:
        version = self.log.head if version is None else version
        t = self.tables.get(name)
        if t is None or t.created_in > version:
            raise NotFound(f"table: unknown table {name!r}" + ("" if t is None else f" at version {version}"))
        return t

    # ---------------------------------------------------------------- reads (at a resolved version)

    def describe(self, name, v) -> TableInfo:
        t = self.table(name, v)
        return TableInfo(name=t.name, kind=t.kind, dtype=t.dtype, vocab_size=t.vocab_size(v),
                         num_layers=t.num_layers, dim=t.dim, created_version=t.created_in,
                         base_version=t.base_at(v)[0], version=v, model_layers=list(t.model_layers),
                         tokenizer=t.tokenizer[0])

    def list_tables(self, v) -> list:
        return [self.describe(name, v) for name, t in sorted(self.tables.items()) if t.created_in <= v]

    def vocabulary(self, name, v) -> list:
        """The table's words by token id at a version ('' for ids that do not exist there)."""
        t = self.table(name, v)
        t.check_lifetimes(None, v)
        return [w if a else "" for w, a in zip(t.words, t.alive(v))]

    def tokenizer(self, name, v) -> tuple:
        """(kind, file bytes) of the tokenizer imported with the table; ("", b"") for a word list."""
        return self.table(name, v).tokenizer

    def token_ids(self, name, words, v, field="tokens") -> np.ndarray:
        t = self.table(name, v)
        return np.array([t.id_of(w, v, field) for w in words], dtype=np.int64)

    def lookup(self, name, tokens, layers, v, overrides, out) -> LookupResult:
        """The one read of rows (KnowledgeBase.lookup): the table fetched once, the limits checked
        before any row is gathered, rows gathered straight into ``out`` when it takes them."""
        t = self.table(name, v)
        ids = _requested_ids(t, tokens, v)
        layer_idx = t.check_layers(layers)
        self._check_size(t, len(ids), 0 if layer_idx is None else len(layer_idx))
        if out is not None and layer_idx is None and not overrides:  # the decode hot path: request order, no copy
            rows = out((len(ids), t.num_layers, t.dim), storage_dtype(t.dtype))
            if rows is not None:
                t.gather(ids, v, out=rows)
                return LookupResult(rows=rows, unique_ids=ids, inverse=np.arange(len(ids)), version=v, dtype=t.dtype,
                                    ordered=True, in_buffer=True)
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
        result = LookupResult(rows=rows, unique_ids=unique_ids, inverse=inverse, version=v, dtype=t.dtype)
        target = None if out is None else out(rows.shape, rows.dtype)
        if target is not None:
            np.copyto(target, rows)
            result.rows, result.in_buffer = target, True
        return result

    def _check_size(self, t, n_tokens, n_layers):
        """The limits ServerConfig hands the store (StoreConfig.max_lookup_tokens, max_message_bytes)."""
        max_tokens, max_bytes = self.limits.max_lookup_tokens, self.limits.max_message_bytes
        if max_tokens is None and max_bytes is None:
            return
        row_bytes = (n_layers or t.num_layers) * t.dim * (4 if t.dtype == "float32" else 2)
        if (max_tokens is not None and n_tokens > max_tokens) or \
                (max_bytes is not None and n_tokens * row_bytes > max_bytes - (1 << 20)):
            raise ResourceExhausted(f"token_ids: {n_tokens} tokens x {row_bytes} bytes exceed the lookup limit "
                                    f"({max_tokens} tokens, {max_bytes} bytes); split the request")

    def _apply_overrides(self, t, v, unique_ids, rows, overrides):
        writes = self.plan(t.name, overrides, v, field="overrides")
        stored = to_storage(writes.vectors, t.dtype)
        position = {int(tok): i for i, tok in enumerate(unique_ids)}
        for tok, layer, vec in zip(writes.token_ids.tolist(), writes.layers.tolist(), stored):
            if tok in position:
                rows[position[tok], layer] = vec
        return rows

    def snapshot(self, name, v, start_token_id=0, max_bytes=None) -> dict:
        """A version as its read-only base file plus the full rows of every token edited since
        that base, in ascending token id order: what a worker on the same host maps instead of
        asking per row. Paged so that any number of edited tokens fits in bounded messages: rows
        of tokens >= ``start_token_id``, at most ``max_bytes`` of them (at least one token's);
        ``next_token_id`` starts the next page (0 after the last). ``delta_tokens_total`` counts
        every page's tokens on the first page (start_token_id 0), and is 0 on the others."""
        t = self.table(name, v)
        if start_token_id < 0:
            raise InvalidArgument(f"start_token_id: {start_token_id} is negative")
        base_version, base = t.base_at(v)
        row_bytes = t.num_layers * t.dim * storage_dtype(t.dtype).itemsize
        edited = ((tok, w) for tok in (np.flatnonzero(t.edited[start_token_id:]) + start_token_id).tolist()
                  if (w := t.latest_writes(tok, v, base_version)))
        page, next_token_id = [], 0
        for tok, writes in edited:
            if max_bytes and page and (len(page) + 1) * row_bytes > max_bytes:
                next_token_id = tok
                break
            page.append((tok, writes))
        limit = self.limits.max_message_bytes
        if not max_bytes and limit is not None and len(page) * row_bytes > limit - (1 << 20):
            raise ResourceExhausted(f"max_bytes: the delta rows of {len(page)} tokens are {len(page) * row_bytes} bytes, "
                                    f"over the message limit ({limit}); page them with max_bytes")
        rows = t.delta_page(page, v)
        total = (len(page) + sum(1 for _ in edited) + (next_token_id > 0)) if start_token_id == 0 else 0
        return dict(version=v, base_version=base_version, base_path=str(Path(base.filename).resolve()),
                    delta_token_ids=np.array([tok for tok, _ in page], dtype=np.int64), delta_rows=rows, vocab_size=len(t.words),
                    dtype=t.dtype, next_token_id=next_token_id, delta_tokens_total=total)

    def read_rows(self, name, token_ids, v) -> np.ndarray:
        """float32 rows (n, L, d) of token ids at a version (all layers)."""
        t = self.table(name, v)
        return to_float32(t.gather(t.check_ids(token_ids, v), v), t.dtype)

    def plan(self, name, ops, v, field="ops") -> RowWrites:
        """The row writes a batch of RowOps implies at a version (the dry run of an edit); errors name
        ``field`` (``ops`` of an edit, ``overrides`` of a lookup)."""
        t = self.table(name, v)
        for i, op in enumerate(ops):
            if op.token_id is None:
                op.token_id = t.id_of(op.token, v, f"{field}[{i}].token") if op.token else None
            if op.source_token_id is None and op.source_token:
                op.source_token_id = t.id_of(op.source_token, v, f"{field}[{i}].source_token")
            if op.token_id is None:
                raise InvalidArgument(f"{field}[{i}].token: name the token by id or by word")
            t.check_ids([op.token_id], v, f"{field}[{i}].token_id")
            if op.source_token_id is not None:
                t.check_ids([op.source_token_id], v, f"{field}[{i}].source_token_id")
        return plan_row_ops(ops, lambda ids: to_float32(t.gather(ids, v), t.dtype),
                            lambda ids: _base_rows(t, ids), t.num_layers, t.dim, field)

    def planned_changes(self, name, writes, v) -> list:
        """The RowChanges of planned writes against version v (rows that would read differently)."""
        t = self.table(name, v)
        new = to_float32(to_storage(writes.vectors, t.dtype), t.dtype)  # as the table would store them
        old = to_float32(t.gather(writes.token_ids, v), t.dtype)[np.arange(len(writes)), writes.layers]
        changes = (row_change(t, tok, layer, x, y) for tok, layer, x, y in
                   zip(writes.token_ids.tolist(), writes.layers.tolist(), old, new))
        return [c for c in changes if c is not None]

    # ---------------------------------------------------------------- writes

    def import_table(self, name, rows, vocab, dtype="float32", author="", message="", progress=False,
                     model_layers=(), tokenizer=None) -> CommitResult:
        """Create a table from token-major rows (V, L, d) and a vocabulary of V words; optionally the
        transformer layer each table layer feeds and the tokenizer file (kind, bytes) the words come from."""
        check_table_name(name)
        model_layers = checked_model_layers(model_layers, rows.shape[1])
        if rows.ndim != 3 or 0 in rows.shape:
            raise InvalidArgument(f"rows: expected a non-empty [vocab, layers, dim] array, got shape {rows.shape}")
        if len(vocab) != rows.shape[0]:
            raise InvalidArgument(f"vocab: {len(vocab)} words for {rows.shape[0]} rows")
        if len(set(vocab)) != len(vocab):
            raise InvalidArgument("vocab: words repeat")
        with self.log.lock:
            self.log.check_unused(name)
            step = max(1, bank_table.CHUNK_BYTES // max(1, rows[0].nbytes))
            chunks = ((i, checked_chunk(rows[i:i + step], dtype)) for i in range(0, len(rows), step))
            written = self.write_base(name, self.log.head + 1, rows.shape, storage_dtype(dtype), chunks, progress)
            return self._commit_import(name, written, rows.shape, vocab, dtype, author, message, model_layers, tokenizer)

    def import_written(self, name, path, sums, shape, vocab, dtype="float32", author="", message="", model_layers=(),
                       tokenizer=None) -> CommitResult:
        """Create a table from a base file already written and synced in the data directory (``path``,
        a .npy of ``shape`` in the table's storage dtype whose rows were checked as they were
        written; ``sums``: its token crc32s as uint32 bytes): renamed into place, not copied."""
        check_table_name(name)
        model_layers = checked_model_layers(model_layers, shape[1])
        with self.log.lock:
            self.log.check_unused(name)
            written = self.place_base(name, self.log.head + 1, path), sums
            return self._commit_import(name, written, shape, vocab, dtype, author, message, model_layers, tokenizer)

    def _commit_import(self, name, written, shape, vocab, dtype, author, message, model_layers, tokenizer):
        """The import's commit, once its base is in place (write_base or place_base, log lock held)."""
        tokenizer, n_rows = tokenizer or ("", b""), int(shape[0] * shape[1])

        def write(conn, version):
            conn.execute("insert into tables values (?,?,?,?,?,?)", [name, "bank", dtype, shape[2], shape[1], version])
            self.insert_base(conn, name, version, written, shape[0])
            conn.executemany("insert into tokens values (?,?,?,?,?)", [(name, i, w, version, NEVER) for i, w in enumerate(vocab)])
            if model_layers or tokenizer[0]:
                conn.execute("insert into table_models values (?,?,?,?)",
                             [name, json.dumps(model_layers), tokenizer[0], tokenizer[1]])

        def publish(version):
            t = TableState(name, "bank", dtype, shape[2], shape[1], version, self.reader)
            t.model_layers, t.tokenizer = model_layers, tokenizer
            t.bases.append((version, self.map_base(written[0], t)))
            t.base_sums[version] = np.frombuffer(written[1], np.uint32)
            t.add_tokens(list(vocab), version)
            self.tables[name] = t

        version = self.log.commit("import", [name], write, publish, author, message or f"import {name}", n_rows)
        return CommitResult(version=version, rows_changed=n_rows)

    def edit(self, name, ops, author="", message="", request=None, metrics=None) -> CommitResult:
        """Apply a batch of RowOps as one atomic commit; the result names the rows it changed."""
        with self.log.lock:
            v = self.log.head
            writes = self.plan(name, ops, v)
            changes = sorted(self.planned_changes(name, writes, v), key=lambda c: (c.token_id, c.layer))
            result = self.commit_rows(name, writes, "edit", author, message, request, metrics)
            result.changes = changes
            return result

    def commit_rows(self, name, writes, kind, author, message, request=None, metrics=None, new_tokens=(), removed_tokens=()):
        t = self.tables[name]
        stored = to_storage(writes.vectors, t.dtype)
        sums = row_sums(writes.token_ids.tolist(), writes.layers.tolist(), stored)
        crcs = np.frombuffer(sums, np.int64).reshape(-1, 3)[:, 2].tolist()

        def write(conn, commit):
            conn.executemany("insert into tokens values (?,?,?,?,?)",
                             [(name, len(t.words) + i, w, commit, NEVER) for i, w in enumerate(new_tokens)])
            conn.executemany("update tokens set removed_in=? where tbl=? and token_id=?",
                             [(commit, name, tok) for tok in removed_tokens])
            conn.executemany("insert into deltas values (?,?,?,?,?)",
                             [(name, tok, layer, commit, vec.tobytes()) for tok, layer, vec in
                              zip(writes.token_ids.tolist(), writes.layers.tolist(), stored)])
            conn.execute("insert into delta_sums values (?,?,?)", [name, commit, sums])
            if kind in lifetimes.REMOVING:
                conn.execute("insert into removals values (?,?,?)", [name, commit, lifetimes.record(removed_tokens, 1)])

        def publish(commit):
            if new_tokens:
                t.add_tokens(list(new_tokens), commit)
            for tok in removed_tokens:
                t.removed_in[tok] = commit
            t.record(commit, writes.token_ids, writes.layers, crcs, stored)

        version = self.log.commit(kind, [name], write, publish, author, message, len(writes), request, metrics)
        return CommitResult(version=version, rows_changed=len(writes))

    def inject_token(self, name, word, vector=None, like=(), author="", message="") -> CommitResult:
        """Grow the vocabulary by one token whose rows (every layer) are a vector, another
        token's rows, or the mean of several tokens' rows. The commit's request records the word
        and its source (editing/inject.py inject_request)."""
        with self.log.lock:
            v = self.log.head
            t = self.table(name, v)
            if not word or not word.strip():
                raise InvalidArgument("token: the new token is empty")
            if any(alive(t.added_in[i], t.removed_in[i], v) for i in t.ids_of_word.get(word, [])):
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
            return self.commit_rows(name, writes, "inject", author, message or f"inject {word}", request, new_tokens=[word])

    def revert(self, v, info, author="", message="") -> CommitResult:
        """Undo bank commit v (see KnowledgeBase.revert); call under the log's lock."""
        before = self.log.resolve_version(v - 1)
        name = info.tables[0]
        t = self.tables[name]
        cur = self.log.query("select token_id, layer from deltas where commit_id=? and tbl=?", [v, name]).fetchall()
        later = self.log.query("select min(d.commit_id) from deltas d join deltas e on d.tbl=e.tbl and d.token_id=e.token_id "
                               "and d.layer=e.layer where e.commit_id=? and e.tbl=? and d.commit_id>?", [v, name, v]).fetchone()[0]
        if later is not None:
            raise FailedPrecondition(f"version: rows written by commit {v} were changed again by commit {later}; revert {later} first")
        injected = np.flatnonzero((t.added_in == v) & (t.removed_in > self.log.head)).tolist()
        restore = [(tok, layer) for tok, layer in cur if tok not in injected]
        old = {tok: to_float32(t.gather(np.array([tok]), before)[0], t.dtype) for tok, _ in restore}
        writes = RowWrites(token_ids=np.array([tok for tok, _ in restore], dtype=np.int64),
                           layers=np.array([layer for _, layer in restore], dtype=np.int64),
                           vectors=np.array([old[tok][layer] for tok, layer in restore], dtype=np.float32).reshape(-1, t.dim))
        return self.commit_rows(name, writes, "revert", author, message or f"revert {v}: {info.message}",
                                removed_tokens=injected)


def row_change(t, token_id, layer, old, new):
    """The change of one row (L2 distance, cosine of old and new), or None when it is equal."""
    if np.array_equal(old, new):
        return None
    denom = float(np.linalg.norm(old) * np.linalg.norm(new))
    return RowChange(table=t.name, token_id=token_id, token=t.words[token_id], layer=layer,
                     l2=float(np.linalg.norm(new - old)), cosine=float(old @ new / denom) if denom else 0.0)


def _requested_ids(t, tokens, v) -> np.ndarray:
    """Token ids of a request: ids as given, words resolved at v (ids then words, as the wire's
    LookupRequest.token_ids + tokens)."""
    if isinstance(tokens, np.ndarray) and np.issubdtype(tokens.dtype, np.integer):
        ids = tokens
    else:
        tokens = tokens.tolist() if isinstance(tokens, np.ndarray) else list(tokens)
        ids = [t.id_of(w, v, "tokens") if isinstance(w, str) else w for w in tokens]
        if any(isinstance(i, bool) or not isinstance(i, (int, np.integer)) for i in ids):
            raise InvalidArgument("tokens: give token ids or words")
    ids = t.check_ids(ids, v)
    if len(ids) == 0:
        raise InvalidArgument("token_ids: the request names no tokens")
    return ids


def _write_npy(path, shape, dtype, blocks, desc, progress, copy_from=None):
    """A .npy file of ``shape`` written from ``blocks`` of rows, (first token, rows) in token
    order, straight into the file as they come, then fsynced; returns the crc32 of each token's
    rows (uint32 bytes). With ``copy_from`` (a base and the crc32s of its first n rows), those n
    rows are copied from it (BaseCopy) while the blocks come: blocks among them are written over
    them once copied, and the blocks after them follow."""
    row = int(np.prod(shape[1:])) * np.dtype(dtype).itemsize
    sums = np.empty(shape[0], np.uint32)
    with open(path, "wb") as f, tqdm(total=shape[0], desc=desc, unit="token", disable=not progress) as bar:
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                 "fortran_order": False, "shape": tuple(shape)})
        f.flush()
        header, copied, copy = f.tell(), 0, None
        if copy_from is not None:
            copied = len(copy_from[1])
            sums[:copied] = copy_from[1]
            copy = BaseCopy(copy_from[0], copied, f.fileno(), header)
        end = copied
        try:
            for start, rows in blocks:
                rows = np.ascontiguousarray(rows, dtype=dtype)
                stop = start + len(rows)
                if (stop > copied and start != end) or start < copied < stop:
                    raise AssertionError(f"{path}: rows [{start}, {stop}) do not follow {end} (copied: {copied})")
                if copy is not None:
                    copy.wait(stop)
                write_at(f.fileno(), rows.data, header + start * row)
                sums[start:stop] = token_sums(rows)
                end = max(end, stop)
                bar.update((end if stop > copied else copy.copied) - bar.n)
            if copy is not None:
                copy.wait(copied)
        finally:
            if copy is not None:
                copy.close()
        if end != shape[0]:
            raise AssertionError(f"{path}: {end} rows written for {shape[0]}")
        bar.update(shape[0] - bar.n)
        os.fsync(f.fileno())
    return sums.tobytes()


def checked_model_layers(model_layers, num_layers) -> list:
    model_layers = [int(i) for i in model_layers]
    if model_layers and len(model_layers) != num_layers:
        raise InvalidArgument(f"model_layers: {len(model_layers)} layers named for a table of {num_layers}")
    return model_layers


def checked_chunk(rows, dtype) -> np.ndarray:
    """Imported rows in the table's storage dtype, converted a chunk at a time as they are written."""
    with np.errstate(over="ignore"):  # a value past the dtype's range becomes inf, refused here
        stored = rows if rows.dtype == storage_dtype(dtype) else to_storage(rows, dtype)
    if not np.isfinite(to_float32(stored, dtype)).all():
        raise InvalidArgument("rows: contain NaN or Inf")
    return stored


def _base_rows(t, ids):
    """Rows as the table's first base had them (an injected token's base is its injected row)."""
    first_base_version, first_base = t.bases[0]
    out = np.empty((len(ids), t.num_layers, t.dim), dtype=np.float32)
    for i, tok in enumerate(ids.tolist()):
        if tok < first_base.shape[0]:
            out[i] = to_float32(first_base[tok], t.dtype)
        else:  # the rows of the commit that injected it (every layer)
            out[i] = to_float32(t.gather(np.array([tok]), t.history[tok][0][0]), t.dtype)[0]
    return out


def replay_commit(table, commit, batch, dt, record, sums_from):
    """A read replica's copy of one commit's delta rows (``batch``: [(token, layer, row bytes)])
    noted as the primary's commit_rows noted them, each checked against the commit's delta_sums
    ``record`` (None: lost, or a commit from before checksums, before ``sums_from``): a row that
    fails is marked damaged, never served."""
    if not batch:
        return
    crc_of = {} if record is None else {(t, layer): crc for t, layer, crc in np.frombuffer(record, np.int64).reshape(-1, 3).tolist()}
    if record is not None:
        bad = check_commit(record, delta_sums(batch))
    else:  # a commit from sums_from on always has its record: a lost one is damage
        bad = {(t, layer): MISSING.format("delta_sums") for t, layer, _ in batch} if commit >= sums_from else {}
    for (t, layer), why in bad.items():
        table.damaged[t, layer, commit] = why
    ids, layers, data = zip(*batch)
    table.record(commit, np.array(ids, np.int64), np.array(layers, np.int64),
                 [crc_of.get(key, UNCHECKED) for key in zip(ids, layers)], [np.frombuffer(d, dtype=dt) for d in data])
