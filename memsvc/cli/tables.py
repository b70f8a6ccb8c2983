"""Whole tables in and out (import, export) and reads (tables, lookup)."""
import click
import numpy as np

from memsvc.cli.options import message_option, open_store, store_options, table_option


@click.command(name="import")
@click.argument("bank_file", type=click.Path(exists=True))
@click.option("--vocab", "vocab_file", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Word list (one per line), tokenizer.json, sentencepiece .model or tiktoken file "
                   "(default: the words a memsvc export carries).")
@store_options
@table_option
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default=None, help="Store as (default: the file's).")
@click.option("--layers", "num_layers", type=int, default=None, help="Layer count of a fused [V, L*d] tensor.")
@click.option("--tensor", default=None, help="The tensor to import from a .safetensors/.pt file or an HF model directory.")
@message_option
def import_(bank_file, vocab_file, data, server, table, dtype, num_layers, tensor, message):
    """Import a bank as a new table; creates --data if needed, or streams it to --server. BANK_FILE:
    a .npy, .pt or .safetensors file, an HF model directory, or an official STEM checkpoint (step or
    consolidated directory).

    \b
    Example:
        memsvc import model.safetensors --vocab tokenizer.json --table stem --layers 4
        memsvc import rows.npy --vocab words.txt --table bank --dtype float16
        memsvc import ckpts/0000100000 --vocab tokenizer.model --table stem --dtype bfloat16
        memsvc import gemma-3n-E2B --vocab gemma-3n-E2B/tokenizer.json --table ple
        memsvc import out.safetensors --table stem2 --server 127.0.0.1:50051   # a memsvc export
    """
    from memsvc.store.checkpoints import converted
    from memsvc.store.importers import bank_vocab, load_bank

    bank = load_bank(bank_file, num_layers, tensor)
    v, n_layers, dim = bank.rows.shape
    words, tokenizer = bank_vocab(bank_file, bank, vocab_file)
    dtype = dtype or bank.dtype
    with open_store(data, server, create=True) as store:
        r = store.import_table(table, converted(bank.rows, bank.dtype, dtype), words, dtype=dtype, message=message,
                               progress=True, model_layers=bank.model_layers, tokenizer=tokenizer)
    feeds = f", feeding model layers {bank.model_layers}" if bank.model_layers else ""
    encoded = f", words encoded by its {tokenizer[0]}" if tokenizer else ""
    click.echo(f"imported {table}: {v} tokens x {n_layers} layers x {dim} ({dtype}){feeds}{encoded} as version {r.version}")


@click.command()
@click.argument("out", type=click.Path(dir_okay=False))
@store_options
@table_option
@click.option("--version", "-v", type=int, default=None, help="Version to export (default: head).")
def export(out, data, server, table, version):
    """Export the tokens alive at a version, with their words, a chunk at a time: to .safetensors
    (STEM layout: stem_embeddings [V, L*d], the words in its metadata) or to .npy ([V, L, d], the
    words in OUT.vocab.txt beside it). `memsvc import OUT` reads it back, words included.

    \b
    Example:
        memsvc export bank.safetensors --table stem --version 3
        memsvc export bank.npy --table stem --server 127.0.0.1:50051
    """
    from memsvc.store.importers import write_export

    with open_store(data, server) as store:
        export = store.export_table(table, version)
        files = write_export(export, out, progress=True)
    info = export.info
    click.echo(f"exported {table} version {info.version}: {info.vocab_size} tokens x {info.num_layers} layers x "
               f"{info.dim} ({info.dtype}) to {', '.join(map(str, files))}")


@click.command()
@store_options
@click.option("--version", "-v", type=int, default=None)
def tables(data, server, version):
    """List the tables.

    \b
    Example:
        memsvc tables --server 127.0.0.1:50051
    """
    with open_store(data, server) as store:
        for t in store.list_tables(version):
            model = (f"\tmodel layers {','.join(map(str, t.model_layers))}" if t.model_layers else "") + \
                (f"\t{t.tokenizer}" if t.tokenizer else "")
            click.echo(f"{t.name}\t{t.kind}\t{t.vocab_size} tokens x {t.num_layers} layers x {t.dim}\t{t.dtype}\t"
                       f"(version {t.version}, base {t.base_version}){model}")


@click.command()
@store_options
@table_option
@click.option("--token", "tokens", multiple=True, required=True, help="A word (repeat for several).")
@click.option("--layer", "layers", multiple=True, type=int, help="Layers to read (default: all).")
@click.option("--version", "-v", type=int, default=None)
@click.option("--tag", default=None)
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Save the rows (n, layers, dim) as .npy.")
def lookup(data, server, table, tokens, layers, version, tag, out):
    """Read rows of tokens.

    \b
    Example:
        memsvc lookup --token Spain --layer 0 --version 2
        memsvc lookup --token Spain --token France --out rows.npy
    """
    with open_store(data, server) as store:
        result = store.lookup(table, list(tokens), list(layers), version=version, tag=tag)
    rows = result.in_request_order()
    if out:
        np.save(out, rows)
    click.echo(f"version {result.version}: {rows.shape[0]} tokens x {rows.shape[1]} layers x {rows.shape[2]}")
    for word, r in zip(tokens, rows):
        for layer, row in zip(layers or range(rows.shape[1]), r):
            head = ", ".join(f"{x:+.4f}" for x in row[:6])
            click.echo(f"  {word!r} layer {layer}: [{head}{', ...' if len(row) > 6 else ''}]  norm {np.linalg.norm(row):.4f}")
