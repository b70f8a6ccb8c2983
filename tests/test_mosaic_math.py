"""Memory Mosaic read math (indexes/mosaic.py, indexes/lsh.py) against a float64 brute force."""

import numpy as np
import pytest

from indexes import lsh
from indexes.lsh import SimHashConfig, SimHashIndex, choose_tables, inclusion_probability, log_inclusion_table
from indexes.lsh_kernels import log_inclusion
from indexes.mosaic import exact_topk, kernel_regression, lsh_regression, merge_results, topk_regression
from memsvc.core.errors import InvalidArgument
from memsvc.core.mosaic import BetaPolicy


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def cone(rng, n, d=16, spread=0.4):
    """Unit vectors in a narrow cone around one axis, the case where centring matters."""
    axis = np.eye(d)[0]
    return unit(axis + spread * rng.standard_normal((n, d)) / np.sqrt(d))


def oracle(queries, keys, values, beta):
    scores = beta * queries @ keys.T
    lse = np.logaddexp.reduce(scores, axis=1)
    return np.exp(scores - lse[:, None]) @ values, lse


@pytest.fixture
def pairs():
    rng = np.random.default_rng(0)
    keys, queries = cone(rng, 500), cone(rng, 7)
    return queries, keys, rng.standard_normal((500, 5))


def test_exact_matches_float64_brute_force_across_blocks(pairs):
    queries, keys, values = pairs
    for beta in (0.5, 8.0, 200.0):
        o, lse, n = kernel_regression(queries, keys, values, beta, block=37)
        o_ref, lse_ref = oracle(queries, keys, values, beta)
        assert n == 500
        np.testing.assert_allclose(o, o_ref, rtol=1e-11, atol=1e-12)
        np.testing.assert_allclose(lse, lse_ref, rtol=1e-13)


def test_exact_is_invariant_to_the_order_of_pairs(pairs):
    queries, keys, values = pairs
    perm = np.random.default_rng(1).permutation(len(keys))
    o, lse, _ = kernel_regression(queries, keys, values, 10.0, block=64)
    o_perm, lse_perm, _ = kernel_regression(queries, keys[perm], values[perm], 10.0, block=64)
    np.testing.assert_allclose(o_perm, o, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(lse_perm, lse, rtol=1e-14)


def test_merge_of_any_partition_equals_the_unsplit_result(pairs):
    queries, keys, values = pairs
    rng = np.random.default_rng(2)
    whole = kernel_regression(queries, keys, values, 12.0)
    for _ in range(5):
        shard_of = rng.integers(0, 4, len(keys))  # shard 3 may come out empty: fine
        parts = [kernel_regression(queries, keys[shard_of == s], values[shard_of == s], 12.0)
                 for s in range(5)]  # shard 4 is always empty
        o, lse, n = merge_results(parts)
        assert n == whole[2]
        np.testing.assert_allclose(o, whole[0], rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(lse, whole[1], rtol=1e-14)


def test_empty_store_gives_zero_and_minus_infinity():
    o, lse, n = kernel_regression(np.ones((2, 3)), np.empty((0, 3)), np.empty((0, 4)), 5.0)
    assert n == 0 and o.shape == (2, 4)
    assert (o == 0).all() and np.isneginf(lse).all()
    o, lse, n = merge_results([(o, lse, 0), (o, lse, 0)])
    assert n == 0 and (o == 0).all() and np.isneginf(lse).all()
    o, lse, n, touched = lsh_regression(np.ones((2, 3)), np.empty((0, 3)), np.empty((0, 4)), 5.0,
                                        SimHashIndex(SimHashConfig(bits=4, tables=8), 3))
    assert n == 0 and (o == 0).all() and np.isneginf(lse).all() and (touched == 0).all()


def test_small_beta_gives_the_mean_value_and_large_beta_the_nearest(pairs):
    queries, keys, values = pairs
    o, lse, _ = kernel_regression(queries, keys, values, 0.0)
    np.testing.assert_allclose(o, np.broadcast_to(values.mean(axis=0), o.shape), rtol=1e-12)
    np.testing.assert_allclose(lse, np.log(len(keys)))
    o, _, _ = kernel_regression(queries, keys, values, 1e6)
    np.testing.assert_allclose(o, values[np.argmax(queries @ keys.T, axis=1)], rtol=1e-12)


def test_beta_policy_fixed_and_growing_with_the_store():
    assert BetaPolicy.fixed(3.5).beta(10) == BetaPolicy.fixed(3.5).beta(10**6) == 3.5
    policy = BetaPolicy(beta0=1.0, beta1=2.0, alpha=0.5)
    assert policy.beta(100) == pytest.approx(21.0)


def test_shapes_are_checked_once_at_the_boundary(pairs):
    queries, keys, values = pairs
    with pytest.raises(InvalidArgument, match="values has 499 rows"):
        kernel_regression(queries, keys, values[:-1], 1.0)
    with pytest.raises(InvalidArgument, match="keys have dim 16, queries have 15"):
        topk_regression(queries[:, :15], keys, values, 1.0, 3)


def test_exact_topk_returns_the_best_keys_sorted_and_pads(pairs):
    queries, keys, _ = pairs
    ids, distances = exact_topk(keys)(queries, 9)
    np.testing.assert_array_equal(ids, np.argsort(-(queries @ keys.T), axis=1)[:, :9])
    np.testing.assert_allclose(-distances, np.sort(queries @ keys.T, axis=1)[:, ::-1][:, :9], rtol=1e-6)
    ids, distances = exact_topk(keys[:4])(queries, 6)
    assert (ids[:, 4:] == -1).all() and np.isinf(distances[:, 4:]).all()


def test_topk_is_the_kernel_average_over_the_retrieved_set(pairs):
    queries, keys, values = pairs
    exact_o, exact_lse, _ = kernel_regression(queries, keys, values, 4.0)
    o, lse, n = topk_regression(queries, keys, values, 4.0, len(keys))
    np.testing.assert_allclose(o, exact_o, rtol=1e-10, atol=1e-12)
    assert n == len(keys)

    chosen = np.array([3, 141, 59])
    padded = lambda q, k: (np.tile(np.r_[chosen, [-1] * (k - 3)], (len(q), 1)), None)
    o, lse, _ = topk_regression(queries, keys, values, 4.0, 8, search=padded)
    subset_o, subset_lse, _ = kernel_regression(queries, keys[chosen], values[chosen], 4.0)
    np.testing.assert_allclose(o, subset_o, rtol=1e-12)
    np.testing.assert_allclose(lse, subset_lse, rtol=1e-12)
    assert (lse < exact_lse).all()  # the retrieved set's lse is a lower bound


def hashed_cosines(index, q, keys):
    return unit(keys - index.centre) @ unit(q)


def test_inclusion_probability_matches_monte_carlo_over_hash_seeds():
    rng = np.random.default_rng(3)
    keys, q = cone(rng, 40), cone(rng, 1)[0]
    config = SimHashConfig(bits=3, tables=12)
    hits, trials = np.zeros(len(keys)), 3000
    for seed in range(trials):
        index = SimHashIndex(SimHashConfig(bits=3, tables=12, seed=seed), keys.shape[1], centre=keys.mean(0))
        index.add(np.arange(len(keys)), keys)
        hits[index.retrieve(q)[0]] += 1
    u = inclusion_probability(hashed_cosines(index, q, keys), config.bits, config.tables)
    assert u.min() < 0.3 and u.max() > 0.65  # the keys span a range of u
    np.testing.assert_allclose(hits / trials, u, atol=4 * np.sqrt(0.25 / trials))
    # the read kernel gets the same u from q·k_i and the stored norms: with β = 0 and one-hot
    # values its weights are 1/u_i, so o_i·exp(lse) = 1/u_i on the retrieved set and o_i = 0 off it
    ids = index.retrieve(q)[0]
    o, lse, _, touched = lsh_regression(q[None], keys, np.eye(len(keys)), 0.0, index)
    np.testing.assert_allclose(1 / (o[0, ids] * np.exp(lse[0])), u[ids], rtol=1e-6)
    assert (np.delete(o[0], ids) == 0).all() and touched[0] == len(ids) / len(keys)


def test_inclusion_probability_formula_and_table_choice():
    np.testing.assert_allclose(inclusion_probability(1.0, 10, 50), 1.0)
    np.testing.assert_allclose(inclusion_probability(-1.0, 10, 50), 0.0, atol=1e-15)
    p, K, L = 0.7, 4, 9  # P[Binomial(L, p^K) >= 2] from the binomial pmf
    t = p**K
    assert inclusion_probability(np.cos((1 - p) * np.pi), K, L) == pytest.approx(
        1 - (1 - t) ** L - L * t * (1 - t) ** (L - 1))
    t = np.array([1e-9, 1e-6, 1e-4])  # tiny collision rates: no cancellation to zero
    u = inclusion_probability(np.cos((1 - t ** (1 / 8)) * np.pi), 8, 150)
    np.testing.assert_allclose(u, 150 * 149 / 2 * t**2 * (1 - t) ** 148, rtol=2e-2)
    cosines = np.random.default_rng(4).uniform(-0.5, 0.9, 1000)
    L = choose_tables(8, 0.05, cosines)
    assert inclusion_probability(cosines, 8, L).mean() >= 0.05 > inclusion_probability(cosines, 8, L - 1).mean()


def test_read_kernel_log_inclusion_matches_the_formula():
    """The read kernel takes log u from a cubic per cell of cosine, or the formula where a cubic
    strays (near cos = ±1): either way within ~1e-10 of log(inclusion_probability)."""
    cosines = np.r_[np.linspace(-1, 1, 4001), np.random.default_rng(6).uniform(-1, 1, 4000), 1 - 1e-9, -1 + 1e-9]
    for bits, tables in ((10, 283), (3, 12), (8, 2), (1, 400), (16, 3000)):
        table = log_inclusion_table(bits, tables)
        assert 0.9 < np.isfinite(table[:, 0]).mean() < 1  # mostly cubics, the formula at the ends
        with np.errstate(divide="ignore"):
            exact = np.log(inclusion_probability(cosines, bits, tables))
        kernel = np.array([log_inclusion(c, table, bits, tables) for c in cosines])
        finite = np.isfinite(exact)
        np.testing.assert_allclose(kernel[finite], exact[finite], rtol=0, atol=2e-10)
        np.testing.assert_array_equal(kernel[~finite], exact[~finite])  # u = 0: log u = -inf either way


def test_lsh_with_every_key_retrieved_is_exact(pairs):
    queries, keys, values = pairs
    index = SimHashIndex(SimHashConfig(bits=1, tables=400), keys.shape[1])
    index.add(np.arange(len(keys)), keys)
    o, lse, n, touched = lsh_regression(queries, keys, values, 6.0, index)
    exact_o, exact_lse, _ = kernel_regression(queries, keys, values, 6.0)
    assert n == len(keys) and (touched == 1.0).all()
    np.testing.assert_allclose(o, exact_o, rtol=1e-9, atol=1e-12)  # u_i = 1 up to ~1e-100
    np.testing.assert_allclose(lse, exact_lse, rtol=1e-12)


def test_lsh_partition_function_is_unbiased_and_error_shrinks_with_tables():
    rng = np.random.default_rng(5)
    keys, queries = cone(rng, 2000), cone(rng, 6)
    values = rng.standard_normal((2000, 4)) + keys[:, :4] * 5
    exact_o, exact_lse, _ = kernel_regression(queries, keys, values, 4.0)
    errors, z_ratio = [], []
    for tables in (6, 24, 96):
        err = []
        for seed in range(20):
            index = SimHashIndex(SimHashConfig(bits=6, tables=tables, seed=seed), keys.shape[1])
            index.add(np.arange(len(keys)), keys)
            o, lse, _, _ = lsh_regression(queries, keys, values, 4.0, index)
            err.append(np.linalg.norm(o - exact_o, axis=1) / np.linalg.norm(exact_o, axis=1))
            z_ratio.append(np.exp(lse - exact_lse))
        errors.append(np.mean(err))
    assert errors[0] > errors[1] > errors[2]
    assert np.mean(z_ratio) == pytest.approx(1.0, abs=0.05)  # Horvitz-Thompson: E[Ẑ] = Z


def test_lsh_add_and_remove_equal_a_fresh_build(pairs):
    queries, keys, values = pairs
    config = SimHashConfig(bits=4, tables=12, seed=7)
    grown = SimHashIndex(config, keys.shape[1])
    for chunk in np.array_split(np.arange(len(keys)), 3):
        grown.add(chunk, keys[chunk])
        grown.retrieve(queries[0])  # buckets built between commits must be refreshed
    removed = np.arange(0, len(keys), 3)
    grown.remove(removed)
    kept = np.setdiff1d(np.arange(len(keys)), removed)
    fresh = SimHashIndex(config, keys.shape[1], centre=grown.centre)  # centre is fixed at first add
    fresh.add(kept, keys[kept])
    assert len(grown) == len(fresh) == len(kept)
    for q in queries:
        ids_grown, ids_fresh = grown.retrieve(q)[0], fresh.retrieve(q)[0]
        np.testing.assert_array_equal(np.sort(ids_grown), np.sort(ids_fresh))
        assert not np.isin(ids_grown, removed).any()
    whole = SimHashIndex(config, keys.shape[1], centre=grown.centre)  # removed rows masked at read
    whole.add(np.arange(len(keys)), keys)
    alive = np.isin(np.arange(len(keys)), kept)
    a, b, c = (lsh_regression(queries, keys, values, 5.0, index, alive=mask)
               for index, mask in ((grown, None), (fresh, None), (whole, alive)))
    for other in (b, c):
        np.testing.assert_allclose(a[0], other[0], rtol=1e-6)
        np.testing.assert_allclose(a[1], other[1], rtol=1e-6)
        assert a[2] == other[2] == len(kept)
        np.testing.assert_array_equal(a[3], other[3])


def test_lsh_packed_rows_in_huge_pages_read_like_the_arrays(monkeypatch):
    """A store past 2 MB of packed rows lives in a 2 MB-aligned mapping (huge pages where the
    kernel offers them); reads over it, split over two threads, match reading the float16-rounded
    arrays, and adds past it copy every row over."""
    rng = np.random.default_rng(3)
    keys, values = cone(rng, 12_000, d=64).astype(np.float32), rng.standard_normal((12_000, 64)).astype(np.float32)
    queries = cone(rng, 5, d=64).astype(np.float32)
    f16 = lambda x: x.astype(np.float16).astype(np.float32)
    index = SimHashIndex(SimHashConfig(bits=6, tables=20, seed=1), 64)
    index.add(np.arange(10_000), keys[:10_000], values[:10_000])
    index.add(np.arange(10_000, 12_000), keys[10_000:], values[10_000:])
    rows = index.packed.rows
    assert rows.nbytes >= lsh.HUGE_PAGE and rows.ctypes.data % lsh.HUGE_PAGE == 0 and rows.flags.writeable
    np.testing.assert_array_equal(index.packed.keys(), f16(keys))
    np.testing.assert_array_equal(index.packed.values(), f16(values))
    plain = SimHashIndex(SimHashConfig(bits=6, tables=20, seed=1), 64, centre=index.centre)
    plain.add(np.arange(12_000), keys)
    o_ref, lse_ref, _, touched_ref = lsh_regression(queries, f16(keys), f16(values), 8.0, plain)
    for split in (lsh.SPLIT_KEYS, 2):  # one thread (12k keys), then two ranges
        monkeypatch.setattr(lsh, "SPLIT_KEYS", split)
        o, lse, _, touched = lsh_regression(queries, keys, values, 8.0, index)
        assert (touched == touched_ref).all() and touched.min() > 0
        np.testing.assert_allclose(lse, lse_ref, rtol=1e-6)
        np.testing.assert_allclose(o, o_ref, rtol=1e-5, atol=1e-5 * np.abs(o_ref).max())


def test_lsh_packed_rows_keep_the_estimate_and_follow_commits(pairs, monkeypatch):
    """Given values, the index reads its own packed copy (keys and values in float16) instead of
    the caller's arrays: same retrieved set and, against reading float16-rounded arrays, the same
    o and lse; against float32 arrays lse moves by at most β·|q|·|k|·2^-11. Keys or values past
    float16's range switch the copy to float32. Adds and removes keep it in step with the ids,
    like the hash tables. A read split over two threads merges exactly."""
    queries, keys, values = (x.astype(np.float32) for x in pairs)
    config = SimHashConfig(bits=4, tables=12, seed=7)
    plain = SimHashIndex(config, keys.shape[1])
    plain.add(np.arange(len(keys)), keys)
    removed = np.arange(0, len(keys), 3)
    alive = ~np.isin(np.arange(len(keys)), removed)
    for scale, half in ((1.0, True), (1e5, False)):
        stored = (lambda x: x.astype(np.float16).astype(np.float32)) if half else (lambda x: x)
        o_ref, lse_ref, n_ref, touched_ref = lsh_regression(queries, stored(keys), stored(values * scale), 5.0, plain,
                                                            alive=alive)
        packed = SimHashIndex(config, keys.shape[1], centre=plain.centre)
        for chunk in np.array_split(np.arange(len(keys)), 3):
            packed.add(chunk, keys[chunk], values[chunk] * scale)
            packed.retrieve(queries[0])
        packed.remove(removed)
        assert packed.packed.half == half
        np.testing.assert_array_equal(packed.packed.keys(), stored(keys[alive]))
        np.testing.assert_array_equal(packed.packed.values(), stored(values[alive] * scale))
        o, lse, n, touched = lsh_regression(queries, np.zeros_like(keys), np.zeros_like(values), 5.0, packed)
        assert n == n_ref and (touched == touched_ref).all()
        np.testing.assert_allclose(lse, lse_ref, rtol=1e-6)
        np.testing.assert_allclose(o, o_ref, rtol=1e-5, atol=1e-5 * np.abs(o_ref).max())
        lse_float32 = lsh_regression(queries, keys, values * scale, 5.0, plain, alive=alive)[1]
        assert np.abs(lse - lse_float32).max() <= 5.0 * 2.0**-11  # unit keys and queries
        monkeypatch.setattr(lsh, "SPLIT_KEYS", 2)  # every read in two ranges (333 keys: 128 + 205)
        o_split, lse_split, _, touched_split = lsh_regression(queries, keys, values, 5.0, packed)
        monkeypatch.undo()
        assert (touched_split == touched).all()
        np.testing.assert_allclose(o_split, o, rtol=1e-5, atol=1e-6 * np.abs(o).max())
        np.testing.assert_allclose(lse_split, lse, rtol=1e-6)
    with pytest.raises(InvalidArgument, match="every add or never"):
        packed.add([10_000], keys[:1])
