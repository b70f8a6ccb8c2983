"""Knowledge-edit efficacy on the demo backbone: entity swaps and fact-level edits, EasyEdit metrics;
with --aliases, injected alias tokens used in prompts.

    python bench/edits.py --model memsvc/demo_data --swaps 120 --facts 100
    python bench/edits.py --model memsvc/demo_data --aliases 50

Builds a KB from the checkpoint's bank, writes the demo corpus's entity-swap records
(research/corpus.py write_edit_records) and fact-level records (editing/evaluate.py
fact_edit_records), and evaluates each edit alone through the store as a per-request override
(clients/editor.py evaluate). The baseline measured side by side is the unedited model (no
edit: reliability = how often the prompt already gives target_new). Prints a table, writes
bench/out/edits.png, and prints one JSON line of headline figures last. Test: tests/test_edit_eval.py.

--aliases N: through a real server, inject two aliases of each of N entities (`--like E`, and
`--vector` = E's rows) and ask every fact of the entity (training and held-out templates) through
the alias and through the name. The alias's input embedding is E's (like), or the checkpoint's
null embedding (vector; the shipped demo checkpoint's was fitted on the frozen model by
research/null_embedding.py, and one is fitted the same way in memory for a checkpoint that
has none), with a zero vector as the control. Tests: tests/test_cli_edits.py.
"""
import argparse
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import torch

from clients.editor import Editor, evaluate
from editing.evaluate import fact_edit_records, format_table, load_records, plot_summary
from memsvc.cli.demo import MODEL_DIR, import_checkpoint
from memsvc.store import KnowledgeBase, StoreConfig
from research.corpus import DemoCorpus, write_edit_records

LOG = logging.getLogger("bench.edits")
OUT = Path(__file__).parent / "out"


def run(model, swaps, facts, seed=0):
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "kb"
        shutil.copytree(model, data / MODEL_DIR)
        with KnowledgeBase(StoreConfig(data_dir=data, create=True)) as kb:
            import_checkpoint(kb, data / MODEL_DIR)
            editor = Editor(kb, "stem", data / MODEL_DIR)
            write_edit_records(Path(tmp) / "swaps.jsonl", DemoCorpus(), n_records=swaps, seed=seed)
            suites = {"entity swap": (load_records(Path(tmp) / "swaps.jsonl"), "entity"),
                      "fact edit": (fact_edit_records(DemoCorpus(), facts, seed=seed), "fact")}
            results = {}
            for name, (records, kind) in suites.items():
                start = time.perf_counter()
                summary, _ = evaluate(editor, records, kind)
                summary["seconds_per_edit"] = (time.perf_counter() - start) / len(records)
                unedited = editor.predict([r.prompt for r in records])
                summary["baseline_reliability"] = sum(a == r.target_new for a, r in zip(unedited, records)) / len(records)
                results[name] = summary
    return results


def answers(model, bank, vocab, prompts):
    """Greedy next word after each prompt (prompts of equal length in one batch), injected words allowed."""
    encoded = [vocab.encode(p) for p in prompts]
    out = [""] * len(prompts)
    for length in sorted(set(map(len, encoded))):
        which = [i for i, ids in enumerate(encoded) if len(ids) == length]
        with torch.no_grad():
            logits = model(torch.tensor([encoded[i] for i in which]), bank, extra_embeds=vocab.extra_embeds)  # (n, length, V)
        for i, token in zip(which, logits[:, -1].argmax(-1).tolist()):
            out[i] = vocab.tokenizer.vocab[token]
    return out


def run_aliases(model_dir, n_entities, seed=0):
    """{variant: {label, split: {facts, name, alias, agree}}} accuracies of N entities' facts through a real server."""
    import random

    from clients.banks import StoreBank
    from clients.client import MemoryClient
    from clients.prompts import PromptVocabulary, load_model
    from memsvc.server.spawn import spawn_server, stop_server

    torch.set_num_threads(1)  # tiny batches on a shared machine
    corpus = DemoCorpus()
    entities = random.Random(seed).sample(corpus.entities, n_entities)
    model, in_process, tokenizer = load_model(model_dir)
    null, which = model.null_embedding, "checkpoint's"
    if null is None:
        from research.null_embedding import fit_corpus_null

        start, which = time.perf_counter(), "fitted"
        null = fit_corpus_null(model, in_process, tokenizer, corpus)
        LOG.info("the checkpoint has no null embedding: fitted one in %.1f s", time.perf_counter() - start)
    variants = {"like": ("--like E: E's rows, E's input emb", "Alias{}", None),
                "null": (f"--vector E's rows, {which} null emb", "Vector{}", null),
                "zero": ("--vector E's rows, zero emb", "Vector{}", torch.zeros(model.config.d_model)),
                "control": ("control: mean entity rows, null emb", "Nobody", null)}  # one word for every entity
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "kb"
        with KnowledgeBase(StoreConfig(data_dir=data, create=True)) as kb:
            import_checkpoint(kb, model_dir)
        proc, address = spawn_server(data)
        try:
            with MemoryClient(address) as client:
                for i, e in enumerate(entities):
                    client.inject_token("stem", f"Alias{i}", like=[e])
                    client.inject_token("stem", f"Vector{i}", vector=client.read_rows("stem", client.token_ids("stem", [e]))[0])
                client.inject_token("stem", "Nobody", vector=client.read_rows("stem", client.token_ids("stem", corpus.entities)).mean(0))
                bank = StoreBank(client, "stem")
                results = {}
                for key, (label, alias, null_embedding) in variants.items():
                    model.null_embedding = null_embedding
                    vocab = PromptVocabulary(client, "stem", bank.version, model, tokenizer)
                    results[key] = {"label": label, **{split: alias_scores(model, bank, vocab, corpus, entities, alias, split)
                                                       for split in ("train", "heldout")}}
        finally:
            stop_server(proc)
    return results


def alias_scores(model, bank, vocab, corpus, entities, alias_format, split):
    facts = corpus.facts(split, entities)
    alias = {e: alias_format.format(i) for i, e in enumerate(entities)}
    by_name = answers(model, bank, vocab, [f.prompt for f in facts])
    by_alias = answers(model, bank, vocab, [f.template.format(alias[f.entity]) for f in facts])
    n = len(facts)
    return {"facts": n, "name": sum(a == f.answer for a, f in zip(by_name, facts)) / n,
            "alias": sum(a == f.answer for a, f in zip(by_alias, facts)) / n,
            "agree": sum(a == b for a, b in zip(by_name, by_alias)) / n}


def print_aliases(results, n_entities):
    print(f"\naliases of {n_entities} entities, every fact asked through the name and through the alias")
    print(f"{'alias':<42}{'split':<9}{'facts':>6}{'name':>8}{'alias':>8}{'agree':>8}")
    for r in results.values():
        for split in ("train", "heldout"):
            s = r[split]
            print(f"{r['label']:<42}{split:<9}{s['facts']:>6}{s['name']:>8.3f}{s['alias']:>8.3f}{s['agree']:>8.3f}")
    print(json.dumps({f"alias_{key}_{split}": round(r[split]["alias"], 4) for key, r in results.items() for split in ("train", "heldout")}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="memsvc/demo_data", help="demo backbone checkpoint directory")
    parser.add_argument("--swaps", type=int, default=120)
    parser.add_argument("--facts", type=int, default=100)
    parser.add_argument("--aliases", type=int, default=0, help="instead: inject aliases of N entities (see above)")
    args = parser.parse_args()
    if args.aliases:
        logging.basicConfig(level=logging.INFO)
        return print_aliases(run_aliases(args.model, args.aliases), args.aliases)
    results = run(args.model, args.swaps, args.facts)
    for name, s in results.items():
        print(f"\n{name}: {s['n']} edits, {s['seconds_per_edit']:.2f} s/edit, "
              f"unedited baseline reliability {s['baseline_reliability']:.3f}")
        print(format_table(s))
    OUT.mkdir(exist_ok=True)
    plot_summary(results, OUT / "edits.png", title=f"knowledge edits on {Path(args.model).name}")
    headline = {f"{kind.split()[0]}_{m}": round(v, 4) for kind, s in results.items() for m, v in s["overall"].items()}
    headline.update({f"{kind.split()[0]}_reliability_over_baseline": round(s["overall"]["reliability"] - s["baseline_reliability"], 4)
                     for kind, s in results.items()})
    print(json.dumps(headline))


if __name__ == "__main__":
    main()
