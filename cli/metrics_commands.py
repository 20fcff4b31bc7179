"""``metrics-server``: every process's metrics plus the live mode and dead-letter size (SPEC §9)."""

from __future__ import annotations

import click

from cli.common import OperationalError, Ops, operation
from memory_worker import exposition


@click.command("metrics-server")
@click.option("--host", envvar="MEMORY_METRICS_HOST", default="127.0.0.1", show_default=True,
              help="Address to listen on (env MEMORY_METRICS_HOST).")
@click.option("--port", envvar="MEMORY_METRICS_PORT", type=click.IntRange(0, 65535),
              default=9808, show_default=True,
              help="Port to listen on, 0 for any free one (env MEMORY_METRICS_PORT).")
@operation
def metrics_server(ops: Ops, host: str, port: int) -> None:
    """Serve /metrics until SIGTERM or SIGINT.

    With PROMETHEUS_MULTIPROC_DIR set, the metric files of processes that are no
    longer running are removed first: a previous run's files would otherwise be
    merged into this run's totals and count their events a second time.
    """
    directory = ops.settings.prometheus_multiproc_dir
    if directory is None:
        click.echo("PROMETHEUS_MULTIPROC_DIR is not set: serving this process's metrics only",
                   err=True)
    else:
        problem = exposition.multiproc_dir_problem(directory)
        if problem is not None:
            raise OperationalError(f"PROMETHEUS_MULTIPROC_DIR {directory} {problem}")
        removed = exposition.wipe_stale_files(directory)
        click.echo(f"Removed {len(removed)} metric file(s) of ended processes from {directory}",
                   err=True)
    registry = exposition.build_registry(ops.settings, clock=ops.clock)
    try:
        exposition.serve(registry, host, port, on_ready=lambda url: click.echo(
            f"Metrics server listening on {url}", err=True))
    except OSError as exc:
        raise OperationalError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
