"""`memsvc generate`: the demo backbone decoding against the service, as a worker would."""
from pathlib import Path

import click

from clients.prompts import PromptVocabulary, load_model
from memsvc.cli.options import open_store, store_options, table_option
from memsvc.core.errors import InvalidArgument


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


@click.command()
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
        memsvc generate --prompt "the capital of Elbriar is"
        memsvc generate --prompt "the capital of Elbriar is" --override Elbriar=Boova --server 127.0.0.1:50051
        memsvc inject --token Elbria --like Elbriar && memsvc generate --prompt "the capital of Elbria is"
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
