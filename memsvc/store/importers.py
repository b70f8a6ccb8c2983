"""Reading banks and vocabularies from the files models ship, and writing them back.

Bank layouts (all token-major, rows returned as [vocab, layers, dim] in storage form):
- ``.npy``: [V, L, d] or [V, d] (one layer);
- ``.pt`` / ``.safetensors`` with one ``stem_embeddings`` tensor [V, L*d] (the STEM inference
  layout; L from ``num_layers`` or the file's ``stem_layers`` metadata);
- ``.pt`` / ``.safetensors`` with per-layer [V, d] tensors (in natural key order).
Vocabularies: a word list (one word per line) or an HF ``tokenizer.json``.
"""
import re
from pathlib import Path

import numpy as np

from memsvc.core.errors import InvalidArgument
from memsvc.store.checkpoints import torch_to_storage

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


def load_bank(path, num_layers=None) -> tuple:
    """Rows [V, L, d] (storage form) and their dtype name from a bank file (see module doc)."""
    path = Path(path)
    if not path.exists():
        raise InvalidArgument(f"file: {path} does not exist")
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
        raise InvalidArgument(f"file: {path.suffix} is not a bank format (.npy, .pt, .safetensors)")
    if rows.ndim != 3:
        raise InvalidArgument(f"file: expected [vocab, layers, dim] rows, got shape {rows.shape}")
    return rows, dtype


def load_vocab(path) -> list:
    """Words by token id from a word list or an HF tokenizer.json."""
    path = Path(path)
    if not path.exists():
        raise InvalidArgument(f"vocab: {path} does not exist")
    if path.suffix == ".json":
        from editing.tokens import Vocabulary

        return Vocabulary.from_tokenizer_file(str(path)).words()
    return path.read_text(encoding="utf-8").splitlines()


def export_bank(rows: np.ndarray, dtype: str, path):
    """Rows [V, L, d] in storage form -> a safetensors file in the STEM inference layout."""
    import torch
    from safetensors.torch import save_file

    flat = np.ascontiguousarray(rows).reshape(rows.shape[0], -1)  # (V, L*d)
    tensor = torch.from_numpy(flat.view(np.int16)).view(torch.bfloat16) if dtype == "bfloat16" else torch.from_numpy(flat)
    save_file({STEM_KEY: tensor}, str(path), metadata={"stem_layers": str(rows.shape[1])})
