"""EasyEdit metrics of knowledge edits, computed from a "predict the next token" callable.

A predictor maps prompts to the model's greedy next word: ``predict(prompts) -> [word]``. The
caller decides where the rows come from (before: the table as it is; after: the same reads with
the edit applied), so these metrics never know about gRPC or the store.

    reliability     the edit prompt now gives target_new
    generalization  its held-out paraphrases (rephrase_prompts) give target_new too
    locality        unrelated prompts (other entities' facts) predict what they predicted before
    other_facts     the subject's other facts (entity_prompts) predict what they predicted before
                    (fact-level edits: one fact moves, the entity's others stay)

Locality is agreement of the post-edit prediction with the pre-edit one, as in EasyEdit: it
measures the edit, not the backbone's accuracy.
"""
import json
import random
from dataclasses import dataclass, field, fields

from memsvc.core.errors import InvalidArgument

METRICS = ("reliability", "generalization", "locality", "other_facts")


@dataclass
class EditRecord:
    """One EasyEdit-style request (the fields of research/corpus.py write_edit_records)."""

    prompt: str
    subject: str
    target_new: str
    ground_truth: str = ""
    relation: str = ""
    target_subject: str = ""  # entity swaps: the entity whose rows the subject takes
    rephrase_prompts: list = field(default_factory=list)
    locality_prompts: list = field(default_factory=list)
    locality_ground_truth: list = field(default_factory=list)
    entity_prompts: list = field(default_factory=list)  # the subject's other facts

    def request_fields(self) -> dict:
        """The fields a commit records (ROME/EasyEdit)."""
        return dict(prompt=self.prompt, subject=self.subject, target_new=self.target_new, ground_truth=self.ground_truth)


def load_records(path) -> list:
    """EditRecords from a JSONL file; errors name the line and the field."""
    known = {f.name for f in fields(EditRecord)}
    records = []
    try:
        lines = open(path, encoding="utf-8").read().splitlines()
    except OSError as e:
        raise InvalidArgument(f"records: cannot read {str(path)!r}: {e}") from e
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as e:
            raise InvalidArgument(f"records: line {n} is not JSON ({e})") from None
        if not isinstance(raw, dict):
            raise InvalidArgument(f"records: line {n} is not a JSON object")
        missing = [k for k in ("prompt", "subject", "target_new") if not raw.get(k)]
        if missing:
            raise InvalidArgument(f"records: line {n} has no {missing[0]!r}")
        records.append(EditRecord(**{k: v for k, v in raw.items() if k in known}))
    if not records:
        raise InvalidArgument(f"records: {str(path)!r} holds no records")
    return records


def before_prompts(records) -> list:
    """The prompts whose pre-edit predictions locality needs (unique, in first-seen order)."""
    return list(dict.fromkeys(p for r in records for p in r.locality_prompts + r.entity_prompts))


def score_record(record, before, predict_after) -> dict:
    """One record's metrics. before: prompt -> pre-edit word (see before_prompts);
    predict_after(prompts) -> post-edit words. A metric with no prompts is left out."""
    groups = {"reliability": [record.prompt], "generalization": record.rephrase_prompts,
              "locality": record.locality_prompts, "other_facts": record.entity_prompts}
    prompts = [p for g in groups.values() for p in g]
    after = iter(predict_after(prompts))
    score = {}
    for metric, group in groups.items():
        hits = [next(after) == (record.target_new if metric in ("reliability", "generalization") else before[p])
                for p in group]
        if hits:
            score[metric] = sum(hits) / len(hits)
    return score


def summarize(records, scores) -> dict:
    """Means per relation and overall: {"overall": {metric: mean}, "by_relation": {...}, "n": n}."""
    def means(pairs):
        out = {}
        for metric in METRICS:
            values = [s[metric] for _, s in pairs if metric in s]
            if values:
                out[metric] = sum(values) / len(values)
        return out

    pairs = list(zip(records, scores))
    relations = sorted({r.relation or "-" for r in records})
    return {"n": len(pairs), "overall": means(pairs),
            "by_relation": {rel: means([(r, s) for r, s in pairs if (r.relation or "-") == rel]) for rel in relations}}


def format_table(summary) -> str:
    """The summary as a plain text table: one row per relation, then overall."""
    metrics = [m for m in METRICS if m in summary["overall"]]
    lines = [f"{'relation':<12}" + "".join(f"{m:>16}" for m in metrics)]
    rows = list(summary["by_relation"].items()) + [("overall", summary["overall"])]
    for name, values in rows:
        lines.append(f"{name:<12}" + "".join(f"{values[m]:>16.3f}" if m in values else f"{'-':>16}" for m in metrics))
    return "\n".join(lines)


def plot_summary(summaries, path, title="knowledge edits"):
    """A grouped bar chart (PNG) of overall metrics; summaries: {label: summary}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in METRICS if any(m in s["overall"] for s in summaries.values())]
    width = 0.8 / max(1, len(summaries))
    fig, ax = plt.subplots(figsize=(1.8 * len(metrics) + 2, 3.5))
    for i, (label, s) in enumerate(summaries.items()):
        xs = [j + i * width for j in range(len(metrics))]
        ax.bar(xs, [s["overall"].get(m, 0.0) for m in metrics], width, label=f"{label} (n={s['n']})")
    ax.set_xticks([j + width * (len(summaries) - 1) / 2 for j in range(len(metrics))], metrics)
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def fact_edit_records(corpus, n, seed=0, n_locality=3) -> list:
    """n fact-level EditRecords on a demo corpus (research/corpus.py DemoCorpus): one fact
    of an entity gets another value of its relation; the entity's other relations must stay.

    Prompts are the first training template; rephrases the held-out ones; entity_prompts the
    entity's facts of the other relations (training templates)."""
    rng = random.Random(seed)
    records = []
    while len(records) < n:
        entity, relation = rng.choice(corpus.entities), rng.choice(list(corpus.values))
        old = corpus.attributes[entity][relation]
        new = rng.choice([v for v in corpus.values[relation] if v != old])
        others = [e for e in rng.sample(corpus.entities, n_locality + 1) if e != entity][:n_locality]
        locality = [rng.choice(corpus.facts("train", [e])) for e in others]
        own = corpus.facts("train", [entity])
        records.append(EditRecord(
            prompt=next(f.prompt for f in own if f.relation == relation), subject=entity, target_new=new,
            ground_truth=old, relation=relation,
            rephrase_prompts=[f.prompt for f in corpus.facts("heldout", [entity]) if f.relation == relation],
            locality_prompts=[f.prompt for f in locality], locality_ground_truth=[f.answer for f in locality],
            entity_prompts=[f.prompt for f in own if f.relation != relation]))
    return records
