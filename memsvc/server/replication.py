"""ReplicationService (replication.proto): what any server sends to its read replicas (Bootstrap,
Follow, ReplicaStatus), and ReplicaGate, the interceptor that makes a server a read replica
(writes refused naming the primary, reads that name a min_version wait for it). The follower that
runs on the replica is memsvc/server/replica.py."""
import grpc

from memsvc.core.errors import FailedPrecondition, Unavailable
from memsvc.server.auth import WRITE, required_role
from memsvc.server.interceptors import UnaryInterceptor
from memsvc.store.backup import CATALOG
from memsvc.store.replication import bootstrap_pieces, check_follow, commit_pieces, read_only
from memsvc.v1 import replication_pb2_grpc as rpb_grpc
from memsvc.wire.replication import piece_to_pb, state_to_pb

HEARTBEAT_SECONDS = 2.0  # an idle Follow stream sends the head and tags this often (a replica's liveness check)


class ReplicationServicer(rpb_grpc.ReplicationServiceServicer):
    """``state()`` -> the ReplicaState fields of this server (a primary's, or its follower's)."""

    def __init__(self, kb, state, heartbeat_seconds=HEARTBEAT_SECONDS):
        self.kb, self.state, self.heartbeat_seconds = kb, state, heartbeat_seconds

    def Bootstrap(self, request, context):
        for piece in bootstrap_pieces(self.kb.root):
            yield piece_to_pb(piece)

    def Follow(self, request, context):
        """Commits after from_version in order, then each new one as it lands (woken by the commit
        log, never polling); a heartbeat first and whenever idle for heartbeat_seconds or a tag changed."""
        log = self.kb.commits
        db = read_only(self.kb.root / CATALOG)
        context.add_callback(log.notify)  # a cancelled stream wakes its wait at once
        try:
            check_follow(db, log.head, request.from_version, request.from_commit_time)
            sent = request.from_version
            yield self._message(db, ("commit", 0))
            while context.is_active():
                seen = log.changes
                while sent < log.head:
                    for piece in commit_pieces(self.kb.root, db, sent + 1):
                        yield self._message(db, piece)
                    sent += 1
                woken = log.wait_for(lambda: log.head > sent or log.changes != seen or not context.is_active(),
                                     self.heartbeat_seconds)
                if not woken or log.head == sent:  # idle, or a tag changed: a heartbeat
                    yield self._message(db, ("commit", 0))
        finally:
            db.close()

    def _message(self, db, piece):
        head = self.kb.version
        head_time = db.execute("select coalesce(max(time), 0) from commits where id=?", [head]).fetchone()[0]
        tags = self.kb.tags() if piece[0] == "commit" else None
        return piece_to_pb(piece, head, head_time, tags)

    def ReplicaStatus(self, request, context):
        return state_to_pb(self.state())


def primary_state(kb):
    """The ReplicaState fields of a primary: it has applied its own head."""
    return lambda: dict(role="primary", primary="", applied_version=kb.version, primary_version=kb.version,
                        lag_versions=0, lag_seconds=0.0, connected=True)


class ReplicaGate(UnaryInterceptor):
    """On a read replica: every write RPC is FAILED_PRECONDITION naming the primary (auth.py's
    classification of methods, so a new write RPC is refused too); a read whose request names a
    min_version waits until the replica has applied it, at most ``wait_seconds``, else UNAVAILABLE
    naming the version it has. Sits inside ErrorInterceptor, which turns both into statuses."""

    def __init__(self, log, primary, wait_seconds):
        self.log, self.primary, self.wait_seconds = log, primary, wait_seconds

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or handler.unary_unary is not None:
            return handler and self.wrap(details.method, handler)
        write = required_role(details.method) == WRITE
        if handler.unary_stream is not None and not write:  # ExportTable
            behaviour = handler.unary_stream

            def waited(request, context):
                self.wait_for(request)
                yield from behaviour(request, context)

            return grpc.unary_stream_rpc_method_handler(waited, request_deserializer=handler.request_deserializer,
                                                        response_serializer=handler.response_serializer)
        if handler.stream_unary is not None and write:  # ImportTable
            return grpc.stream_unary_rpc_method_handler(lambda requests, context: self.refuse(details.method),
                                                        request_deserializer=handler.request_deserializer,
                                                        response_serializer=handler.response_serializer)
        return handler

    def wrap(self, method, handler):
        behaviour = handler.unary_unary
        if required_role(method) == WRITE:
            def gated(request, context):
                self.refuse(method)
        else:
            def gated(request, context):
                self.wait_for(request)
                return behaviour(request, context)
        return grpc.unary_unary_rpc_method_handler(gated, request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)

    def refuse(self, method):
        raise FailedPrecondition(f"replica: this server is a read replica; send {method.rsplit('/', 1)[-1]} "
                                 f"to its primary at {self.primary}")

    def wait_for(self, request):
        wanted = getattr(request, "min_version", 0)
        if wanted and not self.log.wait_for(lambda: self.log.head >= wanted, self.wait_seconds):
            raise Unavailable(f"min_version: this replica has applied version {self.log.head}, not yet {wanted} "
                              f"(waited {self.wait_seconds:g} s); retry, or read from the primary at {self.primary}")

