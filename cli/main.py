"""Entry point of ``memory-worker``.

The commands (``cli.app``) are imported when the entry point runs: importing the
library opens this process's metric files when ``PROMETHEUS_MULTIPROC_DIR`` is
set (prometheus_client's multiprocess mode), and a directory that cannot hold
them must end the command with one line, not a traceback.
"""

from __future__ import annotations

import sys

import click


def main() -> None:
    try:
        from memory_worker.cli.app import cli
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        click.echo(f"memory-worker: error: cannot open{where}: {exc.strerror or exc} "
                   "(metric files go to PROMETHEUS_MULTIPROC_DIR)", err=True)
        sys.exit(1)
    cli(prog_name="memory-worker")


def __getattr__(name: str) -> click.Group:
    """``from memory_worker.cli.main import cli``: the group, imported on first use."""
    if name == "cli":
        from memory_worker.cli.app import cli

        return cli
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
