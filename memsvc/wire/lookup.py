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
