"""mosaic.proto <-> memsvc.core.mosaic: the conversions the servicer and the client share."""
import numpy as np

from memsvc.core.mosaic import BetaPolicy, MosaicInfo, MosaicResult
from memsvc.v1 import mosaic_pb2 as mpb
from memsvc.wire.knowledge import commit_result_to_pb, stored_tensor, tensor_to_pb

SERVICE = mpb.DESCRIPTOR.services_by_name["MosaicService"].full_name
MODE_NAMES = {mpb.QueryMosaicRequest.MODE_UNSPECIFIED: "exact", mpb.QueryMosaicRequest.EXACT: "exact",
              mpb.QueryMosaicRequest.TOPK: "topk", mpb.QueryMosaicRequest.LSH: "lsh"}
MODE_CODES = {"exact": mpb.QueryMosaicRequest.EXACT, "topk": mpb.QueryMosaicRequest.TOPK,
              "lsh": mpb.QueryMosaicRequest.LSH}


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
