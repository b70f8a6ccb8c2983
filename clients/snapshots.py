"""A Snapshot's pages fetched into arrays allocated once (MemoryClient.snapshot, what LocalBank opens).

On the server's host the pages come through two shared-memory buffers (memsvc/wire/reply_buffers.py)
taken in turn: the server writes page k + 1 into one while a thread copies page k out of the
other. Over loopback gRPC each side copied a 16 MB page several times, and the copies and the
server's reading ran one after the other: with 10,915 edited STEM-1B tokens (0.9 GB of delta rows)
that was most of a LocalBank open (issue 17; bench/snapshot_open.py).
"""
import math
import tempfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from memsvc.core.dtypes import storage_dtype
from memsvc.core.errors import FailedPrecondition
from memsvc.v1 import knowledge_pb2 as pb
from memsvc.wire import knowledge as convert
from memsvc.wire import reply_buffers

SNAPSHOT_PAGE_BYTES = 16 << 20  # rows per Snapshot reply: far under any message limit, ~10 ms each to move
SNAPSHOT_MEMORY_BYTES = 256 << 20  # a snapshot's delta rows past this go to a mapped temporary file (snapshot_rows)


def snapshot_rows(shape, dtype) -> np.ndarray:
    """Room for a snapshot's delta rows: memory up to SNAPSHOT_MEMORY_BYTES, else a map of an
    unlinked temporary file, so that the page cache holds them, not the process (issue 17: the
    rows of 100,000 edited STEM-1B tokens are 8 GB)."""
    dtype = np.dtype(dtype)
    if int(np.prod(shape)) * dtype.itemsize <= SNAPSHOT_MEMORY_BYTES:
        return np.empty(shape, dtype)
    with tempfile.TemporaryFile(prefix="memsvc-snapshot-") as f:  # the map keeps the file until it is dropped
        return np.memmap(f, dtype, "w+", shape=shape)


def page_rows(r: pb.SnapshotResponse, buffer) -> np.ndarray:
    """A page's rows: a view of the shared buffer the server wrote them into, or of the reply's bytes."""
    if not r.rows_in_buffer:
        return convert.stored_tensor(r.delta_rows)
    shape = tuple(r.delta_rows.shape)
    return np.frombuffer(buffer.map, storage_dtype(r.delta_rows.dtype), math.prod(shape),
                         reply_buffers.HEADER_BYTES).reshape(shape)


def fetch_snapshot(call, request: pb.SnapshotRequest, shared: bool) -> dict:
    """Every page of ``request`` (its max_bytes: the page size) through ``call`` (a Snapshot call);
    ``shared``: name shared-memory buffers (this host's server writes the rows there)."""
    buffers = [reply_buffers.ReplyBuffer(request.max_bytes) for _ in range(2)] if shared else [None, None]
    copying = [None, None]  # the copy out of each buffer still running
    try:
        with ThreadPoolExecutor(1) as copier:
            r = call(_named(request, buffers[0]))
            ids = np.empty(r.delta_tokens_total, np.int64)
            rows = snapshot_rows((r.delta_tokens_total, *r.delta_rows.shape[1:]), storage_dtype(r.delta_rows.dtype))
            filled, page, request.at.version = 0, 0, r.version
            while True:
                n = len(r.delta_token_ids)
                if filled + n > len(ids):
                    raise FailedPrecondition(f"snapshot: the server sent more than the {len(ids)} delta rows it announced")
                ids[filled:filled + n] = r.delta_token_ids
                copying[page % 2] = copier.submit(np.copyto, rows[filled:filled + n], page_rows(r, buffers[page % 2]))
                filled, page = filled + n, page + 1
                if not r.next_token_id:
                    break
                if copying[page % 2] is not None:
                    copying[page % 2].result()  # the server may write into this buffer again
                request.start_token_id = r.next_token_id
                r = call(_named(request, buffers[page % 2]))
            for done in copying:
                if done is not None:
                    done.result()
    finally:
        for buffer in buffers:
            if buffer is not None:
                buffer.close()
    return dict(version=r.version, base_version=r.base_version, base_path=r.base_path, vocab_size=r.vocab_size,
                delta_token_ids=ids[:filled], delta_rows=rows[:filled], dtype=r.delta_rows.dtype)


def _named(request, buffer):
    if buffer is not None:
        request.reply_buffer.name, request.reply_buffer.size, request.reply_buffer.key = buffer.name, buffer.size, buffer.key
    return request
