"""`memsvc search` and `memsvc index create|drop|list`: nearest tokens of a bank layer or nearest
pairs of a mosaic store's (layer, head), local (--data: an IndexManager on the KB) or remote
(--server: a SearchClient); same calls either way."""
from contextlib import contextmanager
from dataclasses import fields

import click
import numpy as np

from indexes.base import KINDS, IndexConfig
from memsvc.cli.options import open_store, store_options, table_option
from memsvc.core.errors import InvalidArgument

# the IndexConfig fields `index create --set` takes (kind and metric have their own options)
SETTINGS = [f.name for f in fields(IndexConfig) if f.name not in ("kind", "metric", "progress")]


@contextmanager
def open_search(data, server):
    """An IndexManager over the KB at --data, or a SearchClient on --server."""
    with open_store(data, server) as store:
        if hasattr(store, "stub"):  # a MemoryClient: --server (or MEMSVC_SERVER) won
            from clients.search import SearchClient

            yield SearchClient(store)
        else:
            from memsvc.search.manager import IndexManager

            manager = IndexManager(store)
            yield manager
            manager.close()


def parse_settings(pairs, field, casts=(int, float, str)) -> dict:
    """KEY=VALUE pairs -> {key: value as the first of `casts` that takes it}."""
    out = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise InvalidArgument(f"{field}: expected KEY=VALUE, got {pair!r}")
        if casts == (int,) and not value.lstrip("-").isdigit():
            raise InvalidArgument(f"{field}: {key} must be an integer, got {value!r}")
        for cast in casts:
            try:
                out[key] = cast(value)
                break
            except ValueError:
                continue
    return out


def head_option(f):
    return click.option("--head", type=int, default=None,
                        help="Mosaic stores: the head of --layer whose keys are searched (default 0).")(f)


def show_hits(r, tokens):
    """One block per query: rank, token or pair label, id, distance."""
    names = r.tokens or r.labels
    for i, (ids, dists) in enumerate(zip(r.ids.tolist(), r.distances.tolist())):
        click.echo(f"query {tokens[i] if tokens else i}:")
        for rank, (row_id, dist) in enumerate(zip(ids, dists), 1):
            if row_id >= 0:
                what = f"(id {row_id})" if r.tokens else f"(pair {row_id})"
                click.echo(f"  {rank:>3}  {names[i][rank - 1]!r:>16} {what}  {dist:.4f}")


@click.command()
@store_options
@table_option
@click.option("--layer", type=int, default=0, show_default=True, help="The layer whose rows are searched.")
@head_option
@click.option("--token", "tokens", multiple=True, help="Query: this token's row in --layer (repeat for several).")
@click.option("--vector", "vector_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Query vectors: a .npy of shape (d,) or (n, d).")
@click.option("-k", "k", type=int, default=10, show_default=True, help="Results per query.")
@click.option("--index", default=None, help="Use this index (default: a ready index of the layer, else exact).")
@click.option("--exact", is_flag=True, help="Search every row exactly, even when an index is ready.")
@click.option("--metric", type=click.Choice(["l2", "ip", "cosine"]), default=None, help="Pick an index by metric (exact: default l2).")
@click.option("--param", "params", multiple=True, help="Search knob KEY=VALUE, e.g. complexity=128 or nprobe=32.")
@click.option("--version", "-v", type=int, default=None, help="Search the rows of this version (default: head).")
@click.option("--tag", default=None)
def search(data, server, table, layer, head, tokens, vector_file, k, index, exact, metric, params, version, tag):
    """Nearest tokens of a token's row, or of query vectors, in one layer of a bank; or nearest
    pairs (ids and labels) of query vectors among a mosaic store's keys of one (layer, head).

    Results are never stale: rows edited since the index was built are searched exactly.

    \b
    Example:
        memsvc search --table stem --token Elbriar -k 10
        memsvc search --vector q.npy --layer 2 --index tokens --param complexity=128
        memsvc search --token Elbriar --version 3 --exact --server 127.0.0.1:50051
        memsvc search --table facts --layer 1 --head 2 --vector q.npy -k 10
    """
    queries = None if vector_file is None else np.atleast_2d(np.load(vector_file)).astype(np.float32)
    with open_search(data, server) as searcher:
        r = searcher.search(table, layer, queries=queries, tokens=list(tokens), k=k, index=index, metric=metric,
                            params=parse_settings(params, "--param", (int,)), version=version, tag=tag, head=head,
                            exact=exact)
    how = f"index {r.index} (version {r.index_version}, {r.lag_rows} rows searched exactly)" if r.index else "exact search"
    click.echo(f"version {r.version}, {how}, {r.metric} distance")
    show_hits(r, tokens)


@click.group()
def index():
    """ANN indexes over a bank layer or a mosaic store's (layer, head) keys: create (background build), drop, list.

    \b
    Example:
        memsvc index create tokens --table stem --layer 0 --kind hnsw --metric cosine
        memsvc index list
        memsvc index drop tokens
    """


@index.command()
@click.argument("name")
@store_options
@table_option
@click.option("--layer", type=int, default=0, show_default=True)
@head_option
@click.option("--kind", default="hnsw", show_default=True, help=f"One of {', '.join(KINDS)}.")
@click.option("--metric", type=click.Choice(["l2", "ip", "cosine"]), default="l2", show_default=True)
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help=f"An IndexConfig field (indexes/base.py), e.g. graph_degree=32. Keys: {', '.join(SETTINGS)}.")
@click.option("--version", "-v", type=int, default=None, help="Index the rows of this version (default: head).")
@click.option("--no-wait", is_flag=True, help="Return once the build has started (--server only).")
def create(name, data, server, table, layer, head, kind, metric, settings, version, no_wait):
    """Build an index of one layer's rows (a mosaic store: one (layer, head)'s keys) in the
    background, with a progress bar.

    \b
    Example:
        memsvc index create tokens --table stem --layer 0 --kind diskann --metric cosine --set graph_degree=32
        memsvc index create lpq --kind learned_pq --server 127.0.0.1:50051 --no-wait
        memsvc index create keys --table facts --layer 1 --head 2 --kind hnsw --metric ip
    """
    if no_wait and not server:
        raise InvalidArgument("--no-wait: only with --server (a local build ends with the command)")
    from tqdm import tqdm

    from memsvc.core.search import place

    with open_search(data, server) as searcher:
        config = {**parse_settings(settings, "--set"), "kind": kind, "metric": metric}
        info = searcher.create(name, table, layer, config, version=version, head=head)
        if no_wait:
            click.echo(f"building {name} ({info.kind}, {info.metric}) over {place(info.where())} at version {info.version}")
            return
        with tqdm(total=100, desc=f"building {name}", unit="%") as bar:
            def show(i):
                bar.set_postfix_str(i.stage, refresh=False)
                bar.update(round(100 * i.progress) - bar.n)

            info = searcher.wait(name, on_progress=show)
    click.echo(f"index {name} ready: {info.count} rows of {place(info.where())} at version {info.version} ({info.kind}, {info.metric})")


@index.command()
@click.argument("name")
@store_options
def drop(name, data, server):
    """Drop an index and delete its files.

    \b
    Example:
        memsvc index drop tokens
    """
    with open_search(data, server) as searcher:
        info = searcher.drop(name)
    click.echo(f"dropped index {info.name}")


@index.command(name="list")
@store_options
def list_(data, server):
    """List indexes: state, progress, the version they hold and their lag behind the head.

    \b
    Example:
        memsvc index list --server 127.0.0.1:50051
    """
    with open_search(data, server) as searcher:
        infos = searcher.list()
    for i in infos:
        state = f"{i.state} {i.progress:.0%} ({i.stage})" if i.state == "BUILDING" else i.state
        click.echo(f"{i.name:<16} {'/'.join(map(str, i.where()))}  {i.kind:<12} {i.metric:<6} {state:<10} version {i.version}"
                   f"  {i.count} rows  lag {i.lag_commits} commits, {i.lag_rows} rows" + (f"  error: {i.error}" if i.error else ""))
    if not infos:
        click.echo("no indexes")
