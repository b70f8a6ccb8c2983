from memsvc.cli import cli

cli()
