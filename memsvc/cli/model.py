"""CLI commands around the backbone: train the demo model, decode against the service."""
from pathlib import Path

import click

from memsvc.cli.main import cli, open_store, store_options, table_option
from memsvc.core.errors import InvalidArgument


@cli.command(name="train-demo")
@click.option("--data", envvar="MEMSVC_DATA", default="./memsvc-data", show_default=True, type=click.Path(file_okay=False))
@click.option("--preset", type=click.Choice(["demo", "tiny"]), default="demo", show_default=True)
@click.option("--steps", type=int, default=None, help="Training steps (default: the preset's).")
@table_option
def train_demo(data, preset, steps, table):
    """Train the demo backbone on its synthetic fact corpus (CPU, a progress bar), save the
    checkpoint under DATA/models/demo and import its STEM bank as a table.

    \b
    Example:
        memsvc train-demo --data ./demo-kb
        memsvc train-demo --data ./tiny-kb --preset tiny --table stem
    """
    from memsvc.cli.demo import MODEL_DIR, import_checkpoint, train_into

    metrics = train_into(data, preset, steps)
    with open_store(data, None, create=True) as kb:
        version = import_checkpoint(kb, Path(data) / MODEL_DIR, table)
    click.echo(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))
    click.echo(f"imported the bank as table {table!r} at version {version}")


def load_model(model_dir):
    from clients.backbone.checkpoint import load_checkpoint

    if not (Path(model_dir) / "model.safetensors").exists():
        raise InvalidArgument(f"--model: no backbone checkpoint in {model_dir} (run `memsvc train-demo`)")
    return load_checkpoint(model_dir)


def make_bank(store, table, kind, version, overrides):
    """The bank a worker would use: remote (cached, prefetching), local (mmap + deltas) or store."""
    from clients.banks import LocalBank, RemoteBank, StoreBank

    if kind == "remote" and hasattr(store, "stub"):
        return RemoteBank(store, table, version, cache_tokens=4096, overrides=overrides)
    if kind == "local" and hasattr(store, "stub"):
        if overrides:
            raise InvalidArgument("--override: the local bank reads base files directly; use --bank remote")
        return LocalBank(store, table, version)
    return StoreBank(store, table, version, overrides)


def override_ops(store, table, overrides, version=None):
    """--override SOURCE=TARGET entity edits as row operations (nothing is written)."""
    from editing.entity import EntityEdit, entity_row_ops, parse_override

    ops = []
    for text in overrides:
        source, target = parse_override(text)
        ids = lambda words: store.token_ids(table, words.split(), version, "override").tolist()
        read_rows = lambda tokens: store.read_rows(table, tokens, version)
        ops += entity_row_ops(EntityEdit(source=ids(source), target=ids(target), mode="auto"), read_rows)
    return ops


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
        from clients.backbone.demo import WordTokenizer
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


@cli.command()
@store_options
@table_option
@click.option("--prompt", "prompts", multiple=True, required=True, help="A prompt (repeat for a batch).")
@click.option("--version", "-v", type=int, default=None, help="Version to decode against (default: head, pinned).")
@click.option("--bank", type=click.Choice(["remote", "local", "store"]), default="remote", show_default=True,
              help="With --server: remote (gRPC, cached) or local (mmap the base + deltas). Without: the KB itself.")
@click.option("--override", "overrides", multiple=True, help="SOURCE=TARGET: read SOURCE with TARGET's rows, for this run only.")
@click.option("-n", "--max-new-tokens", type=int, default=4, show_default=True)
@click.option("--model", "model_dir", default=None, help="Backbone checkpoint (default: DATA/models/demo).")
def generate(data, server, table, prompts, version, bank, overrides, max_new_tokens, model_dir):
    """Decode with the backbone, reading its STEM rows from the knowledge base.

    A prompt may use words injected into the table by the version read (`memsvc inject`): their
    rows come from the table, their input embedding is the mean of the --like tokens' (else the
    model's null embedding). Injected words are for prompts; the model only outputs trained words.

    \b
    Example:
        memsvc generate --prompt "the capital of Varos is"
        memsvc generate --prompt "the capital of Varos is" --override Varos=Kelmar --server 127.0.0.1:50051
        memsvc inject --token Varosia --like Varos && memsvc generate --prompt "the capital of Varosia is"
    """
    import torch

    from clients.backbone.model import generate as decode

    model, _, tokenizer = load_model(model_dir or Path(data) / "models" / "demo")
    with open_store(data, server) as store:
        ops = override_ops(store, table, overrides, version)
        source = make_bank(store, table, bank, version, ops)
        vocab = PromptVocabulary(store, table, source.version, model, tokenizer)
        for prompt in prompts:  # prompts of different lengths decode one by one
            ids = vocab.encode(prompt)
            out = decode(model, source, torch.tensor([ids]), max_new_tokens, extra_embeds=vocab.extra_embeds)[0, len(ids):].tolist()
            out = out[:out.index(tokenizer.eos_id)] if tokenizer.eos_id in out else out
            click.echo(f"{prompt} -> {tokenizer.decode(out)}")
    click.echo(f"(read version {source.version} through {type(source).__name__})")
