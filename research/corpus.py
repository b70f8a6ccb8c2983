"""A deterministic synthetic world of facts for training the demo backbone (its tokenizer and
templates are the model's own, in clients/backbone).

Every entity (a made-up country) and every attribute value (capital, language, currency,
continent, leader) is one token, so a fact is a next-token prediction after a template prompt:

    "<bos> the capital of Morvania is" -> "Taskburg"

Training templates teach the facts; HELD-OUT paraphrase templates (only words seen in training,
never the same template) measure whether an edit generalises. `write_edit_records` writes
EasyEdit-style entity-swap requests for the editing evaluation.
"""

import json
import random
from dataclasses import dataclass

from clients.backbone.templates import RELATIONS, TEMPLATES, template_words
from clients.backbone.tokenizer import SPECIAL_TOKENS, WordTokenizer

SYLLABLES = [
    "ka", "mor", "ve", "ta", "lin", "do", "sa", "rei", "bo", "nu", "gal", "te", "vi", "ro", "pa",
    "shen", "lu", "ar", "zo", "mi", "den", "ko", "fa", "tor", "el", "qui", "ha", "nor", "bri", "sel",
]  # fmt: skip
# name endings by kind, so a reader can tell a country from a city or a person
ENDINGS = {
    "entity": ["ia", "land", "stan", "ar", "ova"],
    "capital": ["burg", "ville", "polis", "grad", "port"],
    "leader": ["us", "o", "ina", "ric", "en"],
    "language": ["ish", "ese", "ic"],
    "currency": ["dor", "mark", "lira", "crown"],
    "continent": ["ea", "oria", "anda"],
}


@dataclass
class CorpusConfig:
    n_entities: int = 200
    n_languages: int = 40  # languages, currencies and continents are shared between entities
    n_currencies: int = 50
    n_continents: int = 6
    seed: int = 0


@dataclass(frozen=True)
class Fact:
    entity: str
    relation: str
    prompt: str  # the template with the entity filled in, without <bos>
    answer: str  # one token
    template: str


def _make_names(rng: random.Random, kind: str, n: int, taken: set[str]) -> list[str]:
    """n distinct made-up names of one kind, none of them in `taken` (which grows)."""
    names = []
    while len(names) < n:
        stem = "".join(rng.choice(SYLLABLES) for _ in range(rng.choice((1, 2))))
        name = stem + rng.choice(ENDINGS[kind])
        name = name.capitalize() if kind in ("entity", "capital", "leader", "continent") else name
        if name not in taken:
            taken.add(name)
            names.append(name)
    return names


class DemoCorpus:
    """Entities with one value per relation; everything derives from config.seed."""

    def __init__(self, config: CorpusConfig = CorpusConfig()):
        self.config = config
        rng = random.Random(config.seed)
        taken = template_words()
        self.entities = _make_names(rng, "entity", config.n_entities, taken)
        pools = {
            "capital": _make_names(rng, "capital", config.n_entities, taken),
            "leader": _make_names(rng, "leader", config.n_entities, taken),
            "language": _make_names(rng, "language", config.n_languages, taken),
            "currency": _make_names(rng, "currency", config.n_currencies, taken),
            "continent": _make_names(rng, "continent", config.n_continents, taken),
        }
        self.values = pools  # relation -> every value a relation can take
        # capitals and leaders are unique per entity; the rest are drawn with repeats
        self.attributes = {
            e: {
                r: pools[r][i] if r in ("capital", "leader") else rng.choice(pools[r])
                for r in RELATIONS
            }
            for i, e in enumerate(self.entities)
        }

    def tokenizer(self) -> WordTokenizer:
        words = sorted(template_words())
        values = [v for r in RELATIONS for v in self.values[r]]
        return WordTokenizer(SPECIAL_TOKENS + words + self.entities + values)

    def facts(self, split: str = "train", entities: list[str] | None = None) -> list[Fact]:
        """Every (entity, relation, template) fact; split "train" or "heldout" picks the templates."""
        if split not in ("train", "heldout"):
            raise ValueError(f"split must be 'train' or 'heldout', not {split!r}")
        return [
            Fact(e, r, t.format(e), self.attributes[e][r], t)
            for e in (self.entities if entities is None else entities)
            for r in RELATIONS
            for t in TEMPLATES[r][split == "heldout"]
        ]

    def entity_pairs(self, n: int, seed: int = 0) -> list[tuple[str, str]]:
        """n (source, target) pairs of distinct entities, deterministic in seed."""
        rng = random.Random(seed)
        return [tuple(rng.sample(self.entities, 2)) for _ in range(n)]


def write_edit_records(path, corpus: DemoCorpus, n_records: int = 120, n_locality: int = 3, seed: int = 0) -> int:
    """Write EasyEdit-style JSONL entity-swap requests; returns how many were written.

    Each record makes `subject` answer as `target_subject` does for one relation (in STEM terms:
    the subject's token uses the target's rows). Fields: prompt, subject, target_new,
    ground_truth, relation, target_subject, rephrase_prompts (held-out templates),
    locality_prompts and locality_ground_truth (other entities' facts, which must not change)."""
    rng = random.Random(seed)
    records = []
    while len(records) < n_records:
        source, target = rng.sample(corpus.entities, 2)
        relation = rng.choice(RELATIONS)
        old, new = corpus.attributes[source][relation], corpus.attributes[target][relation]
        if old == new:  # a shared language, currency or continent: nothing to edit
            continue
        others = [e for e in rng.sample(corpus.entities, n_locality + 2) if e not in (source, target)]
        locality = [rng.choice(corpus.facts("train", [e])) for e in others[:n_locality]]
        train_templates, held_templates = TEMPLATES[relation]
        records.append({
            "prompt": train_templates[0].format(source),
            "subject": source,
            "target_new": new,
            "ground_truth": old,
            "relation": relation,
            "target_subject": target,
            "rephrase_prompts": [t.format(source) for t in held_templates],
            "locality_prompts": [f.prompt for f in locality],
            "locality_ground_truth": [f.answer for f in locality],
        })  # fmt: skip
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    return len(records)
