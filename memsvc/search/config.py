"""The search service's limits and knobs, each with the measurement that chose it."""
from dataclasses import dataclass, field

from memsvc.search.limits import INDEX_LIMITS


@dataclass
class SearchConfig:
    max_k: int = 1024  # larger k gets RESOURCE_EXHAUSTED naming `k`
    max_queries: int = 16384  # query vectors or tokens per request
    # queries x k per request (16384 x 1024 took 79 s of server CPU, issue 19); RESOURCE_EXHAUSTED naming k
    max_results: int = 1 << 22
    # queries x rows an exact search scores per request (2^30 at d 128: ~1.4e11 multiply-adds,
    # seconds on 2 cores); RESOURCE_EXHAUSTED naming queries, beyond which an index answers
    max_scored: int = 1 << 30
    max_search_param: int = 65536  # complexity, ef_search, nprobe, beam_width per query
    index_limits: dict = field(default_factory=lambda: dict(INDEX_LIMITS))  # CreateIndex: field -> largest value
    query_log_size: int = 4096  # queries sampled per (table, layer) (reservoir)
    query_log_save_seconds: float = 30.0  # persist a changed log at most this often, off the request path
    min_log_queries: int = 256  # learned_pq trains on the log once it holds this many, else on rows
    refresh_rows: int = 2048  # fold the delta into the index in the background past this many rows
    build_in_worker: bool = True  # build in a spawned process (diskannpy holds the GIL)
    # Added to the build worker's niceness. 10 against 0, one client looking up in a loop during
    # 20k diskann builds on 2 cores: Lookup p99 11.3 -> 7.8 ms (alone ~5), lookups served +20%,
    # builds 15.7 -> 20.3 s (slower only while the server is busy; bench/ann_service.py --builds).
    build_niceness: int = 10
    read_chunk: int = 4096  # tokens per chunk when reading a layer
    # The largest index of a kind that holds every row in memory (indexes.base.RESIDENT_KINDS),
    # n x d x 4 bytes: CreateIndex above it is RESOURCE_EXHAUSTED naming config.kind, not a server
    # grown past its memory (issue 17: a STEM-1B layer is 4.2 GB as float32).
    max_resident_index_bytes: int = 1 << 30
    search_in_worker: bool = True  # search diskann kinds in a child process (diskannpy holds the GIL)
    # 0: the worker competes for the CPU like the in-process search it stands for. It was 5: on a
    # shared 2-core machine every wake-up of the niced worker (two process hand-offs a search)
    # waited behind other jobs, and diskann through the service fell to 0.54-0.64x (issue 5).
    search_worker_niceness: int = 0
