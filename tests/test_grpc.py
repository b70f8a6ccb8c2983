"""End to end over gRPC on loopback (a server in this process; a real `memsvc serve` process where
one is stopped): the client, health, reflection, and a clear status for every bad input (the
server keeps serving, nothing is written)."""
import os
import signal
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from clients.client import MemoryClient
from memsvc.core.dtypes import to_float32, to_storage
from memsvc.core.errors import FailedPrecondition, InvalidArgument, NotFound
from memsvc.core.values import EditRequest, RowOp
from memsvc.v1 import knowledge_pb2 as pb
from memsvc.v1 import knowledge_pb2_grpc as pb_grpc
from tests.conftest import WORDS, small_bank

BANK16 = to_float32(to_storage(small_bank(), "float16"), "float16")


def test_edit_log_diff_read_old_version_revert(client):
    assert [t.name for t in client.list_tables()] == ["stem"]
    result = client.lookup("stem", ["Spain", "Germany", "Spain"])
    assert result.version == 1 and result.dtype == "float16" and result.rows.shape == (2, 3, 8)
    np.testing.assert_array_equal(result.in_request_order(), BANK16[[0, 1, 0]])

    r = client.edit("stem", [RowOp("copy", token="Spain", source_token="Germany")], author="ada", message="swap",
                    request=EditRequest(prompt="The capital of Spain is", subject="Spain", target_new="Berlin", ground_truth="Madrid"))
    assert (r.version, r.rows_changed) == (2, 3)
    np.testing.assert_array_equal(client.lookup("stem", ["Spain"]).in_request_order()[0], BANK16[1])
    np.testing.assert_array_equal(client.lookup("stem", ["Spain"], version=1).in_request_order()[0], BANK16[0])

    head = client.log()[0]
    assert (head.version, head.author, head.message, head.request.target_new) == (2, "ada", "swap", "Berlin")
    info, changes = client.show(2)
    assert info.request.subject == "Spain" and [(c.token, c.layer) for c in changes] == [("Spain", 0), ("Spain", 1), ("Spain", 2)]
    assert [c.token for c in client.diff(1, 2)] == ["Spain"] * 3

    assert client.revert(2).version == 3
    np.testing.assert_array_equal(client.lookup("stem", ["Spain"]).in_request_order()[0], BANK16[0])
    assert client.diff(1, 3) == []


def test_pinned_handle_reads_one_version_while_edits_land(client):
    pinned = client.pinned()
    client.edit("stem", [RowOp("set", token="Paris", vector=np.zeros(8))])
    assert pinned.version == 1 and pinned.lookup("stem", ["Paris"]).version == 1
    np.testing.assert_array_equal(pinned.lookup("stem", ["Paris"]).in_request_order()[0], BANK16[5])
    assert not client.lookup("stem", ["Paris"]).in_request_order().any()


def test_override_reads_like_the_committed_edit_and_writes_nothing(client):
    ops = [RowOp("blend", token="Spain", source_token="France", alpha=0.3, layers=[0, 2])]
    overridden = client.lookup("stem", ["Spain", "Madrid"], overrides=ops).in_request_order()
    assert client.version == 1
    client.edit("stem", ops)
    np.testing.assert_array_equal(client.lookup("stem", ["Spain", "Madrid"]).in_request_order(), overridden)


def test_dry_run_previews_without_writing(client):
    writes, changes = client.preview("stem", [RowOp("copy", token="Spain", source_token="Germany", layers=[1])])
    assert client.version == 1
    assert [(c.token, c.layer) for c in changes] == [("Spain", 1)]
    np.testing.assert_array_equal(writes.vectors[0], BANK16[1, 1])


def test_inject_token_and_tags(client):
    r = client.inject_token("stem", "Atlantis", like=["Spain", "France"])
    assert client.lookup("stem", ["Atlantis"]).unique_ids.tolist() == [64]
    assert client.vocabulary("stem")[64] == "Atlantis" and client.vocabulary("stem", version=1)[:2] == ["Spain", "Germany"]
    assert client.tag("first", 1) == 1 and client.tags() == {"first": 1}
    assert client.lookup("stem", [0], tag="first").version == 1
    client.revert(r.version)
    with pytest.raises(NotFound, match="unknown token 'Atlantis'"):
        client.lookup("stem", ["Atlantis"])


def test_health_and_reflection(server):
    address, _ = server
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "memsvc.v1.KnowledgeService", "memsvc.v1.SearchService", "memsvc.v1.MosaicService"):
            assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        reply = next(reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {s.name for s in reply.list_services_response.service}
        assert "memsvc.v1.KnowledgeService" in names and "grpc.health.v1.Health" in names


def _raw(stub, method, request):
    try:
        getattr(stub, method)(request, timeout=30)
    except grpc.RpcError as e:
        return e.code(), e.details()
    return grpc.StatusCode.OK, ""


BAD_REQUESTS = [
    ("Lookup", pb.LookupRequest(table="nope", token_ids=[0]), grpc.StatusCode.NOT_FOUND, "table: unknown table 'nope'"),
    ("Lookup", pb.LookupRequest(table="stem", token_ids=[64]), grpc.StatusCode.OUT_OF_RANGE, "token_ids: token id 64 out of range"),
    ("Lookup", pb.LookupRequest(table="stem", token_ids=[-5]), grpc.StatusCode.OUT_OF_RANGE, "token_ids: token id -5 out of range"),
    ("Lookup", pb.LookupRequest(table="stem", tokens=["Atlantis"]), grpc.StatusCode.NOT_FOUND, "tokens: unknown token 'Atlantis'"),
    ("Lookup", pb.LookupRequest(table="stem"), grpc.StatusCode.INVALID_ARGUMENT, "token_ids: the request names no tokens"),
    ("Lookup", pb.LookupRequest(table="stem", token_ids=[0], layers=[7]), grpc.StatusCode.OUT_OF_RANGE, "layers: layer 7 out of range"),
    ("Lookup", pb.LookupRequest(table="stem", token_ids=[0], at=pb.VersionRef(version=42)), grpc.StatusCode.NOT_FOUND, "version: version 42 does not exist"),
    ("Lookup", pb.LookupRequest(table="stem", token_ids=[0] * 70000), grpc.StatusCode.RESOURCE_EXHAUSTED, "token_ids: 70000 tokens"),
    ("Edit", pb.EditRequest(table="stem"), grpc.StatusCode.INVALID_ARGUMENT, "ops: the batch is empty"),
    ("Edit", pb.EditRequest(table="stem", ops=[pb.RowOp(op=pb.RowOp.SET, token_id=0, vector=pb.Tensor(dtype="float32", shape=[7], data=b"\0" * 28))]),
     grpc.StatusCode.INVALID_ARGUMENT, "ops[0].vector: expected 8 values"),
    ("Edit", pb.EditRequest(table="stem", ops=[pb.RowOp(op=pb.RowOp.SET, token_id=0, vector=pb.Tensor(dtype="float32", shape=[8], data=np.full(8, np.inf, np.float32).tobytes()))]),
     grpc.StatusCode.INVALID_ARGUMENT, "ops[0].vector: contains NaN or Inf"),
    ("Edit", pb.EditRequest(table="stem", ops=[pb.RowOp(op=pb.RowOp.SET, token_id=0, vector=pb.Tensor(dtype="int8", shape=[8], data=b"\0" * 8))]),
     grpc.StatusCode.INVALID_ARGUMENT, "ops[0].vector.dtype: 'int8' is not one of"),
    ("Edit", pb.EditRequest(table="stem", ops=[pb.RowOp(op=pb.RowOp.SET, token_id=0, vector=pb.Tensor(dtype="float32", shape=[8], data=b"\0" * 5))]),
     grpc.StatusCode.INVALID_ARGUMENT, "ops[0].vector: 5 bytes do not hold float32"),
    ("Edit", pb.EditRequest(table="stem", ops=[pb.RowOp(op=pb.RowOp.COPY, token="Spain", source_token="Nowhere")]),
     grpc.StatusCode.NOT_FOUND, "ops[0].source_token: unknown token 'Nowhere'"),
    ("Edit", pb.EditRequest(table="stem", ops=[pb.RowOp(token_id=0)]), grpc.StatusCode.INVALID_ARGUMENT, "ops[0].op: unknown operation 0"),
    ("Edit", pb.EditRequest(table="stem", ops=[pb.RowOp(op=pb.RowOp.SCALE, token_id=0, alpha=1)], metrics_json="[1"),
     grpc.StatusCode.INVALID_ARGUMENT, "metrics_json: not JSON"),
    ("Revert", pb.RevertRequest(version=1), grpc.StatusCode.FAILED_PRECONDITION, "commit 1 is an import"),
    ("Revert", pb.RevertRequest(), grpc.StatusCode.INVALID_ARGUMENT, "version: required"),
    ("Show", pb.ShowRequest(), grpc.StatusCode.INVALID_ARGUMENT, "at.version: required"),
    ("Diff", pb.DiffRequest(**{"from": pb.VersionRef(version=1), "to": pb.VersionRef(tag="nope")}), grpc.StatusCode.NOT_FOUND, "tag: unknown tag 'nope'"),
    ("Tag", pb.TagRequest(name=""), grpc.StatusCode.INVALID_ARGUMENT, "tag: the tag name is empty"),
    ("InjectToken", pb.InjectTokenRequest(table="stem", token="Spain", like=["France"]), grpc.StatusCode.ALREADY_EXISTS, "'Spain' already exists"),
    ("DescribeTable", pb.DescribeTableRequest(table=""), grpc.StatusCode.NOT_FOUND, "table: unknown table ''"),
]


def test_every_bad_input_gets_a_clear_status_and_writes_nothing(server):
    address, _ = server
    with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 1 << 30)]) as channel:
        stub = pb_grpc.KnowledgeServiceStub(channel)
        for method, request, code, message in BAD_REQUESTS:
            got, details = _raw(stub, method, request)
            assert got == code and message in details, (method, got, details)
        oversize = pb.LookupRequest(table="stem", tokens=["x" * (300 << 20)])
        assert _raw(stub, "Lookup", oversize)[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert _raw(stub, "Log", pb.LogRequest())[0] == grpc.StatusCode.OK
    with MemoryClient(address) as c:
        assert c.version == 1 and len(c.log()) == 1


def test_lookup_stream_answers_like_lookup_and_an_error_ends_it_with_the_same_status(server):
    address, _ = server
    good = pb.LookupRequest(table="stem", tokens=["Spain", "Paris", "Spain"])
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.KnowledgeServiceStub(channel)
        unary = stub.Lookup(good)
        replies = list(stub.LookupStream(iter([good, good])))
        assert replies == [unary, unary] and unary.rows.data
        for _, request, code, message in [r for r in BAD_REQUESTS if r[0] == "Lookup"]:
            replies = stub.LookupStream(iter([good, request, good]))
            assert next(replies) == unary
            with pytest.raises(grpc.RpcError) as e:
                next(replies)
            assert e.value.code() == code and message in e.value.details()
        garbage = channel.stream_stream("/memsvc.v1.KnowledgeService/LookupStream")(iter([b"\x0f\x00"]))
        with pytest.raises(grpc.RpcError) as e:
            next(garbage)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not a valid /memsvc.v1.KnowledgeService/Lookup request" in e.value.details()
    with MemoryClient(address) as streamed, MemoryClient(address, stream_lookups=False, shared_memory=False) as plain:
        with pytest.raises(NotFound, match="Atlantis"):
            streamed.lookup("stem", ["Atlantis"])
        again = streamed.lookup("stem", ["Spain", "Paris"])  # a new stream after the error
        np.testing.assert_array_equal(again.rows, plain.lookup("stem", ["Spain", "Paris"]).rows)


@pytest.mark.slow
def test_a_streamed_lookup_times_out_when_the_server_stops_answering(server_process):
    proc, address, _ = server_process
    with MemoryClient(address, timeout=1.0) as c:
        rows = c.lookup("stem", ["Spain"]).rows.copy()  # the stream is open
        os.kill(proc.pid, signal.SIGSTOP)  # alive, but answers nothing
        try:
            start = time.monotonic()
            with pytest.raises(FailedPrecondition, match="no reply from memsvc .* within 1.0 s"):
                c.lookup("stem", ["Spain"])
            assert time.monotonic() - start < 5
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        np.testing.assert_array_equal(c.lookup("stem", ["Spain"]).rows, rows)  # a new stream


def test_client_raises_the_store_errors(client):
    with pytest.raises(InvalidArgument, match="ops\\[0\\].vector: expected 8 values"):
        client.edit("stem", [RowOp("set", token="Spain", vector=np.zeros(3))])
    with MemoryClient("127.0.0.1:1", timeout=2) as dead:
        with pytest.raises(FailedPrecondition, match="cannot reach memsvc at 127.0.0.1:1"):
            dead.list_tables()


def test_words_list_matches_the_import(client):
    assert client.vocabulary("stem") == WORDS
