"""The values of Memory Mosaic stores that cross boundaries (store, wire, client), and the exact
merge of reads, which is plain math every side needs."""
from dataclasses import dataclass

import numpy as np

from memsvc.core.errors import InvalidArgument


@dataclass
class BetaPolicy:
    """β = β1·n^α + β0 for a store of n pairs ("Memory Mosaics at scale"); α = β1 = 0 is fixed β."""

    beta0: float = 1.0
    beta1: float = 0.0
    alpha: float = 0.0

    @classmethod
    def fixed(cls, beta: float) -> "BetaPolicy":
        return cls(beta0=beta)

    def beta(self, n: int) -> float:
        return self.beta1 * float(n) ** self.alpha + self.beta0


def merge_results(results):
    """Exact merge of (o_s, lse_s, n_s) from disjoint shards: o = Σ_s exp(lse_s − L) o_s, L = logsumexp."""
    results = list(results)
    if not results:
        raise InvalidArgument("merge_results needs at least one result")
    lse = np.stack([r[1] for r in results])  # (S, m)
    top = np.where(np.isfinite(lse.max(axis=0)), lse.max(axis=0), 0.0)
    mass = np.exp(lse - top)  # (S, m); empty shards (lse = -inf) weigh 0
    total = mass.sum(axis=0)
    o = sum(w[:, None] * r[0] for w, r in zip(mass, results))
    with np.errstate(divide="ignore"):
        merged_lse = top + np.log(total)
    return o / np.where(total > 0, total, 1.0)[:, None], merged_lse, sum(int(r[2]) for r in results)


@dataclass
class LshParams:
    """MagicPIG knobs: K bits per table and L tables, or a budget (expected fraction touched)."""

    bits: int = 10
    tables: int = 0  # 0: from `budget`, else SimHashConfig's default
    budget: float = 0.0  # e.g. 0.03: L is the smallest giving that mean inclusion probability


@dataclass
class MosaicResult:
    """One read: outputs (m, dv), lse (m,) and n (pairs read, the same for every query)."""

    outputs: np.ndarray
    lse: np.ndarray
    n: int
    version: int
    beta: float
    mode: str = "exact"
    touched: np.ndarray | None = None  # LSH: fraction of the n pairs each query touched
    lsh_tables: int = 0  # LSH: the L used
    index_lag: int = 0  # pairs the index absorbed before answering (it was behind by that many)


@dataclass
class PairsResult:
    """A commit of pairs: its version, rows written and the ids it added, removed or replaced."""

    version: int
    rows_changed: int
    ids: np.ndarray


@dataclass
class MosaicInfo:
    name: str
    num_layers: int
    num_heads: int
    key_dim: int
    value_dim: int
    created_version: int
    pairs: np.ndarray  # (layers, heads) live pairs per group at `version`
    policy: BetaPolicy
    topk_index: str
    version: int


def merge(results) -> MosaicResult:
    """Exact merge of reads of disjoint stores (or shards) with the same queries and β."""
    results = list(results)
    o, lse, n = merge_results([(r.outputs, r.lse, r.n) for r in results])
    return MosaicResult(outputs=o, lse=lse, n=n, version=max(r.version for r in results), beta=results[0].beta,
                        mode=results[0].mode)
