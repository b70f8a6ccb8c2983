"""Searches of diskann kinds in a child process: diskannpy holds the GIL for a whole call, so in
the server process one search would stall every other RPC for its length."""
import os
import pickle
import subprocess
import sys
import threading
from collections import OrderedDict

from memsvc.core.errors import FailedPrecondition
from memsvc.search.children import RUNNING, start_python

GIL_HOLDING_KINDS = ("diskann", "diskann_dynamic", "diskann_disk")  # diskannpy: one call holds the GIL


def serve_searches(cache_size=4, niceness=0):
    """The search worker's loop: pickled (key, path, queries, k, params) on stdin, pickled
    ("ok", (ids, dist)) or ("error", (class name, message)) on the fd that was stdout. Indexes
    are loaded from `path` on first use and kept (LRU) under `key`."""
    from indexes.ann import load_index

    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # C++ prints (diskannpy) go to stderr, never into the replies
    os.nice(niceness)
    cache = OrderedDict()
    while True:
        try:
            key, path, queries, k, params = pickle.load(sys.stdin.buffer)
        except EOFError:  # the server closed the pipe: exit
            return
        try:
            if key not in cache:
                cache[key] = load_index(path)
                while len(cache) > cache_size:
                    cache.popitem(last=False)
            cache.move_to_end(key)
            reply = ("ok", cache[key].search(queries, k, params=params))
        except Exception as e:  # noqa: BLE001 - reported to the caller, which raises it
            reply = ("error", (type(e).__name__, str(e)))
        pickle.dump(reply, replies)
        replies.flush()


class SearchWorker:
    """Runs index searches in a child process. diskannpy holds the GIL for a whole call (issue 5:
    a batch-64 search stalled every Lookup and health check of the server for its length); in
    the worker it holds the worker's GIL, and the server's threads only wait on a pipe, which
    releases theirs. Started on first use (or `start()`), restarted if it dies."""

    def __init__(self, niceness=0):
        self._proc, self.niceness = None, int(niceness)
        self._lock = threading.Lock()  # one request in flight: replies come back in order

    def start(self):
        with self._lock:
            self._ensure()

    @property
    def process(self) -> subprocess.Popen | None:
        """The child process now (None before the first search or after close)."""
        return self._proc

    def _ensure(self):
        if self._proc is None or self._proc.poll() is not None:
            code = f"from memsvc.search.search_worker import serve_searches; serve_searches(niceness={self.niceness})"
            self._proc = start_python(code, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        return self._proc

    def search(self, key, path, queries, k, params):
        """index.search(queries, k, params=params) of the index saved at `path`, in the worker."""
        from memsvc.core import errors

        with self._lock:
            proc = self._ensure()
            try:
                pickle.dump((key, str(path), queries, k, params), proc.stdin)
                proc.stdin.flush()
                status, value = pickle.load(proc.stdout)
            except (EOFError, OSError, pickle.UnpicklingError):
                self._stop()
                raise FailedPrecondition("index: the search worker exited during the search; it restarts on the next one") from None
        if status == "error":
            name, message = value
            error = getattr(errors, name, None)
            raise (error if isinstance(error, type) and issubclass(error, errors.MemsvcError) else FailedPrecondition)(message)
        return value

    def _stop(self):
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            RUNNING.discard(self._proc)
            self._proc = None

    def close(self):
        with self._lock:
            if self._proc is not None:
                self._proc.stdin.close()  # the worker exits at EOF
                try:
                    self._proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
            self._stop()

