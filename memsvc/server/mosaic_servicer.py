"""MosaicService: gRPC adapters over KnowledgeBase.mosaic (memsvc/mosaic.py), and the
protobuf <-> Python conversions both the servicer and the client use. Errors become status
codes in ErrorInterceptor (memsvc/servicer.py)."""
import numpy as np

from indexes.mosaic import BetaPolicy
from memsvc.wire.knowledge import commit_result_to_pb, stored_tensor, tensor_from_pb, tensor_to_pb
from memsvc.core.errors import InvalidArgument
from memsvc.store.mosaic import LshParams, MosaicInfo, MosaicResult
from memsvc.server.servicer import _version
from memsvc.v1 import mosaic_pb2 as mpb
from memsvc.v1 import mosaic_pb2_grpc as mpb_grpc

MODE_NAMES = {mpb.QueryMosaicRequest.MODE_UNSPECIFIED: "exact", mpb.QueryMosaicRequest.EXACT: "exact",
              mpb.QueryMosaicRequest.TOPK: "topk", mpb.QueryMosaicRequest.LSH: "lsh"}
MODE_CODES = {"exact": mpb.QueryMosaicRequest.EXACT, "topk": mpb.QueryMosaicRequest.TOPK,
              "lsh": mpb.QueryMosaicRequest.LSH}


# ---------------------------------------------------------------- conversions

def policy_to_pb(p: BetaPolicy) -> mpb.BetaPolicy:
    return mpb.BetaPolicy(beta0=p.beta0, beta1=p.beta1, alpha=p.alpha)


def policy_from_pb(msg: mpb.BetaPolicy) -> BetaPolicy:
    return BetaPolicy(beta0=msg.beta0, beta1=msg.beta1, alpha=msg.alpha)


def info_to_pb(i: MosaicInfo) -> mpb.MosaicInfo:
    return mpb.MosaicInfo(name=i.name, num_layers=i.num_layers, num_heads=i.num_heads, key_dim=i.key_dim,
                          value_dim=i.value_dim, created_version=i.created_version, pairs=i.pairs.ravel().tolist(),
                          policy=policy_to_pb(i.policy), topk_index=i.topk_index, version=i.version)


def info_from_pb(msg: mpb.MosaicInfo) -> MosaicInfo:
    return MosaicInfo(msg.name, msg.num_layers, msg.num_heads, msg.key_dim, msg.value_dim, msg.created_version,
                      np.array(msg.pairs, np.int64).reshape(msg.num_layers, msg.num_heads),
                      policy_from_pb(msg.policy), msg.topk_index, msg.version)


def result_to_pb(r: MosaicResult) -> mpb.QueryMosaicResponse:
    reply = mpb.QueryMosaicResponse(outputs=tensor_to_pb(r.outputs.astype(np.float32)), lse=tensor_to_pb(r.lse.astype(np.float32)),
                                    n=r.n, version=r.version, beta=r.beta, lsh_tables=r.lsh_tables, index_lag=r.index_lag)
    if r.touched is not None:
        reply.touched.CopyFrom(tensor_to_pb(r.touched.astype(np.float32)))
    return reply


def result_from_pb(msg: mpb.QueryMosaicResponse, mode: str) -> MosaicResult:
    return MosaicResult(outputs=stored_tensor(msg.outputs), lse=stored_tensor(msg.lse), n=msg.n, version=msg.version,
                        beta=msg.beta, mode=mode, touched=stored_tensor(msg.touched) if msg.HasField("touched") else None,
                        lsh_tables=msg.lsh_tables, index_lag=msg.index_lag)


def pairs_commit_to_pb(r) -> mpb.PairsCommit:
    return mpb.PairsCommit(commit=commit_result_to_pb(r), ids=np.asarray(r.ids).tolist())


def _pair_arrays(request):
    return tensor_from_pb(request.keys, "keys"), tensor_from_pb(request.values, "values")


# ---------------------------------------------------------------- the service

class MosaicServicer(mpb_grpc.MosaicServiceServicer):
    def __init__(self, kb):
        self.kb = kb

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
        v = self.kb.resolve_version(**_version(request.at))
        return mpb.ListMosaicsResponse(stores=[info_to_pb(s) for s in self.kb.mosaic.list_stores(v)], version=v)

    def DescribeMosaic(self, request, context):
        return info_to_pb(self.kb.mosaic.describe_store(request.table, **_version(request.at)))

    def ReadPairs(self, request, context):
        p = self.kb.mosaic.read_pairs(request.table, request.layer, request.head, **_version(request.at))
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
            **_version(request.at))
        return result_to_pb(result)


SERVICE = mpb.DESCRIPTOR.services_by_name["MosaicService"].full_name


def add_to_server(kb, server):
    mpb_grpc.add_MosaicServiceServicer_to_server(MosaicServicer(kb), server)
