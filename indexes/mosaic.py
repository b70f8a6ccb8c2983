"""Reading a Memory Mosaic store: Gaussian kernel regression over (key, value) pairs.

Keys are unit vectors, so the Gaussian kernel exp(-β/2 ||q - k||²) is, up to a factor that
cancels, exp(β q·k) ("Memory Mosaics", ICLR 2025):

    o(q) = Σ_i exp(β q·k_i) v_i / Σ_j exp(β q·k_j)        lse(q) = log Σ_j exp(β q·k_j)

Every read returns (o, lse, n): with lse, results from shards, modes or an on-device part merge
exactly (`merge_results`). Three modes share that contract:

- EXACT  `kernel_regression`: all n pairs, streamed in blocks of keys (bounded memory).
- TOPK   `topk_regression`: the kernel average over the k best keys of any search index.
- LSH    `lsh_regression`: MagicPIG importance sampling through a `SimHashIndex` (indexes/lsh.py).
"""


import numpy as np

from indexes.exact import exact_knn, top_k
from indexes.lsh import SimHashIndex
from memsvc.core.errors import InvalidArgument
from memsvc.core.mosaic import merge_results


def _check(queries, keys, values):
    """Validate once at the boundary. Keys and values are used as stored (no copy of a big
    float32 or memory-mapped store); queries take the keys' float dtype."""
    keys, values = np.asarray(keys), np.asarray(values)
    queries = np.asarray(queries, dtype=np.result_type(keys.dtype, np.float32))
    if queries.ndim != 2 or keys.ndim != 2 or values.ndim != 2:
        raise InvalidArgument("queries, keys and values must be 2-d arrays")
    if keys.shape[1] != queries.shape[1]:
        raise InvalidArgument(f"keys have dim {keys.shape[1]}, queries have {queries.shape[1]}")
    if values.shape[0] != keys.shape[0]:
        raise InvalidArgument(f"values has {values.shape[0]} rows, keys has {keys.shape[0]}")
    return queries, keys, values


def _softmax_average(logits, values):
    """Self-normalised average of values under exp(logits), plus log Σ exp(logits).

    logits (m, c), -inf where a slot is empty; values (c, dv) shared by all queries or (m, c, dv)
    per query. A row with no finite logit gets o = 0, lse = -inf (the empty-shard convention).
    """
    top = logits.max(axis=1, initial=-np.inf)
    top = np.where(np.isfinite(top), top, 0.0)
    weights = np.exp(logits - top[:, None])  # (m, c), in (0, 1]: no overflow
    total = weights.sum(axis=1)
    if values.ndim == 2:
        o = weights @ values  # (m, dv): one BLAS call for the whole block
    else:
        o = np.einsum("mc,mcd->md", weights, values)
    with np.errstate(divide="ignore"):
        lse = top + np.log(total)
    return o / np.where(total > 0, total, 1.0)[:, None], lse


def kernel_regression(queries, keys, values, beta, *, block=65536):
    """EXACT mode. queries (m, d), unit keys (n, d), values (n, dv) -> (o (m, dv), lse (m,), n).

    Each block of keys is an exact little shard; folding the blocks with `merge_results` is the
    streaming log-sum-exp, so memory stays O(m·block) however large n is.
    """
    queries, keys, values = _check(queries, keys, values)
    m, dv = queries.shape[0], values.shape[1]
    result = (np.zeros((m, dv), queries.dtype), np.full(m, -np.inf, queries.dtype), 0)
    for start in range(0, keys.shape[0], block):
        scores = beta * (queries @ keys[start:start + block].T)  # (m, block)
        o, lse = _softmax_average(scores, values[start:start + block])
        result = merge_results([result, (o, lse, scores.shape[1])])
    return result


def exact_topk(keys):
    """A search(queries, k) -> (ids, distances = −q·k) by inner product over all keys, padded to k."""

    def search(queries, k):
        return top_k(*exact_knn(queries, keys, k, "ip"), k)

    return search


def topk_regression(queries, keys, values, beta, k, search=None):
    """TOPK mode: the kernel average over the k keys `search` returns for each query.

    `search(queries, k) -> (ids (m, k), distances)` is any index with the uniform interface whose
    ids are rows of keys/values (padded with -1); default: exact top-k by inner product. Scores are
    recomputed from the keys, so the index's distance convention does not matter.
    Returns (o, lse, n) where lse is over the retrieved set only: a LOWER BOUND of the true lse
    (the missing tail mass is what biases top-k when attention is long-tailed).
    """
    queries, keys, values = _check(queries, keys, values)
    search = search or exact_topk(keys)
    ids, _ = search(queries, k)
    ids = np.asarray(ids, np.int64)
    found = ids >= 0
    rows = np.where(found, ids, 0)
    scores = beta * np.einsum("md,mkd->mk", queries, keys[rows])  # (m, k)
    o, lse = _softmax_average(np.where(found, scores, -np.inf), values[rows])
    return o, lse, keys.shape[0]


def lsh_regression(queries, keys, values, beta, index: SimHashIndex, *, alive=None):
    """LSH mode (MagicPIG): importance sampling of keys through SimHash collisions.

    Key i is retrieved (set S) with probability u_i (see `inclusion_probability`); the estimate
    uses weights exp(β q·k_i − log u_i) over S, self-normalised for o. The same weights give
    lse_est = log Σ_S exp(β q·k_i)/u_i, the log of an unbiased (Horvitz-Thompson) estimate of
    Σ_j exp(β q·k_j), so LSH results still merge with `merge_results`.
    `index` holds the rows of keys/values by id; `alive` (N,) bool, if given, keeps only those
    rows (a version's mask: keys are sampled independently, so the filtered estimate stays
    unbiased for the rows kept). Returns (o, lse_est, n, fraction_touched (m,)), n = rows kept.

    A query costs its L bucket walks plus the random reads of its ~budget·n retrieved rows of
    keys and values, in one compiled pass (`SimHashIndex.regress`, no per-key Python work).
    """
    queries, keys, values = _check(queries, keys, values)
    n = len(index) if alive is None else int(np.count_nonzero(alive))
    o, lse, retrieved = index.regress(queries, keys, values, beta, alive)
    return o, lse, n, retrieved / max(n, 1)
