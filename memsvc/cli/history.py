"""The commit history: log, show, diff and tags."""
import sys
from datetime import datetime

import click

from memsvc.cli.options import open_store, store_options, table_filter_option


# An index keeps the version it holds alive with the tag "index:NAME" (memsvc/search/manager.py):
# bookkeeping, not a name a user gave, so tag listings and log leave it out.
INDEX_TAG = "index:"


def _when(t):
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def print_changes(changes, limit=50):
    for c in changes[:limit]:
        click.echo(f"  {c.table}  {c.token!r:>16} (id {c.token_id})  layer {c.layer}  l2 {c.l2:.4f}  cosine {c.cosine:+.4f}")
    if len(changes) > limit:
        click.echo(f"  ... and {len(changes) - limit} more rows")


@click.command()
@store_options
@table_filter_option
@click.option("-n", "--limit", type=click.IntRange(min=1), default=None, help="The newest N commits (default: all).")
def log(data, server, table, limit):
    """List commits, newest first.

    \b
    Example:
        memsvc log -n 10
    """
    with open_store(data, server) as store:
        commits = store.log(table, limit)
    kind_width = max([7] + [len(c.kind) for c in commits])  # mosaic kinds: "mosaic-create", ...
    author_width = max([10] + [len(c.author) for c in commits])
    for c in commits:
        tags = [t for t in c.tags if not t.startswith(INDEX_TAG)]
        tags = f"  [{', '.join(tags)}]" if tags else ""
        click.echo(f"{c.version:>6}  {_when(c.time)}  {c.kind:<{kind_width}} {c.author:<{author_width}} "
                   f"{c.rows_changed:>8} rows  {c.message}{tags}")


@click.command()
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


@click.command()
@store_options
@click.argument("from_version", type=int)
@click.argument("to_version", type=int)
@table_filter_option
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


@click.command()
@store_options
@click.argument("name", required=False)
@click.option("--version", "-v", type=int, default=None, help="Version to tag (default: head).")
@click.option("--delete", is_flag=True, help="Delete the tag.")
def tag(data, server, name, version, delete):
    """Tag a version (tagged versions survive gc), delete a tag, or list tags (without the
    `index:NAME` tags that indexes keep for the version they hold).

    \b
    Example:
        memsvc tag before-swap --version 3
        memsvc tag
    """
    with open_store(data, server) as store:
        if name is None:
            for n, v in store.tags().items():
                if not n.startswith(INDEX_TAG):
                    click.echo(f"{n}\t{v}")
            return
        v = store.delete_tag(name) if delete else store.tag(name, version)
    click.echo(f"{'deleted tag' if delete else 'tagged'} {name} -> version {v}")
