"""Between protobuf messages and memsvc's Python values, both directions, in one place.

The servicer decodes requests and encodes replies with these; the client does the reverse.
"""
import itertools
import json
import math

import numpy as np

from memsvc.core.dtypes import STORAGE, from_bytes, storage_dtype
from memsvc.core.errors import InvalidArgument
from memsvc.core.values import CommitInfo, CommitResult, EditRequest, RowChange, RowOp, TableExport, TableInfo
from memsvc.v1 import knowledge_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["KnowledgeService"].full_name
OP_NAMES = {pb.RowOp.SET: "set", pb.RowOp.COPY: "copy", pb.RowOp.BLEND: "blend",
            pb.RowOp.SCALE: "scale", pb.RowOp.RESET: "reset"}
OP_CODES = {name: code for code, name in OP_NAMES.items()}


# ---------------------------------------------------------------- tensors

def tensor_to_pb(array: np.ndarray, dtype: str = "float32", out: pb.Tensor | None = None) -> pb.Tensor:
    """An array already in ``dtype``'s storage form -> Tensor (raw little-endian bytes). ``out``
    fills a parent's Tensor field in place: handing a built Tensor to the parent's constructor
    copies the payload again, slowly (issue 2: 5x the gather's cost for a 4096-token lookup)."""
    out = pb.Tensor() if out is None else out
    out.dtype, out.data = dtype, np.ascontiguousarray(array).tobytes()
    out.shape[:] = array.shape
    return out


def tensor_from_pb(t: pb.Tensor, field: str) -> np.ndarray:
    """Tensor -> float32 array, its dtype and byte count validated; errors name ``field``. NaN and
    Inf are checked once, by the store or index that takes the values."""
    if t.dtype not in STORAGE:
        raise InvalidArgument(f"{field}.dtype: {t.dtype!r} is not one of {', '.join(STORAGE)}")
    if min(t.shape, default=0) < 0:
        raise InvalidArgument(f"{field}.shape: negative size in {list(t.shape)}")
    return from_bytes(t.data, t.dtype, t.shape, field)


def stored_tensor(t: pb.Tensor) -> np.ndarray:
    """Tensor -> its storage array without conversion (zero-copy view of the bytes); besides the
    table dtypes, "int64" (the ids of search hits)."""
    dtype = np.dtype("<i8") if t.dtype == "int64" else storage_dtype(t.dtype)
    return np.frombuffer(t.data, dtype=dtype).reshape(tuple(t.shape))


def version_from_pb(ref: pb.VersionRef) -> dict:
    """A VersionRef as the store's version/tag keywords (0 and "" mean unset: the head)."""
    return dict(version=ref.version or None, tag=ref.tag or None)


# ---------------------------------------------------------------- row operations

def row_op_to_pb(op: RowOp) -> pb.RowOp:
    msg = pb.RowOp(op=OP_CODES.get(op.op, pb.RowOp.OP_UNSPECIFIED), layers=[int(l) for l in op.layers or []],
                   alpha=op.alpha, token=op.token or "", source_token=op.source_token or "")
    if op.token_id is not None:
        msg.token_id = int(op.token_id)
    if op.source_token_id is not None:
        msg.source_token_id = int(op.source_token_id)
    if op.vector is not None:
        msg.vector.CopyFrom(tensor_to_pb(np.asarray(op.vector, dtype=np.float32)))
    return msg


def row_op_from_pb(msg: pb.RowOp, field: str) -> RowOp:
    if msg.op not in OP_NAMES:
        raise InvalidArgument(f"{field}.op: unknown operation {msg.op} (expected one of {', '.join(OP_CODES)})")
    return RowOp(op=OP_NAMES[msg.op],
                 token_id=msg.token_id if msg.HasField("token_id") else None, token=msg.token or None,
                 layers=list(msg.layers),
                 # NaN and Inf: the store's planner checks the vector where it enters the store (once)
                 vector=tensor_from_pb(msg.vector, f"{field}.vector") if msg.HasField("vector") else None,
                 source_token_id=msg.source_token_id if msg.HasField("source_token_id") else None,
                 source_token=msg.source_token or None,
                 alpha=msg.alpha)


# ---------------------------------------------------------------- results

def table_to_pb(t: TableInfo) -> pb.TableInfo:
    return pb.TableInfo(**t.__dict__)


def table_from_pb(msg: pb.TableInfo) -> TableInfo:
    return TableInfo(name=msg.name, kind=msg.kind, dtype=msg.dtype, vocab_size=msg.vocab_size,
                     num_layers=msg.num_layers, dim=msg.dim, created_version=msg.created_version,
                     base_version=msg.base_version, version=msg.version, model_layers=list(msg.model_layers),
                     tokenizer=msg.tokenizer)


def commit_result_to_pb(r: CommitResult) -> pb.CommitResult:
    return pb.CommitResult(version=r.version, rows_changed=r.rows_changed)


def commit_result_from_pb(msg: pb.CommitResult) -> CommitResult:
    return CommitResult(version=msg.version, rows_changed=msg.rows_changed)


def edit_request_to_pb(r: EditRequest | None) -> pb.EditInfo:
    return pb.EditInfo(**(r or EditRequest()).__dict__)


def edit_request_from_pb(msg: pb.EditInfo) -> EditRequest:
    return EditRequest(prompt=msg.prompt, subject=msg.subject, target_new=msg.target_new, ground_truth=msg.ground_truth)


def commit_info_to_pb(c: CommitInfo) -> pb.CommitInfo:
    return pb.CommitInfo(version=c.version, time=c.time, author=c.author, message=c.message, kind=c.kind,
                         tables=c.tables, rows_changed=c.rows_changed, request=edit_request_to_pb(c.request),
                         metrics_json=json.dumps(c.metrics), tags=c.tags)


def commit_info_from_pb(msg: pb.CommitInfo) -> CommitInfo:
    return CommitInfo(version=msg.version, time=msg.time, author=msg.author, message=msg.message, kind=msg.kind,
                      tables=list(msg.tables), rows_changed=msg.rows_changed,
                      request=edit_request_from_pb(msg.request), metrics=json.loads(msg.metrics_json or "{}"),
                      tags=list(msg.tags))


def row_change_to_pb(c: RowChange) -> pb.RowChange:
    return pb.RowChange(**c.__dict__)


def row_change_from_pb(msg: pb.RowChange) -> RowChange:
    return RowChange(table=msg.table, token_id=msg.token_id, token=msg.token, layer=msg.layer, l2=msg.l2, cosine=msg.cosine)


def metrics_from_json(text: str, field: str = "metrics_json") -> dict:
    if not text:
        return {}
    try:
        metrics = json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidArgument(f"{field}: not JSON ({e})")
    if not isinstance(metrics, dict):
        raise InvalidArgument(f"{field}: expected a JSON object")
    return metrics


# ---------------------------------------------------------------- whole tables (ImportTable, ExportTable)

def import_header_from_pb(h: pb.ImportTableHeader) -> dict:
    """ImportTableHeader -> KnowledgeBase.import_chunks keywords (vocab: the words, or the file's bytes)."""
    if h.dtype not in STORAGE:
        raise InvalidArgument(f"header.dtype: {h.dtype!r} is not one of {', '.join(STORAGE)}")
    for name in ("vocab_size", "num_layers", "dim"):
        if getattr(h, name) < 1:
            raise InvalidArgument(f"header.{name}: must be at least 1, got {getattr(h, name)}")
    if h.words and h.vocab_file:
        raise InvalidArgument("header.words: give words or vocab_file, not both")
    return dict(table=h.table, dtype=h.dtype, shape=(h.vocab_size, h.num_layers, h.dim), author=h.author,
                message=h.message, vocab=list(h.words) if h.words else bytes(h.vocab_file),
                model_layers=list(h.model_layers), tokenizer=(h.tokenizer_kind, h.tokenizer) if h.tokenizer_kind else None)


def rows_from_pb(t: pb.Tensor, dtype: str, layers: int, dim: int, field: str) -> np.ndarray:
    """A Tensor of bank rows (n >= 1, layers, dim) in the table's dtype -> its storage array (a
    view of the bytes, no conversion); errors name ``field``."""
    if t.dtype != dtype:
        raise InvalidArgument(f"{field}.dtype: {t.dtype!r}, but the table's rows are {dtype}")
    shape = tuple(t.shape)
    if len(shape) != 3 or shape[0] < 1 or shape[1:] != (layers, dim):
        raise InvalidArgument(f"{field}.shape: expected (n >= 1, {layers}, {dim}), got {list(shape)}")
    if len(t.data) != math.prod(shape) * storage_dtype(dtype).itemsize:
        raise InvalidArgument(f"{field}.data: {len(t.data)} bytes do not hold {dtype} of shape {list(shape)}")
    return np.frombuffer(t.data, dtype=storage_dtype(dtype)).reshape(shape)


def export_to_pb(export: TableExport, max_bytes: int):
    """A TableExport as ExportTableResponse messages: the table, then its ids and words, then its rows
    (the export's chunks), each message holding about ``max_bytes`` of ids and words (or one chunk)."""
    yield pb.ExportTableResponse(table=table_to_pb(export.info))
    ends = np.cumsum([len(w.encode("utf-8")) + 12 for w in export.words])  # a word, its id, their tags
    start = 0
    while start < len(ends):
        stop = max(start + 1, int(np.searchsorted(ends, (ends[start - 1] if start else 0) + max_bytes, side="right")))
        yield pb.ExportTableResponse(token_ids=export.token_ids[start:stop].tolist(), words=export.words[start:stop])
        start = stop
    for rows in export.chunks:
        reply = pb.ExportTableResponse()
        tensor_to_pb(rows, export.info.dtype, out=reply.rows)
        yield reply


def export_from_pb(replies) -> TableExport:
    """ExportTableResponse messages -> a TableExport whose chunks read the rest of the stream."""
    info = table_from_pb(next(replies).table)
    ids, words, first = [], [], None
    for reply in replies:
        if reply.HasField("rows"):
            first = reply
            break
        ids += reply.token_ids
        words += reply.words
    rest = itertools.chain([first] if first else [], replies)
    return TableExport(info, np.array(ids, dtype=np.int64), words, (stored_tensor(reply.rows) for reply in rest))
