"""`memsvc serve` as a child process on a free loopback port, for tests, benchmarks and tools."""
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def spawn_server(data_dir, *args, env=None, log=None, preexec_fn=None, timeout=None):
    """Start `memsvc serve --no-seed` over data_dir on port 0; returns (process, "host:port").

    Its output is drained in a thread (into the file ``log`` if given) so that a chatty server
    never blocks on a full pipe, its first lines included. ``timeout``: seconds it may take to start serving, else it is
    killed and RuntimeError raised (a replica bootstrapping from a primary that never answers)."""
    cmd = [sys.executable, "-m", "memsvc", "serve", "--no-seed", "--data", str(data_dir), "--port", "0", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            env={**os.environ, **(env or {})}, preexec_fn=preexec_fn)
    deadline = threading.Timer(timeout, proc.kill) if timeout is not None else None
    if deadline is not None:
        deadline.start()
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            m = re.search(r"serving .* on ([\d.]+):(\d+) ", line)
            if m:
                if log:
                    Path(log).write_text("".join(lines))
                threading.Thread(target=_drain, args=(proc.stdout, log), daemon=True).start()
                return proc, f"{m.group(1)}:{m.group(2)}"
    finally:
        if deadline is not None:
            deadline.cancel()
    raise RuntimeError(f"memsvc serve did not start (exit {proc.wait()}):\n{''.join(lines)}")


def stop_server(proc, timeout=20):
    """SIGTERM (graceful shutdown), then SIGKILL if it does not exit in time."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _drain(stream, log):
    with open(log or os.devnull, "a") as out:
        for line in stream:
            out.write(line)
            out.flush()
