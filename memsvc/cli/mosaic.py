"""`memsvc mosaic ...`: Memory Mosaic stores from the command line, local (--data) or remote
(--server); each command calls one method of memsvc.store.mosaic.MosaicStore / clients.mosaic.MosaicClient."""
import click
import numpy as np

from memsvc.cli.options import commit_options, open_store, store_options
from memsvc.core.mosaic import BetaPolicy, LshParams
from memsvc.store.mosaic_input import load_pair_arrays, save_pair_arrays


def mosaic_of(store):
    """The mosaic API of a KnowledgeBase (kb.mosaic) or of a MemoryClient (a MosaicClient on it)."""
    if hasattr(store, "mosaic"):
        return store.mosaic
    from clients.mosaic import MosaicClient

    return MosaicClient(store)


def group_options(f):
    """NAME, --layer and --head: which group of which store."""
    f = click.option("--head", type=int, default=0, show_default=True, help="Head of the group.")(f)
    f = click.option("--layer", type=int, default=0, show_default=True, help="Layer of the group.")(f)
    return click.argument("name")(f)


def policy_options(f):
    """--beta, or the v2 policy β = β1·n^α + β0 (--beta0/--beta1/--alpha)."""
    f = click.option("--alpha", type=float, default=None, help="Policy: α of β1·n^α + β0.")(f)
    f = click.option("--beta1", type=float, default=None, help="Policy: β1 of β1·n^α + β0.")(f)
    f = click.option("--beta0", type=float, default=None, help="Policy: β0 of β1·n^α + β0.")(f)
    return click.option("--beta", type=float, default=None, help="Fixed β.")(f)


def policy_from(beta, beta0, beta1, alpha):
    if beta is None and beta0 is None and beta1 is None and alpha is None:
        return None
    if beta is not None:
        return BetaPolicy.fixed(beta)
    return BetaPolicy(beta0=beta0 or 0.0, beta1=beta1 or 0.0, alpha=alpha or 0.0)


@click.group()
def mosaic():
    """Memory Mosaic stores: (key, value) pairs per layer and head, read by kernel regression.

    \b
    Example:
        memsvc mosaic create facts --layers 2 --heads 4 --key-dim 64 --value-dim 64 --beta 8
        memsvc mosaic add facts --layer 0 --head 1 pairs.npz -m "capitals"
        memsvc mosaic query facts --layer 0 --head 1 queries.npy --mode lsh --budget 0.03
    """


@mosaic.command()
@click.argument("name")
@store_options
@click.option("--layers", "num_layers", type=int, required=True)
@click.option("--heads", "num_heads", type=int, required=True)
@click.option("--key-dim", type=int, required=True)
@click.option("--value-dim", type=int, required=True)
@policy_options
@click.option("--topk-index", type=click.Choice(["", "exact", "hnsw"]), default="", help="ANN index behind TOPK (default: exact top-k).")
@commit_options
def create(name, data, server, num_layers, num_heads, key_dim, value_dim, beta, beta0, beta1, alpha, topk_index, message, author):
    """Create an empty store (a commit); the β options set its default β policy.

    \b
    Example:
        memsvc mosaic create facts --layers 2 --heads 4 --key-dim 64 --value-dim 64 --beta 8
        memsvc mosaic create big --layers 1 --heads 1 --key-dim 64 --value-dim 64 --beta0 1 --beta1 0.5 --alpha 0.25 --topk-index hnsw
    """
    with open_store(data, server, create=True) as store:
        r = mosaic_of(store).create(name, num_layers, num_heads, key_dim, value_dim, policy_from(beta, beta0, beta1, alpha),
                                    topk_index, author=author, message=message)
    click.echo(f"committed version {r.version}: created mosaic store {name}")


@mosaic.command()
@group_options
@click.argument("pairs_file", required=False, type=click.Path(exists=True, dir_okay=False))
@store_options
@click.option("--keys", "keys_file", type=click.Path(exists=True, dir_okay=False), help="Keys (n, key_dim) .npy.")
@click.option("--values", "values_file", type=click.Path(exists=True, dir_okay=False), help="Values (n, value_dim) .npy.")
@click.option("--replace", is_flag=True, help="The file's ids exist: give them new keys/values (labels kept unless given).")
@commit_options
def add(name, layer, head, pairs_file, data, server, keys_file, values_file, replace, message, author):
    """Add pairs from a .npz (keys, values, optional labels and ids) or --keys/--values .npy, as one commit.

    \b
    Example:
        memsvc mosaic add facts --layer 0 --head 1 pairs.npz -m "capitals"
        memsvc mosaic add facts --keys k.npy --values v.npy
        memsvc mosaic add facts --layer 0 --head 1 fixed.npz --replace
    """
    p = load_pair_arrays(pairs_file, keys_file, values_file)
    with open_store(data, server) as store:
        api = mosaic_of(store)
        if replace:
            r = api.replace(name, layer, head, p.get("ids", []), p["keys"], p["values"], p.get("labels"), author=author, message=message)
        else:
            r = api.add(name, layer, head, p["keys"], p["values"], p.get("ids"), p.get("labels"), author=author, message=message)
    click.echo(f"committed version {r.version}: {'replaced' if replace else 'added'} {len(r.ids)} pairs "
               f"(ids {r.ids.min()}..{r.ids.max()})")


@mosaic.command()
@group_options
@store_options
@click.option("--id", "ids", type=int, multiple=True, required=True, help="A pair id (repeat for several).")
@commit_options
def remove(name, layer, head, data, server, ids, message, author):
    """Remove pairs by id, as one commit (older versions still read them).

    \b
    Example:
        memsvc mosaic remove facts --layer 0 --head 1 --id 3 --id 4 -m "wrong facts"
    """
    with open_store(data, server) as store:
        r = mosaic_of(store).remove(name, layer, head, list(ids), author=author, message=message)
    click.echo(f"committed version {r.version}: removed {len(r.ids)} pairs")


@mosaic.command()
@group_options
@click.argument("queries_file", type=click.Path(exists=True, dir_okay=False))
@store_options
@policy_options
@click.option("--mode", type=click.Choice(["exact", "topk", "lsh"]), default="exact", show_default=True)
@click.option("--k", type=int, default=0, help="TOPK: keys per query.")
@click.option("--bits", type=int, default=10, show_default=True, help="LSH: K bits per table.")
@click.option("--tables", type=int, default=0, help="LSH: L tables (default: from --budget, else 150).")
@click.option("--budget", type=float, default=0.0, help="LSH: expected fraction of pairs touched (picks L).")
@click.option("--version", "-v", type=int, default=None)
@click.option("--tag", default=None)
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Save outputs, lse, n as .npz.")
def query(name, layer, head, queries_file, data, server, beta, beta0, beta1, alpha, mode, k, bits, tables, budget,
          version, tag, out):
    """Read a group for the queries (m, key_dim) in a .npy: outputs, lse and n per query.

    \b
    Example:
        memsvc mosaic query facts --layer 0 --head 1 queries.npy --beta 8
        memsvc mosaic query facts queries.npy --mode topk --k 32 --version 3
        memsvc mosaic query facts queries.npy --mode lsh --bits 8 --budget 0.03 --out read.npz
    """
    queries = np.load(queries_file, allow_pickle=False)
    policy = policy_from(None, beta0, beta1, alpha)
    with open_store(data, server) as store:
        r = mosaic_of(store).query(name, layer, head, queries, beta=beta, policy=policy, mode=mode, k=k,
                                   lsh=LshParams(bits=bits, tables=tables, budget=budget), version=version, tag=tag)
    if out:
        np.savez(out, outputs=r.outputs, lse=r.lse, n=r.n)
    extra = f", {r.lsh_tables} tables, touched {np.mean(r.touched):.4f}" if r.touched is not None else ""
    click.echo(f"version {r.version}: {mode} over n={r.n} pairs, beta {r.beta:g}{extra}")
    for i, (o, lse) in enumerate(zip(r.outputs, r.lse)):
        head_values = ", ".join(f"{x:+.4f}" for x in o[:6])
        click.echo(f"  query {i}: n {r.n}  lse {lse:.4f}  output [{head_values}{', ...' if len(o) > 6 else ''}]")


@mosaic.command(name="list")
@store_options
@click.option("--version", "-v", type=int, default=None)
def list_(data, server, version):
    """List the mosaic stores with their live pairs per (layer, head).

    \b
    Example:
        memsvc mosaic list --server 127.0.0.1:50051
    """
    with open_store(data, server) as store:
        for s in mosaic_of(store).list_stores(version):
            p = s.policy
            click.echo(f"{s.name}\t{s.num_layers} layers x {s.num_heads} heads\tkey {s.key_dim} value {s.value_dim}\t"
                       f"{int(s.pairs.sum())} pairs\tbeta {p.beta1:g}*n^{p.alpha:g}+{p.beta0:g}\t"
                       f"topk {s.topk_index or 'exact top-k'}\t(version {s.version})")
            for (layer, head), n in np.ndenumerate(s.pairs):
                if n:
                    click.echo(f"  layer {layer} head {head}: {n} pairs")


@mosaic.command()
@group_options
@click.argument("out", type=click.Path(dir_okay=False))
@store_options
@click.option("--version", "-v", type=int, default=None)
def export(name, layer, head, out, data, server, version):
    """Export a group's live pairs at a version as .npz (ids, keys, values, labels; `add` reads it).

    \b
    Example:
        memsvc mosaic export facts --layer 0 --head 1 facts.npz --version 3
    """
    with open_store(data, server) as store:
        pairs = mosaic_of(store).read_pairs(name, layer, head, version)
    save_pair_arrays(out, pairs)
    click.echo(f"exported {len(pairs['ids'])} pairs of {name} layer {layer} head {head} version {pairs['version']} to {out}")
