"""Checkpoints in the STEM inference layout.

One weights file holds the dense weights under the parameter names of `StemTransformer` and the
bank as ONE tensor `stem_embeddings` [V, n_stem * d_ff], token-major: row t is U_l[t] of every
STEM layer l (in config.stem_layers order) laid end to end, which is the service's
[vocab, layers, d_ff] layout flattened. An optional `null_embedding` (d_model,) is the model's
null input embedding (the fallback for injected tokens, see model.py). A demo checkpoint
directory holds:

    model.safetensors   weights; metadata["config"] is the ModelConfig as JSON and, with a null
                        embedding, metadata["null_embedding"] says where it came from
    config.json         the same config, for tools that do not read safetensors metadata
    vocab.txt           the WordTokenizer word list
    tokenizer.json      the same vocabulary as a Hugging Face `tokenizers` file
"""

import json
from dataclasses import asdict
from pathlib import Path

import torch

from .model import InProcessBank, ModelConfig, StemTransformer
from .tokenizer import WordTokenizer

WEIGHTS_FILE = "model.safetensors"
STEM_KEY = "stem_embeddings"
NULL_KEY = "null_embedding"


def stem_state_dict(model: StemTransformer, bank: InProcessBank) -> dict[str, torch.Tensor]:
    """Dense weights by parameter name plus stem_embeddings (V, n_stem * d_ff)."""
    state = dict(model.state_dict())
    if model.config.tie_embeddings:
        del state["lm_head.weight"]  # the same tensor as tok_emb.weight; safetensors stores it once
    state[STEM_KEY] = bank.weight.detach().reshape(bank.weight.shape[0], -1)  # (V, n_stem * d_ff)
    if model.null_embedding is not None:
        state[NULL_KEY] = model.null_embedding
    return {name: t.detach().contiguous() for name, t in state.items()}


def save_checkpoint(out_dir, model: StemTransformer, bank: InProcessBank, tokenizer: WordTokenizer, null_note: str = "") -> Path:
    """null_note: where model.null_embedding came from (metadata["null_embedding"]), if it has one."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config_json = json.dumps(asdict(model.config))
    metadata = {"config": config_json, **({NULL_KEY: null_note} if null_note and model.null_embedding is not None else {})}
    save_file(stem_state_dict(model, bank), str(out / WEIGHTS_FILE), metadata=metadata)
    (out / "config.json").write_text(config_json)
    tokenizer.save(out / "vocab.txt")
    tokenizer.save_hf(out / "tokenizer.json")
    return out


def write_null_embedding(ckpt_dir, null: torch.Tensor, note: str) -> None:
    """Add null_embedding (C,) to ckpt_dir's weights file, every other tensor and metadata entry
    kept as it was; note goes to metadata["null_embedding"] (where the vector came from)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = Path(ckpt_dir) / WEIGHTS_FILE
    with safe_open(str(path), framework="pt") as f:
        state, metadata = {name: f.get_tensor(name) for name in f.keys()}, dict(f.metadata() or {})
    if NULL_KEY in state:
        raise ValueError(f"{path} already has a {NULL_KEY!r} tensor")
    d_model = json.loads(metadata["config"])["d_model"]
    if tuple(null.shape) != (d_model,):
        raise ValueError(f"{NULL_KEY} has shape {tuple(null.shape)}, want ({d_model},)")
    state[NULL_KEY] = null.detach().to(state["tok_emb.weight"].dtype).contiguous()
    save_file(state, str(path), metadata={**metadata, NULL_KEY: note})


def _read_weights(path: Path) -> tuple[dict[str, torch.Tensor], str | None]:
    """(tensors, config JSON from the file's metadata or None) of a .safetensors or .pt file."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return {name: f.get_tensor(name) for name in f.keys()}, (f.metadata() or {}).get("config")
    return torch.load(path, map_location="cpu", weights_only=True), None


def load_stem_weights(path, config: ModelConfig | None = None) -> tuple[StemTransformer, InProcessBank]:
    """Model + InProcessBank from a weights file in the STEM inference layout.

    The config comes from the argument, else the file's metadata, else config.json beside it."""
    path = Path(path)
    state, meta_config = _read_weights(path)
    if config is None:
        config = ModelConfig(**json.loads(meta_config or (path.parent / "config.json").read_text()))
    if STEM_KEY not in state:
        raise ValueError(f"{path} has no {STEM_KEY!r} tensor")
    stem = state.pop(STEM_KEY)
    null = state.pop(NULL_KEY, None)
    want = (config.vocab_size, config.n_stem * config.d_ff)
    if tuple(stem.shape) != want:
        raise ValueError(f"{STEM_KEY} has shape {tuple(stem.shape)}, want {want} (vocab, n_stem * d_ff)")
    model = StemTransformer(config)
    if config.tie_embeddings:
        state["lm_head.weight"] = state["tok_emb.weight"]
    model.load_state_dict(state, strict=True)
    dtype = model.tok_emb.weight.dtype
    if null is not None:
        if tuple(null.shape) != (config.d_model,):
            raise ValueError(f"{NULL_KEY} has shape {tuple(null.shape)}, want ({config.d_model},)")
        model.null_embedding = null.to(dtype)
    bank = InProcessBank(config, stem.to(dtype).reshape(config.vocab_size, config.n_stem, config.d_ff))
    return model.eval(), bank


def load_stem_checkpoint(path, config: ModelConfig | None = None, tokenizer_path=None):
    """(model, bank, tokenizers.Tokenizer) from STEM weights and the tokenizer.json beside them."""
    from tokenizers import Tokenizer

    path = Path(path)
    model, bank = load_stem_weights(path, config)
    return model, bank, Tokenizer.from_file(str(tokenizer_path or path.parent / "tokenizer.json"))


def load_checkpoint(ckpt_dir) -> tuple[StemTransformer, InProcessBank, WordTokenizer]:
    """(model, bank, tokenizer) of a directory written by save_checkpoint."""
    ckpt_dir = Path(ckpt_dir)
    model, bank = load_stem_weights(ckpt_dir / WEIGHTS_FILE)
    return model, bank, WordTokenizer.load(ckpt_dir / "vocab.txt")
