"""Plain results shared by the local store and the gRPC client, so the CLI prints the same
thing whichever one it talks to."""
from dataclasses import dataclass, field

import numpy as np

from memsvc.core.dtypes import to_float32
from memsvc.core.errors import InvalidArgument

OPS = ("set", "copy", "blend", "scale", "reset")


@dataclass
class RowOp:
    """One operation on one token's rows.

    A token is named by ``token_id`` or by word (``token``); the store resolves words.
    op:     set (vector), copy (from source token), blend (toward vector or source with alpha:
            new = (1 - alpha) * current + alpha * source), scale (new = alpha * current),
            reset (back to the base row).
    layers: which layers (positions in the table's layer axis); empty means all.
    vector: shape (d,) for every chosen layer, or (len(layers), d) one row per layer.
    """

    op: str
    token_id: int | None = None
    layers: list = field(default_factory=list)
    vector: np.ndarray | None = None
    source_token_id: int | None = None
    alpha: float = 1.0
    token: str | None = None  # the token by word, when token_id is None (resolved by the store)
    source_token: str | None = None


@dataclass
class RowWrites:
    """Rows to write: ``vectors[i]`` becomes row (token_ids[i], layers[i])."""

    token_ids: np.ndarray  # (n,) int64
    layers: np.ndarray  # (n,) int64
    vectors: np.ndarray  # (n, d) float32

    def __len__(self):
        return len(self.token_ids)


@dataclass
class EditRequest:
    """What caused a knowledge edit (the ROME/EasyEdit fields)."""

    prompt: str = ""
    subject: str = ""
    target_new: str = ""
    ground_truth: str = ""

    def is_empty(self):
        return not (self.prompt or self.subject or self.target_new or self.ground_truth)


@dataclass
class CommitResult:
    version: int
    rows_changed: int
    changes: list = field(default_factory=list)  # [RowChange] of an edit, from its planned writes


@dataclass
class CommitInfo:
    version: int
    time: float
    author: str
    message: str
    kind: str
    tables: list = field(default_factory=list)
    rows_changed: int = 0
    request: EditRequest = field(default_factory=EditRequest)
    metrics: dict = field(default_factory=dict)
    tags: list = field(default_factory=list)


@dataclass
class RowChange:
    """One row that differs between two versions: L2 distance and cosine of old and new."""

    table: str
    token_id: int
    token: str
    layer: int
    l2: float
    cosine: float


@dataclass
class TableInfo:
    name: str
    kind: str
    dtype: str
    vocab_size: int
    num_layers: int
    dim: int
    created_version: int
    base_version: int
    version: int  # the version this description was read at
    model_layers: list = field(default_factory=list)  # the transformer layer each table layer feeds, when known
    tokenizer: str = ""  # the stored tokenizer's kind ("" for a plain word list)


@dataclass
class LookupResult:
    rows: np.ndarray  # (n_unique, n_layers, dim) in the table's storage dtype
    unique_ids: np.ndarray  # (n_unique,) int64, first-occurrence order
    inverse: np.ndarray  # (n_request,) int64: request position -> row of `rows`
    version: int
    dtype: str
    ordered: bool = False  # rows are one per request position already (inverse is the identity)
    in_buffer: bool = False  # rows were written into the caller's buffer (KnowledgeBase.lookup's out)

    def in_request_order(self) -> np.ndarray:
        """float32 rows (n_request, n_layers, dim) aligned with the request (a fresh array)."""
        return to_float32(self.rows, self.dtype)[self.inverse]

    def request_rows(self) -> np.ndarray:
        """Rows (n_request, n_layers, dim) in the storage dtype aligned with the request: `rows`
        itself, no copy, when the server wrote them in request order."""
        return self.rows if self.ordered else self.rows[self.inverse]


def split_tokens(tokens):
    """A list of token ids or of words (not mixed) -> (ids, words)."""
    if isinstance(tokens, np.ndarray):
        if np.issubdtype(tokens.dtype, np.integer):
            return tokens.astype(np.int64).tolist(), []
        tokens = tokens.tolist()
    tokens = list(tokens)
    if all(isinstance(t, str) for t in tokens):
        return [], tokens
    if all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in tokens):
        return [int(t) for t in tokens], []
    raise InvalidArgument("tokens: give token ids or words, not both")


@dataclass
class TableExport:
    """A bank table at one version as export writes it (KnowledgeBase.export_table,
    MemoryClient.export_table): the tokens alive there in id order, their words, and their rows a
    chunk of tokens at a time, so that no side ever holds the whole table."""

    info: TableInfo  # info.vocab_size == len(token_ids)
    token_ids: np.ndarray  # (n,) int64 ascending; gaps where a token was removed
    words: list  # words[i] is token_ids[i]'s word
    chunks: object  # an iterator of rows (k, num_layers, dim) in the storage dtype, k summing to n
