"""Nearest tokens of a row by exact cosine: what ``--dry-run`` prints for each new row.

STEM rows are interpretable by their neighbours in the same layer's table (the STEM paper's
embedding-space analysis): a row set to Germany's should sit next to Germany, not noise.
"""
import numpy as np

from memsvc.core.errors import InvalidArgument


def nearest_tokens(vector, table_rows, k=5, exclude=()):
    """The k rows of table_rows (V, d) most cosine-similar to vector (d,).

    cos(v, r) = v.r / (|v| |r|), with 0 for a zero row or vector (no direction). Returns
    [(token_id, cosine)] best first, ties by lower id; ids in ``exclude`` are skipped.
    """
    v = np.asarray(vector, dtype=np.float32)
    rows = np.asarray(table_rows, dtype=np.float32)
    if rows.ndim != 2 or v.shape != (rows.shape[1],):
        raise InvalidArgument(f"vector: expected shape ({rows.shape[-1]},), got {v.shape}")
    if k < 1:
        raise InvalidArgument(f"k: must be >= 1, got {k}")
    # Row norms without materialising a normalised copy of the (possibly large) table.
    norms = np.sqrt(np.einsum("ij,ij->i", rows, rows)) * np.linalg.norm(v)  # (V,)
    dots = rows @ v  # (V,)
    cos = np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)
    ids = np.arange(len(rows))
    keep = np.ones(len(rows), dtype=bool)
    excluded = np.asarray(list(exclude), dtype=np.int64)
    keep[excluded[(excluded >= 0) & (excluded < len(rows))]] = False
    cos, ids = cos[keep], ids[keep]
    order = np.lexsort((ids, -cos))[:k]  # by cosine descending, then id ascending
    return [(int(ids[i]), float(cos[i])) for i in order]
