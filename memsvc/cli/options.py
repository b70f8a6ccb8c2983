"""The options every command family shares, declared once: where the knowledge base is (--data,
--server), which table, the commit message and author; and the store they open."""
from contextlib import contextmanager
from pathlib import Path

import click
import numpy as np
from click.core import ParameterSource


def data_option(f):
    """--data: the knowledge base's directory (the only place of local-only commands)."""
    return click.option("--data", envvar="MEMSVC_DATA", default="./memsvc-data", show_default=True,
                        type=click.Path(file_okay=False), help="The knowledge base's data directory.")(f)


def server_option(f):
    return click.option("--server", envvar="MEMSVC_SERVER", default=None, metavar="HOST:PORT",
                        help="Send the command to a running server instead of opening --data.")(f)


def store_options(f):
    """--data and --server: where the knowledge base is."""
    return data_option(server_option(f))


def table_option(f):
    return click.option("--table", "-t", envvar="MEMSVC_TABLE", default="stem", show_default=True, help="The table.")(f)


def table_filter_option(f):
    """--table of the history commands (log, diff): no table means every table."""
    return click.option("--table", "-t", default=None, help="Only this table (default: every table).")(f)


def message_option(f):
    return click.option("-m", "--message", default="", help="Commit message.")(f)


def commit_options(f):
    """-m/--message and --author of a commit."""
    return message_option(click.option("--author", envvar="MEMSVC_AUTHOR", default="")(f))


def chosen_server(server):
    """--server, unless it came from MEMSVC_SERVER and --data was typed: what is typed beats the
    environment. (--data typed with --server typed names where the backbone lives, see generate.)"""
    ctx = click.get_current_context(silent=True)
    if server and ctx is not None and ctx.get_parameter_source("data") == ParameterSource.COMMANDLINE \
            and ctx.get_parameter_source("server") != ParameterSource.COMMANDLINE:
        return None
    return server


@contextmanager
def open_store(data, server, create=False):
    """A KnowledgeBase on --data, or a MemoryClient on --server (see chosen_server)."""
    server = chosen_server(server)
    if server:
        from clients.client import MemoryClient

        ctx = click.get_current_context(silent=True)
        with MemoryClient(server, **((ctx.find_root().obj if ctx else None) or {})) as client:
            yield client
    else:
        from memsvc.store import KnowledgeBase, StoreConfig

        with KnowledgeBase(StoreConfig(data_dir=Path(data), create=create)) as kb:
            yield kb


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
