"""Backups, restores and consistency checks of a knowledge base's data directory.

A consistent backup while a server writes, without stopping it. Two facts make it possible:

1. The catalog (catalog.db, SQLite in WAL mode) is the only file that changes. SQLite's online
   backup API, run from another connection, copies it as of one read transaction: a snapshot
   that holds whole commits only (a commit is one SQLite transaction).
2. Every other file (bases/<table>/v<N>.npy) is immutable: it is written (tmp, fsync, rename)
   *before* the catalog transaction that names it commits, and gc deletes it only *after* the
   catalog transaction that stops naming it commits.

So: snapshot the catalog first, then open every file the snapshot names. A file can be missing
only if gc dropped it after the snapshot; then the whole backup starts again from a newer
snapshot. Once a file is open, a later unlink cannot take its bytes away. The backup file is a
tar (MANIFEST.json with a sha256 per file, catalog.db, the files), written to a temporary name
and renamed, so a crash never leaves a half backup under the final name.
"""
import errno
import hashlib
import io
import itertools
import json
import os
import shutil
import sqlite3
import tarfile
import tempfile
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from memsvc.core.dtypes import storage_dtype, to_float32
from memsvc.core.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from memsvc.store.checksums import MISSING, check_commit, check_commits, pair_sum, summed_from, token_sums
from memsvc.store.lifetimes import record_findings

FORMAT = "memsvc-backup/1"
CATALOG = "catalog.db"
SKIP = {CATALOG, f"{CATALOG}-wal", f"{CATALOG}-shm", ".lock"}  # the catalog travels as a snapshot
SAMPLE_TOKENS = 256  # tokens read per (version, table) by fsck besides every edited one
CHUNK_BYTES = 1 << 24


@dataclass
class BackupInfo:
    path: Path
    head_version: int
    files: int
    bytes: int


@dataclass
class FsckReport:
    problems: list = field(default_factory=list)  # anything here means the KB is damaged
    notes: list = field(default_factory=list)  # harmless leftovers (an interrupted compaction's file)
    versions_checked: int = 0
    bases_checked: int = 0
    deltas_checked: int = 0
    pairs_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def _catalog_snapshot(catalog: Path, out: Path):
    """Copy the catalog as of one read transaction (SQLite online backup, all pages in one step)."""
    src = sqlite3.connect(f"file:{catalog}?mode=ro", uri=True, timeout=30)
    dst = sqlite3.connect(out)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


def _data_files(root: Path, catalog: Path) -> list:
    """Relative paths the backup must hold besides the catalog: every base the snapshot names,
    plus any other file outside bases/ (none today); temporary and lock files are left out."""
    with sqlite3.connect(catalog) as db:
        named = [r[0] for r in db.execute("select file from bases order by tbl, version")]
    others = [p.relative_to(root).as_posix() for p in sorted(root.rglob("*"))
              if p.is_file() and p.relative_to(root).parts[0] != "bases" and p.name not in SKIP and not p.name.endswith(".tmp")]
    return named + others


def _head(catalog: Path) -> int:
    with sqlite3.connect(catalog) as db:
        return db.execute("select coalesce(max(id), 0) from commits").fetchone()[0]


def _open_all(root: Path, files: list):
    """Open every file, or None when one has gone (gc ran after the snapshot)."""
    handles = []
    for rel in files:
        try:
            handles.append(open(root / rel, "rb"))
        except FileNotFoundError:
            for h in handles:
                h.close()
            return None
    return handles


def _sha256(f) -> str:
    h = hashlib.sha256()
    for block in iter(lambda: f.read(CHUNK_BYTES), b""):
        h.update(block)
    f.seek(0)
    return h.hexdigest()


@contextmanager
def consistent_snapshot(root: Path, tmp: Path, attempts=5):
    """The module docstring's argument: the catalog copied as of one transaction (into ``tmp``),
    then every file the copy names opened. Yields (the copy's head version, [(path relative to
    the data directory, open file)], the catalog's copy first); the files close at exit. Backups
    and replica bootstraps (memsvc/store/replication.py) both read through it."""
    catalog = Path(tmp) / CATALOG
    for _ in range(attempts):
        catalog.unlink(missing_ok=True)
        _catalog_snapshot(root / CATALOG, catalog)
        files = _data_files(root, catalog)
        handles = _open_all(root, files)
        if handles is not None:
            break
    else:
        raise FailedPrecondition(f"data: base files kept disappearing under the snapshot ({attempts} attempts); is gc running in a loop?")
    opened = [(CATALOG, open(catalog, "rb"))] + list(zip(files, handles))
    try:
        yield _head(catalog), opened
    finally:
        for _, f in opened:
            f.close()


def write_blocks(blocks, target: Path) -> tuple:
    """Write an iterable of byte blocks to ``target`` (parents made, fsynced); returns (size,
    sha256 hex) for the caller to check against what the sender said."""
    target.parent.mkdir(parents=True, exist_ok=True)
    h, size = hashlib.sha256(), 0
    with open(target, "wb") as dst:
        for block in blocks:
            h.update(block)
            dst.write(block)
            size += len(block)
        dst.flush()
        os.fsync(dst.fileno())
    return size, h.hexdigest()


def backup(data_dir, out, attempts=5, progress=False) -> BackupInfo:
    """Write a consistent snapshot of ``data_dir`` to the tar file ``out`` (safe while serving)."""
    root, out = Path(data_dir), Path(out)
    if not (root / CATALOG).exists():
        raise FailedPrecondition(f"data: no knowledge base at {root}")
    if out.resolve().is_relative_to(root.resolve()):
        raise InvalidArgument(f"to: write the backup outside the data directory {root}")
    try:
        return _write_backup(root, out, attempts, progress)
    except (OSError, sqlite3.OperationalError) as e:
        if getattr(e, "errno", None) != errno.ENOSPC and getattr(e, "sqlite_errorcode", None) != sqlite3.SQLITE_FULL:
            raise
        raise ResourceExhausted(f"to: no space left on the device of {out}; nothing was written") from None


def _write_backup(root: Path, out: Path, attempts, progress) -> BackupInfo:
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".memsvc-backup-") as tmp, \
            consistent_snapshot(root, Path(tmp), attempts) as (head, opened):
        partial = out.with_name(out.name + ".partial")
        manifest = {"format": FORMAT, "created": time.time(), "head_version": head, "files": {}}
        try:
            with tarfile.open(partial, "w") as tar:
                for rel, f in tqdm(opened, desc="backup", unit="file", disable=not progress):
                    size = os.fstat(f.fileno()).st_size
                    manifest["files"][rel] = {"size": size, "sha256": _sha256(f)}
                    info = tarfile.TarInfo(rel)
                    info.size, info.mtime = size, int(time.time())
                    tar.addfile(info, f)
                body = json.dumps(manifest, indent=1).encode()
                info = tarfile.TarInfo("MANIFEST.json")
                info.size, info.mtime = len(body), int(time.time())
                tar.addfile(info, io.BytesIO(body))
            with open(partial, "rb") as f:
                os.fsync(f.fileno())
            os.replace(partial, out)
        finally:
            partial.unlink(missing_ok=True)
    return BackupInfo(path=out, head_version=manifest["head_version"], files=len(manifest["files"]),
                      bytes=sum(f["size"] for f in manifest["files"].values()))


def restore(backup_file, data_dir, progress=False) -> FsckReport:
    """Unpack a backup into a new (or empty) data directory, verify every checksum and fsck it;
    the directory appears under its name only when all of that passed."""
    root = Path(data_dir)
    if root.exists() and any(root.iterdir()):
        raise FailedPrecondition(f"data: {root} is not empty; restore into a new directory")
    staging = root.with_name(root.name + ".restoring")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with tarfile.open(backup_file, "r") as tar:
            manifest = _read_manifest(tar, backup_file)
            for rel, meta in tqdm(manifest["files"].items(), desc="restore", unit="file", disable=not progress):
                _extract(tar, rel, meta, staging)
        report = fsck(staging, progress=progress)
        if not report.ok:
            raise FailedPrecondition(f"backup: {backup_file} restores to a damaged knowledge base: {report.problems[0]}")
        if root.exists():
            root.rmdir()
        os.replace(staging, root)
        return report
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        raise ResourceExhausted(f"data: no space left on the device of {root} while restoring; nothing was restored") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _read_manifest(tar, name) -> dict:
    try:
        manifest = json.load(tar.extractfile("MANIFEST.json"))
    except (KeyError, ValueError) as e:
        raise InvalidArgument(f"backup: {name} is not a memsvc backup ({e})")
    if manifest.get("format") != FORMAT:
        raise InvalidArgument(f"backup: {name} has format {manifest.get('format')!r}, expected {FORMAT!r}")
    for rel in manifest["files"]:
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise InvalidArgument(f"backup: {name} names a file outside the data directory: {rel!r}")
    return manifest


def _extract(tar, rel, meta, staging: Path):
    """Copy one member to staging/rel, checking its size and sha256 against the manifest."""
    try:
        src = tar.extractfile(rel)
    except KeyError:
        raise FailedPrecondition(f"backup: {rel} is listed in the manifest but missing") from None
    with src:
        written = write_blocks(iter(lambda: src.read(CHUNK_BYTES), b""), staging / rel)
    if written != (meta["size"], meta["sha256"]):
        raise FailedPrecondition(f"backup: {rel} does not match its checksum; the backup file is damaged")


# ---------------------------------------------------------------- fsck

def fsck(data_dir, progress=False) -> FsckReport:
    """Check a knowledge base that no process has open: SQLite integrity, every base file against
    the catalog (present, shape, dtype, finite), every delta row (size, finite), and every
    retained version readable (each live token has a row; edited and sampled tokens are read)."""
    root, report = Path(data_dir), FsckReport()
    if not (root / CATALOG).exists():
        raise FailedPrecondition(f"data: no knowledge base at {root}")
    from memsvc.store import KnowledgeBase, StoreConfig

    try:
        kb = KnowledgeBase(StoreConfig(data_dir=root))  # holds the lock: nobody writes meanwhile
    except FailedPrecondition as e:
        if "open in another process" in str(e):
            raise
        report.problems.append(str(e))
        kb = None
    except Exception as e:  # noqa: BLE001 - a damaged catalog can fail anywhere while loading
        report.problems.append(f"data: the knowledge base does not load ({type(e).__name__}: {e})")
        kb = None
    try:
        try:
            with sqlite3.connect(f"file:{root / CATALOG}?mode=ro", uri=True) as db:
                if _check_sqlite(db, report):
                    _check_files(root, db, report, progress)
        except Exception as e:  # noqa: BLE001 - a damaged header or page fails anywhere: a finding, not a traceback
            report.problems.append(f"catalog: {root / CATALOG} does not read ({type(e).__name__}: {e})")
        if kb is not None and report.ok:
            _check_versions(kb, report, progress)
    finally:
        if kb is not None:
            kb.close()
    _check_derived(root, report)
    return report


def _check_sqlite(db, report) -> bool:
    result = [r[0] for r in db.execute("PRAGMA integrity_check")]
    if result != ["ok"]:
        report.problems += [f"catalog: {r}" for r in result]
    return result == ["ok"]


def _check_files(root, db, report, progress):
    tables = {r[0]: r[1:] for r in db.execute("select name, dtype, dim, num_layers from tables")}
    named = set()
    for tbl, version, rel, vocab in db.execute("select tbl, version, file, vocab_size from bases order by tbl, version"):
        named.add(rel)
        dtype, dim, layers = tables[tbl]
        try:
            base = np.load(root / rel, mmap_mode="r")
        except (OSError, ValueError, EOFError) as e:  # EOFError: a file truncated to 0 bytes
            report.problems.append(f"base: {rel} (table {tbl!r}, version {version}) is missing or unreadable ({e})")
            continue
        if base.shape != (vocab, layers, dim) or base.dtype != storage_dtype(dtype):
            report.problems.append(f"base: {rel} is {base.shape} {base.dtype}; the catalog says ({vocab}, {layers}, {dim}) {dtype}")
            continue
        _check_base_rows(db, tbl, version, rel, base, dtype, report, progress)
        report.bases_checked += 1
    for tbl, (dtype, dim, _) in tables.items():
        _check_deltas(db, tbl, dtype, dim, report)
    for (tbl,) in db.execute("select name from mosaic_tables").fetchall():
        _check_pairs(db, tbl, report)
    report.problems += record_findings(db.execute)
    for p in sorted((root / "bases").rglob("*")) if (root / "bases").exists() else []:
        if p.is_file() and p.relative_to(root).as_posix() not in named:
            report.notes.append(f"{p.relative_to(root)} is named by no commit (left by an interrupted write; gc-safe to delete)")


def _check_deltas(db, tbl, dtype, dim, report):
    """Every delta row of a table: its size, finite values, and each commit's rows against the
    checksums recorded with it (changed, deleted and added rows)."""
    size = dim * storage_dtype(dtype).itemsize
    sums = dict(db.execute("select commit_id, rows from delta_sums where tbl=?", [tbl]).fetchall())
    since = summed_from(db.execute, "delta_sums")
    unchecked, batch, commit = set(), [], None
    cur = db.execute("select token_id, layer, commit_id, data from deltas where tbl=? order by commit_id", [tbl])
    for token, layer, c, data in itertools.chain(cur, [(None, None, None, None)]):
        if c != commit and commit is not None:
            _check_delta_sums(tbl, commit, batch, sums.pop(commit, None), since, unchecked, report)
            batch = []
        commit = c
        if c is None:
            break
        batch.append((token, layer, zlib.crc32(data)))  # a commit's crcs in memory, not its rows
        report.deltas_checked += 1
        if len(data) != size or not np.isfinite(to_float32(np.frombuffer(data, storage_dtype(dtype)), dtype)).all():
            report.problems.append(f"delta: table {tbl!r} token {token} layer {layer} commit {c} is not {dim} finite {dtype}")
    for c, record in sorted(sums.items()):  # commits none of whose rows are left
        _check_delta_sums(tbl, c, [], record, since, unchecked, report)
    if unchecked:
        report.notes.append(f"delta: table {tbl!r}: the rows of {len(unchecked)} commits (first {min(unchecked)}) "
                            f"have no checksums (written before checksums): unchecked")


def _check_delta_sums(tbl, commit, rows, record, since, unchecked, report):
    if record is None and rows and commit >= since:
        report.problems.append(f"delta: table {tbl!r} commit {commit}: its delta_sums record is missing "
                               f"(deleted); its {len(rows)} rows are unchecked")
    elif record is None and rows:
        unchecked.add(commit)
    if record is None:
        return
    for (token, layer), why in sorted(check_commit(record, rows).items()):
        report.problems.append(f"delta: table {tbl!r} token {token} layer {layer} commit {commit} {why}")


def _check_pairs(db, tbl, report):
    """Every pair of a mosaic store against the pair_sums record of the commit that wrote it,
    one commit's checksums in memory at a time."""
    since = summed_from(db.execute, "pair_sums")
    records = dict(db.execute("select commit_id, pairs from pair_sums where tbl=?", [tbl]).fetchall())
    cur = db.execute("select added_in, layer, head, pair_id, label, key, value from mosaic_pairs where tbl=? "
                     "order by added_in, rowid", [tbl])
    sums = ((a, layer, head, i, pair_sum(label, k, v)) for a, layer, head, i, label, k, v in cur)
    for commit, bad in sorted(check_commits(sums, records, since, "pair_sums", 4).items()):
        if MISSING.format("pair_sums") in bad.values():
            report.problems.append(f"pair: mosaic store {tbl!r} commit {commit}: its pair_sums record is missing "
                                   f"(deleted); its {len(bad)} pairs are unchecked")
            continue
        report.problems += [f"pair: mosaic store {tbl!r} layer {layer} head {head} pair {i} commit {commit} {why}"
                            for (layer, head, i), why in sorted(bad.items())]
    report.pairs_checked += db.execute("select count(*) from mosaic_pairs where tbl=?", [tbl]).fetchone()[0]
    unchecked = db.execute("select count(distinct added_in), min(added_in) from mosaic_pairs where tbl=? and added_in<? "
                           "and added_in not in (select commit_id from pair_sums where tbl=?)", [tbl, since, tbl]).fetchone()
    if unchecked[0]:
        report.notes.append(f"pair: mosaic store {tbl!r}: the pairs of {unchecked[0]} commits (first {unchecked[1]}) "
                            f"have no checksums (written before checksums): unchecked")


def _check_base_rows(db, tbl, version, rel, base, dtype, report, progress):
    """Every row of a base file: finite, and equal to the crc32 recorded when it was written."""
    row = db.execute("select sums from base_sums where tbl=? and version=?", [tbl, version]).fetchone()
    sums = None if row is None else np.frombuffer(row[0], np.uint32)
    if sums is None and version >= summed_from(db.execute, "base_sums"):
        report.problems.append(f"base: {rel} (table {tbl!r}, version {version}): its base_sums record is missing "
                               f"(deleted); its rows are unchecked")
    elif sums is None:
        report.notes.append(f"base: {rel} (table {tbl!r}, version {version}) has no checksums "
                            f"(written before checksums): unchecked")
    elif len(sums) != len(base):
        report.problems.append(f"base: {rel} (table {tbl!r}, version {version}) has {len(base)} rows, its checksums {len(sums)}")
        sums = None
    step, bad, non_finite = max(1, CHUNK_BYTES // max(1, base[0].nbytes)), [], None
    for start in tqdm(range(0, len(base), step), desc=f"fsck {rel}", unit="chunk", disable=not progress, leave=False):
        rows = np.array(base[start:start + step])
        if non_finite is None and not np.isfinite(to_float32(rows, dtype)).all():
            non_finite = start
        if sums is not None:
            bad += (np.flatnonzero(token_sums(rows) != sums[start:start + len(rows)]) + start).tolist()
    if non_finite is not None:
        report.problems.append(f"base: {rel} holds NaN or Inf near token {non_finite}")
    if bad:
        report.problems.append(f"base: {rel} (table {tbl!r}, version {version}): the rows of {len(bad)} tokens "
                               f"do not match their checksums (first token {bad[0]})")


def _check_derived(root, report):
    """The files beside the catalog that serve rebuilds from it (index entries, query logs): serve
    drops a damaged one with a warning; fsck names it."""
    for meta in sorted((root / "indexes").glob("*/meta.json")):
        try:
            json.loads(meta.read_text())["info"]["name"]
        except Exception as e:  # noqa: BLE001 - any damage is a finding
            report.problems.append(f"index: {meta.relative_to(root)} is damaged ({type(e).__name__}: {e}); "
                                   f"serve drops that index")
    for log in sorted((root / "indexes" / "querylog").glob("*.npz")):
        try:
            with np.load(log) as f:
                f["queries"], f["versions"], int(f["seen"])
        except Exception as e:  # noqa: BLE001 - any damage is a finding
            report.problems.append(f"query log: {log.relative_to(root)} is damaged ({type(e).__name__}: {e}); "
                                   f"serve drops it")


def _check_versions(kb, report, progress):
    """Every retained version of every table: a base at or below it, a row for every live token,
    and the real read path over the tokens with delta rows and a sample of the others, a chunk of
    rows at a time. Every delta row is read once: at the first version checked on each base, all
    of them; at a later version, those of the tokens some commit since the version checked before
    it wrote (the other tokens read the rows already read). 1,000 versions of a STEM-1B bank with
    10,000 edited tokens read their 0.9 GB once, not 1,000 times."""
    checked = {}  # table -> (base version, the last version checked on it)
    for v in tqdm(kb.list_versions(), desc="fsck versions", unit="version", disable=not progress):
        for name, t in kb.banks.tables.items():
            if t.created_in > v:
                continue
            if t.bases[0][0] > v:
                report.problems.append(f"version {v}: table {name!r} has no base at or below it")
                continue
            alive = np.flatnonzero((t.added_in <= v) & (t.removed_in > v))
            base_version, base = t.base_at(v)
            uncovered = [int(i) for i in alive[alive >= base.shape[0]] if not t.latest_writes(i, v, -1)]
            if uncovered:
                report.problems.append(f"version {v}: table {name!r} token {uncovered[0]} has no row")
                continue
            on_base, before = checked.get(name, (None, None))
            since = before if on_base == base_version else base_version
            edited = alive[t.wrote_between(alive, since, v)].tolist()
            checked[name] = (base_version, v)
            sample = alive[np.linspace(0, len(alive) - 1, min(len(alive), SAMPLE_TOKENS)).astype(int)].tolist()
            ids = np.array(sorted(set(edited + sample)), dtype=np.int64)
            try:
                for start in range(0, len(ids), t.chunk_tokens()):
                    rows = kb.lookup(name, ids[start:start + t.chunk_tokens()], version=v)
                    if not np.isfinite(to_float32(rows.rows, t.dtype)).all():
                        report.problems.append(f"version {v}: table {name!r} reads NaN or Inf")
                        break
            except Exception as e:  # noqa: BLE001 - report every unreadable version, keep checking
                report.problems.append(f"version {v}: table {name!r} does not read ({type(e).__name__}: {e})")
        report.versions_checked += 1
