"""Metrics, probes and graceful shutdown: /metrics counts what the server did, /readyz and the gRPC
health service say NOT_SERVING before the store is served and from SIGTERM on (a real process),
in-flight calls finish, and the store closes cleanly."""
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from clients.client import MemoryClient
from memsvc.core.errors import FailedPrecondition, NotFound
from memsvc.core.values import RowOp
from memsvc.server.main import HEALTH_NAMES, SERVICE
from memsvc.server.metrics import Metrics, ServingState, start_http
from memsvc.server.spawn import spawn_server, stop_server
from memsvc.store import KnowledgeBase, StoreConfig
from tests.conftest import WORDS, serving, small_bank


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port, path):
    """(status, body) of GET http://127.0.0.1:port/path."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def samples(port):
    """{(metric sample name, frozenset(labels)): value} scraped from /metrics."""
    status, body = http_get(port, "/metrics")
    assert status == 200
    return {(s.name, frozenset(s.labels.items())): s.value for f in text_string_to_metric_families(body) for s in f.samples}


def health_status(address):
    with grpc.insecure_channel(address) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5).status


@contextmanager
def probes(metrics, state):
    """/metrics, /healthz and /readyz over metrics and state, as serve() starts them; yields the HTTP port."""
    httpd, port = start_http("127.0.0.1", 0, metrics, state)
    try:
        yield port
    finally:
        httpd.shutdown()


@contextmanager
def metered(data):
    """An in-process server with its metrics and probes; yields (gRPC address, HTTP port)."""
    metrics, state = Metrics(), ServingState(health.HealthServicer(), HEALTH_NAMES)
    with probes(metrics, state) as port, serving(data, metrics, state) as address:
        yield address, port


@pytest.fixture
def data(tmp_path):
    with KnowledgeBase(StoreConfig(data_dir=tmp_path / "kb", create=True)) as kb:
        kb.import_table("stem", small_bank(), WORDS)
    return tmp_path / "kb"


def test_metrics_count_calls_rows_errors_and_commits(data):
    with metered(data) as (address, port):
        with MemoryClient(address) as c:
            for _ in range(3):
                c.lookup("stem", ["Spain", "Paris", "Spain"], layers=[0, 2])  # 2 unique tokens x 2 layers
            with pytest.raises(NotFound):
                c.lookup("stem", ["Atlantis"])
            c.edit("stem", [RowOp("scale", token="Spain", alpha=2.0)])
        m = samples(port)
        assert m[("memsvc_rpc_seconds_count", frozenset({("method", "Lookup")}))] == 4
        assert m[("memsvc_rpc_total", frozenset({("method", "Lookup"), ("code", "OK")}))] == 3
        assert m[("memsvc_rpc_total", frozenset({("method", "Lookup"), ("code", "NOT_FOUND")}))] == 1
        assert m[("memsvc_rpc_errors_total", frozenset({("code", "NOT_FOUND")}))] == 1
        assert m[("memsvc_rows_served_total", frozenset({("method", "Lookup")}))] == 3 * 2 * 2
        assert m[("memsvc_bytes_served_total", frozenset({("method", "Lookup")}))] > 3 * 2 * 2 * 8 * 4
        assert m[("memsvc_commits_total", frozenset({("method", "Edit")}))] == 1
        assert m[("memsvc_head_version", frozenset())] == 2
        assert http_get(port, "/healthz") == (200, "ok\n")
        assert http_get(port, "/readyz") == (200, "ready\n")
        assert http_get(port, "/nothing")[0] == 404


def test_not_serving_until_the_store_is_served(data):
    """serve()'s order: probes first (not ready), then the store, then SERVING."""
    state, metrics = ServingState(health.HealthServicer(), HEALTH_NAMES), Metrics()
    request = health_pb2.HealthCheckRequest(service=SERVICE)
    with probes(metrics, state) as port:
        assert http_get(port, "/readyz")[0] == 503
        assert state.health.Check(request, None).status == health_pb2.HealthCheckResponse.NOT_SERVING
        with serving(data, metrics, state) as address:
            assert http_get(port, "/readyz")[0] == 200
            assert health_status(address) == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.slow
def test_sigterm_drains_finishes_calls_and_closes_the_store(data):
    port = free_port()
    log = data.parent / "server.log"
    proc, address = spawn_server(data, "--metrics-port", str(port), "--drain-seconds", "2", log=log)
    acked, errors, stop = [], [], threading.Event()

    def editor():
        with MemoryClient(address, timeout=10) as c:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    acked.append(c.edit("stem", [RowOp("scale", token="Berlin", alpha=1.0 + i / 1000)]).version)
                except FailedPrecondition as e:  # UNAVAILABLE once the server refuses calls
                    errors.append(str(e))
                    return

    thread = threading.Thread(target=editor)
    thread.start()
    while len(acked) < 5:
        assert thread.is_alive()
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 30
    while health_status(address) != health_pb2.HealthCheckResponse.NOT_SERVING:
        assert time.monotonic() < deadline, "the server did not report NOT_SERVING within 30 s of SIGTERM"
        # the drain window: NOT_SERVING is visible while calls are still answered
    assert http_get(port, "/readyz")[0] == 503
    with MemoryClient(address) as c:
        seen = acked[-1]  # read before the lookup: the editor may ack more commits while it runs
        assert c.lookup("stem", ["Berlin"]).version >= seen  # still answering while draining
    assert proc.wait(timeout=30) == 0
    stop.set()
    thread.join()
    for _ in range(100):  # the drain thread writes the last lines just after the exit
        if "memsvc: stopped" in log.read_text():
            break
        time.sleep(0.05)
    assert "memsvc: stopped" in log.read_text()
    assert all("cannot reach" in e for e in errors)
    with KnowledgeBase(StoreConfig(data_dir=data)) as kb:  # the lock was released, nothing was lost
        assert kb.version >= acked[-1]
        assert set(acked) <= set(kb.list_versions())
    stop_server(proc)


def test_metrics_report_index_lag_in_commits_and_rows(data):
    from clients.search import SearchClient

    with metered(data) as (address, port):
        with MemoryClient(address) as c:
            SearchClient(c).create("near", "stem", layer=1, config={"kind": "exact"}, wait=True)
            assert samples(port)[("memsvc_index_lag_commits", frozenset({("index", "near")}))] == 0
            c.edit("stem", [RowOp("scale", token="Spain", alpha=2.0, layers=[1])])
            c.edit("stem", [RowOp("scale", token="Paris", alpha=2.0, layers=[0])])  # another layer: no row lag
        m = samples(port)
        assert m[("memsvc_index_lag_commits", frozenset({("index", "near")}))] == 2
        assert m[("memsvc_index_lag_rows", frozenset({("index", "near")}))] == 1
