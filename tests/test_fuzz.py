"""Fuzzed bad input against a live server (bench/fuzz.py with ~200 examples): every answer is OK
or an expected status code, the server stays up, and rejected writes change nothing; requests
built to land past each work limit get their code naming the field, and rounds of streams past
max_streams (idle, abandoned, closed, garbage) end as they should while unary calls answer."""
import resource

import grpc
import pytest

from bench.fuzz import (MEMORY_LIMIT, SERVE_ARGS, FuzzTarget, fuzz, fuzz_limits, fuzz_streams, make_fuzz_kb,
                        rpc_methods)
from memsvc.server.spawn import spawn_server, stop_server


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    data = tmp_path_factory.mktemp("fuzz") / "kb"
    make_fuzz_kb(data)
    proc, address = spawn_server(data, *SERVE_ARGS, memory_limit=MEMORY_LIMIT)
    try:
        assert resource.prlimit(proc.pid, resource.RLIMIT_AS) == (MEMORY_LIMIT, MEMORY_LIMIT)
        yield FuzzTarget(address)
    finally:
        stop_server(proc, timeout=30)


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


@pytest.mark.slow  # a real server process under a memory limit
def test_requests_past_each_limit_get_their_code_naming_the_field_and_change_nothing(target):
    before = target.histogram.copy()
    fuzz_limits(target, 120)  # ~8 of each of the 15 cases
    sent = target.histogram - before
    assert sum(sent.values()) == 120 and sent["RESOURCE_EXHAUSTED"] > 60 and sent["INVALID_ARGUMENT"] > 5, sent
    assert target.bad == []
    assert target.changed == []
    methods = {m.rsplit("/", 1)[1] for m, n in target.per_method.items() if n}
    assert {"Lookup", "Search", "QueryMosaic", "CreateIndex", "ImportTable", "CreateMosaic", "AddPairs"} <= methods


@pytest.mark.slow  # a real server process under a memory limit
def test_streams_past_max_streams_end_as_they_should_while_unary_calls_answer(target):
    before = sum(target.histogram.values())
    fuzz_streams(target, 2)
    assert sum(target.histogram.values()) - before >= 10  # MAX_STREAMS (4) + 1 or more a round, each ended
    assert target.bad == []
    assert target.serving()
