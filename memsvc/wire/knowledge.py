"""Between protobuf messages and memsvc's Python values, both directions, in one place.

The servicer decodes requests and encodes replies with these; the client does the reverse.
"""
import json
from dataclasses import dataclass

import numpy as np

from editing.rows import RowOp
from memsvc.core.dtypes import STORAGE, from_bytes, storage_dtype
from memsvc.core.errors import InvalidArgument
from memsvc.core.values import (CommitInfo, CommitResult, EditRequest, LookupResult, RowChange,
                          TableInfo)
from memsvc.v1 import knowledge_pb2 as pb

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


def tensor_from_pb(t: pb.Tensor, field: str, check_finite: bool = True) -> np.ndarray:
    """Tensor -> float32 array, validated (dtype, byte count, NaN/Inf unless the caller checks
    them itself: ``check_finite=False``); errors name ``field``."""
    if t.dtype not in STORAGE:
        raise InvalidArgument(f"{field}.dtype: {t.dtype!r} is not one of {', '.join(STORAGE)}")
    if min(t.shape, default=0) < 0:
        raise InvalidArgument(f"{field}.shape: negative size in {list(t.shape)}")
    values = from_bytes(t.data, t.dtype, t.shape, field)
    if check_finite and not np.isfinite(values).all():
        raise InvalidArgument(f"{field}: contains NaN or Inf")
    return values


def stored_tensor(t: pb.Tensor) -> np.ndarray:
    """Tensor -> its storage array without conversion (zero-copy view of the bytes); besides the
    table dtypes, "int64" (the ids of search hits)."""
    dtype = np.dtype("<i8") if t.dtype == "int64" else storage_dtype(t.dtype)
    return np.frombuffer(t.data, dtype=dtype).reshape(tuple(t.shape))


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
                 vector=tensor_from_pb(msg.vector, f"{field}.vector") if msg.HasField("vector") else None,
                 source_token_id=msg.source_token_id if msg.HasField("source_token_id") else None,
                 source_token=msg.source_token or None,
                 alpha=msg.alpha)


# ---------------------------------------------------------------- results

# A lookup reply carries megabytes of rows. upb's SerializeToString, FromString and `.data` each
# copy them (6x the time of writing the wire bytes by hand, 50x the time of reading them so, at
# 4096 tokens), so the hot path writes and reads LookupResponse wire bytes itself. They stay an
# ordinary LookupResponse that any protobuf parser reads, in both directions.

LEN = 2  # protobuf wire type of length-delimited fields


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _read_varint(buf, pos: int) -> tuple:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def _wire_fields(buf, start: int, end: int):
    """(field number, start, end, (value start, value end) of a length-delimited field or None)
    for each field of the message encoded in buf[start:end]."""
    pos = start
    while pos < end:
        key, value_pos = _read_varint(buf, pos)
        wire_type, span = key & 7, None
        if wire_type == 0:
            _, value_end = _read_varint(buf, value_pos)
        elif wire_type == LEN:
            n, value_pos = _read_varint(buf, value_pos)
            value_end, span = value_pos + n, (value_pos, value_pos + n)
        elif wire_type in (1, 5):  # fixed64, fixed32
            value_end = value_pos + (8 if wire_type == 1 else 4)
        else:
            raise InvalidArgument(f"reply: unsupported protobuf wire type {wire_type}")
        yield key >> 3, pos, value_end, span
        pos = value_end


@dataclass
class LookupWire:
    """A Lookup reply as wire bytes, and how many rows and bytes it serves, reply buffer included
    (metrics count without parsing)."""

    data: bytes
    rows_served: int
    bytes_served: int


def lookup_to_wire(result: LookupResult, rows_in_buffer: bool = False) -> LookupWire:
    """LookupResponse wire bytes, rows copied once: the small fields through protobuf, then the
    rows as a second `rows` field holding only `data` (a parser merges the two `rows`). With
    ``rows_in_buffer`` the rows went to the request's shared buffer and only their shape travels."""
    head = pb.LookupResponse(unique_token_ids=result.unique_ids.tolist(), version=result.version,
                             inverse=[] if result.ordered else result.inverse.tolist(),
                             rows_in_buffer=rows_in_buffer, rows_in_request_order=result.ordered)
    head.rows.dtype = result.dtype
    head.rows.shape[:] = result.rows.shape
    rows_served = int(np.prod(result.rows.shape[:-1]))
    if rows_in_buffer:
        data = head.SerializeToString()
        return LookupWire(data, rows_served, len(data) + result.rows.nbytes)
    data = memoryview(np.ascontiguousarray(result.rows)).cast("B")
    data_key = _varint(3 << 3 | LEN) + _varint(data.nbytes)  # Tensor.data = 3
    wire = b"".join([head.SerializeToString(), _varint(1 << 3 | LEN), _varint(len(data_key) + data.nbytes),
                     data_key, data])  # LookupResponse.rows = 1
    return LookupWire(wire, rows_served, len(wire))


def lookup_from_wire(wire: bytes, buffer=None) -> LookupResult:
    """LookupResponse wire bytes -> LookupResult; its rows are a read-only view of ``wire``, or of
    ``buffer`` (the request's reply buffer) when the reply says rows_in_buffer.
    Protobuf parses every field but rows.data, which is sliced out of the wire: in one cut when
    it comes alone in the last `rows` field (as lookup_to_wire writes it), else field by field."""
    view = memoryview(wire)
    fields = list(_wire_fields(view, 0, len(view)))
    last = [(inner, span) for inner, _, _, span in _wire_fields(view, *fields[-1][3])] \
        if fields and fields[-1][0] == 1 else []
    if len(last) == 1 and last[0][0] == 3:
        rest, data = view[:fields[-1][1]], view[slice(*last[0][1])]
    else:
        rest, data = _without_rows_data(view, fields)
    msg = pb.LookupResponse.FromString(rest)
    shape, count = tuple(msg.rows.shape), -1
    if msg.rows_in_buffer:
        if buffer is None:
            raise InvalidArgument("reply: the rows are in a shared buffer this call did not give")
        data, count = buffer, int(np.prod(shape))
    rows = np.frombuffer(data, dtype=storage_dtype(msg.rows.dtype), count=count).reshape(shape)
    rows.flags.writeable = False
    ids = np.fromiter(msg.unique_token_ids, np.int64, len(msg.unique_token_ids))
    inverse = np.arange(len(ids)) if msg.rows_in_request_order else np.fromiter(msg.inverse, np.int64, len(msg.inverse))
    return LookupResult(rows=rows, unique_ids=ids, inverse=inverse, version=msg.version, dtype=msg.rows.dtype,
                        ordered=msg.rows_in_request_order)


def _without_rows_data(view, fields) -> tuple:
    """(the message's bytes without rows.data, the last rows.data) for any field order."""
    rest, data = [], b""
    for field, start, end, span in fields:
        if field != 1:  # not rows
            rest.append(view[start:end])
            continue
        for inner, s, e, inner_span in _wire_fields(view, *span):
            if inner == 3:
                data = view[inner_span[0]:inner_span[1]]  # bytes: the last occurrence wins
            else:
                rest += [_varint(1 << 3 | LEN) + _varint(e - s), view[s:e]]
    return b"".join(rest), data


def table_to_pb(t: TableInfo) -> pb.TableInfo:
    return pb.TableInfo(**t.__dict__)


def table_from_pb(msg: pb.TableInfo) -> TableInfo:
    return TableInfo(name=msg.name, kind=msg.kind, dtype=msg.dtype, vocab_size=msg.vocab_size,
                     num_layers=msg.num_layers, dim=msg.dim, created_version=msg.created_version,
                     base_version=msg.base_version, version=msg.version)


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
