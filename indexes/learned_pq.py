"""Learned product quantisation: a two-level PQ code fitted to where the queries are, served by
faiss ADC.

OPQ (Ge et al., 2013) fits a rotation and codebooks to *reconstruct rows*, every row alike. What
search needs is that the asymmetric distance ranks rows like the exact distance does for the
queries the index actually serves, and those come from a different distribution than the rows
(issue #5). At 64x compression (8 bytes for 128 float32) that costs structure, not just training:

**The code.** The same 64 bits as OPQ's PQ8x8 are spent as one coarse byte (a k-means cell over
the whole vector, 2^lpq_coarse_bits cells) and eight 7-bit PQ codes of the row's residual from its
cell centre, after an OPQ rotation R fitted to those residuals (faiss OPQ + IndexIVFPQ: the coarse
code is the inverted list a row sits in, so it is stored by position, not in the code):

    x_hat = coarse[list(x)] + concat_m C_m[code_m(x)]        (in the rotated space: R x ~ x_hat)
    d_adc(q, x) = |R q - x_hat|^2                             (ip: -<R q, x_hat>)

A PQ sub-space of 16 dims with 256 centroids cannot even tell 1000 clusters apart; the coarse byte
names the region first and the residual codes spend their bits inside it. Searching `nprobe` cells
(default 16) scores the rows of the cells nearest the query; nprobe = 2^lpq_coarse_bits scores
every row, as OPQ does.

**Training on the queries.** Both levels (and R) are trained on rows resampled to where the
queries are (`query_matched_sample`): row i is drawn with probability ~ (training queries with row
i in their exact top-`lpq_neighbours`) + a uniform prior worth `lpq_prior_queries` queries. Coarse
cells and residual centroids move to the regions the queries ask about, at the expense of regions
nobody queries. Then **ListNet fine-tuning** (Cao et al., 2007) of the residual codebooks with the
codes fixed: over a candidate list per training query (its exact top-K plus its ADC top-K, the
hard negatives), minimise the cross-entropy between softmax(-d_exact / T) and softmax(-d_adc / T),
T = the query's gap between its 1st and 10th exact distance x `lpq_temperature`, plus a small
reconstruction term that keeps the codebooks good for encoding rows added later. The codebooks
are then written back into the faiss index.

**Measured** (recall@10 on held-out queries at 8 bytes/row, every row scored; `bench/ann.py --n
200000 --kinds exact,pq,opq,learned_pq`): synthetic 200k x 128 table (indexes/synthetic.py, 2000
training, 1000 held-out queries): OPQ 0.343, learned PQ 0.415 (+7.2 points). Of that, the
two-level code trained on the rows alike gives 0.373-0.377; the query-matched sample +4, the
fine-tuning +0.05..0.15. SIFT 5k, 2-fold over its 100 real queries (50 training queries a fold):
OPQ 0.419, learned 0.430. The residual rotation is worth +2.5 on SIFT and -0.6 on the synthetic
table. The prior: on SIFT P = 5 (the old fixed floor, 0.1 x the mean count) gave 0.370 and
P = 50 0.411; at 200k, P = 2000 lost 1 point against P = 200. nprobe 16 gives the recall of
nprobe 256 at 5.8x the QPS, and 1.4x OPQ's.

History: the first version kept OPQ's PQ8x8 code and only trained it on queries: +2..3 points at
50k rows, +0.8 at 200k; query-weighted re-encoding, per-cell metrics, rank-aware encoding and
weighted Lloyd steps all lost to OPQ on held-out queries there, because at 16 dims a byte the
quantisation residual is as large as the whole query-neighbour displacement. Also measured at 200k
and dropped: PQ6x10 over 132 rotated dims 0.276; a faiss residual quantiser RQ7x8 with a 1-byte
norm 0.348; OPQ itself trained harder (65536 rows, 50 iterations) 0.350; a per-centroid bias of
lambda x the cell's mean residual energy in the ADC (Jegou et al.'s unbiased estimator) -0.1..-1.6.
"""

import faiss
import numpy as np
import torch
from tqdm import tqdm

from indexes.faiss_index import FaissIndex
from memsvc.core.errors import ResourceExhausted


def read_codes(index):
    """(rotation (d, d), coarse centres (nlist, d), residual codebooks (m, ksub, dsub), list of
    each row (n,), residual codes (n, m)) of a faiss OPQ + IndexIVFPQ, rows in insertion order;
    everything after the rotation lives in the rotated space."""
    transform = faiss.downcast_VectorTransform(index.chain.at(0))
    rotation = faiss.vector_to_array(transform.A).reshape(transform.d_out, transform.d_in)
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))  # IndexIVFPQ
    pq, invlists = ivf.pq, ivf.invlists
    coarse = ivf.quantizer.reconstruct_n(0, ivf.nlist)
    codebooks = faiss.vector_to_array(pq.centroids).reshape(pq.M, pq.ksub, pq.dsub)
    lists, codes = np.empty(ivf.ntotal, np.int64), np.empty((ivf.ntotal, pq.M), np.int64)
    for cell in range(ivf.nlist):
        size = invlists.list_size(cell)
        if size == 0:
            continue
        rows = faiss.rev_swig_ptr(invlists.get_ids(cell), size).copy()
        packed = faiss.rev_swig_ptr(invlists.get_codes(cell), size * pq.code_size)
        lists[rows] = cell
        codes[rows] = faiss.unpack_bitstrings(packed.reshape(size, pq.code_size), pq.M, pq.nbits)
    return rotation, coarse, codebooks, lists, codes


def write_codebooks(index, codebooks: np.ndarray):
    """Put fine-tuned residual codebooks back; the stored codes stay as they are."""
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))  # IndexIVFPQ
    faiss.copy_array_to_vector(codebooks.astype(np.float32).ravel(), ivf.pq.centroids)
    ivf.precompute_table()  # faiss's per-cell distance terms depend on the codebooks


def decode(coarse_rows, codebooks, codes):
    """x_hat = coarse[list] + concat_m C_m[code_m]: coarse_rows (..., d), codes (..., m)."""
    m = codebooks.shape[0]
    return coarse_rows + codebooks[torch.arange(m), codes].flatten(-2)  # (..., m, dsub) -> (..., d)


def exact_distances(queries, rows, space: str):
    """queries (B, d), rows (B, K, d) -> (B, K), smaller = closer."""
    if space == "l2":
        return ((rows - queries.unsqueeze(1)) ** 2).sum(-1)
    return -(rows * queries.unsqueeze(1)).sum(-1)


def listnet_loss(d_adc, d_exact, mask, temperature):
    """Cross-entropy of the ADC ranking against the exact one over each candidate list."""
    scale = temperature * (d_exact[:, 9:10] - d_exact[:, :1]).clamp_min(1e-6)  # (B, 1)
    target = torch.softmax((-d_exact / scale).masked_fill(~mask, -torch.inf), dim=1)
    log_pred = torch.log_softmax((-d_adc / scale).masked_fill(~mask, -torch.inf), dim=1)
    return -(target * log_pred.masked_fill(~mask, 0)).sum(1).mean()


def candidate_lists(index, rows, queries, k: int, space: str, nprobe: int):
    """Per query: exact top-k then ADC top-k not already listed -> (positions (Q, 2k), mask)."""
    exact_pos, _ = rows.knn(queries, k, space)
    _, adc_pos = index.search(queries, k, params=faiss.SearchParametersIVF(nprobe=nprobe))
    lists = np.full((len(queries), 2 * k), -1, np.int64)
    for i, (exact_row, adc_row) in enumerate(zip(exact_pos, adc_pos)):
        extra = adc_row[~np.isin(adc_row, exact_row) & (adc_row >= 0)]
        lists[i, :k + len(extra)] = np.concatenate([exact_row, extra])
    return lists, lists >= 0


def finetune(index, rows, queries, config, space: str):
    """Fine-tune the index's residual codebooks in place (see module docstring). Holds the rows
    of the candidate lists and of the reconstruction sample only; ResourceExhausted naming
    config.lpq_epochs when those exceed config.train_bytes."""
    torch.manual_seed(config.seed)
    sample = torch.randperm(len(rows))[:4096].numpy()  # rows the reconstruction term measures
    rotation, coarse, codebooks, lists, codes = read_codes(index)
    cand, mask = candidate_lists(index, rows, queries, config.lpq_candidates, space,
                                 config.nprobe)
    cand = np.maximum(cand, 0)  # (Q, K) row positions; padding masked
    needed = np.union1d(cand, sample)
    if len(needed) * rows.index.dim * 4 > config.train_bytes:
        raise ResourceExhausted(
            f"config.lpq_epochs: learned_pq's fine-tuning reads the rows of its candidate lists, "
            f"{len(needed):,} rows x {rows.index.dim} float32 = {len(needed) * rows.index.dim * 4 / 2**20:,.1f} MB, "
            f"over config.train_bytes ({config.train_bytes / 2**20:,.1f} MB); build with lpq_epochs=0, "
            f"fewer lpq_candidates or a larger train_bytes")
    # in the rotated space (distances unchanged), in units of the data's spread so that one
    # learning rate fits every dataset
    unit = rows.std()
    x, q_all = (torch.from_numpy(a @ rotation.T / unit) for a in (rows.take(needed), queries))
    centres, cell = torch.from_numpy(coarse / unit), torch.from_numpy(lists[needed])  # (nlist, d), (len(needed),)
    codes_t, mask = torch.from_numpy(codes[needed]), torch.from_numpy(mask)
    cand, sample = (torch.from_numpy(np.searchsorted(needed, a)) for a in (cand, sample))  # positions in needed
    d_exact_all = torch.cat([exact_distances(q_all[b], x[cand[b]], space)  # (Q, K) targets
                             for b in torch.arange(len(q_all)).split(256)])
    C = torch.nn.Parameter(torch.from_numpy(codebooks / unit))

    def reconstruction_error():  # mean |x - x_hat|^2 over a fixed sample of rows
        return ((x[sample] - decode(centres[cell[sample]], C, codes_t[sample])) ** 2).sum(1).mean()

    with torch.no_grad():
        recon0 = reconstruction_error()
    optimizer = torch.optim.Adam([C], lr=config.lpq_lr)
    for _ in tqdm(range(config.lpq_epochs), desc="learned_pq", disable=not config.progress):
        for batch in torch.randperm(len(q_all)).split(128):
            listed = cand[batch]  # (B, K)
            d_adc = exact_distances(q_all[batch], decode(centres[cell[listed]], C, codes_t[listed]), space)
            loss = listnet_loss(d_adc, d_exact_all[batch], mask[batch], config.lpq_temperature)
            loss = loss + config.lpq_recon_weight * reconstruction_error() / recon0
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    write_codebooks(index, C.detach().numpy() * unit)


def query_matched_sample(rows, queries, config, space: str):
    """Rows resampled to where the queries are: (config.lpq_train_rows, d) float32, at most
    config.train_bytes of them.

    Row i is drawn with probability ~ r_i + P k / n, where r_i counts the training queries that
    have row i among their exact top-k (k = `lpq_neighbours`; its reverse-kNN count) and the
    second term is a uniform prior worth P = `lpq_prior_queries` queries. A few logged queries
    barely move the sample (they are a poor guess of where the next ones land: trained on 50
    SIFT queries with P = 5, recall@10 fell from 0.430 to 0.370); thousands dominate it. The
    prior also keeps every region covered, for rows no query reached and rows added later.
    """
    n = len(rows)
    pos, _ = rows.knn(queries, config.lpq_neighbours, space)
    hits = np.bincount(pos.ravel(), minlength=n).astype(np.float64)
    weight = hits + config.lpq_prior_queries * pos.shape[1] / n
    rng = np.random.default_rng(config.seed)
    size = min(config.lpq_train_rows, max(1, config.train_bytes // (4 * rows.index.dim)))
    picked = rng.choice(n, size=size, p=weight / weight.sum())
    unique, inverse = np.unique(picked, return_inverse=True)
    return rows.take(unique)[inverse]


class LearnedPQIndex(FaissIndex):
    """kind "learned_pq": a faiss OPQ + IVF + residual PQ index (one coarse byte + 7-bit residual
    codes at 8 bytes/row) trained on rows resampled to the query distribution, whose residual
    codebooks are then fine-tuned for ranking."""

    def _pretrain(self, sample):
        """OPQ's rotation fitted to the residuals from the coarse cells, which the PQ codes hold
        (faiss's own OPQ training would fit it to the rows)."""
        cells = faiss.Kmeans(self.dim, 2 ** self.config.lpq_coarse_bits, niter=20,
                             seed=self.config.seed + 1)
        cells.train(sample)
        residuals = sample - cells.centroids[cells.index.search(sample, 1)[1][:, 0]]
        faiss.downcast_VectorTransform(self._index.chain.at(0)).train(residuals)

    def _build(self, rows, train_queries=None, **train):
        queries = self._prepare("train_queries", train_queries)
        faiss.omp_set_num_threads(self.threads)
        super()._build(rows, sample=query_matched_sample(rows, queries, self.config, self.space))
        torch.set_num_threads(self.threads)
        if self.config.lpq_epochs:
            finetune(self._index, rows, queries, self.config, self.space)
