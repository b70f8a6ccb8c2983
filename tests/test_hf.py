"""A Hugging Face transformers Gemma 3n text model decoding through memsvc (clients/hf.py): a tiny
model built from a Gemma3nTextConfig (random weights, no download), saved as save_pretrained writes
it, its per-layer table imported from that directory without flags and served over gRPC."""
import pytest
import torch
import transformers

from clients.banks import LocalBank, RemoteBank
from clients.client import MemoryClient
from clients.hf import attach, generate
from memsvc.core.values import RowOp
from memsvc.server.main import ServerConfig, create_server
from memsvc.store import KnowledgeBase, StoreConfig
from memsvc.store.checkpoints import read_tensor


PROMPT = torch.tensor([[1, 5, 9, 13, 17]])
STEPS = dict(max_new_tokens=8, do_sample=False)


def tiny_gemma3n():
    config = transformers.Gemma3nTextConfig(
        vocab_size=96, vocab_size_per_layer_input=96, hidden_size=32, hidden_size_per_layer_input=8,
        intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
        num_kv_shared_layers=0, laurel_rank=4, activation_sparsity_pattern=[0.0] * 3, sliding_window=16,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"], max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.Gemma3nForCausalLM(config).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # weights at a trained model's scale (init leaves some at zero), so rows steer the output
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0, 1.0 if "embed" in name else p.shape[-1] ** -0.5 if p.ndim > 1 else 1.0, generator=g)
    return model


def swap_that_changes_the_output(model, expected):
    """RowOps giving the prompt's tokens other tokens' per-layer rows, and the generation that the
    same swap gives in process: the first offset whose swap changes what the model says."""
    weight = model.model.embed_tokens_per_layer.weight
    for offset in range(1, 96):
        sources = (PROMPT[0] + offset) % 96
        with torch.no_grad():
            saved = weight.clone()
            weight[PROMPT[0]] = weight[sources]
            edited = model.generate(PROMPT, **STEPS)
            weight.copy_(saved)
        if not torch.equal(edited, expected):
            return [RowOp("copy", token_id=int(t), source_token_id=int(s)) for t, s in zip(PROMPT[0], sources)], edited
    raise AssertionError("no swap of the prompt's per-layer rows changes this model's output")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    model = tiny_gemma3n()
    model.save_pretrained(root / "model")
    expected = model.generate(PROMPT, **STEPS)
    swap, edited = swap_that_changes_the_output(model, expected)
    rows, dtype = read_tensor(root / "model")  # config.json names the per-layer table and its layers
    assert rows.shape == (96, 3, 8)
    kb = KnowledgeBase(StoreConfig(data_dir=root / "kb", create=True))
    kb.import_table("ple", rows, [f"t{i}" for i in range(96)], dtype=dtype)
    server, port, _, indexes = create_server(kb, ServerConfig(data_dir=root / "kb", port=0))
    client = MemoryClient(f"127.0.0.1:{port}")
    yield model, client, expected, swap, edited
    client.close()
    server.stop(0)
    indexes.close()
    kb.close()


@pytest.mark.parametrize("bank_kind", ["remote", "local"])
def test_generate_through_memsvc_equals_the_unmodified_model(served, bank_kind):
    model, client, expected, _, _ = served
    bank = RemoteBank(client, "ple", cache_tokens=16) if bank_kind == "remote" else LocalBank(client, "ple")
    attach(model, bank)
    assert torch.equal(generate(model, PROMPT, **STEPS), expected)
    if bank_kind == "remote":
        assert bank.cache.hits > 0  # decoding re-reads tokens: the LFU cache serves them


def test_an_edit_changes_the_generation_revert_restores_it_and_an_override_writes_nothing(served):
    model, client, expected, swap, edited = served
    attach(model, RemoteBank(client, "ple", cache_tokens=16))
    head = client.version
    assert torch.equal(generate(model, PROMPT, overrides=swap, **STEPS), edited)  # as the same swap in process
    assert client.version == head  # an override is a read
    commit = client.edit("ple", swap, message="swap the prompt's per-layer rows")
    assert torch.equal(generate(model, PROMPT, **STEPS), edited)  # the committed edit reads the same rows
    assert torch.equal(generate(model, PROMPT, version=head, **STEPS), expected)  # an old version, pinned
    client.revert(commit.version)
    assert torch.equal(generate(model, PROMPT, **STEPS), expected)
