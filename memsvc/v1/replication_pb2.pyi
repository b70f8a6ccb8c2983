from memsvc.v1 import knowledge_pb2 as _knowledge_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BootstrapRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FollowRequest(_message.Message):
    __slots__ = ("from_version", "from_commit_time")
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    FROM_COMMIT_TIME_FIELD_NUMBER: _ClassVar[int]
    from_version: int
    from_commit_time: float
    def __init__(self, from_version: _Optional[int] = ..., from_commit_time: _Optional[float] = ...) -> None: ...

class ReplicaStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReplicaFile(_message.Message):
    __slots__ = ("path", "size", "offset", "data", "crc32")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CRC32_FIELD_NUMBER: _ClassVar[int]
    path: str
    size: int
    offset: int
    data: bytes
    crc32: int
    def __init__(self, path: _Optional[str] = ..., size: _Optional[int] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., crc32: _Optional[int] = ...) -> None: ...

class CatalogValue(_message.Message):
    __slots__ = ("null", "integer", "real", "text", "blob")
    NULL_FIELD_NUMBER: _ClassVar[int]
    INTEGER_FIELD_NUMBER: _ClassVar[int]
    REAL_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    BLOB_FIELD_NUMBER: _ClassVar[int]
    null: bool
    integer: int
    real: float
    text: str
    blob: bytes
    def __init__(self, null: _Optional[bool] = ..., integer: _Optional[int] = ..., real: _Optional[float] = ..., text: _Optional[str] = ..., blob: _Optional[bytes] = ...) -> None: ...

class CatalogRow(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedCompositeFieldContainer[CatalogValue]
    def __init__(self, values: _Optional[_Iterable[_Union[CatalogValue, _Mapping]]] = ...) -> None: ...

class CatalogRows(_message.Message):
    __slots__ = ("table", "columns", "rows")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    table: str
    columns: _containers.RepeatedScalarFieldContainer[str]
    rows: _containers.RepeatedCompositeFieldContainer[CatalogRow]
    def __init__(self, table: _Optional[str] = ..., columns: _Optional[_Iterable[str]] = ..., rows: _Optional[_Iterable[_Union[CatalogRow, _Mapping]]] = ...) -> None: ...

class ReplicaMessage(_message.Message):
    __slots__ = ("file", "rows", "commit", "head_version", "head_time", "tags")
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    FILE_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    HEAD_VERSION_FIELD_NUMBER: _ClassVar[int]
    HEAD_TIME_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    file: ReplicaFile
    rows: CatalogRows
    commit: int
    head_version: int
    head_time: float
    tags: _containers.ScalarMap[str, int]
    def __init__(self, file: _Optional[_Union[ReplicaFile, _Mapping]] = ..., rows: _Optional[_Union[CatalogRows, _Mapping]] = ..., commit: _Optional[int] = ..., head_version: _Optional[int] = ..., head_time: _Optional[float] = ..., tags: _Optional[_Mapping[str, int]] = ...) -> None: ...
