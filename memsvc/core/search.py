"""The values of search that cross boundaries (manager, wire, client), and waiting for a build,
which the CLI and the client do the same way over either."""
import time
from dataclasses import dataclass, field

import numpy as np

from memsvc.core.errors import FailedPrecondition

BUILDING, READY, FAILED = "BUILDING", "READY", "FAILED"


@dataclass
class IndexInfo:
    name: str
    table: str
    layer: int
    kind: str
    metric: str
    state: str = BUILDING  # BUILDING, READY or FAILED
    stage: str = "queued"  # what a build is doing now
    progress: float = 0.0  # of the build, 0..1
    version: int = 0  # the version whose rows the index holds (iv)
    error: str = ""
    count: int = 0  # rows in the index
    lag_commits: int = 0  # commits to the table after iv (computed on describe)
    lag_rows: int = 0  # rows read differently at the head than at iv: searched exactly
    created: float = 0.0
    train_queries_from: str = ""  # learned_pq: "query log (n)" or "rows (n)"
    config: dict = field(default_factory=dict)  # the IndexConfig
    head: int | None = None  # set for a mosaic store's (layer, head) keys; None for a bank layer

    def where(self) -> tuple:
        return where_of(self.table, self.layer, self.head)


@dataclass
class SearchResult:
    ids: np.ndarray  # (n, k) int64 token ids (mosaic: pair ids), -1 padding
    distances: np.ndarray  # (n, k) float32, +inf padding; smaller is closer
    tokens: list  # banks: n lists of k words ('' for padding); [] for mosaic stores or names=False
    version: int  # the version read
    index: str  # the index used; '' = exact search over the whole layer
    index_version: int  # iv of that index
    lag_rows: int  # rows searched exactly because they changed since iv
    metric: str
    labels: list = field(default_factory=list)  # mosaic stores: n lists of k pair labels; [] for banks or names=False


def where_of(table, layer, head=None) -> tuple:
    """What an index or a query log covers: (table, layer) of a bank, (store, layer, head) of a mosaic store."""
    return (table, int(layer)) if head is None else (table, int(layer), int(head))


def place(where) -> str:
    return f"table {where[0]!r} layer {where[1]}" + (f" head {where[2]}" if len(where) > 2 else "")


def wait_for_build(describe, name, poll_seconds=0.2, on_progress=None) -> IndexInfo:
    """Poll ``describe(name)`` until the build ends: the READY info, or FailedPrecondition
    with the build's error. ``on_progress(info)`` sees every poll (a progress bar)."""
    while True:
        info = describe(name)
        if on_progress is not None:
            on_progress(info)
        if info.state == READY:
            return info
        if info.state != BUILDING:
            raise FailedPrecondition(f"index: build of {name!r} failed: {info.error}")
        time.sleep(poll_seconds)
