"""What enters a mosaic store, checked once where it enters: pair matrices, ids, β policies and
LSH knobs; and the pair files (.npz, or two .npy) that the CLI imports and exports."""
from dataclasses import dataclass

import numpy as np

from memsvc.core.errors import InvalidArgument, ResourceExhausted
from memsvc.core.mosaic import BetaPolicy, LshParams

# Bounds on a store's shape: every (layer, head) group is allocated at create.
MAX_SHAPE = {"num_layers": 1024, "num_heads": 1024, "key_dim": 65536, "value_dim": 65536}
MAX_GROUPS = 65536


def check_shape(**shape):
    """A new store's num_layers, num_heads, key_dim and value_dim, each within MAX_SHAPE."""
    for what, value in shape.items():
        if not 1 <= value <= MAX_SHAPE[what]:
            raise InvalidArgument(f"{what}: must be in [1, {MAX_SHAPE[what]}], got {value}")
    if shape["num_layers"] * shape["num_heads"] > MAX_GROUPS:
        raise InvalidArgument(f"num_heads: num_layers x num_heads must be <= {MAX_GROUPS}, "
                              f"got {shape['num_layers'] * shape['num_heads']}")


def check_matrix(name, x, dim, what):
    """x as float32 (c, dim), c > 0, finite; errors name the field."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise InvalidArgument(f"{name}: expected a non-empty (n, {dim}) array, got shape {x.shape}")
    if x.shape[1] != dim:
        raise InvalidArgument(f"{name}: expected {what} {dim}, got {x.shape[1]}")
    if not np.isfinite(x).all():
        raise InvalidArgument(f"{name}: contains NaN or Inf")
    return x


def unit_keys(keys, dim):
    keys = check_matrix("keys", keys, dim, "key dim")
    norms = np.linalg.norm(keys, axis=1, keepdims=True)
    if (norms == 0).any():
        raise InvalidArgument(f"keys: row {int(np.argmin(norms))} is zero; keys are stored as unit vectors")
    return keys / norms


def check_pair_ids(ids, field="ids"):
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    if len(ids) == 0:
        raise InvalidArgument(f"{field}: no pair ids given")
    if (ids < 0).any():
        raise InvalidArgument(f"{field}: pair id {int(ids[ids < 0][0])} is negative")
    if len(np.unique(ids)) != len(ids):
        raise InvalidArgument(f"{field}: ids repeat")
    return ids


def check_policy(policy: BetaPolicy, field="policy"):
    for name in ("beta0", "beta1", "alpha"):
        if not np.isfinite(getattr(policy, name)):
            raise InvalidArgument(f"{field}.{name}: must be finite, got {getattr(policy, name)}")
    return policy


def resolve_beta(beta, policy: BetaPolicy, n) -> float:
    """β given, or the policy's β1·n^α + β0 for the n pairs read; must be finite and > 0."""
    field = "beta"
    if beta is None:
        field = "policy"
        try:
            beta = check_policy(policy).beta(n)
        except (ZeroDivisionError, OverflowError):
            beta = float("inf")
    if not np.isfinite(beta) or beta <= 0:
        raise InvalidArgument(f"{field}: β must be finite and > 0, got {beta}" + (f" for n = {n}" if field == "policy" else ""))
    return float(beta)


def check_lsh(params: LshParams) -> LshParams:
    if not 1 <= params.bits <= 16:
        raise InvalidArgument(f"lsh.bits: K must be in [1, 16], got {params.bits}")
    if params.tables and params.tables < 2:
        raise InvalidArgument(f"lsh.tables: L must be >= 2, got {params.tables}")
    if not 0 <= params.budget <= 1 or not np.isfinite(params.budget):
        raise InvalidArgument(f"lsh.budget: must be a fraction in (0, 1], got {params.budget}")
    return params


def hashed_cosines(keys, sample=64, seed=0):
    """cos(q, k − c) for a sample of keys standing in for queries (what choose_tables needs)."""
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(keys), min(sample, len(keys)), replace=False)
    shifted = keys - keys.mean(axis=0)
    norms = np.maximum(np.linalg.norm(shifted, axis=1), 1e-12)
    q = keys[pick]
    return (q @ shifted.T) / (np.linalg.norm(q, axis=1, keepdims=True) * norms)  # (sample, n)


# ---------------------------------------------------------------- files

def load_pair_arrays(pairs_file=None, keys_file=None, values_file=None) -> dict:
    """Pairs from a .npz (keys, values, optional labels and ids) or from two .npy files."""
    if (pairs_file is None) == (keys_file is None or values_file is None):
        raise InvalidArgument("pairs: give a .npz of keys and values, or both a keys and a values .npy")
    try:
        if pairs_file is not None:
            with np.load(pairs_file, allow_pickle=False) as f:
                arrays = {name: f[name] for name in f.files}
        else:
            arrays = {"keys": np.load(keys_file, allow_pickle=False), "values": np.load(values_file, allow_pickle=False)}
    except (OSError, ValueError) as e:
        raise InvalidArgument(f"pairs: cannot read {pairs_file or keys_file} ({e})")
    if "keys" not in arrays or "values" not in arrays:
        raise InvalidArgument(f"pairs: {pairs_file} holds {', '.join(arrays) or 'nothing'}; it needs keys and values")
    if "labels" in arrays:
        arrays["labels"] = [str(x) for x in arrays["labels"]]
    return arrays


def save_pair_arrays(path, pairs: dict):
    """The export: ids, unit keys, values and labels of a group as one .npz (what load reads back)."""
    np.savez(path, ids=pairs["ids"], keys=pairs["keys"], values=pairs["values"], labels=np.array(pairs["labels"], dtype=str))


@dataclass
class MosaicLimits:
    """The most work one QueryMosaic may ask for (ServerConfig.mosaic_limits); a server hands them
    to every query (issue 19: EXACT over 10^5 queries grew the server by 4.7 GB, LSH tables=10000
    past 10 GB, TOPK k=2^31-1 asked for 48 GiB). Beyond: RESOURCE_EXHAUSTED naming the field."""

    max_queries: int = 16384  # query vectors per request
    # queries x pairs scored (EXACT and TOPK score every pair): the (m, n) float32 score matrix
    # and its exp are ~2 x 4 bytes each, so 2^27 keeps one request near 1 GiB
    max_scored: int = 1 << 27
    max_k: int = 1024  # TOPK: pairs averaged per query
    max_lsh_tables: int = 1024  # LSH: L, given or chosen from a budget (the default is 150; each costs 6 B a pair)


def check_query_work(limits: MosaicLimits | None, queries: int, pairs: int, mode: str, k: int, lsh: LshParams):
    """Refuses a query above ``limits`` (None: a local store, no limits)."""
    if limits is None:
        return
    if queries > limits.max_queries:
        raise ResourceExhausted(f"queries: {queries} queries exceed the limit of {limits.max_queries} per request")
    if mode != "lsh" and queries * pairs > limits.max_scored:
        raise ResourceExhausted(f"queries: {queries} queries x {pairs} pairs exceed the limit of {limits.max_scored} "
                                f"scored per request; send fewer queries or use mode LSH")
    if mode == "topk" and k > limits.max_k:
        raise ResourceExhausted(f"k: {k} exceeds the limit of {limits.max_k} pairs per query")
    if mode == "lsh" and lsh.tables > limits.max_lsh_tables:
        raise ResourceExhausted(f"lsh.tables: {lsh.tables} exceeds the limit of {limits.max_lsh_tables} tables")
