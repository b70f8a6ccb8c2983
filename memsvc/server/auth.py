"""API keys with roles, checked in one server interceptor.

Two roles, as in Qdrant: a ``read`` key may call reads (lookups, searches, history), a ``write``
key may also change the knowledge base (edit, inject, revert, tag, indexes, mosaic pairs).
Clients send ``authorization: Bearer <key>`` metadata. Health checking and reflection stay open
so that probes and tooling work without a key.

Keys come from a keys file (one ``<role> <key>`` per line, ``#`` comments) and from the
environment (``MEMSVC_READ_KEYS`` / ``MEMSVC_WRITE_KEYS``, comma-separated). Only SHA-256 digests
of the keys are kept in memory, so a lookup never compares a secret byte by byte.
"""
import hashlib
import os
import re
from pathlib import Path

import grpc

from memsvc.core.errors import FailedPrecondition, InvalidArgument
from memsvc.wire.auth import is_loopback

READ, WRITE = "read", "write"
RANK = {READ: 1, WRITE: 2}  # a write key may do everything a read key may

OPEN_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
                 "grpc.reflection.v1.ServerReflection")
# Methods are classified by their first CamelCase word, so RPCs added later get a role without
# editing this table: ListTags, SearchTokens, GetIndex, ExportTable read; Edit, Tag, CreateIndex, AddPairs,
# ImportTable write.
READ_VERBS = {"List", "Describe", "Get", "Lookup", "Search", "Vocabulary", "Log", "Show", "Diff",
              "Read", "Query", "Retrieve", "Nearest", "Stats", "Check", "Watch", "Snapshot", "Changed", "Hot",
              "Export", "Bootstrap", "Follow", "Replica"}
ENV_KEYS = {READ: "MEMSVC_READ_KEYS", WRITE: "MEMSVC_WRITE_KEYS"}


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def required_role(method: str) -> str | None:
    """The role a full method name (``/pkg.Service/Method``) needs; None for open services.
    Unknown verbs need ``write``: a new mutating RPC is never readable by accident."""
    service, _, name = method.strip("/").partition("/")
    if service in OPEN_SERVICES:
        return None
    verb = re.match(r"[A-Z][a-z]*", name)
    return READ if verb and verb.group(0) in READ_VERBS else WRITE


def load_keys(keys_file: Path | None = None, environ=os.environ) -> dict:
    """{sha256(key): role} from a keys file and the MEMSVC_*_KEYS variables (empty: auth off)."""
    pairs = []
    if keys_file is not None:
        for n, line in enumerate(Path(keys_file).read_text().splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if line:
                role, _, key = line.partition(" ")
                pairs.append((role, key.strip(), f"{keys_file}:{n}"))
    for role, var in ENV_KEYS.items():
        pairs += [(role, k.strip(), var) for k in environ.get(var, "").split(",") if k.strip()]
    keys = {}
    for role, key, where in pairs:
        if role not in RANK or not key:
            raise InvalidArgument(f"api keys: {where}: expected '<read|write> <key>', got role {role!r}")
        keys[digest(key)] = max(role, keys.get(digest(key), READ), key=RANK.get)
    return keys


def check_exposure(host: str, keys: dict, insecure: bool):
    """Secure by default: refuse to listen beyond loopback without keys unless told --insecure."""
    if not keys and not insecure and not is_loopback(host):
        raise FailedPrecondition(f"host: refusing to serve {host} without API keys; give --api-keys-file "
                                 f"(or {ENV_KEYS[WRITE]}) or pass --insecure")


def _denied(handler, code, details):
    """A handler of the same kind as ``handler`` that fails every call with ``code``."""
    def abort(request_or_iterator, context):
        context.abort(code, details)

    kind = ("unary_unary" if handler.unary_unary else "unary_stream" if handler.unary_stream
            else "stream_unary" if handler.stream_unary else "stream_stream")
    make = getattr(grpc, f"{kind}_rpc_method_handler")
    return make(abort, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)


class AuthInterceptor(grpc.ServerInterceptor):
    """UNAUTHENTICATED without a known key, PERMISSION_DENIED when the key's role is too low."""

    def __init__(self, keys: dict):
        self.keys = keys

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        need = required_role(details.method)
        if handler is None or need is None:
            return handler
        auth = dict(details.invocation_metadata).get("authorization", "")
        scheme, _, key = auth.partition(" ")
        role = self.keys.get(digest(key.strip())) if scheme.lower() == "bearer" else None
        if role is None:
            return _denied(handler, grpc.StatusCode.UNAUTHENTICATED,
                           "authorization: missing or unknown API key (send 'authorization: Bearer <key>')")
        if RANK[role] < RANK[need]:
            return _denied(handler, grpc.StatusCode.PERMISSION_DENIED,
                           f"authorization: {details.method} needs a {need} key; this key is {role}-only")
        return handler
