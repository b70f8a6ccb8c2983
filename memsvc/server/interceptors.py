"""The interceptors between gRPC and the servicers: error mapping, unparsable requests, streams
served as unary calls, and replies whose wire bytes a servicer wrote itself."""
import errno
import logging
import threading
import time

import grpc

from memsvc.core import errors

LOG = logging.getLogger("memsvc.servicer")

# The single mapping from memsvc errors to gRPC status codes (most specific class first).
STATUS_OF = [
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.OutOfRange, grpc.StatusCode.OUT_OF_RANGE),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.Conflict, grpc.StatusCode.ALREADY_EXISTS),
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (ValueError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.MemsvcError, grpc.StatusCode.FAILED_PRECONDITION),
]


def status_of(error: Exception) -> grpc.StatusCode:
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:  # a file write on a full disk
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    return next((code for cls, code in STATUS_OF if isinstance(error, cls)), grpc.StatusCode.INTERNAL)


class UnaryInterceptor(grpc.ServerInterceptor):
    """An interceptor of unary-unary calls: ``wrap(method, handler)`` returns the handler with its
    behaviour wrapped. StreamOfUnaryCalls applies the same wraps to each message of a stream."""

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        return self.wrap(details.method, handler)

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        raise NotImplementedError


class ErrorInterceptor(UnaryInterceptor):
    """Turns exceptions raised by servicer methods into status codes with their message; for the
    one-sided streams (ImportTable, ExportTable) also unparsable request messages (INVALID_ARGUMENT,
    which UnparsableRequestInterceptor gives unary calls)."""

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is not None and (handler.stream_unary or handler.unary_stream):
            return self.wrap_stream(details.method, handler)
        return super().intercept_service(lambda _: handler, details)

    def wrap(self, method, handler):
        behaviour = handler.unary_unary

        def guarded(request, context):
            try:
                return behaviour(request, context)
            except Exception as e:  # noqa: BLE001 - every error gets a status, the server keeps serving
                abort_with(e, method, context)

        return grpc.unary_unary_rpc_method_handler(guarded, request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)

    def wrap_stream(self, method, handler):
        def parsed(request):
            if isinstance(request, Exception):
                raise errors.InvalidArgument(f"request: not a valid {method} request ({request})")
            return request

        if handler.stream_unary:
            def guarded(requests, context):
                try:
                    return handler.stream_unary(map(parsed, requests), context)
                except Exception as e:  # noqa: BLE001
                    abort_with(e, method, context)
        else:
            def guarded(request, context):
                try:
                    yield from handler.unary_stream(parsed(request), context)
                except Exception as e:  # noqa: BLE001
                    abort_with(e, method, context)
        make = grpc.stream_unary_rpc_method_handler if handler.stream_unary else grpc.unary_stream_rpc_method_handler
        return make(guarded, request_deserializer=lenient(handler.request_deserializer),
                    response_serializer=handler.response_serializer)


def abort_with(error: Exception, method: str, context):
    """End a call with the status of ``error`` (a stream the client cancelled is no internal error)."""
    code = status_of(error)
    if code == grpc.StatusCode.INTERNAL and context.is_active():
        LOG.exception("internal error in %s", method)
    context.abort(code, str(error))


def lenient(parse):
    """A request parser that returns the parse error instead of raising it (gRPC would answer INTERNAL)."""
    def parsed(data):
        try:
            return parse(data)
        except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and friends
            return e

    return parsed


class UnparsableRequestInterceptor(UnaryInterceptor):
    """A request whose bytes do not parse is INVALID_ARGUMENT (gRPC itself answers INTERNAL)."""

    def wrap(self, method, handler):
        if handler.request_deserializer is None:
            return handler
        behaviour = handler.unary_unary

        def guarded(request, context):
            if isinstance(request, Exception):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"request: not a valid {method} request ({request})")
            return behaviour(request, context)

        return grpc.unary_unary_rpc_method_handler(guarded, request_deserializer=lenient(handler.request_deserializer),
                                                   response_serializer=handler.response_serializer)


class RawReplies(UnaryInterceptor):
    """The named methods' servicers return their reply as wire bytes written by hand
    (memsvc.wire.lookup.LookupWire: Lookup copies its rows once, not through protobuf): their
    handler sends those bytes as they are instead of serializing a message. Innermost, so that
    every other wrap keeps this serializer."""

    def __init__(self, methods):
        self.methods = frozenset(methods)

    def wrap(self, method, handler):
        if method not in self.methods:
            return handler
        return grpc.unary_unary_rpc_method_handler(handler.unary_unary, request_deserializer=handler.request_deserializer,
                                                   response_serializer=lambda reply: reply.data)


class StreamOfUnaryCalls(grpc.ServerInterceptor):
    """Serves a streaming method as one call of its unary twin per message (LookupStream ->
    Lookup, SearchStream -> Search): ``twins`` maps the stream's full name to (the unary's full
    name, its servicer handler), and each message goes through ``per_message`` interceptors'
    wraps (metrics, parsing, errors) exactly as a unary call does. The interceptors outside this one (auth) see
    the stream once, when it opens. An error ends the stream with its status.

    An open stream holds one worker thread for its whole life (grpc's sync server), so streams
    are bounded (issue 19: sixteen idle streams used to freeze every call and the health check):
    at most ``max_streams`` open at once (beyond: RESOURCE_EXHAUSTED, the unary twin still
    answers), and one that waits ``idle_seconds`` for its next message is ended with UNAVAILABLE,
    which frees its thread. Clients send their message as a unary call when a stream fails."""

    def __init__(self, twins: dict, per_message: list, max_streams: int, idle_seconds: float):
        self.calls, self.unary_of = {}, {}
        for stream, (unary, handler) in twins.items():
            for interceptor in reversed(per_message):
                handler = interceptor.wrap(unary, handler)
            self.calls[stream], self.unary_of[stream] = handler, unary
        self.max_streams, self.idle_seconds = max_streams, idle_seconds
        self.lock = threading.Lock()
        self.idle_since = {}  # the context of each open stream -> monotonic time it went idle (None: serving)
        self.reaper = None  # the thread that ends idle streams; runs while any stream is open

    def intercept_service(self, continuation, details):
        call = self.calls.get(details.method)
        if call is None:
            return continuation(details)
        behaviour, unary = call.unary_unary, self.unary_of[details.method]
        return grpc.stream_stream_rpc_method_handler(
            lambda requests, context: self._open(behaviour, unary, requests, context),
            request_deserializer=call.request_deserializer, response_serializer=call.response_serializer)

    def _open(self, behaviour, unary, requests, context):
        with self.lock:
            if len(self.idle_since) >= self.max_streams:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"streams: {len(self.idle_since)} streams open, the limit (max_streams "
                              f"{self.max_streams}); send {unary} as unary calls")
            self.idle_since[context] = time.monotonic()
            if self.reaper is None:
                self.reaper = threading.Thread(target=self._end_idle_streams, daemon=True, name="memsvc-stream-reaper")
                self.reaper.start()
        if not context.add_callback(lambda: self._closed(context)):
            self._closed(context)
        return self._replies(behaviour, requests, context)

    def _replies(self, behaviour, requests, context):
        for request in requests:
            self._mark(context, None)
            yield behaviour(request, context)
            self._mark(context, time.monotonic())

    def _mark(self, context, idle_since):
        with self.lock:  # a stream that has closed meanwhile stays out
            if context in self.idle_since:
                self.idle_since[context] = idle_since

    def _closed(self, context):
        with self.lock:
            self.idle_since.pop(context, None)

    def _end_idle_streams(self):
        while True:
            time.sleep(min(1.0, self.idle_seconds / 4))
            now = time.monotonic()
            with self.lock:
                if not self.idle_since:
                    self.reaper = None
                    return
                idle = [c for c, since in self.idle_since.items() if since is not None and now - since > self.idle_seconds]
            for context in idle:
                end_stream(context, grpc.StatusCode.UNAVAILABLE,
                           f"stream: idle for {self.idle_seconds} s (stream_idle_seconds), ended; open a new one")


def end_stream(context, code: grpc.StatusCode, details: str):
    """Ends a stream from another thread than the one serving it (which is blocked waiting for the
    next message). grpc's public ``cancel()`` only sends CANCELLED; the call object under it can send
    a status with details, which tells a client why."""
    call = getattr(getattr(context, "_rpc_event", None), "call", None)
    if call is None:
        context.cancel()
    else:
        call.cancel(code.value[0], details)
