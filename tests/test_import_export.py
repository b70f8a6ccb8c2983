"""Whole tables in and out, a chunk at a time: export then import round-trips rows and words at
any version (an old one, and after reverting an injection that is not the newest, which leaves a
gap in the ids), locally and through a server (ImportTable, ExportTable); an ImportTable that is
cancelled or fails leaves the data directory byte-identical; the new RPCs need their keys and
survive the fuzzer."""
import threading
import time

import grpc
import numpy as np
import pytest
from click.testing import CliRunner

from clients.client import MemoryClient
from memsvc.cli import cli
from memsvc.core.dtypes import to_storage
from memsvc.core.errors import Conflict, InvalidArgument
from memsvc.core.values import RowOp
from memsvc.server.auth import READ, WRITE, required_role
from memsvc.server.spawn import spawn_server, stop_server
from memsvc.store import KnowledgeBase, StoreConfig
from memsvc.store.checksums import token_sums
from memsvc.store.importers import bank_vocab, load_bank, write_export
from memsvc.v1 import knowledge_pb2 as pb
from memsvc.v1 import knowledge_pb2_grpc as pb_grpc
from tests.conftest import WORDS, small_bank

SERVICE = "/memsvc.v1.KnowledgeService"


def run(*args, ok=True):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert (result.exit_code == 0) == ok, result.output
    return result.output


def with_history(store):
    """Inject A (v2) and B (v3), edit Spain (v4), revert A's injection (v5): at v5 id 64 is gone and
    65 (B) lives. Returns the version with the gap."""
    store.inject_token("stem", "A", like=["Spain"])
    store.inject_token("stem", "B", like=["Paris", "Berlin"])
    store.edit("stem", [RowOp("scale", token="Spain", alpha=2.0)], message="scale")
    return store.revert(2).version


def table_at(store, version):
    """{word: rows (L, d) as stored} of every token alive at a version, read through lookup."""
    words = [w for w in store.vocabulary("stem", version) if w]
    rows = store.lookup("stem", words, version=version).request_rows()
    return dict(zip(words, rows))


def file_table(path):
    bank = load_bank(path)
    return dict(zip(bank_vocab(path, bank)[0], np.asarray(bank.rows[:])))  # a slice: ChunkedRows reads it at once


def assert_same(a: dict, b: dict):
    assert list(a) == list(b)  # the same words in the same (id) order
    for word in a:
        np.testing.assert_array_equal(a[word], b[word], err_msg=word)


def test_local_export_streams_chunks_and_round_trips_at_every_version(kb, tmp_path):
    gap = with_history(kb)
    assert kb.vocabulary("stem", gap)[64] == "" and kb.vocabulary("stem", gap)[65] == "B"
    for version in (1, 3, gap):
        export = kb.export_table("stem", version, chunk_bytes=10 * 3 * 8 * 4)  # 10 tokens a chunk: 7 chunks
        chunks = list(export.chunks)
        assert [len(c) for c in chunks] == [10] * 6 + [len(export.token_ids) - 60]
        assert export.info.vocab_size == len(export.token_ids) == len(export.words)
        export.chunks = iter(chunks)
        for suffix in (".safetensors", ".npy"):
            write_export(export, tmp_path / f"v{version}{suffix}")
            export.chunks = iter(chunks)
            assert_same(file_table(tmp_path / f"v{version}{suffix}"), table_at(kb, version))
    assert list(kb.export_table("stem", gap).token_ids[-2:]) == [63, 65]
    assert not list(tmp_path.glob("*.tmp"))


def test_cli_export_then_import_without_vocab_round_trips_after_reverting_an_old_injection(kb, tmp_path):
    gap = with_history(kb)
    kb.close()
    data = tmp_path / "kb"
    for suffix in (".safetensors", ".npy"):
        out = tmp_path / f"out{suffix}"
        assert "65 tokens x 3 layers x 8" in run("export", out, "--data", data, "--version", gap)
        run("import", out, "--data", tmp_path / f"copy{suffix}")
        with KnowledgeBase(StoreConfig(data_dir=data)) as a, KnowledgeBase(StoreConfig(data_dir=tmp_path / f"copy{suffix}")) as b:
            assert_same(table_at(b, 1), table_at(a, gap))
    assert "Error: vocab: rows.npy carries no vocabulary; give --vocab" in run(
        "import", _save(tmp_path / "rows.npy"), "--data", tmp_path / "x", ok=False)
    assert not (tmp_path / "x").exists() or not list((tmp_path / "x").glob("bases/*"))


def _save(path):
    np.save(path, small_bank())
    return path


def test_npy_export_refuses_what_a_word_list_or_npy_cannot_hold(tmp_path):
    with KnowledgeBase(StoreConfig(data_dir=tmp_path / "kb", create=True)) as kb:
        kb.import_table("stem", small_bank(vocab=3), ["a", "b\nc", "d"], dtype="float16")
        kb.import_table("bf", small_bank(vocab=3), ["a", "b", "c"], dtype="bfloat16")
        with pytest.raises(InvalidArgument, match="cannot be a line of a word list; export to .safetensors"):
            write_export(kb.export_table("stem"), tmp_path / "out.npy")
        with pytest.raises(InvalidArgument, match="npy has no bfloat16"):
            write_export(kb.export_table("bf"), tmp_path / "bf.npy")
        write_export(kb.export_table("stem"), tmp_path / "out.safetensors")
        write_export(kb.export_table("bf"), tmp_path / "bf.safetensors")
        assert_same(file_table(tmp_path / "out.safetensors"), dict(zip(["a", "b\nc", "d"], kb.lookup("stem", [0, 1, 2]).request_rows())))
        assert_same(file_table(tmp_path / "bf.safetensors"), dict(zip("abc", kb.lookup("bf", [0, 1, 2]).request_rows())))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bf.safetensors", "kb", "out.safetensors"]


# ---------------------------------------------------------------- through a server


def test_export_table_streams_bounded_messages_with_the_live_vocabulary(client):
    gap = with_history(client)
    stub = pb_grpc.KnowledgeServiceStub(client.channel)
    replies = list(stub.ExportTable(pb.ExportTableRequest(table="stem", at=pb.VersionRef(version=gap), max_message_bytes=100)))
    assert replies[0].table.vocab_size == 65 and replies[0].table.version == gap
    vocab = [r for r in replies[1:] if not r.HasField("rows")]
    rows = [r for r in replies[1:] if r.HasField("rows")]
    assert replies[1:] == vocab + rows  # every vocabulary message comes before the rows
    assert len(vocab) > 5 and all(len(r.SerializeToString()) <= 100 + 40 for r in vocab)
    assert [i for r in vocab for i in r.token_ids][-2:] == [63, 65]
    assert [len(r.rows.data) for r in rows] == [2 * 3 * 8 * 2] * 32 + [3 * 8 * 2]  # 2 float16 rows (48 bytes) a message
    export = client.export_table("stem", gap, max_message_bytes=100)
    got = dict(zip(export.words, np.concatenate(list(export.chunks))))
    assert_same(got, table_at(client, gap))


def test_import_and_export_through_the_server_round_trip_with_conversion(server, tmp_path, monkeypatch):
    import clients.client

    monkeypatch.setattr(clients.client, "IMPORT_MESSAGE_BYTES", 8 * 3 * 8 * 4)  # 8 tokens a message: 9 messages
    address, _ = server
    with MemoryClient(address) as c:
        gap = with_history(c)
    out = tmp_path / "out.safetensors"
    run("export", out, "--server", address, "--version", gap)
    assert "imported copy: 65 tokens x 3 layers x 8 (float32) as version 6" in run(
        "import", out, "--server", address, "--table", "copy", "--dtype", "float32")
    run("import", out, "--server", address, "--table", "copy16")
    with MemoryClient(address) as c:
        assert_same(table_at_of(c, "copy16", 7), table_at(c, gap))
        widened = {w: r.astype(np.float32) for w, r in table_at(c, gap).items()}
        assert_same(table_at_of(c, "copy", 7), widened)
        assert c.describe("copy").dtype == "float32" and c.log(limit=1)[0].kind == "import"
        with pytest.raises(Conflict, match="table 'copy' already exists"):
            c.import_table("copy", small_bank(), WORDS)


def table_at_of(store, table, version):
    words = [w for w in store.vocabulary(table, version) if w]
    return dict(zip(words, store.lookup(table, words, version=version).request_rows()))


def test_import_table_takes_a_tokenizer_files_bytes(client):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="w0"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    rows = small_bank(seed=3)
    result = client.import_table("tok", rows, tokenizer.to_str().encode(), dtype="float32", message="with a tokenizer")
    assert client.vocabulary("tok") == WORDS
    np.testing.assert_array_equal(client.lookup("tok", np.arange(64)).request_rows(), rows)
    assert client.log(limit=1)[0].message == "with a tokenizer" and result.rows_changed == 64 * 3


@pytest.fixture(scope="module")
def untouched(tmp_path_factory):
    """A server for the imports that must leave no trace (one for all of them); yields (address, data)."""
    data = tmp_path_factory.mktemp("untouched") / "kb"
    with KnowledgeBase(StoreConfig(data_dir=data, create=True)) as kb:
        kb.import_table("stem", small_bank(), WORDS, dtype="float16")
    proc, address = spawn_server(data)
    yield address, data
    stop_server(proc)


def snapshot(data):
    """Every file under the data directory and its bytes."""
    return {p.relative_to(data).as_posix(): p.read_bytes() for p in sorted(data.rglob("*")) if p.is_file()}


def header_message(table="new", vocab=64, dtype="float16", words=WORDS):
    return pb.ImportTableRequest(header=pb.ImportTableHeader(table=table, dtype=dtype, vocab_size=vocab, num_layers=3,
                                                             dim=8, words=words))


def rows_message(rows, dtype="float16"):
    stored = to_storage(rows, dtype)
    return pb.ImportTableRequest(rows=pb.Tensor(dtype=dtype, shape=stored.shape, data=stored.tobytes()))


def test_a_cancelled_import_leaves_the_data_directory_byte_identical(untouched):
    address, data = untouched
    before = snapshot(data)
    go_on = threading.Event()

    def requests():
        yield header_message()
        for start in range(0, 32, 8):
            yield rows_message(small_bank()[start:start + 8])
        go_on.wait(30)  # the stream stays open, half sent, until it is cancelled

    with grpc.insecure_channel(address) as channel:
        call = pb_grpc.KnowledgeServiceStub(channel).ImportTable.future(requests())
        # the server has written the 32 rows sent so far to a temporary file in the data directory
        assert _wait_for(lambda: [p for p in data.glob(".import-*") if p.stat().st_size >= 128 + 32 * 3 * 8 * 2])
        call.cancel()
        go_on.set()
        assert _wait_for(lambda: not list(data.glob(".import-*")))
    assert snapshot(data) == before
    with MemoryClient(address) as c:
        assert [t.name for t in c.list_tables()] == ["stem"] and c.version == 1


def test_a_streamed_import_renames_the_file_it_wrote_into_the_base_with_its_checksums(tmp_path):
    """The rows are written once (issue 17): the base is the very file the stream was written to
    (same inode), and its crc32s are the ones recorded, so every row checks on its first read."""
    data = tmp_path / "kb"
    with KnowledgeBase(StoreConfig(data_dir=data, create=True)) as kb:
        kb.import_table("stem", small_bank(), WORDS, dtype="float16")
    rows, half_sent, go_on = small_bank(seed=4), threading.Event(), threading.Event()

    def requests():
        yield header_message()
        for start in range(0, 64, 8):
            if start == 32:
                half_sent.set()
                go_on.wait(30)
            yield rows_message(rows[start:start + 8])

    proc, address = spawn_server(data)
    try:
        with grpc.insecure_channel(address) as channel:
            call = pb_grpc.KnowledgeServiceStub(channel).ImportTable.future(requests(), timeout=60)
            assert half_sent.wait(30)
            written = _wait_for(lambda: [p for p in data.glob(".import-*") if p.stat().st_size >= 128 + 32 * 3 * 8 * 2])
            inode = written[0].stat().st_ino
            go_on.set()
            assert call.result(timeout=60).version == 2
    finally:
        go_on.set()
        stop_server(proc)
    assert (data / "bases" / "new" / "v2.npy").stat().st_ino == inode and not list(data.glob(".import-*"))
    with KnowledgeBase(StoreConfig(data_dir=data)) as kb:
        t = kb.table("new")
        np.testing.assert_array_equal(t.base_sums[2], token_sums(to_storage(rows, "float16")))
        np.testing.assert_array_equal(kb.lookup("new", np.arange(64)).in_request_order(),
                                      to_storage(rows, "float16").astype(np.float32))


def _wait_for(condition, seconds=30):
    """The condition's value once it holds (polling), or its last value after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not (value := condition()) and time.monotonic() < deadline:
        time.sleep(0.02)
    return value


@pytest.mark.parametrize("messages, code, details", [
    ([header_message(), rows_message(small_bank()[:8]), rows_message(small_bank()[8:16, :2])],
     grpc.StatusCode.INVALID_ARGUMENT, "rows (message 2).shape: expected (n >= 1, 3, 8), got [8, 2, 8]"),
    ([header_message(), rows_message(small_bank()[:8], "float32")],
     grpc.StatusCode.INVALID_ARGUMENT, "rows (message 1).dtype: 'float32', but the table's rows are float16"),
    ([header_message(), rows_message(small_bank()[:60])],
     grpc.StatusCode.INVALID_ARGUMENT, "rows: the stream ended after 60 of 64 tokens"),
    ([header_message(), rows_message(small_bank()), rows_message(small_bank()[:1])],
     grpc.StatusCode.INVALID_ARGUMENT, "rows (chunk 2): more than the 64 tokens announced"),
    ([header_message(), rows_message(np.full((64, 3, 8), np.inf, np.float32))],
     grpc.StatusCode.INVALID_ARGUMENT, "rows: contain NaN or Inf"),
    ([header_message(table="stem"), rows_message(small_bank())], grpc.StatusCode.ALREADY_EXISTS, "table 'stem' already exists"),
    ([header_message(words=WORDS[:10])], grpc.StatusCode.INVALID_ARGUMENT, "vocab: expected 64 distinct words, got 10"),
    ([header_message(dtype="int8")], grpc.StatusCode.INVALID_ARGUMENT, "header.dtype: 'int8' is not one of"),
    ([header_message(vocab=2**40)], grpc.StatusCode.INVALID_ARGUMENT, "vocab: expected 1099511627776 distinct words"),
    ([rows_message(small_bank())], grpc.StatusCode.INVALID_ARGUMENT, "header: the first message must hold the header"),
    ([], grpc.StatusCode.INVALID_ARGUMENT, "header: the first message must hold the header"),
])
def test_a_failed_import_is_a_clear_status_and_leaves_no_trace(untouched, messages, code, details):
    address, data = untouched
    before = snapshot(data)
    with grpc.insecure_channel(address) as channel:
        with pytest.raises(grpc.RpcError) as e:
            pb_grpc.KnowledgeServiceStub(channel).ImportTable(iter(messages), timeout=30)
    assert e.value.code() == code and details in e.value.details(), e.value.details()
    assert snapshot(data) == before


def test_a_failing_reader_raises_its_own_error_and_commits_nothing(client, monkeypatch):
    import clients.client

    monkeypatch.setattr(clients.client, "IMPORT_MESSAGE_BYTES", 8 * 3 * 8 * 2)  # 8 tokens a message: 4 sent, then it fails

    class Broken:
        shape = (64, 3, 8)

        def __getitem__(self, key):
            if key.start >= 32:
                raise OSError("disk read failed")
            return small_bank()[key]

    with pytest.raises(OSError, match="disk read failed"):
        client.import_table("broken", Broken(), WORDS, dtype="float16")
    nan = small_bank()
    nan[40, 1, 2] = np.nan
    with pytest.raises(InvalidArgument, match="rows: contain NaN or Inf"):  # the server's error, once all rows came
        client.import_table("broken", nan, WORDS, dtype="float16")
    assert [t.name for t in client.list_tables()] == ["stem"]


def test_a_temporary_file_left_by_an_import_killed_midway_is_removed_at_the_next_open(kb):
    """A process SIGKILLed inside import_chunks leaves its .import-*.tmp (rows half written); the
    next process to open the KB holds its lock, so no import of its own is running: it goes."""
    left = kb.root / ".import-0123456789abcdef.tmp"
    left.write_bytes(b"\x93NUMPY half a bank")
    kb.close()
    with KnowledgeBase(StoreConfig(data_dir=kb.root)) as again:
        assert not left.exists() and again.version == 1


def test_import_needs_a_write_key_and_export_a_read_key(tmp_path):
    assert required_role(f"{SERVICE}/ImportTable") == WRITE and required_role(f"{SERVICE}/ExportTable") == READ
    with KnowledgeBase(StoreConfig(data_dir=tmp_path / "kb", create=True)) as kb:
        kb.import_table("stem", small_bank(), WORDS)
    proc, address = spawn_server(tmp_path / "kb", env={"MEMSVC_READ_KEYS": "r1", "MEMSVC_WRITE_KEYS": "w1"})
    try:
        with MemoryClient(address, api_key="r1") as reader:
            assert len(np.concatenate(list(reader.export_table("stem").chunks))) == 64
            with pytest.raises(Exception, match="ImportTable needs a write key"):
                reader.import_table("new", small_bank(), WORDS)
        with MemoryClient(address, api_key="w1") as writer:
            assert writer.import_table("new", small_bank(), WORDS).version == 2
        with MemoryClient(address) as nobody, pytest.raises(Exception, match="missing or unknown API key"):
            nobody.export_table("stem")
    finally:
        stop_server(proc)


def test_the_fuzzer_covers_the_streams_and_gets_expected_codes(tmp_path):
    from bench.crash import make_kb
    from bench.fuzz import MEMORY_LIMIT, FuzzTarget, fuzz
    from memsvc.server.spawn import spawn_server

    make_kb(tmp_path / "kb")
    proc, address = spawn_server(tmp_path / "kb", memory_limit=MEMORY_LIMIT)
    try:
        target = FuzzTarget(address)
        target.methods = [m for m in target.methods if m[0].endswith(("/ImportTable", "/ExportTable"))]
        assert len(target.methods) == 2
        fuzz(target, 150)
        assert target.bad == [] and target.changed == [] and target.serving()
        assert target.histogram["OK"] > 0 and target.histogram["INVALID_ARGUMENT"] > 0
    finally:
        proc.terminate()
        proc.wait(30)
