"""search.proto <-> memsvc.core.search: the conversions the servicer and the client share."""
import json

from memsvc.core.errors import InvalidArgument
from memsvc.core.search import IndexInfo
from memsvc.v1 import search_pb2 as spb

SERVICE = spb.DESCRIPTOR.services_by_name["SearchService"].full_name


def info_to_pb(info: IndexInfo) -> spb.IndexInfo:
    fields = {k: v for k, v in info.__dict__.items() if k != "config"}
    return spb.IndexInfo(**fields, config_json=json.dumps(info.config))


def info_from_pb(msg: spb.IndexInfo) -> IndexInfo:
    fields = {f: getattr(msg, f) for f in IndexInfo.__dataclass_fields__ if f not in ("config", "head")}
    return IndexInfo(**fields, config=json.loads(msg.config_json or "{}"), head=head_of(msg))


def head_of(msg):
    """The optional `head` field: None when unset (a bank), else the mosaic head."""
    return msg.head if msg.HasField("head") else None


def json_object(text, field) -> dict:
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError as e:
        raise InvalidArgument(f"{field}: not JSON ({e})") from None
    if not isinstance(value, dict):
        raise InvalidArgument(f"{field}: expected a JSON object of IndexConfig fields")
    return value
