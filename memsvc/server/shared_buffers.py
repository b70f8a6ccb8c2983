"""The server half of the reply-buffer protocol (memsvc/wire/reply_buffers.py): maps of the clients'
shared-memory objects, written with a Lookup's rows when the request names one."""
import mmap
import os
import stat
import threading
from collections import OrderedDict

import numpy as np

from memsvc.core.errors import InvalidArgument
from memsvc.wire.reply_buffers import HEADER_BYTES, KEY_BYTES, NAME, SHM_DIR


class SharedBuffers:
    """The server side: maps of the clients' buffers, opened on first use and kept (an LRU of
    ``capacity``) so that a Lookup costs no open or mmap."""

    def __init__(self, capacity: int = 64):
        self.capacity = capacity
        self.maps = OrderedDict()
        self.lock = threading.Lock()

    def write(self, name: str, key: bytes, size: int, rows: np.ndarray) -> bool:
        """Copy ``rows`` into the buffer; False (write nothing) when it cannot take them."""
        out = self.view(name, key, size, rows.shape, rows.dtype)
        if out is None:
            return False
        np.copyto(out, rows)
        return True

    def view(self, name: str, key: bytes, size: int, shape: tuple, dtype) -> np.ndarray | None:
        """A writable array of ``shape`` over the buffer's rows, or None when it cannot take them
        (not on this host, too small, another key, gone)."""
        if not NAME.fullmatch(name):
            raise InvalidArgument(f"reply_buffer.name: {name!r} is not a memsvc shared buffer name (memsvc-[A-Za-z0-9_-]+)")
        if len(key) != KEY_BYTES:
            raise InvalidArgument(f"reply_buffer.key: expected {KEY_BYTES} bytes, got {len(key)}")
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        buf = self._map(name)
        if buf is None or nbytes > min(size, len(buf) - HEADER_BYTES) or buf[:KEY_BYTES] != key:
            return None
        try:  # a file shrunk under the map would make the write fault (SIGBUS) and kill the server
            if os.stat(SHM_DIR / name).st_size < HEADER_BYTES + nbytes:
                raise FileNotFoundError
        except FileNotFoundError:
            with self.lock:
                self.maps.pop(name, None)
            return None
        return np.ndarray(shape, dtype, buffer=buf, offset=HEADER_BYTES)

    def _map(self, name):
        with self.lock:
            buf = self.maps.get(name)
            if buf is not None:
                self.maps.move_to_end(name)
                return buf
        try:
            fd = os.open(SHM_DIR / name, os.O_RDWR | os.O_NOFOLLOW)
        except OSError:
            return None  # another host, another user, or gone
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_size <= HEADER_BYTES:
                return None
            buf = mmap.mmap(fd, info.st_size)
        finally:
            os.close(fd)
        with self.lock:
            self.maps[name] = buf
            while len(self.maps) > self.capacity:
                self.maps.popitem(last=False)  # unmapped when no write uses it any more
        return buf
