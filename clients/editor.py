"""Knowledge edits of the demo backbone with measured efficacy (EasyEdit reliability,
generalization, locality), for `memsvc edit --entity/--fact` and `memsvc eval-edits`.

Every prediction decodes with the backbone reading its STEM rows from a store API (a KnowledgeBase
or a MemoryClient, the caller's); an edit under evaluation is a per-request override (the same rows
a commit would write; nothing written)."""
from memsvc.core.errors import InvalidArgument


def entity_ops(store, table, source, target, mode="auto", layers=(), version=None, shared_ok=False):
    """RowOps that make the pieces of `source` read `target`'s rows (editing/entity.py modes): the
    pieces the table's tokenizer gives each in running text (words split on spaces for a word list).
    An entity of several pieces shares them with other words ("new" of "new york"): refused unless
    ``shared_ok``, because the edit rewrites them for every word that uses them."""
    from editing.entity import EntityEdit, entity_row_ops

    ids, pieces = entity_ids(store, table, version)
    edit = EntityEdit(source=ids(source, "entity"), target=ids(target, "to"), mode=mode, layers=list(layers))
    if len(edit.source) > 1 and not shared_ok:
        raise InvalidArgument(f"--entity: {source!r} is {len(edit.source)} pieces other words share too "
                              f"({', '.join(pieces(edit.source))}); the edit would change them wherever they occur; "
                              "pass --shared-ok to edit them anyway")
    ops = entity_row_ops(edit, lambda tokens: store.read_rows(table, tokens, version))
    if not ops:
        raise InvalidArgument("--to: the edit changes nothing (source and target are the same tokens)")
    return ops


def table_vocabulary(store, table, version=None):
    """The Vocabulary of a table imported with its tokenizer, or None for a word-list table (whose
    words the store resolves exactly, with errors naming the table). The tokenizer is fetched once."""
    from editing.tokens import Vocabulary

    tokenizer = store.tokenizer(table, version)
    return Vocabulary.stored(store.vocabulary(table, version), tokenizer) if tokenizer[0] else None


def entity_ids(store, table, version=None) -> tuple:
    """(ids(text, field), pieces(ids)) of a table: its tokenizer's running-text pieces, or its words
    split on spaces for a word-list table (resolved by the store, whose errors name the table)."""
    vocab = table_vocabulary(store, table, version)
    if vocab is not None:
        return vocab.encode_entity, vocab.pieces
    words = store.vocabulary(table, version)
    return (lambda text, field: store.token_ids(table, text.split(), version, field).tolist(),
            lambda token_ids: [words[i] for i in token_ids])


def entity_pieces(store, table, text, version=None) -> str:
    """What an entity resolves to in a table, for a dry run: its pieces and their ids."""
    ids, pieces = entity_ids(store, table, version)
    found = ids(text, "entity")
    shared = " (pieces other words share: editing them needs --shared-ok)" if len(found) > 1 else ""
    return f"{text!r} -> " + " ".join(f"{p}({i})" for p, i in zip(pieces(found), found)) + shared


def resolve_token(vocab, word):
    """A typed word as a row op names it (``vocab``: table_vocabulary's): the word itself for a
    word-list table (the store resolves it exactly), else the one piece the table's tokenizer reads
    for it ("Paris" -> "paris" uncased)."""
    if word is None or vocab is None:
        return dict(token=word)
    return dict(token_id=vocab.resolve(word, "--token"))


def guess_subject(prompt):
    """The prompt's capitalised words (a sentence-initial one only when it is the only one)."""
    words = [w for w in prompt.split() if w[:1].isupper()]
    if len(words) > 1 and prompt.split()[0] == words[0]:
        words = words[1:]
    if not words:
        raise InvalidArgument(f"--subject: cannot tell the subject of {prompt!r}; name it with --subject")
    return " ".join(words)


class Editor:
    """The backbone decoding against one table at one pinned version, with edits as overrides."""

    def __init__(self, store, table, model_dir, version=None):
        import torch

        from clients.prompts import load_model

        torch.set_num_threads(1)  # tiny batches: more threads only contend on a shared machine
        self.store, self.table = store, table
        self.version = store.resolve_version(version)
        self.model, _, self.tokenizer = load_model(model_dir)

    def predict(self, prompts, ops=()):
        """Greedy next word after each prompt, reading rows (with ops applied) from the service."""
        from clients.backbone.model import predict_next
        from clients.banks import StoreBank

        return predict_next(self.model, StoreBank(self.store, self.table, self.version, list(ops)), self.tokenizer, prompts)

    def encode(self, prompt):
        from clients.prompts import encode_prompt

        return encode_prompt(self.tokenizer, prompt)

    def fact_context(self, prompt, subject):
        """(paraphrases, keep): the backbone's training templates about the subject that answer
        as the prompt does (same fact) and those that do not (the subject's other facts)."""
        from clients.backbone.templates import TEMPLATES

        unknown = self.tokenizer.unk_id
        candidates = [t.format(subject) for train, _ in TEMPLATES.values() for t in train]
        candidates = [p for p in candidates if p != prompt and unknown not in self.tokenizer.encode(p)]
        answers = self.predict([prompt] + candidates)
        same = [p for p, a in zip(candidates, answers[1:]) if a == answers[0]]
        return answers[0], same, [p for p in candidates if p not in same]

    def fact_ops(self, prompt, target, subject, config=None, layers=()):
        """Fit the subject's rows so that prompt -> target; returns (ops, EditRecord, fit info)."""
        from editing.evaluate import EditRecord
        from editing.fact import FactConfig, fit_fact, writes_to_ops

        target_id = self.tokenizer.index.get(target)
        if target_id is None:
            raise InvalidArgument(f"--target: unknown word {target!r} (not in the model's vocabulary)")
        old, paraphrases, keep = self.fact_context(prompt, subject)
        writes, info = fit_fact(self.model, lambda ids: self.store.read_rows(self.table, ids, self.version),
                                [self.encode(p) for p in [prompt] + paraphrases], target_id,
                                self.store.token_ids(self.table, subject.split(), self.version, "subject"),
                                [self.encode(p) for p in keep], layers, config or FactConfig())
        record = EditRecord(prompt=prompt, subject=subject, target_new=target, ground_truth=old, entity_prompts=keep)
        return writes_to_ops(writes), record, info

    def score(self, record, ops, before=None):
        """The record's EasyEdit metrics with ops as an override (before: pre-edit predictions)."""
        from editing.evaluate import before_prompts, score_record

        if before is None:
            prompts = before_prompts([record])
            before = dict(zip(prompts, self.predict(prompts))) if prompts else {}
        return score_record(record, before, lambda prompts: self.predict(prompts, ops))


def evaluate(editor, records, kind="auto", progress=True):
    """(summary, [(ops, score)]) of records applied one at a time as overrides."""
    from tqdm import tqdm

    from editing.evaluate import before_prompts, summarize

    prompts = before_prompts(records)
    before = dict(zip(prompts, editor.predict(prompts))) if prompts else {}
    results = []
    for record in tqdm(records, desc="eval-edits", disable=not progress):
        if kind == "entity" or (kind == "auto" and record.target_subject):
            if not record.target_subject:
                raise InvalidArgument(f"records: {record.prompt!r} has no target_subject for an entity edit")
            ops = entity_ops(editor.store, editor.table, record.subject, record.target_subject, version=editor.version,
                             shared_ok=True)  # overrides: measured, nothing written
        else:
            ops = editor.fact_ops(record.prompt, record.target_new, record.subject)[0]
        results.append((ops, editor.score(record, ops, before)))
    return summarize(records, [s for _, s in results]), results
