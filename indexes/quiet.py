"""Silence C/C++ libraries that print straight to file descriptors 1 and 2.

diskannpy (and faiss's k-means warnings) write from C++ with printf/std::cout, which bypasses
sys.stdout, so redirecting Python streams does nothing: we must dup2 /dev/null over the fds.
The fds are process-wide, so a lock with a depth count makes nested and concurrent uses safe;
anything another thread prints while a call is silenced is lost (the price of fd redirection).
"""

import ctypes
import os
import sys
import threading
from contextlib import contextmanager

_lock = threading.Lock()
_depth = 0
_saved_fds: list[int] = []
_libc = ctypes.CDLL(None)


def _flush_all():
    """Flush Python's buffers and C stdio's, so nothing buffered leaks across the switch."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, ValueError):  # replaced or closed stream
            pass
    _libc.fflush(None)


@contextmanager
def quiet(fds=(1, 2)):
    """Point `fds` at /dev/null for the duration of the block, then restore them."""
    global _depth, _saved_fds
    with _lock:
        if _depth == 0:
            _flush_all()
            _saved_fds = [os.dup(fd) for fd in fds]
            devnull = os.open(os.devnull, os.O_WRONLY)
            for fd in fds:
                os.dup2(devnull, fd)
            os.close(devnull)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _flush_all()
                for fd, saved in zip(fds, _saved_fds):
                    os.dup2(saved, fd)
                    os.close(saved)
                _saved_fds = []
