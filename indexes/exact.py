"""Exact top-k and the merge of top-k lists: the one brute force that the index kinds (the
fresh buffer, learned PQ's training lists), the mosaic TOPK read and the search manager's
exact part all call.

Distances are "smaller is closer" (indexes/base.py). Hit lists are (n, k) ids int64 padded with
-1 and distances float32 padded with +inf; -1 is never a row's id.
"""
import numpy as np


def exact_knn(queries: np.ndarray, vectors: np.ndarray, k: int, space: str):
    """Brute-force top-k: (positions (n, k') int64, distances (n, k') float32), k' = min(k, len(vectors)),
    in space "l2" (squared L2) or "ip" (-q.x)."""
    import faiss  # on first use: the server imports this module at start and may never search exactly

    k = min(k, len(vectors))
    if k == 0:
        return empty_hits(len(queries))
    metric = faiss.METRIC_L2 if space == "l2" else faiss.METRIC_INNER_PRODUCT
    dist, pos = faiss.knn(queries, vectors, k, metric=metric)
    return pos, (dist if space == "l2" else -dist)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; zero rows stay zero (cosine distance 1 to everything)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def exact_search(queries, ids, rows, k, metric):
    """Brute-force top-k of `rows` named by `ids` under a metric (l2, ip, cosine):
    (ids (n, k'), distances (n, k')), k' = min(k, len(rows))."""
    if metric == "cosine":
        queries, rows = unit_rows(queries), unit_rows(rows)
    pos, dist = exact_knn(np.ascontiguousarray(queries), np.ascontiguousarray(rows, dtype=np.float32), k,
                          "l2" if metric == "l2" else "ip")
    return ids[pos], (1 + dist if metric == "cosine" else dist).astype(np.float32)


def top_k(ids, dist, k):
    """The k closest of (n, *) candidates, padded with -1 / +inf (stable on ties: of equal
    distances the earlier candidate wins)."""
    dist = np.where(ids != -1, dist, np.inf)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    ids, dist = np.take_along_axis(ids, order, 1), np.take_along_axis(dist, order, 1)
    pad = k - ids.shape[1]
    return (np.pad(ids, ((0, 0), (0, pad)), constant_values=-1).astype(np.int64),
            np.pad(dist, ((0, 0), (0, pad)), constant_values=np.inf).astype(np.float32))


def merge_topk(ids_a, dist_a, ids_b, dist_b, k):
    """The k closest of two (n, *) hit lists."""
    return top_k(np.concatenate([ids_a, ids_b], axis=1), np.concatenate([dist_a, dist_b], axis=1), k)


def empty_hits(n):
    return np.empty((n, 0), np.int64), np.empty((n, 0), np.float32)
