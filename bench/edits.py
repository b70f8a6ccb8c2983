"""Knowledge-edit efficacy on the demo backbone: entity swaps and fact-level edits, EasyEdit metrics.

    python bench/edits.py --model memsvc/demo_data --swaps 120 --facts 100

Builds a KB from the checkpoint's bank, writes the demo corpus's entity-swap records
(clients/backbone/demo.py write_edit_records) and fact-level records (editing/evaluate.py
fact_edit_records), and evaluates each edit alone through the store as a per-request override
(memsvc/cli_edits.py evaluate). The baseline measured side by side is the unedited model (no
edit: reliability = how often the prompt already gives target_new). Prints a table, writes
bench/out/edits.png, and prints one JSON line of headline figures last. Test: tests/test_edit_eval.py.
"""
import argparse
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

from clients.backbone.demo import DemoCorpus, write_edit_records
from editing.evaluate import fact_edit_records, format_table, load_records, plot_summary
from memsvc.cli_edits import Editor, evaluate
from memsvc.demo import MODEL_DIR, import_checkpoint
from memsvc.store import KnowledgeBase, StoreConfig

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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="memsvc/demo_data", help="demo backbone checkpoint directory")
    parser.add_argument("--swaps", type=int, default=120)
    parser.add_argument("--facts", type=int, default=100)
    args = parser.parse_args()
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
