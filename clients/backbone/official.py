"""The STEM authors' backbone (a Meta Lingua fork) loaded into `StemTransformer`, its bank served by memsvc.

A consolidated checkpoint directory holds ``params.json`` (the train config, the model's args
under ``model``) and ``consolidated.pth`` (the dense weights, under ``model`` as lingua's
consolidation writes them, possibly prefixed ``lm_transformer.``). The names are Llama's:

    tok_embeddings, layers.N.attention.{wq,wk,wv,wo}, layers.N.feed_forward.{w1,w2[,w3]},
    layers.N.{attention_norm,ffn_norm}, norm, output

A STEM layer's feed_forward has w1 (gate) and w2 (down) only: its up-projection is the table
``stem_embeddings.<j>`` (consolidated_stem.pth, imported into memsvc with ``memsvc import``), j
being the layer's position in ``stem_layers``. Attention is grouped-query when n_kv_heads <
n_heads; RoPE rotates interleaved pairs, as `apply_rotary` does.
"""
import json
from pathlib import Path

import torch

from .model import ModelConfig, StemTransformer

NAMES = {  # Llama / lingua name -> StemTransformer name, per layer ({} is the layer index)
    "layers.{}.attention.wo.weight": "blocks.{}.attn.proj.weight",
    "layers.{}.attention_norm.weight": "blocks.{}.attn_norm.weight",
    "layers.{}.ffn_norm.weight": "blocks.{}.mlp_norm.weight",
    "layers.{}.feed_forward.w1.weight": "blocks.{}.mlp.gate.weight",
    "layers.{}.feed_forward.w2.weight": "blocks.{}.mlp.down.weight",
    "layers.{}.feed_forward.w3.weight": "blocks.{}.mlp.up.weight",
}
TOP = {"tok_embeddings.weight": "tok_emb.weight", "norm.weight": "norm_f.weight", "output.weight": "lm_head.weight"}


def hidden_dim(args: dict) -> int:
    """lingua's FeedForward width: 2/3 of 4 x dim, times ffn_dim_multiplier, rounded up to multiple_of."""
    hidden = int(2 * 4 * args["dim"] / 3)
    if args.get("ffn_dim_multiplier") is not None:
        hidden = int(args["ffn_dim_multiplier"] * hidden)
    multiple = int(args.get("multiple_of", 256))
    return multiple * ((hidden + multiple - 1) // multiple)


def official_config(args: dict, max_seq_len=None) -> ModelConfig:
    """ModelConfig of the authors' model args (params.json ``model``)."""
    n_layer, n_head = int(args["n_layers"]), int(args["n_heads"])
    if args.get("head_dim") not in (None, args["dim"] // n_head):
        raise ValueError(f"params.json: head_dim {args['head_dim']} is not dim / n_heads; not supported")
    stem_layers = args.get("stem_layers")
    d_ff = hidden_dim(args)
    if args.get("stem_embedding_dim") not in (None, d_ff):
        raise ValueError(f"params.json: stem_embedding_dim {args['stem_embedding_dim']} != the FFN width {d_ff}")
    return ModelConfig(vocab_size=int(args["vocab_size"]), n_layer=n_layer, n_head=n_head,
                       n_kv_head=args.get("n_kv_heads"), d_model=int(args["dim"]), d_ff=d_ff,
                       stem_layers=list(range(1, n_layer)) if stem_layers is None else list(stem_layers),
                       max_seq_len=int(max_seq_len or args.get("max_seqlen", 1024)),
                       rope_theta=float(args.get("rope_theta", 10000.0)), norm_eps=float(args.get("norm_eps", 1e-5)))


def load_official(folder, max_seq_len=None) -> StemTransformer:
    """The dense model of a consolidated STEM checkpoint directory (its bank comes from memsvc)."""
    folder = Path(folder)
    params = json.loads((folder / "params.json").read_text())
    config = official_config(params.get("model", params), max_seq_len)
    state = torch.load(folder / "consolidated.pth", map_location="cpu", weights_only=True, mmap=True)
    state = state.get("model", state)
    state = {k.removeprefix("lm_transformer."): v for k, v in state.items()}
    model = StemTransformer(config)
    model.load_state_dict(stem_transformer_state(state, config))
    return model.eval()


def stem_transformer_state(state: dict, config: ModelConfig) -> dict:
    """The authors' tensors under StemTransformer's names (wq, wk, wv stacked into qkv)."""
    out = {ours: state[theirs] for theirs, ours in TOP.items() if theirs in state}
    if "lm_head.weight" not in out:  # tied output
        out["lm_head.weight"] = out["tok_emb.weight"]
    for i in range(config.n_layer):
        attn = [state[f"layers.{i}.attention.{w}.weight"] for w in ("wq", "wk", "wv")]
        out[f"blocks.{i}.attn.qkv.weight"] = torch.cat(attn, dim=0)  # (H*hd + 2*H_kv*hd, C)
        for theirs, ours in NAMES.items():
            if theirs.format(i) in state:
                out[ours.format(i)] = state[theirs.format(i)]
    return out


def check_table(config: ModelConfig, info) -> None:
    """Refuse a memsvc table (its TableInfo) that does not feed this model: the table's layer j must
    feed config.stem_layers[j] (its recorded model_layers, when the import knew them) and its rows
    must be d_ff wide."""
    if (info.num_layers, info.dim) != (config.n_stem, config.d_ff):
        raise ValueError(f"table {info.name!r}: {info.num_layers} layers x {info.dim}, the model reads "
                         f"{config.n_stem} x {config.d_ff}")
    if info.model_layers and list(info.model_layers) != list(config.stem_layers):
        raise ValueError(f"table {info.name!r} feeds model layers {list(info.model_layers)}, this model's STEM "
                         f"layers are {config.stem_layers}")
