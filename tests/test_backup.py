"""Backup while serving, restore, and fsck finding each kind of damage."""
import shutil
import sqlite3
import tarfile
import threading
from contextlib import ExitStack

import numpy as np
import pytest
from click.testing import CliRunner

from clients.client import MemoryClient
from memsvc.cli import cli
from memsvc.core.errors import FailedPrecondition
from memsvc.core.values import RowOp
from memsvc.store import KnowledgeBase, StoreConfig
from memsvc.store.backup import backup, fsck, restore
from tests.conftest import WORDS, serving, small_bank


def make_kb(path, edits=3, compact=False):
    """A KB with some edits (and optionally a compaction and more edits after it); closed."""
    with KnowledgeBase(StoreConfig(data_dir=path, create=True)) as kb:
        kb.import_table("stem", small_bank(), WORDS, dtype="float16")
        for i in range(edits):
            kb.edit("stem", [RowOp("scale", token=WORDS[i], alpha=2.0 + i)], message=f"edit {i}")
        if compact:
            kb.compact()
            kb.edit("stem", [RowOp("copy", token="Spain", source_token="Germany")], message="after compact")
        kb.inject_token("stem", "Atlantis", like=["Spain", "France"])
    return path


def all_rows(store, version):
    return store.lookup("stem", [i for i, w in enumerate(store.vocabulary("stem", version)) if w], version=version).in_request_order()


def test_backup_while_serving_restores_exactly(tmp_path):
    data = make_kb(tmp_path / "kb", compact=True)
    server = ExitStack()
    address = server.enter_context(serving(data))
    stop = threading.Event()
    try:
        with MemoryClient(address) as c:
            def editor():
                i = 0
                while not stop.is_set():
                    i += 1
                    c.edit("stem", [RowOp("scale", token="Paris", alpha=1.001)], message=f"live {i}")

            thread = threading.Thread(target=editor)
            thread.start()
            result = CliRunner().invoke(cli, ["backup", "--data", str(data), "--to", str(tmp_path / "kb.tar")])
            stop.set()
            thread.join()
            assert result.exit_code == 0, result.output
            restored = CliRunner().invoke(cli, ["restore", str(tmp_path / "kb.tar"), "--data", str(tmp_path / "restored")])
            assert restored.exit_code == 0, restored.output
            assert "ok:" in restored.output and "0 problems" in restored.output
            with KnowledgeBase(StoreConfig(data_dir=tmp_path / "restored")) as copy:
                head = copy.version
                assert f"backed up version {head} " in result.output
                assert 7 <= head <= c.version  # the snapshot holds whole commits up to its head
                assert copy.list_versions() == [v for v in range(1, head + 1)]
                for v in copy.list_versions():
                    np.testing.assert_array_equal(all_rows(copy, v), all_rows(c, v))
                assert [x.message for x in copy.log()] == [x.message for x in c.log() if x.version <= head]
    finally:
        stop.set()
        server.close()


def test_backup_retries_then_refuses_when_a_named_base_is_gone(tmp_path):
    data = make_kb(tmp_path / "kb")
    (data / "bases" / "stem" / "v1.npy").unlink()
    with pytest.raises(FailedPrecondition, match="disappearing"):
        backup(data, tmp_path / "kb.tar", attempts=2)
    assert not (tmp_path / "kb.tar").exists() and not list(tmp_path.glob("*.partial"))


def test_restore_refuses_a_damaged_backup_and_a_used_directory(tmp_path):
    data = make_kb(tmp_path / "kb")
    backup(data, tmp_path / "kb.tar")
    with pytest.raises(FailedPrecondition, match="not empty"):
        restore(tmp_path / "kb.tar", data)
    with tarfile.open(tmp_path / "kb.tar") as tar:
        offset = tar.getmember("bases/stem/v1.npy").offset_data + 200
    raw = bytearray((tmp_path / "kb.tar").read_bytes())
    raw[offset] ^= 0xFF
    (tmp_path / "bad.tar").write_bytes(bytes(raw))
    with pytest.raises(FailedPrecondition, match="does not match its checksum"):
        restore(tmp_path / "bad.tar", tmp_path / "restored")
    assert not (tmp_path / "restored").exists() and not (tmp_path / "restored.restoring").exists()


def test_fsck_passes_a_healthy_kb_and_notes_leftovers(tmp_path):
    data = make_kb(tmp_path / "kb", compact=True)
    np.save(data / "bases" / "stem" / "v99.npy", np.zeros((2, 3, 8), np.float16))  # an interrupted compaction's file
    report = fsck(data)
    assert report.ok, report.problems
    assert report.versions_checked == 7 and report.bases_checked == 2 and report.deltas_checked > 0
    assert any("v99.npy is named by no commit" in n for n in report.notes)
    result = CliRunner().invoke(cli, ["fsck", "--data", str(data)])
    assert result.exit_code == 0 and "ok: 7 versions" in result.output


def damage_base_shape(data):
    np.save(data / "bases" / "stem" / "v1.npy", np.zeros((3, 3, 8), np.float16))


def damage_delta(data):
    with sqlite3.connect(data / "catalog.db") as db:
        db.execute("update deltas set data=? where rowid=(select min(rowid) from deltas)", [np.full(8, np.nan, np.float16).tobytes()])


def damage_catalog_pages(data):
    raw = bytearray((data / "catalog.db").read_bytes())
    for page in range(2, len(raw) // 4096):
        raw[page * 4096 + 100: page * 4096 + 400] = b"\xa5" * 300
    (data / "catalog.db").write_bytes(bytes(raw))


@pytest.mark.parametrize("damage, problem", [
    (lambda d: (d / "bases" / "stem" / "v1.npy").unlink(), "missing or unreadable"),
    (damage_base_shape, "the catalog says"),
    (damage_delta, "is not 8 finite float16"),
    (damage_catalog_pages, "catalog"),
])
def test_fsck_finds_damage(tmp_path, damage, problem):
    data = make_kb(tmp_path / "kb")
    damage(data)
    report = fsck(data)
    assert not report.ok
    assert any(problem in p for p in report.problems), report.problems
    result = CliRunner().invoke(cli, ["fsck", "--data", str(data)])
    assert result.exit_code == 1 and "DAMAGED" in result.output


def test_fsck_refuses_a_kb_in_use(tmp_path):
    data = make_kb(tmp_path / "kb")
    with KnowledgeBase(StoreConfig(data_dir=data)), pytest.raises(FailedPrecondition, match="another process"):
        fsck(data)
    shutil.rmtree(data)
