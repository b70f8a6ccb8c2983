"""memsvc on a Ray cluster (`memsvc cluster up|status|down`, `pip install memsvc[cluster]`).

The primary runs as a detached actor on the node that holds its data directory (the node `up`
runs on); every other alive node gets one read replica actor (node affinity), which bootstraps
its own data directory from the primary and follows its commit log (memsvc/server/replica.py).
Each actor is a whole memsvc server in the actor's process, listening on its node's address, so
killing the process kills the server and nothing is left behind. Ray restarts a dead actor on
the same node with the same arguments: a replica resumes from its applied version (or bootstraps
again when its files are gone), the primary reopens its store. Every server listens on the port
it first got in this `up` (kept in ``<data>.port`` beside its data directory), so the replicas'
link to a restarted primary and the workers' addresses stay valid. While the primary is down,
replicas serve reads at their applied version and writes fail naming the primary. Actors are
found by name (memsvc/wire/cluster.py)."""
import os
import uuid
from dataclasses import replace
from pathlib import Path

from memsvc.core.errors import FailedPrecondition
from memsvc.server.main import ServerConfig, Service
from memsvc.wire.cluster import NAMESPACE, PRIMARY, replica_name


class ServiceActor:
    """One memsvc server inside a Ray actor (wrapped by ray.remote in ``up``)."""

    def __init__(self, config: ServerConfig, run: str):
        """``run``: the id of the `up` that made this actor. A restart of it (same run) listens on
        the port it first got; a later `up` starts afresh on its own ``config.port``."""
        import ray

        self.node_id = ray.get_runtime_context().get_node_id()
        port_file = port_file_of(config.data_dir)
        first = port_file.read_text().split() if port_file.exists() else []
        port = int(first[1]) if first[:1] == [run] else config.port
        self.config = replace(config, host=ray.util.get_node_ip_address(), port=port)
        self.service = Service(self.config)
        port_file.write_text(f"{run} {self.service.port}")

    def address(self) -> str:
        return f"{self.config.host}:{self.service.port}"

    def status(self) -> dict:
        """Role, node, address, process, data directory, and ReplicaState's fields."""
        return dict(self.service.replication(), node=self.node_id, address=self.address(), pid=os.getpid(),
                    data=str(self.config.data_dir))

    def stop(self):
        self.service.stop()


def port_file_of(data_dir) -> Path:
    return Path(f"{Path(data_dir).resolve()}.port")


def up(data_dir, replica_data=None, port: int = 50051, **config) -> list:
    """Start the primary over ``data_dir`` on this node and a replica on every other alive node
    (its data in ``replica_data``/<node id>, default ``<data_dir>-replicas``); returns status()
    once every server answers. ``config``: ServerConfig fields for every server (api_keys_file,
    insecure, follow_api_key, ...). Call connect() first."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if actors():
        raise FailedPrecondition(f"memsvc is already up on this Ray cluster (namespace {NAMESPACE!r}): `memsvc cluster down` first")
    here = ray.get_runtime_context().get_node_id()
    replica_root = Path(replica_data or f"{Path(data_dir).resolve()}-replicas").resolve()
    remote = ray.remote(ServiceActor)

    run = uuid.uuid4().hex

    def start(name, node, server_config):
        placement = NodeAffinitySchedulingStrategy(node, soft=False)  # a restart stays with its files
        return remote.options(name=name, namespace=NAMESPACE, lifetime="detached", num_cpus=0, max_restarts=-1,
                              max_task_retries=-1, scheduling_strategy=placement).remote(server_config, run)

    primary = start(PRIMARY, here, ServerConfig(data_dir=Path(data_dir).resolve(), port=port, **config))
    primary_address = ray.get(primary.address.remote())
    for node in ray.nodes():
        if node["Alive"] and node["NodeID"] != here:
            data = replica_root / node["NodeID"][:16]
            data.parent.mkdir(parents=True, exist_ok=True)
            start(replica_name(node["NodeID"]), node["NodeID"],
                  ServerConfig(data_dir=data, port=0, follow=primary_address, **config))
    return status()


def connect(address: str | None = None):
    """Join the Ray cluster at ``address`` (None: RAY_ADDRESS, else the one running on this node)
    as a driver; a clear error when the ray package or the cluster is missing."""
    try:
        import ray
    except ImportError:
        raise FailedPrecondition("cluster: needs the ray package (pip install 'memsvc[cluster]')") from None
    if not ray.is_initialized():
        try:
            ray.init(address=address or os.environ.get("RAY_ADDRESS") or "auto", namespace=NAMESPACE,
                     logging_level="ERROR", log_to_driver=False)
        except (ConnectionError, RuntimeError) as e:
            raise FailedPrecondition(f"cluster: no Ray cluster at {address or 'this node'} ({e})") from None


def actors() -> dict:
    """{name: actor handle} of memsvc's actors on the connected Ray cluster."""
    import ray
    from ray.util import list_named_actors

    names = [a["name"] for a in list_named_actors(all_namespaces=True) if a["namespace"] == NAMESPACE]
    return {name: ray.get_actor(name, namespace=NAMESPACE) for name in names}


def status(timeout: float = 120.0) -> list:
    """One dict per server (ServiceActor.status), the primary first; a server that does not
    answer within ``timeout`` (restarting, or its node gone) is listed with its error."""
    import ray

    rows = []
    for name, actor in sorted(actors().items(), key=lambda item: item[0] != PRIMARY):
        try:
            rows.append(dict(ray.get(actor.status.remote(), timeout=timeout), name=name))
        except (ray.exceptions.RayError, TimeoutError) as e:
            rows.append(dict(name=name, role="primary" if name == PRIMARY else "replica", error=type(e).__name__))
    return rows


def down(timeout: float = 60.0) -> list:
    """Stop every memsvc actor (servers drain and close their stores) and remove it; returns the names."""
    import ray

    found = actors()
    for actor in found.values():
        try:
            ray.get(actor.stop.remote(), timeout=timeout)
        except (ray.exceptions.RayError, TimeoutError):
            pass  # dead or hung: killed below all the same
        ray.kill(actor, no_restart=True)
    return sorted(found)
