"""The README as a new user follows it: every block of the sections of the tour ("Two commands"
to "Memory Mosaic stores") runs as written, in order, against a real server over a freshly seeded
demo knowledge base (what `make serve` starts) in a directory where `memsvc examples` writes its
files. A command that fails, or a comment whose promise no longer holds (`# -> Morburg`: the
output says so; `# version 7`: the command committed version 7), fails the test."""
import json
import re
import shlex
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from clients.client import MemoryClient
from memsvc.cli import cli
from memsvc.cli.demo import seed_demo_kb
from memsvc.server.spawn import spawn_server, stop_server
from tests.conftest import ROOT

TOUR = ("Two commands", "A tour", "Decoding against the service", "Knowledge edits", "Search", "Memory Mosaic stores")
ADDRESS = "127.0.0.1:50051"  # where `make serve` listens; the test's server stands in for it
CLEAN_ENV = {name: None for name in ("MEMSVC_SERVER", "MEMSVC_DATA", "MEMSVC_TABLE", "MEMSVC_API_KEY", "MEMSVC_TLS_CA")}

# Outputs the tour's text promises beyond what its comments say, by the command's first words.
EXPECT = {
    "memsvc tables --data ./my-kb": ["stem\tbank\t722 tokens x 4 layers x 512\tfloat32"],
    "memsvc tag\n": ["before-swap\t1"],
    "memsvc search --token Elbriar -k 5": ["index near0", "'Elbriar' (id 26)"],
    "memsvc search --vector tour/q.npy -k 5 --exact": ["exact search, l2 distance", "1         'Elbriar' (id 26)  0.0000"],
    "memsvc mosaic query": ["lsh over n=250 pairs"],
    "memsvc mosaic list": ["layer 0 head 1: 249 pairs"],
    "memsvc mosaic export": ["exported 250 pairs of facts layer 0 head 1 version 11"],
    "memsvc log -n 3": ["mosaic-remove"],
    "memsvc eval-edits": ['"reliability": '],
}


def tour_blocks(readme: str) -> list:
    """[(section, [line, ...]), ...]: the indented blocks of the tour's sections, in order."""
    blocks, section, block = [], None, None
    for line in readme.splitlines() + ["## end"]:
        if line.startswith("    ") and section:
            block = block if block is not None else []
            block.append(line[4:])
            continue
        if block and line.strip():
            blocks.append((section, block))
        if line.strip():
            block = None
        elif block is not None:
            block.append("")
        if line.startswith("## "):
            section = line[3:] if line[3:].startswith(TOUR) else None
    return [(s, [line for line in b if line.strip()]) for s, b in blocks]


def promises(comment: str) -> list:
    """What a command's comment promises about its output."""
    out = [f"-> {word}" for word in re.findall(r"-> (\w+)", comment)]
    return out + [f"version {n}" for n in re.findall(r"\bversion (\d+)", comment)]


def run_shell_line(line, env, log):
    """One line: commands joined by &&, then an optional comment (promises, see module doc)."""
    command, *comment = re.split(r"\s#\s", line, maxsplit=1)
    commands = [[]]
    for word in shlex.split(command):
        commands.append([]) if word == "&&" else commands[-1].append(word)
    for argv in commands:
        output = run_command(argv, env)
        log.append((" ".join(argv), output))
        for text in promises(comment[0] if comment else ""):
            assert text in output, f"{line!r}: {text!r} not in\n{output}"
        for prefix, texts in EXPECT.items():
            if (" ".join(argv) + "\n").startswith(prefix):
                assert all(t in output for t in texts), f"{line!r}: expected {texts} in\n{output}"


def run_command(argv, env) -> str:
    if argv[0] == "make":
        assert argv[1:] in (["serve"], ["test"]), argv  # the server fixture is `make serve`; this is `make test`
        return ""
    if argv[0] == "source":
        assert argv[1:] == [".venv/bin/activate"], argv
        bin_dir = Path(sys.executable).parent  # the venv running this test: `make test`'s .venv
        assert (bin_dir / "activate").exists() and (bin_dir / "memsvc").exists(), bin_dir
        return ""
    if argv[0] == "export":
        name, _, value = argv[1].partition("=")
        env[name] = value
        return ""
    assert argv[0] == "memsvc", f"the tour runs memsvc commands only, not {argv}"
    result = CliRunner().invoke(cli, argv[1:], env=env, catch_exceptions=False)
    assert result.exit_code == 0, f"{shlex.join(argv)} exited {result.exit_code}:\n{result.output}"
    return result.output


def run_python(block, address):
    """Executes a Python block; `# version N` on its lines: the head is N afterwards."""
    namespace = {}
    exec("\n".join(block).replace(ADDRESS, address), namespace)
    for value in namespace.values():
        if isinstance(value, MemoryClient):
            value.close()
    versions = [int(n) for line in block for n in re.findall(r"#.*\bversion (\d+)", line)]
    if versions:
        with MemoryClient(address) as client:
            assert client.version == max(versions), (client.version, versions)


@pytest.fixture
def make_serve(tmp_path, monkeypatch):
    """A fresh `make serve`: the demo KB seeded into ./memsvc-data of a new working directory."""
    monkeypatch.chdir(tmp_path)
    seed_demo_kb(tmp_path / "memsvc-data")
    proc, address = spawn_server(tmp_path / "memsvc-data")
    yield address
    stop_server(proc)


def test_every_tour_block_runs_as_written(make_serve):
    address, env, log = make_serve, dict(CLEAN_ENV), []
    blocks = tour_blocks((ROOT / "README.md").read_text())
    assert [s for s in TOUR if not any(section.startswith(s) for section, _ in blocks)] == []
    for section, block in blocks:
        if block[0].startswith(("from ", "import ")):
            run_python(block, address)
        elif block[0].startswith("{"):  # an eval-edits record: one of those `memsvc examples` wrote
            records = [json.loads(line) for line in Path("tour/edits.jsonl").read_text().splitlines()]
            assert json.loads(" ".join(block)) in records
        else:
            for line in block:
                run_shell_line(line.replace(ADDRESS, address), env, log)
    ran = [cmd for cmd, _ in log if cmd.startswith("memsvc")]
    assert len(ran) >= 35, ran  # the blocks were found
    assert all(any(cmd.startswith(prefix.strip()) for cmd in ran) for prefix in EXPECT), ran


def test_tour_blocks_are_found_and_a_broken_command_fails(tmp_path):
    """The harness itself: blocks are split as Markdown does, and a failing command fails the test."""
    readme = "## A tour\n\n    memsvc tables\n\n    memsvc log   # version 3\ntext\n\n## Operations\n\n    memsvc x\n"
    assert tour_blocks(readme) == [("A tour", ["memsvc tables", "memsvc log   # version 3"])]
    with pytest.raises(AssertionError, match="exited 1"):
        run_shell_line(f"memsvc tables --data {tmp_path / 'none'}", dict(CLEAN_ENV), [])
    assert promises("a new commit, version 5; -> Morburg") == ["-> Morburg", "version 5"]


def test_every_command_is_named_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    names = [f"memsvc {name}" for name in cli.commands] + [
        f"memsvc {group} {name}" for group in ("index", "mosaic") for name in cli.commands[group].commands]
    assert [name for name in names if name not in readme] == []
