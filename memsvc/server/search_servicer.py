"""SearchService over gRPC: adapters only (decode, call IndexManager, encode)."""
import numpy as np

from memsvc.search.manager import IndexManager
from memsvc.v1 import search_pb2 as spb
from memsvc.v1 import search_pb2_grpc as spb_grpc
from memsvc.wire import knowledge as convert
from memsvc.wire.search import head_of, info_to_pb, json_object


class SearchServicer(spb_grpc.SearchServiceServicer):
    """SearchService, except SearchStream: interceptors.StreamOfUnaryCalls serves each of its messages
    as a Search call."""

    def __init__(self, manager: IndexManager):
        self.manager = manager

    def Search(self, request, context):
        # NaN and Inf: IndexManager.search checks its queries (once is enough on the hot path)
        queries = (convert.tensor_from_pb(request.queries, "queries")
                   if request.HasField("queries") else None)
        result = self.manager.search(request.table, request.layer, queries=queries,
                                     tokens=list(request.token_ids) or list(request.tokens), k=request.k,
                                     index=request.index or None, params=dict(request.params),
                                     metric=request.metric or None, head=head_of(request), names=not request.ids_only,
                                     exact=request.exact,
                                     **convert.version_from_pb(request.at))
        reply = spb.SearchResponse(tokens=[w for row in result.tokens for w in row],
                                   version=result.version, index=result.index, index_version=result.index_version,
                                   lag_rows=result.lag_rows, metric=result.metric,
                                   labels=[x for row in result.labels for x in row])
        convert.tensor_to_pb(result.ids.astype(np.int64, copy=False), "int64", out=reply.ids)
        convert.tensor_to_pb(result.distances, out=reply.distances)
        return reply

    def CreateIndex(self, request, context):
        config = {**json_object(request.config_json, "config_json"),
                  **{k: v for k, v in (("kind", request.kind), ("metric", request.metric)) if v}}
        return info_to_pb(self.manager.create(request.name, request.table, request.layer, config, head=head_of(request),
                                              **convert.version_from_pb(request.at)))

    def DropIndex(self, request, context):
        return info_to_pb(self.manager.drop(request.name))

    def ListIndexes(self, request, context):
        return spb.ListIndexesResponse(indexes=[info_to_pb(i) for i in self.manager.list()])

    def DescribeIndex(self, request, context):
        return info_to_pb(self.manager.describe(request.name))

