"""What a new user met (issue 19, items 5, 6 and 8): one-line errors where tracebacks were, local and
--server alike; --data and --server chosen explicitly; `edit --fact` that would change no answer;
`search --exact`; tag and log listings; `index create --help`; `memsvc examples`."""
import hashlib
import re

import pytest
from click.testing import CliRunner

from clients.client import MemoryClient
from clients.search import SearchClient
from memsvc.cli import cli
from memsvc.core.errors import InvalidArgument, NotFound
from memsvc.server.spawn import spawn_server, stop_server
from research.corpus import DemoCorpus
from tests.conftest import MICRO_CORPUS


def memsvc(*args, env=None):
    result = CliRunner().invoke(cli, [str(a) for a in args], env=env, catch_exceptions=False)
    return result.exit_code, result.output


def error_line(*args, env=None) -> str:
    """The one line a failing command prints (exit status 1)."""
    code, out = memsvc(*args, env=env)
    assert code == 1 and len(out.strip().splitlines()) == 1 and out.startswith("Error: "), out
    return out.strip()


def test_out_of_range_versions_and_non_integer_params_are_one_line_local_and_remote(kb, server):
    address, _ = server
    data = kb.root
    kb.close()  # the local half opens it from the command line
    for where in (["--server", address], ["--data", data]):
        assert error_line("lookup", *where, "--token", "Spain", "--version", -1).startswith(
            "Error: version: version -1 does not exist")
        assert error_line("lookup", *where, "--token", "Spain", "--version", 2**64).startswith(
            f"Error: version: version {2**64} does not exist")
        assert error_line("revert", *where, "--", -1).startswith("Error: version: version -1 does not exist")
        assert error_line("search", *where, "--token", "Spain", "--param", "complexity=abc") == \
            "Error: --param: complexity must be an integer, got 'abc'"
        assert error_line("search", *where, "--token", "Spain", "--param", "nprobe=1.5") == \
            "Error: --param: nprobe must be an integer, got '1.5'"
    with MemoryClient(address) as client:
        with pytest.raises(NotFound, match=r"^version: version -1 does not exist"):
            client.lookup("stem", ["Spain"], version=-1)
        with pytest.raises(InvalidArgument, match=r"^params\['complexity'\]: expected an integer, got 'abc'"):
            SearchClient(client).search("stem", 0, tokens=["Spain"], params={"complexity": "abc"})


def test_a_local_command_on_a_served_directory_says_how_to_reach_the_server(server):
    address, data = server
    assert error_line("log", "--data", data) == (
        f"Error: data: {data} is open in another process (a running server? send the command to it with "
        "--server HOST:PORT or MEMSVC_SERVER=HOST:PORT, or stop it)")
    code, out = memsvc("log", env={"MEMSVC_SERVER": address, "MEMSVC_DATA": None})
    assert code == 0 and "import" in out
    code, out = memsvc("log", "--data", data.parent / "none", "--server", address)  # both typed: the server
    assert code == 0 and "import" in out
    # --data typed on the command line beats MEMSVC_SERVER: this directory does not exist
    assert error_line("log", "--data", data.parent / "none", env={"MEMSVC_SERVER": address}).startswith(
        "Error: data: no knowledge base at")


def test_generate_with_override_reaches_the_server_through_MEMSVC_SERVER(micro_kb):
    corpus = DemoCorpus(MICRO_CORPUS)
    source, target = corpus.entities[:2]
    prompt = f"the capital of {source} is"
    proc, address = spawn_server(micro_kb)
    try:
        args = ["generate", "--prompt", prompt, "-n", 1, "--override", f"{source}={target}", "--model", micro_kb / "models" / "demo"]
        assert "open in another process" in error_line(*args, "--data", micro_kb)
        code, out = memsvc(*args, env={"MEMSVC_SERVER": address})
        assert code == 0 and f"-> {corpus.attributes[target]['capital']}" in out, out
    finally:
        stop_server(proc)


def test_fact_edit_that_changes_no_answer_commits_nothing(micro_kb):
    corpus = DemoCorpus(MICRO_CORPUS)
    entity = corpus.entities[0]
    prompt, capital = f"the capital of {entity} is", corpus.attributes[entity]["capital"]
    assert error_line("edit", "--data", micro_kb, "--fact", prompt, "--target", capital) == \
        f"Error: --target: {prompt!r} already yields {capital!r}; nothing to commit"
    code, out = memsvc("edit", "--data", micro_kb, "--fact", prompt, "--target", "the")  # no row fit makes "the" a capital
    assert code == 1 and out.splitlines()[0].startswith("reliability 0.000")
    assert out.splitlines()[1] == f"Error: --fact: the fitted rows still do not make {prompt!r} yield 'the'; nothing committed"
    assert len(memsvc("log", "--data", micro_kb)[1].splitlines()) == 1  # the import only


def test_exact_search_once_an_index_exists_and_index_tags_stay_out_of_listings(server):
    address, data = server
    run = lambda *args: memsvc(*args, "--server", address)
    assert run("index", "create", "near", "--layer", "2", "--kind", "hnsw")[0] == 0
    code, out = run("search", "--token", "Paris", "--layer", "2", "-k", "3")
    assert code == 0 and out.startswith("version 1, index near")
    code, out = run("search", "--token", "Paris", "--layer", "2", "-k", "3", "--exact")
    assert code == 0 and out.startswith("version 1, exact search, l2 distance") and "'Paris' (id 5)  0.0000" in out
    assert error_line("search", "--server", address, "--token", "Paris", "--layer", "2", "--exact", "--index", "near") == \
        "Error: exact: give exact or an index, not both (index 'near')"
    assert error_line("search", "--server", address, "--token", "Paris", "--layer", "2", "--exact", "--param", "ef_search=9") == \
        "Error: params: exact search (asked for) takes no params"
    assert run("tag", "mine")[0] == 0
    with MemoryClient(address) as client:
        assert set(client.tags()) == {"mine", "index:near"}  # the index keeps its version alive with a tag
    assert run("tag") == (0, "mine\t1\n")
    code, out = run("log")
    assert code == 0 and "[mine]" in out and "index:" not in out


def test_log_columns_line_up_across_bank_and_mosaic_kinds(kb, tmp_path):
    kb.mosaic.create("facts", 1, 1, 4, 4)
    data = kb.root
    kb.close()
    code, out = memsvc("log", "--data", data)
    lines = out.splitlines()
    assert code == 0 and [line.split()[3] for line in lines] == ["mosaic-create", "import"], out
    assert len({line.index(" rows  ") for line in lines}) == 1, out  # the rows column in one place
    code, out = memsvc("log", "--data", data, "-n", 0)  # remote 0 meant "all", local "none": neither now
    assert code == 2 and "Invalid value for '-n' / '--limit': 0 is not in the range x>=1." in out


def test_index_create_help_lists_the_settings_and_their_kinds():
    code, out = memsvc("index", "create", "--help")
    text = re.sub(r"\s+", " ", out)
    assert code == 0 and "--set KEY=VALUE" in text
    for key in ("graph_degree", "complexity", "hnsw_m", "ef_search", "nlist", "nprobe", "pq_m", "lpq_lr", "seed"):
        assert key in text, key
    assert "One of exact, diskann, diskann_dynamic, diskann_disk, hnsw, ivfpq, pq, opq, learned_pq." in text


def test_examples_writes_the_same_bytes_every_time(tmp_path):
    digests = []
    for out in (tmp_path / "a", tmp_path / "b"):
        code, text = memsvc("examples", out)
        assert code == 0 and text.strip().endswith(f"wrote the tour's files into {out}")
        digests.append({p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir())})
    assert digests[0] == digests[1] and sorted(digests[0]) == sorted(
        ["bank.safetensors", "tokenizer.json", "row.npy", "q.npy", "pairs.npz", "queries.npy", "edits.jsonl"])
