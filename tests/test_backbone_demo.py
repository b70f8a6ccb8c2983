"""The demo world: corpus determinism, templates, tokenizer files, edit records, a tiny training run."""

import json
from dataclasses import replace

import torch
from tokenizers import Tokenizer

from clients.backbone.checkpoint import load_checkpoint
from clients.backbone.model import ModelConfig
from clients.backbone.templates import RELATIONS, TEMPLATES, template_words
from clients.backbone.tokenizer import WordTokenizer
from research.corpus import CorpusConfig, DemoCorpus, write_edit_records
from research.train import TrainConfig, entity_swap_effect, fact_accuracy, train_demo


def test_corpus_is_deterministic_and_seeded():
    a, b, c = DemoCorpus(), DemoCorpus(), DemoCorpus(CorpusConfig(seed=1))
    assert a.entities == b.entities and a.attributes == b.attributes
    assert a.facts() == b.facts()
    assert a.entities != c.entities
    assert len(a.entities) == len(set(a.entities)) == 200
    assert len(a.facts("train")) == 200 * sum(len(t[0]) for t in TEMPLATES.values())
    assert len({a.attributes[e]["capital"] for e in a.entities}) == 200  # one capital each


def test_heldout_templates_are_new_but_use_only_trained_words():
    for relation in RELATIONS:
        train, held = TEMPLATES[relation]
        assert held and not set(train) & set(held)
    assert template_words("heldout") <= template_words("train")
    corpus = DemoCorpus(CorpusConfig(n_entities=5))
    assert {f.template for f in corpus.facts("heldout")}.isdisjoint(f.template for f in corpus.facts("train"))


def test_tokenizer_round_trip_and_tokenizer_json(tmp_path):
    corpus = DemoCorpus(CorpusConfig(n_entities=20))
    tok = corpus.tokenizer()
    fact = corpus.facts()[7]
    text = f"{fact.prompt} {fact.answer}"
    ids = tok.encode(text)
    assert ids[0] == tok.bos_id and len(ids) == len(text.split()) + 1
    assert tok.decode(ids) == text
    assert tok.encode("never-seen", add_bos=False) == [tok.unk_id]
    assert all(len(tok.encode(v, add_bos=False)) == 1 for values in corpus.values.values() for v in values)
    tok.save(tmp_path / "vocab.txt")
    assert WordTokenizer.load(tmp_path / "vocab.txt").vocab == tok.vocab
    tok.save_hf(tmp_path / "tokenizer.json")
    hf = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert hf.get_vocab_size() == len(tok)
    assert hf.encode(text + " never-seen").ids == tok.encode(text + " never-seen")
    assert hf.decode(ids) == text


def test_edit_records(tmp_path):
    corpus = DemoCorpus()
    path = tmp_path / "edits.jsonl"
    assert write_edit_records(path, corpus) == 120
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 120
    by_prompt = {f.prompt: f for f in corpus.facts()}
    for r in records:
        source, target, relation = r["subject"], r["target_subject"], r["relation"]
        assert source in r["prompt"] and source != target
        assert r["ground_truth"] == corpus.attributes[source][relation] != r["target_new"]
        assert r["target_new"] == corpus.attributes[target][relation]
        assert r["rephrase_prompts"] == [t.format(source) for t in TEMPLATES[relation][1]]
        for prompt, answer in zip(r["locality_prompts"], r["locality_ground_truth"], strict=True):
            assert by_prompt[prompt].answer == answer and by_prompt[prompt].entity not in (source, target)


def test_tiny_training_run_learns_facts(tmp_path):
    corpus_config = CorpusConfig(n_entities=6, n_languages=3, n_currencies=3, n_continents=2)
    train_config = TrainConfig(corpus=corpus_config, steps=250, lr=1e-2, warmup_steps=10, batch_size=32, swap_pairs=3)
    model_config = ModelConfig(d_model=32, d_ff=64, n_layer=2, n_head=2, max_seq_len=16)
    metrics = train_demo(model_config, train_config, tmp_path, progress=False)
    assert metrics["final_loss"] < 0.6 * metrics["first_loss"]
    model, bank, tokenizer = load_checkpoint(tmp_path)
    corpus = DemoCorpus(corpus_config)
    facts = corpus.facts()
    assert fact_accuracy(model, bank, tokenizer, facts) == metrics["fact_accuracy"] >= 0.8
    before = bank.weight.clone()
    entity_swap_effect(model, bank, tokenizer, corpus, corpus.entity_pairs(3))
    assert torch.equal(bank.weight, before)  # the measurement leaves the bank as it was
    assert model.null_embedding.shape == (32,)  # the vector that hid entities in training
    assert vector_alias_accuracy(model, bank, tokenizer, corpus) >= 0.8


def vector_alias_accuracy(model, bank, tokenizer, corpus):
    """Every fact of every entity asked through an alias injected `--vector` with the entity's rows
    (id V, rows appended to the bank, input embedding from editing/inject.py: the null embedding)."""
    from clients.backbone.model import InProcessBank
    from editing.inject import InjectedToken, input_embeddings

    V = model.config.vocab_size
    extra, problems = input_embeddings(model.tok_emb.weight.detach(), model.null_embedding, [InjectedToken(V, "Alias", "vector")], 1)
    assert not problems and torch.equal(extra[0], model.null_embedding)
    hits = total = 0
    for e in corpus.entities:
        wider = InProcessBank(replace(model.config, vocab_size=V + 1), torch.cat([bank.weight, bank.weight[tokenizer.index[e]][None]]))
        for f in corpus.facts("train", [e]):
            ids = torch.tensor([[V if i == tokenizer.index[e] else i for i in tokenizer.encode(f.prompt)]])  # (1, T)
            with torch.no_grad():
                hits += tokenizer.vocab[model(ids, wider, extra_embeds=extra)[0, -1].argmax()] == f.answer
            total += 1
    return hits / total
