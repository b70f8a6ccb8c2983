"""Real-size banks, at small size (issue 17): whole-table passes work a chunk at a time, history
across a compaction answers from what it recorded and from checksums, Snapshot pages its delta
rows, and a start reads no base row and no delta row (only where the delta rows are)."""
import ctypes
import errno
import gc
import mmap
import os
import tracemalloc

import numpy as np
import pytest
import torch

from clients.banks import LocalBank
import clients.snapshots
from clients.client import MemoryClient
from memsvc.core.dtypes import to_float32, to_storage
from memsvc.core.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from memsvc.core.values import RowOp, RowWrites
from memsvc.server.spawn import spawn_server, stop_server
from memsvc.store import KnowledgeBase, StoreConfig, bank_table
from memsvc.store.checksums import token_sums

VOCAB, LAYERS, DIM = 600, 3, 256  # 3 KB a float32 row: a 16 KB chunk holds 5 tokens


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(bank_table, "CHUNK_BYTES", 16 << 10)


def words(n=VOCAB):
    return [f"t{i}" for i in range(n)]


def bank(seed=0, vocab=VOCAB):
    return np.random.default_rng(seed).standard_normal((vocab, LAYERS, DIM)).astype(np.float32)


def reads(kb, v):
    """Every row of the table at v, by token id (ids that do not exist there: zeros)."""
    t = kb.table("stem", v)
    alive = np.flatnonzero(t.alive(v))
    out = np.zeros((len(t.words), t.num_layers, t.dim), np.float32)
    out[alive] = kb.lookup("stem", alive, version=v).in_request_order()
    return out


def random_history(kb, rng, n_commits):
    """Edits (whole rows, some layers, no-op scales, copies), injections, reverts and compactions."""
    dim = kb.table("stem").dim
    for _ in range(n_commits):
        head = kb.version
        alive = np.flatnonzero(kb.table("stem").alive(head))
        choice = rng.integers(6)
        tok = int(rng.choice(alive))
        if choice == 0:
            kb.edit("stem", [RowOp("set", token_id=tok, vector=rng.standard_normal(dim))])
        elif choice == 1:
            kb.edit("stem", [RowOp("set", token_id=tok, vector=rng.standard_normal(dim), layers=[int(rng.integers(LAYERS))])])
        elif choice == 2:
            kb.edit("stem", [RowOp("scale", token_id=tok, alpha=1.0)])  # writes rows, changes nothing
        elif choice == 3:
            kb.inject_token("stem", f"new{head}", like=[kb.table("stem").words[tok]])
        elif choice == 4:
            kind = kb.log(limit=1)[0].kind
            if kind in ("edit", "inject"):
                kb.revert(head)
        else:
            kb.compact()


def brute_changed(kb, a, b, layer=None):
    """Tokens added or removed in between, and those alive at both whose rows differ."""
    t = kb.table("stem", max(a, b))
    lo, hi = min(a, b), max(a, b)
    n = len(t.words)
    added, removed = t.added_in[:n], t.removed_in[:n]
    moved = ((added > lo) & (added <= hi)) | ((removed > lo) & (removed <= hi))
    both = (added <= lo) & (removed > hi)
    ra, rb = reads(kb, lo)[:n], reads(kb, hi)[:n]
    cols = slice(None) if layer is None else [layer]
    differ = both & np.any(ra[:, cols] != rb[:, cols], axis=(1, 2))
    return np.flatnonzero(moved | differ).tolist()


def test_changed_tokens_and_diff_across_compactions_equal_a_brute_force_comparison(tmp_path):
    rng = np.random.default_rng(7)
    with KnowledgeBase(StoreConfig(data_dir=tmp_path / "kb", create=True, durable=False)) as kb:
        kb.import_table("stem", bank(vocab=40), words(40))
        random_history(kb, rng, 60)
        kb.tag("keep", int(rng.integers(2, kb.version)))
        kb.gc(retention_seconds=3600, now=kb.log()[0].time + 3600 + 1e-3)  # only the tag and the head stay
        random_history(kb, rng, 30)
        versions = kb.list_versions()
        kinds = [c.kind for c in kb.log()]
        assert "compact" in kinds and "revert" in kinds and "inject" in kinds and len(versions) > 20
        assert any(len(kb.table("stem").folds.get(v, [])) for v in versions)  # compactions recorded folds
        for a, b in [(versions[0], versions[-1])] + [tuple(rng.choice(versions, 2)) for _ in range(40)]:
            a, b = int(a), int(b)
            assert kb.changed_tokens("stem", a, b).tolist() == brute_changed(kb, a, b), (a, b)
            layer = int(rng.integers(LAYERS))
            assert kb.table("stem").changed_tokens(a, b, layer).tolist() == brute_changed(kb, a, b, layer), (a, b)
            lo, hi = min(a, b), max(a, b)
            t = kb.table("stem")
            both = set(np.flatnonzero((t.added_in <= lo) & (t.removed_in > hi)).tolist())
            ra, rb = reads(kb, a), reads(kb, b)
            expected = {(tok, layer) for tok in both for layer in range(LAYERS)
                        if not np.array_equal(ra[tok, layer], rb[tok, layer])}
            got = {(c.token_id, c.layer) for c in kb.diff(a, b)}
            assert {p for p in got if p[0] in both} == expected, (a, b)
            injected = set(np.flatnonzero((t.added_in > lo) & (t.added_in <= hi) & (t.removed_in > hi)).tolist())
            assert injected <= {tok for tok, _ in got}, (a, b)


def flip_rows(path, tokens):
    """Flip one byte in each token's rows of a base file (its checksum no longer matches)."""
    base = np.load(path, mmap_mode="r+")
    for tok in tokens:
        base[tok, 0, 0] = -base[tok, 0, 0] + 1
    base.flush()


def test_changed_tokens_across_a_compaction_answers_from_checksums_without_reading_a_row(tmp_path):
    data = tmp_path / "kb"
    rows = bank(vocab=40)
    with KnowledgeBase(StoreConfig(data_dir=data, create=True, durable=False)) as kb:
        kb.import_table("stem", rows, words(40))
        kb.edit("stem", [RowOp("set", token_id=3, vector=np.full(DIM, 2.0))])  # 2
        kb.edit("stem", [RowOp("set", token_id=5, vector=np.full(DIM, 3.0))])  # 3
        kb.edit("stem", [RowOp("set", token_id=5, vector=rows[5, l], layers=[l]) for l in range(LAYERS)])  # 4: back
        kb.edit("stem", [RowOp("set", token_id=7, vector=np.full(DIM, 4.0), layers=[1])])  # 5: one layer
        assert kb.compact().version == 6
        kb.edit("stem", [RowOp("set", token_id=3, vector=np.full(DIM, 5.0))])  # 7
        pairs = [(1, 6), (2, 6), (3, 6), (4, 6), (6, 1), (1, 7), (6, 7), (2, 7), (4, 7), (2, 5), (1, 4)]
        expected = {(a, b): brute_changed(kb, a, b) for a, b in pairs}
    assert expected[1, 6] == [3, 7] and expected[4, 6] == [7] and expected[3, 6] == [5, 7] and expected[1, 4] == [3]
    for path in (data / "bases/stem/v1.npy", data / "bases/stem/v6.npy"):
        flip_rows(path, [3, 5])  # a read of these rows is refused: the answers below read none
    with KnowledgeBase(StoreConfig(data_dir=data)) as kb:
        for a, b in pairs:
            assert kb.changed_tokens("stem", a, b).tolist() == expected[a, b], (a, b)
        with pytest.raises(FailedPrecondition, match="token 3 at version 6: its row in base file"):
            kb.read_rows("stem", [3], 6)


@pytest.mark.parametrize("copy", ["in the kernel", "where copy_file_range is refused"])
def test_compact_writes_the_new_base_a_chunk_at_a_time_with_every_row_equal(tmp_path, small_chunks, monkeypatch, copy):
    copied = []

    def copy_file_range(src, dst, count, offset_src=None, offset_dst=None):
        if copy != "in the kernel":
            raise OSError(errno.EXDEV, "Invalid cross-device link")  # as a file system without it says
        copied.append(real_copy(src, dst, count, offset_src, offset_dst))
        return copied[-1]

    def read_base_rows(base, start, stop, out):  # a whole-table pass's read
        read.extend(range(start, stop))
        return real_read(base, start, stop, out)

    def base_rows(self, ids, version, out=None):  # a read of some tokens' rows
        read.extend(ids.tolist())
        return real_base_rows(self, ids, version, out)

    real_copy, real_read, real_base_rows, read = os.copy_file_range, bank_table.read_base_rows, bank_table.TableState.base_rows, []
    monkeypatch.setattr(os, "copy_file_range", copy_file_range)
    monkeypatch.setattr(bank_table, "read_base_rows", read_base_rows)
    monkeypatch.setattr(bank_table.TableState, "base_rows", base_rows)
    with KnowledgeBase(StoreConfig(data_dir=tmp_path / "kb", create=True, durable=False)) as kb:
        kb.import_table("stem", bank(), words(), dtype="bfloat16")
        kb.edit("stem", [RowOp("set", token_id=i, vector=np.full(DIM, i / 7)) for i in range(0, VOCAB, 37)])
        kb.edit("stem", [RowOp("copy", token_id=5, source_token_id=6, layers=[1])])
        kb.edit("stem", [RowOp("scale", token_id=7, alpha=1.0)])  # rewrites a row with itself
        kb.inject_token("stem", "Atlantis", vector=np.full(DIM, 3.0))
        before = reads(kb, kb.version)
        read.clear()
        tracemalloc.start()
        try:
            c = kb.compact()
            peak, read_by_compact = tracemalloc.get_traced_memory()[1], set(read)
        finally:
            tracemalloc.stop()
        table_bytes = (VOCAB + 1) * LAYERS * DIM * 2
        assert peak < table_bytes / 3, (peak, table_bytes)  # the old compact gathered the whole table first
        np.testing.assert_array_equal(reads(kb, c.version), before)
        base = np.load(kb.root / f"bases/stem/v{c.version}.npy")
        np.testing.assert_array_equal(to_float32(base, "bfloat16"), before)
        folded = kb.table("stem").folds[c.version]
        assert {tok for tok, _ in folded.tolist()} == set(range(0, VOCAB, 37)) | {5, VOCAB}  # not 7: unchanged
        assert [layer for tok, layer in folded.tolist() if tok == 5] == [1]
        assert not list((kb.root / "bases" / "stem").glob("*.tmp"))
    edited = sorted({*range(0, VOCAB, 37), 5, 7})  # 7 too: its delta is above the base, though equal
    assert sum(copied) == (VOCAB * LAYERS * DIM * 2 if copy == "in the kernel" else 0)  # every base row, in the kernel
    assert read_by_compact == set(edited if copy == "in the kernel" else range(VOCAB))  # rows read: only these
    with KnowledgeBase(StoreConfig(data_dir=tmp_path / "kb")) as kb:  # the record is in the catalog
        np.testing.assert_array_equal(kb.table("stem").base_sums[c.version], token_sums(base))  # copied sums too
        np.testing.assert_array_equal(kb.table("stem").folds[c.version], folded)
        assert kb.changed_tokens("stem", c.version - 1, c.version).tolist() == []


def test_compact_over_a_base_cut_short_fails_naming_it_and_leaves_nothing(tmp_path, small_chunks):
    """The copying thread's error reaches the compaction, which stops it and writes nothing."""
    with KnowledgeBase(StoreConfig(data_dir=tmp_path / "kb", create=True, durable=False)) as kb:
        kb.import_table("stem", bank(), words(), dtype="bfloat16")
        kb.edit("stem", [RowOp("set", token_id=3, vector=np.ones(DIM))])
        base = kb.root / "bases/stem/v1.npy"
        os.truncate(base, base.stat().st_size // 2)  # after it was mapped: no row of the map is read below
        with pytest.raises(FailedPrecondition, match=f"data: base file {base} ends before row"):
            kb.compact()
        assert kb.version == 2 and sorted(p.name for p in base.parent.iterdir()) == ["v1.npy"]


def test_import_converts_a_chunk_at_a_time_and_a_refused_import_writes_nothing(tmp_path, small_chunks):
    rows = bank(3)
    np.save(tmp_path / "rows.npy", rows)
    source = np.load(tmp_path / "rows.npy", mmap_mode="r")
    with KnowledgeBase(StoreConfig(data_dir=tmp_path / "kb", create=True, durable=False)) as kb:
        tracemalloc.start()
        try:
            kb.import_table("stem", source, words(), dtype="bfloat16")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < rows.nbytes / 4, (peak, rows.nbytes)  # the old import converted the whole bank at once
        np.testing.assert_array_equal(kb.lookup("stem", np.arange(VOCAB)).rows, to_storage(rows, "bfloat16"))
        bad = rows.copy()
        bad[VOCAB - 3, 1, 5] = np.nan  # in the last chunk: the first chunks are already written
        with pytest.raises(InvalidArgument, match="rows: contain NaN or Inf"):
            kb.import_table("other", bad, words(), dtype="float16")
        big = rows.copy()
        big[VOCAB - 1, 0, 0] = 1e6  # finite in float32, inf in float16
        with pytest.raises(InvalidArgument, match="rows: contain NaN or Inf"):
            kb.import_table("other", big, words(), dtype="float16")
        assert [t.name for t in kb.list_tables()] == ["stem"] and kb.version == 1
        assert sorted(p.name for p in (kb.root / "bases").iterdir()) == ["stem"]


def test_snapshot_pages_its_delta_rows_and_every_page_reads_one_version(tmp_path):
    with KnowledgeBase(StoreConfig(data_dir=tmp_path / "kb", create=True, durable=False)) as kb:
        kb.import_table("stem", bank(), words(), dtype="float16")
        edited = list(range(3, VOCAB, 11))
        kb.edit("stem", [RowOp("set", token_id=i, vector=np.full(DIM, i / 3)) for i in edited])
        whole = kb.snapshot("stem")
        assert whole["delta_token_ids"].tolist() == edited and whole["next_token_id"] == 0
        row_bytes = LAYERS * DIM * 2
        ids, rows, start, pages = [], [], 0, 0
        while True:
            page = kb.snapshot("stem", 2, start_token_id=start, max_bytes=3 * row_bytes + 1)
            assert len(page["delta_token_ids"]) <= 3 and page["delta_rows"].nbytes <= 3 * row_bytes
            assert page["delta_tokens_total"] == (len(edited) if start == 0 else 0)
            ids += page["delta_token_ids"].tolist()
            rows.append(page["delta_rows"])
            pages += 1
            start = page["next_token_id"]
            if not start:
                break
        assert pages == -(-len(edited) // 3) and ids == edited
        np.testing.assert_array_equal(np.concatenate(rows), whole["delta_rows"])
        assert len(kb.snapshot("stem", 2, max_bytes=1)["delta_token_ids"]) == 1  # at least one token's rows
        kb.limit_lookups(None, (1 << 20) + 5 * row_bytes)
        with pytest.raises(ResourceExhausted, match="max_bytes: the delta rows of 55 tokens are 84480 bytes, over the message limit"):
            kb.snapshot("stem")
        with pytest.raises(InvalidArgument, match="start_token_id: -1 is negative"):
            kb.snapshot("stem", start_token_id=-1)


def test_local_bank_opens_through_many_snapshot_pages_with_rows_equal(tmp_path):
    data = tmp_path / "served"
    with KnowledgeBase(StoreConfig(data_dir=data, create=True)) as kb:
        kb.import_table("stem", bank(), words(), dtype="bfloat16")
        kb.edit("stem", [RowOp("set", token_id=i, vector=np.full(DIM, i / 3)) for i in range(0, VOCAB, 2)])
        kb.inject_token("stem", "Atlantis", like=["t1", "t2"])
        kb.edit("stem", [RowOp("scale", token_id=1, alpha=2.0, layers=[2])])
        expected = reads(kb, kb.version)
    proc, address = spawn_server(data)
    try:
        client = MemoryClient(address)
        snap = client.snapshot("stem", page_bytes=7 * LAYERS * DIM * 2)  # 7 tokens a page: 44 pages
        assert len(snap["delta_token_ids"]) == VOCAB // 2 + 2 and snap["version"] == 4
        np.testing.assert_array_equal(to_float32(snap["delta_rows"], "bfloat16"), expected[snap["delta_token_ids"]])
        local = LocalBank(client, "stem")
        got = local.request(torch.arange(VOCAB + 1)).result()
        np.testing.assert_array_equal(got.numpy(), expected)
        client.close()
    finally:
        stop_server(proc)


def test_local_bank_opens_with_100000_edited_tokens_their_rows_in_a_mapped_file(tmp_path, monkeypatch):
    n, layers, dim = 100_000, 2, 8
    rng = np.random.default_rng(2)
    base, vectors = rng.standard_normal((n + 16, layers, dim)), rng.standard_normal((n * layers, dim))
    data = tmp_path / "kb"
    with KnowledgeBase(StoreConfig(data_dir=data, create=True, durable=False)) as kb:
        kb.import_table("stem", base, words(n + 16), dtype="float16")
        writes = RowWrites(token_ids=np.repeat(np.arange(n), layers), layers=np.tile(np.arange(layers), n), vectors=vectors)
        kb.banks.commit_rows("stem", writes, "edit", "", "every layer of 100,000 tokens")  # what kb.edit commits
    expected = to_float32(to_storage(np.concatenate([vectors.reshape(n, layers, dim), base[n:]]), "float16"), "float16")
    monkeypatch.setattr(clients.snapshots, "SNAPSHOT_MEMORY_BYTES", 1 << 20)  # 3.2 MB of delta rows: past it
    proc, address = spawn_server(data)
    try:
        with MemoryClient(address) as client:
            local = LocalBank(client, "stem")
            assert isinstance(local.delta_rows, np.memmap) and local.delta_ids.tolist() == list(range(n))
            np.testing.assert_array_equal(local.request(torch.arange(n + 16)).result().numpy(), expected)
            ids = torch.from_numpy(rng.integers(0, n + 16, 64))
            np.testing.assert_array_equal(local.request(ids).result().numpy(), expected[ids.numpy()])
    finally:
        stop_server(proc)


# ---------------------------------------------------------------- a start reads no row

def resident(path, start, stop) -> bool:
    """Whether any page of bytes [start, stop) of a file is in the page cache (mincore)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        page = mmap.PAGESIZE
        first, last = start // page, (stop - 1) // page
        vec = (ctypes.c_ubyte * (last - first + 1))()
        addr = np.frombuffer(m, np.uint8).ctypes.data + first * page
        assert libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t((last - first + 1) * page), vec) == 0
        return any(b & 1 for b in vec)


def test_a_start_reads_no_base_row_and_no_delta_row_until_a_read_needs_them(tmp_path):
    dim = 4096  # 16 KB rows: whole pages of their own, far from the file's header
    rows = np.random.default_rng(1).standard_normal((256, 2, dim)).astype(np.float32)
    data = tmp_path / "kb"
    with KnowledgeBase(StoreConfig(data_dir=data, create=True)) as kb:
        kb.import_table("stem", rows, words(256))
        kb.edit("stem", [RowOp("set", token_id=100, vector=np.ones(dim))])  # every layer
        kb.edit("stem", [RowOp("set", token_id=150, vector=np.ones(dim), layers=[0])])
        kb.edit("stem", [RowOp("set", token_id=150, vector=np.ones(dim), layers=[1])])  # every layer, two commits
        kb.edit("stem", [RowOp("set", token_id=200, vector=np.full(dim, 2.0), layers=[0])])  # layer 1 from the base
        base = kb.root / "bases/stem/v1.npy"
        offset = np.load(base, mmap_mode="r").offset
    del kb
    gc.collect()
    fd = os.open(base, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    span = lambda tok: (offset + tok * 2 * dim * 4, offset + (tok + 1) * 2 * dim * 4)
    assert not any(resident(base, *span(tok)) for tok in (100, 150, 200))
    with KnowledgeBase(StoreConfig(data_dir=data)) as kb:
        assert not any(resident(base, *span(tok)) for tok in (100, 150, 200))  # 150 and 200: partial writes
        t = kb.table("stem")
        assert sorted(t.history) == [100, 150, 200] and not kb.banks.reader.cache  # keys only, no row
        assert t.latest_writes(150, kb.version, 1) == {0: (3, t.history[150][1][0][0]), 1: (4, t.history[150][1][1][1])}
        got = kb.read_rows("stem", [100, 150, 200])
        assert len(kb.banks.reader.cache) == 5  # the delta rows read, kept for the next read
        np.testing.assert_array_equal(got[0], np.ones((2, dim)))
        np.testing.assert_array_equal(got[1], np.ones((2, dim)))
        np.testing.assert_array_equal(got[2], np.stack([np.full(dim, 2.0), rows[200, 1]]))
