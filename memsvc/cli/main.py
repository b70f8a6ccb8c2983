"""The `memsvc` command line: a thin click layer over KnowledgeBase (local) and MemoryClient
(``--server HOST:PORT``). Both have the same methods, so a command is the same commit either way."""
import sys
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import click
import numpy as np

from memsvc.core.errors import InvalidArgument, MemsvcError


class MemsvcGroup(click.Group):
    """Every memsvc error becomes one line ``Error: ...`` and exit status 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MemsvcError as e:
            raise click.ClickException(str(e)) from None


@click.group(cls=MemsvcGroup)
@click.version_option(package_name="memsvc")
@click.option("--api-key", envvar="MEMSVC_API_KEY", default=None, help="API key sent to --server (Bearer).")
@click.option("--tls-ca", envvar="MEMSVC_TLS_CA", default=None, type=click.Path(exists=True, dir_okay=False),
              help="CA certificate (PEM): talk TLS to --server and verify it.")
@click.pass_context
def cli(ctx, api_key, tls_ca):
    """memsvc: versioned knowledge tables for memory-augmented language models.

    \b
    Example:
        memsvc serve --data ./memsvc-data
        memsvc edit --token Spain --like Germany -m "Spain now uses Germany's rows"
        memsvc log
        MEMSVC_API_KEY=... memsvc --tls-ca ca.pem log --server kb.example:50051
    """
    ctx.obj = {"api_key": api_key, "tls_ca": tls_ca}


def store_options(f):
    """--data and --server: where the knowledge base is."""
    f = click.option("--server", envvar="MEMSVC_SERVER", default=None, metavar="HOST:PORT",
                     help="Send the command to a running server instead of opening --data.")(f)
    return click.option("--data", envvar="MEMSVC_DATA", default="./memsvc-data", show_default=True,
                        type=click.Path(file_okay=False), help="The knowledge base's data directory.")(f)


def table_option(f):
    return click.option("--table", "-t", envvar="MEMSVC_TABLE", default="stem", show_default=True, help="The table.")(f)


@contextmanager
def open_store(data, server, create=False):
    """A KnowledgeBase on --data, or a MemoryClient on --server."""
    if server:
        from clients.client import MemoryClient

        ctx = click.get_current_context(silent=True)
        with MemoryClient(server, **((ctx.find_root().obj if ctx else None) or {})) as client:
            yield client
    else:
        from memsvc.store import KnowledgeBase, StoreConfig

        with KnowledgeBase(StoreConfig(data_dir=Path(data), create=create)) as kb:
            yield kb


def _when(t):
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def print_changes(changes, limit=50):
    for c in changes[:limit]:
        click.echo(f"  {c.table}  {c.token!r:>16} (id {c.token_id})  layer {c.layer}  l2 {c.l2:.4f}  cosine {c.cosine:+.4f}")
    if len(changes) > limit:
        click.echo(f"  ... and {len(changes) - limit} more rows")


# ---------------------------------------------------------------- serving and import

@cli.command()
@click.option("--data", envvar="MEMSVC_DATA", default="./memsvc-data", show_default=True, type=click.Path(file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=50051, show_default=True, type=int)
@click.option("--no-seed", is_flag=True, help="Do not create the demo knowledge base when --data holds none.")
@click.option("--api-keys-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="'<read|write> <key>' per line (MEMSVC_READ_KEYS / MEMSVC_WRITE_KEYS add more).")
@click.option("--insecure", is_flag=True, help="Allow a non-loopback --host without API keys.")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), default=None, help="PEM certificate chain: serve TLS.")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), default=None, help="PEM private key of --tls-cert.")
@click.option("--metrics-port", type=int, default=None, help="HTTP /metrics, /healthz, /readyz on this port (0: any free).")
@click.option("--drain-seconds", type=float, default=0.0, show_default=True,
              help="On SIGTERM, report NOT_SERVING this long before refusing calls.")
@click.option("--build-niceness", type=click.IntRange(0, 19), default=10, show_default=True,
              help="How much nicer than the server index builds run (0: same priority as Lookups).")
def serve(data, host, port, no_seed, api_keys_file, insecure, tls_cert, tls_key, metrics_port, drain_seconds,
          build_niceness):
    """Serve a knowledge base over gRPC (health checking and reflection included).

    On first run an empty --data is seeded with the demo model's knowledge base. Beyond
    loopback, give API keys (or --insecure); SIGTERM drains and stops cleanly.

    \b
    Example:
        memsvc serve --data ./memsvc-data --port 50051
        memsvc serve --host 0.0.0.0 --api-keys-file keys.txt --tls-cert c.pem --tls-key k.pem --metrics-port 9100
    """
    import logging

    from memsvc.server.auth import check_exposure, load_keys
    from memsvc.server.main import ServerConfig
    from memsvc.server.main import serve as run

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    check_exposure(host, load_keys(api_keys_file), insecure)  # refuse before seeding anything
    if not no_seed and not (Path(data) / "catalog.db").exists():
        from memsvc.cli.demo import seed_demo_kb

        seed_demo_kb(data)
    run(ServerConfig(data_dir=Path(data), host=host, port=port, api_keys_file=api_keys_file,
                     insecure=insecure, tls_cert=tls_cert, tls_key=tls_key, metrics_port=metrics_port,
                     drain_seconds=drain_seconds, build_niceness=build_niceness))


@cli.command(name="import")
@click.argument("bank_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--vocab", "vocab_file", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Word list (one per line) or HF tokenizer.json.")
@click.option("--data", envvar="MEMSVC_DATA", default="./memsvc-data", show_default=True, type=click.Path(file_okay=False))
@table_option
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default=None, help="Store as (default: the file's).")
@click.option("--layers", "num_layers", type=int, default=None, help="STEM layer count of a stem_embeddings [V, L*d] tensor.")
@click.option("-m", "--message", default="", help="Commit message.")
def import_(bank_file, vocab_file, data, table, dtype, num_layers, message):
    """Import a bank (.npy, .pt or .safetensors) as a new table; creates --data if needed.

    \b
    Example:
        memsvc import model.safetensors --vocab tokenizer.json --table stem --layers 4
        memsvc import rows.npy --vocab words.txt --table bank --dtype float16
    """
    from memsvc.store.importers import load_bank, load_vocab

    rows, file_dtype = load_bank(bank_file, num_layers)
    vocab = load_vocab(vocab_file)
    with open_store(data, None, create=True) as kb:
        r = kb.import_table(table, rows, vocab, dtype=dtype or file_dtype, message=message, progress=True)
    click.echo(f"imported {table}: {rows.shape[0]} tokens x {rows.shape[1]} layers x {rows.shape[2]} ({dtype or file_dtype}) as version {r.version}")


@cli.command()
@click.argument("out", type=click.Path(dir_okay=False))
@store_options
@table_option
@click.option("--version", "-v", type=int, default=None, help="Version to export (default: head).")
def export(out, data, server, table, version):
    """Export a table at a version to safetensors (STEM layout: stem_embeddings [V, L*d]).

    \b
    Example:
        memsvc export bank.safetensors --table stem --version 3
    """
    from memsvc.store.importers import export_bank

    with open_store(data, server) as store:
        info = store.describe(table, version)
        ids = np.arange(info.vocab_size)  # exports the ids alive at that version, in id order
        result = store.lookup(table, ids, version=info.version)
    export_bank(result.rows[result.inverse], result.dtype, out)
    click.echo(f"exported {table} version {info.version} to {out}")


# ---------------------------------------------------------------- reads

@cli.command()
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
            click.echo(f"{t.name}\t{t.kind}\t{t.vocab_size} tokens x {t.num_layers} layers x {t.dim}\t{t.dtype}\t(version {t.version}, base {t.base_version})")


@cli.command()
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


# ---------------------------------------------------------------- edits

@cli.command()
@store_options
@table_option
@click.option("--token", default=None, help="The token whose rows change.")
@click.option("--entity", default=None, help="Entity edit: this entity's tokens take --to's rows (memsvc/cli_edits.py).")
@click.option("--to", default=None, help="The target entity of --entity.")
@click.option("--mode", type=click.Choice(["auto", "one_to_one", "average", "copy", "left_pad", "right_pad"]), default="auto",
              show_default=True, help="How --entity's tokens map onto --to's when their lengths differ.")
@click.option("--fact", default=None, help="Fact edit: fit the subject's rows so this prompt yields --target.")
@click.option("--target", default=None, help="The word --fact should yield.")
@click.option("--subject", default=None, help="The subject of --fact (default: its capitalised words).")
@click.option("--model", "model_dir", default=None, help="Backbone checkpoint for --fact (default: DATA/models/demo).")
@click.option("--vector", default=None, help="New row: comma-separated values or a .npy file ((d,) or (layers, d)).")
@click.option("--like", default=None, help="Copy the rows of this token (with --alpha: blend toward them).")
@click.option("--layer", "layers", multiple=True, type=int, help="Layers to change (default: all).")
@click.option("--alpha", type=float, default=None, help="Blend: new = (1 - alpha) * old + alpha * source.")
@click.option("-m", "--message", default="", help="Commit message.")
@click.option("--author", envvar="MEMSVC_AUTHOR", default="")
@click.option("--dry-run", is_flag=True, help="Print the rows that would change and their 5 nearest tokens; write nothing.")
def edit(data, server, table, token, entity, to, mode, fact, target, subject, model_dir, vector, like, layers, alpha,
         message, author, dry_run):
    """Change a token's rows, an entity's rows or one fact as one commit.

    \b
    Example:
        memsvc edit --token Spain --like Germany -m "Spain uses Germany's rows"
        memsvc edit --token Spain --vector 0.1,0.2,... --layer 0 -m "set layer 0"
        memsvc edit --token Spain --like Germany --alpha 0.5 --dry-run
        memsvc edit --entity "Spain" --to "Germany" --mode average
        memsvc edit --fact "the capital of Spain is" --target Berlin --dry-run
    """
    from editing.entity import parse_vector_arg
    from memsvc.core.values import RowOp

    if entity or fact:
        from memsvc.cli.edits import edit_entity_or_fact

        with open_store(data, server) as store:
            return edit_entity_or_fact(store, table, entity, to, mode, fact, target, subject, layers,
                                       model_dir or Path(data) / "models" / "demo", author, message, dry_run)
    if token is None:
        raise InvalidArgument("--token: give --token, --entity or --fact")
    if (vector is None) == (like is None):
        raise InvalidArgument("--vector/--like: give exactly one")
    op = RowOp(op="copy" if alpha is None else "blend", token=token, layers=list(layers),
               vector=parse_vector_arg(vector) if vector is not None else None, source_token=like,
               alpha=1.0 if alpha is None else alpha)
    if vector is not None and alpha is None:
        op.op = "set"
    with open_store(data, server) as store:
        if dry_run:
            return print_dry_run(store, table, [op])
        r = store.edit(table, [op], author=author, message=message)
    click.echo(f"committed version {r.version}: {r.rows_changed} rows changed")


def print_dry_run(store, table, ops):
    """The rows an edit would change, each with its 5 nearest tokens (cosine) in its layer."""
    from editing.neighbours import nearest_tokens

    writes, changes = store.preview(table, ops)
    words = store.vocabulary(table)
    layer_rows = {}
    click.echo(f"dry run: {len(changes)} rows would change (nothing written)")
    for c, vec in zip(changes, writes.vectors):
        if c.layer not in layer_rows:
            alive = np.array([i for i, w in enumerate(words) if w], dtype=np.int64)
            layer_rows[c.layer] = np.zeros((len(words), len(vec)), dtype=np.float32)
            layer_rows[c.layer][alive] = store.lookup(table, alive, [c.layer]).in_request_order()[:, 0]
        near = nearest_tokens(vec, layer_rows[c.layer], k=5, exclude=(c.token_id,))
        click.echo(f"  {c.token!r} layer {c.layer}: l2 {c.l2:.4f} cosine {c.cosine:+.4f}  nearest: "
                   + ", ".join(f"{words[i]} ({cos:.3f})" for i, cos in near))


@cli.command()
@store_options
@table_option
@click.option("--token", required=True, help="The new token.")
@click.option("--like", "like", multiple=True, help="Copy (or average, when repeated) these tokens' rows.")
@click.option("--vector", default=None, help="The new token's row: comma-separated values or a .npy file.")
@click.option("-m", "--message", default="")
@click.option("--author", envvar="MEMSVC_AUTHOR", default="")
def inject(data, server, table, token, like, vector, message, author):
    """Add a new token to a table's vocabulary (every layer gets a row). Undo with revert.

    An injected word is for prompts: `memsvc generate` reads its rows from the table, and the
    model's output head stays over the trained vocabulary, so the model never answers with it.
    With --like its input embedding is the mean of the like tokens'; with --vector it is the
    model's null embedding (the vector that stood in for entities in training), so its rows alone
    say what it is. --vector takes a .npy of layers x d_ff (e.g. an entity's rows) or d_ff
    values used in every layer.

    \b
    Example:
        memsvc inject --token Atlantis --like Spain --like Greece -m "a new country"
        memsvc inject --token Hispania --vector spain_rows.npy
        memsvc generate --prompt "the capital of Hispania is"
    """
    from editing.entity import parse_vector_arg

    with open_store(data, server) as store:
        r = store.inject_token(table, token, vector=parse_vector_arg(vector) if vector else None, like=list(like),
                               author=author, message=message)
    click.echo(f"committed version {r.version}: injected {token!r}")


@cli.command()
@store_options
@click.argument("version", type=int)
@click.option("-m", "--message", default="")
@click.option("--author", envvar="MEMSVC_AUTHOR", default="")
def revert(data, server, version, message, author):
    """Undo one commit with a new commit (history is kept).

    \b
    Example:
        memsvc revert 7
    """
    with open_store(data, server) as store:
        r = store.revert(version, author=author, message=message)
    click.echo(f"committed version {r.version}: reverted {version} ({r.rows_changed} rows)")


# ---------------------------------------------------------------- history

@cli.command()
@store_options
@click.option("--table", "-t", default=None, help="Only commits that touch this table.")
@click.option("-n", "--limit", type=int, default=None)
def log(data, server, table, limit):
    """List commits, newest first.

    \b
    Example:
        memsvc log -n 10
    """
    with open_store(data, server) as store:
        for c in store.log(table, limit):
            tags = f"  [{', '.join(c.tags)}]" if c.tags else ""
            click.echo(f"{c.version:>6}  {_when(c.time)}  {c.kind:<7} {c.author:<10} {c.rows_changed:>8} rows  {c.message}{tags}")


@cli.command()
@store_options
@click.argument("version", type=int)
def show(data, server, version):
    """One commit: message, request, metrics and the rows it changed.

    \b
    Example:
        memsvc show 7
    """
    with open_store(data, server) as store:
        c, changes = store.show(version)
    click.echo(f"version {c.version}  {c.kind}  {_when(c.time)}  by {c.author}\n  {c.message}")
    if not c.request.is_empty():
        click.echo(f"  request: prompt={c.request.prompt!r} subject={c.request.subject!r} "
                   f"target_new={c.request.target_new!r} ground_truth={c.request.ground_truth!r}")
    for k, v in sorted(c.metrics.items()):
        click.echo(f"  metric {k}: {v}")
    click.echo(f"  {c.rows_changed} rows written; {len(changes)} rows read differently:")
    print_changes(changes)


@cli.command()
@store_options
@click.argument("from_version", type=int)
@click.argument("to_version", type=int)
@click.option("--table", "-t", default=None)
def diff(data, server, from_version, to_version, table):
    """Rows that read differently at two versions (L2 and cosine of the change).

    \b
    Example:
        memsvc diff 1 4
    """
    with open_store(data, server) as store:
        changes = store.diff(from_version, to_version, table)
    click.echo(f"{len(changes)} rows differ between version {from_version} and {to_version}")
    print_changes(changes, limit=sys.maxsize)


@cli.command()
@store_options
@click.argument("name", required=False)
@click.option("--version", "-v", type=int, default=None, help="Version to tag (default: head).")
@click.option("--delete", is_flag=True, help="Delete the tag.")
def tag(data, server, name, version, delete):
    """Tag a version (tagged versions survive gc), delete a tag, or list tags.

    \b
    Example:
        memsvc tag before-swap --version 3
        memsvc tag
    """
    with open_store(data, server) as store:
        if name is None:
            for n, v in store.tags().items():
                click.echo(f"{n}\t{v}")
            return
        v = store.delete_tag(name) if delete else store.tag(name, version)
    click.echo(f"{'deleted tag' if delete else 'tagged'} {name} -> version {v}")


# ---------------------------------------------------------------- maintenance (local only)

@cli.command()
@click.option("--data", envvar="MEMSVC_DATA", default="./memsvc-data", show_default=True, type=click.Path(file_okay=False))
def compact(data):
    """Fold deltas into new base arrays (a commit that changes no row).

    \b
    Example:
        memsvc compact --data ./memsvc-data
    """
    with open_store(data, None) as kb:
        r = kb.compact(progress=True)
    click.echo(f"committed version {r.version}: compacted")


@cli.command()
@click.option("--data", envvar="MEMSVC_DATA", default="./memsvc-data", show_default=True, type=click.Path(file_okay=False))
@click.option("--retention", type=float, default=None, help="Keep versions younger than this many seconds (default: 7 days).")
def gc(data, retention):
    """Forget untagged versions older than the retention window and delete what no kept version reads.

    \b
    Example:
        memsvc gc --retention 86400
    """
    with open_store(data, None) as kb:
        stats = kb.gc(retention_seconds=retention)
    click.echo(", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in stats.items()))

