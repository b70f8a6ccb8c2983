"""Serving a knowledge base over gRPC: health checking, reflection, message-size limits."""
import logging
import signal
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from memsvc.servicer import ErrorInterceptor, KnowledgeServicer
from memsvc.store import KnowledgeBase, StoreConfig
from memsvc.v1 import knowledge_pb2 as pb
from memsvc.v1 import knowledge_pb2_grpc as pb_grpc

LOG = logging.getLogger("memsvc.server")
SERVICE = pb.DESCRIPTOR.services_by_name["KnowledgeService"].full_name


@dataclass
class ServerConfig:
    data_dir: Path = Path("./memsvc-data")
    host: str = "127.0.0.1"
    port: int = 50051  # 0 picks a free port
    max_workers: int = 16
    # 256 MiB both ways: a 4096-token lookup of 4 layers x 2048 fp16 is 64 MiB; larger
    # requests get RESOURCE_EXHAUSTED from gRPC itself, larger lookups from Lookup.
    max_message_bytes: int = 256 << 20
    max_lookup_tokens: int = 65536
    grace_seconds: float = 5.0  # how long in-flight calls may finish on shutdown
    seed_demo: bool = True  # create the default demo knowledge base when data_dir holds none


def create_server(kb: KnowledgeBase, config: ServerConfig):
    """A started gRPC server over ``kb``; returns (server, port, health_servicer)."""
    options = [("grpc.max_send_message_length", config.max_message_bytes),
               ("grpc.max_receive_message_length", config.max_message_bytes),
               ("grpc.so_reuseport", 0)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=config.max_workers),
                         interceptors=[ErrorInterceptor()], options=options)
    pb_grpc.add_KnowledgeServiceServicer_to_server(KnowledgeServicer(kb, config), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection([SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    port = server.add_insecure_port(f"{config.host}:{config.port}")
    if port == 0:
        raise OSError(f"cannot listen on {config.host}:{config.port}")
    server.start()
    for name in ("", SERVICE):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, port, health_servicer


def open_kb(config: ServerConfig) -> KnowledgeBase:
    """Open the data directory, seeding the demo knowledge base on first run."""
    data = Path(config.data_dir)
    if config.seed_demo and not (data / "catalog.db").exists():
        from memsvc.demo import seed_demo_kb

        seed_demo_kb(data)
    return KnowledgeBase(StoreConfig(data_dir=data))


def serve(config: ServerConfig, ready=None):
    """Serve until SIGTERM/SIGINT: then NOT_SERVING, let in-flight calls finish, close the store."""
    kb = open_kb(config)
    server, port, health_servicer = create_server(kb, config)
    LOG.info("memsvc serving %s on %s:%d (head version %d)", config.data_dir, config.host, port, kb.version)
    print(f"memsvc: serving {config.data_dir} on {config.host}:{port} (version {kb.version})", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if ready is not None:
        ready(port)
    stop.wait()
    health_servicer.enter_graceful_shutdown()
    server.stop(config.grace_seconds).wait()
    kb.close()
    print("memsvc: stopped", flush=True)
