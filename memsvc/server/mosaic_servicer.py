"""MosaicService: gRPC adapters over KnowledgeBase.mosaic (memsvc/store/mosaic.py); the
conversions live in memsvc/wire/mosaic.py. Errors become status codes in ErrorInterceptor."""
from memsvc.core.errors import InvalidArgument
from memsvc.core.mosaic import LshParams
from memsvc.store.mosaic_input import MosaicLimits
from memsvc.v1 import mosaic_pb2 as mpb
from memsvc.v1 import mosaic_pb2_grpc as mpb_grpc
from memsvc.wire.knowledge import tensor_from_pb, tensor_to_pb, version_from_pb
from memsvc.wire.mosaic import MODE_NAMES, info_to_pb, pairs_commit_to_pb, policy_from_pb, result_to_pb


def _pair_arrays(request):
    """Keys and values as arrays; NaN and Inf are the store's to refuse (mosaic_input.check_matrix, once)."""
    return (tensor_from_pb(request.keys, "keys"),
            tensor_from_pb(request.values, "values"))


# ---------------------------------------------------------------- the service

class MosaicServicer(mpb_grpc.MosaicServiceServicer):
    def __init__(self, kb, limits: MosaicLimits):
        self.kb, self.limits = kb, limits

    def CreateMosaic(self, request, context):
        r = self.kb.mosaic.create(request.table, request.num_layers, request.num_heads, request.key_dim, request.value_dim,
                                  policy=policy_from_pb(request.policy) if request.HasField("policy") else None,
                                  topk_index=request.topk_index, author=request.author, message=request.message)
        return pairs_commit_to_pb(r)

    def AddPairs(self, request, context):
        keys, values = _pair_arrays(request)
        return pairs_commit_to_pb(self.kb.mosaic.add(request.table, request.layer, request.head, keys, values,
                                                     ids=list(request.ids) or None, labels=list(request.labels),
                                                     author=request.author, message=request.message))

    def ReplacePairs(self, request, context):
        keys, values = _pair_arrays(request)
        return pairs_commit_to_pb(self.kb.mosaic.replace(request.table, request.layer, request.head, list(request.ids),
                                                         keys, values, labels=list(request.labels) or None,
                                                         author=request.author, message=request.message))

    def RemovePairs(self, request, context):
        return pairs_commit_to_pb(self.kb.mosaic.remove(request.table, request.layer, request.head, list(request.ids),
                                                        author=request.author, message=request.message))

    def ListMosaics(self, request, context):
        v = self.kb.resolve_version(**version_from_pb(request.at))
        return mpb.ListMosaicsResponse(stores=[info_to_pb(s) for s in self.kb.mosaic.list_stores(v)], version=v)

    def DescribeMosaic(self, request, context):
        return info_to_pb(self.kb.mosaic.describe_store(request.table, **version_from_pb(request.at)))

    def ReadPairs(self, request, context):
        p = self.kb.mosaic.read_pairs(request.table, request.layer, request.head, **version_from_pb(request.at))
        return mpb.ReadPairsResponse(ids=p["ids"].tolist(), keys=tensor_to_pb(p["keys"]), values=tensor_to_pb(p["values"]),
                                     labels=p["labels"], version=p["version"])

    def QueryMosaic(self, request, context):
        if request.mode not in MODE_NAMES:
            raise InvalidArgument(f"mode: unknown mode {request.mode} (expected EXACT, TOPK or LSH)")
        choice = request.WhichOneof("beta_choice")
        result = self.kb.mosaic.query(
            request.table, request.layer, request.head, tensor_from_pb(request.queries, "queries"),
            beta=request.beta if choice == "beta" else None,
            policy=policy_from_pb(request.policy) if choice == "policy" else None,
            mode=MODE_NAMES[request.mode], k=request.k,
            lsh=LshParams(bits=request.lsh.bits or LshParams.bits, tables=request.lsh.tables, budget=request.lsh.budget),
            limits=self.limits, **version_from_pb(request.at))
        return result_to_pb(result)


def add_to_server(kb, server, limits: MosaicLimits):
    mpb_grpc.add_MosaicServiceServicer_to_server(MosaicServicer(kb, limits), server)
