"""Reading banks and vocabularies from the files models ship, and writing them back.

Bank layouts (all token-major, rows returned as [vocab, layers, dim] in storage form):
- ``.npy``: [V, L, d] or [V, d] (one layer);
- ``.pt`` / ``.safetensors`` with one ``stem_embeddings`` tensor [V, L*d] (the STEM inference
  layout; L from ``num_layers`` or the file's ``stem_layers`` metadata);
- ``.pt`` / ``.safetensors`` with per-layer [V, d] tensors (in natural key order);
- one named tensor of a file or a Hugging Face model directory, or a directory whose config.json
  names a per-layer table (Gemma 3n / Gemma 4), and official STEM checkpoint directories
  (memsvc/store/checkpoints.py: read a slice of tokens at a time).
Vocabularies: a word list (one word per line), tokenizer.json, sentencepiece .model or tiktoken file.
"""
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from memsvc.core.errors import InvalidArgument
from memsvc.store.checkpoints import (is_stem_checkpoint, read_stem_checkpoint, read_tensor, refuse_lone_shard,
                                      torch_to_storage)

STEM_KEY = "stem_embeddings"


def _load_tensors(path: Path) -> tuple:
    """{name: torch tensor} and metadata from a .pt state dict or a safetensors file."""
    import torch

    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise InvalidArgument(f"file: {path} holds no state dict")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}, {}


def _natural_key(name):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


@dataclass
class BankFile:
    rows: object  # [V, L, d] in storage form: an array, a memmap or ChunkedRows (read a slice at a time)
    dtype: str
    model_layers: list = field(default_factory=list)  # the transformer layer each table layer feeds, when known


def load_bank(path, num_layers=None, tensor=None) -> BankFile:
    """A bank from a file or checkpoint directory (see module doc); big ones are read lazily."""
    path = Path(path)
    if not path.exists():
        raise InvalidArgument(f"file: {path} does not exist")
    refuse_lone_shard(path)
    if path.is_dir() and tensor is None and is_stem_checkpoint(path):
        ckpt = read_stem_checkpoint(path)
        return BankFile(ckpt.rows, ckpt.dtype, ckpt.model_layers)
    if path.is_dir() or tensor is not None:
        return BankFile(*read_tensor(path, tensor, num_layers))
    if path.suffix == ".npy":
        rows = np.load(path, mmap_mode="r")
        rows = rows[:, None, :] if rows.ndim == 2 else rows
        dtype = {np.dtype("<f2"): "float16", np.dtype("<f4"): "float32"}.get(rows.dtype)
        if dtype is None:
            rows, dtype = np.asarray(rows, dtype=np.float32), "float32"
    elif path.suffix in (".pt", ".pth", ".bin", ".safetensors"):
        tensors, meta = _load_tensors(path)
        if STEM_KEY in tensors:
            flat, dtype = torch_to_storage(tensors[STEM_KEY])
            layers = int(num_layers or meta.get("stem_layers") or 0)
            if layers <= 0 or flat.ndim != 2 or flat.shape[1] % layers:
                raise InvalidArgument(f"num_layers: {STEM_KEY} of shape {tuple(flat.shape)} needs a layer count dividing {flat.shape[-1]}")
            rows = flat.reshape(flat.shape[0], layers, flat.shape[1] // layers)  # (V, L, d)
        else:
            tables = [k for k in sorted(tensors, key=_natural_key) if tensors[k].ndim == 2]
            shapes = {tuple(tensors[k].shape) for k in tables}
            if not tables or len(shapes) != 1:
                raise InvalidArgument(f"file: {path} has no {STEM_KEY} tensor and no set of equal per-layer [V, d] tensors")
            parts = [torch_to_storage(tensors[k]) for k in tables]
            rows, dtype = np.stack([p for p, _ in parts], axis=1), parts[0][1]  # (V, L, d)
    else:
        raise InvalidArgument(f"file: {path.suffix} is not a bank format (.npy, .pt, .safetensors, a checkpoint directory)")
    if rows.ndim != 3:
        raise InvalidArgument(f"file: expected [vocab, layers, dim] rows, got shape {rows.shape}")
    return BankFile(rows, dtype)


def load_vocab(path, vocab_size) -> tuple:
    """(words by token id for a table of vocab_size rows, tokenizer (kind, file bytes) or None) of a
    word list, tokenizer.json, sentencepiece .model or tiktoken file. A model's table and its
    tokenizer need not have the same size: ids past the tokenizer's pieces (Llama 3's 256 special
    tokens beyond its 128,000 BPE ranks) get placeholder words, and pieces past the table (Gemma 3n's
    per-layer table covers the first 262,144 of 262,400 ids) are left out."""
    path = Path(path)
    if not path.exists():
        raise InvalidArgument(f"vocab: {path} does not exist")
    from editing.tokens import Vocabulary

    vocab = Vocabulary.from_file(path)
    words = vocab.words()[:vocab_size]
    words += [f"<token {i}>" for i in range(len(words), vocab_size)]
    return words, (vocab.encoder.kind, vocab.encoder.data) if vocab.encoder is not None else None


def export_bank(rows: np.ndarray, dtype: str, path):
    """Rows [V, L, d] in storage form -> a safetensors file in the STEM inference layout."""
    import torch
    from safetensors.torch import save_file

    flat = np.ascontiguousarray(rows).reshape(rows.shape[0], -1)  # (V, L*d)
    tensor = torch.from_numpy(flat.view(np.int16)).view(torch.bfloat16) if dtype == "bfloat16" else torch.from_numpy(flat)
    save_file({STEM_KEY: tensor}, str(path), metadata={"stem_layers": str(rows.shape[1])})
