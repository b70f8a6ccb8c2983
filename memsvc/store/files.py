"""Files written whole or not at all: to a temporary sibling, fsync, rename, fsync the directory.
A crash or a full disk leaves the old file (or none), never a torn one (issue 19: a SIGTERM on a
full disk left the query log at 0 bytes, and every later `memsvc serve` died on it)."""
import os
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
