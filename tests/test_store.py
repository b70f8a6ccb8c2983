"""Store semantics: versions, reads at old versions, revert, diff, tags, compaction, gc, crashes."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from memsvc.core.dtypes import to_float32, to_storage
from memsvc.core.errors import Conflict, FailedPrecondition, InvalidArgument, NotFound, OutOfRange, ResourceExhausted
from memsvc.core.values import RowOp
from memsvc.store import KnowledgeBase, StoreConfig
from memsvc.store.checksums import row_sums
from tests.conftest import ROOT, WORDS, small_bank

BANK = small_bank()


def rows_at(kb, words, version=None):
    return kb.lookup("stem", kb.token_ids("stem", words), version=version).in_request_order()


def test_import_reads_back_exactly(kb):
    assert kb.version == 1 and kb.list_versions() == [1]
    np.testing.assert_array_equal(rows_at(kb, WORDS), BANK)
    info = kb.describe("stem")
    assert (info.vocab_size, info.num_layers, info.dim, info.dtype) == (64, 3, 8, "float32")


def test_lookup_deduplicates_and_keeps_request_order(kb):
    result = kb.lookup("stem", [5, 2, 5, 5, 0], layers=[2, 0])
    assert result.unique_ids.tolist() == [5, 2, 0]
    assert result.rows.shape == (3, 2, 8)
    np.testing.assert_array_equal(result.in_request_order(), BANK[[5, 2, 5, 5, 0]][:, [2, 0]])


def test_every_edit_is_a_version_and_old_versions_read_as_before(kb):
    v = np.arange(8, dtype=np.float32)
    r2 = kb.edit("stem", [RowOp("set", token="Spain", vector=v)], message="set Spain")
    r3 = kb.edit("stem", [RowOp("copy", token="France", source_token="Germany", layers=[1])], message="copy")
    r4 = kb.edit("stem", [RowOp("blend", token="Spain", source_token="Paris", alpha=0.25, layers=[0]),
                          RowOp("scale", token="Madrid", alpha=2.0)], message="blend+scale")
    assert [r2.version, r3.version, r4.version] == [2, 3, 4]
    assert r2.rows_changed == 3 and r3.rows_changed == 1 and r4.rows_changed == 4
    assert len(kb.list_versions()) == 4
    np.testing.assert_array_equal(rows_at(kb, ["Spain"], 1)[0], BANK[0])
    np.testing.assert_array_equal(rows_at(kb, ["Spain"], 2)[0], np.tile(v, (3, 1)))
    np.testing.assert_array_equal(rows_at(kb, ["France"], 3)[0, 1], BANK[1, 1])
    np.testing.assert_array_equal(rows_at(kb, ["France"], 3)[0, [0, 2]], BANK[2, [0, 2]])
    np.testing.assert_allclose(rows_at(kb, ["Spain"], 4)[0, 0], 0.75 * v + 0.25 * BANK[5, 0], rtol=1e-6)
    np.testing.assert_array_equal(rows_at(kb, ["Madrid"], 4)[0], 2 * BANK[3])
    np.testing.assert_array_equal(rows_at(kb, ["Madrid"], 3)[0], BANK[3])


def test_reopen_reads_every_version_identically(kb, tmp_path):
    kb.edit("stem", [RowOp("set", token="Spain", vector=np.ones(8))])
    kb.inject_token("stem", "Atlantis", like=["Spain", "France"])
    kb.edit("stem", [RowOp("copy", token="Berlin", source_token="Atlantis")])
    before = {v: kb.lookup("stem", np.arange(65) if v >= 3 else np.arange(64), version=v).in_request_order()
              for v in kb.list_versions()}
    kb.close()
    with KnowledgeBase(StoreConfig(data_dir=tmp_path / "kb")) as again:
        assert again.list_versions() == [1, 2, 3, 4]
        for v, rows in before.items():
            np.testing.assert_array_equal(again.lookup("stem", np.arange(len(rows)), version=v).in_request_order(), rows)


def test_diff_reports_changed_rows_with_l2_and_cosine(kb):
    v = np.ones(8, dtype=np.float32)
    kb.edit("stem", [RowOp("set", token="Spain", vector=v, layers=[2])])
    kb.edit("stem", [RowOp("set", token="Paris", vector=-v, layers=[0])])
    changes = kb.diff(1, 3)
    assert [(c.token, c.layer) for c in changes] == [("Spain", 2), ("Paris", 0)]
    old = BANK[0, 2]
    assert changes[0].l2 == pytest.approx(np.linalg.norm(v - old), rel=1e-6)
    assert changes[0].cosine == pytest.approx(old @ v / np.linalg.norm(old) / np.linalg.norm(v), rel=1e-5)
    assert [(c.token, c.layer) for c in kb.diff(2, 3)] == [("Paris", 0)]
    assert kb.diff(3, 3) == []


def test_revert_is_a_new_commit_that_restores_rows(kb):
    kb.edit("stem", [RowOp("copy", token="Spain", source_token="Germany")], message="swap")
    r = kb.revert(2)
    assert r.version == 3 and r.rows_changed == 3
    np.testing.assert_array_equal(rows_at(kb, ["Spain"])[0], BANK[0])
    np.testing.assert_array_equal(rows_at(kb, ["Spain"], 2)[0], BANK[1])
    assert [c.kind for c in kb.log()] == ["revert", "edit", "import"]
    assert kb.diff(1, 3) == []


def test_revert_refuses_when_a_later_commit_rewrote_the_rows(kb):
    kb.edit("stem", [RowOp("copy", token="Spain", source_token="Germany")])
    kb.edit("stem", [RowOp("scale", token="Spain", alpha=3.0, layers=[1])])
    with pytest.raises(FailedPrecondition, match="changed again by commit 3; revert 3 first"):
        kb.revert(2)
    assert kb.version == 3


def test_inject_and_revert_removes_the_token(kb):
    r = kb.inject_token("stem", "Atlantis", like=["Spain", "Germany"])
    token_id = kb.token_ids("stem", ["Atlantis"])[0]
    assert token_id == 64 and kb.describe("stem").vocab_size == 65
    np.testing.assert_allclose(rows_at(kb, ["Atlantis"])[0], (BANK[0] + BANK[1]) / 2, rtol=1e-6)
    kb.revert(r.version)
    assert kb.describe("stem").vocab_size == 64
    with pytest.raises(NotFound, match="unknown token 'Atlantis'"):
        kb.token_ids("stem", ["Atlantis"])
    with pytest.raises(OutOfRange, match="token id 64 does not exist"):
        kb.lookup("stem", [64])
    np.testing.assert_allclose(kb.lookup("stem", [64], version=r.version).in_request_order()[0], (BANK[0] + BANK[1]) / 2, rtol=1e-6)


def test_tags_name_versions(kb):
    kb.edit("stem", [RowOp("set", token="Spain", vector=np.zeros(8))])
    assert kb.tag("before", 1) == 1
    np.testing.assert_array_equal(kb.lookup("stem", [0], tag="before").in_request_order()[0], BANK[0])
    with pytest.raises(Conflict):
        kb.tag("before", 2)
    assert kb.tags() == {"before": 1}
    assert kb.delete_tag("before") == 1 and kb.tags() == {}
    with pytest.raises(NotFound, match="tag: unknown tag"):
        kb.lookup("stem", [0], tag="before")


def test_compaction_and_gc_keep_every_retained_version_exact(kb):
    kb.edit("stem", [RowOp("set", token="Spain", vector=np.full(8, 2.0))])  # 2
    kb.edit("stem", [RowOp("set", token="France", vector=np.full(8, 3.0), layers=[1])])  # 3
    kb.tag("keep", 2)
    kb.edit("stem", [RowOp("scale", token="Spain", alpha=0.5)])  # 4
    kb.inject_token("stem", "Atlantis", vector=np.full(8, 7.0))  # 5
    reads = lambda v: kb.lookup("stem", np.arange(65 if v >= 5 else 64), version=v).in_request_order()
    before = {v: reads(v) for v in kb.list_versions()}
    c = kb.compact()
    assert c.version == 6 and c.rows_changed == 0 and kb.describe("stem").base_version == 6
    for v, rows in before.items():
        np.testing.assert_array_equal(reads(v), rows)
    np.testing.assert_array_equal(reads(6), before[5])
    kb.edit("stem", [RowOp("set", token="Berlin", vector=np.full(8, 9.0))])  # 7
    head = reads(7)
    stats = kb.gc(retention_seconds=0)
    assert kb.list_versions() == [2, 7]
    assert stats["versions_dropped"] == 5 and stats["bases_deleted"] == 0  # base 1 still serves version 2
    np.testing.assert_array_equal(reads(2), before[2])
    np.testing.assert_array_equal(reads(7), head)
    with pytest.raises(NotFound, match="version 3 no longer exists. Was it cleaned up by gc"):
        kb.lookup("stem", [0], version=3)
    kb.delete_tag("keep")
    assert kb.gc(retention_seconds=0)["bases_deleted"] == 1
    assert kb.list_versions() == [7] and len(list((kb.root / "bases" / "stem").iterdir())) == 1
    np.testing.assert_array_equal(reads(7), head)


def test_compaction_rewrites_only_tables_with_deltas_and_history_reads_the_same(kb):
    kb.import_table("other", BANK * 2, WORDS)  # 2: never edited
    kb.edit("stem", [RowOp("set", token="Spain", vector=np.full(8, 2.0))])  # 3
    other_base = kb.root / "bases" / "other" / "v2.npy"
    inode = other_base.stat().st_ino
    reads = {(name, v): kb.lookup(name, np.arange(64), version=v).in_request_order()
             for name in ("stem", "other") for v in (2, 3) if (name, v) != ("other", 1)}
    assert kb.compact().version == 4
    assert kb.describe("stem").base_version == 4 and kb.describe("other").base_version == 2
    assert sorted(p.name for p in (kb.root / "bases" / "other").iterdir()) == ["v2.npy"]
    assert other_base.stat().st_ino == inode  # not rewritten
    for (name, v), rows in reads.items():
        np.testing.assert_array_equal(kb.lookup(name, np.arange(64), version=v).in_request_order(), rows)
        np.testing.assert_array_equal(kb.lookup(name, np.arange(64), version=4).in_request_order(), reads[name, 3])
    assert kb.changed_tokens("stem", 2, 4).tolist() == [kb.vocabulary("stem").index("Spain")]
    assert kb.changed_tokens("other", 2, 4).tolist() == []
    assert kb.compact().version == 5  # nothing to fold: a commit all the same, no file written
    assert kb.describe("stem").base_version == 4 and len(list((kb.root / "bases" / "stem").iterdir())) == 2


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_tables_round_like_their_dtype(tmp_path, dtype):
    with KnowledgeBase(StoreConfig(data_dir=tmp_path / dtype, create=True)) as kb:
        kb.import_table("stem", BANK, WORDS, dtype=dtype)
        expected = to_float32(to_storage(BANK, dtype), dtype)
        np.testing.assert_array_equal(kb.lookup("stem", np.arange(64)).in_request_order(), expected)
        np.testing.assert_allclose(expected, BANK, rtol=1e-2 if dtype == "bfloat16" else 1e-3, atol=1e-3)
        kb.edit("stem", [RowOp("set", token_id=3, vector=np.full(8, 1 / 3))])
        assert kb.lookup("stem", [3]).rows.dtype == (np.uint16 if dtype == "bfloat16" else np.float16)
        np.testing.assert_array_equal(kb.read_rows("stem", [3])[0], to_float32(to_storage(np.full((3, 8), 1 / 3), dtype), dtype))


def test_bad_input_raises_and_writes_nothing(kb):
    cases = [
        (lambda: kb.lookup("nope", [0]), NotFound, "table: unknown table 'nope'"),
        (lambda: kb.lookup("stem", [64]), OutOfRange, "token_ids: token id 64 out of range"),
        (lambda: kb.lookup("stem", [-1]), OutOfRange, "token_ids: token id -1 out of range"),
        (lambda: kb.lookup("stem", [0], layers=[3]), OutOfRange, "layers: layer 3 out of range"),
        (lambda: kb.lookup("stem", []), InvalidArgument, "token_ids: the request names no tokens"),
        (lambda: kb.lookup("stem", [0], version=9), NotFound, "version: version 9 does not exist"),
        (lambda: kb.edit("stem", []), InvalidArgument, "ops: the batch is empty"),
        (lambda: kb.edit("stem", [RowOp("set", token="Nowhere", vector=np.zeros(8))]), NotFound, "ops[0].token: unknown token 'Nowhere'"),
        (lambda: kb.edit("stem", [RowOp("set", token_id=0, vector=np.zeros(7))]), InvalidArgument, "ops[0].vector: expected 8 values"),
        (lambda: kb.edit("stem", [RowOp("set", token_id=0, vector=np.full(8, np.nan))]), InvalidArgument, "ops[0].vector: contains NaN or Inf"),
        (lambda: kb.edit("stem", [RowOp("set", token_id=0, vector=np.zeros(8)), RowOp("copy", token_id=1)]), InvalidArgument, "ops[1].source_token"),
        (lambda: kb.edit("stem", [RowOp("bend", token_id=0)]), InvalidArgument, "ops[0].op: unknown operation 'bend'"),
        (lambda: kb.edit("stem", [RowOp("set", token_id=0, vector=np.zeros(8), layers=[5])]), OutOfRange, "ops[0].layers: layer 5 out of range"),
        (lambda: kb.revert(1), FailedPrecondition, "commit 1 is an import"),
        (lambda: kb.import_table("stem", BANK, WORDS), Conflict, "table 'stem' already exists"),
        (lambda: kb.import_table("x", BANK, WORDS[:3]), InvalidArgument, "vocab: 3 words for 64 rows"),
        (lambda: kb.inject_token("stem", "Spain", like=["France"]), Conflict, "'Spain' already exists"),
        (lambda: kb.inject_token("stem", " ", like=["France"]), InvalidArgument, "token: the new token is empty"),
    ]
    for call, error, message in cases:
        with pytest.raises(error) as info:
            call()
        assert message in str(info.value)
    assert kb.version == 1 and len(kb.log()) == 1
    assert kb.commits.db.execute("select count(*) from deltas").fetchone()[0] == 0


def test_missing_or_corrupt_data_dir_is_a_failed_precondition(tmp_path):
    with pytest.raises(FailedPrecondition, match="no knowledge base at"):
        KnowledgeBase(StoreConfig(data_dir=tmp_path / "none"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "catalog.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(FailedPrecondition, match="not a readable knowledge base catalog"):
        KnowledgeBase(StoreConfig(data_dir=bad))
    good = tmp_path / "good"
    with KnowledgeBase(StoreConfig(data_dir=good, create=True)) as kb:
        kb.import_table("stem", BANK, WORDS)
    (good / "bases" / "stem" / "v1.npy").unlink()
    with pytest.raises(FailedPrecondition, match="base file .* is missing or unreadable"):
        KnowledgeBase(StoreConfig(data_dir=good))


def test_a_second_process_cannot_open_an_open_kb(kb):
    with pytest.raises(FailedPrecondition, match="open in another process"):
        KnowledgeBase(StoreConfig(data_dir=kb.root))


@pytest.mark.parametrize("point", ["commit:after-rows", "commit:before-commit"])
def test_a_crash_mid_commit_leaves_the_previous_head_intact(kb, point):
    kb.edit("stem", [RowOp("set", token="Spain", vector=np.ones(8))])
    expected = kb.lookup("stem", np.arange(64)).in_request_order()
    root = kb.root
    kb.close()
    script = textwrap.dedent(f"""
        import numpy as np
        from memsvc.core.values import RowOp
        from memsvc.store import KnowledgeBase, StoreConfig
        kb = KnowledgeBase(StoreConfig(data_dir={str(root)!r}))
        kb.edit("stem", [RowOp("set", token_id=t, vector=np.full(8, 5.0)) for t in range(10)], message="dies")
        print("survived")
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                          env={"MEMSVC_CRASH_AT": point, "PATH": "/usr/bin:/bin"}, timeout=120)
    assert proc.returncode == 77 and "survived" not in proc.stdout, proc.stderr
    with KnowledgeBase(StoreConfig(data_dir=root)) as again:
        assert again.version == 2 and [c.message for c in again.log()][0] != "dies"
        np.testing.assert_array_equal(again.lookup("stem", np.arange(64)).in_request_order(), expected)
        assert again.edit("stem", [RowOp("scale", token_id=0, alpha=2.0)]).version == 3


def test_a_commit_whose_publish_fails_is_still_read_and_the_next_commit_works(kb):
    def write(conn, version):  # a commit that writes delta rows writes their checksums (checksums.py)
        row = np.full(8, 4.0, np.float32)
        conn.execute("insert into deltas values (?,?,?,?,?)", ["stem", 2, 0, version, row.tobytes()])
        conn.execute("insert into delta_sums values (?,?,?)", ["stem", version, row_sums([2], [0], [row])])

    def publish(version):
        raise MemoryError("simulated failure while mirroring the commit")

    assert kb.commit("edit", ["stem"], write, publish, message="half-published") == 2
    assert kb.version == 2 and kb.log()[0].message == "half-published"
    np.testing.assert_array_equal(kb.read_rows("stem", [2])[0, 0], np.full(8, 4.0))
    assert kb.edit("stem", [RowOp("scale", token_id=2, alpha=2.0, layers=[0])]).version == 3
    np.testing.assert_array_equal(kb.read_rows("stem", [2])[0, 0], np.full(8, 8.0))


def test_changed_tokens_names_exactly_the_rows_that_read_differently(kb):
    kb.edit("stem", [RowOp("set", token="Spain", vector=np.ones(8), layers=[2])])  # 2
    kb.edit("stem", [RowOp("scale", token="Paris", alpha=1.0)])  # 3: writes rows but changes nothing
    kb.inject_token("stem", "Atlantis", like=["France"])  # 4
    kb.compact()  # 5
    kb.edit("stem", [RowOp("copy", token="Berlin", source_token="Madrid", layers=[0])])  # 6
    assert kb.changed_tokens("stem", 1, 3).tolist() == [0]
    assert kb.changed_tokens("stem", 3, 1).tolist() == [0]
    assert kb.changed_tokens("stem", 1, 6).tolist() == [0, 4, 64]  # across the compaction too
    assert kb.changed_tokens("stem", 5, 6).tolist() == [4]
    assert kb.table("stem").changed_tokens(1, 6, layer=2).tolist() == [0, 64]


def test_a_checkout_reads_its_version_and_refuses_writes(kb):
    kb.tag("before")
    kb.edit("stem", [RowOp("set", token="Spain", vector=np.ones(8))])
    pinned = kb.checkout(tag="before")
    assert pinned.version == 1 and kb.checkout().version == 2
    np.testing.assert_array_equal(pinned.lookup("stem", ["Spain"]).in_request_order()[0], BANK[0])
    assert pinned.vocabulary("stem") == WORDS and pinned.describe("stem").version == 1
    for write in (lambda: pinned.edit("stem", [RowOp("scale", token_id=0, alpha=2.0)]), lambda: pinned.tag("x")):
        with pytest.raises(FailedPrecondition, match="checkout: version 1 is read-only"):
            write()
    assert kb.version == 2


def test_an_edit_returns_the_rows_it_changed_as_show_reads_them(kb):
    result = kb.edit("stem", [RowOp("set", token="Paris", vector=np.ones(8), layers=[2, 0]),
                              RowOp("scale", token="Spain", alpha=1.0)])  # rewrites Spain's rows unchanged
    assert result.changes == kb.show(result.version)[1]
    assert [(c.token, c.layer) for c in result.changes] == [("Paris", 0), ("Paris", 2)]


def test_lookup_limits_are_checked_by_the_store(kb):
    kb.limit_lookups(4, None)
    with pytest.raises(ResourceExhausted, match="token_ids: 5 tokens"):
        kb.lookup("stem", [0, 1, 2, 3, 4])
    assert kb.lookup("stem", [0, 1, 2, 3]).rows.shape == (4, 3, 8)


def test_lookup_takes_ids_then_words_as_the_wire_sends_them(kb):
    result = kb.lookup("stem", np.array([5, 2]).tolist() + ["Spain", "Madrid"])
    assert result.unique_ids.tolist() == [5, 2, 0, 3]
    np.testing.assert_array_equal(result.in_request_order(), BANK[[5, 2, 0, 3]])
