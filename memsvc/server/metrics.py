"""Prometheus metrics, serving state and the HTTP probes (/metrics, /healthz, /readyz).

One interceptor times every unary RPC and counts its status code, rows and bytes; commits and
the head version come from the responses and the store. The HTTP server runs on its own port so
that scraping never competes with the gRPC thread pool.

    /healthz   200 while the process runs (liveness)
    /readyz    200 only while the gRPC health service says SERVING (tables mapped, indexes
               loaded, not shutting down); 503 otherwise
    /metrics   Prometheus text format
"""
import functools
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from grpc_health.v1 import health_pb2
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from memsvc.server.interceptors import UnaryInterceptor
from memsvc.wire import lookup as lookup_wire

# 50 µs .. 10 s: a cached lookup is ~0.3 ms over Python gRPC, a big edit or diff seconds.
LATENCY_BUCKETS = (5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class StoreCollector:
    """Gauges read from the store at scrape time: the head version and each index's lag."""

    def __init__(self, head, indexes, replica=None):
        self.head, self.indexes, self.replica = head, indexes, replica

    def collect(self):
        yield GaugeMetricFamily("memsvc_head_version", "The newest commit id.", value=self.head())
        if self.replica is not None:  # replication.proto ReplicaState (a primary: its head, no lag)
            state = self.replica()
            yield GaugeMetricFamily("memsvc_replica_applied_version", "The newest version applied whole.",
                                    value=state["applied_version"])
            yield GaugeMetricFamily("memsvc_replica_lag_versions", "Versions of the primary not applied yet.",
                                    value=state["lag_versions"])
            yield GaugeMetricFamily("memsvc_replica_lag_seconds", "Age of the primary's head while not applied.",
                                    value=state["lag_seconds"])
            yield GaugeMetricFamily("memsvc_replica_connected", "1 while the Follow stream to the primary is open.",
                                    value=int(state["connected"]))
        commits = GaugeMetricFamily("memsvc_index_lag_commits", "Commits to an index's table it has not absorbed.", labels=["index"])
        rows = GaugeMetricFamily("memsvc_index_lag_rows", "Rows changed since an index's version (searched exactly).", labels=["index"])
        for info in self.indexes():
            commits.add_metric([info.name], info.lag_commits)
            rows.add_metric([info.name], info.lag_rows)
        yield commits
        yield rows


class Metrics:
    """The server's metrics in a registry of their own (several servers may share a process)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.latency = Histogram("memsvc_rpc_seconds", "RPC latency.", ["method"], buckets=LATENCY_BUCKETS, registry=r)
        self.codes = Counter("memsvc_rpc", "RPCs by method and status code.", ["method", "code"], registry=r)
        self.errors = Counter("memsvc_rpc_errors", "RPCs that did not end OK, by status code.", ["code"], registry=r)
        self.rows = Counter("memsvc_rows_served", "Rows (one token, one layer) sent in replies.", ["method"], registry=r)
        self.bytes = Counter("memsvc_bytes_served", "Reply bytes served, rows written to shared reply buffers included.", ["method"], registry=r)
        self.commits = Counter("memsvc_commits", "Commits made through the server.", ["method"], registry=r)
        self._children = {}  # (metric, label values) -> its child (_child)

    def track_store(self, head, indexes=list, replica=None):
        """Export the head version and index lag; ``indexes() -> [IndexInfo]`` (memsvc.search);
        ``replica() -> ReplicaState fields``: the applied version and lag."""
        self.registry.register(StoreCollector(head, indexes, replica))

    def observe(self, method, code: grpc.StatusCode, seconds, response=None):
        name = method.rsplit("/", 1)[-1]
        self._child(self.latency, name).observe(seconds)
        self._child(self.codes, name, code.name).inc()
        if code != grpc.StatusCode.OK:
            self._child(self.errors, code.name).inc()
        if response is None:
            return
        if isinstance(response, lookup_wire.LookupWire):  # Lookup replies are wire bytes
            self._child(self.bytes, name).inc(response.bytes_served)
            self._child(self.rows, name).inc(response.rows_served)
            return
        self._child(self.bytes, name).inc(response.ByteSize())
        fields = self._fields(response.DESCRIPTOR)
        if "rows" in fields and response.HasField("rows"):
            shape = list(response.rows.shape)
            self._child(self.rows, name).inc(math.prod(shape[:-1]) if shape else 0)
        commit = response.commit if "commit" in fields and response.HasField("commit") else response
        if "Commit" in commit.DESCRIPTOR.name and getattr(commit, "version", 0):  # CommitResult, PairsCommit
            self._child(self.commits, name).inc()

    def _child(self, metric, *labels):
        """metric.labels(*labels), kept: labels() takes a lock and builds a key on every call
        (~10 us of every Search's 26 us of metrics, issue 5)."""
        child = self._children.get((metric, labels))
        if child is None:
            child = self._children[metric, labels] = metric.labels(*labels)
        return child

    @staticmethod
    @functools.lru_cache(maxsize=None)
    def _fields(descriptor) -> frozenset:
        return frozenset(f.name for f in descriptor.fields)

    def text(self) -> bytes:
        return generate_latest(self.registry)


class MetricsInterceptor(UnaryInterceptor):
    """Latency, status code, rows and bytes of every unary-unary RPC and streamed lookup (outermost
    interceptor, so it also sees the codes that auth and error mapping produce)."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def wrap(self, method, handler):
        behaviour = handler.unary_unary

        def timed(request, context):
            start = time.perf_counter()
            try:
                response = behaviour(request, context)
            except BaseException:
                self.metrics.observe(method, context.code() or grpc.StatusCode.UNKNOWN, time.perf_counter() - start)
                raise
            self.metrics.observe(method, context.code() or grpc.StatusCode.OK, time.perf_counter() - start, response)
            return response

        return grpc.unary_unary_rpc_method_handler(timed, request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)


class ServingState:
    """One switch for readiness: the gRPC health service (every listed service) and /readyz."""

    def __init__(self, health_servicer, services=("",)):
        self.health, self.services = health_servicer, services
        self.ready = threading.Event()
        self.set(False)

    def set(self, serving: bool):
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in self.services:
            self.health.set(name, status)
        if serving:
            self.ready.set()
        else:
            self.ready.clear()


def start_http(host: str, port: int, metrics: Metrics, state: ServingState):
    """Serve /metrics, /healthz and /readyz in a daemon thread; returns (http_server, port)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self.reply(200, metrics.text(), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                self.reply(200, b"ok\n")
            elif path == "/readyz":
                ready = state.ready.is_set()
                self.reply(200 if ready else 503, b"ready\n" if ready else b"not ready\n")
            else:
                self.reply(404, b"not found\n")

        def reply(self, code, body, content_type="text/plain; charset=utf-8"):
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # scrapes every few seconds would flood the server log
            pass

    httpd = ThreadingHTTPServer((host.strip("[]"), port), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, name="memsvc-http", daemon=True).start()
    return httpd, httpd.server_address[1]
