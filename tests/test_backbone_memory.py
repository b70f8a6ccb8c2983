"""The backbone's persistent-memory layer: off by default, the same logits from pairs in process
and through the service, and knowledge injection as pair commits that a revert undoes."""

import json
from dataclasses import asdict, replace

import pytest
import torch

from clients.backbone.checkpoint import load_checkpoint
from clients.backbone.memory import MEMORY_FILE, InProcessMemory, StoreMemory, WithPairs, merge_reads
from clients.backbone.model import ModelConfig, StemTransformer, generate, predict_next
from clients.client import MemoryClient
from clients.mosaic import MosaicClient
from memsvc.store import KnowledgeBase, StoreConfig
from research.corpus import CorpusConfig, DemoCorpus
from research.inject import InjectConfig, injection_report, make_requests, request_prompts
from research.train import TrainConfig, fact_accuracy, fact_pairs, train_demo
from memsvc.server.spawn import spawn_server, stop_server

CORPUS = CorpusConfig(n_entities=8, n_languages=3, n_currencies=3, n_continents=2)
MODEL = ModelConfig(d_model=32, d_ff=64, n_layer=2, n_head=2, max_seq_len=16, memory_layers=[1], memory_heads=2,
                    memory_key_dim=16, memory_value_dim=16)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny model trained with memory once; its pairs exported into a served KB and an in-process KB."""
    ckpt = tmp_path_factory.mktemp("ckpt")
    train = TrainConfig(corpus=CORPUS, steps=250, lr=1e-2, warmup_steps=10, batch_size=32, swap_pairs=2)
    metrics = train_demo(MODEL, train, ckpt, progress=False)
    model, bank, tokenizer = load_checkpoint(ckpt)
    trained = InProcessMemory.load(ckpt / MEMORY_FILE, model.config)
    corpus = DemoCorpus(CORPUS)
    served_dir, local_dir = tmp_path_factory.mktemp("served") / "kb", tmp_path_factory.mktemp("local") / "kb"
    for data in (served_dir, local_dir):
        with KnowledgeBase(StoreConfig(data_dir=data, create=True)) as kb:
            trained.export(kb.mosaic, "memory", labels=fact_pairs(corpus))
    proc, address = spawn_server(served_dir)
    client, local = MemoryClient(address), KnowledgeBase(StoreConfig(data_dir=local_dir))
    yield {"model": model, "bank": bank, "tokenizer": tokenizer, "trained": trained, "corpus": corpus,
           "metrics": metrics, "mosaic": MosaicClient(client), "local": local}
    client.close()
    local.close()
    stop_server(proc)


def test_memory_off_leaves_the_model_as_before(world):
    config = ModelConfig(vocab_size=40, d_model=32, d_ff=64, n_layer=2, n_head=2, max_seq_len=16)
    torch.manual_seed(0)
    model = StemTransformer(config).eval()
    assert not [name for name in model.state_dict() if "memory" in name]
    torch.manual_seed(0)
    plain = StemTransformer(replace(config, memory_heads=3, memory_key_dim=8)).eval()  # knobs unused without layers
    assert all(torch.equal(plain.state_dict()[name], t) for name, t in model.state_dict().items())
    old_json = {k: v for k, v in asdict(config).items() if not k.startswith("memory")}  # a config.json from before
    assert ModelConfig(**old_json) == config
    from clients.backbone.model import InProcessBank

    bank, idx = InProcessBank(config), torch.randint(0, 40, (2, 6))
    assert torch.equal(model(idx, bank), model(idx, bank, memory=world["trained"]))  # a source is ignored
    with pytest.raises(ValueError, match="memory_layers must be distinct indices"):
        replace(MODEL, memory_layers=[2])
    with pytest.raises(ValueError, match="pass a memory source"):
        world["model"](idx[:, :3] % 8, world["bank"])


def test_training_learns_the_facts_and_one_pair_per_fact(world):
    assert world["metrics"]["fact_accuracy"] >= 0.95
    info = world["mosaic"].describe_store("memory")
    assert (info.num_layers, info.num_heads, info.key_dim, info.value_dim) == (1, 2, 16, 16)
    assert info.pairs.tolist() == [[8 * 5, 8 * 5]]  # entities x relations, in each head
    pairs = world["mosaic"].read_pairs("memory", 0, 1)
    assert pairs["labels"][:2] == fact_pairs(world["corpus"])[:2]
    torch.testing.assert_close(torch.from_numpy(pairs["values"].copy()), world["trained"].values[0, 1].detach())


def test_in_process_and_served_memory_give_the_same_logits_and_tokens(world):
    model, bank, tokenizer, facts = world["model"], world["bank"], world["tokenizer"], world["corpus"].facts()
    served, local = StoreMemory(world["mosaic"], "memory"), StoreMemory(world["local"].mosaic, "memory")
    idx = torch.tensor([tokenizer.encode(f.prompt) for f in facts if len(tokenizer.encode(f.prompt)) == 6])
    with torch.no_grad():
        remote_logits = model(idx, bank, memory=served)
        assert served.requests == 2  # one query per head for all positions of the forward
        assert torch.equal(model(idx, bank, memory=local), remote_logits)  # the same numpy read on both sides
        torch.testing.assert_close(model(idx, bank, memory=world["trained"]), remote_logits, atol=1e-5, rtol=1e-5)
    tokens = generate(model, bank, idx, 4, memory=served)  # decoding reads the store at every step
    assert served.requests == 2 + 2 * 4
    assert torch.equal(tokens, generate(model, bank, idx, 4, memory=world["trained"]))
    assert torch.equal(tokens[:, idx.shape[1]], remote_logits[:, -1].argmax(-1))
    assert fact_accuracy(model, bank, tokenizer, facts, served) == world["metrics"]["fact_accuracy"]


def test_merging_reads_of_two_halves_equals_reading_all_pairs(world):
    keys, values = world["trained"].keys.detach()[0], world["trained"].values.detach()[0]  # (H, n, d)
    q = torch.nn.functional.normalize(torch.randn(5, 2, 16), dim=-1)
    whole = InProcessMemory(MODEL, 40, keys[None], values[None]).read(0, q, 16.0)
    half = WithPairs(InProcessMemory(MODEL, 20, keys[None, :, :20], values[None, :, :20]), 0, keys[:, 20:], values[:, 20:])
    merged = half.read(0, q, 16.0)
    for got, want in zip(merged, whole):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    empty = InProcessMemory(MODEL, 0).read(0, q, 16.0)
    assert torch.equal(empty[0], torch.zeros(5, 2, 16)) and torch.isinf(empty[1]).all()
    torch.testing.assert_close(merge_reads([empty, whole])[0], whole[0])


def test_injected_pairs_change_the_answer_through_the_service_and_revert_restores_it(world):
    model, bank, tokenizer, mosaic = world["model"], world["bank"], world["tokenizer"], world["mosaic"]
    prompts = [f.prompt for f in world["corpus"].facts()]
    pinned = StoreMemory(mosaic, "memory")
    with torch.no_grad():
        before = [model(torch.tensor([tokenizer.encode(p)]), bank, memory=pinned) for p in prompts[:10]]
    head = mosaic.client.version
    report = injection_report(model, bank, tokenizer, world["corpus"], mosaic, "memory", 6, InjectConfig(steps=40))
    assert report["facts"] == 6 and report["injected_versions"] == [head + 1, head + 2]  # one commit per head
    assert report["before_reliability"] == 0.0 and report["before_old_answer"] >= 0.9
    assert report["after_reliability"] >= 0.9 and report["after_old_answer"] <= 0.1
    assert report["after_locality"] >= 0.95  # the other facts keep their answers
    assert report["reverted_reliability"] == 0.0 and report["reverted_old_answer"] == report["before_old_answer"]
    assert report["reverted_unchanged"]
    assert mosaic.client.version == head + 4  # two adds, two reverts
    assert mosaic.describe_store("memory").pairs.tolist() == [[40, 40]]
    pinned.move_to()
    with torch.no_grad():
        after_revert = [model(torch.tensor([tokenizer.encode(p)]), bank, memory=pinned) for p in prompts[:10]]
    assert all(torch.equal(a, b) for a, b in zip(after_revert, before))  # the very same reads as before
    # the injected version is still readable: pinned there, the model answers the new facts
    at_injection = StoreMemory(mosaic, "memory", version=head + 2)
    request = make_requests(world["corpus"], 6)[0]
    assert predict_next(model, bank, tokenizer, request_prompts(request), at_injection) == [request["target_new"]] * 3
    assert json.dumps(report)  # plain numbers: what the CLI prints
