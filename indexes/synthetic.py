"""A deterministic clustered table with queries from a shifted distribution (for tests and bench).

The first version (200 well-separated clusters of rank 16) was too easy: every graph index reached
recall@10 = 1.0 at its lowest setting, so it could not tell indexes apart (issue #5). This one
follows what makes real embedding tables hard, chosen from those properties and not fitted to any
index's result:

- **Many overlapping clusters.** Centres are drawn with a global power-law spectrum (a few strong
  directions, a long tail, like the top principal components of text embeddings), at a scale where
  a row's nearest neighbours are often in a *neighbouring* cluster, so there are no clean gaps for
  a graph or an IVF partition to exploit.
- **Higher intrinsic dimension, anisotropic clusters.** Each cluster spans its own random
  `rank`-dimensional subspace with per-direction standard deviations decaying as i^-1/2
  (i = 1..rank), plus isotropic noise in all `dim` directions. With rank 48 the local intrinsic
  dimension is tens, not a handful, and distances concentrate (small relative contrast).
- **Zipf cluster sizes** (exponent 0.7): a few large clusters, many small ones.
- **Queries off the base distribution.** Queries pick clusters with *reversed* popularity, spread
  1.3x wider inside the cluster, carry 3x the rows' isotropic noise (energy outside every cluster's
  span, as text queries have against passage keys), are shifted by one common offset, and a
  quarter of them are midpoints of two clusters (queries that fall between topics). An index fitted
  to the rows alone (k-means, OPQ) therefore meets queries it was not fitted to.

Everything is fixed by `seed`. The low-rank spread is scaled so that the within-cluster and noise
energies are comparable to the spread between centres.
"""

import numpy as np


def clustered_table(n: int, dim: int = 128, n_queries: int = 1000, *, clusters: int = 1000,
                    rank: int = 48, seed: int = 0):
    """Return (rows (n, dim), queries (n_queries, dim)), both float32 and fixed by `seed`."""
    rng = np.random.default_rng(seed)
    rank = min(rank, dim)
    # centres: a random rotation of a power-law spectrum (std of direction i ~ i^-1/2)
    rotation, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    centres = (rng.normal(size=(clusters, dim)) * np.arange(1, dim + 1) ** -0.5) @ rotation
    centres *= 4.0 / np.sqrt((centres**2).sum(1).mean())  # mean centre norm 4
    # per-cluster spans: random directions with std i^-1/2, total energy ~ 1 per row
    spectrum = np.arange(1, rank + 1) ** -0.5
    spectrum /= np.sqrt((spectrum**2).sum())
    bases = rng.normal(size=(clusters, rank, dim)) / np.sqrt(dim) * spectrum[:, None] * 2.5
    noise = 0.8 / np.sqrt(dim)  # isotropic, total energy 0.8^2 per row
    popularity = 1.0 / np.arange(1, clusters + 1) ** 0.7
    popularity /= popularity.sum()
    offset = rng.normal(size=dim) * (0.6 / np.sqrt(dim))  # common query shift, norm ~0.6

    def sample(count, weights, spread, noise_scale):
        cluster = rng.choice(clusters, size=count, p=weights)
        z = rng.normal(size=(count, rank)) * spread  # (count, r)
        out = centres[cluster].copy()
        for c in np.unique(cluster):
            members = cluster == c
            out[members] += z[members] @ bases[c]  # (m, r) @ (r, d)
        return out + rng.normal(size=(count, dim)) * noise * noise_scale

    rows = sample(n, popularity, 1.0, 1.0)
    queries = sample(n_queries, popularity[::-1], 1.3, 3.0) + offset
    between = rng.random(n_queries) < 0.25  # midpoints of two clusters
    if between.any():
        other = sample(int(between.sum()), popularity[::-1], 1.3, 3.0) + offset
        queries[between] = (queries[between] + other) / 2
    return rows.astype(np.float32), queries.astype(np.float32)
