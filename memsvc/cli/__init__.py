"""The `memsvc` command line: thin click commands over KnowledgeBase (local, `--data`) and
MemoryClient (`--server HOST:PORT`). Both have the same methods, so a command is the same commit
either way. Each module holds one family of commands; they are registered here, by name."""
import errno

import click

from memsvc.cli import cluster, demo, edits, examples, generate, history, mosaic, ops, search, serve, tables
from memsvc.core.errors import MemsvcError


class MemsvcGroup(click.Group):
    """Every memsvc error, and a full disk under any command, becomes one line ``Error: ...``
    and exit status 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MemsvcError as e:
            raise click.ClickException(str(e)) from None
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
            raise click.ClickException(f"no space left on the device{f' of {e.filename}' if e.filename else ''}") from None


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
        memsvc edit --token Elbriar --like Boova -m "Elbriar now uses Boova's rows"
        memsvc log
        MEMSVC_API_KEY=... memsvc --tls-ca ca.pem log --server kb.example:50051
    """
    ctx.obj = {"api_key": api_key, "tls_ca": tls_ca}


cli.add_command(serve.serve)
cli.add_command(demo.train_demo)
cli.add_command(examples.examples)
cli.add_command(tables.import_)
cli.add_command(tables.export)
cli.add_command(tables.tables)
cli.add_command(tables.lookup)
cli.add_command(edits.edit)
cli.add_command(edits.inject)
cli.add_command(edits.revert)
cli.add_command(edits.eval_edits)
cli.add_command(generate.generate)
cli.add_command(history.log)
cli.add_command(history.show)
cli.add_command(history.diff)
cli.add_command(history.tag)
cli.add_command(ops.backup)
cli.add_command(ops.restore)
cli.add_command(ops.fsck)
cli.add_command(ops.compact)
cli.add_command(ops.gc)
cli.add_command(mosaic.mosaic)
cli.add_command(search.search)
cli.add_command(search.index)
cli.add_command(cluster.cluster)
