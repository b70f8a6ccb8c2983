"""MosaicClient: Memory Mosaic stores over gRPC, with the methods (and results) of
memsvc.mosaic.MosaicStore, so code and the CLI can hold either one.

    >>> mosaic = MosaicClient(MemoryClient("127.0.0.1:50051"))
    >>> mosaic.create("facts", num_layers=2, num_heads=4, key_dim=64, value_dim=64)
    >>> mosaic.add("facts", 0, 1, keys, values, labels=["Paris is in France", ...])
    >>> r = mosaic.query("facts", 0, 1, queries, beta=8.0, mode="lsh", lsh=LshParams(budget=0.03))
    >>> merged = merge([r, local_part])      # exact: results carry (o, lse, n)
"""
import numpy as np

from clients.client import MemoryClient, _ref
from memsvc.core.errors import InvalidArgument
from memsvc.core.mosaic import LshParams, MosaicResult, PairsResult, merge  # noqa: F401  (merge: re-exported)
from memsvc.core.values import CommitResult
from memsvc.v1 import mosaic_pb2 as mpb
from memsvc.v1 import mosaic_pb2_grpc as mpb_grpc
from memsvc.wire.knowledge import stored_tensor, tensor_to_pb
from memsvc.wire.mosaic import MODE_CODES, MODE_NAMES, info_from_pb, policy_to_pb, result_from_pb


def _pairs_result(msg: mpb.PairsCommit) -> PairsResult:
    return PairsResult(msg.commit.version, msg.commit.rows_changed, np.array(msg.ids, np.int64))


def _f32(array):
    return tensor_to_pb(np.ascontiguousarray(array, dtype=np.float32))


class MosaicClient:
    def __init__(self, client: MemoryClient):
        self.client = client
        self.stub = mpb_grpc.MosaicServiceStub(client.channel)

    def _call(self, method, request):
        return self.client._call(method, request, stub=self.stub)

    # ---------------------------------------------------------------- writes

    def create(self, name, num_layers, num_heads, key_dim, value_dim, policy=None, topk_index="",
               author="", message="") -> PairsResult:
        request = mpb.CreateMosaicRequest(table=name, num_layers=num_layers, num_heads=num_heads, key_dim=key_dim,
                                          value_dim=value_dim, topk_index=topk_index, author=author, message=message)
        if policy is not None:
            request.policy.CopyFrom(policy_to_pb(policy))
        return _pairs_result(self._call("CreateMosaic", request))

    def _write(self, method, name, layer, head, keys, values, ids, labels, author, message) -> PairsResult:
        request = mpb.WritePairsRequest(table=name, layer=layer, head=head, ids=[] if ids is None else np.asarray(ids).tolist(),
                                        keys=_f32(keys), values=_f32(values), labels=list(labels or []),
                                        author=author, message=message)
        return _pairs_result(self._call(method, request))

    def add(self, name, layer, head, keys, values, ids=None, labels=None, author="", message="") -> PairsResult:
        return self._write("AddPairs", name, layer, head, keys, values, ids, labels, author, message)

    def replace(self, name, layer, head, ids, keys, values, labels=None, author="", message="") -> PairsResult:
        return self._write("ReplacePairs", name, layer, head, keys, values, ids, labels, author, message)

    def remove(self, name, layer, head, ids, author="", message="") -> PairsResult:
        request = mpb.RemovePairsRequest(table=name, layer=layer, head=head, ids=np.asarray(ids).tolist(),
                                         author=author, message=message)
        return _pairs_result(self._call("RemovePairs", request))

    def revert(self, version, author="", message="") -> CommitResult:
        return self.client.revert(version, author=author, message=message)

    # ---------------------------------------------------------------- reads

    def list_stores(self, version=None, tag=None) -> list:
        reply = self._call("ListMosaics", mpb.ListMosaicsRequest(at=_ref(version, tag)))
        return [info_from_pb(s) for s in reply.stores]

    def describe_store(self, name, version=None, tag=None):
        return info_from_pb(self._call("DescribeMosaic", mpb.DescribeMosaicRequest(table=name, at=_ref(version, tag))))

    def read_pairs(self, name, layer, head, version=None, tag=None) -> dict:
        r = self._call("ReadPairs", mpb.ReadPairsRequest(table=name, layer=layer, head=head, at=_ref(version, tag)))
        return {"ids": np.array(r.ids, np.int64), "keys": stored_tensor(r.keys), "values": stored_tensor(r.values),
                "labels": list(r.labels), "version": r.version}

    def query(self, name, layer, head, queries, *, beta=None, policy=None, mode="exact", k=0,
              lsh: LshParams | None = None, version=None, tag=None) -> MosaicResult:
        """``mode``: "exact", "topk", "lsh" (or a QueryMosaicRequest.Mode number)."""
        lsh = lsh or LshParams()
        if isinstance(mode, str) and mode not in MODE_CODES:
            raise InvalidArgument(f"mode: {mode!r} is not one of {', '.join(MODE_CODES)}")
        code = MODE_CODES.get(mode, mode)
        request = mpb.QueryMosaicRequest(table=name, layer=layer, head=head, queries=_f32(queries), k=k, mode=code,
                                         lsh=mpb.LshParams(bits=lsh.bits, tables=lsh.tables, budget=lsh.budget),
                                         at=_ref(version, tag))
        if beta is not None:
            request.beta = beta
        elif policy is not None:
            request.policy.CopyFrom(policy_to_pb(policy))
        return result_from_pb(self._call("QueryMosaic", request), MODE_NAMES[code])
