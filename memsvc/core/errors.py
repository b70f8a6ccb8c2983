"""The errors memsvc raises, defined once.

The gRPC layer maps each class to one status code (memsvc/server/interceptors.py, ``STATUS_OF``); the CLI
turns every one into a one-line ``Error: ...`` with exit status 1. Messages name the field.
"""


class MemsvcError(Exception):
    """Base class: something the caller asked for cannot be done."""


class InvalidArgument(MemsvcError, ValueError):
    """A field of the request is malformed (wrong shape, dtype, NaN, empty batch...)."""


class NotFound(MemsvcError, LookupError):
    """A named thing (table, token, version, tag, index) does not exist."""

    def __str__(self):  # LookupError would repr() the message with quotes
        return str(self.args[0]) if self.args else ""


class OutOfRange(MemsvcError):
    """A number is outside what the table holds (token id, layer)."""


class FailedPrecondition(MemsvcError):
    """The store is not in a state that allows this (corrupt data dir, index not ready...)."""


class ResourceExhausted(MemsvcError):
    """The request is larger than the service accepts."""


class Conflict(MemsvcError):
    """A concurrent change made this one impossible (e.g. a tag that already exists)."""


class Unavailable(MemsvcError):
    """The service cannot answer this now, and may soon (a read replica has not yet applied the
    version a read asked for); retry."""
