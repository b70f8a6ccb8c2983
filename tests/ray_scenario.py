"""The Ray deployment end to end (run by tests/test_cluster.py in a process of its own): a
`ray.cluster_utils.Cluster` of three nodes on this machine, `memsvc cluster up` on it, then

- edits through the primary reach both replicas in order and byte for byte at every version;
- a Ray task pinned to another node reads its own write through MemoryClient.for_cluster();
- a replica actor SIGKILLed: Ray restarts it on its node, it resumes and converges;
- the primary SIGKILLed: replicas keep serving reads, writes fail naming the primary, and once
  Ray restarts it (same port) the replicas follow its new commits;
- `memsvc cluster status` and `down` from the command line.

Ray starts its daemons with a preexec_fn (a forked copy of the process runs Python before exec),
which is why this is not run inside a pytest worker. Prints "ray scenario: ok" when all held
(Ray's own messages about the killed actors may follow it)."""
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clients.client import MemoryClient  # noqa: E402
from memsvc.core.errors import FailedPrecondition  # noqa: E402
from memsvc.server import cluster as deployment  # noqa: E402
from tests.conftest import served_kb  # noqa: E402
from tests.test_replica import assert_same, edit, retry, wait_version  # noqa: E402

NODE = dict(num_cpus=1, object_store_memory=80 << 20)
WAIT = 90.0  # seconds: an actor (re)start, a bootstrap, a catch-up


def until(check, what, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.2)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def rows_by_role(rows):
    return [r for r in rows if r["role"] == "primary"], [r for r in rows if r["role"] == "replica"]


@ray.remote(num_cpus=0)
def write_then_read(value):
    """On a worker node: a write through the primary, read back at once from this node's replica."""
    with MemoryClient.for_cluster() as client:
        version = edit(client, 5, value)
        return client.address, version, client.lookup("stem", [5]).rows[0].tolist()


def main(tmp: Path):
    cluster = Cluster(initialize_head=True, head_node_args=dict(NODE, include_dashboard=False))
    try:
        for _ in range(2):
            cluster.add_node(**NODE)
        ray.init(address=cluster.address, namespace=deployment.NAMESPACE, log_to_driver=False, logging_level="ERROR")
        scenario(cluster, tmp)
    finally:
        ray.shutdown()
        cluster.shutdown()


def scenario(cluster, tmp: Path):
    data = served_kb(tmp / "primary")
    (primary,), replicas = rows_by_role(deployment.up(data, tmp / "replicas", port=free_port(), insecure=True))
    assert len(replicas) == 2 and len({r["node"] for r in replicas + [primary]}) == 3, replicas
    print("up:", primary["address"], [r["address"] for r in replicas], flush=True)

    # Edits through the primary, on every replica byte for byte at every version.
    with MemoryClient(primary["address"]) as p:
        for i in range(6):
            edit(p, i, float(i + 1))
        for r in replicas:
            with MemoryClient(r["address"]) as c:
                wait_version(c, p.version, WAIT)
                assert_same(p, c, range(1, p.version + 1))
        print("replicated:", p.version, flush=True)

        # Read your writes from a task on the node of the first replica.
        node = replicas[0]["node"]
        placed = write_then_read.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
        address, version, row = ray.get(placed.remote(42.0), timeout=WAIT)
        assert address == replicas[0]["address"] and version == p.version and row == [[42.0] * 8] * 3, (address, version, row)

        # A replica SIGKILLed: Ray restarts it on its node, it resumes from its applied version.
        victim = replicas[1]
        os.kill(victim["pid"], signal.SIGKILL)
        edit(p, 7, 7.5)
        until(lambda: any(r.get("pid") not in (None, victim["pid"]) and r.get("node") == victim["node"]
                          and r.get("applied_version") == p.version for r in deployment.status(timeout=5)),
              "the killed replica restarted and caught up")
        with MemoryClient(victim["address"]) as c:  # the same port after the restart
            assert_same(p, c, range(1, p.version + 1))
        head = p.version
    print("replica restarted:", head, flush=True)

    # The primary SIGKILLed: reads go on, writes fail naming it, and after Ray restarts it the
    # replicas follow its new commits.
    os.kill(primary["pid"], signal.SIGKILL)
    with MemoryClient(replicas[0]["address"], primary=primary["address"], timeout=5) as c:
        assert c.version == head
        assert c.lookup("stem", [5]).rows[0].tolist() == [[42.0] * 8] * 3
        try:
            edit(c, 1, 0.0)
            raise AssertionError("a write succeeded with the primary dead")
        except FailedPrecondition as e:
            assert primary["address"] in str(e), e
    with MemoryClient(primary["address"], timeout=5) as p:
        version = retry(lambda: edit(p, 2, 2.5), timeout=WAIT)
        assert version == head + 1
        for r in replicas:
            with MemoryClient(r["address"]) as c:
                wait_version(c, version, WAIT)
                assert_same(p, c, range(1, version + 1))
    print("primary restarted:", version, flush=True)

    # The command line, as an operator runs it against the same cluster.
    env = dict(os.environ, RAY_ADDRESS=cluster.address)
    out = subprocess.run([sys.executable, "-m", "memsvc", "cluster", "status"], env=env, capture_output=True,
                         text=True, timeout=WAIT).stdout
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["primary", "replica", "replica"], out
    assert all(line.split()[2] == str(version) for line in out.splitlines()[1:]), out
    again = subprocess.run([sys.executable, "-m", "memsvc", "cluster", "up", "--data", str(data), "--insecure"],
                           env=env, capture_output=True, text=True, timeout=WAIT)
    assert again.returncode == 1 and "Error: memsvc is already up" in again.stderr, again.stderr
    out = subprocess.run([sys.executable, "-m", "memsvc", "cluster", "down"], env=env, capture_output=True,
                         text=True, timeout=WAIT).stdout
    assert out.startswith("stopped 3 servers: primary, replica-"), out
    assert deployment.actors() == {}
    print("ray scenario: ok", flush=True)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        main(Path(tmp))
