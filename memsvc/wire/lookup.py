"""The Lookup reply codec: LookupResponse wire bytes written and read by hand around the rows."""
from dataclasses import dataclass

import numpy as np

from memsvc.core.dtypes import storage_dtype
from memsvc.core.errors import InvalidArgument
from memsvc.core.values import LookupResult
from memsvc.v1 import knowledge_pb2 as pb

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
    """LookupResponse wire bytes with ONE `rows` field (dtype, shape, data: protobuf.js keeps only
    the last of repeated message fields instead of merging them), rows copied once: the small
    fields go through protobuf, the rows field's bytes are written by hand around the row memory.
    With ``rows_in_buffer`` the rows went to the request's shared buffer and only their shape travels."""
    head = pb.LookupResponse(unique_token_ids=result.unique_ids.tolist(), version=result.version,
                             inverse=[] if result.ordered else result.inverse.tolist(),
                             rows_in_buffer=rows_in_buffer, rows_in_request_order=result.ordered)
    rows_served = int(np.prod(result.rows.shape[:-1]))
    if rows_in_buffer:
        head.rows.dtype = result.dtype
        head.rows.shape[:] = result.rows.shape
        data = head.SerializeToString()
        return LookupWire(data, rows_served, len(data) + result.rows.nbytes)
    data = memoryview(np.ascontiguousarray(result.rows)).cast("B")
    tensor_head = pb.Tensor(dtype=result.dtype, shape=result.rows.shape).SerializeToString() \
        + _varint(3 << 3 | LEN) + _varint(data.nbytes)  # Tensor.data = 3, after dtype and shape
    rows_key = _varint(1 << 3 | LEN) + _varint(len(tensor_head) + data.nbytes)  # LookupResponse.rows = 1
    wire = b"".join([rows_key, tensor_head, data, head.SerializeToString()])
    return LookupWire(wire, rows_served, len(wire))


def lookup_from_wire(wire: bytes, buffer=None) -> LookupResult:
    """LookupResponse wire bytes -> LookupResult; its rows are a read-only view of ``wire``, or of
    ``buffer`` (the request's reply buffer) when the reply says rows_in_buffer.
    Protobuf parses every field but rows.data, which is sliced out of the wire; any field order and
    any number of `rows` fields are read (protobuf merges them; the last rows.data wins)."""
    view = memoryview(wire)
    msg, data, rest = pb.LookupResponse(), b"", []
    for field, start, end, span in _wire_fields(view, 0, len(view)):
        if field != 1:  # not rows
            if rest and rest[-1][1] == start:
                rest[-1] = (rest[-1][0], end)  # adjacent fields parse in one slice
            else:
                rest.append((start, end))
            continue
        for inner, inner_start, inner_end, inner_span in _wire_fields(view, *span):
            if inner == 3:
                data = view[slice(*inner_span)]
            else:
                msg.rows.MergeFromString(view[inner_start:inner_end])
    for start, end in rest:
        msg.MergeFromString(view[start:end])
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
