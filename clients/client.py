"""MemoryClient: what an inference worker or an editor imports to talk to memsvc over gRPC.

Its methods mirror memsvc.store.KnowledgeBase (same names, same results: both conform to
memsvc.core.protocol.KnowledgeStore), so code and the CLI can hold either one.

    >>> client = MemoryClient("127.0.0.1:50051")
    >>> rows = client.lookup("stem", ["Elbriar", "Boova"]).in_request_order()  # (2, L, d) float32
    >>> pinned = client.pinned()          # reads one version for its whole life
    >>> client.edit("stem", [RowOp("copy", token="Elbriar", source_token="Boova")], message="swap")
"""
import json
import queue
import threading
import time

import grpc
import numpy as np

from clients.snapshots import SNAPSHOT_PAGE_BYTES, fetch_snapshot
from memsvc.core.dtypes import storage_dtype, to_storage
from memsvc.core.errors import (Conflict, FailedPrecondition, InvalidArgument, MemsvcError, NotFound, OutOfRange,
                                ResourceExhausted)
from memsvc.core.values import CommitResult, EditRequest, LookupResult, RowWrites, TableExport, split_tokens
from memsvc.v1 import knowledge_pb2 as pb
from memsvc.v1 import knowledge_pb2_grpc as pb_grpc
from memsvc.wire import knowledge as convert
from memsvc.wire import lookup as lookup_wire
from memsvc.wire import reply_buffers
from memsvc.wire.auth import bearer_metadata, is_loopback, open_channel

# Status codes back to the errors the store raises, so callers catch the same classes.
ERROR_OF = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRange,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.ALREADY_EXISTS: Conflict,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
}

IMPORT_MESSAGE_BYTES = 4 << 20  # rows per ImportTable message: the memory each side holds for the stream


def _version(version) -> int:
    """A version for a uint64 field; one no commit can have (negative, or past uint64) is NotFound
    here, as the store answers it, instead of protobuf's ValueError."""
    version = int(version or 0)
    if not 0 <= version < 2**64:
        raise NotFound(f"version: version {version} does not exist")
    return version


def _ref(version=None, tag=None) -> pb.VersionRef:
    return pb.VersionRef(version=_version(version), tag=tag or "")


class MemoryClient:
    def __init__(self, address: str, timeout: float | None = 60.0, channel: grpc.Channel | None = None,
                 api_key: str | None = None, tls_ca: str | None = None, shared_memory: bool | None = None,
                 stream_lookups: bool = True, primary: str | None = None):
        """``api_key`` is sent as ``authorization: Bearer <key>``; ``tls_ca`` (a PEM file) turns on TLS.
        ``shared_memory``: Lookup rows come back through shared memory (memsvc/wire/reply_buffers.py);
        default on when the server's address is loopback. It turns itself off when the server
        cannot write into this host's buffers. ``stream_lookups``: ``lookup`` sends its requests
        down one open LookupStream (less per-call cost than unary calls; ``timeout`` applies to
        each streamed lookup too). ``primary``: ``address`` is a read replica of the memsvc at
        ``primary`` (`memsvc serve --follow`): reads go to the replica, writes to the primary, and
        every read asks for the version of this client's last write (``last_write_version``,
        min_version), so that it reads its own writes; a pinned version is asked for the same way."""
        self.address = address
        self.last_write_version = 0
        self.primary_channel = primary and open_channel(primary, tls_ca)
        self.primary_stubs = {}  # stub class -> its stub on primary_channel
        self.timeout = timeout
        self.metadata = bearer_metadata(api_key)
        self.channel = channel or open_channel(address, tls_ca)
        self.stub = pb_grpc.KnowledgeServiceStub(self.channel)
        # Lookup replies are read straight from the wire bytes (lookup_wire.lookup_from_wire): the rows
        # stay a zero-copy view of the reply or of the shared buffer.
        self.stub.Lookup = self.channel.unary_unary("/memsvc.v1.KnowledgeService/Lookup",
                                                    request_serializer=pb.LookupRequest.SerializeToString)
        self.stub.LookupStream = self.channel.stream_stream("/memsvc.v1.KnowledgeService/LookupStream",
                                                            request_serializer=pb.LookupRequest.SerializeToString)
        if shared_memory is None:
            shared_memory = is_loopback(address.rsplit(":", 1)[0].strip("[]")) and reply_buffers.available()
        self.reply_buffers = reply_buffers.ReplyBuffers() if shared_memory else None
        self.row_bytes = {}  # (table, layers) -> bytes of one token's rows, from the last inline reply
        self.streams = []  # every OpenStream of this client (closed with it)
        self.lookup_stream = self.open_stream(self.stub.LookupStream, self.stub.Lookup) if stream_lookups else None

    @classmethod
    def for_cluster(cls, timeout: float = 60.0, **kwargs) -> "MemoryClient":
        """In a Ray worker or driver on a cluster running `memsvc cluster up`: a client of this
        node's read replica whose writes go to the primary (on the primary's node: the primary).
        Servers keep their ports across restarts, so the client outlives them."""
        import ray

        from memsvc.wire.cluster import NAMESPACE, PRIMARY, replica_name

        try:
            primary = ray.get_actor(PRIMARY, namespace=NAMESPACE)
        except ValueError:
            raise FailedPrecondition("no memsvc on this Ray cluster: `memsvc cluster up` first") from None
        primary_address = ray.get(primary.address.remote(), timeout=timeout)
        try:
            replica = ray.get_actor(replica_name(ray.get_runtime_context().get_node_id()), namespace=NAMESPACE)
        except ValueError:  # the primary's own node has no replica
            return cls(primary_address, **kwargs)
        return cls(ray.get(replica.address.remote(), timeout=timeout), primary=primary_address, **kwargs)

    def _call(self, method, request, stub=None):
        """One RPC (on ``stub``, default the KnowledgeService one) with errors as memsvc exceptions. A
        read (its request has min_version) asks for this client's last write; anything else goes to
        the primary when there is one, and a commit it makes becomes the last write."""
        stub = stub or self.stub
        read = "min_version" in request.DESCRIPTOR.fields_by_name
        if read:
            self._read_your_writes(request)
        elif self.primary_channel:
            stub = self.primary_stubs.get(type(stub)) or self.primary_stubs.setdefault(type(stub), type(stub)(self.primary_channel))
        reply = self._translated(getattr(stub, method), request, timeout=self.timeout, metadata=self.metadata)
        if not read:
            self._wrote(reply)
        return reply

    def _read_your_writes(self, request):
        at = request.at.version if "at" in request.DESCRIPTOR.fields_by_name else 0
        request.min_version = max(self.last_write_version, at)

    def _wrote(self, reply):
        commit = reply if reply.DESCRIPTOR.name == "CommitResult" else getattr(reply, "commit", None)
        if commit is not None:
            self.last_write_version = max(self.last_write_version, commit.version)

    def _translated(self, call, *args, **kwargs):
        try:
            return call(*args, **kwargs)
        except grpc.RpcError as e:
            raise self._error(e) from None

    def _error(self, e: grpc.RpcError) -> MemsvcError:
        """The memsvc exception of a failed call."""
        if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):  # down, or stopping mid-call
            return FailedPrecondition(f"server: cannot reach memsvc at {self.address} ({e.details()})")
        return ERROR_OF.get(e.code(), MemsvcError)(e.details())

    def open_stream(self, method, unary) -> "OpenStream":
        """An OpenStream over the stream-stream ``method`` of this channel (``unary``: its unary
        twin, for a call the stream fails), closed with the client."""
        stream = OpenStream(method, self.metadata, self.timeout, self.address, unary)
        self.streams.append(stream)
        return stream

    def close(self):
        for stream in self.streams:
            stream.close()
        if self.reply_buffers is not None:
            self.reply_buffers.close()
        self.channel.close()
        if self.primary_channel:
            self.primary_channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---------------------------------------------------------------- reads

    @property
    def version(self) -> int:
        """The head version now: the newest commit of the log (one row, not every table)."""
        commits = self._call("Log", pb.LogRequest(limit=1)).commits
        return commits[0].version if commits else 0

    def resolve_version(self, version=None, tag=None) -> int:
        if not version and not tag:
            return self.version
        return self._call("ListTables", pb.ListTablesRequest(at=_ref(version, tag))).version

    def list_tables(self, version=None):
        reply = self._call("ListTables", pb.ListTablesRequest(at=_ref(version)))
        return [convert.table_from_pb(t) for t in reply.tables]

    def describe(self, table, version=None):
        return convert.table_from_pb(self._call("DescribeTable", pb.DescribeTableRequest(table=table, at=_ref(version))))

    def vocabulary(self, table, version=None) -> list:
        """Words by token id ('' for ids that do not exist at that version)."""
        return list(self._call("Vocabulary", pb.VocabularyRequest(table=table, at=_ref(version))).words)

    def tokenizer(self, table, version=None) -> tuple:
        """(kind, file bytes) of the tokenizer imported with the table; ("", b"") for a word list."""
        reply = self._call("Vocabulary", pb.VocabularyRequest(table=table, at=_ref(version), with_tokenizer=True))
        return reply.tokenizer_kind, reply.tokenizer

    def lookup(self, table, tokens, layers=None, version=None, tag=None, overrides=None) -> LookupResult:
        """Rows of tokens (ids or words); ``.in_request_order()`` gives float32 (n, L, d)."""
        request, sent = self._lookup_request(table, tokens, layers, version, tag, overrides)
        if self.lookup_stream is not None:
            return self._lookup_reply(lambda: self._translated(self.lookup_stream.call, request), *sent)
        return self._lookup_reply(lambda: self._call("Lookup", request), *sent)

    def lookup_future(self, table, tokens, layers=None, version=None, tag=None, overrides=None) -> "LookupFuture":
        """The same Lookup sent now; ``.result()`` waits for its LookupResult (overlap it with compute)."""
        request, sent = self._lookup_request(table, tokens, layers, version, tag, overrides)
        future = self.stub.Lookup.future(request, timeout=self.timeout, metadata=self.metadata)
        return LookupFuture(lambda: self._lookup_reply(lambda: self._translated(future.result), *sent))

    def _lookup_request(self, table, tokens, layers, version, tag, overrides):
        """(LookupRequest, (what its rows are: table and layers, the reply buffer pool, the buffer it
        names or None)). A buffer is named when the rows will be big enough for it to pay: below
        reply_buffers.MIN_REPLY_BYTES rows in the reply are faster (and a table's first reply tells
        how big its rows are)."""
        ids, words = split_tokens(tokens)
        request = pb.LookupRequest(table=table, layers=[int(l) for l in layers or []], token_ids=ids, tokens=words,
                                   at=_ref(version, tag), overrides=[convert.row_op_to_pb(op) for op in overrides or []])
        self._read_your_writes(request)
        rows_of, buffers = (table, tuple(request.layers)), self.reply_buffers
        needed = self.row_bytes.get(rows_of, 0) * (len(ids) + len(words))  # rows come one per position
        if buffers is None or needed < reply_buffers.MIN_REPLY_BYTES:
            return request, (rows_of, None, None)
        if needed > buffers.initial_size:
            buffers.grow(needed)
        buffer = buffers.take()
        request.reply_buffer.name, request.reply_buffer.size, request.reply_buffer.key = buffer.name, buffer.size, buffer.key
        return request, (rows_of, buffers, buffer)

    def _lookup_reply(self, wait, rows_of, buffers, buffer) -> LookupResult:
        if buffer is None:
            result = lookup_wire.lookup_from_wire(wait())
            self.row_bytes[rows_of] = result.rows[0].nbytes
            return result
        try:
            wire = wait()
        except BaseException:
            buffer.close()  # the server may still write into it: never reuse it
            raise
        result, in_buffer = buffers.receive(wire, buffer)
        if not in_buffer and result.rows.nbytes <= buffer.size:  # it fitted, yet the server did not write: not its host
            self.reply_buffers = None
            buffers.close()
        return result

    def read_rows(self, table, token_ids, version=None) -> np.ndarray:
        return self.lookup(table, token_ids, version=version).in_request_order()

    def token_ids(self, table, words, version=None, field="tokens") -> np.ndarray:
        result = self.lookup(table, list(words), version=version)
        return result.unique_ids[result.inverse]

    def snapshot(self, table, version=None, *, page_bytes=SNAPSHOT_PAGE_BYTES) -> dict:
        """The base file and delta rows of a version (see KnowledgeBase.snapshot), fetched in
        pages of at most ``page_bytes`` of rows into arrays allocated once (clients/snapshots.py)."""
        request = pb.SnapshotRequest(table=table, at=_ref(version), max_bytes=page_bytes)
        return fetch_snapshot(lambda r: self._call("Snapshot", r), request, self.reply_buffers is not None)

    def changed_tokens(self, table, from_version, to_version) -> np.ndarray:
        """Token ids whose rows read differently at two versions."""
        r = self._call("ChangedTokens", pb.ChangedTokensRequest(table=table, **{"from": _ref(from_version)}, to=_ref(to_version)))
        return np.array(r.token_ids, dtype=np.int64)

    def pinned(self, version=None, tag=None) -> "PinnedClient":
        """A handle that reads one version (default: the head now) for its whole life."""
        return PinnedClient(self, self.resolve_version(version, tag))

    # ---------------------------------------------------------------- writes

    def edit(self, table, ops, author="", message="", request: EditRequest | None = None, metrics=None) -> CommitResult:
        reply = self._call("Edit", self._edit_request(table, ops, author, message, request, metrics))
        result = convert.commit_result_from_pb(reply.commit)
        result.changes = [convert.row_change_from_pb(c) for c in reply.changes]
        return result

    def preview(self, table, ops):
        """Dry run at the head: (RowWrites, [RowChange]); nothing is written."""
        reply = self._call("Edit", self._edit_request(table, ops, dry_run=True))
        changes = [convert.row_change_from_pb(c) for c in reply.changes]
        vectors = convert.stored_tensor(reply.new_rows).astype(np.float32)
        return (RowWrites(token_ids=np.array([c.token_id for c in changes], dtype=np.int64),
                          layers=np.array([c.layer for c in changes], dtype=np.int64), vectors=vectors[:len(changes)]),
                changes)

    def _edit_request(self, table, ops, author="", message="", request=None, metrics=None, dry_run=False):
        return pb.EditRequest(table=table, ops=[convert.row_op_to_pb(op) for op in ops], author=author, message=message,
                              request=convert.edit_request_to_pb(request), metrics_json=json.dumps(metrics) if metrics else "",
                              dry_run=dry_run)

    def inject_token(self, table, word, vector=None, like=(), author="", message="") -> CommitResult:
        request = pb.InjectTokenRequest(table=table, token=word, like=list(like), author=author, message=message)
        if vector is not None:
            request.vector.CopyFrom(convert.tensor_to_pb(np.asarray(vector, dtype=np.float32)))
        return convert.commit_result_from_pb(self._call("InjectToken", request).commit)

    def revert(self, version, author="", message="") -> CommitResult:
        return convert.commit_result_from_pb(self._call("Revert", pb.RevertRequest(version=_version(version), author=author, message=message)))

    def tag(self, name, version=None) -> int:
        return self._call("Tag", pb.TagRequest(name=name, at=_ref(version))).version

    def delete_tag(self, name) -> int:
        return self._call("Tag", pb.TagRequest(name=name, delete=True)).version

    def tags(self) -> dict:
        return dict(sorted(self._call("ListTags", pb.ListTagsRequest()).tags.items(), key=lambda kv: (kv[1], kv[0])))

    # ---------------------------------------------------------------- history

    def log(self, table=None, limit=None):
        reply = self._call("Log", pb.LogRequest(table=table or "", limit=limit or 0))
        return [convert.commit_info_from_pb(c) for c in reply.commits]

    def show(self, version):
        reply = self._call("Show", pb.ShowRequest(at=_ref(version)))
        return convert.commit_info_from_pb(reply.commit), [convert.row_change_from_pb(c) for c in reply.changes]

    def diff(self, from_version, to_version, table=None):
        reply = self._call("Diff", pb.DiffRequest(**{"from": _ref(from_version), "to": _ref(to_version)}, table=table or ""))
        return [convert.row_change_from_pb(c) for c in reply.changes]

    def hot_tokens(self, table, n, version=None) -> tuple:
        """(token ids, estimated request counts): the n tokens the server has read most often from
        the table since it started, most requested first, among those that exist at ``version``
        (default the head) (memsvc/server/hot_tokens.py)."""
        reply = self._call("HotTokens", pb.HotTokensRequest(table=table, n=int(n), at=_ref(version)))
        return np.array(reply.token_ids, dtype=np.int64), np.array(reply.counts, dtype=np.int64)


    # ---------------------------------------------------------------- whole tables (streams: no deadline, they scale with the table)

    def import_table(self, table, rows, vocab, dtype="float32", author="", message="", progress=False,
                     model_layers=(), tokenizer=None) -> CommitResult:
        """A new table from rows (V, L, d), an array, a memmap or anything read a slice of tokens at a
        time (memsvc.store.checkpoints.ChunkedRows), streamed in messages of about IMPORT_MESSAGE_BYTES
        (ImportTable): nothing is committed unless every row arrives. ``vocab``: V words, or the bytes
        of a vocabulary file (tokenizer.json, sentencepiece .model, tiktoken, word list)."""
        from tqdm import tqdm

        v, layers, dim = rows.shape
        header = pb.ImportTableHeader(table=table, dtype=dtype, vocab_size=v, num_layers=layers, dim=dim,
                                      author=author, message=message, model_layers=list(model_layers))
        if tokenizer:
            header.tokenizer_kind, header.tokenizer = tokenizer
        if isinstance(vocab, bytes):
            header.vocab_file = vocab
        else:
            header.words.extend(vocab)
        step = max(1, IMPORT_MESSAGE_BYTES // (layers * dim * storage_dtype(dtype).itemsize))
        failed = []  # an error reading the rows: grpc would only say CANCELLED

        def requests():
            yield pb.ImportTableRequest(header=header)
            try:
                for start in tqdm(range(0, v, step), desc=f"importing {table}", unit="chunk", disable=not progress):
                    chunk = np.asarray(rows[start:start + step])
                    request = pb.ImportTableRequest()
                    convert.tensor_to_pb(chunk if chunk.dtype == storage_dtype(dtype) else to_storage(chunk, dtype),
                                         dtype, out=request.rows)
                    yield request
            except Exception as e:  # not GeneratorExit: grpc may close the requests once the server has answered
                failed.append(e)
                raise

        try:
            stub = pb_grpc.KnowledgeServiceStub(self.primary_channel) if self.primary_channel else self.stub
            reply = self._translated(stub.ImportTable, requests(), metadata=self.metadata)
        except MemsvcError:
            if failed:
                raise failed[0] from None
            raise
        self._wrote(reply)
        return convert.commit_result_from_pb(reply)

    def export_table(self, table, version=None, *, max_message_bytes=0) -> TableExport:
        """The tokens alive at a version in id order with their words (read now), and their rows as
        the export's chunks iterate (ExportTable); leaving the chunks unread cancels the stream."""
        request = pb.ExportTableRequest(table=table, at=_ref(version), max_message_bytes=max_message_bytes)
        self._read_your_writes(request)
        call = self.stub.ExportTable(request, metadata=self.metadata)

        def replies():
            try:
                yield from call
            except grpc.RpcError as e:
                raise self._error(e) from None
            finally:
                call.cancel()

        return convert.export_from_pb(replies())


# the codes of a stream the server refused (too many open) or ended (idle, stopping): the call goes unary
STREAM_ENDED = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)


class OpenStream:
    """One open stream of a method served as its unary twin per message (LookupStream,
    SearchStream), opened on first use: one call at a time, replies in order. After an error
    (which ends a stream) the next call opens a new one. A call not answered within ``timeout``
    seconds cancels the stream (a watchdog thread checks a few times per timeout) and raises
    FailedPrecondition, as a unary call's deadline would. A call whose stream was refused or ended
    (RESOURCE_EXHAUSTED, UNAVAILABLE, CANCELLED) is sent once more as the ``unary`` twin: the
    server bounds its open streams and ends idle ones (memsvc/server/interceptors.py), and both
    twins are reads, so a repeat is harmless."""

    def __init__(self, method, metadata, timeout: float | None, address: str, unary=None):
        self.method, self.metadata, self.timeout, self.address = method, metadata, timeout, address
        self.unary = unary
        self.lock = threading.Lock()
        self.requests = self.replies = None
        self.sent_at = None  # monotonic time the call in flight was sent
        self.overdue, self.closed = threading.Event(), threading.Event()
        self.watchdog = None

    def call(self, request) -> bytes:
        with self.lock:
            if self.replies is None:
                self.requests = queue.SimpleQueue()
                self.replies = self.method(iter(self.requests.get, None), metadata=self.metadata)
            if self.timeout is not None and self.watchdog is None:
                self.watchdog = threading.Thread(target=self._watch, daemon=True, name="memsvc-stream-watchdog")
                self.watchdog.start()
            self.overdue.clear()
            self.sent_at = time.monotonic()
            self.requests.put(request)
            try:
                return next(self.replies)
            except BaseException as e:
                self._end()
                if self.overdue.is_set():
                    raise FailedPrecondition(f"server: no reply from memsvc at {self.address} "
                                             f"within {self.timeout} s") from None
                if self.unary is None or not isinstance(e, grpc.RpcError) or e.code() not in STREAM_ENDED:
                    raise
            finally:
                self.sent_at = None
        return self.unary(request, timeout=self.timeout, metadata=self.metadata)

    def _watch(self):
        while not self.closed.wait(min(1.0, self.timeout / 4)):
            sent_at, replies = self.sent_at, self.replies
            if sent_at is not None and replies is not None and time.monotonic() - sent_at > self.timeout:
                self.overdue.set()
                replies.cancel()  # the waiting call's next() raises

    def _end(self):
        if self.replies is not None:
            self.requests.put(None)  # ends the request iterator: its sending thread exits
            self.replies.cancel()
            self.requests = self.replies = None

    def close(self):
        self.closed.set()
        with self.lock:
            self._end()


class LookupFuture:
    """A Lookup in flight (MemoryClient.lookup_future); ``result()`` waits once and remembers."""

    def __init__(self, finish):
        self._finish, self._result = finish, None

    def result(self) -> LookupResult:
        if self._result is None:
            self._result = self._finish()
        return self._result


class PinnedClient:
    """Reads of one version only: a generation pins one so an edit landing mid-sentence cannot tear it."""

    def __init__(self, client: MemoryClient, version: int):
        self.client = client
        self.version = version

    def vocabulary(self, table) -> list:
        return self.client.vocabulary(table, self.version)

    def tokenizer(self, table) -> tuple:
        return self.client.tokenizer(table, self.version)

    def lookup(self, table, tokens, layers=None, overrides=None) -> LookupResult:
        return self.client.lookup(table, tokens, layers, version=self.version, overrides=overrides)

    def describe(self, table):
        return self.client.describe(table, self.version)

