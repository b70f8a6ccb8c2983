"""The gRPC servicer: adapters only. Each method decodes a request, calls one store function
and encodes the reply; errors become status codes in one place (interceptors.ErrorInterceptor)."""
import numpy as np

from memsvc.core.errors import InvalidArgument
from memsvc.server.hot_tokens import HotTokens
from memsvc.server.shared_buffers import SharedBuffers
from memsvc.v1 import knowledge_pb2 as pb
from memsvc.v1 import knowledge_pb2_grpc as pb_grpc
from memsvc.wire import knowledge as convert
from memsvc.wire import lookup as lookup_wire

EXPORT_MESSAGE_BYTES = 3 << 20  # ExportTable's default: what gRPC clients receive with their default 4 MiB limit


class KnowledgeServicer(pb_grpc.KnowledgeServiceServicer):
    """KnowledgeService, except LookupStream: interceptors.StreamOfUnaryCalls serves each of its
    messages as a call of Lookup."""

    def __init__(self, kb, config, replica_state=None):
        self.kb = kb
        self.replica_state = replica_state  # a read replica's () -> ReplicaState, for DescribeTable
        kb.limit_lookups(config.max_lookup_tokens, config.max_message_bytes)
        self.max_message_bytes = config.max_message_bytes
        self.shared_buffers = SharedBuffers()
        self.hot_tokens = HotTokens()  # what Lookup served, per table, for HotTokens

    def ListTables(self, request, context):
        v = self.kb.resolve_version(**convert.version_from_pb(request.at))
        return pb.ListTablesResponse(tables=[convert.table_to_pb(t) for t in self.kb.list_tables(v)], version=v)

    def DescribeTable(self, request, context):
        info = convert.table_to_pb(self.kb.describe(request.table, self.kb.resolve_version(**convert.version_from_pb(request.at))))
        if self.replica_state is not None:
            info.replica.CopyFrom(self.replica_state())
        return info

    def Vocabulary(self, request, context):
        v = self.kb.resolve_version(**convert.version_from_pb(request.at))
        kind, data = self.kb.tokenizer(request.table, v) if request.with_tokenizer else ("", b"")
        return pb.VocabularyResponse(words=self.kb.vocabulary(request.table, v), version=v, tokenizer_kind=kind,
                                     tokenizer=data)

    def Lookup(self, request, context):
        ids = np.fromiter(request.token_ids, np.int64, len(request.token_ids))
        tokens = list(ids) + list(request.tokens) if request.tokens else ids
        overrides = [convert.row_op_from_pb(op, f"overrides[{i}]") for i, op in enumerate(request.overrides)]
        out = None
        if request.HasField("reply_buffer"):  # rows go straight into the client's shared buffer when it takes them
            buffer = request.reply_buffer
            out = lambda shape, dtype: self.shared_buffers.view(buffer.name, buffer.key, buffer.size, shape, dtype)
        result = self.kb.lookup(request.table, tokens, list(request.layers), overrides=overrides, out=out,
                                **convert.version_from_pb(request.at))
        self.hot_tokens.record(request.table, result)
        return lookup_wire.lookup_to_wire(result, rows_in_buffer=result.in_buffer)

    def Snapshot(self, request, context):
        snap = self.kb.snapshot(request.table, self.kb.resolve_version(**convert.version_from_pb(request.at)),
                                start_token_id=request.start_token_id, max_bytes=request.max_bytes or None)
        reply = pb.SnapshotResponse(version=snap["version"], base_version=snap["base_version"], base_path=snap["base_path"],
                                    delta_token_ids=snap["delta_token_ids"].tolist(), vocab_size=snap["vocab_size"],
                                    next_token_id=snap["next_token_id"], delta_tokens_total=snap["delta_tokens_total"])
        rows, buffer = snap["delta_rows"], request.reply_buffer
        if buffer.name and self.shared_buffers.write(buffer.name, buffer.key, buffer.size, rows):
            reply.rows_in_buffer, reply.delta_rows.dtype, reply.delta_rows.shape[:] = True, snap["dtype"], rows.shape
        else:
            convert.tensor_to_pb(rows, snap["dtype"], out=reply.delta_rows)  # in place: no second copy
        return reply

    def ChangedTokens(self, request, context):
        a = self.kb.resolve_version(**convert.version_from_pb(getattr(request, "from")))
        b = self.kb.resolve_version(**convert.version_from_pb(request.to))
        return pb.ChangedTokensResponse(token_ids=self.kb.changed_tokens(request.table, a, b).tolist(), from_version=a, to_version=b)

    def Edit(self, request, context):
        ops = [convert.row_op_from_pb(op, f"ops[{i}]") for i, op in enumerate(request.ops)]
        if request.dry_run:
            writes, changes = self.kb.preview(request.table, ops)
            return pb.EditResponse(changes=[convert.row_change_to_pb(c) for c in changes],
                                   new_rows=convert.tensor_to_pb(writes.vectors))
        result = self.kb.edit(request.table, ops, author=request.author, message=request.message,
                              request=convert.edit_request_from_pb(request.request),
                              metrics=convert.metrics_from_json(request.metrics_json))
        return pb.EditResponse(commit=convert.commit_result_to_pb(result),
                               changes=[convert.row_change_to_pb(c) for c in result.changes])

    def InjectToken(self, request, context):
        vector = convert.tensor_from_pb(request.vector, "vector") if request.HasField("vector") else None
        result = self.kb.inject_token(request.table, request.token, vector=vector, like=list(request.like),
                                      author=request.author, message=request.message)
        return pb.InjectTokenResponse(commit=convert.commit_result_to_pb(result),
                                      token_id=int(self.kb.token_ids(request.table, [request.token])[0]))

    def Log(self, request, context):
        commits = self.kb.log(table=request.table or None, limit=request.limit or None)
        return pb.LogResponse(commits=[convert.commit_info_to_pb(c) for c in commits])

    def Show(self, request, context):
        if not (request.at.version or request.at.tag):
            _missing("at.version")
        info, changes = self.kb.show(self.kb.resolve_version(**convert.version_from_pb(request.at)))
        return pb.ShowResponse(commit=convert.commit_info_to_pb(info), changes=[convert.row_change_to_pb(c) for c in changes])

    def Diff(self, request, context):
        a = self.kb.resolve_version(**convert.version_from_pb(getattr(request, "from")))
        b = self.kb.resolve_version(**convert.version_from_pb(request.to))
        changes = self.kb.diff(a, b, table=request.table or None)
        return pb.DiffResponse(changes=[convert.row_change_to_pb(c) for c in changes], from_version=a, to_version=b)

    def Revert(self, request, context):
        if not request.version:
            _missing("version")
        return convert.commit_result_to_pb(self.kb.revert(request.version, author=request.author, message=request.message))

    def Tag(self, request, context):
        if request.delete:
            return pb.TagResponse(name=request.name, version=self.kb.delete_tag(request.name))
        return pb.TagResponse(name=request.name, version=self.kb.tag(request.name, self.kb.resolve_version(**convert.version_from_pb(request.at))))

    def ListTags(self, request, context):
        return pb.ListTagsResponse(tags=self.kb.tags())

    def HotTokens(self, request, context):
        v = self.kb.resolve_version(**convert.version_from_pb(request.at))
        alive = self.kb.table(request.table, v).alive(v)  # NOT_FOUND for a bank the version lacks
        ids, counts, served = self.hot_tokens.top(request.table, request.n, alive)
        return pb.HotTokensResponse(token_ids=ids.tolist(), counts=counts.tolist(), served=served, version=v)

    def ImportTable(self, request_iterator, context):
        first = next(request_iterator, None)
        if first is None or not first.HasField("header") or first.HasField("rows"):
            raise InvalidArgument("header: the first message must hold the header and no rows")
        header = convert.import_header_from_pb(first.header)
        _, layers, dim = header["shape"]
        chunks = (convert.rows_from_pb(m.rows, header["dtype"], layers, dim, f"rows (message {i})")
                  for i, m in enumerate(request_iterator, 1))
        return convert.commit_result_to_pb(self.kb.import_chunks(chunks=chunks, **header))

    def ExportTable(self, request, context):
        max_bytes = min(request.max_message_bytes or EXPORT_MESSAGE_BYTES, self.max_message_bytes - (1 << 20))
        v = self.kb.resolve_version(**convert.version_from_pb(request.at))
        return convert.export_to_pb(self.kb.export_table(request.table, v, chunk_bytes=max_bytes), max_bytes)


def _missing(field):
    raise InvalidArgument(f"{field}: required")
