"""The STEM backbone: shapes, KV cache, the bank protocol, checkpoints in the STEM layout."""

import json

import pytest
import torch
from safetensors.torch import save_file

from clients.backbone.checkpoint import load_checkpoint, load_stem_checkpoint, save_checkpoint, write_null_embedding
from clients.backbone.model import InProcessBank, KVCache, ModelConfig, StemTransformer, generate
from clients.backbone.tokenizer import SPECIAL_TOKENS, WordTokenizer


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matmuls: a second OpenMP thread only spins when the two cores are busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small(**overrides):
    config = ModelConfig(vocab_size=40, n_layer=3, n_head=2, d_model=16, d_ff=24, max_seq_len=32, **overrides)
    torch.manual_seed(0)
    model, bank = StemTransformer(config).eval(), InProcessBank(config)
    with torch.no_grad():  # rows far from their init, so a wrong row or layer slot shows
        bank.weight.normal_()
    return model, bank


class NumpyBank:
    """Another implementation of the bank protocol: a numpy copy of the rows, and a log of calls."""

    def __init__(self, weight):
        self.table = weight.detach().numpy().copy()  # (V, n_stem, d_ff)
        self.log = []

    def request(self, token_ids):
        self.log.append(("request", token_ids.tolist()))
        bank = self

        class Handle:
            def result(self):
                bank.log.append(("result",))
                return torch.from_numpy(bank.table[token_ids.numpy()])

        return Handle()

    def prefetch(self, token_ids):
        self.log.append(("prefetch", token_ids.tolist()))


def test_shapes_and_parameter_names():
    model, bank = small(stem_layers=[2, 1])
    assert model.config.stem_layers == [2, 1]  # list order: bank slot 0 feeds layer 2 (as STEM checkpoints order tables)
    assert [b.stem_slot for b in model.blocks] == [None, 1, 0]
    idx = torch.randint(0, 40, (3, 7))
    assert model(idx, bank).shape == (3, 7, 40)
    assert bank.weight.shape == (40, 2, 24)
    names = set(model.state_dict())
    assert "blocks.0.mlp.up.weight" in names  # dense SwiGLU
    assert {"blocks.1.mlp.gate.weight", "blocks.1.mlp.down.weight"} <= names
    assert "blocks.1.mlp.up.weight" not in names and "blocks.2.mlp.up.weight" not in names
    with pytest.raises(ValueError, match="stem_layers"):
        ModelConfig(n_layer=2, stem_layers=[2])


def test_each_stem_layer_reads_its_own_slot_of_the_rows():
    model, bank = small(stem_layers=[0, 2])
    idx = torch.randint(0, 40, (2, 5))
    with torch.no_grad():
        model.blocks[2].mlp.down.weight.zero_()  # layer 2 (slot 1) now ignores its rows
        before = model(idx, bank)
        bank.weight[:, 1] += 1.0
        assert torch.equal(model(idx, bank), before)
        bank.weight[:, 0] += 1.0
        assert not torch.allclose(model(idx, bank), before)


def test_kv_cache_incremental_decode_equals_full_forward():
    model, bank = small()
    idx = torch.randint(0, 40, (2, 12))
    with torch.no_grad():
        full = model(idx, bank)  # (2, 12, V)
        cache = KVCache(model.config, batch_size=2)
        parts = [model(idx[:, :5], bank, cache)] + [model(idx[:, t : t + 1], bank, cache) for t in range(5, 12)]
    assert cache.pos == 12
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


def test_bank_is_requested_first_and_resolved_before_the_first_stem_ffn():
    model, bank = small(stem_layers=[1, 2])
    other = NumpyBank(bank.weight)
    for i, block in enumerate(model.blocks):
        block.attn.register_forward_hook(lambda *_, i=i: other.log.append(("attn", i)))
    model(torch.tensor([[3, 4, 5]]), other)
    assert other.log == [("request", [3, 4, 5]), ("attn", 0), ("attn", 1), ("result",), ("attn", 2)]


def test_generate_with_another_bank_gives_identical_tokens_and_prefetches():
    model, bank = small()
    prompt = torch.randint(0, 40, (3, 6))
    reference = generate(model, bank, prompt, max_new_tokens=5)
    other = NumpyBank(bank.weight)
    seen = []
    tokens = generate(model, other, prompt, 5, on_token=lambda step, ids: seen.append(ids.tolist()), prefill_chunk=4)
    assert torch.equal(tokens, reference)
    assert tokens.shape == (3, 11) and torch.equal(tokens[:, :6], prompt)
    assert seen == tokens[:, 6:].T.tolist()
    requests = [e[1] for e in other.log if e[0] == "request"]
    prefetches = [e[1] for e in other.log if e[0] == "prefetch"]
    assert requests[:2] == [prompt[:, :4].flatten().tolist(), prompt[:, 4:].flatten().tolist()]
    assert prefetches == seen[:-1]  # no prefetch after the last step
    assert requests[2:] == prefetches  # each step asks for exactly what was prefetched
    with pytest.raises(ValueError, match="max_seq_len"):
        generate(model, bank, prompt, max_new_tokens=27)


def test_bank_returning_wrong_shape_is_rejected():
    model, bank = small()

    class ShortBank:
        def request(self, token_ids):
            return bank.request(token_ids[:-1])

    with pytest.raises(ValueError, match="bank returned rows"):
        model(torch.tensor([[1, 2, 3]]), ShortBank())


def word_tokenizer(n):
    return WordTokenizer(SPECIAL_TOKENS + [f"w{i}" for i in range(n - len(SPECIAL_TOKENS))])


@pytest.mark.parametrize("tie", [False, True])
def test_checkpoint_round_trip(tmp_path, tie):
    model, bank = small(tie_embeddings=tie, stem_layers=[0, 1])
    tokenizer = word_tokenizer(40)
    save_checkpoint(tmp_path, model, bank, tokenizer)
    model2, bank2, tokenizer2 = load_checkpoint(tmp_path)
    assert model2.config == model.config
    assert tokenizer2.vocab == tokenizer.vocab
    assert torch.equal(bank2.weight, bank.weight)
    for name, tensor in model.state_dict().items():
        assert torch.equal(model2.state_dict()[name], tensor), name
    assert (model2.lm_head.weight is model2.tok_emb.weight) == tie
    prompt = torch.randint(0, 40, (2, 4))
    assert torch.equal(generate(model2, bank2, prompt, 6), generate(model, bank, prompt, 6))


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_load_stem_inference_layout(tmp_path, suffix):
    """A file written by hand in the documented layout loads into the same model."""
    model, bank = small(stem_layers=[0, 2])
    config = model.config
    tensors = {name: t.clone() for name, t in model.state_dict().items()}
    tensors["stem_embeddings"] = bank.weight.detach().reshape(40, 2 * 24).clone()  # token-major
    path = tmp_path / f"weights{suffix}"
    save_file(tensors, str(path)) if suffix == ".safetensors" else torch.save(tensors, path)
    (tmp_path / "config.json").write_text(json.dumps(config.__dict__))
    word_tokenizer(40).save_hf(tmp_path / "tokenizer.json")
    model2, bank2, hf_tokenizer = load_stem_checkpoint(path)
    assert hf_tokenizer.encode("w0 w1").ids == [2, 4, 5]
    assert torch.equal(bank2.weight[7, 1], bank.weight[7, 1])
    prompt = torch.randint(0, 40, (2, 5))
    assert torch.equal(generate(model2, bank2, prompt, 8), generate(model, bank, prompt, 8))


def test_load_stem_layout_rejects_wrong_bank_shape(tmp_path):
    model, bank = small()
    tensors = dict(model.state_dict(), stem_embeddings=torch.zeros(40, 24))
    save_file(tensors, str(tmp_path / "w.safetensors"), metadata={"config": json.dumps(model.config.__dict__)})
    with pytest.raises(ValueError, match="stem_embeddings has shape"):
        load_stem_checkpoint(tmp_path / "w.safetensors", tokenizer_path=tmp_path / "none.json")



def test_injected_token_reads_its_extra_embedding_and_bank_row_in_cached_decode():
    """Id 40 (beyond the trained 40) with token 7's input embedding and rows decodes exactly as 7."""
    model, bank = small()
    wider = InProcessBank(ModelConfig(**{**model.config.__dict__, "vocab_size": 41}), torch.cat([bank.weight, bank.weight[7:8]]))
    extra = model.tok_emb.weight[7:8].detach().clone()  # (1, C)
    prompt = torch.tensor([[3, 7, 5, 7]])
    want = generate(model, bank, prompt, 6)
    got = generate(model, wider, torch.tensor([[3, 40, 5, 40]]), 6, prefill_chunk=3, extra_embeds=extra)
    assert torch.equal(got[:, 4:], want[:, 4:])
    assert torch.equal(model.embed(torch.tensor([[40, 1]]), extra), model.tok_emb(torch.tensor([[7, 1]])))
    with pytest.raises(ValueError, match=r"^token id 41 is beyond the model's vocabulary \(40\) and has no input embedding$"):
        model.embed(torch.tensor([[41]]), extra)


def test_checkpoint_keeps_the_null_embedding(tmp_path):
    model, bank = small()
    assert model.null_embedding is None and "null_embedding" not in model.state_dict()
    save_checkpoint(tmp_path / "plain", model, bank, word_tokenizer(40))
    assert load_checkpoint(tmp_path / "plain")[0].null_embedding is None
    model.null_embedding = torch.arange(16.0)
    save_checkpoint(tmp_path / "null", model, bank, word_tokenizer(40))
    assert torch.equal(load_checkpoint(tmp_path / "null")[0].null_embedding, torch.arange(16.0))


def test_write_null_embedding_adds_it_and_keeps_every_other_tensor(tmp_path):
    from safetensors import safe_open

    model, bank = small()
    save_checkpoint(tmp_path, model, bank, word_tokenizer(40))
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        before, config = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()["config"]
    write_null_embedding(tmp_path, torch.arange(16.0), "fitted by hand")
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        after, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    assert metadata == {"config": config, "null_embedding": "fitted by hand"}
    assert sorted(after) == sorted([*before, "null_embedding"]) and all(torch.equal(after[k], t) for k, t in before.items())
    assert torch.equal(load_checkpoint(tmp_path)[0].null_embedding, torch.arange(16.0))
    with pytest.raises(ValueError, match="already has a 'null_embedding' tensor"):
        write_null_embedding(tmp_path, torch.zeros(16), "again")


def test_word_tokenizer_skips_ids_that_do_not_exist():
    tokenizer = WordTokenizer(SPECIAL_TOKENS + ["a", "", "b", ""])  # a bank vocabulary after a revert
    assert tokenizer.encode("b a") == [2, 6, 4] and tokenizer.encode("x")[1] == tokenizer.unk_id
