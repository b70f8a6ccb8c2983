"""faiss kinds: exact (Flat), hnsw, ivfpq, pq and opq, all from one index_factory string.

Slots are faiss positions: rows are only ever appended, and removals are masked by the base
class, so position i always holds slot i. Search knobs go through faiss SearchParameters
objects rather than mutating the index, so concurrent searches with different knobs are safe.
"""

import functools
import math
from pathlib import Path

import faiss
import numpy as np

from indexes.base import Index, chunks, training_sample
from indexes.quiet import quiet


def cuda_available(config) -> bool:
    import torch

    return config.use_gpu and torch.cuda.is_available()


def gpu_available(config) -> bool:
    return config.use_gpu and faiss_gpus() > 0


@functools.cache
def faiss_gpus() -> int:
    """GPUs faiss sees, asked once: the count does not change while a process runs, and every
    search of a GPU-capable kind asks."""
    return faiss.get_num_gpus()


class FaissIndex(Index):
    gpu_kinds = ("ivfpq",)  # kinds with a GPU faiss implementation (exact uses torch instead)

    def __init__(self, config, dim):
        super().__init__(config, dim)
        self._index = None
        self._gpu_index = None  # GPU clone for search, rebuilt lazily after adds
        self._knob_cache = {}  # (SearchParameters class, knob values) -> the object (_knobs)

    @property
    def faiss_index(self):
        """The CPU faiss index holding the rows (learned_pq's codes and codebooks are read back from it)."""
        return self._index

    @property
    def search_params(self):
        return {"hnsw": ("ef_search",), "ivfpq": ("nprobe",),
                "learned_pq": ("nprobe",)}.get(self.config.kind, ())

    def factory(self, n: int, n_train: int | None = None) -> str:
        """The index_factory string for n rows trained on n_train of them (default all)."""
        c = self.config
        pq = f"PQ{c.pq_m}x{c.pq_nbits}"
        opq = f"OPQ{c.pq_m},{pq}"
        # 4*sqrt(n) lists, with >= 39 training points per list (faiss's k-means minimum)
        nlist = c.nlist or max(1, min(int(4 * math.sqrt(n)), (n if n_train is None else n_train) // 39))
        learned = f"OPQ{c.pq_m},IVF{2 ** c.lpq_coarse_bits},PQ{c.pq_m}x{c.lpq_residual_bits}"
        return {"exact": "Flat", "hnsw": f"HNSW{c.hnsw_m}", "ivfpq": f"IVF{nlist},{pq}",
                "pq": pq, "opq": opq, "learned_pq": learned}[c.kind]

    def _build(self, rows, sample=None, **train):
        """Train on `sample` (default: the training sample of the rows, base.training_sample),
        then add the rows a chunk at a time."""
        metric = faiss.METRIC_L2 if self.space == "l2" else faiss.METRIC_INNER_PRODUCT
        faiss.omp_set_num_threads(self.threads)
        n_train = len(sample) if sample is not None else len(training_sample(len(rows), self.dim, self.config))
        self._index = faiss.index_factory(self.dim, self.factory(len(rows), n_train), metric)
        if self.config.kind == "hnsw":
            self._index.hnsw.efConstruction = self.config.ef_construction
        if hasattr(self._index, "chain"):
            transform = faiss.downcast_VectorTransform(self._index.chain.at(0))
            if isinstance(transform, faiss.OPQMatrix):
                transform.niter = self.config.opq_iterations
                transform.max_train_points = self.config.opq_train_rows
            inner = faiss.downcast_index(self._index.index)
        else:
            inner = faiss.downcast_index(self._index)
        if hasattr(inner, "do_polysemous_training"):
            # faiss trains PQ codes for polysemous (Hamming) filtering by default: ~25x the training
            # time for a search mode we never use.
            inner.do_polysemous_training = False
        if not self._index.is_trained:  # Flat and HNSW train on nothing
            sample = rows.sample() if sample is None else sample
            with quiet():  # k-means warns on stderr when the sample is small
                self._pretrain(sample)
                self._index.train(sample)
            del sample
        for _, x in rows.chunks(f"{self.config.kind} add"):
            self._index.add(x)
        self._gpu_index = None

    def _pretrain(self, sample):
        """Fit what faiss's own train() would fit to the wrong data (learned_pq); none here."""

    def _add(self, slots, vectors):
        for rows in chunks(len(vectors), 20_000, f"{self.config.kind} add", self.config.progress):
            self._index.add(vectors[rows])
        self._gpu_index = None

    def _search(self, queries, k, params):
        c, kind = self.config, self.config.kind
        if kind == "hnsw":  # efSearch below k would cut the result list short
            knobs = self._knobs(faiss.SearchParametersHNSW, efSearch=max(params.get("ef_search", c.ef_search), k))
        elif kind in ("ivfpq", "learned_pq"):
            knobs = self._knobs(faiss.SearchParametersIVF, nprobe=params.get("nprobe", c.nprobe))
        else:
            knobs = None
        dist, slots = self._searcher().search(queries, k, params=knobs)
        return slots, (dist if self.space == "l2" else -dist)

    def _knobs(self, kind, **values):
        """A SearchParameters object per knob setting, made once: searches only read them, and
        building one through SWIG was ~80 us of a batch-64 search through the service (issue 5)."""
        key = (kind, *values.items())
        knobs = self._knob_cache.get(key)
        if knobs is None:
            if len(self._knob_cache) >= 64:  # bounded: each request may name other knobs
                self._knob_cache.clear()
            knobs = self._knob_cache[key] = kind(**values)
        return knobs

    def _searcher(self):
        if self.config.kind not in self.gpu_kinds or not gpu_available(self.config):
            return self._index
        if self._gpu_index is None:
            self._gpu_index = faiss.index_cpu_to_all_gpus(self._index)
        return self._gpu_index

    def _save(self, path: Path):
        faiss.write_index(self._index, str(path / "faiss.index"))

    def _load(self, path: Path):
        self._index = faiss.read_index(str(path / "faiss.index"))

    def _stats(self):
        n_train = len(training_sample(self._n_main, self.dim, self.config))  # the rule the build followed
        return {"backend": "faiss", "factory": self.factory(self._n_main, n_train),
                "bytes_per_vector": self._index.sa_code_size() if self.config.kind != "hnsw"
                else 4 * self.dim, "gpu": gpu_available(self.config)}


class ExactIndex(FaissIndex):
    """The baseline every approximate kind is measured against: faiss IndexFlat on CPU, a torch
    matmul + topk on CUDA (chosen at run time). Removal is the base class's mask with
    over-fetch, which stays exact because the over-fetch equals the number of masked rows."""

    def __init__(self, config, dim):
        super().__init__(config, dim)
        self._device_rows = None  # (n, d) torch tensor on the GPU, dropped after adds

    def _add(self, slots, vectors):
        super()._add(slots, vectors)
        self._device_rows = None

    def _search(self, queries, k, params):
        if not cuda_available(self.config):
            return super()._search(queries, k, params)
        import torch

        if self._device_rows is None:
            rows = faiss.rev_swig_ptr(self._index.get_xb(), self._index.ntotal * self.dim)
            self._device_rows = torch.from_numpy(np.array(rows).reshape(-1, self.dim)).cuda()
        x, q = self._device_rows, torch.from_numpy(queries).cuda()
        dist = -(q @ x.T)  # (nq, n) ip space: -q.x
        if self.space == "l2":  # |q - x|^2 = |q|^2 - 2 q.x + |x|^2
            dist = (q * q).sum(1, keepdim=True) + 2 * dist + (x * x).sum(1)
        top = torch.topk(dist, k, dim=1, largest=False)
        return top.indices.cpu().numpy().astype(np.int64), top.values.cpu().numpy()
