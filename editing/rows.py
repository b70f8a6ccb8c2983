"""Row operations on a STEM bank: the exact row writes an edit implies.

An edit is planned against a reader of the table's current rows, so it can be previewed
(dry run), committed by the store, or sent as a per-request override: all three use the same
``RowWrites``.
"""
import numpy as np

from memsvc.core.errors import InvalidArgument, OutOfRange
from memsvc.core.values import OPS, RowWrites


def plan_row_ops(ops, read_rows, read_base_rows, num_layers, dim, field="ops"):
    """Turn RowOps into RowWrites.

    read_rows(token_ids) -> (n, num_layers, dim) float32 current rows;
    read_base_rows(token_ids) -> the same at the base (for reset).
    Later ops in the batch see the result of earlier ones (a batch is applied in order).
    ``field`` names the request field the ops came in (an Edit's "ops", a Lookup's "overrides"),
    so that every error names where the caller put the bad value.
    """
    if not ops:
        raise InvalidArgument(f"{field}: the batch is empty")
    staged = {}  # token_id -> (num_layers, dim) rows as the batch has made them so far

    def current(token_id):
        if token_id not in staged:
            staged[token_id] = read_rows(np.array([token_id], dtype=np.int64))[0].astype(np.float32)
        return staged[token_id]

    touched = {}
    for i, op in enumerate(ops):
        if op.op not in OPS:
            raise InvalidArgument(f"{field}[{i}].op: unknown operation {op.op!r} (expected one of {', '.join(OPS)})")
        layers = check_layers(op.layers, num_layers, f"{field}[{i}].layers")
        rows = current(op.token_id).copy()
        if op.op == "reset":
            new = read_base_rows(np.array([op.token_id], dtype=np.int64))[0][layers]
        elif op.op == "scale":
            new = np.float32(_check_alpha(op.alpha, f"{field}[{i}].alpha")) * rows[layers]
        else:
            if op.op == "copy" or (op.op == "blend" and op.vector is None):
                if op.source_token_id is None:
                    raise InvalidArgument(f"{field}[{i}].source_token: {op.op} needs a source token")
                source = current(op.source_token_id)[layers]
            else:
                source = _check_vector(op.vector, len(layers), dim, f"{field}[{i}].vector")
            if op.op == "blend":
                a = np.float32(_check_alpha(op.alpha, f"{field}[{i}].alpha"))
                new = (1 - a) * rows[layers] + a * source
            else:
                new = source
        rows[layers] = new
        staged[op.token_id] = rows
        for layer in layers:
            touched[(op.token_id, int(layer))] = True
    keys = list(touched)
    return RowWrites(
        token_ids=np.array([t for t, _ in keys], dtype=np.int64),
        layers=np.array([l for _, l in keys], dtype=np.int64),
        vectors=np.stack([staged[t][l] for t, l in keys]).astype(np.float32),
    )


def check_layers(layers, num_layers, field_name):
    """The layer indexes to touch (empty or None: every layer). A layer outside the table is
    OutOfRange, as Lookup.layers answers; a repeated one is InvalidArgument."""
    if layers is None or len(layers) == 0:
        return np.arange(num_layers)
    arr = np.asarray(layers, dtype=np.int64)
    bad = arr[(arr < 0) | (arr >= num_layers)]
    if len(bad):
        raise OutOfRange(f"{field_name}: layer {int(bad[0])} out of range [0, {num_layers})")
    if len(np.unique(arr)) != len(arr):
        raise InvalidArgument(f"{field_name}: layers repeat")
    return arr


def _check_alpha(alpha, field_name):
    if not np.isfinite(alpha):
        raise InvalidArgument(f"{field_name}: must be finite")
    return alpha


def _check_vector(vector, n_layers, dim, field_name):
    v = np.asarray(vector, dtype=np.float32)
    if v.ndim == 1:
        v = np.broadcast_to(v, (n_layers, v.shape[0]))
    if v.ndim != 2 or v.shape != (n_layers, dim):
        raise InvalidArgument(
            f"{field_name}: expected {dim} values (or {n_layers}x{dim}), got shape {tuple(np.shape(vector))}"
        )
    if not np.isfinite(v).all():
        raise InvalidArgument(f"{field_name}: contains NaN or Inf")
    return v
