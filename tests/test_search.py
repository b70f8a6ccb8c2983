"""ANN search over banks (memsvc/search/): exact-correct across edits, injections, reverts,
old versions, compaction + gc and restarts; the query log; bad input; gRPC and CLI end to end."""
import grpc
import numpy as np
import pytest
from click.testing import CliRunner

from clients.client import MemoryClient
from clients.search import SearchClient
from memsvc.cli import cli
from memsvc.core.errors import (Conflict, FailedPrecondition, InvalidArgument, MemsvcError, NotFound, OutOfRange,
                                ResourceExhausted)
from memsvc.core.values import RowOp
from memsvc.search.config import SearchConfig
from memsvc.search.manager import IndexManager
from memsvc.store import KnowledgeBase, StoreConfig
from tests.conftest import WORDS, small_bank

FRANCE, SPAIN, W40 = 2, 0, 46
QUICK = SearchConfig(build_in_worker=False, refresh_rows=10_000)  # in-process builds: fast tests


def brute_force(kb, layer, query, k, version=None, metric="l2"):
    """Exact top-k ids by numpy over every token alive at the version."""
    v = kb.resolve_version(version)
    words = kb.vocabulary("stem", v)
    ids = np.array([i for i, w in enumerate(words) if w])
    rows = kb.read_rows("stem", ids, v)[:, layer]
    if metric == "cosine":
        d = 1 - rows @ query / (np.linalg.norm(rows, axis=1) * np.linalg.norm(query))
    else:
        d = ((rows - query) ** 2).sum(1)
    return ids[np.argsort(d, kind="stable")[:k]].tolist(), np.sort(d)[:k]


@pytest.fixture
def manager(kb):
    m = IndexManager(kb, QUICK)
    m.create("tok", "stem", 0, {"kind": "exact", "metric": "l2"}, wait=True)
    return m


def nearest(manager, token, k=4, **kw):
    return manager.search("stem", 0, tokens=[token], k=k, **kw)


def test_search_follows_edits_and_old_versions_keep_their_answer(kb, manager):
    before = nearest(manager, "France")
    assert before.index == "tok" and before.version == 1
    assert before.ids[0].tolist() == brute_force(kb, 0, kb.read_rows("stem", [FRANCE])[0, 0], 4)[0]
    assert "w10" not in before.tokens[0]

    kb.edit("stem", [RowOp("copy", token="w10", source_token="France", layers=[0])])  # v2: w10 appears
    after = nearest(manager, "France")
    assert after.version == 2 and after.index_version == 1 and after.lag_rows == 1
    assert set(after.tokens[0][:2]) == {"France", "w10"} and after.distances[0, 1] == 0

    second = before.ids[0, 1]  # France's nearest neighbour moves far away: it disappears
    kb.edit("stem", [RowOp("set", token_id=int(second), vector=np.full(8, 100.0), layers=[0])])  # v3
    now = nearest(manager, "France")
    assert second not in now.ids[0] and now.ids[0].tolist() == brute_force(kb, 0, kb.read_rows("stem", [FRANCE])[0, 0], 4)[0]

    old = nearest(manager, "France", version=1)  # an old version gives that version's answer
    assert old.version == 1 and old.ids.tolist() == before.ids.tolist()
    np.testing.assert_allclose(old.distances, before.distances)
    assert manager.describe("tok").lag_commits == 2 and manager.describe("tok").lag_rows == 2


def test_injected_token_appears_and_its_revert_removes_it(kb, manager):
    france = kb.read_rows("stem", [FRANCE])[0]
    v = kb.inject_token("stem", "Gaul", vector=france + 1e-3).version
    assert nearest(manager, "France", k=2).tokens[0] == ["France", "Gaul"]
    kb.revert(v)
    assert "Gaul" not in nearest(manager, "France", k=5).tokens[0]
    assert nearest(manager, "France", k=2, version=v).tokens[0] == ["France", "Gaul"]


@pytest.mark.parametrize("queries", [np.array(1.0, np.float32), np.zeros(8, np.float32), np.zeros((1, 2, 8), np.float32)])
def test_queries_of_the_wrong_rank_are_invalid_argument_naming_queries(manager, queries):
    # a Search request whose Tensor has shape [] decoded to a 0-d array: len() of it answered INTERNAL
    with pytest.raises(InvalidArgument, match=r"queries: expected a non-empty \(n, d\) array, got shape"):
        manager.search("stem", 0, queries=queries, k=2)


def test_refresh_folds_edits_into_the_index_and_every_version_stays_exact(kb, manager):
    kb.edit("stem", [RowOp("copy", token="w10", source_token="France", layers=[0])])
    kb.edit("stem", [RowOp("scale", token="Paris", alpha=3.0)])
    info = manager.refresh("tok")
    assert (info.version, info.lag_rows, info.lag_commits) == (3, 0, 0) and kb.tags()["index:tok"] == 3
    for v in (1, 2, 3):
        query = kb.read_rows("stem", [FRANCE], v)[0, 0]
        r = manager.search("stem", 0, queries=query[None], k=6, version=v)
        assert r.ids[0].tolist() == brute_force(kb, 0, query, 6, v)[0]


def test_refresh_adds_the_changed_rows_a_chunk_at_a_time_and_leaves_zero_rows_out(kb):
    m = IndexManager(kb, SearchConfig(build_in_worker=False, refresh_rows=10_000, read_chunk=3))
    m.create("cos", "stem", 0, {"kind": "exact", "metric": "cosine"}, wait=True)
    rng = np.random.default_rng(5)
    moved, zeroed = list(range(10, 18)), [18, 19]  # 8 new rows: three chunks, and two zero rows
    kb.edit("stem", [RowOp("set", token_id=i, vector=rng.standard_normal(8), layers=[0]) for i in moved] +
            [RowOp("set", token_id=i, vector=np.zeros(8), layers=[0]) for i in zeroed])
    info = m.refresh("cos")
    assert (info.version, info.lag_rows, info.count) == (2, 0, 64 - len(zeroed))
    rows = kb.read_rows("stem", np.arange(64))[:, 0]
    indexed = np.setdiff1d(np.arange(64), zeroed)
    unit = rows[indexed] / np.linalg.norm(rows[indexed], axis=1, keepdims=True)
    for token in moved:
        query = rows[token]
        r = m.search("stem", 0, queries=query[None], k=5)
        expect = indexed[np.argsort(-(unit @ (query / np.linalg.norm(query))), kind="stable")[:5]]
        assert r.ids[0].tolist() == expect.tolist()


def test_compaction_and_gc_keep_search_exact_and_the_index_version_readable(kb, manager):
    kb.edit("stem", [RowOp("copy", token="w10", source_token="France", layers=[0])])
    kb.compact()
    kb.edit("stem", [RowOp("set", token="Paris", vector=np.zeros(8), layers=[0])])
    kb.gc(retention_seconds=0)
    assert 1 in kb.list_versions()  # pinned by the index's tag
    query = kb.read_rows("stem", [FRANCE])[0, 0]
    r = manager.search("stem", 0, queries=query[None], k=8)
    assert r.ids[0].tolist() == brute_force(kb, 0, query, 8)[0] and r.lag_rows == 2


def test_indexes_and_query_log_persist_across_a_restart(tmp_path):
    kb = KnowledgeBase(StoreConfig(data_dir=tmp_path / "kb", create=True))
    kb.import_table("stem", small_bank(), WORDS)
    m = IndexManager(kb, QUICK)
    m.create("cos", "stem", 1, {"kind": "hnsw", "metric": "cosine"}, wait=True)
    kb.edit("stem", [RowOp("set", token="Spain", vector=np.zeros(8), layers=[1])])  # zero row: cosine 1
    first = m.search("stem", 1, tokens=["France", "Berlin"], k=64)
    m.close()
    kb.close()
    kb = KnowledgeBase(StoreConfig(data_dir=tmp_path / "kb"))
    m = IndexManager(kb, QUICK)
    assert [(i.name, i.state, i.version) for i in m.list()] == [("cos", "READY", 1)]
    again = m.search("stem", 1, tokens=["France", "Berlin"], k=64)
    assert again.ids.tolist() == first.ids.tolist()
    assert again.distances[0][again.ids[0] == SPAIN] == pytest.approx(1.0)  # the zero row
    assert len(m.query_log("stem", 1).queries) == 4 and m.query_log("stem", 1).versions.tolist() == [2] * 4
    kb.close()


def test_learned_pq_trains_on_the_query_log_once_it_is_large_enough(kb):
    m = IndexManager(kb, SearchConfig(build_in_worker=False, min_log_queries=40))
    m.create("rows", "stem", 0, {"kind": "learned_pq", "pq_m": 2, "lpq_epochs": 1}, wait=True)
    assert m.describe("rows").train_queries_from == "rows (64)"
    m.search("stem", 0, queries=np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32), k=1)
    m.create("logged", "stem", 0, {"kind": "learned_pq", "pq_m": 2, "lpq_epochs": 1}, wait=True)
    assert m.describe("logged").train_queries_from == "query log (50)"


def test_query_log_is_saved_in_the_background_not_in_the_search(kb, monkeypatch):
    """A search never writes the log itself (issue 5: a save per 1024 queries cost batch-64
    searches ~15%); a background thread does, at most every query_log_save_seconds."""
    import threading
    import time

    m = IndexManager(kb, SearchConfig(build_in_worker=False, query_log_save_seconds=0))
    saved_on = []
    real_save = m.query_logs.save
    monkeypatch.setattr(m.query_logs, "save", lambda *a: (saved_on.append(threading.current_thread().name), real_save(*a)))
    m.search("stem", 0, queries=np.ones((3, 8), np.float32), k=2)
    path = kb.root / "indexes" / "querylog" / "stem@0.npz"
    deadline = time.monotonic() + 10
    while not (saved_on and not m.query_logs.saving) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert saved_on == ["save-query-logs"] and path.exists()
    with np.load(path) as f:
        assert f["queries"].shape == (3, 8) and int(f["seen"]) == 3


def test_query_log_is_a_bounded_sample():
    from memsvc.search.query_log import QueryLog

    log = QueryLog(size=10, dim=2)
    for v in range(1, 6):
        log.add(np.full((7, 2), v, np.float32), v)
    assert log.seen == 35 and log.queries.shape == (10, 2)
    assert (log.queries[:, 0] == log.versions).all() and len(set(log.versions.tolist())) > 1


def test_query_log_samples_every_query_alike_across_batches_and_a_reload(tmp_path):
    """Each of 200 queries (batches of 7) lands in a 20-query sample with probability 0.1, early
    and late ones alike, also when the log is saved and reloaded halfway (W drawn afresh)."""
    from memsvc.search.query_log import QueryLog

    n, size, trials = 200, 20, 1000
    counts = np.zeros(n)
    for trial in range(trials):
        log = QueryLog(size, 1, seed=trial)
        for start in range(0, n, 7):
            if trial % 2 and start == 98:
                log.save(tmp_path / "log.npz")
                log = QueryLog.load(tmp_path / "log.npz", size, seed=trial)
            log.add(np.arange(start, min(n, start + 7), dtype=np.float32)[:, None], start)
        assert log.seen == n and sorted(set(log.queries[:, 0].tolist())) == sorted(log.queries[:, 0].tolist())
        counts[log.queries[:, 0].astype(int)] += 1
    share = counts / trials
    assert share[:50].mean() == pytest.approx(0.1, abs=0.006) and share[-50:].mean() == pytest.approx(0.1, abs=0.006)
    assert share[90:110].mean() == pytest.approx(0.1, abs=0.01)  # around the reload


def test_bad_input_names_the_field_and_writes_nothing(kb, manager):
    def fails(error, field, fn):
        with pytest.raises(error, match=field):
            fn()

    q = np.ones((1, 8), np.float32)
    fails(NotFound, "table", lambda: manager.search("nope", 0, queries=q))
    fails(NotFound, "index", lambda: manager.search("stem", 0, queries=q, index="nope"))
    fails(OutOfRange, "layer", lambda: manager.search("stem", 3, queries=q))
    fails(InvalidArgument, "queries", lambda: manager.search("stem", 0, queries=np.ones((1, 5), np.float32)))
    fails(InvalidArgument, "queries", lambda: manager.search("stem", 0, queries=np.full((1, 8), np.nan, np.float32)))
    fails(InvalidArgument, "queries", lambda: manager.search("stem", 0, queries=np.ones((1, 8), np.int32)))
    fails(InvalidArgument, "queries", lambda: manager.search("stem", 0))
    fails(InvalidArgument, "k", lambda: manager.search("stem", 0, queries=q, k=0))
    fails(ResourceExhausted, "k", lambda: manager.search("stem", 0, queries=q, k=10**9))
    fails(NotFound, "tokens", lambda: manager.search("stem", 0, tokens=["Atlantis"]))
    fails(InvalidArgument, "params", lambda: manager.search("stem", 0, queries=q, params={"nprobe": 4}))
    fails(InvalidArgument, "index", lambda: manager.search("stem", 1, queries=q, index="tok"))
    fails(Conflict, "name", lambda: manager.create("tok", "stem", 0))
    fails(InvalidArgument, "config.kind", lambda: manager.create("x", "stem", 0, {"kind": "annoy"}))
    fails(InvalidArgument, "name", lambda: manager.create("../x", "stem", 0))
    fails(OutOfRange, "layer", lambda: manager.create("x", "stem", 7))
    assert [i.name for i in manager.list()] == ["tok"] and kb.version == 1
    assert sorted(p.name for p in manager.root.iterdir()) == ["tok"]


def test_failed_build_is_reported_and_droppable(kb):
    m = IndexManager(kb, QUICK)
    info = m.create("big", "stem", 0, {"kind": "pq", "pq_m": 3}, wait=True)  # 8 % 3 != 0
    assert info.state == "FAILED" and info.error
    with pytest.raises(FailedPrecondition, match="index"):
        m.search("stem", 0, tokens=["France"], index="big")
    assert m.search("stem", 0, tokens=["France"]).index == ""  # exact fallback
    m.drop("big")
    assert m.list() == [] and "index:big" not in kb.tags()


def test_builds_run_in_a_worker_nicer_than_the_server(kb):
    """A build is background work: its worker process runs `build_niceness` nicer, so Lookups
    (a decode step waits on each) win the CPU from it."""
    import os
    import time

    m = IndexManager(kb, SearchConfig(build_niceness=5))
    m.create("tok", "stem", 0, {"kind": "exact"})
    entry, seen = m.catalog.get("tok"), set()
    while entry.info.state == "BUILDING":
        if entry.worker is not None:
            try:
                seen.add(os.getpriority(os.PRIO_PROCESS, entry.worker.pid))
            except OSError:  # it exited between our look and the call
                pass
        time.sleep(0.002)
    assert m.describe("tok").state == "READY"
    assert min(19, os.getpriority(os.PRIO_PROCESS, 0) + 5) in seen
    m.close()


def test_close_during_a_build_kills_it_and_a_reopened_manager_reports_it_interrupted(kb):
    """Shutdown must not leave a build thread reading a closed KB (that crashed the process)."""
    import time

    m = IndexManager(kb)
    m.create("tok", "stem", 0, {"kind": "hnsw"})
    entry = m.catalog.get("tok")
    while entry.worker is None or entry.worker.poll() is not None:
        assert entry.info.state == "BUILDING", entry.info
        time.sleep(0.002)
    m.close()
    assert entry.worker.returncode is not None and not m.background_tasks()
    info = IndexManager(kb).describe("tok")
    assert info.state == "FAILED" and "interrupted" in info.error
    assert not (kb.root / "indexes" / "tok" / "build.tmp").exists()


def test_grpc_and_cli_end_to_end(server):
    address, _ = server
    with MemoryClient(address) as client:
        search = SearchClient(client)
        exact = search.search("stem", 2, tokens=["Paris"], k=3)
        assert exact.index == "" and exact.tokens[0][0] == "Paris"
        info = search.create("tok", "stem", 2, {"kind": "diskann", "metric": "cosine", "graph_degree": 16})
        assert info.state == "BUILDING" and search.wait("tok").state == "READY"
        r = search.search("stem", 2, tokens=["Paris", "Berlin"], k=3, params={"complexity": 32})
        assert r.index == "tok" and r.ids.shape == (2, 3) and r.tokens[0][0] == "Paris"
        client.edit("stem", [RowOp("copy", token="w40", source_token="Paris", layers=[2])])
        assert set(search.search("stem", 2, tokens=["Paris"], k=2).tokens[0]) == {"Paris", "w40"}
        assert search.search("stem", 2, tokens=["Paris"], k=2, version=1).tokens[0] == ["Paris", "w10"]
        vectors = client.read_rows("stem", [5])[:, 2]
        assert search.search("stem", 2, queries=vectors, k=1).ids.tolist() in ([[5]], [[W40]])
        for bad, error in [(dict(k=0), InvalidArgument), (dict(k=10**6), ResourceExhausted),
                           (dict(index="nope"), NotFound), (dict(queries=np.ones((1, 3))), InvalidArgument),
                           (dict(queries=np.full_like(vectors, np.nan)), InvalidArgument),
                           (dict(layer=np.int64(9)), OutOfRange)]:
            with pytest.raises(error, match=f"^{next(iter(bad))}:"):
                search.search("stem", bad.pop("layer", 2), **{"tokens": [] if "queries" in bad else ["Paris"], **bad})
        assert [i.name for i in search.list()] == ["tok"] and search.describe("tok").lag_rows == 1

    def run(*args, ok=True):
        result = CliRunner().invoke(cli, [*args, "--server", address], catch_exceptions=False)
        assert (result.exit_code == 0) == ok, result.output
        return result.output

    out = run("search", "--token", "Paris", "--layer", "2", "-k", "2")
    assert "index tok" in out and "'Paris' (id 5)" in out and "'w40' (id 46)" in out
    assert "Error: k:" in run("search", "--token", "Paris", "-k", "0", ok=False)
    assert "Error: table:" in run("search", "--table", "nope", "--token", "Paris", ok=False)
    assert "building" in run("index", "create", "hn", "--kind", "hnsw", "--no-wait")
    assert "tok" in run("index", "list")
    assert "dropped index tok" in run("index", "drop", "tok")
    assert "Error: index:" in run("index", "drop", "tok", ok=False)


def test_search_stream_answers_like_search_and_an_error_ends_it_with_the_same_status(server):
    address, _ = server
    with MemoryClient(address) as client:
        streamed, unary = SearchClient(client), SearchClient(client, stream=False)
        streamed.create("hn", "stem", 1, {"kind": "hnsw"}, wait=True)
        queries = client.read_rows("stem", [3, 9, 3])[:, 1]
        for kw in (dict(tokens=["Paris", "Berlin"], k=4), dict(queries=queries, k=3, index="hn"), dict(tokens=[5], k=2)):
            a, b = streamed.search("stem", 1, **kw), unary.search("stem", 1, **kw)
            np.testing.assert_array_equal(a.ids, b.ids)
            np.testing.assert_array_equal(a.distances, b.distances)
            assert a.tokens == b.tokens and (a.index, a.version) == (b.index, b.version)
            bare = streamed.search("stem", 1, **kw, names=False)  # ids and distances only
            np.testing.assert_array_equal(bare.ids, a.ids)
            assert bare.tokens == [] and bare.labels == [] and a.tokens[0][0]
            assert (bare.index, bare.version) == (a.index, a.version)
        for bad, field in [(dict(k=0), "k:"), (dict(tokens=["Atlantis"]), "Atlantis"), (dict(index="nope"), "index:")]:
            kw = {"tokens": ["Paris"], "k": 2, **bad}
            with pytest.raises(MemsvcError) as unary_error:
                unary.search("stem", 1, **kw)
            with pytest.raises(type(unary_error.value), match=field) as stream_error:
                streamed.search("stem", 1, **kw)
            assert str(stream_error.value) == str(unary_error.value)
            assert streamed.search("stem", 1, tokens=["Paris"], k=1).tokens == [["Paris"]]  # a new stream
    with grpc.insecure_channel(address) as channel:
        garbage = channel.stream_stream("/memsvc.v1.SearchService/SearchStream")(iter([b"\x0f\x00"]))
        with pytest.raises(grpc.RpcError) as e:
            next(garbage)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not a valid /memsvc.v1.SearchService/Search" in e.value.details()


# ---------------------------------------------------------------- mosaic stores: search a (layer, head)'s keys

KEY_DIM = 8


def pairs(seed, n):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, KEY_DIM)).astype(np.float32), rng.standard_normal((n, 4)).astype(np.float32)


def brute_force_pairs(store, queries, k, version=None, metric="cosine"):
    """Exact top-k pair ids and labels of (layer 1, head 2) of store 'facts' at a version, by numpy."""
    p = store.read_pairs("facts", 1, 2, version=version)
    keys = p["keys"]
    d = {"ip": -queries @ keys.T, "l2": ((queries[:, None] - keys[None]) ** 2).sum(-1),
         "cosine": 1 - (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ keys.T}[metric]
    order = np.argsort(d, axis=1, kind="stable")[:, :k].tolist()
    pad = k - len(order[0])  # -1 and "" past the pairs that exist
    return ([[int(p["ids"][j]) for j in row] + [-1] * pad for row in order],
            [[p["labels"][j] for j in row] + [""] * pad for row in order])


QUERIES = np.random.default_rng(7).standard_normal((6, KEY_DIM)).astype(np.float32)


@pytest.fixture
def facts(kb):
    """`kb` plus mosaic store 'facts' (2 layers x 3 heads, keys of dim 8): 40 labelled pairs in (1, 2) at version 3."""
    kb.mosaic.create("facts", num_layers=2, num_heads=3, key_dim=KEY_DIM, value_dim=4)
    kb.mosaic.add("facts", 1, 2, *pairs(1, 40), labels=[f"fact {i}" for i in range(40)])
    return kb


def test_mosaic_search_follows_add_replace_remove_and_old_versions(facts):
    kb, m = facts, IndexManager(facts, QUICK)
    info = m.create("keys", "facts", 1, {"kind": "exact", "metric": "ip"}, head=2, wait=True)
    assert (info.head, info.count, info.version, info.where()) == (2, 40, 3, ("facts", 1, 2))
    assert m.create("bank", "stem", 0, {"kind": "exact"}, wait=True).head is None

    def check(version=None, k=5):
        r = m.search("facts", 1, queries=QUERIES, k=k, head=2, version=version)
        ids, labels = brute_force_pairs(kb.mosaic, QUERIES, k, version, "ip")
        assert (r.ids.tolist(), r.labels, r.tokens, r.index) == (ids, labels, [], "keys")
        return r

    first = check()
    assert first.version == 3 and first.lag_rows == 0
    top = int(first.ids[0, 0])
    kb.mosaic.add("facts", 1, 2, QUERIES[:1] * 10, np.zeros((1, 4)), labels=["new"])  # v4: the best match of query 0
    assert check().ids[0, 0] == 40 and check().labels[0][0] == "new"
    kb.mosaic.replace("facts", 1, 2, [top], -QUERIES[:1], np.zeros((1, 4)))  # v5: the old best moves far away
    assert top not in check(k=40).ids[0]
    kb.mosaic.remove("facts", 1, 2, [40])  # v6: removed pairs never come back
    r = check(k=40)
    assert 40 not in r.ids and r.lag_rows == 1  # D(3, 6) = {top}: pair 40 exists at neither version
    assert check(version=3).ids.tolist() == first.ids.tolist()  # old versions keep their answer
    assert check(version=4).ids[0, 0] == 40
    kb.mosaic.add("facts", 0, 1, *pairs(2, 3))  # another group: no lag for this index
    info = m.describe("keys")
    assert (info.lag_commits, info.lag_rows) == (3, 1)
    assert m.refresh("keys").version == 7 and m.describe("keys").lag_rows == 0
    for v in (3, 4, 5, 6, 7):
        check(version=v, k=41)
    assert len(m.query_log("facts", 1, 2).queries) > 0 and m.query_log("facts", 1) is None


def test_mosaic_exact_search_without_an_index_and_an_empty_group(facts):
    m = IndexManager(facts, QUICK)
    r = m.search("facts", 1, queries=QUERIES, k=3, head=2, metric="cosine")
    assert r.index == "" and (r.ids.tolist(), r.labels) == brute_force_pairs(facts.mosaic, QUERIES, 3)
    empty = m.search("facts", 0, queries=QUERIES[:1], k=2)  # head 0 by default; no pairs there
    assert empty.ids.tolist() == [[-1, -1]] and empty.labels == [["", ""]] and np.isinf(empty.distances).all()


def test_mosaic_bad_input_names_the_field(facts):
    m = IndexManager(facts, QUICK)
    m.create("keys", "facts", 1, {"kind": "exact"}, head=2, wait=True)
    q = QUERIES[:1]

    def fails(error, message, fn):
        with pytest.raises(error, match=message):
            fn()

    fails(OutOfRange, "head: 3 out of range", lambda: m.search("facts", 1, queries=q, head=3))
    fails(OutOfRange, "layer: 2 out of range", lambda: m.search("facts", 2, queries=q, head=0))
    fails(InvalidArgument, "queries: expected dimension 8, got 5", lambda: m.search("facts", 1, queries=np.ones((1, 5), np.float32), head=2))
    fails(InvalidArgument, "tokens: .* is a mosaic store", lambda: m.search("facts", 1, tokens=["France"], head=2))
    fails(InvalidArgument, "head: 'stem' is a bank", lambda: m.search("stem", 0, queries=np.ones((1, 8), np.float32), head=0))
    fails(InvalidArgument, "head: 'stem' is a bank", lambda: m.create("x", "stem", 0, head=1))
    fails(InvalidArgument, "index: 'keys' indexes table 'facts' layer 1 head 2, not table 'facts' layer 1 head 0",
          lambda: m.search("facts", 1, queries=q, head=0, index="keys"))
    fails(FailedPrecondition, "table: table 'facts' layer 0 head 0 holds no rows", lambda: m.create("x", "facts", 0))
    fails(NotFound, "table: unknown mosaic store 'facts' at version 1", lambda: m.search("facts", 1, queries=q, head=2, version=1))
    assert [i.name for i in m.list()] == ["keys"]


def test_mosaic_search_through_grpc_cli_and_a_restart(tmp_path):
    from clients.mosaic import MosaicClient
    from memsvc.server.spawn import spawn_server, stop_server

    data = tmp_path / "served"
    with KnowledgeBase(StoreConfig(data_dir=data, create=True)) as store:
        store.import_table("stem", small_bank(), WORDS, dtype="float16")
    proc, address = spawn_server(data)
    try:
        with MemoryClient(address) as client:
            search, mosaic = SearchClient(client), MosaicClient(client)
            mosaic.create("facts", num_layers=2, num_heads=3, key_dim=KEY_DIM, value_dim=4)
            mosaic.add("facts", 1, 2, *pairs(1, 40), labels=[f"fact {i}" for i in range(40)])  # v3
            info = search.create("keys", "facts", 1, {"kind": "diskann", "metric": "cosine"}, head=2, wait=True)
            assert (info.head, info.count, info.version) == (2, 40, 3)

            def check(version=None, k=5):
                r = search.search("facts", 1, queries=QUERIES, k=k, head=2, version=version, params={"complexity": 64})
                assert (r.ids.tolist(), r.labels) == brute_force_pairs(mosaic, QUERIES, k, version)
                assert r.index == "keys" and r.tokens == [] and r.version == (version or r.version)
                return r

            first = check()
            bare = search.search("facts", 1, queries=QUERIES, k=5, head=2, names=False)
            assert bare.ids.tolist() == first.ids.tolist() and bare.labels == [] and first.labels[0][0]
            mosaic.add("facts", 1, 2, QUERIES[:1], np.zeros((1, 4)), labels=["new"])  # v4
            assert check().labels[0][0] == "new"
            top = int(first.ids[1, 0])
            mosaic.replace("facts", 1, 2, [top], -QUERIES[1:2], np.zeros((1, 4)), labels=["moved"])  # v5
            assert top not in check().ids[1] and check(k=41).labels[1][-1] == "moved"
            mosaic.remove("facts", 1, 2, [40])  # v6
            assert 40 not in check(k=41).ids
            assert check(version=3).ids.tolist() == first.ids.tolist()
            assert [(i.name, i.head, i.lag_rows, i.lag_commits) for i in search.list()] == [("keys", 2, 1, 3)]
            for bad, error in [(dict(head=5), OutOfRange), (dict(queries=np.ones((1, 3), np.float32)), InvalidArgument),
                               (dict(tokens=["France"], queries=None), InvalidArgument)]:
                with pytest.raises(error, match=next(iter(bad))):
                    search.search("facts", 1, **{"queries": QUERIES, "head": 2, **bad})
            with pytest.raises(InvalidArgument, match="head"):
                search.search("stem", 0, tokens=["France"], head=0)
            before = check(k=10)
            np.save(tmp_path / "q.npy", QUERIES[0])

        def run(*args, ok=True):
            result = CliRunner().invoke(cli, [*args, "--server", address], catch_exceptions=False)
            assert (result.exit_code == 0) == ok, result.output
            return result.output

        out = run("search", "--table", "facts", "--layer", "1", "--head", "2", "--vector", str(tmp_path / "q.npy"), "-k", "3")
        assert "index keys" in out and f"{before.labels[0][0]!r} (pair {before.ids[0, 0]})" in out
        assert "Error: head: 9 out of range" in run("search", "--table", "facts", "--layer", "1", "--head", "9",
                                                    "--vector", str(tmp_path / "q.npy"), ok=False)
        assert "Error: table: table 'facts' layer 1 head 0 holds no rows at version 6" in run(
            "index", "create", "h0", "--table", "facts", "--layer", "1", "--head", "0", "--kind", "exact", ok=False)
        assert "ready: 40 rows of table 'facts' layer 1 head 2" in run(
            "index", "create", "hn", "--table", "facts", "--layer", "1", "--head", "2", "--kind", "hnsw")
        assert "facts/1/2" in run("index", "list")
    finally:
        stop_server(proc)
    assert (data / "indexes" / "querylog" / "facts@1.2.npz").exists()  # saved at shutdown

    proc, address = spawn_server(data)  # indexes reload at start and answer as before
    try:
        with MemoryClient(address) as client:
            search = SearchClient(client)
            assert [(i.name, i.state, i.head, i.version) for i in search.list()] == [("hn", "READY", 2, 6), ("keys", "READY", 2, 3)]
            again = search.search("facts", 1, queries=QUERIES, k=10, head=2, index="keys")
            assert again.ids.tolist() == before.ids.tolist() and again.labels == before.labels and again.lag_rows == 1
    finally:
        stop_server(proc)


def test_search_worker_answers_like_the_index_in_process_and_restarts(tmp_path):
    """diskann searches run in a child process (SearchWorker): the same answers, errors mapped
    to memsvc's, and a killed worker is replaced on the next search."""
    from indexes.ann import IndexConfig, build_index
    from memsvc.search.search_worker import SearchWorker

    rows = small_bank(layers=1, dim=16)[:, 0]
    index = build_index(IndexConfig(kind="diskann", progress=False, graph_degree=16), np.arange(len(rows)) + 100, rows)
    index.save(tmp_path / "ix")
    worker = SearchWorker()
    try:
        q = rows[:5] + 0.01
        ids, dist = worker.search("ix", tmp_path / "ix", q, 4, {"complexity": 32})
        want = index.search(q, 4, params={"complexity": 32})
        assert ids.tolist() == want[0].tolist() and np.allclose(dist, want[1])
        with pytest.raises(InvalidArgument, match="params"):
            worker.search("ix", tmp_path / "ix", q, 4, {"nprobe": 3})
        with pytest.raises(NotFound, match="path"):
            worker.search("other", tmp_path / "nothing", q, 4, None)
        worker.process.kill()
        worker.process.wait()
        assert worker.search("ix", tmp_path / "ix", q, 4, {"complexity": 32})[0].tolist() == want[0].tolist()
    finally:
        worker.close()
