"""Injected tokens in prompts: what an inject commit records, and the input embeddings that let a
backbone read a token it was never trained on.

`memsvc inject --token NEW` grows a bank by one row per STEM layer, so the bank serves NEW's rows.
The backbone's input embedding (tok_emb) and output head keep their trained size, so an injected
token gets its input embedding here, rebuilt by any worker from the commit log alone:

    --like A [B ...]   the mean of the like tokens' input embeddings (the rows are their mean too)
    --vector ...       the model's null embedding (the shared vector that stood in for entities
                       during training), when the model has one; else the token cannot be used

The inject commit's request records the new word (subject) and, as JSON in target_new, the
source and the like tokens by word and id (ids are never reused, so they stay valid):

    >>> inject_request("Espana", ["Spain"], [412]).target_new
    '{"source": "like", "like": ["Spain"], "like_ids": [412]}'
"""
import json
from dataclasses import dataclass, field

from memsvc.core.values import EditRequest


def inject_request(word, like_words=(), like_ids=()) -> EditRequest:
    """The request fields of an inject commit (source "like" when like tokens are given, else "vector")."""
    like_ids = [int(i) for i in like_ids]
    source = {"source": "like" if like_ids else "vector", "like": list(like_words), "like_ids": like_ids}
    return EditRequest(subject=word, target_new=json.dumps(source))


def parse_inject_request(request: EditRequest) -> dict | None:
    """{"source", "like", "like_ids"} of an inject commit's request, or None (commits from before
    injections recorded their source)."""
    try:
        source = json.loads(request.target_new)
    except ValueError:
        return None
    return source if isinstance(source, dict) and source.get("source") in ("like", "vector") else None


@dataclass
class InjectedToken:
    token_id: int
    word: str
    source: str = ""  # "like", "vector", or "" when the log has no record (e.g. collected by gc)
    like_ids: list = field(default_factory=list)
    version: int = 0  # the inject commit (0: unknown)


def inject_commits(store, table, version, words) -> dict:
    """word -> the newest inject commit (CommitInfo) of `table` at or below `version` that added it."""
    found = {}
    for c in store.log(table=table):  # newest first
        if c.kind == "inject" and c.version <= version and c.request.subject in words:
            found.setdefault(c.request.subject, c)
    return found


def injected_tokens(vocabulary, first_id, commits) -> list:
    """The tokens of `vocabulary` (words by id, '' for ids that do not exist) from first_id on,
    with how each was injected according to `commits` (see inject_commits)."""
    out = []
    for token_id, word in enumerate(vocabulary[first_id:], start=first_id):
        if not word:
            continue
        c = commits.get(word)
        source = parse_inject_request(c.request) if c is not None else None
        out.append(InjectedToken(token_id, word, **({"source": source["source"], "like_ids": source["like_ids"],
                                                     "version": c.version} if source else {})))
    return out


def input_embeddings(tok_emb, null, tokens, n_extra):
    """(extra (n_extra, C), problems {token_id: message}): the input embedding of token id
    V + i in extra[i] (V = len(tok_emb)) for the injected `tokens`; ids without one get zeros
    and a message saying why. null: the model's null embedding (C,) or None."""
    import torch

    V = len(tok_emb)
    extra = torch.zeros(n_extra, tok_emb.shape[1], dtype=tok_emb.dtype)
    problems = {i: f"token id {i} does not exist at this version" for i in range(V, V + n_extra)}
    for t in sorted(tokens, key=lambda t: t.token_id):  # a like token injected earlier is built first
        usable = t.source == "like" and t.like_ids and all(i < V or i not in problems for i in t.like_ids)
        if usable:
            extra[t.token_id - V] = torch.stack([tok_emb[i] if i < V else extra[i - V] for i in t.like_ids]).mean(0)
        elif null is not None:
            extra[t.token_id - V] = null
        else:
            how = {"vector": "with --vector", "like": "like a token that no longer exists"}.get(t.source, "with no recorded source")
            problems[t.token_id] = (f"{t.word!r} was injected {how} and the model has no null input embedding; "
                                    f"inject it --like a known token to use it in prompts")
            continue
        problems.pop(t.token_id)
    return extra, problems

