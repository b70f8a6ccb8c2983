"""Edit evaluation and fact-level fitting on a freshly trained micro demo backbone: EasyEdit
metrics, fitted rows, and persistent edits vs per-request overrides (identical rows and tokens)."""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from clients.backbone.checkpoint import load_checkpoint
from clients.backbone.model import generate
from clients.banks import StoreBank
from clients.editor import Editor, entity_ops, evaluate
from editing.evaluate import (EditRecord, before_prompts, fact_edit_records, format_table, load_records, score_record,
                              summarize)
from editing.fact import fit_fact
from memsvc.cli.demo import MODEL_DIR
from memsvc.core.errors import InvalidArgument
from memsvc.store import KnowledgeBase, StoreConfig
from research.corpus import DemoCorpus
from tests.conftest import MICRO_CORPUS


def open_kb(data):
    return KnowledgeBase(StoreConfig(data_dir=data))


def test_score_and_summarize_count_exactly():
    record = EditRecord(prompt="p", subject="S", target_new="new", ground_truth="old", relation="capital",
                        rephrase_prompts=["r1", "r2"], locality_prompts=["l1", "l2"], entity_prompts=["e1"])
    assert before_prompts([record, record]) == ["l1", "l2", "e1"]
    after = {"p": "new", "r1": "new", "r2": "old", "l1": "a", "l2": "x", "e1": "b"}
    score = score_record(record, {"l1": "a", "l2": "b", "e1": "b"}, lambda ps: [after[p] for p in ps])
    assert score == {"reliability": 1.0, "generalization": 0.5, "locality": 0.5, "other_facts": 1.0}
    other = replace(record, relation="leader", rephrase_prompts=[], entity_prompts=[])
    summary = summarize([record, other], [score, {"reliability": 0.0, "locality": 1.0}])
    assert summary["n"] == 2
    assert summary["overall"] == {"reliability": 0.5, "generalization": 0.5, "locality": 0.75, "other_facts": 1.0}
    assert summary["by_relation"]["leader"] == {"reliability": 0.0, "locality": 1.0}
    assert format_table(summary).splitlines()[-1].split() == ["overall", "0.500", "0.500", "0.750", "1.000"]


def test_load_records_names_the_bad_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"prompt": "p", "subject": "S", "target_new": "t", "extra": 1}) + "\n\n{oops\n")
    with pytest.raises(InvalidArgument, match="line 3 is not JSON"):
        load_records(path)
    path.write_text(json.dumps({"prompt": "p", "subject": "S"}) + "\n")
    with pytest.raises(InvalidArgument, match="line 1 has no 'target_new'"):
        load_records(path)
    path.write_text(json.dumps({"prompt": "p", "subject": "S", "target_new": "t", "extra": 1}) + "\n")
    assert load_records(path) == [EditRecord(prompt="p", subject="S", target_new="t")]


def test_fact_records_change_one_fact_and_keep_the_others():
    corpus = DemoCorpus(MICRO_CORPUS)
    for r in fact_edit_records(corpus, 10, seed=3):
        assert r.ground_truth == corpus.attributes[r.subject][r.relation] != r.target_new
        assert r.target_new in corpus.values[r.relation] and r.subject in r.prompt
        assert len(r.entity_prompts) == 4 * 3 and all(r.subject in p for p in r.entity_prompts)
        assert r.subject not in " ".join(r.locality_prompts)


def test_fit_fact_moves_the_fact_and_writes_only_subject_rows(micro_model):
    model, bank, tokenizer = load_checkpoint(micro_model)
    corpus = DemoCorpus(MICRO_CORPUS)
    rows = bank.weight.detach().numpy().copy()
    record = next(r for r in fact_edit_records(corpus, 40, seed=0) if r.relation == "leader")
    subject = tokenizer.index[record.subject]
    writes, info = fit_fact(model, lambda ids: rows[ids], [tokenizer.encode(record.prompt)], tokenizer.index[record.target_new],
                            [subject], [tokenizer.encode(p) for p in record.entity_prompts])
    assert set(writes.token_ids.tolist()) == {subject} and sorted(writes.layers.tolist()) == [0, 1]
    assert 0 < info["fit_target_prob"] <= 1 and info["fit_steps"] <= 100
    assert all(p.requires_grad for p in model.parameters())  # the backbone is handed back as it came
    edited = rows.copy()
    edited[writes.token_ids, writes.layers] = writes.vectors
    bank.weight.data = torch.from_numpy(edited)
    from clients.backbone.model import predict_next

    assert predict_next(model, bank, tokenizer, [record.prompt]) == [record.target_new]
    with pytest.raises(InvalidArgument, match="subject"):
        fit_fact(model, lambda ids: rows[ids], [tokenizer.encode(record.prompt)], 5, [tokenizer.index[corpus.entities[-1]]
                 if corpus.entities[-1] != record.subject else tokenizer.index[corpus.entities[0]]])


@pytest.mark.parametrize("kind", ["entity", "fact"])
def test_persistent_edit_and_override_give_identical_rows_and_tokens(micro_kb, kind):
    corpus = DemoCorpus(MICRO_CORPUS)
    with open_kb(micro_kb) as kb:
        editor = Editor(kb, "stem", micro_kb / MODEL_DIR)
        source, target = corpus.entities[:2]
        if kind == "entity":
            ops = entity_ops(kb, "stem", source, target)
        else:
            ops = editor.fact_ops(f"the capital of {source} is", corpus.attributes[target]["capital"], source)[0]
        prompt = torch.tensor([editor.encode(f"the capital of {source} is")])
        overridden = generate(editor.model, StoreBank(kb, "stem", overrides=ops), prompt, 3)
        override_rows = kb.lookup("stem", [source], overrides=ops).in_request_order()
        assert kb.version == 1  # an override writes nothing
        kb.edit("stem", ops, message="persistent")
        assert np.array_equal(kb.lookup("stem", [source]).in_request_order(), override_rows)
        assert torch.equal(generate(editor.model, StoreBank(kb, "stem"), prompt, 3), overridden)
        assert editor.tokenizer.decode(overridden[0, -3:-2]) == corpus.attributes[target]["capital"]


def test_evaluate_entity_swaps_meets_locality_and_reliability(micro_kb, tmp_path):
    from research.corpus import write_edit_records

    write_edit_records(tmp_path / "edits.jsonl", DemoCorpus(MICRO_CORPUS), n_records=12)
    with open_kb(micro_kb) as kb:
        summary, results = evaluate(Editor(kb, "stem", micro_kb / MODEL_DIR), load_records(tmp_path / "edits.jsonl"), progress=False)
        assert kb.version == 1
    assert summary["n"] == len(results) == 12
    assert summary["overall"]["locality"] == 1.0  # other entities' prompts never read the edited rows
    assert summary["overall"]["reliability"] >= 0.75
