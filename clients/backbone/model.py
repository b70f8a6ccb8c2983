"""A small STEM transformer (nanoGPT-style) whose STEM up-projections live in a pluggable bank.

In a STEM layer the SwiGLU up-projection is replaced by a per-layer table indexed by token id
("STEM: Scaling Transformers with Embedding Modules", 2026):

    y = W_down( SiLU(W_gate x) ⊙ U_l[t] )        U_l: [vocab, d_ff], one per STEM layer

The U tables are not parameters of the model. They come from a *bank*, which in production is a
remote service. The bank protocol is two methods and one optional hook:

    handle = bank.request(token_ids)   # token_ids: LongTensor (N,); starts the fetch, returns now
    rows = handle.result()             # Tensor (N, n_stem_layers, d_ff): all STEM layers of
                                       # the N tokens, token-major ([vocab, layers, d_ff] layout)
    bank.prefetch(token_ids)           # optional: generate() calls it with the next step's
                                       # tokens as soon as they are sampled

`StemTransformer.forward` calls `bank.request(idx.flatten())` exactly once, first thing, and calls
`.result()` only just before the first STEM FFN needs the rows, so a remote bank overlaps its RPC
with the embedding and the first attention. Layer slot j of the rows belongs to
`config.stem_layers[j]`, in the order the list gives (the STEM authors' checkpoints order
their tables so). Rows are cast to the model's dtype and device; nothing else
depends on the bank, so any bank that returns the same rows gives bit-identical logits and tokens.

`InProcessBank` holds U as one trainable nn.Parameter [V, n_stem, d_ff] (training, reference).
Parameter names of `StemTransformer` and `InProcessBank` are a stable checkpoint format.

Injected tokens (editing/inject.py): a bank may serve rows for token ids >= vocab_size (tokens
injected after training). They are for prompts: forward(..., extra_embeds=E) gives id
vocab_size + i the input embedding E[i]; the output head stays over the trained vocabulary.
A model trained with hidden entities may carry its null embedding (`null_embedding`, the
checkpoint tensor of the same name), the fallback input embedding of an injected token.

Optional persistent memory (memory.py): blocks in config.memory_layers add a read of (key, value)
pairs from a *memory source* passed to forward like the bank (`memory=`), e.g. a Memory Mosaic
store through the service. With no memory_layers (the default) the model is unchanged.
"""

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from .memory import PersistentMemory


@dataclass
class ModelConfig:
    vocab_size: int = 1024
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int | None = None  # key/value heads (grouped-query attention); None means n_head
    d_model: int = 128
    d_ff: int = 512
    stem_layers: list[int] | None = None  # layer indices that use STEM, bank slot j feeding stem_layers[j]; None: every layer
    max_seq_len: int = 64
    rope_theta: float = 10000.0
    tie_embeddings: bool = False  # share tok_emb with lm_head (the demo keeps them separate)
    norm_eps: float = 1e-5
    memory_layers: list[int] = field(default_factory=list)  # layers with a persistent-memory read (memory.py)
    memory_heads: int = 1
    memory_key_dim: int = 32
    memory_value_dim: int = 32
    memory_beta: float = 16.0  # kernel sharpness β; queries and keys are unit vectors

    def __post_init__(self):
        if self.stem_layers is None:
            self.stem_layers = list(range(self.n_layer))
        self.stem_layers = [int(i) for i in self.stem_layers]
        self.n_kv_head = self.n_head if self.n_kv_head is None else int(self.n_kv_head)
        if self.n_kv_head <= 0 or self.n_head % self.n_kv_head:
            raise ValueError(f"n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head})")
        self.memory_layers = sorted(int(i) for i in self.memory_layers)
        for name in ("stem_layers", "memory_layers"):
            layers = getattr(self, name)
            if any(not 0 <= i < self.n_layer for i in layers) or len(set(layers)) != len(layers):
                raise ValueError(f"{name} must be distinct indices in [0, {self.n_layer})")
        if self.d_model % self.n_head or (self.d_model // self.n_head) % 2:
            raise ValueError("d_model / n_head must be an even integer (rotary pairs)")

    @property
    def n_stem(self) -> int:
        return len(self.stem_layers)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotary_tables(head_dim: int, max_seq_len: int, theta: float):
    """cos, sin of shape (max_seq_len, head_dim // 2) for rotary position embedding (RoFormer)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), inv_freq)
    return angles.cos().float(), angles.sin().float()


def apply_rotary(x, cos, sin):
    """Rotate consecutive pairs of x (B, H, T, hd) by the angles of positions cos/sin (T, hd/2)."""
    x1, x2 = x[..., 0::2], x[..., 1::2]  # (B, H, T, hd/2) each
    rotated = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)  # (B, H, T, hd/2, 2)
    return rotated.flatten(-2).type_as(x)  # (B, H, T, hd)


class KVCache:
    """Keys and values of every layer for incremental decoding; the first `pos` slots are filled."""

    def __init__(self, config: ModelConfig, batch_size: int, dtype=torch.float32, device=None):
        head_dim = config.d_model // config.n_head
        shape = (config.n_layer, batch_size, config.n_kv_head, config.max_seq_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.pos = 0

    def update(self, layer: int, k, v):
        """Store k, v (B, H_kv, T, hd) at positions pos..pos+T; return all keys/values so far."""
        end = self.pos + k.size(2)
        self.k[layer, :, :, self.pos : end] = k
        self.v[layer, :, :, self.pos : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]  # (B, H_kv, end, hd)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer  # index into the KV cache
        self.n_head, self.n_kv_head = config.n_head, config.n_kv_head
        head_dim = config.d_model // config.n_head
        self.qkv = nn.Linear(config.d_model, (config.n_head + 2 * config.n_kv_head) * head_dim, bias=False)
        self.proj = nn.Linear(config.d_model, config.d_model, bias=False)

    def forward(self, x, cos, sin, cache: KVCache | None = None):
        B, T, C = x.shape
        hd = C // self.n_head
        q, k, v = self.qkv(x).split([C, self.n_kv_head * hd, self.n_kv_head * hd], dim=2)
        q = q.view(B, T, self.n_head, hd).transpose(1, 2)  # (B, H, T, hd)
        k, v = (t.view(B, T, self.n_kv_head, hd).transpose(1, 2) for t in (k, v))  # (B, H_kv, T, hd)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        start = 0
        if cache is not None:
            start = cache.pos
            k, v = cache.update(self.layer, k, v)  # (B, H_kv, start + T, hd)
        if self.n_kv_head != self.n_head:  # grouped-query attention: query head h reads kv head h // group
            k, v = (t.repeat_interleave(self.n_head // self.n_kv_head, dim=1) for t in (k, v))  # (B, H, S, hd)
        # query i sits at absolute position start + i and may see keys 0..start + i
        q_pos = torch.arange(start, start + T, device=x.device)
        mask = torch.arange(k.size(2), device=x.device)[None, :] <= q_pos[:, None]  # (T, S)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, T, hd)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.proj(y)


class SwiGLU(nn.Module):
    """Dense FFN of non-STEM layers: W_down(SiLU(W_gate x) ⊙ W_up x)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.up = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.down = nn.Linear(config.d_ff, config.d_model, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class StemMLP(nn.Module):
    """STEM FFN: W_down(SiLU(W_gate x) ⊙ U_l[t]); the rows u = U_l[t] come from the bank."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.down = nn.Linear(config.d_ff, config.d_model, bias=False)

    def forward(self, x, u):
        return self.down(F.silu(self.gate(x)) * u)  # x (B, T, C), u (B, T, d_ff)


class BankRows:
    """The rows of one forward pass, resolved from the bank handle on first use."""

    def __init__(self, handle, shape: tuple[int, int, int, int], like):
        self.handle, self.shape, self.like = handle, shape, like  # like: a tensor of the model's dtype and device
        self.rows = None

    def slot(self, j: int):
        if self.rows is None:
            B, T, n_stem, d_ff = self.shape
            rows = self.handle.result()
            if tuple(rows.shape) != (B * T, n_stem, d_ff):
                raise ValueError(f"bank returned rows {tuple(rows.shape)}, want {(B * T, n_stem, d_ff)}")
            self.rows = rows.to(self.like).reshape(B, T, n_stem, d_ff)  # (B, T, n_stem, d_ff)
        return self.rows[:, :, j]  # (B, T, d_ff)


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        # which slot of the bank rows this layer reads, or None for a dense layer
        self.stem_slot = config.stem_layers.index(layer) if layer in config.stem_layers else None
        self.attn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attn = CausalSelfAttention(config, layer)
        self.mlp_norm = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = SwiGLU(config) if self.stem_slot is None else StemMLP(config)
        if layer in config.memory_layers:  # created only here, so models without memory init as before
            self.memory_norm = RMSNorm(config.d_model, config.norm_eps)
            self.memory = PersistentMemory(config, slot=config.memory_layers.index(layer))

    def forward(self, x, cos, sin, rows: BankRows, cache: KVCache | None = None, memory=None):
        x = x + self.attn(self.attn_norm(x), cos, sin, cache)
        h = self.mlp_norm(x)
        x = x + (self.mlp(h) if self.stem_slot is None else self.mlp(h, rows.slot(self.stem_slot)))
        if hasattr(self, "memory"):
            x = x + self.memory(self.memory_norm(x), memory)
        return x


class StemTransformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.norm_f = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        cos, sin = rotary_tables(config.d_model // config.n_head, config.max_seq_len, config.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)  # derived, not checkpointed
        self.register_buffer("rope_sin", sin, persistent=False)
        self.register_buffer("null_embedding", None, persistent=False)  # (C,) or None; checkpoint.py loads it
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def embed(self, idx, extra_embeds=None):
        """Input embeddings (B, T, C) of idx (B, T); an id vocab_size + i (an injected token)
        takes extra_embeds[i] (extra_embeds: (n_extra, C))."""
        V = self.config.vocab_size
        x = self.tok_emb(idx.clamp(max=V - 1))  # (B, T, C)
        beyond = idx >= V
        if not beyond.any():
            return x
        top = int(idx.max())
        if extra_embeds is None or top - V >= len(extra_embeds):
            raise ValueError(f"token id {top} is beyond the model's vocabulary ({V}) and has no input embedding")
        return torch.where(beyond[..., None], extra_embeds.to(x)[(idx - V).clamp(min=0)], x)  # (B, T, C)

    def forward(self, idx, bank, cache: KVCache | None = None, input_embeds=None, memory=None, extra_embeds=None):
        """Logits (B, T, V) for tokens idx (B, T) that sit at positions cache.pos.. (or 0..).

        input_embeds (B, T, C) replaces tok_emb(idx) (the trainer uses it to hide entities);
        memory: the memory source of the memory layers (unused without config.memory_layers);
        extra_embeds (n_extra, C): input embeddings of injected token ids (see embed)."""
        B, T = idx.shape
        handle = bank.request(idx.flatten())  # first thing: a remote fetch overlaps what follows
        start = 0 if cache is None else cache.pos
        if start + T > self.config.max_seq_len:
            raise ValueError(f"sequence of {start + T} tokens exceeds max_seq_len {self.config.max_seq_len}")
        cos, sin = self.rope_cos[start : start + T], self.rope_sin[start : start + T]
        x = self.embed(idx, extra_embeds) if input_embeds is None else input_embeds  # (B, T, C)
        rows = BankRows(handle, (B, T, self.config.n_stem, self.config.d_ff), like=x)
        for block in self.blocks:
            x = block(x, cos, sin, rows, cache, memory)
        if cache is not None:
            cache.pos += T
        return self.lm_head(self.norm_f(x))


class ReadyRows:
    """A bank handle whose rows are already there."""

    def __init__(self, rows):
        self.rows = rows

    def result(self):
        return self.rows


class InProcessBank(nn.Module):
    """All STEM tables in memory as one parameter, token-major: weight[t, j] = U_{stem_layers[j]}[t]."""

    def __init__(self, config: ModelConfig, weight=None):
        super().__init__()
        shape = (config.vocab_size, config.n_stem, config.d_ff)
        if weight is None:
            # N(0, 1) like nn.Embedding. Rows that started near a constant moved slowly under Adam
            # (relative step ~ lr / |u|), the facts settled in tok_emb instead, and swapping two
            # entities' rows moved 3% of their answers instead of 97% (tiny demo preset)
            weight = torch.randn(shape)
        if tuple(weight.shape) != shape:
            raise ValueError(f"bank weight has shape {tuple(weight.shape)}, want {shape}")
        self.weight = nn.Parameter(weight)

    def request(self, token_ids):
        return ReadyRows(self.weight[token_ids])  # (N, n_stem, d_ff)


@torch.no_grad()
def generate(model: StemTransformer, bank, prompt_ids, max_new_tokens: int, on_token=None, prefill_chunk: int | None = None,
             memory=None, extra_embeds=None):
    """Greedy decoding with a KV cache. prompt_ids (B, T) -> (B, T + max_new_tokens).

    One bank request per forward: the prompt in chunks of prefill_chunk tokens (default: all at
    once), then one request per step for that step's B tokens. After each step the sampled tokens
    go to bank.prefetch (if the bank has it and another step follows) and then to
    on_token(step, next_ids (B,)). memory: the memory source, read once per memory layer per forward.
    extra_embeds (n_extra, C): input embeddings of injected token ids in the prompt (see embed)."""
    B, T = prompt_ids.shape
    if T + max_new_tokens > model.config.max_seq_len:
        raise ValueError(f"{T} + {max_new_tokens} tokens exceed max_seq_len {model.config.max_seq_len}")
    was_training = model.training
    model.eval()
    cache = KVCache(model.config, B, model.tok_emb.weight.dtype, prompt_ids.device)
    chunk = prefill_chunk or T
    for s in range(0, T, chunk):
        logits = model(prompt_ids[:, s : s + chunk], bank, cache, memory=memory, extra_embeds=extra_embeds)  # (B, chunk, V)
    out = [prompt_ids]
    for step in range(max_new_tokens):
        next_ids = logits[:, -1].argmax(-1)  # (B,)
        out.append(next_ids[:, None])
        last = step + 1 == max_new_tokens
        if not last and hasattr(bank, "prefetch"):
            bank.prefetch(next_ids)
        if on_token is not None:
            on_token(step, next_ids)
        if not last:
            logits = model(next_ids[:, None], bank, cache, memory=memory)  # (B, 1, V)
    model.train(was_training)
    return torch.cat(out, dim=1)


@torch.no_grad()
def predict_next(model: StemTransformer, bank, tokenizer, prompts: list[str], memory=None) -> list[str]:
    """The greedy next word after each prompt (prompts of equal token length run as one batch)."""
    model.eval()
    encoded = [tokenizer.encode(p) for p in prompts]
    answers = [""] * len(prompts)
    for length in sorted(set(map(len, encoded))):
        which = [i for i, ids in enumerate(encoded) if len(ids) == length]
        logits = model(torch.tensor([encoded[i] for i in which]), bank, memory=memory)  # (n, length, V)
        for i, token in zip(which, logits[:, -1].argmax(-1).tolist()):
            answers[i] = tokenizer.vocab[token]
    return answers
