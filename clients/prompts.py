"""The demo backbone over a table: its checkpoint, and the words a prompt may use at a version
(the trained vocabulary plus the tokens injected by then)."""
from pathlib import Path

from memsvc.core.errors import InvalidArgument


def load_model(model_dir):
    """(model, bank, tokenizer) of the checkpoint in model_dir; a one-line error without one."""
    from clients.backbone.checkpoint import load_checkpoint

    if not (Path(model_dir) / "model.safetensors").exists():
        raise InvalidArgument(f"--model: no backbone checkpoint in {model_dir} (run `memsvc train-demo`)")
    return load_checkpoint(model_dir)


def encode_prompt(tokenizer, prompt, unusable=None):
    """Token ids of a prompt (with <bos>); unusable: {token_id: why} of injected tokens that have
    no input embedding."""
    ids = tokenizer.encode(prompt)
    unknown = [w for w, i in zip(prompt.split(), ids[1:]) if i == tokenizer.unk_id]
    if unknown:
        raise InvalidArgument(f"--prompt: unknown word {unknown[0]!r} (not in the model's vocabulary)")
    for i in ids:
        if unusable and i in unusable:
            raise InvalidArgument(f"--prompt: {unusable[i]}")
    return ids


class PromptVocabulary:
    """The words a prompt may use at one version of a table: the model's trained vocabulary plus
    the tokens injected by then, each with an input embedding rebuilt from its inject commit
    (editing/inject.py). Injected words are for prompts; the model never outputs them."""

    def __init__(self, store, table, version, model, tokenizer):
        from clients.backbone.tokenizer import WordTokenizer
        from editing.inject import inject_commits, injected_tokens, input_embeddings

        self.store, self.table, self.version = store, table, version
        words = store.vocabulary(table, version)
        V = model.config.vocab_size
        if words[:V] != tokenizer.vocab[:V]:
            raise InvalidArgument(f"--table: the vocabulary of table {table!r} is not the model's")
        self.tokenizer = WordTokenizer(words)
        self.extra_embeds, self.unusable = None, {}
        if len(words) > V:
            tokens = injected_tokens(words, V, inject_commits(store, table, version, set(words[V:]) - {""}))
            self.extra_embeds, self.unusable = input_embeddings(model.tok_emb.weight.detach(), model.null_embedding,
                                                                tokens, len(words) - V)

    def encode(self, prompt):
        from editing.inject import inject_commits

        word = next((w for w in prompt.split() if w not in self.tokenizer.index), None)
        if word is not None:
            c = inject_commits(self.store, self.table, self.version, {word}).get(word)
            gone = f": injected in version {c.version}, removed since" if c else ""
            raise InvalidArgument(f"--prompt: unknown word {word!r} (not in table {self.table!r} at version {self.version}{gone})")
        return encode_prompt(self.tokenizer, prompt, self.unusable)
