"""Files written whole or not at all: to a temporary sibling, fsync, rename, fsync the directory.
A crash or a full disk leaves the old file (or none), never a torn one (issue 19: a SIGTERM on a
full disk left the query log at 0 bytes, and every later `memsvc serve` died on it)."""
import os
import queue
import threading
from pathlib import Path


def write_atomic(path, write):
    """Calls ``write(file)`` on a temporary sibling of ``path`` opened for binary writing, then
    makes it ``path`` durably. On any error the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder):
    """Makes the names in ``folder`` (a rename, a new file) durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder):
    """fsyncs every file and directory under ``folder`` (a directory about to be renamed into place)."""
    for root, _, names in os.walk(folder):
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(root)


def read_ahead(items, depth=2, name="memsvc-read-ahead"):
    """Yields the elements of the iterable ``items``, produced by a thread of its own up to
    ``depth`` ahead, so that producing them (a file read and hashed, a gRPC stream pulled)
    overlaps the caller's work on each (a send, a write): both sides of a replica bootstrap were
    one thread doing everything in turn. The producer's error is raised here; when the caller
    stops early the producer stops at its next element."""
    ready, stop = queue.Queue(depth), threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for x in items:
                if not put((False, x)):
                    return
            put((True, None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            put((True, e))

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            try:
                done, x = ready.get(timeout=1.0)
            except queue.Empty:
                if thread.is_alive() or not ready.empty():
                    continue
                raise RuntimeError(f"{name}: the producer ended without a word") from None
            if done:
                if x is not None:
                    raise x
                return
            yield x
    finally:
        stop.set()
        thread.join(timeout=10)
