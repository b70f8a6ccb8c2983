"""API keys and roles: the method->role table, key loading, secure-by-default, and a server that
answers UNAUTHENTICATED / PERMISSION_DENIED and changes nothing when it refuses."""
import subprocess
import sys

import grpc
import numpy as np
import pytest
from click.testing import CliRunner
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from clients.client import MemoryClient
from memsvc.cli import cli
from memsvc.core.errors import FailedPrecondition, InvalidArgument, MemsvcError
from memsvc.core.values import RowOp
from memsvc.server.auth import READ, WRITE, check_exposure, load_keys, required_role
from memsvc.store import KnowledgeBase, StoreConfig
from memsvc.v1 import knowledge_pb2 as pb
from memsvc.v1 import knowledge_pb2_grpc as pb_grpc
from tests.conftest import ROOT, WORDS, serving, small_bank

READ_KEY, WRITE_KEY = "reader-key-1", "editor-key-1"


def method(name, service="memsvc.v1.KnowledgeService"):
    return f"/{service}/{name}"


@pytest.mark.parametrize("name", ["ListTables", "DescribeTable", "Vocabulary", "Lookup", "Log", "Show", "Diff",
                                  "ListTags", "Search", "SearchTokens", "GetIndex", "ListIndexes", "Snapshot",
                                  "ChangedTokens", "ReadPairs", "QueryMosaic", "ListMosaics", "DescribeMosaic",
                                  "HotTokens"])
def test_reads_need_a_read_key(name):
    assert required_role(method(name)) == READ
    assert required_role(method(name, "memsvc.v1.SearchService")) == READ


@pytest.mark.parametrize("name", ["Edit", "InjectToken", "Revert", "Tag", "CreateIndex", "DropIndex", "AddPairs",
                                  "RemovePairs", "ReplacePairs", "CreateMosaic", "Compact", "Frobnicate", "lookup"])
def test_writes_and_unknown_methods_need_a_write_key(name):
    assert required_role(method(name)) == WRITE


def test_health_and_reflection_are_open():
    assert required_role(method("Check", "grpc.health.v1.Health")) is None
    assert required_role(method("Watch", "grpc.health.v1.Health")) is None
    assert required_role(method("ServerReflectionInfo", "grpc.reflection.v1alpha.ServerReflection")) is None


def test_keys_come_from_the_file_and_the_environment(tmp_path):
    f = tmp_path / "keys.txt"
    f.write_text("# memsvc keys\nread  r1\nwrite w1  # the editors\n\nread shared\n")
    keys = load_keys(f, {"MEMSVC_READ_KEYS": "r2, r3", "MEMSVC_WRITE_KEYS": "shared"})
    from memsvc.server.auth import digest

    assert {k: keys[digest(k)] for k in ["r1", "w1", "r2", "r3", "shared"]} == \
        {"r1": READ, "w1": WRITE, "r2": READ, "r3": READ, "shared": WRITE}
    assert len(keys) == 5 and "r1" not in keys  # only digests are kept
    assert load_keys(None, {}) == {}
    f.write_text("admin k\n")
    with pytest.raises(InvalidArgument, match="keys.txt:1"):
        load_keys(f, {})


def test_secure_by_default():
    for host in ["0.0.0.0", "[::]", "10.1.2.3", "kb.example.com"]:
        with pytest.raises(FailedPrecondition, match="--insecure"):
            check_exposure(host, {}, insecure=False)
        check_exposure(host, {}, insecure=True)
        check_exposure(host, {"digest": READ}, insecure=False)
    for host in ["127.0.0.1", "::1", "[::1]", "localhost"]:
        check_exposure(host, {}, insecure=False)


@pytest.mark.slow
def test_serve_refuses_a_public_host_without_keys(tmp_path):
    out = subprocess.run([sys.executable, "-m", "memsvc", "serve", "--data", str(tmp_path / "d"), "--host", "0.0.0.0",
                          "--port", "0", "--no-seed"], capture_output=True, text=True, cwd=ROOT, timeout=60,
                         env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 1
    assert "refusing to serve 0.0.0.0 without API keys" in out.stderr


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    """A server with one read key (file) and one write key (environment); yields (address, data)."""
    tmp = tmp_path_factory.mktemp("auth")
    (tmp / "keys.txt").write_text(f"read {READ_KEY}\n")
    data = tmp / "kb"
    with KnowledgeBase(StoreConfig(data_dir=data, create=True)) as kb:
        kb.import_table("stem", small_bank(), WORDS)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MEMSVC_WRITE_KEYS", WRITE_KEY)
        with serving(data, api_keys_file=tmp / "keys.txt") as address:
            yield address, data


def call(address, name, request, key=None):
    """(status code, reply) of one raw call."""
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.KnowledgeServiceStub(channel)
        try:
            return grpc.StatusCode.OK, getattr(stub, name)(request, timeout=10, metadata=(("authorization", f"Bearer {key}"),) if key else None)
        except grpc.RpcError as e:
            return e.code(), e.details()


WRITES = [
    ("Edit", pb.EditRequest(table="stem", ops=[pb.RowOp(op=pb.RowOp.SCALE, token="Spain", alpha=2.0)])),
    ("InjectToken", pb.InjectTokenRequest(table="stem", token="Atlantis", like=["Spain"])),
    ("Revert", pb.RevertRequest(version=1)),
    ("Tag", pb.TagRequest(name="release")),
]


def test_no_key_is_unauthenticated(keyed):
    address, _ = keyed
    for key in [None, "wrong-key"]:
        code, details = call(address, "Lookup", pb.LookupRequest(table="stem", tokens=["Spain"]), key)
        assert code == grpc.StatusCode.UNAUTHENTICATED and "API key" in details
    code, _ = call(address, "Edit", WRITES[0][1])
    assert code == grpc.StatusCode.UNAUTHENTICATED


def test_read_key_reads_but_cannot_write(keyed):
    address, _ = keyed
    code, reply = call(address, "Lookup", pb.LookupRequest(table="stem", tokens=["Spain"]), READ_KEY)
    assert code == grpc.StatusCode.OK and reply.version == 1
    for name, request in WRITES:
        code, details = call(address, name, request, READ_KEY)
        assert code == grpc.StatusCode.PERMISSION_DENIED, name
        assert "needs a write key" in details
    with MemoryClient(address, api_key=READ_KEY) as c:
        assert c.version == 1 and c.tags() == {}  # nothing was written
        assert c.vocabulary("stem") == WORDS


def test_write_key_writes(keyed):
    address, _ = keyed
    with MemoryClient(address, api_key=WRITE_KEY) as c:
        before = c.lookup("stem", ["Paris"]).in_request_order()
        r = c.edit("stem", [RowOp("scale", token="Paris", alpha=0.5)], message="halve Paris")
        assert r.version == c.version
        np.testing.assert_allclose(c.lookup("stem", ["Paris"]).in_request_order(), before * 0.5, rtol=1e-6)
    with MemoryClient(address) as anonymous, pytest.raises(MemsvcError, match="API key"):
        anonymous.log()


def test_health_and_reflection_need_no_key(keyed):
    address, _ = keyed
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        answers = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
        services = {s.name for a in answers for s in a.list_services_response.service}
    assert "memsvc.v1.KnowledgeService" in services


def test_cli_sends_the_api_key(keyed):
    address, _ = keyed
    runner = CliRunner()
    ok = runner.invoke(cli, ["log", "--server", address], env={"MEMSVC_API_KEY": READ_KEY})
    assert ok.exit_code == 0 and "import" in ok.output
    denied = runner.invoke(cli, ["--api-key", READ_KEY, "tag", "v1", "--server", address])
    assert denied.exit_code == 1 and "needs a write key" in denied.output
    missing = runner.invoke(cli, ["log", "--server", address], env={"MEMSVC_API_KEY": None})
    assert missing.exit_code == 1 and "Error: authorization" in missing.output
