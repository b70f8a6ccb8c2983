"""Learned product quantisation: OPQ/PQ fitted to where the queries are, served by faiss ADC.

OPQ (Ge et al., 2013) fits a rotation R and codebooks C to *reconstruct rows*, every row alike.
What search needs is that the asymmetric distance

    d_adc(q, x) = sum_m || (R q)_m - C_m[code_m(x)] ||^2          (ip: -sum_m <(R q)_m, C_m[...]>)

*ranks* rows like the exact distance does, for the queries the index actually serves, and those
come from a different distribution than the rows (issue #5). Two steps, both on a sample of
logged queries:

1. **Query-matched training sample.** Rows are resampled with probability proportional to how many
   training queries have them in their exact top-`lpq_neighbours` (plus a floor), and faiss OPQ is
   trained on that sample: centroids move to the regions the queries ask about, at the expense of
   regions nobody queries. All rows are then encoded as usual. This step carries the gain
   (measured +2 to +3 points recall@10 at 8 bytes on the synthetic table, 50k rows).
2. **ListNet fine-tuning** (Cao et al., 2007) with the codes fixed: over a candidate list per
   training query (its exact top-K plus the ADC top-K, i.e. the hard negatives), minimise the
   cross-entropy between softmax(-d_exact / T) and softmax(-d_adc / T), where T is the per-query
   gap between the 1st and 10th exact distance times `lpq_temperature`. A small reconstruction
   term keeps R and C good for encoding rows added later. Measured: 0 to +0.4 points after step 1
   at lr 2e-4; at lr 1e-3 it overfits the training queries and loses ~2 points held-out.
R and C are then written back into the faiss index.

**Where it stands (issue #5 target: >= OPQ + 3 points at 64x).** On the synthetic table
(indexes/synthetic.py, 8 bytes/row, 2000 training and 1000 held-out queries) the gain shrinks with
the table: +2.6 to +3.3 points at 6k x 32 (4 bytes; the test), +2 to +3 at 50k, +1.6 at 100k, and
none at 200k (0.341 vs OPQ 0.343). At 200k, lpq_neighbours 10/50/200 and lpq_floor 0.02/0.1/1.0
all land within -0.5..+0.2 points of OPQ before fine-tuning. Tried at 100k-200k and dropped, since
none beat OPQ on held-out queries (scripts were throw-away; numbers from those runs):

- query-weighted encoding: re-assign every row's codes (coordinate descent over sub-spaces) to
  minimise r^T W r, r = R x - decoded, with W the second moment of (query - neighbour)
  displacements of the training queries' top-10. A global W is nearly isotropic here (eigenvalues
  0.08 to 0.45): -0.6 to -0.9 points. Per-cell W (k-means cells, shrunk to the global W) is badly
  estimated from ~8 queries a cell: -5 to -10 points, and -1 to -6 even when W came from the
  held-out queries themselves. Reason: the ADC error of a row is 2 (q - x).r + |r|^2, and at 8
  bytes |r|^2 (mean 7.7) is as large as the whole displacement energy (trace W = 17), so anything
  that grows |r|^2 to shape r loses more than it gains.
- rank-aware encoding: minimise E_q[(2 (q - x).r + |r|^2 - rho)^2] (a common inflation rho of
  all ADC distances does not change the ranking, only its spread does): rho = 0 matches OPQ
  (0.450 vs 0.450 at 100k); equalising |r|^2 across rows (rho = mean |r|^2) lost 1.5 points.
- weighted Lloyd steps over all rows (weights = reverse-kNN counts) after the resampled OPQ: 0.
"""

import faiss
import numpy as np
import torch
from tqdm import tqdm

from indexes.base import exact_knn
from indexes.faiss_index import FaissIndex


def read_pq(index):
    """(rotation (d, d), codebooks (m, ksub, dsub), codes (n, m)) of a faiss [OPQ+]PQ index."""
    if isinstance(index, faiss.IndexPreTransform):
        transform = faiss.downcast_VectorTransform(index.chain.at(0))
        rotation = faiss.vector_to_array(transform.A).reshape(transform.d_out, transform.d_in)
        pq_index = faiss.downcast_index(index.index)
    else:
        rotation, pq_index = np.eye(index.d, dtype=np.float32), index
    pq = pq_index.pq
    codebooks = faiss.vector_to_array(pq.centroids).reshape(pq.M, pq.ksub, pq.dsub)
    codes = faiss.vector_to_array(pq_index.codes).reshape(pq_index.ntotal, pq.M)
    return rotation, codebooks, codes


def write_pq(index, rotation: np.ndarray, codebooks: np.ndarray):
    """Put a fine-tuned rotation and codebooks back; the stored codes stay as they are."""
    if isinstance(index, faiss.IndexPreTransform):
        transform = faiss.downcast_VectorTransform(index.chain.at(0))
        faiss.copy_array_to_vector(rotation.astype(np.float32).ravel(), transform.A)
        transform.is_orthonormal = False  # no longer a pure rotation
        pq_index = faiss.downcast_index(index.index)
    else:
        pq_index = index
    faiss.copy_array_to_vector(codebooks.astype(np.float32).ravel(), pq_index.pq.centroids)


def adc_distances(queries, rotation, codebooks, codes, space: str):
    """d_adc for each (query, candidate): queries (B, d), codes (B, K, m) -> (B, K)."""
    B, m = len(queries), codebooks.shape[0]
    q = (queries @ rotation.T).view(B, m, -1)  # (B, m, dsub)
    table = -torch.einsum("bmd,mkd->bmk", q, codebooks)  # (B, m, ksub): -<q_m, c_mk>
    if space == "l2":  # |q_m - c|^2 = |q_m|^2 - 2<q_m, c> + |c|^2
        table = (q * q).sum(-1, keepdim=True) + 2 * table + (codebooks**2).sum(-1)
    picked = torch.gather(table, 2, codes.permute(0, 2, 1))  # (B, m, K): table[b, j, code]
    return picked.sum(1)  # (B, K)


def listnet_loss(d_adc, d_exact, mask, temperature):
    """Cross-entropy of the ADC ranking against the exact one over each candidate list."""
    scale = temperature * (d_exact[:, 9:10] - d_exact[:, :1]).clamp_min(1e-6)  # (B, 1)
    target = torch.softmax((-d_exact / scale).masked_fill(~mask, -torch.inf), dim=1)
    log_pred = torch.log_softmax((-d_adc / scale).masked_fill(~mask, -torch.inf), dim=1)
    return -(target * log_pred.masked_fill(~mask, 0)).sum(1).mean()


def candidate_lists(index, vectors, queries, k: int, space: str):
    """Per query: exact top-k then ADC top-k not already listed -> (positions (Q, 2k), mask)."""
    exact_pos, _ = exact_knn(queries, vectors, k, space)
    _, adc_pos = index.search(queries, k)
    lists = np.full((len(queries), 2 * k), -1, np.int64)
    for i, (exact_row, adc_row) in enumerate(zip(exact_pos, adc_pos)):
        extra = adc_row[~np.isin(adc_row, exact_row) & (adc_row >= 0)]
        lists[i, :k + len(extra)] = np.concatenate([exact_row, extra])
    return lists, lists >= 0


def finetune(index, vectors, queries, config, space: str):
    """Fine-tune the index's rotation and codebooks in place (see module docstring)."""
    torch.manual_seed(config.seed)
    rotation, codebooks, codes = read_pq(index)
    lists, mask = candidate_lists(index, vectors, queries, config.lpq_candidates, space)
    # work in units of the data's spread so that one learning rate fits every dataset
    unit = float(vectors.std())
    x, q_all = torch.from_numpy(vectors / unit), torch.from_numpy(queries / unit)
    codes_t = torch.from_numpy(codes.astype(np.int64))
    cand = torch.from_numpy(np.maximum(lists, 0))
    d_exact_all = torch.cat([exact_distances(q_all[b], x[cand[b]], space)  # (Q, K) targets
                             for b in torch.arange(len(q_all)).split(256)])
    cand_codes, mask_t = codes_t[cand], torch.from_numpy(mask)  # (Q, K, m), (Q, K)
    R = torch.nn.Parameter(torch.from_numpy(rotation.copy()))
    C = torch.nn.Parameter(torch.from_numpy(codebooks / unit))
    recon_rows = torch.randperm(len(x))[:4096]
    rows, row_codes = x[recon_rows], codes_t[recon_rows]  # (S, d), (S, m)

    def reconstruction_error():  # mean |R x - C[code(x)]|^2 over a fixed sample of rows
        decoded = C[torch.arange(C.shape[0]), row_codes]  # (S, m, dsub)
        return ((rows @ R.T - decoded.flatten(1)) ** 2).sum(1).mean()

    with torch.no_grad():
        recon0 = reconstruction_error()
    optimizer = torch.optim.Adam([R, C], lr=config.lpq_lr)
    for _ in tqdm(range(config.lpq_epochs), desc="learned_pq", disable=not config.progress):
        for batch in torch.randperm(len(q_all)).split(128):
            d_adc = adc_distances(q_all[batch], R, C, cand_codes[batch], space)  # (B, K)
            loss = listnet_loss(d_adc, d_exact_all[batch], mask_t[batch], config.lpq_temperature)
            loss = loss + config.lpq_recon_weight * reconstruction_error() / recon0
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    write_pq(index, R.detach().numpy(), C.detach().numpy() * unit)


def exact_distances(queries, rows, space: str):
    """queries (B, d), rows (B, K, d) -> (B, K), smaller = closer."""
    if space == "l2":
        return ((rows - queries.unsqueeze(1)) ** 2).sum(-1)
    return -(rows * queries.unsqueeze(1)).sum(-1)


def query_matched_sample(vectors, queries, config, space: str):
    """Rows resampled to where the queries are: (config.opq_train_rows, d) float32.

    Row i is drawn with probability ~ r_i + floor * mean(r), where r_i counts the training queries
    that have row i among their exact top-`lpq_neighbours` (its reverse-kNN count). The floor
    keeps every region covered, for rows no sampled query reached and rows added later.
    """
    pos, _ = exact_knn(queries, vectors, config.lpq_neighbours, space)
    hits = np.bincount(pos.ravel(), minlength=len(vectors)).astype(np.float64)
    weight = hits + config.lpq_floor * hits.mean()
    rng = np.random.default_rng(config.seed)
    picked = rng.choice(len(vectors), size=config.opq_train_rows, p=weight / weight.sum())
    return vectors[picked]


class LearnedPQIndex(FaissIndex):
    """kind "learned_pq": a faiss [OPQ+]PQ index trained on rows resampled to the query
    distribution, whose R and C are then fine-tuned for ranking."""

    def _build(self, vectors, train_queries=None, **train):
        queries = self._prepare("train_queries", train_queries)
        faiss.omp_set_num_threads(self.threads)
        super()._build(vectors, sample=query_matched_sample(vectors, queries, self.config,
                                                            self.space))
        torch.set_num_threads(self.threads)
        if self.config.lpq_epochs:
            finetune(self._index, vectors, queries, self.config, self.space)
