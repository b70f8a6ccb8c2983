"""The CLI end to end: local (--data) and remote (--server) make the same commits; bad input is
one line `Error: ...` with exit status 1; every command has help with an example."""
import re

import numpy as np
import pytest
from click.testing import CliRunner

from memsvc.cli import cli
from tests.conftest import WORDS, small_bank


def run(*args, ok=True):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert (result.exit_code == 0) == ok, result.output
    return result.output


@pytest.fixture
def bank_files(tmp_path):
    np.save(tmp_path / "rows.npy", small_bank())
    (tmp_path / "words.txt").write_text("\n".join(WORDS))
    return tmp_path / "rows.npy", tmp_path / "words.txt"


def edit_session(where):
    """The editor's loop: edit, see it in log/show/diff, read the old version, revert."""
    assert "committed version 2: 3 rows changed" in run("edit", *where, "--token", "Spain", "--like", "Germany", "-m", "swap")
    assert "committed version 3: 1 rows changed" in run("edit", *where, "--token", "Paris", "--vector", ",".join(["0.5"] * 8), "--layer", "1", "-m", "set")
    log = run("log", *where)
    assert re.search(r"3 .* edit .* 1 rows  set", log) and re.search(r"2 .* edit .* 3 rows  swap", log)
    assert "3 rows read differently" in run("show", *where, "2")
    diff = run("diff", *where, "1", "3")
    assert "4 rows differ" in diff and "'Paris' (id 5)  layer 1" in diff
    assert "+0.5000, +0.5000" in run("lookup", *where, "--token", "Paris", "--layer", "1")
    old = run("lookup", *where, "--token", "Paris", "--layer", "1", "--version", "2")
    assert "+0.5000, +0.5000" not in old and "version 2:" in old
    assert "committed version 4: reverted 3" in run("revert", *where, "3")
    return run("log", *where)


def test_local_and_remote_give_the_same_history(bank_files, tmp_path):
    rows, words = bank_files
    for name in ("local", "remote"):
        assert "as version 1" in run("import", rows, "--vocab", words, "--data", tmp_path / name, "--dtype", "float16")
    local_log = edit_session(["--data", tmp_path / "local"])
    from memsvc.server.spawn import spawn_server, stop_server

    proc, address = spawn_server(tmp_path / "remote")
    try:
        remote_log = edit_session(["--server", address])
        dry = run("edit", "--server", address, "--token", "France", "--like", "Berlin", "--dry-run")
        assert "dry run: 3 rows would change (nothing written)" in dry and "nearest: Berlin (1.000)" in dry
        assert "4 " in run("log", "--server", address, "-n", "1")
    finally:
        stop_server(proc)
    strip = lambda log: [re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", "", l) for l in log.splitlines()]
    assert strip(local_log) == strip(remote_log)


def test_bad_input_is_one_line_and_exit_1(bank_files, tmp_path):
    rows, words = bank_files
    data = tmp_path / "kb"
    run("import", rows, "--vocab", words, "--data", data)
    cases = [
        (["edit", "--data", data, "--token", "Nowhere", "--like", "Spain"], "Error: ops[0].token: unknown token 'Nowhere' in table 'stem'"),
        (["edit", "--data", data, "--token", "Spain", "--vector", "1,2,x"], "Error: --vector:"),
        (["edit", "--data", data, "--token", "Spain", "--vector", "1,2"], "Error: ops[0].vector: expected 8 values"),
        (["edit", "--data", data, "--token", "Spain"], "Error: --vector/--like: give exactly one"),
        (["lookup", "--data", data, "--token", "Spain", "--version", "5"], "Error: version: version 5 does not exist"),
        (["lookup", "--data", data, "--table", "nope", "--token", "Spain"], "Error: table: unknown table 'nope'"),
        (["log", "--data", tmp_path / "missing"], "Error: data: no knowledge base at"),
        (["tables", "--server", "127.0.0.1:1"], "Error: server: cannot reach memsvc at 127.0.0.1:1"),
    ]
    for args, message in cases:
        out = run(*args, ok=False)
        assert out.strip().startswith(message) and len(out.strip().splitlines()) == 1, out
    assert len(run("log", "--data", data).strip().splitlines()) == 1


def test_inject_export_reimport_round_trip(bank_files, tmp_path):
    rows, words = bank_files
    data = tmp_path / "kb"
    run("import", rows, "--vocab", words, "--data", data)
    assert "injected 'Atlantis'" in run("inject", "--data", data, "--token", "Atlantis", "--like", "Spain", "--like", "France")
    run("export", tmp_path / "out.safetensors", "--data", data)
    (tmp_path / "words2.txt").write_text("\n".join(WORDS + ["Atlantis"]))
    run("import", tmp_path / "out.safetensors", "--vocab", tmp_path / "words2.txt", "--data", tmp_path / "kb2")
    from memsvc.store import KnowledgeBase, StoreConfig

    with KnowledgeBase(StoreConfig(data_dir=data)) as a, KnowledgeBase(StoreConfig(data_dir=tmp_path / "kb2")) as b:
        np.testing.assert_array_equal(a.read_rows("stem", np.arange(65)), b.read_rows("stem", np.arange(65)))


def test_every_command_has_help_with_an_example():
    for name, command in cli.commands.items():
        text = run(name, "--help")
        assert "Example:" in text and command.help, name
