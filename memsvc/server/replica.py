"""A read replica's link to its primary (`memsvc serve --follow PRIMARY`): bootstrap an empty data
directory from the primary's snapshot, open the knowledge base, then apply the commits of the
primary's Follow stream in a thread for as long as the server runs, reconnecting when the primary
goes away (the replica keeps serving what it has applied meanwhile)."""
import logging
import threading
import time
from pathlib import Path

import grpc

from memsvc.core.errors import FailedPrecondition
from memsvc.store import KnowledgeBase, StoreConfig
from memsvc.store.replication import (Bootstrap, apply_commit, mark_stale, receive_file, replica_state,
                                      sync_tags)
from memsvc.v1 import replication_pb2 as rpb
from memsvc.v1 import replication_pb2_grpc as rpb_grpc
from memsvc.wire.auth import bearer_metadata, open_channel
from memsvc.wire.replication import file_pieces_from_pb, rows_from_pb

LOG = logging.getLogger("memsvc.replica")
SILENT_HEARTBEATS = 3  # a Follow stream silent this many heartbeats is taken for dead and opened again


class Follower:
    """``prepare()`` (before serving) returns the replica's KnowledgeBase, bootstrapped or resumed;
    ``start(kb, on_stale)`` follows in a thread; ``state()`` is the ReplicaState for status and metrics."""

    def __init__(self, data_dir, primary, api_key=None, tls_ca=None, retry_seconds=1.0, heartbeat_seconds=2.0):
        self.root, self.primary = Path(data_dir), primary
        self.retry_seconds, self.heartbeat_seconds = retry_seconds, heartbeat_seconds
        self.channel = open_channel(primary, tls_ca)
        self.stub = rpb_grpc.ReplicationServiceStub(self.channel)
        self.metadata = bearer_metadata(api_key)
        self.kb, self.stream, self.thread = None, None, None
        self.primary_version, self.primary_time, self.last_heard = 0, 0.0, 0.0
        self.stopped = threading.Event()

    # ---------------------------------------------------------------- before serving

    def prepare(self) -> KnowledgeBase:
        """Bootstrap when the directory is empty or stale, open the KB, and check that the primary
        can continue it (else bootstrap again); a primary that cannot be reached is retried in
        the background once serving starts."""
        while True:
            if replica_state(self.root) != "replica":
                self._bootstrap()
            try:
                kb = KnowledgeBase(StoreConfig(data_dir=self.root))
            except FailedPrecondition as e:  # a base file gone or not the catalog's: bootstrap again
                LOG.warning("replica %s does not open (%s); bootstrapping again", self.root, e)
                mark_stale(self.root, str(e))
                continue
            try:
                self.stream = self._open(kb)
                return kb
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.FAILED_PRECONDITION:
                    LOG.warning("primary %s: %s; serving version %d until it answers", self.primary, e.details(), kb.version)
                    return kb
                kb.close()
                LOG.warning("primary %s cannot continue this replica (%s); bootstrapping again", self.primary, e.details())
                mark_stale(self.root, e.details())

    def _bootstrap(self):
        print(f"memsvc: bootstrapping {self.root} from {self.primary}", flush=True)
        start = time.monotonic()
        while True:
            try:
                boot = Bootstrap(self.root, self.primary)
                messages = iter(self.stub.Bootstrap(rpb.BootstrapRequest(), metadata=self.metadata))
                for msg in messages:
                    if msg.HasField("file"):
                        boot.receive_file(msg.file.path, file_pieces_from_pb(msg, messages))
                    elif msg.commit:
                        boot.finish(msg.commit)
                        print(f"memsvc: bootstrapped version {msg.commit} in {time.monotonic() - start:.3f} s", flush=True)
                        return
                raise FailedPrecondition("bootstrap: the stream ended before its last message")
            except grpc.RpcError as e:
                if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                    raise FailedPrecondition(f"primary: {self.primary} refused the bootstrap ({e.details()})") from None
                LOG.warning("primary %s unreachable (%s); retrying in %g s", self.primary, e.details(), self.retry_seconds)
                time.sleep(self.retry_seconds)

    def _open(self, kb):
        """The Follow stream from kb's head, its first message (a heartbeat) read: refusals show here."""
        row = kb.commits.query("select time from commits where id=?", [kb.version]).fetchone()
        stream = self.stub.Follow(rpb.FollowRequest(from_version=kb.version, from_commit_time=row[0] if row else 0.0),
                                  metadata=self.metadata)
        self._heard(next(stream), kb)
        return stream

    # ---------------------------------------------------------------- while serving

    def start(self, kb, on_stale):
        """Follow in a thread; ``on_stale(message)`` when the primary cannot continue this replica
        (its directory is then marked to bootstrap again at the next start)."""
        self.kb = kb
        self.thread = threading.Thread(target=self._run, args=(on_stale,), name="memsvc-follower", daemon=True)
        self.thread.start()
        threading.Thread(target=self._watch, name="memsvc-follower-watchdog", daemon=True).start()

    def _run(self, on_stale):
        while not self.stopped.is_set():
            try:
                self.stream = self.stream or self._open(self.kb)
                self._apply(self.stream)
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    mark_stale(self.root, e.details())
                    on_stale(f"primary: {self.primary} cannot continue this replica ({e.details()}); "
                             f"restart it to bootstrap again")
                    return
                if not self.stopped.is_set():
                    LOG.warning("primary %s: %s; serving version %d, retrying", self.primary, e.details(), self.kb.version)
            except Exception:  # noqa: BLE001 - a commit that fails to apply: logged, the stream opened again
                LOG.exception("replica: applying the primary's commits failed; reconnecting")
            self.stream, self.last_heard = None, 0.0
            self.stopped.wait(self.retry_seconds)

    def _apply(self, messages):
        batches = []
        for msg in messages:
            if msg.HasField("file"):
                receive_file(self.root, msg.file.path, file_pieces_from_pb(msg, messages))
            elif msg.HasField("rows"):
                batches.append(rows_from_pb(msg.rows))
            else:
                if msg.commit:
                    apply_commit(self.kb, msg.commit, batches)
                    batches = []
                self._heard(msg, self.kb)

    def _heard(self, msg, kb):
        self.primary_version, self.primary_time, self.last_heard = msg.head_version, msg.head_time, time.monotonic()
        sync_tags(kb.commits, dict(msg.tags))

    def _watch(self):
        """Cancel a stream that has been silent for SILENT_HEARTBEATS heartbeats (a primary whose
        host vanished sends no reset): the follower then opens a new one."""
        while not self.stopped.wait(self.heartbeat_seconds):
            stream, heard = self.stream, self.last_heard
            if stream is not None and heard and time.monotonic() - heard > SILENT_HEARTBEATS * self.heartbeat_seconds:
                stream.cancel()

    def stop(self):
        self.stopped.set()
        if self.stream is not None:
            self.stream.cancel()
        if self.thread is not None:
            self.thread.join(timeout=10)
        self.channel.close()

    def state(self) -> dict:
        """ReplicaState's fields (knowledge.proto)."""
        applied = self.kb.version if self.kb is not None else 0
        primary = max(self.primary_version, applied)
        return dict(role="replica", primary=self.primary, applied_version=applied, primary_version=primary,
                    lag_versions=primary - applied,
                    lag_seconds=max(0.0, time.time() - self.primary_time) if primary > applied else 0.0,
                    connected=self.stream is not None and bool(self.last_heard))
