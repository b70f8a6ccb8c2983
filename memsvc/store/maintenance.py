"""Maintenance across table kinds: compaction (fold bank deltas into new bases) and gc (forget
old versions and delete what no retained version reads)."""
import numpy as np

from memsvc.core.dtypes import storage_dtype
from memsvc.core.values import CommitResult
from memsvc.store.banks import BankTables
from memsvc.store.commit_log import CommitLog
from memsvc.store.mosaic import MosaicStore


def compact(log: CommitLog, banks: BankTables, author="", message="", progress=False) -> CommitResult:
    """Fold every bank table's deltas into new base arrays, as one commit that changes no row (a
    table with no delta above its base keeps it).
    Each base is copied from the current one in the kernel, with its checksums, while the rows of
    the tokens a delta changed are computed a chunk at a time (bounded memory) and written over
    their copies (bank_table.BaseCopy); the commit records which (token, layer) rows it changed,
    so history across it reads no base (TableState.folded_pairs)."""
    with log.lock:
        version = log.head + 1
        files, folds = {}, {}
        for name, t in banks.tables.items():
            if not _has_deltas(t, log.head):
                continue  # its base already holds every row: rewriting it would copy it unchanged
            shape = (len(t.words), t.num_layers, t.dim)
            base_version, base = t.base_at(log.head)
            sums = t.base_sums.get(base_version)  # none: from before checksums, or a damaged record (its read refuses)
            copied = 0 if sums is None else min(len(t.words), base.shape[0])
            pairs = []
            files[name] = banks.write_base(name, version, shape, storage_dtype(t.dtype),
                                           _folded_blocks(t, log.head, copied, pairs), progress,
                                           (base, sums[:copied]) if copied else None)
            folds[name] = np.array(pairs, dtype=np.int64).reshape(-1, 2)

        def write(conn, version):
            for name, written in files.items():
                banks.insert_base(conn, name, version, written, len(banks.tables[name].words))
            conn.executemany("insert into folds values (?,?,?)",
                             [(name, version, pairs.tobytes()) for name, pairs in folds.items()])

        def publish(version):
            for name, (rel, sums) in files.items():
                t = banks.tables[name]
                t.bases.append((version, banks.map_base(rel, t)))
                t.base_sums[version] = np.frombuffer(sums, np.uint32)
                t.compactions.append(version)
                t.folds[version] = folds[name]

        log.commit("compact", list(files), write, publish, author, message or "compact")
        return CommitResult(version=version, rows_changed=0)


def _has_deltas(t, head) -> bool:
    """Whether the head reads a row of table ``t`` from a delta rather than from its base."""
    base_version, base = t.base_at(head)
    return len(t.words) != base.shape[0] or bool((t.last_write > base_version).any())


def _folded_blocks(t, head, copied, pairs):
    """(first token, rows) blocks of the rows at ``head`` of the tokens among the first ``copied``
    (those the new base copies from the current one) that a delta above that base changed, and of
    every token past them, a chunk of tokens at a time; appends to ``pairs`` the (token, layer)
    rows that differ from that base (every layer of a token past its end)."""
    base_version, base = t.base_at(head)
    t.check_records(base_version, head)
    step = t.chunk_tokens()
    for start in range(0, copied, step):
        ids = start + np.flatnonzero(t.last_write[start:min(copied, start + step)] > base_version)
        if not len(ids):
            continue
        before = t.base_rows(ids, base_version)  # checked against the base's checksums
        rows = t.overlay_page([(tok, t.latest_writes(tok, head, base_version)) for tok in ids.tolist()], before.copy(), head)
        for i, layer in zip(*np.nonzero(np.any(rows != before, axis=2))):
            pairs.append((int(ids[i]), int(layer)))
        runs = np.flatnonzero(np.diff(ids) != 1) + 1  # consecutive tokens go in one block
        for lo, hi in zip([0, *runs.tolist()], [*runs.tolist(), len(ids)]):
            yield int(ids[lo]), rows[lo:hi]
    for start in range(copied, len(t.words), step):
        stop = min(len(t.words), start + step)
        rows = t.rows_in_range(start, stop, base_version)  # as the base has them (zeros past its end)
        edited = np.flatnonzero(t.edited[start:stop])
        before, index = rows[edited], {pos: i for i, pos in enumerate(edited.tolist())}
        for pos, layer in t.overlay(rows, edited, edited + start, head, base_version, cache=False):
            if start + pos >= base.shape[0] or np.any(rows[pos, layer] != before[index[pos], layer]):
                pairs.append((start + pos, layer))
        yield start, rows


def gc(log: CommitLog, banks: BankTables, mosaic: MosaicStore, retention, now) -> dict:
    """Forget versions older than the retention window that no tag protects, then delete the
    deltas, base files and pairs that no retained version reads. Every retained version reads
    exactly what it read before. The caller reloads the KB afterwards."""
    with log.lock:
        tagged = set(log.tags().values())
        rows = log.query("select id, time from commits where gone=0").fetchall()
        retained = {v for v, t in rows if t >= now - retention or v in tagged or v == log.head}
        dropped = [v for v, _ in rows if v not in retained]
        stale_deltas, stale_bases = [], []
        for name, t in banks.tables.items():
            live = [v for v in retained if v >= t.created_in]
            base_of = {v: t.base_at(v)[0] for v in live}
            stale_bases += [(name, b) for b, _ in t.bases if b not in base_of.values()]
            for c, tok, layer in log.query("select commit_id, token_id, layer from deltas where tbl=?", [name]).fetchall():
                if not any(base_of[v] < c <= v for v in live):
                    stale_deltas.append((name, tok, layer, c))
        files = [log.query("select file from bases where tbl=? and version=?", sb).fetchone()[0] for sb in stale_bases]
        with log.transaction() as conn:
            conn.executemany("update commits set gone=1 where id=?", [(v,) for v in dropped])
            conn.executemany("delete from deltas where tbl=? and token_id=? and layer=? and commit_id=?", stale_deltas)
            conn.executemany("delete from delta_sums where tbl=? and commit_id=?", sorted({(n, c) for n, _, _, c in stale_deltas}))
            conn.executemany("delete from bases where tbl=? and version=?", stale_bases)
            conn.executemany("delete from base_sums where tbl=? and version=?", stale_bases)
            conn.execute("delete from folds where version<=?", [min(retained)])  # no retained pair of versions spans it
            pairs_deleted = mosaic.gc(conn, retained)
        for f in files:
            (banks.root / f).unlink(missing_ok=True)
        return {"versions_dropped": len(dropped), "deltas_deleted": len(stale_deltas), "bases_deleted": len(files),
                "pairs_deleted": pairs_deleted}
