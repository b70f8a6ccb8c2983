"""Entity edits: make the positions of a source entity use a target entity's rows.

STEM reads one row per (layer, token id), so "Spain" -> "Germany" is an edit of the rows of
Spain's tokens (the STEM paper's interpretable edit): the model then answers "Berlin" for the
capital of Spain. Entities have token counts n (source) and m (target); a mode says which target
tokens each source token takes. Source token i gets the mean of its assigned target tokens' rows:

    one_to_one  n == m required; i takes target i
    average     every i takes the mean of all m target rows
    copy        i takes target i mod m (the target repeated cyclically, truncated)
    right_pad   the target is aligned at the start, padded or truncated at the right:
                i takes target i for i < m; source tokens i >= m keep their own rows
    left_pad    the target is aligned at the end, padded or truncated at the left:
                i takes target i - (n - m) when that is >= 0; earlier source tokens keep theirs
    auto        one_to_one when n == m, else average

"Keep their own rows" means no write: padding never invents rows. A token that occurs twice in
the source takes the assignment of its last occurrence that takes any (a token has one row per
layer).

The edit comes out as ``RowOp``s (copy where one target token is taken, set with the mean
otherwise), so the same ops can be previewed, committed, or sent as a per-request override and
``plan_row_ops`` gives identical rows in all three.
"""
from dataclasses import dataclass, field

import numpy as np

from editing.rows import check_layers, plan_row_ops
from memsvc.core.errors import InvalidArgument
from memsvc.core.values import RowOp

MODES = ("auto", "one_to_one", "average", "copy", "left_pad", "right_pad")


@dataclass
class EntityEdit:
    """Source entity -> target entity, as token ids."""

    source: list  # token ids of the source entity, in order
    target: list  # token ids of the target entity, in order
    mode: str = "auto"
    layers: list = field(default_factory=list)  # layer positions; empty = all layers


def entity_edit_from_text(vocab, source, target, mode="auto", layers=()):
    """Resolve entity texts through a ``Vocabulary``; errors name ``source`` / ``target``."""
    return EntityEdit(
        source=vocab.encode_entity(source, field="source"),
        target=vocab.encode_entity(target, field="target"),
        mode=mode,
        layers=list(layers),
    )


def assign_targets(n, m, mode):
    """For each of n source positions, the target positions (of m) whose mean it takes.

    An empty list means the source token keeps its own rows.
    """
    if mode not in MODES:
        raise InvalidArgument(f"mode: unknown entity mode {mode!r} (expected one of {', '.join(MODES)})")
    if n == 0 or m == 0:
        raise InvalidArgument(f"{'source' if n == 0 else 'target'}: empty entity")
    if mode == "auto":
        mode = "one_to_one" if n == m else "average"
    if mode == "one_to_one":
        if n != m:
            raise InvalidArgument(
                f"mode: one_to_one needs entities of the same length (source has {n} tokens, target {m}); "
                "use average, copy, left_pad or right_pad"
            )
        return [[i] for i in range(n)]
    if mode == "average":
        return [list(range(m)) for _ in range(n)]
    if mode == "copy":
        return [[i % m] for i in range(n)]
    shift = 0 if mode == "right_pad" else n - m  # source position i takes target i - shift
    return [[i - shift] if 0 <= i - shift < m else [] for i in range(n)]


def entity_row_ops(edit, read_rows=None):
    """The RowOps of an entity edit.

    read_rows(token_ids) -> (n, num_layers, dim) current rows; needed when a source token takes
    a mean of several target tokens, or when source and target share tokens (then every op is a
    ``set`` with target rows read once, before any write, so one op cannot feed another).
    Without read_rows only single-token assignments work (``copy`` ops; fine for a client that
    does not hold the table).
    """
    positions = assign_targets(len(edit.source), len(edit.target), edit.mode)
    assigned = {}  # source token id -> target token ids; the last occurrence wins
    for token_id, targets in zip(edit.source, positions):
        if targets:
            assigned[int(token_id)] = [int(edit.target[j]) for j in targets]
    # A token mapped onto itself alone is already right: no op.
    assigned = {s: ts for s, ts in assigned.items() if ts != [s]}
    read = {t for ts in assigned.values() for t in ts}
    if all(len(ts) == 1 for ts in assigned.values()) and not read & assigned.keys():
        return [RowOp("copy", s, layers=list(edit.layers), source_token_id=ts[0]) for s, ts in assigned.items()]
    if read_rows is None:
        raise InvalidArgument(f"read_rows: mode {edit.mode} needs the table's rows (to average or snapshot targets)")
    ids = np.array(sorted(read), dtype=np.int64)
    rows = np.asarray(read_rows(ids), dtype=np.float32)  # (len(ids), num_layers, dim)
    rows = rows[:, check_layers(edit.layers, rows.shape[1], "layers")]  # (len(ids), len(layers), dim)
    row_of = {int(t): i for i, t in enumerate(ids)}
    return [
        RowOp("set", s, layers=list(edit.layers), vector=rows[[row_of[t] for t in ts]].mean(axis=0))
        for s, ts in assigned.items()
    ]


def plan_entity_edit(edit, read_rows, num_layers, dim):
    """The RowWrites of an entity edit against a table read through read_rows."""
    ops = entity_row_ops(edit, read_rows)
    if not ops:
        raise InvalidArgument("target: the edit changes nothing (source and target are the same tokens)")
    # Entity ops never reset, so the base reader is never called; the current reader stands in.
    return plan_row_ops(ops, read_rows, read_rows, num_layers, dim)


def parse_override(text):
    """'Spain=Germany' -> ('Spain', 'Germany'): a per-request entity override."""
    if not isinstance(text, str) or text.count("=") != 1:
        raise InvalidArgument(f"override: expected SOURCE=TARGET with one '=', got {text!r}")
    source, target = (part.strip() for part in text.split("="))
    if not source or not target:
        raise InvalidArgument(f"override: {'source' if not source else 'target'} is empty in {text!r}")
    return source, target


def parse_vector_arg(value, dim=None):
    """The CLI's --vector: comma-separated numbers or a path to a .npy file.

    Returns float32 of shape (d,) (or (layers, d) from a .npy); ``dim`` checks the last axis.
    """
    if value.endswith(".npy"):
        try:
            vector = np.load(value, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise InvalidArgument(f"--vector: cannot read {value!r}: {e}") from e
        if vector.dtype.kind not in "fiu" or vector.ndim not in (1, 2):
            raise InvalidArgument(f"--vector: {value!r} must hold a 1-D or 2-D array of numbers")
    else:
        if not value.strip():
            raise InvalidArgument("--vector: empty")
        parts = [p.strip() for p in value.split(",")]
        try:
            vector = np.array([float(p) for p in parts])
        except ValueError:
            bad = next(p for p in parts if not _is_float(p))
            raise InvalidArgument(f"--vector: {bad!r} is not a number") from None
    with np.errstate(over="ignore"):  # a value beyond float32 becomes inf, refused just below
        vector = vector.astype(np.float32)
    if vector.size == 0:
        raise InvalidArgument("--vector: empty")
    if not np.isfinite(vector).all():
        raise InvalidArgument("--vector: contains NaN or Inf")
    if dim is not None and vector.shape[-1] != dim:
        raise InvalidArgument(f"--vector: expected {dim} values, got {vector.shape[-1]}")
    return vector


def _is_float(text):
    try:
        float(text)
        return True
    except ValueError:
        return False
