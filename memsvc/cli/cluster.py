"""`memsvc cluster up|status|down`: memsvc on a Ray cluster (memsvc/server/cluster.py)."""
import click

from memsvc.cli.options import data_option

address_option = click.option("--address", default=None, metavar="RAY_ADDRESS",
                              help="The Ray cluster (default: $RAY_ADDRESS, else the one running on this node).")


@click.group()
def cluster():
    """memsvc on a Ray cluster: a primary and one read replica per other node (docs/replication.md).

    \b
    Example:
        memsvc cluster up --data ./memsvc-data && memsvc cluster status
    """


@cluster.command()
@data_option
@address_option
@click.option("--replica-data", type=click.Path(file_okay=False), default=None,
              help="Where each node's replica keeps its data (<this>/<node id>; default <--data>-replicas).")
@click.option("--port", default=50051, show_default=True, type=int, help="The primary's port (replicas: any free one).")
@click.option("--api-keys-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="'<read|write> <key>' per line, for every server (the nodes' addresses are not loopback).")
@click.option("--follow-api-key", default=None, help="The read key replicas present to the primary.")
@click.option("--insecure", is_flag=True, help="Serve on the nodes' addresses without API keys (a private network).")
def up(data, address, replica_data, port, api_keys_file, follow_api_key, insecure):
    """Start the primary over --data on this node and a read replica on every other node.

    \b
    Example:
        memsvc cluster up --data ./memsvc-data --api-keys-file keys.txt --follow-api-key $READ_KEY
    """
    from memsvc.server import cluster as deployment

    deployment.connect(address)
    print_status(deployment.up(data, replica_data, port, api_keys_file=api_keys_file, follow_api_key=follow_api_key,
                               insecure=insecure))


@cluster.command()
@address_option
def status(address):
    """Each server: role, address, applied version and lag, node.

    \b
    Example:
        memsvc cluster status
    """
    from memsvc.server import cluster as deployment

    deployment.connect(address)
    print_status(deployment.status())


@cluster.command()
@address_option
def down(address):
    """Stop every memsvc server on the cluster (each drains and closes its store; data stays).

    \b
    Example:
        memsvc cluster down
    """
    from memsvc.server import cluster as deployment

    deployment.connect(address)
    names = deployment.down()
    click.echo(f"stopped {len(names)} servers: {', '.join(names)}" if names else "no memsvc servers on this cluster")


def print_status(rows):
    click.echo(f"{'role':<8} {'address':<22} {'version':>8} {'lag':>5} {'lag s':>6}  node")
    for row in rows:
        if "error" in row:
            click.echo(f"{row['role']:<8} {'-':<22} {'-':>8} {'-':>5} {'-':>6}  {row['name']}: {row['error']}")
            continue
        click.echo(f"{row['role']:<8} {row['address']:<22} {row['applied_version']:>8} {row['lag_versions']:>5} "
                   f"{row['lag_seconds']:>6.2f}  {row['node'][:16]}")
