"""Faults without damage (issue 19, items 11 and 12): a full disk refuses writes with
RESOURCE_EXHAUSTED and nothing written while reads go on; files beside the catalog are written
whole or not at all, and a damaged one never stops the server; damaged files make serve print
one line naming the file and fsck report a finding, never a traceback."""
import logging
import os
import subprocess
import sys
from contextlib import contextmanager

import numpy as np
import pytest
from click.testing import CliRunner

from bench.faults import fill
from clients.client import MemoryClient
from clients.search import SearchClient
from memsvc.cli import cli
from memsvc.core.errors import FailedPrecondition, ResourceExhausted
from memsvc.core.values import RowOp
from memsvc.server.main import open_store
from memsvc.store.backup import fsck
from tests.conftest import ROOT, served_kb, serving

SWAP = [RowOp("copy", token="Spain", source_token="Germany")]


@contextmanager
def tiny_disk(folder, size="8m"):
    """A tmpfs of ``size`` mounted at folder (needs root: the test machines run tests as root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def test_a_full_disk_refuses_edits_and_tags_keeps_reads_and_recovers(tmp_path):
    with tiny_disk(tmp_path / "fs") as fs:
        data = served_kb(fs / "kb")
        with serving(data) as address, MemoryClient(address) as client:
            before = client.lookup("stem", ["Spain"]).in_request_order().copy()
            filler = fill(fs)
            for write in (lambda: client.edit("stem", SWAP, message="swap"), lambda: client.tag("t1")):
                with pytest.raises(ResourceExhausted, match=f"data: no space left on the device of {data}; nothing was written"):
                    write()
            assert client.version == 1 and client.tags() == {} and len(client.log()) == 1
            assert (client.lookup("stem", ["Spain"]).in_request_order() == before).all()
            filler.unlink()
            assert client.edit("stem", SWAP, message="swap").version == 2
            assert client.tag("t1") == 2
            assert (client.lookup("stem", ["Spain"]).in_request_order() ==
                    client.lookup("stem", ["Germany"]).in_request_order()).all()


def test_a_query_log_saved_on_a_full_disk_keeps_the_last_one_and_the_server_restarts(tmp_path, caplog):
    with tiny_disk(tmp_path / "fs") as fs:
        data = served_kb(fs / "kb")
        log = data / "indexes" / "querylog" / "stem@0.npz"
        with serving(data) as address, MemoryClient(address) as client:
            SearchClient(client).search("stem", tokens=["Spain"], k=2)
        saved = log.read_bytes()
        assert len(saved) > 0
        with serving(data) as address, MemoryClient(address) as client:
            SearchClient(client).search("stem", tokens=["Paris"] * 50, k=2)
            filler = fill(fs)
        assert log.read_bytes() == saved and not list(log.parent.glob("*.tmp"))  # the shutdown save failed whole
        assert "not saved" in caplog.text
        filler.unlink()
        with serving(data) as address, MemoryClient(address) as client:
            assert SearchClient(client).search("stem", tokens=["Spain"], k=1).tokens == [["Spain"]]


@pytest.mark.parametrize("damage", [b"", b"PK\x03\x04 not a zip"])
def test_a_damaged_query_log_or_index_entry_is_dropped_with_a_warning(tmp_path, caplog, damage):
    data = served_kb(tmp_path / "kb")
    with serving(data) as address, MemoryClient(address) as client:
        search = SearchClient(client)
        search.create("keep", "stem", config={"kind": "exact"}, wait=True)
        search.create("bad", "stem", layer=1, config={"kind": "exact"}, wait=True)
        search.search("stem", tokens=["Spain"], k=2, index="keep")
    (data / "indexes" / "querylog" / "stem@0.npz").write_bytes(damage)
    (data / "indexes" / "bad" / "meta.json").write_bytes(damage)
    report = fsck(data)
    assert [p.split(" is damaged")[0] for p in report.problems] == ["index: indexes/bad/meta.json",
                                                                      "query log: indexes/querylog/stem@0.npz"]
    with caplog.at_level(logging.WARNING), serving(data) as address, MemoryClient(address) as client:
        assert [i.name for i in SearchClient(client).list()] == ["keep"]
        assert SearchClient(client).search("stem", tokens=["Spain"], k=1).tokens == [["Spain"]]
    assert "bad/meta.json is damaged" in caplog.text and "stem@0.npz is damaged" in caplog.text
    assert fsck(data).ok


def _serve_output(data):
    """`memsvc serve` over a damaged data dir: (exit status, its output lines)."""
    proc = subprocess.run([sys.executable, "-m", "memsvc", "serve", "--no-seed", "--data", str(data), "--port", "0"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    return proc.returncode, (proc.stdout + proc.stderr).strip().splitlines()


def test_a_base_truncated_to_0_bytes_serve_says_which_file_and_fsck_reports_it(tmp_path):
    data = served_kb(tmp_path / "kb")
    base = data / "bases" / "stem" / "v1.npy"
    base.write_bytes(b"")
    code, lines = _serve_output(data)
    assert code == 1 and lines == [f"Error: data: base file {base} of table 'stem' is missing or unreadable "
                                   f"(No data left in file)"], lines
    result = CliRunner().invoke(cli, ["fsck", "--data", str(data)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert "problem: base: bases/stem/v1.npy (table 'stem', version 1) is missing or unreadable" in result.output
    assert "Traceback" not in result.output and "DAMAGED" in result.output


def _catalog_damaged(data, offset, garbage):
    with open(data / "catalog.db", "r+b") as f:
        f.seek(offset)
        f.write(garbage)


@pytest.mark.parametrize("offset, garbage", [(0, b"not a sqlite header!"), (4096 + 8, b"\xff" * 64),
                                             (12 * 4096, b"\x0d\x00\x13" * 300)])  # the deltas table's page
def test_a_damaged_catalog_is_a_finding_of_fsck_and_one_line_of_serve(tmp_path, offset, garbage):
    data = served_kb(tmp_path / "kb")
    with open_store(data) as kb:  # some commits: several pages
        for i in range(5):
            kb.edit("stem", [RowOp("copy", token=f"w{i}", source_token="Spain")], message=f"e{i}")
    _catalog_damaged(data, offset, garbage)
    report = fsck(data)
    assert not report.ok and report.problems
    try:
        open_store(data).close()
    except FailedPrecondition as e:
        assert str(e).startswith("data: ") and "\n" not in str(e)


def test_random_flips_in_the_catalogs_first_page_never_escape_as_anything_but_one_line(tmp_path):
    data = served_kb(tmp_path / "kb")
    clean = (data / "catalog.db").read_bytes()
    rng, refused = np.random.default_rng(19), 0
    for _ in range(40):
        damaged = bytearray(clean)
        for at in rng.integers(0, 4096, 4):
            damaged[at] ^= 1 << int(rng.integers(0, 8))
        (data / "catalog.db").write_bytes(bytes(damaged))
        try:
            open_store(data).close()
        except FailedPrecondition as e:
            assert "\n" not in str(e)
            refused += 1
        fsck(data)  # a report, whatever it says
    assert refused


def test_backup_and_restore_on_a_full_disk_say_one_line_and_leave_nothing(tmp_path):
    data = served_kb(tmp_path / "kb")
    backup_file = tmp_path / "kb.tar"
    assert CliRunner().invoke(cli, ["backup", "--data", str(data), "--to", str(backup_file)]).exit_code == 0
    with tiny_disk(tmp_path / "fs", size=f"{backup_file.stat().st_size // 2}") as fs:
        result = CliRunner().invoke(cli, ["restore", str(backup_file), "--data", str(fs / "restored")])
        assert result.exit_code == 1 and result.exception.__class__ is SystemExit, result.output
        errors = [line for line in result.output.splitlines() if "Error" in line]  # beside a progress bar
        assert errors == [f"Error: data: no space left on the device of {fs / 'restored'} while restoring; nothing was restored"]
        result = CliRunner().invoke(cli, ["backup", "--data", str(data), "--to", str(fs / "again.tar")])
        assert result.exit_code == 1 and result.exception.__class__ is SystemExit, result.output
        errors = [line for line in result.output.splitlines() if "Error" in line]
        assert errors == [f"Error: to: no space left on the device of {fs / 'again.tar'}; nothing was written"]
        filler = fill(fs)
        result = CliRunner().invoke(cli, ["export", str(fs / "stem.npy"), "--table", "stem", "--data", str(data)])
        assert result.exit_code == 1 and result.exception.__class__ is SystemExit, result.output
        assert [line for line in result.output.splitlines() if "Error" in line] == ["Error: no space left on the device"]
        assert list(fs.iterdir()) == [filler]  # no partial restore, backup or staging folder
