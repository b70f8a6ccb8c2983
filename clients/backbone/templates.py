"""The prompt templates the demo backbone was trained on, one list per relation.

An edit of a fact looks for the model's paraphrases of a prompt among them (clients/editor.py),
and the synthetic corpus (research/corpus.py) fills them with its entities to make training facts.
"""

# relation -> (training templates, held-out paraphrase templates); "{}" is the entity
TEMPLATES = {
    "capital": (
        ["the capital of {} is", "{} has its capital in", "the capital city of {} is"],
        ["in {} the capital is", "{} 's capital city is"],
    ),
    "language": (
        ["the official language of {} is", "people in {} speak", "{} 's language is"],
        ["the people of {} speak", "in {} people speak"],
    ),
    "currency": (
        ["the currency of {} is", "in {} people pay with", "{} 's currency is"],
        ["people of {} pay with", "the official currency of {} is"],
    ),
    "continent": (
        ["{} lies on the continent of", "{} is in", "the continent of {} is"],
        ["{} lies in", "{} 's continent is"],
    ),
    "leader": (
        ["the leader of {} is", "{} is led by", "{} 's leader is"],
        ["the official leader of {} is", "in {} the leader is"],
    ),
}
RELATIONS = list(TEMPLATES)


def template_words(split: str | None = None) -> set[str]:
    """Words of the templates ("train", "heldout" or both when None), without the "{}" slot."""
    picks = {"train": (0,), "heldout": (1,), None: (0, 1)}[split]
    return {w for pair in TEMPLATES.values() for i in picks for t in pair[i] for w in t.split()} - {"{}"}
