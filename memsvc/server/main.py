"""Serving a knowledge base over gRPC: health checking, reflection, message-size limits."""
import ctypes
import logging
import signal
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from memsvc.core.errors import FailedPrecondition, InvalidArgument, MemsvcError
from memsvc.search.config import SearchConfig
from memsvc.search.manager import IndexManager
from memsvc.server import mosaic_servicer, search_servicer
from memsvc.server.auth import AuthInterceptor, check_exposure, load_keys
from memsvc.server.interceptors import ErrorInterceptor, RawReplies, StreamOfUnaryCalls, UnparsableRequestInterceptor
from memsvc.server.metrics import Metrics, MetricsInterceptor, ServingState, start_http
from memsvc.server.replica import Follower
from memsvc.server.replication import ReplicaGate, ReplicationServicer, primary_state
from memsvc.server.servicer import KnowledgeServicer
from memsvc.store import KnowledgeBase, StoreConfig
from memsvc.store.mosaic_input import MosaicLimits
from memsvc.v1 import knowledge_pb2 as pb
from memsvc.v1 import knowledge_pb2_grpc as pb_grpc
from memsvc.v1 import search_pb2 as spb
from memsvc.v1 import replication_pb2_grpc as rpb_grpc
from memsvc.v1 import search_pb2_grpc as spb_grpc
from memsvc.wire import mosaic as mosaic_wire
from memsvc.wire import replication as replication_wire
from memsvc.wire import search as search_wire
from memsvc.wire.knowledge import SERVICE

LOG = logging.getLogger("memsvc.server")
SERVICES = (SERVICE, mosaic_wire.SERVICE, search_wire.SERVICE, replication_wire.SERVICE)
HEALTH_NAMES = ("", *SERVICES)  # the names the health service answers for: the server, and each service


@dataclass
class ServerConfig:
    data_dir: Path = Path("./memsvc-data")
    host: str = "127.0.0.1"
    port: int = 50051  # 0 picks a free port
    max_workers: int = 32
    # An open LookupStream/SearchStream holds one worker thread for its life: at most this many
    # are open at once (RESOURCE_EXHAUSTED beyond; clients then send unary calls), which leaves
    # max_workers - max_streams threads for unary calls and health checks whatever streams do.
    max_streams: int = 16
    stream_idle_seconds: float = 60.0  # a stream with no message for this long is ended (UNAVAILABLE)
    # 256 MiB both ways: a 4096-token lookup of 4 layers x 2048 fp16 is 64 MiB; larger
    # requests get RESOURCE_EXHAUSTED from gRPC itself, larger lookups from Lookup.
    max_message_bytes: int = 256 << 20
    max_lookup_tokens: int = 65536
    grace_seconds: float = 5.0  # how long in-flight calls may finish on shutdown
    api_keys_file: Path | None = None  # '<read|write> <key>' lines; MEMSVC_{READ,WRITE}_KEYS add more
    insecure: bool = False  # allow a non-loopback host without API keys
    tls_cert: Path | None = None  # PEM certificate chain and private key: serve TLS only
    tls_key: Path | None = None
    metrics_port: int | None = None  # HTTP /metrics /healthz /readyz on this port (0: a free one)
    drain_seconds: float = 0.0  # on SIGTERM, answer NOT_SERVING this long before stopping (balancers)
    build_niceness: int = SearchConfig.build_niceness  # index builds run this much nicer than the server
    # the most work one call may ask for: QueryMosaic (queries, queries x pairs, k, LSH tables) and
    # Search / CreateIndex (queries, queries x rows, k, index parameters); see each class
    mosaic_limits: MosaicLimits = field(default_factory=MosaicLimits)
    search: SearchConfig = field(default_factory=SearchConfig)
    follow: str | None = None  # a primary's host:port: serve as its read replica (memsvc/server/replica.py)
    min_version_wait: float = 5.0  # a replica's read naming a min_version it lacks waits this long, then UNAVAILABLE
    follow_api_key: str | None = None  # the key and CA certificate the replica presents to its primary
    follow_tls_ca: Path | None = None


def create_server(kb: KnowledgeBase, config: ServerConfig, metrics: Metrics | None = None,
                  state: ServingState | None = None, follower=None):
    """A started, SERVING gRPC server over ``kb``; returns (server, port, serving_state, index_manager).
    Interceptors run outermost first: metrics (sees every status), auth, streams as unary calls
    (whose messages get the metrics and error wraps too), unparsable requests, error mapping,
    on a read replica (``follower``: replica.Follower) its gate, and Lookup's reply bytes sent as
    written."""
    if not 0 < config.max_streams < config.max_workers:
        raise InvalidArgument(f"max_streams: {config.max_streams} must be above 0 and below max_workers "
                              f"({config.max_workers}), which serve unary calls too")
    keys = load_keys(config.api_keys_file)
    check_exposure(config.host, keys, config.insecure)
    measured = [MetricsInterceptor(metrics)] if metrics else []
    gate = [ReplicaGate(kb.commits, config.follow, config.min_version_wait)] if follower else []
    checked = [UnparsableRequestInterceptor(), ErrorInterceptor(), *gate, RawReplies({f"/{SERVICE}/Lookup"})]
    replica_state = follower.state if follower else primary_state(kb)
    servicer = KnowledgeServicer(kb, config, follower and (lambda: replication_wire.state_to_pb(follower.state())))
    searcher = search_servicer.SearchServicer(IndexManager(kb, replace(config.search, build_niceness=config.build_niceness)))
    streams = StreamOfUnaryCalls({
        f"/{SERVICE}/LookupStream": (f"/{SERVICE}/Lookup", _unary(servicer.Lookup, pb.LookupRequest, pb.LookupResponse)),
        f"/{search_wire.SERVICE}/SearchStream": (f"/{search_wire.SERVICE}/Search",
                                                     _unary(searcher.Search, spb.SearchRequest, spb.SearchResponse)),
    }, measured + checked, config.max_streams, config.stream_idle_seconds)
    interceptors = measured + ([AuthInterceptor(keys)] if keys else []) + [streams] + checked
    options = [("grpc.max_send_message_length", config.max_message_bytes),
               ("grpc.max_receive_message_length", config.max_message_bytes),
               ("grpc.so_reuseport", 0)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=config.max_workers),
                         interceptors=interceptors, options=options)
    pb_grpc.add_KnowledgeServiceServicer_to_server(servicer, server)
    mosaic_servicer.add_to_server(kb, server, config.mosaic_limits)
    spb_grpc.add_SearchServiceServicer_to_server(searcher, server)
    rpb_grpc.add_ReplicationServiceServicer_to_server(ReplicationServicer(kb, replica_state), server)
    indexes = searcher.manager
    if metrics is not None:
        metrics.track_store(lambda: kb.version, indexes.list, replica_state)
    state = state or ServingState(health.HealthServicer(), HEALTH_NAMES)
    health_pb2_grpc.add_HealthServicer_to_server(state.health, server)
    reflection.enable_server_reflection([*SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    address = f"{config.host}:{config.port}"
    port = server.add_secure_port(address, tls_credentials(config)) if config.tls_cert or config.tls_key \
        else server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {config.host}:{config.port}")
    server.start()
    state.set(True)
    return server, port, state, indexes


def _unary(behaviour, request_type, response_type):
    return grpc.unary_unary_rpc_method_handler(behaviour, request_deserializer=request_type.FromString,
                                               response_serializer=response_type.SerializeToString)


def tls_credentials(config: ServerConfig) -> grpc.ServerCredentials:
    if not (config.tls_cert and config.tls_key):
        raise InvalidArgument("tls: give both --tls-cert and --tls-key")
    return grpc.ssl_server_credentials([(Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes())])


# glibc mallopt parameters
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def reuse_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Let replies reuse heap memory instead of fresh pages. glibc gives every allocation above
    128 KiB (a Lookup reply of 8 rows or more, its gather and gRPC's copy) its own mmap and unmaps
    it at free, so each reply page-faults its way in: measured ~550 faults and over half the
    server CPU of a 48-row Lookup. Raise the mmap threshold to 32 MiB (glibc's maximum) and keep
    freed memory for the next reply. False where there is no glibc."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold) and mallopt(M_TRIM_THRESHOLD, trim_threshold))


def open_store(data_dir) -> KnowledgeBase:
    """The KB to serve. Damage the store does not name itself (a flipped byte in the catalog's
    first page surfaced as a UnicodeDecodeError, issue 19) is one FailedPrecondition naming the
    directory and what failed, in one line as `memsvc serve` prints it."""
    try:
        return KnowledgeBase(StoreConfig(data_dir=Path(data_dir)))
    except Exception as e:  # noqa: BLE001 - any damage: one line (SQLite quotes schema text with newlines)
        LOG.debug("opening %s failed", data_dir, exc_info=True)
        known = isinstance(e, MemsvcError)
        message = str(e) if known else f"data: {data_dir} does not load ({type(e).__name__}: {e})"
        raise (type(e) if known else FailedPrecondition)(" ".join(message.split())) from None


class Service:
    """One running server: the store opened (a replica: bootstrapped or resumed, then following its
    primary in a thread), its gRPC server started. ``serve`` runs one until a signal; a Ray actor
    (memsvc/server/cluster.py) holds one. ``ended`` is set when a replica's primary cannot
    continue it (``stale`` says why); ``stop()`` shuts down in order."""

    def __init__(self, config: ServerConfig, metrics: Metrics | None = None, state: ServingState | None = None):
        self.config, self.stale, self.ended = config, [], threading.Event()
        self.state = state or ServingState(health.HealthServicer(), HEALTH_NAMES)
        self.follower = None
        if config.follow:  # SIGTERM kills a bootstrap outright: it leaves nothing to serve (replica.py)
            self.follower = Follower(config.data_dir, config.follow, config.follow_api_key, config.follow_tls_ca)
            self.kb = self.follower.prepare()
        else:
            self.kb = open_store(config.data_dir)
        self.server, self.port, _, self.indexes = create_server(self.kb, config, metrics, self.state, self.follower)
        if self.follower:
            self.follower.start(self.kb, on_stale=lambda why: (self.stale.append(why), self.ended.set()))

    def replication(self) -> dict:
        """ReplicaState's fields (knowledge.proto): a replica's applied version and lag, or a primary's head."""
        return self.follower.state() if self.follower else primary_state(self.kb)()

    def stop(self):
        """NOT_SERVING, drain, stop following, let in-flight calls finish, close the store."""
        self.state.set(False)
        time.sleep(self.config.drain_seconds)
        if self.follower:
            self.follower.stop()
        self.server.stop(self.config.grace_seconds).wait()
        self.indexes.close()  # query logs saved, search worker stopped
        self.kb.close()


def with_limits(config: ServerConfig, limits: dict) -> ServerConfig:
    """``config`` with work limits set by name (``memsvc serve --limit NAME=N``): max_lookup_tokens,
    max_message_bytes, ``mosaic.<MosaicLimits field>`` or ``search.<SearchConfig max_* field>``."""
    known = {"": ("max_lookup_tokens", "max_message_bytes"),
             "mosaic": tuple(f.name for f in fields(MosaicLimits)),
             "search": tuple(f.name for f in fields(SearchConfig) if f.name.startswith("max_"))}
    chosen = {part: {} for part in known}
    for key, value in limits.items():
        part, _, name = key.rpartition(".")
        if name not in known.get(part, ()):
            names = [f"{p}.{n}" if p else n for p, group in known.items() for n in group]
            raise InvalidArgument(f"limit: {key!r} is not a limit; one of {', '.join(names)}")
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidArgument(f"limit: {key} must be a whole number >= 1, got {value!r}")
        chosen[part][name] = value
    return replace(config, **chosen[""], mosaic_limits=replace(config.mosaic_limits, **chosen["mosaic"]),
                   search=replace(config.search, **chosen["search"]))


def serve(config: ServerConfig, ready=None):
    """Serve until SIGTERM/SIGINT: then NOT_SERVING, let in-flight calls finish, close the store."""
    if not reuse_freed_memory():
        LOG.info("allocator: not glibc, large replies use fresh pages")
    check_exposure(config.host, load_keys(config.api_keys_file), config.insecure)  # fail before loading
    metrics, state = Metrics(), ServingState(health.HealthServicer(), HEALTH_NAMES)
    if config.metrics_port is not None:  # up before the store opens: /readyz says 503 while it loads
        _, http_port = start_http(config.host, config.metrics_port, metrics, state)
        print(f"memsvc: metrics and probes on http://{config.host}:{http_port}/metrics", flush=True)
    service = Service(config, metrics, state)
    LOG.info("memsvc serving %s on %s:%d (head version %d)", config.data_dir, config.host, service.port, service.kb.version)
    # The handler only notes the signal, and the main thread looks every 0.2 s: Event.set() in a
    # handler can deadlock on the Event's own lock, and a wait without a timeout may never see a
    # signal that another thread took (a SIGTERM was lost this way under load). Installed before
    # the line that says "serving", so a SIGTERM sent on seeing it drains too.
    signalled = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _: signalled.append(signum))
    role = f", a read replica of {config.follow}" if service.follower else ""
    print(f"memsvc: serving {config.data_dir} on {config.host}:{service.port} (version {service.kb.version}{role})", flush=True)
    if ready is not None:
        ready(service.port)
    while not signalled and not service.ended.wait(0.2):
        pass
    service.stop()
    print("memsvc: stopped", flush=True)
    if service.stale:
        raise FailedPrecondition(service.stale[0])
