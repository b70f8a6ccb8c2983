"""The commit log of a knowledge base: the SQLite catalog's connection, the one write lock,
transactions, versions, tags and commit metadata. Every table kind commits through `commit`, so
versions are KB-wide and interleave across kinds.

Both table kinds keep a lifetime per row (token or pair): it exists at version v when
added_in <= v < removed_in, with removed_in = NEVER while it lives (`alive`).
"""
import getpass
import json
import logging
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import sqlite_utils

from memsvc.core.errors import Conflict, FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from memsvc.core.values import CommitInfo, EditRequest

LOG = logging.getLogger("memsvc.store")
NEVER = 2**62  # removed_in of a row (token, pair) that was never removed
FORMAT = "1"


def alive(added_in, removed_in, version):
    """Which rows exist at a version (arrays give a mask, scalars a bool)."""
    return (added_in <= version) & (removed_in > version)


def crash_point(name: str):
    """Fault injection for the atomicity tests: MEMSVC_CRASH_AT=<name> kills the process here."""
    if os.environ.get("MEMSVC_CRASH_AT") == name:
        os._exit(77)


def check_table_name(name):
    if not name or "/" in name or name.startswith("."):
        raise InvalidArgument(f"table: invalid table name {name!r}")


class CommitLog:
    """The catalog's commits and tags. ``lock`` serialises writers (hold it from a write's checks
    to its commit); ``reload`` rebuilds the in-memory mirror when a durable commit failed to publish."""

    def __init__(self, catalog, durable: bool, reload):
        self.lock = threading.RLock()
        self._db_lock = threading.RLock()
        self.changed = threading.Condition()  # notified when the head moves or a tag changes (wait_for)
        self.changes = 0  # how many times it was notified
        self._reload = reload
        self.kinds = []  # the table kinds (objects with a `tables` dict) that share this log's names
        self.catalog = Path(catalog)
        self._conn = sqlite3.connect(catalog, check_same_thread=False, isolation_level=None)
        try:
            self._create_schema(durable)
        except BaseException:
            self.close()
            raise
        self.refresh()

    def _create_schema(self, durable):
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        self.db = sqlite_utils.Database(self._conn)
        self.db["meta"].create({"key": str, "value": str}, pk="key", if_not_exists=True)
        self.db["commits"].create({"id": int, "time": float, "author": str, "message": str, "kind": str,
                                   "tables": str, "rows_changed": int, "request": str, "metrics": str,
                                   "gone": int}, pk="id", if_not_exists=True)
        self.db["tags"].create({"name": str, "version": int, "time": float}, pk="name", if_not_exists=True)
        if not self.db.execute("select 1 from meta where key='format'").fetchone():
            self.db.execute("insert into meta values ('format', ?)", [FORMAT])

    def refresh(self):
        """Read the head and the versions gc dropped from the catalog."""
        self.head = self.query("select max(id) from commits").fetchone()[0] or 0
        self.gone = {r[0] for r in self.query("select id from commits where gone=1")}

    def close(self):
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # ---------------------------------------------------------------- SQL

    @contextmanager
    def transaction(self):
        """BEGIN ... COMMIT, rolled back on any error; a full disk is ResourceExhausted naming the
        data directory (SQLite rolls back cleanly: nothing is written, reads go on, and writes work
        again once there is space)."""
        with self._db_lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self._conn
                    crash_point("commit:before-commit")
                    self._conn.execute("COMMIT")
                except BaseException:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as e:
                if e.sqlite_errorcode == sqlite3.SQLITE_FULL:
                    raise ResourceExhausted(f"data: no space left on the device of {self.catalog.parent}; "
                                            f"nothing was written (free space, then retry)") from None
                raise

    def query(self, sql, params=()):
        with self._db_lock:
            return self._conn.execute(sql, params)

    # ---------------------------------------------------------------- commits

    def check_unused(self, name):
        """Conflict when a table of any kind holds this name (call under ``lock``)."""
        if any(name in kind.tables for kind in self.kinds):
            raise Conflict(f"table: table {name!r} already exists")

    def commit(self, kind, tables, write, publish, author="", message="", rows_changed=0, request=None, metrics=None) -> int:
        """One atomic commit of any table kind; returns its version.

        ``write(conn, version)`` runs inside the SQLite transaction (a crash or an exception
        leaves the previous head intact); ``publish(version)`` then mirrors the commit in memory.
        Readers resolve the head before reading and the head moves last, so no reader sees half
        a commit."""
        with self.lock:
            with self.transaction() as conn:
                version = self.head + 1
                conn.execute(
                    "insert into commits (id, time, author, message, kind, tables, rows_changed, request, metrics, gone) "
                    "values (?,?,?,?,?,?,?,?,?,0)",
                    [version, time.time(), author or getpass.getuser(), message or "", kind,
                     json.dumps(sorted(tables)), rows_changed, json.dumps((request or EditRequest()).__dict__),
                     json.dumps(metrics or {})])
                write(conn, version)
                crash_point("commit:after-rows")
            self._publish(version, publish)
            return version

    def replay(self, version, write, publish):
        """Apply a commit another log made (a read replica following its primary): ``write(conn)``
        inserts the rows that commit wrote, in one transaction, then ``publish()`` mirrors them and
        the head moves to ``version``, last, as in ``commit``."""
        with self.lock:
            if version != self.head + 1:
                raise FailedPrecondition(f"version: commit {version} cannot follow version {self.head}")
            with self.transaction() as conn:
                write(conn)
            self._publish(version, lambda _: publish())

    def _publish(self, version, publish):
        try:
            publish(version)
            self.head = version
        except Exception:
            # The commit is durable: rebuild memory from the catalog so that it and the head agree.
            LOG.exception("publishing commit %d failed; reloading the knowledge base", version)
            self._reload()
        self.notify()

    def notify(self):
        with self.changed:
            self.changes += 1
            self.changed.notify_all()

    def wait_for(self, done, timeout) -> bool:
        """Wait until ``done()`` holds, at most ``timeout`` seconds, woken by each commit and tag
        change (no polling); returns ``done()``."""
        with self.changed:
            return self.changed.wait_for(done, timeout)

    # ---------------------------------------------------------------- versions

    def list_versions(self) -> list:
        """Every readable version, oldest first."""
        return [r[0] for r in self.query("select id from commits where gone=0 order by id")]

    def resolve_version(self, version=None, tag=None) -> int:
        """A version number or tag -> a readable version id; None/0 and no tag mean the head."""
        if tag:
            row = self.query("select version from tags where name=?", [tag]).fetchone()
            if row is None:
                raise NotFound(f"tag: unknown tag {tag!r}")
            version = row[0]
        if not version:
            return self.head
        version = int(version)
        if version > self.head or version < 0:
            raise NotFound(f"version: version {version} does not exist (head is {self.head})")
        if version in self.gone:
            raise NotFound(f"version: version {version} no longer exists. Was it cleaned up by gc?")
        return version

    def commit_info(self, version, tags=None) -> CommitInfo:
        r = self.query("select id, time, author, message, kind, tables, rows_changed, request, metrics "
                       "from commits where id=?", [version]).fetchone()
        if r is None:
            raise NotFound(f"version: version {version} does not exist")
        if tags is None:
            tags = [n for (n,) in self.query("select name from tags where version=?", [version])]
        return CommitInfo(version=r[0], time=r[1], author=r[2], message=r[3], kind=r[4], tables=json.loads(r[5]),
                          rows_changed=r[6], request=EditRequest(**json.loads(r[7])), metrics=json.loads(r[8]), tags=tags)

    def log(self, table=None, limit=None) -> list:
        """Retained commits, newest first (optionally only those touching one table)."""
        tags = {}
        for n, v in self.query("select name, version from tags"):
            tags.setdefault(v, []).append(n)
        if table is None:
            ids = [r[0] for r in self.query("select id from commits where gone=0 order by id desc limit ?",
                                            [-1 if limit is None else limit])]
        else:
            ids = [r[0] for r in self.query("select id, tables from commits where gone=0 order by id desc")
                   if table in json.loads(r[1])][:limit]
        return [self.commit_info(v, tags.get(v, [])) for v in ids]

    # ---------------------------------------------------------------- tags

    def tag(self, name, version=None) -> int:
        """Name a version; a tagged version is kept by gc."""
        if not name or not name.strip():
            raise InvalidArgument("tag: the tag name is empty")
        with self.lock:
            v = self.resolve_version(version)
            if self.query("select 1 from tags where name=?", [name]).fetchone():
                raise Conflict(f"tag: tag {name!r} already exists")
            with self.transaction() as conn:
                conn.execute("insert into tags values (?,?,?)", [name, v, time.time()])
            self.notify()
            return v

    def delete_tag(self, name) -> int:
        with self.lock:
            row = self.query("select version from tags where name=?", [name]).fetchone()
            if row is None:
                raise NotFound(f"tag: unknown tag {name!r}")
            with self.transaction() as conn:
                conn.execute("delete from tags where name=?", [name])
            self.notify()
            return row[0]

    def tags(self) -> dict:
        return dict(self.query("select name, version from tags order by version, name").fetchall())
