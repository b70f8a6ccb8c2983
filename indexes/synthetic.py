"""A deterministic clustered table with queries from a shifted distribution (for tests and bench).

Rows look like embeddings: each cluster is a low-rank Gaussian (rank `rank`) around its centre
plus a little isotropic noise, with Zipf-like cluster sizes. Queries come from the same clusters
with *reversed* popularity, a common offset and wider spread, so an index tuned only to the rows
(k-means, OPQ) meets queries it was not fitted to, as with text queries against passage keys.
"""

import numpy as np


def clustered_table(n: int, dim: int = 128, n_queries: int = 1000, *, clusters: int = 200,
                    rank: int = 16, seed: int = 0):
    """Return (rows (n, dim), queries (n_queries, dim)), both float32 and fixed by `seed`."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)) * 2.0
    bases = rng.normal(size=(clusters, rank, dim)) / np.sqrt(rank)  # (C, r, d) per-cluster spans
    popularity = 1.0 / np.arange(1, clusters + 1) ** 0.7
    popularity /= popularity.sum()
    offset = rng.normal(size=dim) * 0.3

    def sample(count, weights, spread, shift):
        cluster = rng.choice(clusters, size=count, p=weights)
        z = rng.normal(size=(count, rank)) * spread  # (count, r)
        rows = centres[cluster]
        for c in np.unique(cluster):
            members = cluster == c
            rows[members] += z[members] @ bases[c]  # (m, r) @ (r, d)
        return (rows + shift + rng.normal(size=(count, dim)) * 0.1).astype(np.float32)

    rows = sample(n, popularity, 1.0, 0.0)
    queries = sample(n_queries, popularity[::-1], 1.3, offset)
    return rows, queries
