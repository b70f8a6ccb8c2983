"""`memsvc serve`: the gRPC server on a data directory, seeded with the demo KB on first run."""
from pathlib import Path

import click

from memsvc.cli.options import data_option


@click.command()
@data_option
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=50051, show_default=True, type=int)
@click.option("--no-seed", is_flag=True, help="Do not create the demo knowledge base when --data holds none.")
@click.option("--api-keys-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="'<read|write> <key>' per line (MEMSVC_READ_KEYS / MEMSVC_WRITE_KEYS add more).")
@click.option("--insecure", is_flag=True, help="Allow a non-loopback --host without API keys.")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), default=None, help="PEM certificate chain: serve TLS.")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), default=None, help="PEM private key of --tls-cert.")
@click.option("--metrics-port", type=int, default=None, help="HTTP /metrics, /healthz, /readyz on this port (0: any free).")
@click.option("--drain-seconds", type=float, default=0.0, show_default=True,
              help="On SIGTERM, report NOT_SERVING this long before refusing calls.")
@click.option("--build-niceness", type=click.IntRange(0, 19), default=10, show_default=True,
              help="How much nicer than the server index builds run (0: same priority as Lookups).")
@click.option("--follow", metavar="PRIMARY", default=None,
              help="Serve as a read replica of the memsvc at PRIMARY (host:port): bootstrap an empty --data "
                   "from it, then apply its commits as they land; writes are refused, naming PRIMARY.")
@click.option("--min-version-wait", type=float, default=5.0, show_default=True,
              help="With --follow: how long a read naming a min_version this replica lacks waits (then UNAVAILABLE).")
@click.option("--max-streams", type=click.IntRange(1), default=16, show_default=True,
              help="LookupStream/SearchStream calls open at once (beyond: RESOURCE_EXHAUSTED; below the 32 workers).")
@click.option("--stream-idle-seconds", type=click.FloatRange(min=0, min_open=True), default=60.0, show_default=True,
              help="End a stream that sends no message for this long (UNAVAILABLE).")
@click.option("--limit", "limits", multiple=True, metavar="NAME=N", callback=lambda _c, _p, v: _limits(v),
              help="Set a work limit (repeatable): max_lookup_tokens, max_message_bytes, mosaic.max_scored, "
                   "search.max_k, ... (ServerConfig; an unknown NAME lists them all).")
@click.pass_context
def serve(ctx, data, host, port, no_seed, api_keys_file, insecure, tls_cert, tls_key, metrics_port, drain_seconds,
          build_niceness, follow, min_version_wait, max_streams, stream_idle_seconds, limits):
    """Serve a knowledge base over gRPC (health checking and reflection included).

    On first run an empty --data is seeded with the demo model's knowledge base. Beyond
    loopback, give API keys (or --insecure); SIGTERM drains and stops cleanly. With --follow, a
    read replica (docs/replication.md): --api-key / --tls-ca are what it presents to PRIMARY.

    \b
    Example:
        memsvc serve --data ./memsvc-data --port 50051
        memsvc serve --host 0.0.0.0 --api-keys-file keys.txt --tls-cert c.pem --tls-key k.pem --metrics-port 9100
        memsvc serve --follow 10.0.0.1:50051 --data ./replica-data --port 50052
        memsvc serve --limit mosaic.max_scored=16777216 --limit max_lookup_tokens=4096
    """
    import logging

    from memsvc.server.auth import check_exposure, load_keys
    from memsvc.server.main import ServerConfig, with_limits
    from memsvc.server.main import serve as run

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = with_limits(ServerConfig(data_dir=Path(data), host=host, port=port, api_keys_file=api_keys_file,
                                      insecure=insecure, tls_cert=tls_cert, tls_key=tls_key, metrics_port=metrics_port,
                                      drain_seconds=drain_seconds, build_niceness=build_niceness, follow=follow,
                                      min_version_wait=min_version_wait, follow_api_key=(ctx.obj or {}).get("api_key"),
                                      follow_tls_ca=(ctx.obj or {}).get("tls_ca"), max_streams=max_streams,
                                      stream_idle_seconds=stream_idle_seconds), limits)
    check_exposure(host, load_keys(api_keys_file), insecure)  # refuse before seeding anything
    if not no_seed and not follow and not (Path(data) / "catalog.db").exists():
        from memsvc.cli.demo import seed_demo_kb

        seed_demo_kb(data)
    run(config)

def _limits(values) -> dict:
    """--limit NAME=N options as {NAME: N} (the names are checked by with_limits)."""
    limits = {}
    for value in values:
        name, sep, number = value.partition("=")
        if not sep or not number.strip().isdigit():
            raise click.BadParameter(f"{value!r}: expected NAME=N with N a whole number")
        limits[name.strip()] = int(number)
    return limits
