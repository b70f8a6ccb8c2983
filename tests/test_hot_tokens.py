"""HotTokens: the server's sketch of the tokens it serves follows the served distribution in fixed
memory, and a RemoteBank warmed from it hits from its first step without ever serving a row that
changed since (issue 17 item 5)."""
import threading

import numpy as np
import pytest
import torch

from clients.banks import RemoteBank
from clients.client import MemoryClient
from memsvc.core.errors import InvalidArgument, NotFound, OutOfRange
from memsvc.core.values import RowOp
from memsvc.server.hot_tokens import SketchConfig, TokenSketch
from tests.conftest import WORDS


def zipf(vocab, n, seed, s=1.1):
    """n token ids with p(rank r) ~ 1 / r^s, ranks shuffled over the vocabulary."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, vocab + 1) ** s
    return rng.permutation(vocab)[rng.choice(vocab, size=n, p=p / p.sum())]


@pytest.fixture
def client(server):
    address, _ = server
    with MemoryClient(address) as c:
        yield c


def serve(client, stream, batch=16):
    """Lookups of the stream, `batch` positions each, as decode workers would send them."""
    for i in range(0, len(stream), batch):
        client.lookup("stem", stream[i:i + batch])


def test_sketch_recovers_the_top_of_a_zipfian_stream_in_fixed_memory():
    vocab, k = 20_000, 500
    config = SketchConfig(width_bits=12, heavy=2 * k, flush_tokens=1000)  # 4 x 4,096 counters for 20,000 tokens
    sketch = TokenSketch(config)
    stream = zipf(vocab, 100_000, seed=1)
    for i in range(0, len(stream), 64):
        ids, inverse = np.unique(stream[i:i + 64], return_inverse=True)
        sketch.record(ids, inverse)
    ids, counts, total = sketch.top(k, np.ones(vocab, dtype=bool))
    true = np.bincount(stream, minlength=vocab)
    assert total == len(stream) and len(ids) == k
    assert (counts >= true[ids]).all()  # count-min never under-estimates
    assert (np.diff(counts) <= 0).all()  # most requested first
    exact_top = np.argsort(-true, kind="stable")[:k]
    assert true[ids].sum() >= 0.97 * true[exact_top].sum()  # the mass a cache of k tokens would catch
    assert len(np.intersect1d(ids[:50], exact_top[:50])) >= 48
    assert sketch.counters.shape == (4 * 4096,) and len(sketch.heavy_ids) == config.heavy  # full: tokens came and went
    assert (np.diff(sketch.heavy_ids) > 0).all()  # kept sorted by id through the merges


def test_lookups_recorded_from_many_threads_are_all_counted():
    sketch = TokenSketch(SketchConfig(flush_tokens=100))
    streams = [zipf(1000, 5000, seed=10 + i) for i in range(4)]

    def feed(stream):
        for i in range(0, len(stream), 7):
            ids, inverse = np.unique(stream[i:i + 7], return_inverse=True)
            sketch.record(ids, inverse)

    threads = [threading.Thread(target=feed, args=(s,)) for s in streams]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids, counts, total = sketch.top(1000, np.ones(1000, dtype=bool))
    true = np.bincount(np.concatenate(streams), minlength=1000)
    assert total == 20_000 and counts.tolist() == true[ids].tolist()  # none lost, none twice
    assert sorted(ids.tolist()) == np.flatnonzero(true).tolist()


def test_hot_tokens_follow_the_served_distribution(client):
    stream = zipf(len(WORDS), 3000, seed=2)
    serve(client, stream.tolist())
    serve(client, [WORDS[t] for t in stream[:500]])  # words count as their ids
    served = np.concatenate([stream, stream[:500]])
    true = np.bincount(served, minlength=len(WORDS))
    ids, counts = client.hot_tokens("stem", 10)
    assert counts.tolist() == sorted(true, reverse=True)[:10]  # the ten most served, most first
    assert counts.tolist() == true[ids].tolist()  # exact: 64 tokens in 65,536-wide rows do not collide
    everything, _ = client.hot_tokens("stem", 100_000)  # more than are tracked: the ones served
    assert sorted(everything.tolist()) == np.flatnonzero(true).tolist()


def test_failed_lookups_count_nothing_and_bad_requests_name_their_field(client):
    client.lookup("stem", [3, 3, 5])
    with pytest.raises(OutOfRange, match="token_ids"):
        client.lookup("stem", [3, 999])
    ids, counts = client.hot_tokens("stem", 5)
    assert dict(zip(ids.tolist(), counts.tolist())) == {3: 2, 5: 1}
    with pytest.raises(InvalidArgument, match="^n: must be at least 1"):
        client.hot_tokens("stem", 0)
    with pytest.raises(NotFound, match="^table: unknown table 'nope'"):
        client.hot_tokens("nope", 5)
    assert client.hot_tokens("stem", 5)[0].tolist() == [3, 5]  # the server kept serving


def test_tokens_that_do_not_exist_at_the_version_are_left_out(client):
    before = client.version
    client.inject_token("stem", "Atlantis", like=["Spain"])
    atlantis = int(client.token_ids("stem", ["Atlantis"])[0])
    client.lookup("stem", [atlantis] * 5 + [1])
    assert client.hot_tokens("stem", 5)[0].tolist()[:2] == [atlantis, 1]
    assert client.hot_tokens("stem", 5, version=before)[0].tolist() == [1]


def test_a_warmed_cache_hits_from_the_first_step_with_the_served_rows(client):
    stream = zipf(len(WORDS), 3000, seed=3)
    serve(client, stream.tolist())
    hot = np.argsort(-np.bincount(stream, minlength=len(WORDS)), kind="stable")[:8]
    bank = RemoteBank(client, "stem", cache_tokens=8, prefetch=False, warm=True)
    assert sorted(bank.cache.slot_of) == sorted(hot.tolist())
    rows = bank.request(torch.from_numpy(hot[::-1].copy())).result()
    assert bank.cache.hits == 8 and bank.cache.misses == 0
    assert torch.equal(rows, torch.from_numpy(client.lookup("stem", hot[::-1].tolist()).in_request_order()))
    cold = RemoteBank(client, "stem", cache_tokens=8, prefetch=False)
    cold.request(torch.from_numpy(hot)).result()
    assert cold.cache.hits == 0


def test_a_warmed_cache_never_serves_a_row_changed_since(client):
    serve(client, zipf(len(WORDS), 2000, seed=4).tolist())
    hot, _ = client.hot_tokens("stem", 4)
    token, source = int(hot[0]), int(hot[-1])
    v1 = client.version
    bank = RemoteBank(client, "stem", cache_tokens=4, prefetch=False, warm=True)
    v2 = client.edit("stem", [RowOp("copy", token_id=token, source_token_id=source)]).version
    old = client.lookup("stem", [token], version=v1).in_request_order()
    new = client.lookup("stem", [token], version=v2).in_request_order()
    assert not np.array_equal(old, new)
    late = RemoteBank(client, "stem", version=v1, cache_tokens=4, prefetch=False, warm=True)  # pinned before the edit
    assert np.array_equal(late.request(torch.tensor([token])).result().numpy(), old) and late.cache.hits == 1
    assert np.array_equal(bank.request(torch.tensor([token])).result().numpy(), old)  # still pinned at v1
    bank.move_to(v2)
    assert token not in bank.cache.slot_of
    assert np.array_equal(bank.request(torch.tensor([token])).result().numpy(), new)
    rewarmed = RemoteBank(client, "stem", version=v1, cache_tokens=4, prefetch=False, warm=True)
    rewarmed.move_to(v2, warm=True)  # drops the changed row, then reads the hot rows again at v2
    hits = rewarmed.cache.hits
    assert np.array_equal(rewarmed.request(torch.tensor([token])).result().numpy(), new)
    assert rewarmed.cache.hits == hits + 1


def test_a_warmed_cache_holds_the_rows_of_the_banks_overrides(client):
    serve(client, zipf(len(WORDS), 2000, seed=5).tolist())
    hot, _ = client.hot_tokens("stem", 2)
    op = RowOp("copy", token_id=int(hot[0]), source_token_id=int(hot[1]))
    bank = RemoteBank(client, "stem", cache_tokens=2, prefetch=False, overrides=[op], warm=True)
    rows = bank.request(torch.from_numpy(hot.copy())).result().numpy()
    assert bank.cache.hits == 2
    assert np.array_equal(rows, client.lookup("stem", hot.tolist(), overrides=[op]).in_request_order())
    assert np.array_equal(rows[0], rows[1])
