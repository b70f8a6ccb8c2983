"""The interceptors between gRPC and the servicers: error mapping, unparsable requests, streams
served as unary calls, and replies whose wire bytes a servicer wrote itself."""
import logging

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
    (ValueError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.MemsvcError, grpc.StatusCode.FAILED_PRECONDITION),
]


def status_of(error: Exception) -> grpc.StatusCode:
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
    """Turns exceptions raised by servicer methods into status codes with their message."""

    def wrap(self, method, handler):
        behaviour = handler.unary_unary

        def guarded(request, context):
            try:
                return behaviour(request, context)
            except Exception as e:  # noqa: BLE001 - every error gets a status, the server keeps serving
                code = status_of(e)
                if code == grpc.StatusCode.INTERNAL:
                    LOG.exception("internal error in %s", method)
                context.abort(code, str(e))

        return grpc.unary_unary_rpc_method_handler(guarded, request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)


class UnparsableRequestInterceptor(UnaryInterceptor):
    """A request whose bytes do not parse is INVALID_ARGUMENT (gRPC itself answers INTERNAL)."""

    def wrap(self, method, handler):
        if handler.request_deserializer is None:
            return handler
        parse, behaviour = handler.request_deserializer, handler.unary_unary

        def lenient(data):
            try:
                return parse(data)
            except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and friends
                return e

        def guarded(request, context):
            if isinstance(request, Exception):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"request: not a valid {method} request ({request})")
            return behaviour(request, context)

        return grpc.unary_unary_rpc_method_handler(guarded, request_deserializer=lenient,
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
    the stream once, when it opens. An error ends the stream with its status."""

    def __init__(self, twins: dict, per_message: list):
        self.calls = {}
        for stream, (unary, handler) in twins.items():
            for interceptor in reversed(per_message):
                handler = interceptor.wrap(unary, handler)
            self.calls[stream] = handler

    def intercept_service(self, continuation, details):
        call = self.calls.get(details.method)
        if call is None:
            return continuation(details)
        behaviour = call.unary_unary
        return grpc.stream_stream_rpc_method_handler(
            lambda requests, context: (behaviour(request, context) for request in requests),
            request_deserializer=call.request_deserializer, response_serializer=call.response_serializer)
