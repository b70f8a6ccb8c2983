"""History of bank tables: what one commit changed (show) and which rows read differently at two
versions (diff), each row with the L2 distance and cosine of its change."""
import numpy as np

from memsvc.core.dtypes import to_float32
from memsvc.store.banks import BankTables, row_change
from memsvc.store.commit_log import CommitLog


def show(log: CommitLog, banks: BankTables, version) -> tuple:
    """One commit: its metadata and the rows it changed."""
    v = log.resolve_version(version)
    info = log.commit_info(v)
    if info.kind in ("import", "compact") or (v - 1) in log.gone or v == 1:
        return info, []
    return info, diff(log, banks, v - 1, v)


def diff(log: CommitLog, banks: BankTables, from_version, to_version, table=None) -> list:
    """Rows that read differently at two versions."""
    a, b = log.resolve_version(from_version), log.resolve_version(to_version)
    lo, hi = min(a, b), max(a, b)
    changes = []
    for name in sorted(banks.tables) if table is None else [table]:
        t = banks.table(name, hi)
        if t.created_in > lo:
            continue
        keys = set(log.query("select token_id, layer from deltas where tbl=? and commit_id>? and commit_id<=?",
                             [name, lo, hi]).fetchall())
        folded = t.folded_pairs(lo, hi)  # what compactions in between changed, from their records
        if folded is None:
            keys |= _differing_rows(t.base_at(a)[1], t.base_at(b)[1])
        else:
            keys |= set(map(tuple, folded.tolist()))
        changed = set(t.changed_tokens(a, b).tolist())  # from checksums: rows of the others need not be read
        changes += _row_changes(t, sorted(k for k in keys if k[0] in changed), a, b)
    return changes


def _row_changes(t, keys, a, b):
    """The RowChanges of (token, layer) keys (sorted) between a and b, their rows read a chunk of
    tokens at a time; a token that does not exist at a version reads as zeros there (an injected
    token is all new rows)."""
    tokens, changes = sorted({tok for tok, _ in keys}), []
    step = t.chunk_tokens()
    for start in range(0, len(tokens), step):
        ids = np.array(tokens[start:start + step], dtype=np.int64)
        old, new = (to_float32(t.gather(ids, v), t.dtype) * t.alive(v)[ids, None, None] for v in (a, b))
        pos = {tok: i for i, tok in enumerate(ids.tolist())}
        part = (row_change(t, tok, layer, old[pos[tok], layer], new[pos[tok], layer]) for tok, layer in keys if tok in pos)
        changes += [c for c in part if c is not None]
    return changes


def _differing_rows(base_a, base_b, chunk=4096) -> set:
    """(token, layer) pairs whose rows differ between two base arrays (compared in chunks): diff
    across a compaction that kept no record of what it folded."""
    n = min(base_a.shape[0], base_b.shape[0])
    keys = set()
    for start in range(0, n, chunk):
        diff = np.any(base_a[start:start + chunk] != base_b[start:start + chunk], axis=2)
        keys |= {(start + int(i), int(l)) for i, l in zip(*np.nonzero(diff))}
    keys |= {(i, l) for i in range(n, max(base_a.shape[0], base_b.shape[0])) for l in range(base_a.shape[1])}
    return keys
