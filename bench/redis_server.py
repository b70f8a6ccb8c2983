"""A throwaway redis-server for benchmarks: loopback only, a free port, no persistence.

    >>> with redis_server() as r:      # a redis.Redis client on the private instance
    ...     r.set("k", b"v")

Installs Debian's redis-server with apt-get when it is missing (ensure_debian_tool), and stops the instance on exit.
"""
import logging
import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager

LOG = logging.getLogger("bench.redis_server")


def ensure_debian_tool(tool: str, *packages: str) -> str:
    """Path of ``tool``, installing the Debian ``packages`` (default: one named like it) first if needed."""
    path = shutil.which(tool)
    if path:
        return path
    install = ["apt-get", "install", "-y", *(packages or (tool,))]
    LOG.info("%s missing: %s", tool, " ".join(install))
    if subprocess.run(install, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update"], check=True, capture_output=True)
        subprocess.run(install, check=True, capture_output=True)
    return shutil.which(tool)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def redis_server(timeout: float = 10.0):
    """A redis.Redis client on a private redis-server; the server is stopped on exit."""
    import redis

    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as workdir:
        proc = subprocess.Popen([ensure_debian_tool("redis-server"), "--port", str(port), "--bind", "127.0.0.1",
                                 "--save", "", "--appendonly", "no", "--dir", workdir,
                                 "--protected-mode", "yes", "--daemonize", "no"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(host="127.0.0.1", port=port)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"redis-server did not start on port {port}")
                    time.sleep(0.05)
            yield client
        finally:
            client.close()
            proc.terminate()
            proc.wait(timeout)
