"""What enters a mosaic store, checked once where it enters: pair matrices, ids, β policies and
LSH knobs; and the pair files (.npz, or two .npy) that the CLI imports and exports."""
import numpy as np

from memsvc.core.errors import InvalidArgument
from memsvc.core.mosaic import BetaPolicy, LshParams


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
