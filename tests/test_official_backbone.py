"""The STEM authors' Llama-style backbone (clients/backbone/official.py): a tiny consolidated
checkpoint written in exactly their layout (params.json, consolidated.pth under 'model',
consolidated_stem.pth), checked against a plain reference forward written here from the tensors,
then decoded with its bank in process, through RemoteBank and through LocalBank."""
import json
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from clients.backbone.model import InProcessBank, generate
from clients.backbone.official import check_table, hidden_dim, load_official
from clients.banks import LocalBank, RemoteBank
from clients.client import MemoryClient
from memsvc.cli import cli
from memsvc.server.main import ServerConfig, create_server
from memsvc.store import KnowledgeBase, StoreConfig

ARGS = {"dim": 32, "n_layers": 3, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 50, "multiple_of": 16,
        "stem_layers": [2, 1], "norm_eps": 1e-5, "rope_theta": 10000.0, "max_seqlen": 32}
D_FF = hidden_dim(ARGS)


def write_consolidated(folder):
    """Dense weights by the authors' names (a STEM layer's FFN has no w3) and the STEM tables."""
    g = torch.Generator().manual_seed(0)
    rnd = lambda *shape: torch.randn(*shape, generator=g) * shape[-1] ** -0.5
    hd, kv = ARGS["dim"] // ARGS["n_heads"], ARGS["n_kv_heads"]
    model = {"tok_embeddings.weight": torch.randn(50, 32, generator=g), "norm.weight": 1 + 0.1 * torch.randn(32, generator=g),
             "output.weight": rnd(50, 32)}
    for i in range(ARGS["n_layers"]):
        p = f"layers.{i}."
        model |= {p + "attention.wq.weight": rnd(32, 32), p + "attention.wk.weight": rnd(kv * hd, 32),
                  p + "attention.wv.weight": rnd(kv * hd, 32), p + "attention.wo.weight": rnd(32, 32),
                  p + "attention_norm.weight": 1 + 0.1 * torch.randn(32, generator=g),
                  p + "ffn_norm.weight": 1 + 0.1 * torch.randn(32, generator=g),
                  p + "feed_forward.w1.weight": rnd(D_FF, 32), p + "feed_forward.w2.weight": rnd(32, D_FF)}
        if i not in ARGS["stem_layers"]:
            model[p + "feed_forward.w3.weight"] = rnd(D_FF, 32)
    stem = {f"stem_embeddings.{j}.weight": torch.randn(50, D_FF, generator=g) for j in range(len(ARGS["stem_layers"]))}
    folder.mkdir(parents=True)
    (folder / "params.json").write_text(json.dumps({"name": "tiny", "model": {**ARGS, "stem_embedding_dim": D_FF}}))
    torch.save({"model": model}, folder / "consolidated.pth")
    torch.save(stem, folder / "consolidated_stem.pth")
    return model, stem


def reference_logits(w, stem, tokens):
    """Llama with STEM FFNs, written plainly: RMSNorm, GQA with interleaved-pair RoPE, SwiGLU."""
    T, H, KV = len(tokens), ARGS["n_heads"], ARGS["n_kv_heads"]
    hd = ARGS["dim"] // H
    norm = lambda x, weight: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + ARGS["norm_eps"]) * weight
    freqs = 1.0 / ARGS["rope_theta"] ** (torch.arange(0, hd, 2).double() / hd)
    angle = torch.outer(torch.arange(T).double(), freqs).float()  # (T, hd/2)
    rot = torch.polar(torch.ones_like(angle), angle)

    def rope(x):  # (T, heads, hd): pairs (0,1), (2,3)... as complex numbers
        return torch.view_as_real(torch.view_as_complex(x.reshape(T, -1, hd // 2, 2)) * rot[:, None]).reshape(x.shape)

    h = w["tok_embeddings.weight"][tokens]
    for i in range(ARGS["n_layers"]):
        p, x = f"layers.{i}.", norm(h, w[f"layers.{i}.attention_norm.weight"])
        q = rope((x @ w[p + "attention.wq.weight"].T).view(T, H, hd))
        k = rope((x @ w[p + "attention.wk.weight"].T).view(T, KV, hd)).repeat_interleave(H // KV, dim=1)
        v = (x @ w[p + "attention.wv.weight"].T).view(T, KV, hd).repeat_interleave(H // KV, dim=1)
        att = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True)
        h = h + att.transpose(0, 1).reshape(T, -1) @ w[p + "attention.wo.weight"].T
        x = norm(h, w[p + "ffn_norm.weight"])
        gate = F.silu(x @ w[p + "feed_forward.w1.weight"].T)
        up = (stem[f"stem_embeddings.{ARGS['stem_layers'].index(i)}.weight"][tokens] if i in ARGS["stem_layers"]
              else x @ w[p + "feed_forward.w3.weight"].T)
        h = h + (gate * up) @ w[p + "feed_forward.w2.weight"].T
    return norm(h, w["norm.weight"]) @ w["output.weight"].T


def test_the_authors_backbone_decodes_the_same_in_process_and_through_memsvc(tmp_path):
    weights, stem = write_consolidated(tmp_path / "consolidated")
    model = load_official(tmp_path / "consolidated")
    assert model.config.n_kv_head == 2 and model.config.stem_layers == [2, 1]
    bank = InProcessBank(model.config, torch.stack([stem[f"stem_embeddings.{j}.weight"] for j in range(2)], dim=1))
    tokens = torch.tensor([3, 17, 8, 42, 5, 11])
    with torch.no_grad():
        torch.testing.assert_close(model(tokens[None], bank)[0], reference_logits(weights, stem, tokens), rtol=1e-4, atol=1e-4)
    expected = generate(model, bank, tokens[None], max_new_tokens=10)

    (tmp_path / "words.txt").write_text("\n".join(f"w{i}" for i in range(50)))
    out = CliRunner().invoke(cli, ["import", str(tmp_path / "consolidated"), "--vocab", str(tmp_path / "words.txt"),
                                   "--table", "stem", "--data", str(tmp_path / "kb")])
    assert out.exit_code == 0, out.output
    kb = KnowledgeBase(StoreConfig(data_dir=tmp_path / "kb"))
    server, port, _, indexes = create_server(kb, ServerConfig(data_dir=tmp_path / "kb", port=0))
    try:
        with MemoryClient(f"127.0.0.1:{port}") as client:
            info = client.describe("stem")
            assert info.model_layers == [2, 1]  # params.json's stem_layers, recorded by the import
            check_table(model.config, info)
            with pytest.raises(ValueError, match=r"feeds model layers \[1, 2\], this model's STEM layers are \[2, 1\]"):
                check_table(model.config, replace(info, model_layers=[1, 2]))
            for served in (RemoteBank(client, "stem", cache_tokens=8), LocalBank(client, "stem")):
                assert torch.equal(generate(model, served, tokens[None], max_new_tokens=10), expected)
    finally:
        server.stop(0)
        indexes.close()
        kb.close()
