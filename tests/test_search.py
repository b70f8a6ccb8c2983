"""ANN search over banks (memsvc/search.py): exact-correct across edits, injections, reverts,
old versions, compaction + gc and restarts; the query log; bad input; gRPC and CLI end to end."""
import numpy as np
import pytest
from click.testing import CliRunner

from clients.client import MemoryClient
from clients.search import SearchClient
from editing.rows import RowOp
from memsvc.cli import cli
from memsvc.errors import Conflict, FailedPrecondition, InvalidArgument, NotFound, OutOfRange, ResourceExhausted
from memsvc.search import IndexManager, SearchConfig
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


def test_refresh_folds_edits_into_the_index_and_every_version_stays_exact(kb, manager):
    kb.edit("stem", [RowOp("copy", token="w10", source_token="France", layers=[0])])
    kb.edit("stem", [RowOp("scale", token="Paris", alpha=3.0)])
    info = manager.refresh("tok")
    assert (info.version, info.lag_rows, info.lag_commits) == (3, 0, 0) and kb.tags()["index:tok"] == 3
    for v in (1, 2, 3):
        query = kb.read_rows("stem", [FRANCE], v)[0, 0]
        r = manager.search("stem", 0, queries=query[None], k=6, version=v)
        assert r.ids[0].tolist() == brute_force(kb, 0, query, 6, v)[0]


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


def test_query_log_is_a_bounded_sample():
    from memsvc.search import QueryLog

    log = QueryLog(size=10, dim=2)
    for v in range(1, 6):
        log.add(np.full((7, 2), v, np.float32), v)
    assert log.seen == 35 and log.queries.shape == (10, 2)
    assert (log.queries[:, 0] == log.versions).all() and len(set(log.versions.tolist())) > 1


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
    info = m.create("big", "stem", 0, {"kind": "learned_pq", "pq_m": 3}, wait=True)  # 8 % 3 != 0
    assert info.state == "FAILED" and info.error
    with pytest.raises(FailedPrecondition, match="index"):
        m.search("stem", 0, tokens=["France"], index="big")
    assert m.search("stem", 0, tokens=["France"]).index == ""  # exact fallback
    m.drop("big")
    assert m.list() == [] and "index:big" not in kb.tags()


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
                           (dict(index="nope"), NotFound), (dict(queries=np.ones((1, 3))), InvalidArgument)]:
            with pytest.raises(error):
                search.search("stem", 2, **{"tokens": [] if "queries" in bad else ["Paris"], **bad})
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
