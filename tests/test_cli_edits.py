"""`memsvc edit --entity/--fact`, `inject`, `generate`, `revert` and `eval-edits` end to end on a freshly
trained micro demo backbone (the session fixture of tests/conftest.py)."""
import json

import numpy as np
from click.testing import CliRunner

from clients.backbone.checkpoint import load_checkpoint, save_checkpoint
from memsvc.cli import cli
from memsvc.cli.demo import MODEL_DIR
from memsvc.store import KnowledgeBase, StoreConfig
from research.corpus import DemoCorpus, write_edit_records
from memsvc.server.spawn import spawn_server, stop_server
from tests.conftest import MICRO_CORPUS


def memsvc(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output


def answer(data, prompt, *extra):
    code, out = memsvc("generate", "--data", data, "--prompt", prompt, "-n", 1, *extra)
    assert code == 0, out
    return out.split(" -> ")[1].split()[0]


def test_entity_edit_generate_revert_and_override(micro_kb):
    corpus = DemoCorpus(MICRO_CORPUS)
    source, target = corpus.entities[:2]
    prompt = f"the capital of {source} is"
    old, new = corpus.attributes[source]["capital"], corpus.attributes[target]["capital"]
    assert answer(micro_kb, prompt) == old
    code, out = memsvc("edit", "--data", micro_kb, "--entity", source, "--to", target, "--dry-run")
    assert code == 0 and f"nearest: {target} (1.000)" in out and "2 rows would change" in out
    code, out = memsvc("edit", "--data", micro_kb, "--entity", source, "--to", target, "--mode", "average")
    assert code == 0 and out.strip() == "committed version 2: 2 rows changed"
    assert answer(micro_kb, prompt) == new
    assert f"subject='{source}' target_new='{target}'" in memsvc("show", "--data", micro_kb, 2)[1]
    assert memsvc("revert", "--data", micro_kb, 2)[0] == 0
    assert answer(micro_kb, prompt) == old
    assert answer(micro_kb, prompt, "--override", f"{source}={target}") == new
    assert len(memsvc("log", "--data", micro_kb)[1].splitlines()) == 3  # the override committed nothing


def test_fact_edit_commits_request_and_metrics(micro_kb):
    corpus = DemoCorpus(MICRO_CORPUS)
    source, target = corpus.entities[2:4]
    new = corpus.attributes[target]["leader"]
    code, out = memsvc("edit", "--data", micro_kb, "--fact", f"the leader of {source} is", "--target", new)
    assert code == 0 and "committed version 2: 2 rows changed" in out, out
    assert answer(micro_kb, f"the leader of {source} is") == new
    code, out = memsvc("show", "--data", micro_kb, 2)
    assert f"prompt='the leader of {source} is' subject='{source}' target_new='{new}'" in out
    assert "metric reliability: 1.0" in out and "metric other_facts:" in out and "metric fit_steps:" in out


def test_edit_errors_are_one_line(micro_kb):
    assert memsvc("edit", "--data", micro_kb) == (1, "Error: --token: give --token, --entity or --fact\n")
    code, out = memsvc("edit", "--data", micro_kb, "--entity", "Nowhere", "--to", DemoCorpus(MICRO_CORPUS).entities[0])
    assert code == 1 and out == "Error: entity: unknown token 'Nowhere' in table 'stem'\n"
    code, out = memsvc("edit", "--data", micro_kb, "--fact", "the capital of x is", "--target", "Berlin")
    assert code == 1 and out.startswith("Error: --subject: cannot tell the subject")


def test_eval_edits_through_the_server_commits_with_metrics(micro_kb, tmp_path):
    write_edit_records(tmp_path / "edits.jsonl", DemoCorpus(MICRO_CORPUS), n_records=4)
    proc, address = spawn_server(micro_kb)
    try:
        code, out = memsvc("eval-edits", tmp_path / "edits.jsonl", "--server", address, "--model", micro_kb / "models" / "demo",
                           "--commit", "--plot", tmp_path / "edits.png")
        assert code == 0, out
        overall = json.loads(out.strip().splitlines()[-1])
        assert overall["locality"] == 1.0 and 0 <= overall["reliability"] <= 1
        assert out.rsplit("relation", 1)[1].split()[:3] == ["reliability", "generalization", "locality"]
        assert (tmp_path / "edits.png").read_bytes()[:4] == b"\x89PNG"
        code, out = memsvc("show", "--server", address, 5)
        assert code == 0 and "metric locality: 1.0" in out and "request: prompt=" in out
    finally:
        stop_server(proc)


def test_injected_alias_answers_like_its_entity_until_reverted(micro_kb):
    corpus = DemoCorpus(MICRO_CORPUS)
    entity = corpus.entities[4]
    with KnowledgeBase(StoreConfig(data_dir=micro_kb)) as kb:
        np.save(micro_kb / "rows.npy", kb.read_rows("stem", kb.token_ids("stem", [entity]))[0])  # (layers, d_ff)
    proc, address = spawn_server(micro_kb)
    try:
        served = ("--data", micro_kb, "--server", address)  # --data: where the model is
        assert memsvc("inject", *served, "--token", "Atlantis", "--like", entity) == (0, "committed version 2: injected 'Atlantis'\n")
        for relation, template in (("capital", "the capital of {} is"), ("leader", "{} is led by")):
            assert answer(micro_kb, template.format("Atlantis"), "--server", address) == corpus.attributes[entity][relation]
        assert answer(micro_kb, "the capital of Atlantis is", "--server", address, "--bank", "local") == corpus.attributes[entity]["capital"]
        assert f'target_new=\'{{"source": "like", "like": ["{entity}"]' in memsvc("show", *served, 2)[1]
        assert memsvc("revert", *served, 2)[0] == 0
        code, out = memsvc("generate", *served, "--prompt", "the capital of Atlantis is")
        assert (code, out) == (1, "Error: --prompt: unknown word 'Atlantis' (not in table 'stem' at version 3: "
                                  "injected in version 2, removed since)\n")
        assert answer(micro_kb, "the capital of Atlantis is", "--server", address, "--version", 2) == corpus.attributes[entity]["capital"]
    finally:
        stop_server(proc)


def test_vector_injection_of_entity_rows_answers_in_prompts_with_the_null_embedding(micro_kb):
    """A word injected --vector with an entity's rows reads as that entity (its input embedding is
    the null vector the model was trained with); without a null embedding it cannot be used."""
    corpus = DemoCorpus(MICRO_CORPUS)
    entity = corpus.entities[4]  # whose 15 training facts the micro model answers through its name and such an alias
    with KnowledgeBase(StoreConfig(data_dir=micro_kb)) as kb:
        np.save(micro_kb / "rows.npy", kb.read_rows("stem", kb.token_ids("stem", [entity]))[0])  # (layers, d_ff)
    assert memsvc("inject", "--data", micro_kb, "--token", "Gaul", "--vector", micro_kb / "rows.npy") == (0, "committed version 2: injected 'Gaul'\n")
    facts = corpus.facts("train", [entity])
    code, out = memsvc("generate", "--data", micro_kb, "-n", 1, *[a for f in facts for a in ("--prompt", f.template.format("Gaul"))])
    assert code == 0, out
    assert [line.split(" -> ")[1] for line in out.splitlines()[:-1]] == [f.answer for f in facts]
    model, bank, tokenizer = load_checkpoint(micro_kb / MODEL_DIR)
    model.null_embedding = None
    save_checkpoint(micro_kb / MODEL_DIR, model, bank, tokenizer)
    code, out = memsvc("generate", "--data", micro_kb, "--prompt", "the capital of Gaul is")
    assert (code, out) == (1, "Error: --prompt: 'Gaul' was injected with --vector and the model has no null input "
                              "embedding; inject it --like a known token to use it in prompts\n")
