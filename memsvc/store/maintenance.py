"""Maintenance across table kinds: compaction (fold bank deltas into new bases) and gc (forget
old versions and delete what no retained version reads)."""
import numpy as np

from memsvc.core.values import CommitResult
from memsvc.store.banks import BankTables
from memsvc.store.commit_log import CommitLog
from memsvc.store.mosaic import MosaicStore


def compact(log: CommitLog, banks: BankTables, author="", message="", progress=False) -> CommitResult:
    """Fold every bank table's deltas into new base arrays, as one commit that changes no row."""
    with log.lock:
        version = log.head + 1
        files = {}
        for name, t in banks.tables.items():
            ids = np.arange(len(t.words), dtype=np.int64)
            files[name] = banks.write_base(name, version, t.gather(ids, log.head), progress)

        def write(conn, version):
            conn.executemany("insert into bases values (?,?,?,?)",
                             [(name, version, rel, len(banks.tables[name].words)) for name, rel in files.items()])

        def publish(version):
            for name, rel in files.items():
                t = banks.tables[name]
                t.bases.append((version, banks.map_base(rel, t)))

        log.commit("compact", list(files), write, publish, author, message or "compact")
        return CommitResult(version=version, rows_changed=0)


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
            conn.executemany("delete from bases where tbl=? and version=?", stale_bases)
            pairs_deleted = mosaic.gc(conn, retained)
        for f in files:
            (banks.root / f).unlink(missing_ok=True)
        return {"versions_dropped": len(dropped), "deltas_deleted": len(stale_deltas), "bases_deleted": len(files),
                "pairs_deleted": pairs_deleted}
