"""``metrics-server`` and ``metrics-clean``: serving the metrics of every process (SPEC §9).

The multiprocess directory is emptied when the whole deployment starts
(``metrics-clean``), never by the metrics server: a counter it serves never
goes down when it, or any other process, restarts (see ``memory_worker.exposition``).
"""

from __future__ import annotations

import click

from memory_worker import exposition
from memory_worker.cli.common import OperationalError, Ops, operation


def _multiproc_dir(ops: Ops) -> str | None:
    directory = ops.settings.prometheus_multiproc_dir
    if directory is not None:
        problem = exposition.multiproc_dir_problem(directory)
        if problem is not None:
            raise OperationalError(f"PROMETHEUS_MULTIPROC_DIR {directory} {problem}")
    return directory


@click.command("metrics-server")
@click.option("--host", envvar="MEMORY_METRICS_HOST", default="127.0.0.1", show_default=True,
              help="Address to listen on (env MEMORY_METRICS_HOST).")
@click.option("--port", envvar="MEMORY_METRICS_PORT", type=click.IntRange(0, 65535),
              default=9808, show_default=True,
              help="Port to listen on, 0 for any free one (env MEMORY_METRICS_PORT).")
@operation
def metrics_server(ops: Ops, host: str, port: int) -> None:
    """Serve /metrics until SIGTERM or SIGINT.

    With PROMETHEUS_MULTIPROC_DIR set, serves the sum over every file in it, those
    of ended processes included; it removes none (see metrics-clean).
    """
    if _multiproc_dir(ops) is None:
        click.echo("PROMETHEUS_MULTIPROC_DIR is not set: serving this process's metrics only",
                   err=True)
    registry = exposition.build_registry(ops.settings, clock=ops.clock)
    try:
        exposition.serve(registry, host, port, on_ready=lambda url: click.echo(
            f"Metrics server listening on {url}", err=True))
    except OSError as exc:
        raise OperationalError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None


@click.command("metrics-clean")
@click.option("--deployment", metavar="ID", default=None,
              help="Empty the directory only the first time this ID asks "
                   "(scripts/run-with-env.sh passes its supervisord's).")
@operation
def metrics_clean(ops: Ops, deployment: str | None) -> None:
    """Empty PROMETHEUS_MULTIPROC_DIR as the whole deployment starts.

    Run it once before starting the deployment's processes: an earlier run's counts
    would otherwise be added to this run's totals. It refuses while a process named
    in the directory runs, since removing its files would lower the counters served.
    Under supervisord, scripts/run-with-env.sh runs it with --deployment.
    """
    directory = _multiproc_dir(ops)
    if directory is None:
        raise OperationalError("PROMETHEUS_MULTIPROC_DIR is not set: nothing to clean")
    try:
        _clean(directory, deployment)
    finally:
        # This process counts nothing: its files hold the zeros written at import.
        exposition.forget_own_files(directory)


def _clean(directory: str, deployment: str | None) -> None:
    if deployment is None:
        running = exposition.running_writers(directory)
        if running:
            raise OperationalError(
                f"processes {', '.join(map(str, running))} still write to {directory}: "
                "stop the deployment first")
        removed = exposition.clean_directory(directory)
    else:
        started = exposition.start_deployment(directory, deployment)
        if started is None:
            click.echo(f"Kept the metric files of {directory}: they are this deployment's")
            return
        removed = started
    click.echo(f"Removed {len(removed)} metric file(s) from {directory}")
