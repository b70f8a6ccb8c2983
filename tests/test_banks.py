"""Decoding through the service gives exactly the tokens of in-process decoding: remote (with and
without cache/prefetch), local (mmap + deltas) and store banks, across edits and version moves."""
import numpy as np
import pytest
import torch

from clients.backbone.checkpoint import load_checkpoint
from clients.backbone.model import InProcessBank, generate
from clients.banks import LFUCache, LocalBank, RemoteBank, StoreBank
from clients.client import MemoryClient
from memsvc.cli.demo import SHIPPED, import_checkpoint
from memsvc.core.values import RowOp
from memsvc.store import KnowledgeBase, StoreConfig
from tests.conftest import serving


@pytest.fixture(scope="module")
def demo():
    """The shipped, trained demo backbone and a running server over a KB made from its bank."""
    model, bank, tokenizer = load_checkpoint(SHIPPED)
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        with KnowledgeBase(StoreConfig(data_dir=Path(tmp) / "kb", create=True)) as kb:
            import_checkpoint(kb, SHIPPED)
        with serving(Path(tmp) / "kb") as address, MemoryClient(address) as client:
            yield model, bank, tokenizer, client


def prompts(tokenizer, n=6):
    from research.corpus import DemoCorpus

    facts = DemoCorpus().facts("train")[::37][:n]
    ids = [tokenizer.encode(f.prompt) for f in facts]
    width = min(map(len, ids))
    return torch.tensor([i[-width:] for i in ids])  # (n, width): a batch of equal-length prompts


def banks(client, **kw):
    return {
        "remote": RemoteBank(client, "stem", cache_tokens=0, prefetch=False, **kw),
        "remote cached": RemoteBank(client, "stem", cache_tokens=16, prefetch=True, **kw),
        "local": LocalBank(client, "stem", **kw),
        "store": StoreBank(client, "stem", **kw),
    }


def test_every_bank_decodes_exactly_like_in_process(demo):
    model, reference, tokenizer, client = demo
    batch = prompts(tokenizer)
    expected = generate(model, reference, batch, 6)
    for name, bank in banks(client).items():
        assert torch.equal(generate(model, bank, batch, 6), expected), name
        assert torch.equal(generate(model, bank, batch[:1], 6, prefill_chunk=2), expected[:1]), name


def test_cache_counts_hits_and_prefetch_saves_lookups(demo):
    model, _, tokenizer, client = demo
    batch = prompts(tokenizer)
    cached = RemoteBank(client, "stem", cache_tokens=64, prefetch=True)
    generate(model, cached, batch, 6)
    first_lookups = cached.lookups
    generate(model, cached, batch, 6)
    assert cached.cache.hits > 0 and cached.lookups == first_lookups  # the second pass is all hits
    assert 0 < cached.cache.hit_rate < 1


def test_banks_follow_edits_only_when_moved(demo):
    model, reference, tokenizer, client = demo
    batch = prompts(tokenizer)
    before = generate(model, reference, batch, 4)
    pinned = banks(client)
    for bank in pinned.values():
        generate(model, bank, batch, 4)  # fills caches
    token = int(batch[0, -1])
    other = int(batch[1, -1])
    r = client.edit("stem", [RowOp("copy", token_id=token, source_token_id=other)])
    edited_reference = InProcessBank(model.config, reference.weight.detach().clone())
    edited_reference.weight.data[token] = reference.weight.data[other]
    after = generate(model, edited_reference, batch, 4)
    for name, bank in pinned.items():
        assert torch.equal(generate(model, bank, batch, 4), before), f"{name} tore its pinned version"
        if hasattr(bank, "move_to"):
            bank.move_to(r.version)
            assert torch.equal(generate(model, bank, batch, 4), after), name
    client.revert(r.version)


def test_lfu_keeps_the_most_frequent_tokens():
    cache = LFUCache(2, (1, 1))
    for tokens in ([1, 2], [1, 3], [1, 3], [3]):
        for t in cache.count(tokens):
            cache.admit(t, np.full((1, 1), t))
    assert set(cache.slot_of) == {1, 3}
    cache.drop([3])
    assert set(cache.slot_of) == {1} and len(cache.free) == 1
    assert cache.hits == 3 and cache.misses == 4
