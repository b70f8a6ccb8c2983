from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class VersionRef(_message.Message):
    __slots__ = ("version", "tag")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    version: int
    tag: str
    def __init__(self, version: _Optional[int] = ..., tag: _Optional[str] = ...) -> None: ...

class TableInfo(_message.Message):
    __slots__ = ("name", "kind", "dtype", "vocab_size", "num_layers", "dim", "created_version", "base_version", "version", "model_layers", "tokenizer", "replica")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    CREATED_VERSION_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_LAYERS_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    dtype: str
    vocab_size: int
    num_layers: int
    dim: int
    created_version: int
    base_version: int
    version: int
    model_layers: _containers.RepeatedScalarFieldContainer[int]
    tokenizer: str
    replica: ReplicaState
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., dtype: _Optional[str] = ..., vocab_size: _Optional[int] = ..., num_layers: _Optional[int] = ..., dim: _Optional[int] = ..., created_version: _Optional[int] = ..., base_version: _Optional[int] = ..., version: _Optional[int] = ..., model_layers: _Optional[_Iterable[int]] = ..., tokenizer: _Optional[str] = ..., replica: _Optional[_Union[ReplicaState, _Mapping]] = ...) -> None: ...

class ListTablesRequest(_message.Message):
    __slots__ = ("at", "min_version")
    AT_FIELD_NUMBER: _ClassVar[int]
    MIN_VERSION_FIELD_NUMBER: _ClassVar[int]
    at: VersionRef
    min_version: int
    def __init__(self, at: _Optional[_Union[VersionRef, _Mapping]] = ..., min_version: _Optional[int] = ...) -> None: ...

class ListTablesResponse(_message.Message):
    __slots__ = ("tables", "version")
    TABLES_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    tables: _containers.RepeatedCompositeFieldContainer[TableInfo]
    version: int
    def __init__(self, tables: _Optional[_Iterable[_Union[TableInfo, _Mapping]]] = ..., version: _Optional[int] = ...) -> None: ...

class DescribeTableRequest(_message.Message):
    __slots__ = ("table", "at", "min_version")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    MIN_VERSION_FIELD_NUMBER: _ClassVar[int]
    table: str
    at: VersionRef
    min_version: int
    def __init__(self, table: _Optional[str] = ..., at: _Optional[_Union[VersionRef, _Mapping]] = ..., min_version: _Optional[int] = ...) -> None: ...

class VocabularyRequest(_message.Message):
    __slots__ = ("table", "at", "with_tokenizer", "min_version")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    WITH_TOKENIZER_FIELD_NUMBER: _ClassVar[int]
    MIN_VERSION_FIELD_NUMBER: _ClassVar[int]
    table: str
    at: VersionRef
    with_tokenizer: bool
    min_version: int
    def __init__(self, table: _Optional[str] = ..., at: _Optional[_Union[VersionRef, _Mapping]] = ..., with_tokenizer: _Optional[bool] = ..., min_version: _Optional[int] = ...) -> None: ...

class VocabularyResponse(_message.Message):
    __slots__ = ("words", "version", "tokenizer_kind", "tokenizer")
    WORDS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_KIND_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FIELD_NUMBER: _ClassVar[int]
    words: _containers.RepeatedScalarFieldContainer[str]
    version: int
    tokenizer_kind: str
    tokenizer: bytes
    def __init__(self, words: _Optional[_Iterable[str]] = ..., version: _Optional[int] = ..., tokenizer_kind: _Optional[str] = ..., tokenizer: _Optional[bytes] = ...) -> None: ...

class RowOp(_message.Message):
    __slots__ = ("op", "token_id", "token", "layers", "vector", "source_token_id", "source_token", "alpha")
    class Op(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        OP_UNSPECIFIED: _ClassVar[RowOp.Op]
        SET: _ClassVar[RowOp.Op]
        COPY: _ClassVar[RowOp.Op]
        BLEND: _ClassVar[RowOp.Op]
        SCALE: _ClassVar[RowOp.Op]
        RESET: _ClassVar[RowOp.Op]
    OP_UNSPECIFIED: RowOp.Op
    SET: RowOp.Op
    COPY: RowOp.Op
    BLEND: RowOp.Op
    SCALE: RowOp.Op
    RESET: RowOp.Op
    OP_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    SOURCE_TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    op: RowOp.Op
    token_id: int
    token: str
    layers: _containers.RepeatedScalarFieldContainer[int]
    vector: Tensor
    source_token_id: int
    source_token: str
    alpha: float
    def __init__(self, op: _Optional[_Union[RowOp.Op, str]] = ..., token_id: _Optional[int] = ..., token: _Optional[str] = ..., layers: _Optional[_Iterable[int]] = ..., vector: _Optional[_Union[Tensor, _Mapping]] = ..., source_token_id: _Optional[int] = ..., source_token: _Optional[str] = ..., alpha: _Optional[float] = ...) -> None: ...

class LookupRequest(_message.Message):
    __slots__ = ("table", "layers", "token_ids", "tokens", "at", "overrides", "reply_buffer", "min_version")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    REPLY_BUFFER_FIELD_NUMBER: _ClassVar[int]
    MIN_VERSION_FIELD_NUMBER: _ClassVar[int]
    table: str
    layers: _containers.RepeatedScalarFieldContainer[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    tokens: _containers.RepeatedScalarFieldContainer[str]
    at: VersionRef
    overrides: _containers.RepeatedCompositeFieldContainer[RowOp]
    reply_buffer: SharedBuffer
    min_version: int
    def __init__(self, table: _Optional[str] = ..., layers: _Optional[_Iterable[int]] = ..., token_ids: _Optional[_Iterable[int]] = ..., tokens: _Optional[_Iterable[str]] = ..., at: _Optional[_Union[VersionRef, _Mapping]] = ..., overrides: _Optional[_Iterable[_Union[RowOp, _Mapping]]] = ..., reply_buffer: _Optional[_Union[SharedBuffer, _Mapping]] = ..., min_version: _Optional[int] = ...) -> None: ...

class SharedBuffer(_message.Message):
    __slots__ = ("name", "size", "key")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    name: str
    size: int
    key: bytes
    def __init__(self, name: _Optional[str] = ..., size: _Optional[int] = ..., key: _Optional[bytes] = ...) -> None: ...

class LookupResponse(_message.Message):
    __slots__ = ("rows", "unique_token_ids", "inverse", "version", "rows_in_buffer", "rows_in_request_order")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    UNIQUE_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    INVERSE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ROWS_IN_BUFFER_FIELD_NUMBER: _ClassVar[int]
    ROWS_IN_REQUEST_ORDER_FIELD_NUMBER: _ClassVar[int]
    rows: Tensor
    unique_token_ids: _containers.RepeatedScalarFieldContainer[int]
    inverse: _containers.RepeatedScalarFieldContainer[int]
    version: int
    rows_in_buffer: bool
    rows_in_request_order: bool
    def __init__(self, rows: _Optional[_Union[Tensor, _Mapping]] = ..., unique_token_ids: _Optional[_Iterable[int]] = ..., inverse: _Optional[_Iterable[int]] = ..., version: _Optional[int] = ..., rows_in_buffer: _Optional[bool] = ..., rows_in_request_order: _Optional[bool] = ...) -> None: ...

class SnapshotRequest(_message.Message):
    __slots__ = ("table", "at", "start_token_id", "max_bytes", "min_version", "reply_buffer")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    START_TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    MIN_VERSION_FIELD_NUMBER: _ClassVar[int]
    REPLY_BUFFER_FIELD_NUMBER: _ClassVar[int]
    table: str
    at: VersionRef
    start_token_id: int
    max_bytes: int
    min_version: int
    reply_buffer: SharedBuffer
    def __init__(self, table: _Optional[str] = ..., at: _Optional[_Union[VersionRef, _Mapping]] = ..., start_token_id: _Optional[int] = ..., max_bytes: _Optional[int] = ..., min_version: _Optional[int] = ..., reply_buffer: _Optional[_Union[SharedBuffer, _Mapping]] = ...) -> None: ...

class SnapshotResponse(_message.Message):
    __slots__ = ("version", "base_version", "base_path", "delta_token_ids", "delta_rows", "vocab_size", "next_token_id", "delta_tokens_total", "rows_in_buffer")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    BASE_PATH_FIELD_NUMBER: _ClassVar[int]
    DELTA_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    DELTA_ROWS_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    NEXT_TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    DELTA_TOKENS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ROWS_IN_BUFFER_FIELD_NUMBER: _ClassVar[int]
    version: int
    base_version: int
    base_path: str
    delta_token_ids: _containers.RepeatedScalarFieldContainer[int]
    delta_rows: Tensor
    vocab_size: int
    next_token_id: int
    delta_tokens_total: int
    rows_in_buffer: bool
    def __init__(self, version: _Optional[int] = ..., base_version: _Optional[int] = ..., base_path: _Optional[str] = ..., delta_token_ids: _Optional[_Iterable[int]] = ..., delta_rows: _Optional[_Union[Tensor, _Mapping]] = ..., vocab_size: _Optional[int] = ..., next_token_id: _Optional[int] = ..., delta_tokens_total: _Optional[int] = ..., rows_in_buffer: _Optional[bool] = ...) -> None: ...

class ChangedTokensRequest(_message.Message):
    __slots__ = ("table", "to", "min_version")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    FROM_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    MIN_VERSION_FIELD_NUMBER: _ClassVar[int]
    table: str
    to: VersionRef
    min_version: int
    def __init__(self, table: _Optional[str] = ..., to: _Optional[_Union[VersionRef, _Mapping]] = ..., min_version: _Optional[int] = ..., **kwargs) -> None: ...

class ChangedTokensResponse(_message.Message):
    __slots__ = ("token_ids", "from_version", "to_version")
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    from_version: int
    to_version: int
    def __init__(self, token_ids: _Optional[_Iterable[int]] = ..., from_version: _Optional[int] = ..., to_version: _Optional[int] = ...) -> None: ...

class EditInfo(_message.Message):
    __slots__ = ("prompt", "subject", "target_new", "ground_truth")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    TARGET_NEW_FIELD_NUMBER: _ClassVar[int]
    GROUND_TRUTH_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    subject: str
    target_new: str
    ground_truth: str
    def __init__(self, prompt: _Optional[str] = ..., subject: _Optional[str] = ..., target_new: _Optional[str] = ..., ground_truth: _Optional[str] = ...) -> None: ...

class EditRequest(_message.Message):
    __slots__ = ("table", "ops", "author", "message", "request", "metrics_json", "dry_run")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    OPS_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    METRICS_JSON_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    table: str
    ops: _containers.RepeatedCompositeFieldContainer[RowOp]
    author: str
    message: str
    request: EditInfo
    metrics_json: str
    dry_run: bool
    def __init__(self, table: _Optional[str] = ..., ops: _Optional[_Iterable[_Union[RowOp, _Mapping]]] = ..., author: _Optional[str] = ..., message: _Optional[str] = ..., request: _Optional[_Union[EditInfo, _Mapping]] = ..., metrics_json: _Optional[str] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class CommitResult(_message.Message):
    __slots__ = ("version", "rows_changed")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ROWS_CHANGED_FIELD_NUMBER: _ClassVar[int]
    version: int
    rows_changed: int
    def __init__(self, version: _Optional[int] = ..., rows_changed: _Optional[int] = ...) -> None: ...

class RowChange(_message.Message):
    __slots__ = ("table", "token_id", "token", "layer", "l2", "cosine")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    L2_FIELD_NUMBER: _ClassVar[int]
    COSINE_FIELD_NUMBER: _ClassVar[int]
    table: str
    token_id: int
    token: str
    layer: int
    l2: float
    cosine: float
    def __init__(self, table: _Optional[str] = ..., token_id: _Optional[int] = ..., token: _Optional[str] = ..., layer: _Optional[int] = ..., l2: _Optional[float] = ..., cosine: _Optional[float] = ...) -> None: ...

class EditResponse(_message.Message):
    __slots__ = ("commit", "changes", "new_rows")
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    NEW_ROWS_FIELD_NUMBER: _ClassVar[int]
    commit: CommitResult
    changes: _containers.RepeatedCompositeFieldContainer[RowChange]
    new_rows: Tensor
    def __init__(self, commit: _Optional[_Union[CommitResult, _Mapping]] = ..., changes: _Optional[_Iterable[_Union[RowChange, _Mapping]]] = ..., new_rows: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class InjectTokenRequest(_message.Message):
    __slots__ = ("table", "token", "vector", "like", "author", "message")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    LIKE_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    table: str
    token: str
    vector: Tensor
    like: _containers.RepeatedScalarFieldContainer[str]
    author: str
    message: str
    def __init__(self, table: _Optional[str] = ..., token: _Optional[str] = ..., vector: _Optional[_Union[Tensor, _Mapping]] = ..., like: _Optional[_Iterable[str]] = ..., author: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class InjectTokenResponse(_message.Message):
    __slots__ = ("commit", "token_id")
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    commit: CommitResult
    token_id: int
    def __init__(self, commit: _Optional[_Union[CommitResult, _Mapping]] = ..., token_id: _Optional[int] = ...) -> None: ...

class CommitInfo(_message.Message):
    __slots__ = ("version", "time", "author", "message", "kind", "tables", "rows_changed", "request", "metrics_json", "tags")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    ROWS_CHANGED_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    METRICS_JSON_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    version: int
    time: float
    author: str
    message: str
    kind: str
    tables: _containers.RepeatedScalarFieldContainer[str]
    rows_changed: int
    request: EditInfo
    metrics_json: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, version: _Optional[int] = ..., time: _Optional[float] = ..., author: _Optional[str] = ..., message: _Optional[str] = ..., kind: _Optional[str] = ..., tables: _Optional[_Iterable[str]] = ..., rows_changed: _Optional[int] = ..., request: _Optional[_Union[EditInfo, _Mapping]] = ..., metrics_json: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ...) -> None: ...

class LogRequest(_message.Message):
    __slots__ = ("table", "limit", "min_version")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    MIN_VERSION_FIELD_NUMBER: _ClassVar[int]
    table: str
    limit: int
    min_version: int
    def __init__(self, table: _Optional[str] = ..., limit: _Optional[int] = ..., min_version: _Optional[int] = ...) -> None: ...

class LogResponse(_message.Message):
    __slots__ = ("commits",)
    COMMITS_FIELD_NUMBER: _ClassVar[int]
    commits: _containers.RepeatedCompositeFieldContainer[CommitInfo]
    def __init__(self, commits: _Optional[_Iterable[_Union[CommitInfo, _Mapping]]] = ...) -> None: ...

class ShowRequest(_message.Message):
    __slots__ = ("at", "min_version")
    AT_FIELD_NUMBER: _ClassVar[int]
    MIN_VERSION_FIELD_NUMBER: _ClassVar[int]
    at: VersionRef
    min_version: int
    def __init__(self, at: _Optional[_Union[VersionRef, _Mapping]] = ..., min_version: _Optional[int] = ...) -> None: ...

class ShowResponse(_message.Message):
    __slots__ = ("commit", "changes")
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    commit: CommitInfo
    changes: _containers.RepeatedCompositeFieldContainer[RowChange]
    def __init__(self, commit: _Optional[_Union[CommitInfo, _Mapping]] = ..., changes: _Optional[_Iterable[_Union[RowChange, _Mapping]]] = ...) -> None: ...

class DiffRequest(_message.Message):
    __slots__ = ("to", "table", "min_version")
    FROM_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    MIN_VERSION_FIELD_NUMBER: _ClassVar[int]
    to: VersionRef
    table: str
    min_version: int
    def __init__(self, to: _Optional[_Union[VersionRef, _Mapping]] = ..., table: _Optional[str] = ..., min_version: _Optional[int] = ..., **kwargs) -> None: ...

class DiffResponse(_message.Message):
    __slots__ = ("changes", "from_version", "to_version")
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    changes: _containers.RepeatedCompositeFieldContainer[RowChange]
    from_version: int
    to_version: int
    def __init__(self, changes: _Optional[_Iterable[_Union[RowChange, _Mapping]]] = ..., from_version: _Optional[int] = ..., to_version: _Optional[int] = ...) -> None: ...

class RevertRequest(_message.Message):
    __slots__ = ("version", "author", "message")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    version: int
    author: str
    message: str
    def __init__(self, version: _Optional[int] = ..., author: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class TagRequest(_message.Message):
    __slots__ = ("name", "at", "delete")
    NAME_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    name: str
    at: VersionRef
    delete: bool
    def __init__(self, name: _Optional[str] = ..., at: _Optional[_Union[VersionRef, _Mapping]] = ..., delete: _Optional[bool] = ...) -> None: ...

class TagResponse(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class ListTagsRequest(_message.Message):
    __slots__ = ("min_version",)
    MIN_VERSION_FIELD_NUMBER: _ClassVar[int]
    min_version: int
    def __init__(self, min_version: _Optional[int] = ...) -> None: ...

class ListTagsResponse(_message.Message):
    __slots__ = ("tags",)
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    TAGS_FIELD_NUMBER: _ClassVar[int]
    tags: _containers.ScalarMap[str, int]
    def __init__(self, tags: _Optional[_Mapping[str, int]] = ...) -> None: ...

class HotTokensRequest(_message.Message):
    __slots__ = ("table", "n", "at", "min_version")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    MIN_VERSION_FIELD_NUMBER: _ClassVar[int]
    table: str
    n: int
    at: VersionRef
    min_version: int
    def __init__(self, table: _Optional[str] = ..., n: _Optional[int] = ..., at: _Optional[_Union[VersionRef, _Mapping]] = ..., min_version: _Optional[int] = ...) -> None: ...

class HotTokensResponse(_message.Message):
    __slots__ = ("token_ids", "counts", "served", "version")
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    SERVED_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    counts: _containers.RepeatedScalarFieldContainer[int]
    served: int
    version: int
    def __init__(self, token_ids: _Optional[_Iterable[int]] = ..., counts: _Optional[_Iterable[int]] = ..., served: _Optional[int] = ..., version: _Optional[int] = ...) -> None: ...

class ImportTableHeader(_message.Message):
    __slots__ = ("table", "dtype", "vocab_size", "num_layers", "dim", "words", "vocab_file", "author", "message", "model_layers", "tokenizer_kind", "tokenizer")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    WORDS_FIELD_NUMBER: _ClassVar[int]
    VOCAB_FILE_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_LAYERS_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_KIND_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FIELD_NUMBER: _ClassVar[int]
    table: str
    dtype: str
    vocab_size: int
    num_layers: int
    dim: int
    words: _containers.RepeatedScalarFieldContainer[str]
    vocab_file: bytes
    author: str
    message: str
    model_layers: _containers.RepeatedScalarFieldContainer[int]
    tokenizer_kind: str
    tokenizer: bytes
    def __init__(self, table: _Optional[str] = ..., dtype: _Optional[str] = ..., vocab_size: _Optional[int] = ..., num_layers: _Optional[int] = ..., dim: _Optional[int] = ..., words: _Optional[_Iterable[str]] = ..., vocab_file: _Optional[bytes] = ..., author: _Optional[str] = ..., message: _Optional[str] = ..., model_layers: _Optional[_Iterable[int]] = ..., tokenizer_kind: _Optional[str] = ..., tokenizer: _Optional[bytes] = ...) -> None: ...

class ImportTableRequest(_message.Message):
    __slots__ = ("header", "rows")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    header: ImportTableHeader
    rows: Tensor
    def __init__(self, header: _Optional[_Union[ImportTableHeader, _Mapping]] = ..., rows: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class ExportTableRequest(_message.Message):
    __slots__ = ("table", "at", "max_message_bytes", "min_version")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MIN_VERSION_FIELD_NUMBER: _ClassVar[int]
    table: str
    at: VersionRef
    max_message_bytes: int
    min_version: int
    def __init__(self, table: _Optional[str] = ..., at: _Optional[_Union[VersionRef, _Mapping]] = ..., max_message_bytes: _Optional[int] = ..., min_version: _Optional[int] = ...) -> None: ...

class ExportTableResponse(_message.Message):
    __slots__ = ("table", "token_ids", "words", "rows")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    WORDS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    table: TableInfo
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    words: _containers.RepeatedScalarFieldContainer[str]
    rows: Tensor
    def __init__(self, table: _Optional[_Union[TableInfo, _Mapping]] = ..., token_ids: _Optional[_Iterable[int]] = ..., words: _Optional[_Iterable[str]] = ..., rows: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class ReplicaState(_message.Message):
    __slots__ = ("role", "primary", "applied_version", "primary_version", "lag_versions", "lag_seconds", "connected")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_FIELD_NUMBER: _ClassVar[int]
    APPLIED_VERSION_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_VERSION_FIELD_NUMBER: _ClassVar[int]
    LAG_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    LAG_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    role: str
    primary: str
    applied_version: int
    primary_version: int
    lag_versions: int
    lag_seconds: float
    connected: bool
    def __init__(self, role: _Optional[str] = ..., primary: _Optional[str] = ..., applied_version: _Optional[int] = ..., primary_version: _Optional[int] = ..., lag_versions: _Optional[int] = ..., lag_seconds: _Optional[float] = ..., connected: _Optional[bool] = ...) -> None: ...
