"""Operations on a data directory no server needs: backup, restore, fsck, compact, gc (local only)."""
import click

from memsvc.cli.options import data_option, open_store


def print_fsck(report):
    for line in report.notes:
        click.echo(f"note: {line}")
    for line in report.problems:
        click.echo(f"problem: {line}")
    click.echo(f"{'ok' if report.ok else 'DAMAGED'}: {report.versions_checked} versions, {report.bases_checked} base files, "
               f"{report.deltas_checked} delta rows checked; {len(report.problems)} problems")


@click.command()
@data_option
@click.option("--to", "out", required=True, type=click.Path(dir_okay=False), help="The backup file to write (a tar).")
def backup(data, out):
    """Write a consistent snapshot of a knowledge base to one file; safe while a server runs.

    \b
    Example:
        memsvc backup --data ./memsvc-data --to kb-2026-01-31.tar
    """
    from memsvc.store.backup import backup as run

    info = run(data, out, progress=True)
    click.echo(f"backed up version {info.head_version} to {info.path}: {info.files} files, {info.bytes / 1e6:.1f} MB")


@click.command()
@click.argument("backup_file", type=click.Path(exists=True, dir_okay=False))
@data_option
def restore(backup_file, data):
    """Restore a backup into a new (or empty) data directory; checksums and fsck must pass.

    \b
    Example:
        memsvc restore kb-2026-01-31.tar --data ./restored
    """
    from memsvc.store.backup import restore as run

    report = run(backup_file, data, progress=True)
    click.echo(f"restored {backup_file} into {data}")
    print_fsck(report)


@click.command()
@data_option
def fsck(data):
    """Verify a knowledge base no process has open: SQLite integrity, base files against the
    catalog, delta rows, and every retained version readable. Exit status 1 when damaged.

    \b
    Example:
        memsvc fsck --data ./memsvc-data
    """
    from memsvc.store.backup import fsck as run

    report = run(data, progress=True)
    print_fsck(report)
    if not report.ok:
        raise click.exceptions.Exit(1)


@click.command()
@data_option
def compact(data):
    """Fold deltas into new base arrays (a commit that changes no row).

    \b
    Example:
        memsvc compact --data ./memsvc-data
    """
    with open_store(data, None) as kb:
        r = kb.compact(progress=True)
    click.echo(f"committed version {r.version}: compacted")


@click.command()
@data_option
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
