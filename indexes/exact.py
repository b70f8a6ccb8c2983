"""Exact search: faiss IndexFlat on CPU, a torch matmul + topk on CUDA (chosen at run time).

The baseline every approximate kind is measured against; removal is the base class's mask with
over-fetch, which stays exact because the over-fetch equals the number of masked rows.
"""

import faiss
import numpy as np

from indexes.faiss_index import FaissIndex


def cuda_available(config) -> bool:
    import torch

    return config.use_gpu and torch.cuda.is_available()


class ExactIndex(FaissIndex):
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
