"""Memory Mosaic stores as a table kind: pairs as commits read at any version, EXACT/TOPK/LSH
through a server against indexes/mosaic.py on the same pairs, bad input, gc, the CLI."""
import re

import numpy as np
import pytest
from click.testing import CliRunner

from clients.client import MemoryClient
from clients.mosaic import MosaicClient
from indexes.mosaic import kernel_regression
from memsvc.cli import cli
from memsvc.core.errors import Conflict, FailedPrecondition, InvalidArgument, NotFound, OutOfRange
from memsvc.core.mosaic import BetaPolicy, LshParams, merge
from memsvc.store import KnowledgeBase, StoreConfig
from tests.conftest import serving

KEY_DIM, VALUE_DIM = 8, 4
FULL_RECALL = LshParams(bits=1, tables=400)  # u ≈ 1 for every key: LSH reads like EXACT


def pairs(seed, n):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, KEY_DIM)).astype(np.float32), rng.standard_normal((n, VALUE_DIM)).astype(np.float32)


def unit(keys):
    return keys / np.linalg.norm(keys, axis=1, keepdims=True)


QUERIES = np.random.default_rng(99).standard_normal((5, KEY_DIM)).astype(np.float32)
K, V = pairs(1, 40)


def exact(keys, values, beta=2.0):
    return kernel_regression(QUERIES, unit(keys), values, beta)


def exact_as_packed(keys, values):
    """EXACT over the float16 rounding of unit keys and values: what the LSH index's packed rows hold."""
    f16 = lambda x: np.asarray(x, np.float16).astype(np.float32)
    return kernel_regression(QUERIES, f16(unit(keys)), f16(values), 2.0)


@pytest.fixture
def kb(tmp_path):
    with KnowledgeBase(StoreConfig(data_dir=tmp_path / "kb", create=True)) as store:
        store.mosaic.create("facts", num_layers=2, num_heads=3, key_dim=KEY_DIM, value_dim=VALUE_DIM, topk_index="exact")
        store.mosaic.add("facts", 1, 2, K, V, labels=[f"fact {i}" for i in range(40)])
        yield store


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    """A server whose KB holds stores 'a' (pairs 0..24), 'b' (25..39), 'all' (0..39)."""
    data = tmp_path_factory.mktemp("served") / "kb"
    KnowledgeBase(StoreConfig(data_dir=data, create=True)).close()
    with serving(data) as address, MemoryClient(address) as client:
        mosaic = MosaicClient(client)
        for name, rows in (("a", slice(0, 25)), ("b", slice(25, 40)), ("all", slice(0, 40))):
            mosaic.create(name, num_layers=2, num_heads=2, key_dim=KEY_DIM, value_dim=VALUE_DIM, topk_index="exact")
            mosaic.add(name, 0, 1, K[rows], V[rows])
        yield mosaic


def test_add_remove_replace_are_commits_read_at_every_version(kb):
    assert kb.version == 2 and len(kb.list_versions()) == 2
    r3 = kb.mosaic.remove("facts", 1, 2, [0, 1])
    new_keys, new_values = pairs(2, 2)
    r4 = kb.mosaic.replace("facts", 1, 2, [5, 6], new_keys, new_values)
    r5 = kb.mosaic.add("facts", 1, 2, *pairs(3, 3), labels=["x", "y", "z"])
    assert [r3.version, r4.version, r5.version] == [3, 4, 5] and len(kb.list_versions()) == 5
    assert (r3.rows_changed, r4.rows_changed, r5.rows_changed) == (2, 4, 3)
    assert r5.ids.tolist() == [40, 41, 42]  # next unused ids
    read = {v: kb.mosaic.read_pairs("facts", 1, 2, version=v) for v in (2, 3, 4, 5)}
    assert [len(read[v]["ids"]) for v in (2, 3, 4, 5)] == [40, 38, 38, 41]
    np.testing.assert_allclose(read[2]["keys"], unit(K), rtol=1e-6)  # stored unit-normalised
    assert read[4]["labels"][read[4]["ids"].tolist().index(5)] == "fact 5"  # replace keeps labels
    keys4 = dict(zip(read[4]["ids"].tolist(), read[4]["keys"]))
    np.testing.assert_allclose(keys4[5], unit(new_keys)[0], rtol=1e-6)
    # each version reads exactly the pairs alive there
    live4 = np.concatenate([K[2:5], new_keys, K[7:]]), np.concatenate([V[2:5], new_values, V[7:]])
    for v, (keys, values) in {2: (K, V), 3: (K[2:], V[2:]), 4: live4}.items():
        got = kb.mosaic.query("facts", 1, 2, QUERIES, beta=2.0, version=v)
        want = exact(keys, values)
        assert got.version == v and got.n == len(keys)
        np.testing.assert_allclose(got.outputs, want[0], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got.lse, want[1], rtol=1e-5)
    assert [t.kind for t in kb.list_tables()] == ["mosaic"] and kb.describe("facts").vocab_size == 41


def test_reopen_revert_and_gc_keep_what_retained_versions_read(kb, tmp_path):
    kb.mosaic.remove("facts", 1, 2, [3])
    kb.tag("before-add", 3)
    kb.mosaic.add("facts", 1, 2, *pairs(4, 2))
    assert kb.revert(4).version == 5  # the add is undone by a new commit
    assert kb.mosaic.describe_store("facts").pairs[1, 2] == 39
    before = {v: kb.mosaic.query("facts", 1, 2, QUERIES, beta=2.0, version=v).outputs for v in kb.list_versions()[1:]}
    kb.close()
    with KnowledgeBase(StoreConfig(data_dir=tmp_path / "kb")) as again:
        for v, outputs in before.items():
            np.testing.assert_array_equal(again.mosaic.query("facts", 1, 2, QUERIES, beta=2.0, version=v).outputs, outputs)
        stats = again.gc(retention_seconds=0)  # keeps the head (5) and the tag (3)
        # deleted: the 2 pairs commit 4 added, and pair 3 (removed in 3: only the dropped version 2 read it)
        assert stats["pairs_deleted"] == 3 and again.list_versions() == [3, 5]
        for v in (3, 5):
            np.testing.assert_array_equal(again.mosaic.query("facts", 1, 2, QUERIES, beta=2.0, version=v).outputs, before[v])
        with pytest.raises(NotFound, match="version 4 no longer exists"):
            again.mosaic.query("facts", 1, 2, QUERIES, beta=2.0, version=4)


def test_exact_over_grpc_equals_kernel_regression_and_merging_stores_equals_the_union(remote):
    got = remote.query("all", 0, 1, QUERIES, beta=2.0)
    o, lse, n = exact(K, V)
    assert got.n == n == 40 and got.beta == 2.0 and got.mode == "exact"
    np.testing.assert_allclose(got.outputs, o, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.lse, lse, rtol=1e-6)
    parts = [remote.query(name, 0, 1, QUERIES, beta=2.0) for name in ("a", "b")]
    merged = merge(parts)
    assert merged.n == 40
    np.testing.assert_allclose(merged.outputs, got.outputs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(merged.lse, got.lse, rtol=1e-6)


def test_beta_policy_uses_the_pairs_read(remote):
    policy = BetaPolicy(beta0=0.5, beta1=0.25, alpha=0.5)
    got = remote.query("all", 0, 1, QUERIES, policy=policy)
    assert got.beta == pytest.approx(0.25 * 40**0.5 + 0.5)
    np.testing.assert_allclose(got.outputs, exact(K, V, got.beta)[0], rtol=1e-5, atol=1e-6)


def test_topk_with_k_equal_n_reads_like_exact_at_head_and_at_old_versions(remote):
    want = remote.query("all", 0, 1, QUERIES, beta=2.0)
    for version in (None, want.version - 1):  # head: the store's index; older: exact top-k
        got = remote.query("all", 0, 1, QUERIES, beta=2.0, mode="topk", k=40, version=version)
        old = remote.query("all", 0, 1, QUERIES, beta=2.0, version=version)
        np.testing.assert_allclose(got.outputs, old.outputs, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got.lse, old.lse, rtol=1e-5)
    few = remote.query("all", 0, 1, QUERIES, beta=2.0, mode="topk", k=3)
    assert (few.lse <= want.lse + 1e-5).all() and few.n == 40  # lse over the k found: a lower bound


def test_lsh_through_the_service_follows_adds_and_removes_and_reads_old_versions(remote):
    remote.create("lsh", num_layers=1, num_heads=1, key_dim=KEY_DIM, value_dim=VALUE_DIM)
    first = remote.add("lsh", 0, 0, K[:20], V[:20]).version
    r = remote.query("lsh", 0, 0, QUERIES, beta=2.0, mode="lsh", lsh=FULL_RECALL)
    assert r.index_lag == 20 and r.lsh_tables == 400 and r.touched is not None
    np.testing.assert_allclose(r.outputs, exact_as_packed(K[:20], V[:20])[0], rtol=1e-4, atol=1e-5)
    remote.add("lsh", 0, 0, K[20:], V[20:])
    removed = remote.remove("lsh", 0, 0, list(range(5))).version
    head = remote.query("lsh", 0, 0, QUERIES, beta=2.0, mode="lsh", lsh=FULL_RECALL)
    assert head.index_lag == 20 and head.n == 35  # the index caught up with the add; the removal is a mask
    np.testing.assert_allclose(head.outputs, exact_as_packed(K[5:], V[5:])[0], rtol=1e-4, atol=1e-5)
    old = remote.query("lsh", 0, 0, QUERIES, beta=2.0, mode="lsh", lsh=FULL_RECALL, version=first)
    assert old.index_lag == 0 and old.n == 20 and old.version == first
    np.testing.assert_allclose(old.outputs, exact_as_packed(K[:20], V[:20])[0], rtol=1e-4, atol=1e-5)
    sparse = remote.query("lsh", 0, 0, QUERIES, beta=2.0, mode="lsh", lsh=LshParams(bits=8, budget=0.2), version=removed)
    assert 2 <= sparse.lsh_tables and (sparse.touched <= 1).all() and sparse.n == 35


@pytest.mark.parametrize("call, error, message", [
    (lambda m: m.query("nope", 0, 1, QUERIES, beta=1.0), NotFound, "table: unknown mosaic store 'nope'"),
    (lambda m: m.query("all", 0, 1, QUERIES[:, :5], beta=1.0), InvalidArgument, "queries: expected key dim 8, got 5"),
    (lambda m: m.query("all", 0, 1, np.full((2, 8), np.nan), beta=1.0), InvalidArgument, "queries: contains NaN"),
    (lambda m: m.query("all", 0, 1, np.zeros((0, 8)), beta=1.0), InvalidArgument, "queries: expected a non-empty"),
    (lambda m: m.query("all", 0, 1, QUERIES, beta=0.0), InvalidArgument, "beta: β must be finite and > 0"),
    (lambda m: m.query("all", 0, 1, QUERIES, beta=float("inf")), InvalidArgument, "beta: β must be finite"),
    (lambda m: m.query("all", 0, 1, QUERIES, policy=BetaPolicy(-1.0)), InvalidArgument, "policy: β must be finite and > 0"),
    (lambda m: m.query("all", 0, 1, QUERIES, beta=1.0, mode=7), InvalidArgument, "mode: unknown mode 7"),
    (lambda m: m.query("all", 0, 1, QUERIES, beta=1.0, mode="topk"), InvalidArgument, "k: TOPK needs k >= 1"),
    (lambda m: m.query("all", 2, 1, QUERIES, beta=1.0), OutOfRange, "layer: 2 out of range [0, 2)"),
    (lambda m: m.query("all", 0, -1, QUERIES, beta=1.0), OutOfRange, "head: -1 out of range [0, 2)"),
    (lambda m: m.add("all", 0, 1, K[:2, :5], V[:2]), InvalidArgument, "keys: expected key dim 8, got 5"),
    (lambda m: m.add("all", 0, 1, np.zeros((1, 8)), V[:1]), InvalidArgument, "keys: row 0 is zero"),
    (lambda m: m.add("all", 0, 1, K[:2], np.full((2, 4), np.nan)), InvalidArgument, "values: contains NaN"),
    (lambda m: m.add("all", 0, 1, K[:2], V[:2], ids=[3, 50]), Conflict, "ids: pair id 3 already exists"),
    (lambda m: m.add("all", 0, 1, K[:2], V[:2], labels=["one"]), InvalidArgument, "labels: 1 labels for 2 pairs"),
    (lambda m: m.remove("all", 0, 1, [99]), NotFound, "ids: pair id 99 does not exist"),
    (lambda m: m.create("all", 1, 1, 8, 4), Conflict, "table: table 'all' already exists"),
    (lambda m: m.create("z", 1, 1, 0, 4), InvalidArgument, "key_dim: must be in [1, 65536], got 0"),
    (lambda m: m.create("z", 2000, 1, 4, 4), InvalidArgument, "num_layers: must be in [1, 1024], got 2000"),
    (lambda m: m.create("z", 1024, 1024, 4, 4), InvalidArgument, "num_heads: num_layers x num_heads must be <= 65536"),
])
def test_bad_input_names_the_field_and_writes_nothing(remote, call, error, message):
    head = remote.client.version
    with pytest.raises(error, match=re.escape(message)):
        call(remote)
    assert remote.client.version == head


def test_cli_end_to_end(tmp_path):
    data, runner = tmp_path / "kb", CliRunner()

    def run(*args, ok=True):
        result = runner.invoke(cli, ["mosaic", *[str(a) for a in args]], catch_exceptions=False)
        assert (result.exit_code == 0) == ok, result.output
        return result.output

    np.savez(tmp_path / "p.npz", keys=K, values=V, labels=np.array([f"fact {i}" for i in range(40)]))
    np.save(tmp_path / "q.npy", QUERIES)
    assert "committed version 1" in run("create", "facts", "--data", data, "--layers", 1, "--heads", 2,
                                        "--key-dim", 8, "--value-dim", 4, "--beta", 2)
    assert "added 40 pairs (ids 0..39)" in run("add", "facts", "--data", data, "--head", 1, tmp_path / "p.npz")
    assert "removed 2 pairs" in run("remove", "facts", "--data", data, "--head", 1, "--id", 0, "--id", 1)
    out = run("query", "facts", "--data", data, "--head", 1, tmp_path / "q.npy", "--out", tmp_path / "r.npz")
    assert "version 3: exact over n=38 pairs, beta 2" in out and out.count("lse") == 5
    with np.load(tmp_path / "r.npz") as r:
        np.testing.assert_allclose(r["outputs"], exact(K[2:], V[2:])[0], rtol=1e-5, atol=1e-6)
    assert "facts\t1 layers x 2 heads" in run("list", "--data", data) and "layer 0 head 1: 38 pairs" in run("list", "--data", data)
    run("export", "facts", "--data", data, "--head", 1, tmp_path / "e.npz", "--version", 2)
    with np.load(tmp_path / "e.npz") as e:
        assert e["ids"].tolist() == list(range(40)) and e["labels"][3] == "fact 3"
    assert "Error: head: 2 out of range [0, 2)" in run("query", "facts", "--data", data, "--head", 2, tmp_path / "q.npy", ok=False)
    for command in ("", "create", "add", "remove", "query", "list", "export"):
        assert "Example:" in run(*[c for c in [command] if c], "--help")


def test_mosaic_names_do_not_clash_with_banks_and_bank_paths_refuse_them(kb):
    from tests.conftest import WORDS, small_bank

    with pytest.raises(Conflict, match="table 'facts' already exists"):
        kb.import_table("facts", small_bank(), WORDS)
    kb.import_table("stem", small_bank(), WORDS)
    with pytest.raises(Conflict, match="table 'stem' already exists"):
        kb.mosaic.create("stem", 1, 1, 8, 4)
    with pytest.raises(NotFound, match="unknown table 'facts'"):
        kb.lookup("facts", [0])
    assert [(t.name, t.kind) for t in kb.list_tables()] == [("facts", "mosaic"), ("stem", "bank")]
    with pytest.raises(FailedPrecondition, match="creates a mosaic store"):
        kb.revert(1)
