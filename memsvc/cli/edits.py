"""Knowledge edits from the command line: edit (rows, an entity or a fact), inject, revert, and
`memsvc eval-edits` (EasyEdit metrics through the service; the library is clients/editor.py)."""
from pathlib import Path

import click

from clients.editor import (Editor, entity_ops, entity_pieces, evaluate, guess_subject, resolve_token,
                            table_vocabulary)
from memsvc.cli.options import commit_options, open_store, print_dry_run, store_options, table_option
from memsvc.core.errors import InvalidArgument


@click.command()
@store_options
@table_option
@click.option("--token", default=None, help="The token whose rows change.")
@click.option("--entity", default=None, help="Entity edit: this entity's tokens take --to's rows (clients/editor.py).")
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
@commit_options
@click.option("--dry-run", is_flag=True, help="Print the rows that would change and their 5 nearest tokens; write nothing.")
@click.option("--shared-ok", is_flag=True, help="Edit an entity of several pieces that other words share too.")
def edit(data, server, table, token, entity, to, mode, fact, target, subject, model_dir, vector, like, layers, alpha,
         message, author, dry_run, shared_ok):
    """Change a token's rows, an entity's rows or one fact as one commit.

    \b
    Example:
        memsvc edit --token Elbriar --like Boova -m "Elbriar uses Boova's rows"
        memsvc edit --token Elbriar --vector row.npy --layer 0 -m "set layer 0"
        memsvc edit --token Elbriar --like Boova --alpha 0.5 --dry-run
        memsvc edit --entity "Elbriar" --to "Boova" --mode average
        memsvc edit --fact "the capital of Elbriar is" --target Nuarpolis --dry-run
    """
    from editing.entity import parse_vector_arg
    from memsvc.core.values import RowOp

    if entity or fact:
        with open_store(data, server) as store:
            return edit_entity_or_fact(store, table, entity, to, mode, fact, target, subject, layers,
                                       model_dir or Path(data) / "models" / "demo", author, message, dry_run, shared_ok)
    if token is None:
        raise InvalidArgument("--token: give --token, --entity or --fact")
    if (vector is None) == (like is None):
        raise InvalidArgument("--vector/--like: give exactly one")
    with open_store(data, server) as store:
        vocab = table_vocabulary(store, table)
        source = {f"source_{k}": v for k, v in resolve_token(vocab, like).items()}
        op = RowOp(op="copy" if alpha is None else "blend", **resolve_token(vocab, token), layers=list(layers),
                   vector=parse_vector_arg(vector) if vector is not None else None, **source,
                   alpha=1.0 if alpha is None else alpha)
        if vector is not None and alpha is None:
            op.op = "set"
        if dry_run:
            return print_dry_run(store, table, [op])
        r = store.edit(table, [op], author=author, message=message)
    click.echo(f"committed version {r.version}: {r.rows_changed} rows changed")


def edit_entity_or_fact(store, table, entity, to, mode, fact, target, subject, layers, model_dir, author, message, dry_run,
                        shared_ok=False):
    """`memsvc edit --entity A --to B` or `memsvc edit --fact PROMPT --target WORD` (see edit)."""
    from memsvc.core.values import EditRequest

    if entity:
        if not to or fact:
            raise InvalidArgument("--entity: give --to (and no --fact)")
        if dry_run:
            click.echo(entity_pieces(store, table, entity) + "\n" + entity_pieces(store, table, to))
        ops = entity_ops(store, table, entity, to, mode, layers, shared_ok=shared_ok or dry_run)
        request, metrics = EditRequest(subject=entity, target_new=to), None
    else:
        ops, request, metrics = fact_edit(store, table, fact, target, subject, layers, model_dir)
    if dry_run:
        return print_dry_run(store, table, ops)
    r = store.edit(table, ops, author=author, message=message or f"{entity or fact} -> {to or target}",
                   request=request, metrics=metrics)
    click.echo(f"committed version {r.version}: {r.rows_changed} rows changed")


def fact_edit(store, table, fact, target, subject, layers, model_dir):
    """(ops, EditRequest, metrics) of `edit --fact`, printing the metrics; an edit that would not
    change the prompt's answer to --target (already its answer, or a fit that failed) is refused."""
    from memsvc.core.values import EditRequest

    if not target:
        raise InvalidArgument("--fact: give --target")
    editor = Editor(store, table, model_dir)
    ops, record, info = editor.fact_ops(fact, target, subject or guess_subject(fact), layers=layers)
    if record.ground_truth == target:
        raise InvalidArgument(f"--target: {fact!r} already yields {target!r}; nothing to commit")
    metrics = {**editor.score(record, ops), **info}
    click.echo("  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()))
    if metrics["reliability"] < 1:
        raise InvalidArgument(f"--fact: the fitted rows still do not make {fact!r} yield {target!r}; nothing committed")
    return ops, EditRequest(**record.request_fields()), metrics


@click.command(name="eval-edits")
@click.argument("records_file", type=click.Path(exists=True, dir_okay=False))
@store_options
@table_option
@click.option("--kind", type=click.Choice(["auto", "entity", "fact"]), default="auto", show_default=True,
              help="entity: swap the subject onto target_subject; fact: fit the subject's rows; auto: entity when "
                   "the record names a target_subject.")
@click.option("--limit", type=int, default=None, help="Evaluate only the first N records.")
@click.option("--commit", is_flag=True, help="Also commit each edit with its request and metrics (applied in order).")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Write a PNG bar chart of the metrics.")
@click.option("--model", "model_dir", default=None, help="Backbone checkpoint (default: DATA/models/demo).")
def eval_edits(records_file, data, server, table, kind, limit, commit, plot, model_dir):
    """Evaluate EasyEdit-style edit records: reliability, generalization (rephrase prompts),
    locality (other entities) and other_facts (fact edits), per relation and overall.

    Each record is applied alone to the version read at the start, as a per-request override.

    \b
    Example:
        memsvc eval-edits edits.jsonl --plot edits.png
        memsvc eval-edits facts.jsonl --kind fact --limit 20 --commit --server 127.0.0.1:50051
    """
    import json

    from editing.evaluate import format_table, load_records, plot_summary
    from memsvc.core.values import EditRequest

    records = load_records(records_file)[:limit]
    with open_store(data, server) as store:
        editor = Editor(store, table, model_dir or Path(data) / "models" / "demo")
        summary, results = evaluate(editor, records, kind)
        for record, (ops, score) in zip(records, results) if commit else ():
            store.edit(table, ops, message=f"eval-edits: {record.subject} -> {record.target_new}",
                       request=EditRequest(**record.request_fields()), metrics=score)
    click.echo(format_table(summary))
    if plot:
        plot_summary({kind: summary}, plot, title=f"{Path(records_file).name} ({kind} edits)")
    click.echo(json.dumps(summary["overall"]))


@click.command()
@store_options
@table_option
@click.option("--token", required=True, help="The new token.")
@click.option("--like", "like", multiple=True, help="Copy (or average, when repeated) these tokens' rows.")
@click.option("--vector", default=None, help="The new token's row: comma-separated values or a .npy file.")
@commit_options
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
        memsvc inject --token Atlantis --like Elbriar --like Boova -m "a new country"
        memsvc inject --token Elbria --vector elbriar_rows.npy
        memsvc generate --prompt "the capital of Elbria is"
    """
    from editing.entity import parse_vector_arg

    with open_store(data, server) as store:
        r = store.inject_token(table, token, vector=parse_vector_arg(vector) if vector else None, like=list(like),
                               author=author, message=message)
    click.echo(f"committed version {r.version}: injected {token!r}")


@click.command()
@store_options
@click.argument("version", type=int)
@commit_options
def revert(data, server, version, message, author):
    """Undo one commit with a new commit (history is kept).

    \b
    Example:
        memsvc revert 7
    """
    with open_store(data, server) as store:
        r = store.revert(version, author=author, message=message)
    click.echo(f"committed version {r.version}: reverted {version} ({r.rows_changed} rows)")
