"""Persistent memory for the backbone: a layer that reads (key, value) pairs from a memory source.

A memory layer ("Memory Mosaics", ICLR 2025: persistent memory) adds to its block's residual

    q_h  = W_q,h x / ||W_q,h x||                                  unit query of head h
    o_h  = Σ_i exp(β q_h·k_i) v_i / Σ_j exp(β q_h·k_j)           over the pairs of (slot, h)
    y    = x + W_o [o_1; ...; o_H]

Keys are unit vectors (memsvc stores them k / ||k||), so this is the Gaussian kernel regression of
a Memory Mosaic store. Like the STEM bank, the pairs are not parameters of the model: they come
from a *memory source*, one method:

    o, lse = memory.read(slot, queries, beta)   # queries (N, H, dk) unit -> o (N, H, dv), lse (N, H)

slot j is the j-th entry of config.memory_layers (the store's `layer`), and lse = log Σ_j
exp(β q·k_j) lets reads of disjoint parts merge exactly (`merge_reads`). Sources:

- `InProcessMemory`: keys and values as parameters (training, reference);
- `StoreMemory`: a mosaic store through any mosaic API (`kb.mosaic` in process, `MosaicClient`
  over gRPC), one EXACT query per head per forward for all positions, at a pinned version;
- `WithPairs`: another source plus extra pairs at one slot, merged by lse (fitting new pairs
  before they are committed, or a per-request injection that writes nothing).
"""

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

MEMORY_FILE = "memory.safetensors"  # a trained model's pairs, beside its checkpoint (research/train.py)


def kernel_read(queries, keys, values, beta: float):
    """queries (N, H, dk), unit keys (H, n, dk), values (H, n, dv) -> o (N, H, dv), lse (N, H).

    With no pairs o = 0 and lse = -inf (memsvc's empty-store convention)."""
    scores = beta * torch.einsum("nhd,hmd->nhm", queries, keys)  # (N, H, n)
    o = torch.einsum("nhm,hmd->nhd", scores.softmax(-1), values)  # (N, H, dv)
    return o, torch.logsumexp(scores, -1)


def merge_reads(reads):
    """Exact merge of (o_s, lse_s) read from disjoint pairs: o = Σ_s exp(lse_s − L) o_s, L = logsumexp_s.

    The torch twin of indexes.mosaic.merge_results: gradients flow to the parts (fitting new pairs)."""
    lse = torch.stack([r[1] for r in reads])  # (S, N, H)
    top = lse.amax(0)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    mass = torch.exp(lse - top)  # (S, N, H); empty parts (lse = -inf) weigh 0
    total = mass.sum(0)
    o = sum(m[..., None] * r[0] for m, r in zip(mass, reads)) / torch.where(total > 0, total, 1.0)[..., None]
    return o, top + torch.log(total)


class PersistentMemory(nn.Module):
    """The memory read of one block: y = W_o [o_1; ...; o_H] for the unit queries of x."""

    def __init__(self, config, slot: int):
        super().__init__()
        self.slot, self.beta = slot, config.memory_beta
        self.n_head, self.key_dim = config.memory_heads, config.memory_key_dim
        self.query = nn.Linear(config.d_model, config.memory_heads * config.memory_key_dim, bias=False)
        self.out = nn.Linear(config.memory_heads * config.memory_value_dim, config.d_model, bias=False)

    def queries(self, x):
        """Unit queries (B * T, H, dk) of x (B, T, C)."""
        B, T, _ = x.shape
        return F.normalize(self.query(x).view(B * T, self.n_head, self.key_dim), dim=-1)  # (B*T, H, dk)

    def forward(self, x, memory):
        if memory is None:
            raise ValueError("this model has memory layers: pass a memory source (memory=...)")
        B, T, _ = x.shape
        o, _ = memory.read(self.slot, self.queries(x), self.beta)  # (B*T, H, dv)
        return self.out(o.to(x).reshape(B, T, -1))  # (B, T, C)


class InProcessMemory(nn.Module):
    """n pairs per (slot, head) as parameters keys (S, H, n, dk) and values (S, H, n, dv).

    Keys are normalised on read, so training moves them on the unit sphere the store keeps."""

    def __init__(self, config, n_pairs: int, keys=None, values=None):
        super().__init__()
        shape = (len(config.memory_layers), config.memory_heads, n_pairs)
        if keys is None:
            keys = torch.randn(*shape, config.memory_key_dim)
            values = 0.02 * torch.randn(*shape, config.memory_value_dim)  # like the model's linears
        if tuple(keys.shape) != (*shape, config.memory_key_dim) or tuple(values.shape) != (*shape, config.memory_value_dim):
            raise ValueError(f"memory pairs have shapes {tuple(keys.shape)}, {tuple(values.shape)}; want {shape} x (dk | dv)")
        self.keys, self.values = nn.Parameter(keys), nn.Parameter(values)

    def read(self, slot, queries, beta):
        return kernel_read(queries, F.normalize(self.keys[slot], dim=-1), self.values[slot], beta)

    def save(self, path):
        from safetensors.torch import save_file

        save_file({"keys": self.keys.detach().contiguous(), "values": self.values.detach().contiguous()}, str(path))

    @classmethod
    def load(cls, path, config) -> "InProcessMemory":
        from safetensors.torch import load_file

        pairs = load_file(str(path))
        return cls(config, pairs["keys"].shape[2], pairs["keys"], pairs["values"])

    def export(self, mosaic, name: str, labels=None, author: str = "", message: str = "") -> int:
        """Create mosaic store `name` (layers = memory slots) through any mosaic API and add every
        group's pairs, one commit per group; returns the last version."""
        S, H, _, dk = self.keys.shape
        mosaic.create(name, num_layers=S, num_heads=H, key_dim=dk, value_dim=self.values.shape[-1],
                      author=author, message=message)
        for slot in range(S):
            for head in range(H):
                version = mosaic.add(name, slot, head, self.keys[slot, head].detach().numpy(),
                                     self.values[slot, head].detach().numpy(), labels=labels,
                                     author=author, message=message).version
        return version


class StoreMemory:
    """Pairs of a mosaic store read through `mosaic` (a MosaicClient, or a KnowledgeBase's
    `.mosaic`): one EXACT query per head per forward, for every position at once, all at the
    version pinned here (a generation must not see an edit land halfway)."""

    def __init__(self, mosaic, name: str, version=None):
        self.mosaic, self.name = mosaic, name
        self.requests = 0  # QueryMosaic calls made
        self.move_to(version)

    def move_to(self, version=None):
        """Pin `version` (default: the head now)."""
        self.version = self.mosaic.describe_store(self.name, version=version).version

    def read(self, slot, queries, beta):
        outs, lses = [], []
        for head in range(queries.shape[1]):
            r = self.mosaic.query(self.name, slot, head, queries[:, head].detach().float().numpy(), beta=beta,
                                  version=self.version)
            outs.append(torch.from_numpy(np.array(r.outputs, np.float32)))  # (N, dv); a copy: replies are read-only
            lses.append(torch.from_numpy(np.array(r.lse, np.float32)))  # (N,)
            self.requests += 1
        return torch.stack(outs, 1), torch.stack(lses, 1)  # (N, H, dv), (N, H)


class WithPairs(nn.Module):
    """`base` plus extra pairs at one slot: keys (H, m, dk) (normalised on read) and values
    (H, m, dv), both parameters so that they can be fitted through the frozen model."""

    def __init__(self, base, slot: int, keys, values):
        super().__init__()
        self.base, self.slot = base, slot
        self.keys = nn.Parameter(torch.as_tensor(keys, dtype=torch.float32).clone())
        self.values = nn.Parameter(torch.as_tensor(values, dtype=torch.float32).clone())

    def read(self, slot, queries, beta):
        base = self.base.read(slot, queries, beta)
        if slot != self.slot:
            return base
        return merge_reads([base, kernel_read(queries, F.normalize(self.keys, dim=-1), self.values, beta)])
