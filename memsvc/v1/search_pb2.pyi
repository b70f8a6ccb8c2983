from memsvc.v1 import knowledge_pb2 as _knowledge_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SearchRequest(_message.Message):
    __slots__ = ("table", "layer", "queries", "tokens", "token_ids", "k", "index", "params", "at", "metric", "head", "ids_only", "exact", "min_version")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    TABLE_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    IDS_ONLY_FIELD_NUMBER: _ClassVar[int]
    EXACT_FIELD_NUMBER: _ClassVar[int]
    MIN_VERSION_FIELD_NUMBER: _ClassVar[int]
    table: str
    layer: int
    queries: _knowledge_pb2.Tensor
    tokens: _containers.RepeatedScalarFieldContainer[str]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    k: int
    index: str
    params: _containers.ScalarMap[str, int]
    at: _knowledge_pb2.VersionRef
    metric: str
    head: int
    ids_only: bool
    exact: bool
    min_version: int
    def __init__(self, table: _Optional[str] = ..., layer: _Optional[int] = ..., queries: _Optional[_Union[_knowledge_pb2.Tensor, _Mapping]] = ..., tokens: _Optional[_Iterable[str]] = ..., token_ids: _Optional[_Iterable[int]] = ..., k: _Optional[int] = ..., index: _Optional[str] = ..., params: _Optional[_Mapping[str, int]] = ..., at: _Optional[_Union[_knowledge_pb2.VersionRef, _Mapping]] = ..., metric: _Optional[str] = ..., head: _Optional[int] = ..., ids_only: _Optional[bool] = ..., exact: _Optional[bool] = ..., min_version: _Optional[int] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("ids", "distances", "tokens", "version", "index", "index_version", "lag_rows", "metric", "labels")
    IDS_FIELD_NUMBER: _ClassVar[int]
    DISTANCES_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    INDEX_VERSION_FIELD_NUMBER: _ClassVar[int]
    LAG_ROWS_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ids: _knowledge_pb2.Tensor
    distances: _knowledge_pb2.Tensor
    tokens: _containers.RepeatedScalarFieldContainer[str]
    version: int
    index: str
    index_version: int
    lag_rows: int
    metric: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ids: _Optional[_Union[_knowledge_pb2.Tensor, _Mapping]] = ..., distances: _Optional[_Union[_knowledge_pb2.Tensor, _Mapping]] = ..., tokens: _Optional[_Iterable[str]] = ..., version: _Optional[int] = ..., index: _Optional[str] = ..., index_version: _Optional[int] = ..., lag_rows: _Optional[int] = ..., metric: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ...) -> None: ...

class IndexInfo(_message.Message):
    __slots__ = ("name", "table", "layer", "kind", "metric", "state", "stage", "progress", "version", "error", "count", "lag_commits", "lag_rows", "created", "train_queries_from", "config_json", "head")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    LAG_COMMITS_FIELD_NUMBER: _ClassVar[int]
    LAG_ROWS_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    TRAIN_QUERIES_FROM_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    name: str
    table: str
    layer: int
    kind: str
    metric: str
    state: str
    stage: str
    progress: float
    version: int
    error: str
    count: int
    lag_commits: int
    lag_rows: int
    created: float
    train_queries_from: str
    config_json: str
    head: int
    def __init__(self, name: _Optional[str] = ..., table: _Optional[str] = ..., layer: _Optional[int] = ..., kind: _Optional[str] = ..., metric: _Optional[str] = ..., state: _Optional[str] = ..., stage: _Optional[str] = ..., progress: _Optional[float] = ..., version: _Optional[int] = ..., error: _Optional[str] = ..., count: _Optional[int] = ..., lag_commits: _Optional[int] = ..., lag_rows: _Optional[int] = ..., created: _Optional[float] = ..., train_queries_from: _Optional[str] = ..., config_json: _Optional[str] = ..., head: _Optional[int] = ...) -> None: ...

class CreateIndexRequest(_message.Message):
    __slots__ = ("name", "table", "layer", "kind", "metric", "config_json", "at", "head")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    name: str
    table: str
    layer: int
    kind: str
    metric: str
    config_json: str
    at: _knowledge_pb2.VersionRef
    head: int
    def __init__(self, name: _Optional[str] = ..., table: _Optional[str] = ..., layer: _Optional[int] = ..., kind: _Optional[str] = ..., metric: _Optional[str] = ..., config_json: _Optional[str] = ..., at: _Optional[_Union[_knowledge_pb2.VersionRef, _Mapping]] = ..., head: _Optional[int] = ...) -> None: ...

class DropIndexRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListIndexesRequest(_message.Message):
    __slots__ = ("min_version",)
    MIN_VERSION_FIELD_NUMBER: _ClassVar[int]
    min_version: int
    def __init__(self, min_version: _Optional[int] = ...) -> None: ...

class ListIndexesResponse(_message.Message):
    __slots__ = ("indexes",)
    INDEXES_FIELD_NUMBER: _ClassVar[int]
    indexes: _containers.RepeatedCompositeFieldContainer[IndexInfo]
    def __init__(self, indexes: _Optional[_Iterable[_Union[IndexInfo, _Mapping]]] = ...) -> None: ...

class DescribeIndexRequest(_message.Message):
    __slots__ = ("name", "min_version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MIN_VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    min_version: int
    def __init__(self, name: _Optional[str] = ..., min_version: _Optional[int] = ...) -> None: ...
