"""DiskANN kinds through diskannpy 0.7: static in-memory, dynamic in-memory, and SSD-resident.

Facts about diskannpy that shape this module (measured; tests/test_indexes.py guards them):
- it prints from C++ to stdout, so every call runs inside quiet();
- static memory indexes built with tags fail to load (off-by-one on the frozen point), so
  static kinds are built without tags and return positions, which are our slots;
- the dynamic index takes uint32 tags and reserves 0, so tag = slot + 1; its save() writes
  all-zero tags, so we keep the rows ourselves and rebuild the graph on load;
- StaticDiskIndex hangs when opened with num_threads=1, so it always gets at least 2;
- cosine is done as l2 on unit vectors (the disk index has no cosine, and the memory index
  returns unscaled negative scores); "mips" returns +q.x, which we negate.
"""

import shutil
import tempfile
import weakref
from dataclasses import replace
from pathlib import Path

import diskannpy
import numpy as np

from indexes.base import Index, chunks, write_vector_file
from indexes.quiet import quiet


class DiskannMemory(Index):
    """kind "diskann": a Vamana graph built once (StaticMemoryIndex); adds go to the fresh buffer."""

    native_add = False
    search_params = ("complexity",)

    def __init__(self, config, dim):
        super().__init__(config, dim)
        self.space = "ip" if config.metric == "ip" else "l2"
        self._index = None
        self._dir: Path | None = None  # where the index files live

    def __del__(self):
        """diskannpy's destructors print ("Clearing scratch"): drop the index while quiet."""
        try:
            with quiet():
                self._index = None
        except Exception:  # interpreter shutdown: modules may already be gone
            pass

    @property
    def diskann_metric(self) -> str:
        return "mips" if self.space == "ip" else "l2"

    def _build(self, rows, **train):
        """diskannpy builds from a vector file: written here a chunk at a time (prepared rows), where
        diskannpy would write it when given an array (ann_vectors.bin)."""
        self._dir = Path(tempfile.mkdtemp(prefix="memsvc-diskann-"))
        weakref.finalize(self, shutil.rmtree, self._dir, ignore_errors=True)
        vector_file = self._dir / "ann_vectors.bin"
        write_vector_file(vector_file, self.dim, (x for _, x in rows.chunks("diskann rows")))
        with quiet():
            self._build_files(str(vector_file), len(rows))
        self._open()

    def _build_files(self, vector_file: str, n: int):
        c = self.config
        diskannpy.build_memory_index(vector_file, self.diskann_metric, str(self._dir), vector_dtype=np.float32,
                                     complexity=c.complexity, graph_degree=c.graph_degree,
                                     num_threads=self.threads, alpha=c.alpha)

    def _open(self):
        with quiet():
            self._index = diskannpy.StaticMemoryIndex(str(self._dir), self.threads,
                                                      self.config.search_complexity)

    def _search(self, queries, k, params):
        complexity = max(params.get("complexity", self.config.search_complexity), k)
        with quiet():
            found = self._query(queries, k, complexity, params)
        return self._slots_of(found.identifiers), self._distances(found.distances)

    def _query(self, queries, k, complexity, params):
        return self._index.batch_search(queries, k, complexity, self.threads)

    def _slots_of(self, identifiers):
        return identifiers.astype(np.int64)

    def _distances(self, raw):
        return -raw if self.space == "ip" else raw

    def _save(self, path: Path):
        target = path / "diskann"
        if self._dir.resolve() != target.resolve():
            shutil.copytree(self._dir, target, dirs_exist_ok=True)

    def _load(self, path: Path):
        self._dir = path / "diskann"
        self._open()

    def _stats(self):
        return {"backend": "diskannpy", "graph_degree": self.config.graph_degree,
                "files_bytes": sum(f.stat().st_size for f in self._dir.iterdir())}


class DiskannDisk(DiskannMemory):
    """kind "diskann_disk": graph and full vectors on SSD, PQ codes in RAM (StaticDiskIndex)."""

    search_params = ("complexity", "beam_width")

    def _build_files(self, vector_file: str, n: int):
        c = self.config
        search_gb = c.search_memory_gb or n * 32 / 2**30
        diskannpy.build_disk_index(vector_file, "l2", str(self._dir), vector_dtype=np.float32,
                                   complexity=c.complexity, graph_degree=c.graph_degree,
                                   search_memory_maximum=search_gb, build_memory_maximum=c.build_memory_gb,
                                   num_threads=self.threads, pq_disk_bytes=c.pq_disk_bytes)

    def _open(self):
        with quiet():
            # with num_threads=1 diskannpy 0.7 spins forever in the constructor (measured)
            self._index = diskannpy.StaticDiskIndex(str(self._dir), max(2, self.threads),
                                                    self.config.num_nodes_to_cache)

    def _query(self, queries, k, complexity, params):
        beam = params.get("beam_width", self.config.beam_width)
        return self._index.batch_search(queries, k, complexity, max(2, self.threads), beam)


class DiskannDynamic(DiskannMemory):
    """kind "diskann_dynamic": FreshDiskANN-style inserts and deletes (DynamicMemoryIndex)."""

    native_add = True
    native_remove = True
    consolidate_fraction = 0.05  # repair the graph once 5% of its points are deleted

    def __init__(self, config, dim):
        super().__init__(config, dim)
        self._in_graph = 0  # points occupying capacity, deleted-but-unconsolidated included
        self._pending_deletes = 0
        self._rows = np.empty((0, dim), np.float32)  # every slot's vector (see _load)

    def _build(self, rows, **train):
        if not self.config.max_vectors:  # fix the capacity in the config so a reload reuses it
            self.config = replace(self.config, max_vectors=max(1024, 2 * len(rows)))
        self._open_empty()
        for part, x in rows.chunks("diskann insert"):
            self._add(np.arange(part.start, part.stop), x)

    def _open_empty(self):
        c = self.config
        with quiet():
            self._index = diskannpy.DynamicMemoryIndex(
                self.diskann_metric, np.float32, self.dim, c.max_vectors,
                complexity=c.complexity, graph_degree=c.graph_degree,
                saturate_graph=c.saturate_graph, alpha=c.alpha, num_threads=self.threads,
                initial_search_complexity=c.search_complexity)
        self._in_graph = self._pending_deletes = 0

    def _add(self, slots, vectors):
        self._insert(slots, vectors)
        self._rows = np.concatenate([self._rows, vectors])  # slots are appended in order

    def _insert(self, slots, vectors):
        from memsvc.core.errors import ResourceExhausted

        capacity = self.config.max_vectors
        if self._in_graph + len(slots) > capacity and self._pending_deletes:
            self._consolidate()
        if self._in_graph + len(slots) > capacity:
            raise ResourceExhausted(f"vectors: {self._in_graph} + {len(slots)} rows exceed "
                                    f"config.max_vectors={capacity}; rebuild with a larger one")
        tags = (slots + 1).astype(np.uint32)
        for rows in chunks(len(slots), 10_000, "diskann insert", self.config.progress):
            with quiet():
                self._index.batch_insert(vectors[rows], tags[rows], self.threads)
        self._in_graph += len(slots)

    def _remove(self, slots):
        with quiet():
            for tag in (slots + 1).tolist():
                self._index.mark_deleted(np.uint32(tag))
        self._pending_deletes += len(slots)
        if self._pending_deletes > self.consolidate_fraction * max(1, len(self)):
            self._consolidate()

    def _consolidate(self):
        with quiet():
            self._index.consolidate_delete()
        self._in_graph -= self._pending_deletes
        self._pending_deletes = 0

    def _slots_of(self, identifiers):
        return identifiers.astype(np.int64) - 1  # tag 0 (no result) becomes slot -1

    def _save(self, path: Path):
        np.save(path / "rows.npy", self._rows)

    def _load(self, path: Path):
        """Rebuild the graph from the saved rows: diskannpy 0.7's save() writes all-zero tags
        and from_file() then returns garbage ids, so its own persistence cannot be used."""
        self._rows = np.load(path / "rows.npy")
        live = np.flatnonzero(self._live)
        self._open_empty()
        self._insert(live, self._rows[live])

    def _stats(self):
        return {"backend": "diskannpy", "graph_degree": self.config.graph_degree,
                "capacity": self.config.max_vectors, "pending_deletes": self._pending_deletes}
