"""`memsvc serve` as a child process on a free loopback port, for tests, benchmarks and tools."""
import os
import queue
import re
import resource
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def spawn_server(data_dir, *args, env=None, log=None, memory_limit=None, timeout=120.0):
    """Start `memsvc serve --no-seed` over data_dir on port 0; returns (process, "host:port").

    Its output is drained in a thread (into the file ``log`` if given) so that a chatty server
    never blocks on a full pipe, its first lines included. ``memory_limit`` (bytes) caps the child's address space: set
    from here with prlimit, since a ``preexec_fn`` would run Python in a forked copy of this
    multi-threaded process, which can deadlock before exec while holding this process's pipes.
    A server that has not printed its address within ``timeout`` seconds (a replica bootstrapping
    from a primary that never answers, say) is killed and RuntimeError raised."""
    cmd = [sys.executable, "-m", "memsvc", "serve", "--no-seed", "--data", str(data_dir), "--port", "0", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            env={**os.environ, **(env or {})})
    if memory_limit is not None:
        resource.prlimit(proc.pid, resource.RLIMIT_AS, (memory_limit, memory_limit))
    lines, address = [], queue.Queue()
    threading.Thread(target=_read, args=(proc.stdout, lines, address, log), daemon=True).start()
    try:
        found = address.get(timeout=timeout)
    except queue.Empty:
        found = None
        stop_server(proc, timeout=5)
    if found is None:
        raise RuntimeError(f"memsvc serve did not start (exit {proc.wait(timeout=30)}):\n{''.join(lines)}")
    return proc, found


def stop_server(proc, timeout=20):
    """SIGTERM (graceful shutdown), then SIGKILL if it does not exit in time."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


def _read(stream, lines, address, log):
    """Copy the server's output into ``log``, and its first lines into ``lines`` until it names
    its address (put on the queue); None on the queue when the output ends first."""
    with open(log or os.devnull, "a") as out:
        for line in stream:
            out.write(line)
            out.flush()
            if lines is None:
                continue
            lines.append(line)
            m = re.search(r"serving .* on ([\d.]+):(\d+) ", line)
            if m:
                address.put(f"{m.group(1)}:{m.group(2)}")
                lines = None
    if lines is not None:
        address.put(None)
