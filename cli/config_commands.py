"""``config check``: validate the environment without starting anything."""

from __future__ import annotations

import click

from memory_worker.cli.common import Ops, operation


@click.group()
def config() -> None:
    """Inspect the configuration."""


@config.command()
@operation
def check(ops: Ops) -> None:
    """Validate every variable; print the values (the key only as set/unset)."""
    for variable, value in ops.settings.describe().items():
        click.echo(f"{variable}={'' if value is None else value}")
    click.echo("Configuration OK")
