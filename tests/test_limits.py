"""Bounded work per call (issue 19, items 9 and 10): open streams cannot starve the server, and
Search, QueryMosaic and CreateIndex refuse work above their limits with the field and the limit."""
import queue
import re
import threading

import grpc
import numpy as np
import pytest
from click.testing import CliRunner
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients.client import MemoryClient
from clients.mosaic import MosaicClient
from clients.search import SearchClient
from memsvc.cli import cli
from memsvc.core.errors import InvalidArgument, ResourceExhausted
from memsvc.core.mosaic import LshParams
from memsvc.search.config import SearchConfig
from memsvc.server.main import ServerConfig, with_limits
from memsvc.store import KnowledgeBase, StoreConfig
from memsvc.store.mosaic_input import MosaicLimits
from memsvc.v1 import knowledge_pb2 as pb
from memsvc.v1 import search_pb2 as spb
from memsvc.v1 import search_pb2_grpc as spb_grpc
from tests.conftest import served_kb, serving

LOOKUP_STREAM = "/memsvc.v1.KnowledgeService/LookupStream"
SEARCH_STREAM = "/memsvc.v1.SearchService/SearchStream"
LOOKUP = pb.LookupRequest(table="stem", tokens=["Spain"]).SerializeToString()
DEADLINE = 10  # seconds: a starved server never answers; bench/faults.py measures how fast it does


class Streams:
    """Streams opened on channels: idle (nothing sent) or abandoned (one message sent, its reply
    never read, never closed); ``ended`` collects the status of each one the server ends."""

    def __init__(self):
        self.calls, self.feeds, self.ended = [], [], []
        self.changed = threading.Condition()

    def open(self, channel, method, first=None):
        feed = queue.SimpleQueue()
        if first is not None:
            feed.put(first)
        call = channel.stream_stream(method)(iter(feed.get, None))
        call.add_done_callback(self._done)
        self.calls.append(call)
        self.feeds.append(feed)

    def _done(self, call):
        with self.changed:
            self.ended.append((call.code(), call.details()))
            self.changed.notify_all()

    def wait_ended(self, n):
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.ended) >= n, DEADLINE), len(self.ended)
            return list(self.ended)

    def close(self):
        for feed in self.feeds:
            feed.put(None)
        for call in self.calls:
            call.cancel()


def _answers(address):
    """A Lookup and a health check from a new client, each answered (within DEADLINE)."""
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=DEADLINE)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    with MemoryClient(address, timeout=DEADLINE, stream_lookups=False) as client:
        assert client.lookup("stem", ["Spain"]).in_request_order().shape == (1, 3, 8)


def test_200_idle_and_abandoned_streams_leave_calls_and_health_answering(tmp_path):
    streams = Streams()
    with serving(served_kb(tmp_path / "kb"), max_streams=16) as address:
        channels = [grpc.insecure_channel(address) for _ in range(20)]
        try:
            for i, channel in enumerate(channels):
                for _ in range(10):
                    streams.open(channel, LOOKUP_STREAM, LOOKUP if i % 2 else None)
            _answers(address)
            ended = streams.wait_ended(200 - 16)  # the server holds at most max_streams of the 200
            assert {code for code, _ in ended} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
            assert "(max_streams 16)" in ended[0][1]
            _answers(address)
        finally:
            streams.close()
            for channel in channels:
                channel.close()


def test_an_idle_stream_is_ended_and_its_place_taken(tmp_path):
    streams = Streams()
    with serving(served_kb(tmp_path / "kb"), max_streams=1, stream_idle_seconds=0.2) as address:
        with grpc.insecure_channel(address) as channel:
            try:
                streams.open(channel, SEARCH_STREAM)
                (code, details), = streams.wait_ended(1)
                assert code == grpc.StatusCode.UNAVAILABLE
                assert "idle for 0.2 s (stream_idle_seconds)" in details
                with MemoryClient(address, timeout=DEADLINE) as client:  # its lookups go down the one stream
                    for _ in range(3):
                        assert client.lookup("stem", [0]).in_request_order().shape == (1, 3, 8)
            finally:
                streams.close()


def test_a_client_whose_stream_is_refused_gets_its_rows_by_unary_calls(tmp_path):
    streams = Streams()
    with serving(served_kb(tmp_path / "kb"), max_streams=1) as address:
        with grpc.insecure_channel(address) as channel:
            try:
                streams.open(channel, LOOKUP_STREAM, LOOKUP)
                next(streams.calls[0])  # answered: this stream holds the one place
                with MemoryClient(address, timeout=DEADLINE, stream_lookups=False) as plain:
                    expected = plain.lookup("stem", ["Spain", "Paris"]).in_request_order()
                with MemoryClient(address, timeout=DEADLINE) as client:
                    for _ in range(3):
                        assert (client.lookup("stem", ["Spain", "Paris"]).in_request_order() == expected).all()
            finally:
                streams.close()


# ---------------------------------------------------------------- work per call (item 10)

KEYS = np.random.default_rng(1).standard_normal((50, 4)).astype(np.float32)


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    """A server with small limits over a bank (64 tokens x 3 layers x 8) and a mosaic store of 50
    pairs; yields (MemoryClient, data_dir)."""
    data = served_kb(tmp_path_factory.mktemp("limits") / "kb")
    with KnowledgeBase(StoreConfig(data_dir=data)) as kb:
        kb.mosaic.create("facts", num_layers=1, num_heads=1, key_dim=4, value_dim=4)
        kb.mosaic.add("facts", 0, 0, KEYS, KEYS)
    search = SearchConfig(max_results=64, max_scored=64 * 10, max_search_param=100)
    mosaic = MosaicLimits(max_queries=20, max_scored=50 * 10, max_k=8, max_lsh_tables=16)
    with serving(data, search=search, mosaic_limits=mosaic) as address, MemoryClient(address) as client:
        yield client, data


@pytest.mark.parametrize("call, error, message", [
    (lambda s: s.search("stem", queries=np.ones((11, 8), np.float32), k=1), ResourceExhausted,
     "queries: 11 queries x 64 rows exceed the limit of 640 scored"),
    (lambda s: s.search("stem", tokens=["Spain"] * 5, k=13), ResourceExhausted,
     "k: 5 queries x k 13 exceed the limit of 64 results"),
    (lambda s: s.search("stem", tokens=["Spain"], k=2 ** 31 - 1), ResourceExhausted,
     "k: 2147483647 exceeds the limit of 1024"),
])
def test_search_refuses_work_above_its_limits(limited, call, error, message):
    with pytest.raises(error, match=re.escape(message)):
        call(SearchClient(limited[0]))


@pytest.mark.parametrize("kwargs, message", [
    (dict(mode="exact", queries=21), "queries: 21 queries exceed the limit of 20 per request"),
    (dict(mode="exact", queries=11), "queries: 11 queries x 50 pairs exceed the limit of 500 scored"),
    (dict(mode="topk", k=2 ** 31 - 1), "k: 2147483647 exceeds the limit of 8 pairs per query"),
    (dict(mode="lsh", lsh=LshParams(bits=4, tables=2 ** 31 - 1)), "lsh.tables: 2147483647 exceeds the limit of 16"),
    (dict(mode="lsh", lsh=LshParams(bits=16, budget=1.0)), "over the limit of 16; ask for a smaller budget"),
])
def test_query_mosaic_refuses_work_above_its_limits(limited, kwargs, message):
    queries = np.ones((kwargs.pop("queries", 1), 4), np.float32)
    with pytest.raises(ResourceExhausted, match=re.escape(message)):
        MosaicClient(limited[0]).query("facts", 0, 0, queries, beta=1.0, **kwargs)
    assert MosaicClient(limited[0]).query("facts", 0, 0, queries[:1], beta=1.0, mode="topk", k=3).n == 50


@pytest.mark.parametrize("config_json, code, message", [
    ('{"graph_degree": "abc"}', "INVALID_ARGUMENT", "config.graph_degree: expected an integer, got 'abc'"),
    ('{"graph_degree": null}', "INVALID_ARGUMENT", "config.graph_degree: expected an integer, got None"),
    ('{"nlist": [1, 2]}', "INVALID_ARGUMENT", "config.nlist: expected an integer, got [1, 2]"),
    ('{"seed": "x"}', "INVALID_ARGUMENT", "config.seed: expected an integer, got 'x'"),
    ('{"alpha": {"a": 1}}', "INVALID_ARGUMENT", "config.alpha: expected a number, got {'a': 1}"),
    ('{"saturate_graph": 1}', "INVALID_ARGUMENT", "config.saturate_graph: expected true or false, got 1"),
    ('{"graph_degree": true}', "INVALID_ARGUMENT", "config.graph_degree: expected an integer, got True"),
    ('{"hnsw_m": 1e6}', "RESOURCE_EXHAUSTED", "config.hnsw_m: 1000000 exceeds the limit of 256"),
    ('{"nlist": 100000000}', "RESOURCE_EXHAUSTED", "config.nlist: 100000000 exceeds the limit of 1048576"),
    ('{"bogus": 1}', "INVALID_ARGUMENT", "config: unknown field(s) bogus; known: kind, metric"),
])
def test_a_malformed_index_config_names_its_key_and_leaves_nothing(limited, config_json, code, message):
    client, data = limited
    stub = spb_grpc.SearchServiceStub(client.channel)
    with pytest.raises(grpc.RpcError) as e:
        stub.CreateIndex(spb.CreateIndexRequest(name="ix", table="stem", kind="hnsw", config_json=config_json))
    assert (e.value.code().name, message in e.value.details()) == (code, True), e.value.details()
    assert SearchClient(client).list() == [] and not (data / "indexes" / "ix").exists()


def test_an_index_name_over_255_bytes_is_refused_and_never_left_building(limited):
    client, data = limited
    with pytest.raises(InvalidArgument, match="name: 256 bytes, over the limit of 255"):
        SearchClient(client).create("n" * 256, "stem", config={"kind": "exact"})
    assert SearchClient(client).list() == []
    info = SearchClient(client).create("n" * 255, "stem", config={"kind": "exact"}, wait=True)
    assert info.state == "READY"
    SearchClient(client).drop("n" * 255)


def test_serve_limit_sets_any_work_limit_and_refuses_an_unknown_one_before_writing(tmp_path):
    config = with_limits(ServerConfig(), {"max_message_bytes": 1 << 20, "mosaic.max_scored": 64, "search.max_k": 5})
    assert (config.max_message_bytes, config.mosaic_limits.max_scored, config.search.max_k) == (1 << 20, 64, 5)
    assert config.mosaic_limits.max_queries == MosaicLimits().max_queries and ServerConfig().search.max_k == 1024
    runner, data = CliRunner(), tmp_path / "kb"
    result = runner.invoke(cli, ["serve", "--data", str(data), "--limit", "mosaic.max_scorde=64"])
    assert result.exit_code == 1 and result.output.startswith("Error: limit: 'mosaic.max_scorde' is not a limit; one of "
                                                              "max_lookup_tokens, max_message_bytes, mosaic.max_queries")
    assert len(result.output.splitlines()) == 1 and not data.exists()  # refused before the demo KB is seeded
    result = runner.invoke(cli, ["serve", "--data", str(data), "--limit", "search.max_k=many"])
    assert result.exit_code == 2 and "Invalid value for '--limit': 'search.max_k=many': expected NAME=N" in result.output
    with pytest.raises(InvalidArgument, match="limit: max_lookup_tokens must be a whole number >= 1, got 0"):
        with_limits(ServerConfig(), {"max_lookup_tokens": 0})
