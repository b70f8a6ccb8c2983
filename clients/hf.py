"""A Hugging Face transformers model whose per-layer token table is read from memsvc.

Gemma 3n and Gemma 4 keep a per-layer embedding table, ``embed_tokens_per_layer``
[vocab_per_layer, layers x d], read by token id at every step: memsvc's fused bank layout. `attach`
swaps that module for one that reads the rows of a memsvc table through a bank (clients/banks.py:
RemoteBank with an LFU cache and prefetch, or LocalBank on the server's host), scaled as the model
scales them. `generate` runs ``model.generate`` at one pinned version (an edit landing mid-generation
cannot tear a sentence), optionally with per-request overrides (an edit read, nothing written), and
prefetches each step's tokens as soon as they are sampled.

    model = Gemma3nForCausalLM.from_pretrained(path)
    table = attach(model, RemoteBank(client, "ple", cache_tokens=4096))
    out = generate(model, input_ids, max_new_tokens=20)                 # the head, pinned
    out = generate(model, input_ids, overrides=[RowOp("copy", token_id=a, source_token_id=b)])

transformers is an optional dependency (`pip install memsvc[hf]`); this module imports it lazily.
"""
import torch
from torch import nn

from clients.banks import RemoteBank


class MemsvcPerLayerEmbedding(nn.Module):
    """Drop-in for Gemma's scaled per-layer embedding: ``forward(ids (B, T)) -> (B, T, L*d)``."""

    def __init__(self, bank, embed_scale: float, dtype=torch.float32):
        super().__init__()
        self.bank = bank
        self.register_buffer("embed_scale", torch.tensor(embed_scale), persistent=False)
        self.dtype = dtype

    def forward(self, input_ids):
        rows = self.bank.request(input_ids.reshape(-1).cpu()).result()  # (B*T, L, d) float32
        rows = rows.reshape(*input_ids.shape, -1).to(device=self.embed_scale.device, dtype=self.dtype)
        return rows * self.embed_scale.to(self.dtype)  # as Gemma3nTextScaledWordEmbedding scales its rows


def _holder(model):
    """The module that owns ``embed_tokens_per_layer`` (text models and multimodal wrappers alike)."""
    for module in model.modules():
        if isinstance(getattr(module, "embed_tokens_per_layer", None), nn.Module):
            return module
    raise ValueError("model: no embed_tokens_per_layer module (a Gemma 3n / Gemma 4 text model has one)")


def attach(model, bank) -> MemsvcPerLayerEmbedding:
    """Replace the model's per-layer embedding by one reading ``bank``'s table; returns it."""
    holder = _holder(model)
    old = holder.embed_tokens_per_layer
    scale = float(getattr(old, "embed_scale", 1.0))
    table = MemsvcPerLayerEmbedding(bank, scale, dtype=old.weight.dtype if hasattr(old, "weight") else torch.float32)
    holder.embed_tokens_per_layer = table
    return table


class _Prefetch:
    """A stopping criterion that never stops: transformers calls it right after each token is
    sampled, which is when the next step's rows can be requested."""

    def __init__(self, bank):
        self.bank = bank

    def __call__(self, input_ids, scores, **kwargs):
        self.bank.prefetch(input_ids[:, -1].cpu())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def generate(model, input_ids, *, version=None, overrides=(), **kwargs):
    """``model.generate`` with the memsvc table pinned at ``version`` (default: the head now) for
    the whole call, read with ``overrides`` (RowOps; nothing written) when given."""
    from transformers import StoppingCriteriaList

    table = _holder(model).embed_tokens_per_layer
    if not isinstance(table, MemsvcPerLayerEmbedding):
        raise ValueError("model: attach() a memsvc bank first")
    bank = table.bank
    if overrides:
        if not isinstance(bank, RemoteBank):
            raise ValueError("overrides: read them through a RemoteBank (a LocalBank overlays committed rows only)")
        pinned = RemoteBank(bank.client, bank.table, version, cache_tokens=bank.cache.capacity,
                            prefetch=bank.prefetch_enabled, overrides=overrides)  # its own cache: edited rows
    else:
        bank.move_to(version)  # a RemoteBank drops only the cached rows that changed
        pinned = bank
    table.bank = pinned
    try:
        criteria = StoppingCriteriaList(kwargs.pop("stopping_criteria", []))
        if getattr(pinned, "prefetch_enabled", False):
            criteria.append(_Prefetch(pinned))
        return model.generate(input_ids, stopping_criteria=criteria, **kwargs)
    finally:
        table.bank = bank
