"""Operations commands (backup, restore, fsck), registered on the `memsvc` group by memsvc/cli.py."""
import click

from memsvc.cli.main import cli


def data_option(f):
    return click.option("--data", envvar="MEMSVC_DATA", default="./memsvc-data", show_default=True,
                        type=click.Path(file_okay=False), help="The knowledge base's data directory.")(f)


def print_fsck(report):
    for line in report.notes:
        click.echo(f"note: {line}")
    for line in report.problems:
        click.echo(f"problem: {line}")
    click.echo(f"{'ok' if report.ok else 'DAMAGED'}: {report.versions_checked} versions, {report.bases_checked} base files, "
               f"{report.deltas_checked} delta rows checked; {len(report.problems)} problems")


@cli.command()
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


@cli.command()
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


@cli.command()
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
