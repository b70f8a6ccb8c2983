"""Fuzzed bad input against a live server (bench/fuzz.py with ~200 examples): every answer is OK
or an expected status code, the server stays up, and rejected writes change nothing."""
import resource

import grpc
import pytest

from bench.crash import make_kb
from bench.fuzz import MEMORY_LIMIT, FuzzTarget, fuzz, rpc_methods
from memsvc.server.spawn import spawn_server, stop_server


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    data = tmp_path_factory.mktemp("fuzz") / "kb"
    make_kb(data)
    proc, address = spawn_server(data, memory_limit=MEMORY_LIMIT)
    try:
        assert resource.prlimit(proc.pid, resource.RLIMIT_AS) == (MEMORY_LIMIT, MEMORY_LIMIT)
        yield FuzzTarget(address)
    finally:
        stop_server(proc)


def test_every_rpc_is_fuzzed():
    names = {m.rsplit("/", 1)[1] for m, _ in rpc_methods()}
    assert {"Lookup", "Edit", "InjectToken", "Revert", "Tag", "Diff", "AddPairs", "QueryMosaic"} <= names


@pytest.mark.slow  # a real server process under a memory limit
def test_unparsable_bytes_are_invalid_argument_and_change_nothing(target):
    for method, _ in target.methods:
        for data in [b"\xff\xff\xff", b"\x0a\x05st", b"\x08" + b"\x80" * 11]:
            assert target.send(method, data) == grpc.StatusCode.INVALID_ARGUMENT, method
    assert target.changed == []


@pytest.mark.slow  # a real server process under a memory limit
def test_fuzzed_requests_get_expected_codes_and_change_nothing(target):
    fuzz(target, 200)
    assert sum(target.histogram.values()) >= 200
    assert target.bad == []
    assert target.changed == []
    assert target.serving()
