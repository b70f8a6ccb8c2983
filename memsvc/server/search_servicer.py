"""SearchService over gRPC: adapters only (decode, call IndexManager, encode), plus the
IndexInfo <-> protobuf conversions that the client shares."""
import json

import numpy as np

from memsvc.wire import knowledge as convert
from memsvc.core.errors import InvalidArgument
from memsvc.search.manager import IndexInfo, IndexManager
from memsvc.v1 import search_pb2 as spb
from memsvc.v1 import search_pb2_grpc as spb_grpc

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


def _json_object(text, field) -> dict:
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError as e:
        raise InvalidArgument(f"{field}: not JSON ({e})") from None
    if not isinstance(value, dict):
        raise InvalidArgument(f"{field}: expected a JSON object of IndexConfig fields")
    return value


def _version(ref):
    return dict(version=ref.version or None, tag=ref.tag or None)


class SearchServicer(spb_grpc.SearchServiceServicer):
    """SearchService, except SearchStream: server.StreamOfUnaryCalls serves each of its messages
    as a Search call."""

    def __init__(self, manager: IndexManager):
        self.manager = manager

    def Search(self, request, context):
        # NaN and Inf: IndexManager.search checks its queries (once is enough on the hot path)
        queries = (convert.tensor_from_pb(request.queries, "queries", check_finite=False)
                   if request.HasField("queries") else None)
        result = self.manager.search(request.table, request.layer, queries=queries,
                                     tokens=list(request.token_ids) or list(request.tokens), k=request.k,
                                     index=request.index or None, params=dict(request.params),
                                     metric=request.metric or None, head=head_of(request), names=not request.ids_only,
                                     **_version(request.at))
        reply = spb.SearchResponse(tokens=[w for row in result.tokens for w in row],
                                   version=result.version, index=result.index, index_version=result.index_version,
                                   lag_rows=result.lag_rows, metric=result.metric,
                                   labels=[x for row in result.labels for x in row])
        convert.tensor_to_pb(result.ids.astype(np.int64, copy=False), "int64", out=reply.ids)
        convert.tensor_to_pb(result.distances, out=reply.distances)
        return reply

    def CreateIndex(self, request, context):
        config = {**_json_object(request.config_json, "config_json"),
                  **{k: v for k, v in (("kind", request.kind), ("metric", request.metric)) if v}}
        return info_to_pb(self.manager.create(request.name, request.table, request.layer, config, head=head_of(request),
                                              **_version(request.at)))

    def DropIndex(self, request, context):
        return info_to_pb(self.manager.drop(request.name))

    def ListIndexes(self, request, context):
        return spb.ListIndexesResponse(indexes=[info_to_pb(i) for i in self.manager.list()])

    def DescribeIndex(self, request, context):
        return info_to_pb(self.manager.describe(request.name))

