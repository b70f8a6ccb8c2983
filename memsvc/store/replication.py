"""Read replicas, the store's half (issue 20): what a primary sends and how a replica applies it.
No transport here: memsvc/server/replication.py carries these over gRPC (ReplicationService).

A commit is one SQLite transaction of the catalog plus the immutable base files it names, written
before it (backup.py's argument). So a replica that copies, for each commit in order, the files it
names and then the catalog rows it wrote, in one transaction of its own catalog, holds the
primary's catalog and files byte for byte at every version it has applied. The rows of commit v
are found by the columns that name the commit (``ROWS_OF``): a row v inserted carries v, a row it
updated (a token or pair removed) carries v in removed_in and travels whole.

A replica's data directory holds ``replica.json`` ({"primary": address}): bootstrapping may
replace a directory only when it is empty or holds that file, never a primary's. Its applied
version is its own catalog's head, written in the same transaction as the rows, so it survives
any crash; a crash before a commit's transaction leaves, at most, a base file no commit names
(rewritten when the commit comes again).
"""
import json
import os
import shutil
import sqlite3
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

from memsvc.core.dtypes import storage_dtype
from memsvc.core.errors import FailedPrecondition, InvalidArgument
from memsvc.core.mosaic import BetaPolicy
from memsvc.store import lifetimes
from memsvc.store.backup import CATALOG, consistent_snapshot
from memsvc.store.banks import replay_commit
from memsvc.store.checksums import summed_from
from memsvc.store.commit_log import crash_point
from memsvc.store.files import fsync_dir, fsync_tree, read_ahead

PIECE_BYTES = 4 << 20  # a file piece or a batch of rows per message: far under gRPC's limits, ~10 ms to move
MARKER = "replica.json"
IN_COMMIT = "tbl in (select value from json_each(:tables))"
# The rows of each catalog table that commit :v wrote, new or updated (ordered by rowid: the order
# the primary wrote them, which is the order mosaic pairs are read back in).
ROWS_OF = {
    "commits": "id = :v",
    "tables": "created_in = :v",
    "table_models": "tbl in (select name from tables where created_in = :v)",
    "bases": f"{IN_COMMIT} and version = :v",
    "base_sums": f"{IN_COMMIT} and version = :v",
    "tokens": f"{IN_COMMIT} and (added_in = :v or removed_in = :v)",
    "deltas": f"{IN_COMMIT} and commit_id = :v",
    "delta_sums": f"{IN_COMMIT} and commit_id = :v",
    "folds": f"{IN_COMMIT} and version = :v",
    "mosaic_tables": "created_in = :v",
    "mosaic_pairs": f"{IN_COMMIT} and (added_in = :v or removed_in = :v)",
    "pair_sums": f"{IN_COMMIT} and commit_id = :v",
    "removals": f"{IN_COMMIT} and commit_id = :v",
}
# The catalog tables each commit kind writes (a kind missing here sends every table: slower, exact).
WRITES = {
    "import": ("tables", "table_models", "bases", "base_sums", "tokens"),
    "edit": ("deltas", "delta_sums"),
    "inject": ("tokens", "deltas", "delta_sums"),
    "revert": ("tokens", "deltas", "delta_sums", "mosaic_pairs", "pair_sums", "removals"),
    "compact": ("bases", "base_sums", "folds"),
    "mosaic-create": ("mosaic_tables",),
    "mosaic-add": ("mosaic_pairs", "pair_sums"), "mosaic-remove": ("mosaic_pairs", "pair_sums", "removals"),
    "mosaic-replace": ("mosaic_pairs", "pair_sums", "removals"),
}


# ---------------------------------------------------------------- the primary's side

def file_pieces(rel, f):
    """("file", path, size, offset, data, crc32) pieces of an open file, the last one ending at
    size and carrying the CRC-32 of the whole file (0 on the others). Read and checksummed a
    piece ahead, in a thread, while gRPC sends the one before."""
    def read():
        size, offset, crc = os.fstat(f.fileno()).st_size, 0, 0
        while True:
            data = f.read(PIECE_BYTES)
            crc = zlib.crc32(data, crc)
            last = offset + len(data) >= size
            yield ("file", rel, size, offset, data, crc if last else 0)
            offset += len(data)
            if last or not data:  # a file that shrank has no last piece: the receiver refuses it
                return

    yield from read_ahead(read(), name="memsvc-send-file")


def bootstrap_pieces(root):
    """A consistent snapshot of the data directory ``root`` as pieces: every file (the catalog's
    copy first), then ("commit", the snapshot's version). Memory: one piece."""
    with tempfile.TemporaryDirectory(prefix="memsvc-bootstrap-") as tmp, \
            consistent_snapshot(Path(root), Path(tmp)) as (version, opened):
        for rel, f in opened:
            yield from file_pieces(rel, f)
        yield ("commit", version)


def commit_pieces(root, db, version):
    """Commit ``version`` of the catalog ``db`` (a connection of the Follow stream's own) as pieces:
    the base files it names, ("rows", table, columns, rows) batches, then ("commit", version)."""
    row = db.execute("select kind, tables, gone from commits where id=?", [version]).fetchone()
    if row is None or row[2]:
        raise FailedPrecondition(f"from_version: commit {version} is gone (gc); bootstrap the replica again")
    kind, tables = row[0], row[1]
    params = {"v": version, "tables": tables}
    for (rel,) in db.execute(f"select file from bases where {ROWS_OF['bases']}", params).fetchall():
        try:
            f = open(Path(root) / rel, "rb")
        except FileNotFoundError:
            raise FailedPrecondition(f"from_version: base file {rel} of commit {version} is gone; bootstrap again") from None
        with f:
            yield from file_pieces(rel, f)
    for table in ("commits",) + WRITES.get(kind, tuple(ROWS_OF)[1:]):
        cur = db.execute(f"select * from {table} where {ROWS_OF[table]} order by rowid", params)
        columns, batch, size = [d[0] for d in cur.description], [], 0
        for r in cur:
            batch.append(r)
            size += sum(len(x) for x in r if isinstance(x, (bytes, str)))
            if size >= PIECE_BYTES:
                yield ("rows", table, columns, batch)
                batch, size = [], 0
        if batch:
            yield ("rows", table, columns, batch)
    yield ("commit", version)


def check_follow(db, head, from_version, from_time):
    """FailedPrecondition unless the commits after ``from_version`` can be sent exactly to a
    replica whose commit from_version was made at ``from_time`` (0: unchecked)."""
    if from_version > head:
        raise FailedPrecondition(f"from_version: the replica has version {from_version}, past this primary's head "
                                 f"{head} (restored from an older backup?); bootstrap the replica again")
    if from_version and from_time:
        row = db.execute("select time from commits where id=?", [from_version]).fetchone()
        if row is None or row[0] != from_time:
            raise FailedPrecondition(f"from_commit_time: the replica's commit {from_version} is not this primary's "
                                     f"(another knowledge base?); bootstrap the replica again")
    gone = db.execute("select min(id) from commits where gone=1 and id>?", [from_version]).fetchone()[0]
    if gone is not None:
        raise FailedPrecondition(f"from_version: commit {gone} after {from_version} was dropped by gc; "
                                 f"bootstrap the replica again")


def read_only(catalog) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{catalog}?mode=ro", uri=True, check_same_thread=False)


# ---------------------------------------------------------------- the replica's side

def replica_state(root) -> str:
    """What a replica's data directory holds: "empty" (bootstrap), "replica" (resume) or "stale"
    (a replica to bootstrap again); FailedPrecondition for anything else, which it must not replace."""
    root = Path(root)
    if not root.exists() or not any(root.iterdir()):
        return "empty"
    if not (root / MARKER).exists():
        what = "a knowledge base that is not a replica" if (root / CATALOG).exists() else "files"
        raise FailedPrecondition(f"data: {root} holds {what}; a replica needs an empty directory or one it made")
    marker = json.loads((root / MARKER).read_text())
    return "stale" if marker.get("stale") or not (root / CATALOG).exists() else "replica"


def mark_stale(root, why):
    """Make the next start bootstrap again (the primary cannot continue this replica)."""
    marker = json.loads((Path(root) / MARKER).read_text())
    marker["stale"] = why
    (Path(root) / MARKER).write_text(json.dumps(marker))


class Bootstrap:
    """Receives a snapshot into ``<root>.bootstrap`` and swaps it into ``root`` once every file is
    in and checked: a crash at any point leaves no catalog at ``root`` (bootstrap again), never
    part of a knowledge base."""

    def __init__(self, root, primary):
        self.root, self.primary = Path(root), primary
        if replica_state(self.root) == "replica":
            raise FailedPrecondition(f"data: {self.root} holds a replica; it resumes, it is not bootstrapped")
        self.staging = self.root.with_name(self.root.name + ".bootstrap")
        shutil.rmtree(self.staging, ignore_errors=True)
        self.staging.mkdir(parents=True)

    def receive_file(self, rel, pieces) -> int:
        """Write one file from its pieces (receive_file); returns its size."""
        size = receive_file(self.staging, rel, pieces)
        crash_point("bootstrap:after-file")
        return size

    def finish(self, version):
        (self.staging / MARKER).write_text(json.dumps({"primary": self.primary, "bootstrapped": version}))
        fsync_tree(self.staging)
        if self.root.exists():
            shutil.rmtree(self.root)  # empty, or a stale replica (replica_state)
        os.replace(self.staging, self.root)
        fsync_dir(self.root.parent)


def receive_file(root, rel, pieces) -> int:
    """Write ``root/rel`` whole from its pieces ((size, offset, data, crc32) in order, the last one
    ending at size): to a temporary sibling (its size reserved at the first piece, so a full disk
    fails before the transfer), checked against the size and CRC-32 of the last piece, fsynced,
    then renamed. Returns the size. A thread pulls the pieces from the stream and checksums them
    while this one writes (one thread doing both bounded a bootstrap)."""
    path = Path(rel)
    if not rel or path.is_absolute() or ".." in path.parts:
        raise InvalidArgument(f"file.path: {rel!r} is outside the data directory")
    target = Path(root) / path
    tmp = target.with_name(target.name + ".tmp")
    target.parent.mkdir(parents=True, exist_ok=True)
    seen = {"size": 0, "crc": 0}

    def checked():
        for size, offset, data, told_crc in pieces:
            if offset != seen["size"]:
                raise FailedPrecondition(f"file: {rel}: a piece at {offset}, expected {seen['size']}")
            seen["size"], seen["crc"], seen["told"] = offset + len(data), zlib.crc32(data, seen["crc"]), (size, told_crc)
            yield size, offset, data

    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        try:
            for size, offset, data in read_ahead(checked(), name="memsvc-receive-file"):
                if offset == 0 and size:
                    reserve(fd, size, root, rel)
                os.pwrite(fd, data, offset)
            os.fsync(fd)
        finally:
            os.close(fd)
        if seen.get("told") != (seen["size"], seen["crc"]):
            raise FailedPrecondition(f"file: {rel} does not match its size and checksum")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(target.parent)
    return seen["size"]


def reserve(fd, size, root, rel):
    """Allocate a file's ``size`` bytes on disk before receiving them; FailedPrecondition when
    the disk cannot hold them (not an OSError after a gigabyte has crossed the network)."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        raise FailedPrecondition(f"data: {rel} needs {size} bytes, more than {root} can hold ({e.strerror})") from None


def apply_commit(kb, version, batches):
    """Apply a primary's commit to the replica's KnowledgeBase ``kb``: its rows (``batches`` of
    (table, columns, rows), its files already received) in one transaction, then mirrored in
    memory, then the head moves (CommitLog.replay): a reader never sees it in part."""
    rows = {}
    for table, columns, batch in batches:
        if table not in ROWS_OF:
            raise InvalidArgument(f"rows.table: {table!r} is not a catalog table a commit writes")
        rows.setdefault(table, []).extend(dict(zip(columns, r)) for r in batch)
    commit = (rows.get("commits") or [{}])[0]
    if commit.get("id") != version:
        raise InvalidArgument(f"rows: commit {version} came without its commits row")

    def write(conn):
        for table, columns, batch in batches:
            keys = [c[1] for c in conn.execute(f"pragma table_info({table})") if c[5]]
            known = {c[1] for c in conn.execute(f"pragma table_info({table})")}
            if not set(columns) <= known:
                raise InvalidArgument(f"rows.columns: {sorted(set(columns) - known)} are not columns of {table}")
            update = ", ".join(f"{c}=excluded.{c}" for c in columns if c not in keys)
            conn.executemany(f"insert into {table} ({', '.join(columns)}) values ({', '.join('?' * len(columns))}) "
                             f"on conflict({', '.join(keys)}) do update set {update}", batch)  # keeps rowids
        crash_point("replica:before-commit")

    def publish():
        _publish_banks(kb.banks, version, commit, rows)
        _publish_mosaics(kb.mosaic, version, rows)
        if lifetimes.needs_marking(commit, rows):  # what it ended, or lost, checked as a start would
            for name in json.loads(commit["tables"]):
                if name in kb.banks.tables:
                    lifetimes.mark_bank_table(kb.banks.tables[name], kb.commits.query)
                elif name in kb.mosaic.tables:
                    lifetimes.mark_mosaic_store(kb.mosaic.tables[name], kb.commits.query)

    kb.commits.replay(version, write, publish)


def _publish_banks(banks, v, commit, rows):
    """Mirror commit v's bank rows in memory, as the primary's publish did when it made it."""
    for r in rows.get("tables", []):
        banks.tables[r["name"]] = banks.load_table(r)  # created by v: read whole from the catalog
    created = {r["name"] for r in rows.get("tables", [])}

    def of(table):
        return [r for r in rows.get(table, []) if r["tbl"] not in created]

    summed, since = {r["tbl"] for r in of("base_sums")}, summed_from(banks.log.query, "base_sums")
    for r in of("bases"):
        t = banks.tables[r["tbl"]]
        t.bases.append((v, banks.map_base(r["file"], t)))
        if r["tbl"] not in summed and v >= since:
            t.base_sums[v] = None  # its record is lost on the primary: refused here too
    for r in of("base_sums"):
        banks.tables[r["tbl"]].base_sums[v] = np.frombuffer(r["sums"], np.uint32)
    if commit["kind"] == "compact":
        for name in json.loads(commit["tables"]):
            banks.tables[name].compactions.append(v)
    for r in of("folds"):
        banks.tables[r["tbl"]].folds[v] = np.frombuffer(r["pairs"], np.int64).reshape(-1, 2)
    for r in sorted(of("tokens"), key=lambda r: r["token_id"]):
        t = banks.tables[r["tbl"]]
        if r["added_in"] == v:
            if r["token_id"] != len(t.words):
                raise FailedPrecondition(f"rows: token {r['token_id']} of {r['tbl']!r} is not the next one ({len(t.words)})")
            t.add_tokens([r["token"]], v)
        if r["removed_in"] == v:
            t.removed_in[r["token_id"]] = v
    sums = {r["tbl"]: r["rows"] for r in of("delta_sums")}
    deltas = {}
    for r in of("deltas"):
        deltas.setdefault(r["tbl"], []).append((r["token_id"], r["layer"], r["data"]))
    for name, batch in deltas.items():
        t = banks.tables[name]
        replay_commit(t, v, batch, storage_dtype(t.dtype), sums.get(name), banks.sums_from)


def _publish_mosaics(mosaic, v, rows):
    for r in rows.get("mosaic_tables", []):
        mosaic.tables[r["name"]] = mosaic.new_table(r["name"], r["num_layers"], r["num_heads"], r["key_dim"],
                                                    r["value_dim"], v, BetaPolicy(r["beta0"], r["beta1"], r["alpha"]),
                                                    r["topk_index"])
    groups = {}
    for r in rows.get("mosaic_pairs", []):
        groups.setdefault((r["tbl"], r["layer"], r["head"]), []).append(r)
    for (name, layer, head), group in groups.items():
        t = mosaic.tables[name]
        pairs = t.groups[(layer, head)]
        slot = {(i, a): s for s, (i, a) in enumerate(zip(pairs.ids.tolist(), pairs.added_in.tolist()))}
        removed = np.array([slot[r["pair_id"], r["added_in"]] for r in group if r["removed_in"] == v], np.int64)
        added = [r for r in group if r["added_in"] == v]
        t.groups[(layer, head)] = pairs.changed(
            v, removed, np.array([r["pair_id"] for r in added], np.int64),
            np.frombuffer(b"".join(r["key"] for r in added), np.float32).reshape(len(added), t.key_dim),
            np.frombuffer(b"".join(r["value"] for r in added), np.float32).reshape(len(added), t.value_dim),
            [r["label"] for r in added])


def sync_tags(log, tags):
    """Make a replica's tags its primary's ``tags`` {name: version}, those of versions it has applied."""
    with log.lock:
        want, have = {n: v for n, v in tags.items() if v <= log.head}, log.tags()
        if want == have:
            return
        with log.transaction() as conn:
            conn.executemany("delete from tags where name=?", [(n,) for n, v in have.items() if want.get(n) != v])
            conn.executemany("insert into tags values (?,?,?)",
                             [(n, v, time.time()) for n, v in want.items() if have.get(n) != v])
    log.notify()
