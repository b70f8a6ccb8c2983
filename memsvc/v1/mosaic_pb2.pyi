from memsvc.v1 import knowledge_pb2 as _knowledge_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BetaPolicy(_message.Message):
    __slots__ = ("beta0", "beta1", "alpha")
    BETA0_FIELD_NUMBER: _ClassVar[int]
    BETA1_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    beta0: float
    beta1: float
    alpha: float
    def __init__(self, beta0: _Optional[float] = ..., beta1: _Optional[float] = ..., alpha: _Optional[float] = ...) -> None: ...

class MosaicInfo(_message.Message):
    __slots__ = ("name", "num_layers", "num_heads", "key_dim", "value_dim", "created_version", "pairs", "policy", "topk_index", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    NUM_HEADS_FIELD_NUMBER: _ClassVar[int]
    KEY_DIM_FIELD_NUMBER: _ClassVar[int]
    VALUE_DIM_FIELD_NUMBER: _ClassVar[int]
    CREATED_VERSION_FIELD_NUMBER: _ClassVar[int]
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    TOPK_INDEX_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    num_layers: int
    num_heads: int
    key_dim: int
    value_dim: int
    created_version: int
    pairs: _containers.RepeatedScalarFieldContainer[int]
    policy: BetaPolicy
    topk_index: str
    version: int
    def __init__(self, name: _Optional[str] = ..., num_layers: _Optional[int] = ..., num_heads: _Optional[int] = ..., key_dim: _Optional[int] = ..., value_dim: _Optional[int] = ..., created_version: _Optional[int] = ..., pairs: _Optional[_Iterable[int]] = ..., policy: _Optional[_Union[BetaPolicy, _Mapping]] = ..., topk_index: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class CreateMosaicRequest(_message.Message):
    __slots__ = ("table", "num_layers", "num_heads", "key_dim", "value_dim", "policy", "topk_index", "author", "message")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    NUM_HEADS_FIELD_NUMBER: _ClassVar[int]
    KEY_DIM_FIELD_NUMBER: _ClassVar[int]
    VALUE_DIM_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    TOPK_INDEX_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    table: str
    num_layers: int
    num_heads: int
    key_dim: int
    value_dim: int
    policy: BetaPolicy
    topk_index: str
    author: str
    message: str
    def __init__(self, table: _Optional[str] = ..., num_layers: _Optional[int] = ..., num_heads: _Optional[int] = ..., key_dim: _Optional[int] = ..., value_dim: _Optional[int] = ..., policy: _Optional[_Union[BetaPolicy, _Mapping]] = ..., topk_index: _Optional[str] = ..., author: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class WritePairsRequest(_message.Message):
    __slots__ = ("table", "layer", "head", "ids", "keys", "values", "labels", "author", "message")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    table: str
    layer: int
    head: int
    ids: _containers.RepeatedScalarFieldContainer[int]
    keys: _knowledge_pb2.Tensor
    values: _knowledge_pb2.Tensor
    labels: _containers.RepeatedScalarFieldContainer[str]
    author: str
    message: str
    def __init__(self, table: _Optional[str] = ..., layer: _Optional[int] = ..., head: _Optional[int] = ..., ids: _Optional[_Iterable[int]] = ..., keys: _Optional[_Union[_knowledge_pb2.Tensor, _Mapping]] = ..., values: _Optional[_Union[_knowledge_pb2.Tensor, _Mapping]] = ..., labels: _Optional[_Iterable[str]] = ..., author: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class RemovePairsRequest(_message.Message):
    __slots__ = ("table", "layer", "head", "ids", "author", "message")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    table: str
    layer: int
    head: int
    ids: _containers.RepeatedScalarFieldContainer[int]
    author: str
    message: str
    def __init__(self, table: _Optional[str] = ..., layer: _Optional[int] = ..., head: _Optional[int] = ..., ids: _Optional[_Iterable[int]] = ..., author: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class PairsCommit(_message.Message):
    __slots__ = ("commit", "ids")
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    commit: _knowledge_pb2.CommitResult
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, commit: _Optional[_Union[_knowledge_pb2.CommitResult, _Mapping]] = ..., ids: _Optional[_Iterable[int]] = ...) -> None: ...

class ListMosaicsRequest(_message.Message):
    __slots__ = ("at", "min_version")
    AT_FIELD_NUMBER: _ClassVar[int]
    MIN_VERSION_FIELD_NUMBER: _ClassVar[int]
    at: _knowledge_pb2.VersionRef
    min_version: int
    def __init__(self, at: _Optional[_Union[_knowledge_pb2.VersionRef, _Mapping]] = ..., min_version: _Optional[int] = ...) -> None: ...

class ListMosaicsResponse(_message.Message):
    __slots__ = ("stores", "version")
    STORES_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    stores: _containers.RepeatedCompositeFieldContainer[MosaicInfo]
    version: int
    def __init__(self, stores: _Optional[_Iterable[_Union[MosaicInfo, _Mapping]]] = ..., version: _Optional[int] = ...) -> None: ...

class DescribeMosaicRequest(_message.Message):
    __slots__ = ("table", "at", "min_version")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    MIN_VERSION_FIELD_NUMBER: _ClassVar[int]
    table: str
    at: _knowledge_pb2.VersionRef
    min_version: int
    def __init__(self, table: _Optional[str] = ..., at: _Optional[_Union[_knowledge_pb2.VersionRef, _Mapping]] = ..., min_version: _Optional[int] = ...) -> None: ...

class ReadPairsRequest(_message.Message):
    __slots__ = ("table", "layer", "head", "at", "min_version")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    MIN_VERSION_FIELD_NUMBER: _ClassVar[int]
    table: str
    layer: int
    head: int
    at: _knowledge_pb2.VersionRef
    min_version: int
    def __init__(self, table: _Optional[str] = ..., layer: _Optional[int] = ..., head: _Optional[int] = ..., at: _Optional[_Union[_knowledge_pb2.VersionRef, _Mapping]] = ..., min_version: _Optional[int] = ...) -> None: ...

class ReadPairsResponse(_message.Message):
    __slots__ = ("ids", "keys", "values", "labels", "version")
    IDS_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    keys: _knowledge_pb2.Tensor
    values: _knowledge_pb2.Tensor
    labels: _containers.RepeatedScalarFieldContainer[str]
    version: int
    def __init__(self, ids: _Optional[_Iterable[int]] = ..., keys: _Optional[_Union[_knowledge_pb2.Tensor, _Mapping]] = ..., values: _Optional[_Union[_knowledge_pb2.Tensor, _Mapping]] = ..., labels: _Optional[_Iterable[str]] = ..., version: _Optional[int] = ...) -> None: ...

class LshParams(_message.Message):
    __slots__ = ("bits", "tables", "budget")
    BITS_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    bits: int
    tables: int
    budget: float
    def __init__(self, bits: _Optional[int] = ..., tables: _Optional[int] = ..., budget: _Optional[float] = ...) -> None: ...

class QueryMosaicRequest(_message.Message):
    __slots__ = ("table", "layer", "head", "queries", "beta", "policy", "mode", "k", "lsh", "at", "min_version")
    class Mode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        MODE_UNSPECIFIED: _ClassVar[QueryMosaicRequest.Mode]
        EXACT: _ClassVar[QueryMosaicRequest.Mode]
        TOPK: _ClassVar[QueryMosaicRequest.Mode]
        LSH: _ClassVar[QueryMosaicRequest.Mode]
    MODE_UNSPECIFIED: QueryMosaicRequest.Mode
    EXACT: QueryMosaicRequest.Mode
    TOPK: QueryMosaicRequest.Mode
    LSH: QueryMosaicRequest.Mode
    TABLE_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    BETA_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    LSH_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    MIN_VERSION_FIELD_NUMBER: _ClassVar[int]
    table: str
    layer: int
    head: int
    queries: _knowledge_pb2.Tensor
    beta: float
    policy: BetaPolicy
    mode: QueryMosaicRequest.Mode
    k: int
    lsh: LshParams
    at: _knowledge_pb2.VersionRef
    min_version: int
    def __init__(self, table: _Optional[str] = ..., layer: _Optional[int] = ..., head: _Optional[int] = ..., queries: _Optional[_Union[_knowledge_pb2.Tensor, _Mapping]] = ..., beta: _Optional[float] = ..., policy: _Optional[_Union[BetaPolicy, _Mapping]] = ..., mode: _Optional[_Union[QueryMosaicRequest.Mode, str]] = ..., k: _Optional[int] = ..., lsh: _Optional[_Union[LshParams, _Mapping]] = ..., at: _Optional[_Union[_knowledge_pb2.VersionRef, _Mapping]] = ..., min_version: _Optional[int] = ...) -> None: ...

class QueryMosaicResponse(_message.Message):
    __slots__ = ("outputs", "lse", "n", "version", "beta", "touched", "lsh_tables", "index_lag")
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    LSE_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BETA_FIELD_NUMBER: _ClassVar[int]
    TOUCHED_FIELD_NUMBER: _ClassVar[int]
    LSH_TABLES_FIELD_NUMBER: _ClassVar[int]
    INDEX_LAG_FIELD_NUMBER: _ClassVar[int]
    outputs: _knowledge_pb2.Tensor
    lse: _knowledge_pb2.Tensor
    n: int
    version: int
    beta: float
    touched: _knowledge_pb2.Tensor
    lsh_tables: int
    index_lag: int
    def __init__(self, outputs: _Optional[_Union[_knowledge_pb2.Tensor, _Mapping]] = ..., lse: _Optional[_Union[_knowledge_pb2.Tensor, _Mapping]] = ..., n: _Optional[int] = ..., version: _Optional[int] = ..., beta: _Optional[float] = ..., touched: _Optional[_Union[_knowledge_pb2.Tensor, _Mapping]] = ..., lsh_tables: _Optional[int] = ..., index_lag: _Optional[int] = ...) -> None: ...
