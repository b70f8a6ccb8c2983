"""replication.proto <-> the pieces of memsvc.store.replication: what the primary's servicer sends
and what a replica's follower reads back, in one place."""
from memsvc.core.errors import FailedPrecondition, InvalidArgument
from memsvc.v1 import knowledge_pb2 as pb
from memsvc.v1 import replication_pb2 as rpb

SERVICE = rpb.DESCRIPTOR.services_by_name["ReplicationService"].full_name


def value_to_pb(x) -> rpb.CatalogValue:
    if x is None:
        return rpb.CatalogValue(null=True)
    if isinstance(x, int):
        return rpb.CatalogValue(integer=x)
    if isinstance(x, float):
        return rpb.CatalogValue(real=x)
    if isinstance(x, str):
        return rpb.CatalogValue(text=x)
    return rpb.CatalogValue(blob=bytes(x))


def value_from_pb(v: rpb.CatalogValue):
    kind = v.WhichOneof("value")
    return None if kind in (None, "null") else getattr(v, kind)


def piece_to_pb(piece, head=0, head_time=0.0, tags=None) -> rpb.ReplicaMessage:
    """A piece ("file", path, size, offset, data, crc32) / ("rows", table, columns, rows) /
    ("commit", version) as a ReplicaMessage carrying the primary's head (and tags, when given)."""
    msg = rpb.ReplicaMessage(head_version=head, head_time=head_time, tags=tags or {})
    kind = piece[0]
    if kind == "file":
        _, path, size, offset, data, crc = piece
        msg.file.path, msg.file.size, msg.file.offset, msg.file.data, msg.file.crc32 = path, size, offset, data, crc
    elif kind == "rows":
        _, table, columns, rows = piece
        msg.rows.table = table
        msg.rows.columns.extend(columns)
        msg.rows.rows.extend(rpb.CatalogRow(values=[value_to_pb(x) for x in r]) for r in rows)
    else:
        msg.commit = piece[1]
    return msg


def rows_from_pb(rows: rpb.CatalogRows) -> tuple:
    """(table, columns, [row tuples]) of a CatalogRows message."""
    columns = list(rows.columns)
    out = [tuple(value_from_pb(v) for v in r.values) for r in rows.rows]
    if any(len(r) != len(columns) for r in out):
        raise InvalidArgument(f"rows: a row of {rows.table} has not {len(columns)} values")
    return rows.table, columns, out


def file_pieces_from_pb(first: rpb.ReplicaMessage, messages):
    """(size, offset, data, crc32) of one file's pieces: ``first`` and the messages after it, up
    to the piece that ends at the file's size."""
    msg, path = first, first.file.path
    while True:
        data = msg.file.data
        yield msg.file.size, msg.file.offset, data, msg.file.crc32
        if msg.file.offset + len(data) >= msg.file.size:
            return
        msg = next(messages, None)
        if msg is None or not msg.HasField("file") or msg.file.path != path:
            raise FailedPrecondition(f"file: the stream ended inside {path}")


def state_to_pb(state: dict) -> pb.ReplicaState:
    return pb.ReplicaState(**state)
