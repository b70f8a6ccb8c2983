"""Python child processes of the search service (index builds, the search worker): started
with this checkout on their path and killed when the server exits."""
import atexit
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUNNING: set = set()  # children still running, killed when the server exits
atexit.register(lambda: [proc.kill() for proc in list(RUNNING)])


def start_python(code, *args, **popen) -> subprocess.Popen:
    """`python -c code args...` in a fresh interpreter (no fork of a threaded gRPC server, no
    re-import of the caller's __main__), registered in RUNNING; the caller discards it there."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=env, **popen)
    RUNNING.add(proc)
    return proc
