"""The `memsvc` command line: thin click commands over the store (`--data`) or a server (`--server`)."""
from memsvc.cli import edits, model, mosaic, ops, search  # noqa: F401  each registers its commands
from memsvc.cli.main import cli  # noqa: F401
