"""Banks read a slice of tokens at a time: official STEM checkpoints, and dtype conversion of any
bank, without the whole bank in memory.

The STEM authors' training code (a Meta Lingua fork) writes, in a step directory:
- ``params.json``: the train config; ``model.stem_layers`` lists the transformer layers that hold a
  STEM table (default: every layer but 0, ``range(1, model.n_layers)``), ``model.stem_embedding_dim``
  is d_ff;
- ``stem_shards/stem_model_mp<r>.pt``: a torch.save dict with, for each STEM layer, the tensor
  ``stem_embeddings.<i>.weight`` [V, d_ff/mp], where ``i`` is the layer's position in
  ``stem_layers`` (not its layer id) and ``r`` its stem model-parallel rank: each table is split
  along d_ff, rank 0 holding the first columns (``stem_optim_mp<r>.pt`` beside them is optimizer
  state, not read);
- after consolidation, ``consolidated/consolidated_stem.pth``: the same names, joined to [V, d_ff].
Both are fp32 torch.save files, opened with mmap so that a slice of tokens reads only its rows.
"""
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from memsvc.core.dtypes import storage_dtype, to_float32, to_storage
from memsvc.core.errors import InvalidArgument

SHARD = re.compile(r"stem_model_mp(\d+)\.pt")
CONSOLIDATED = "consolidated_stem.pth"
TABLE = "stem_embeddings.{}.weight"


def torch_to_storage(tensor):
    """A torch tensor -> (numpy array in storage form, dtype name)."""
    import torch

    if tensor.dtype == torch.bfloat16:
        return tensor.contiguous().view(torch.int16).numpy().view(np.uint16), "bfloat16"
    if tensor.dtype == torch.float16:
        return tensor.contiguous().numpy(), "float16"
    return tensor.to(torch.float32).contiguous().numpy(), "float32"


class ChunkedRows:
    """A token-major [V, L, d] bank whose rows are read a slice of tokens at a time (``read(start,
    stop)``): what KnowledgeBase.import_table writes chunk by chunk, never holding the bank."""

    ndim = 3

    def __init__(self, shape, dtype, read):
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self.read = read

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return self.read(int(key), int(key) + 1)[0]
        if isinstance(key, slice) and key.step in (None, 1):
            start, stop, _ = key.indices(self.shape[0])
            return self.read(start, max(start, stop))
        raise TypeError(f"ChunkedRows reads a token or a slice of tokens, not {key!r}")


def converted(rows, from_dtype: str, to_dtype: str):
    """``rows`` (storage form of ``from_dtype``) as ``to_dtype``'s storage form, converted a slice
    at a time when read (a whole-bank conversion held the bank as float32: 14 GB at STEM-1B)."""
    if from_dtype == to_dtype:
        return rows
    return ChunkedRows(rows.shape, storage_dtype(to_dtype),
                       lambda a, b: to_storage(to_float32(np.asarray(rows[a:b]), from_dtype), to_dtype))


@dataclass
class StemCheckpoint:
    rows: ChunkedRows  # [V, len(stem_layers), d_ff] in storage form
    dtype: str
    model_layers: list  # the transformer layer each table layer feeds: params.json's stem_layers, in order


def is_stem_checkpoint(path) -> bool:
    path = Path(path)
    return path.is_dir() and ((path / "stem_shards").is_dir() or (path / CONSOLIDATED).is_file()
                              or (path / "consolidated" / CONSOLIDATED).is_file())


def refuse_lone_shard(path):
    """A single stem_model_mp<r>.pt holds 1/mp of every table's columns: importing it as a bank
    gives a bank of the wrong width, so it is refused with what to import instead."""
    path = Path(path)
    if SHARD.fullmatch(path.name):
        raise InvalidArgument(f"file: {path.name} is one model-parallel shard of a STEM checkpoint (d_ff/mp columns of "
                              f"each table); import its step directory {path.parent.parent} to join every rank")


def read_stem_checkpoint(path) -> StemCheckpoint:
    """A STEM step directory (stem_shards/) or consolidated directory as a bank, rows read lazily."""
    path = Path(path)
    model = _model_params(path)
    stem_layers = model.get("stem_layers")
    if stem_layers is None:
        stem_layers = list(range(1, int(model["n_layers"]))) if "n_layers" in model else None
    consolidated = next((p for p in (path / CONSOLIDATED, path / "consolidated" / CONSOLIDATED) if p.is_file()), None)
    if consolidated is not None:
        parts = [_load(consolidated)]
    else:
        parts = [_load(f) for f in _shard_files(path / "stem_shards")]
    n_tables = len(stem_layers) if stem_layers is not None else _count_tables(parts[0])
    tables = [[_table(state, i, source) for state, source in parts] for i in range(n_tables)]
    vocab, widths = _check_shapes(tables, [source for _, source in parts])
    d_ff = sum(widths)
    if model.get("stem_embedding_dim") not in (None, d_ff):
        raise InvalidArgument(f"params.json: model.stem_embedding_dim is {model['stem_embedding_dim']} but the "
                              f"tables are {d_ff} wide")
    dtype = torch_to_storage(tables[0][0][:1])[1]

    def read(start, stop):
        import torch

        out = np.empty((stop - start, n_tables, d_ff), storage_dtype(dtype))
        for i, shards in enumerate(tables):
            out[:, i, :] = torch_to_storage(torch.cat([s[start:stop] for s in shards], dim=1))[0]
        return out

    return StemCheckpoint(ChunkedRows((vocab, n_tables, d_ff), storage_dtype(dtype), read), dtype,
                          list(stem_layers) if stem_layers is not None else [])


def _model_params(path: Path) -> dict:
    for where in (path, path / "consolidated", path.parent):
        f = where / "params.json"
        if f.is_file():
            try:
                params = json.loads(f.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise InvalidArgument(f"params.json: not JSON ({e})") from None
            return params.get("model", params) if isinstance(params, dict) else {}
    return {}


def _shard_files(folder: Path) -> list:
    """The stem_model_mp<r>.pt files in numeric rank order; every rank 0..mp-1 must be there."""
    ranks = {int(m.group(1)): p for p in folder.iterdir() if (m := SHARD.fullmatch(p.name))}
    if not ranks:
        raise InvalidArgument(f"stem_shards: {folder} holds no stem_model_mp<rank>.pt")
    missing = [r for r in range(max(ranks) + 1) if r not in ranks]
    if missing:
        raise InvalidArgument(f"stem_shards: missing {', '.join(f'stem_model_mp{r}.pt' for r in missing)} "
                              f"(found ranks {sorted(ranks)})")
    return [ranks[r] for r in sorted(ranks)]


def _load(file: Path) -> tuple:
    import torch

    try:
        state = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
    except Exception as e:  # a damaged or foreign file: say which
        raise InvalidArgument(f"file: {file} is not a torch.save checkpoint ({e})") from None
    if not isinstance(state, dict):
        raise InvalidArgument(f"file: {file} holds no state dict")
    return state, file.name


def _count_tables(part) -> int:
    state, _ = part
    return sum(1 for k in state if re.fullmatch(r"stem_embeddings\.\d+\.weight", k))


def _table(state: dict, i: int, source: str):
    tensor = state.get(TABLE.format(i))
    if tensor is None or tensor.ndim != 2:
        raise InvalidArgument(f"{source}: no 2-D {TABLE.format(i)} (table {i} of params.json's stem_layers)")
    return tensor


def _check_shapes(tables: list, sources: list) -> tuple:
    """(vocab, column widths per part); every table of every part must be [V, w_part], and all
    parts equally wide (the authors split d_ff evenly)."""
    vocab = tables[0][0].shape[0]
    widths = [t.shape[1] for t in tables[0]]
    for i, shards in enumerate(tables):
        for shard, source, width in zip(shards, sources, widths):
            if tuple(shard.shape) != (vocab, width):
                raise InvalidArgument(f"{source}: {TABLE.format(i)} is {list(shard.shape)}, expected [{vocab}, {width}]")
    if len(set(widths)) != 1:
        raise InvalidArgument("stem_shards: shards of unequal shape: "
                              + ", ".join(f"{s} [{vocab}, {w}]" for s, w in zip(sources, widths)))
    return vocab, widths


# ---------------------------------------------------------------- one named tensor, any checkpoint

PER_LAYER = "embed_tokens_per_layer.weight"  # Gemma 3n / Gemma 4: [vocab_per_layer, layers x d], scaled by sqrt(d) in the model


def read_tensor(path, name=None, num_layers=None) -> tuple:
    """(rows [V, L, d] read lazily, dtype name) of one tensor of a .safetensors / .pt file or of a
    Hugging Face model directory (model.safetensors, or sharded through model.safetensors.index.json).
    A 2-D [V, L*d] tensor is split into ``num_layers``; without a name, an HF directory whose
    config.json describes per-layer embeddings (Gemma 3n / Gemma 4) names its table and layer count."""
    path = Path(path)
    if name is None and path.is_dir():
        name, num_layers = _per_layer_table(path, num_layers)
    if name is None:
        raise InvalidArgument("tensor: name the tensor to import (--tensor NAME)")
    tensor = _open_tensor(path, name)
    shape = tuple(tensor.get_shape() if hasattr(tensor, "get_shape") else tensor.shape)
    if len(shape) == 3:
        vocab, layers, dim = shape
    elif len(shape) == 2:
        layers = int(num_layers or 1)
        if layers <= 0 or shape[1] % layers:
            raise InvalidArgument(f"layers: tensor {name!r} of shape {list(shape)} does not split into {layers} layers")
        vocab, dim = shape[0], shape[1] // layers
    else:
        raise InvalidArgument(f"tensor: {name!r} has shape {list(shape)}; expected [V, L*d], [V, d] or [V, L, d]")
    dtype = torch_to_storage(tensor[:1])[1]
    return ChunkedRows((vocab, layers, dim), storage_dtype(dtype),
                       lambda a, b: torch_to_storage(tensor[a:b])[0].reshape(b - a, layers, dim)), dtype


def _per_layer_table(folder: Path, num_layers) -> tuple:
    """(tensor name, layer count) of the per-layer embedding table that config.json describes."""
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    text = config.get("text_config", config)
    if not text.get("hidden_size_per_layer_input"):
        raise InvalidArgument(f"tensor: {folder} has no per-layer embedding table in its config.json; name one with --tensor")
    names = [n for n in _tensor_names(folder) if n == PER_LAYER or n.endswith("." + PER_LAYER)]
    if len(names) != 1:
        raise InvalidArgument(f"tensor: expected one {PER_LAYER} in {folder}, found {names or 'none'}")
    return names[0], int(num_layers or text["num_hidden_layers"])


def _tensor_names(folder: Path) -> list:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return list(json.loads(index.read_text())["weight_map"])
    from safetensors import safe_open

    with safe_open(str(_single_file(folder)), framework="pt") as f:
        return list(f.keys())


def _single_file(folder: Path) -> Path:
    for candidate in ("model.safetensors", "pytorch_model.bin"):
        if (folder / candidate).is_file():
            return folder / candidate
    raise InvalidArgument(f"file: {folder} holds no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def _open_tensor(path: Path, name: str):
    """A lazily read handle on tensor ``name``: a safetensors slice (reads only the rows asked for)
    or an mmap-loaded torch tensor."""
    if path.is_dir():
        index = path / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            if name not in weight_map:
                raise InvalidArgument(f"tensor: {name!r} is not in {index.name}")
            path = path / weight_map[name]
        else:
            path = _single_file(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        handle = safe_open(str(path), framework="pt")
        if name not in handle.keys():
            raise InvalidArgument(f"tensor: {name!r} is not in {path.name} (it has {', '.join(sorted(handle.keys())[:8])}...)")
        return handle.get_slice(name)
    state, _ = _load(path)
    if name not in state:
        raise InvalidArgument(f"tensor: {name!r} is not in {path.name}")
    return state[name]
