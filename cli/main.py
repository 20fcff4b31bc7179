"""Entry point of ``memory-worker``."""

from __future__ import annotations

import click

from cli.config_commands import config
from cli.mode_commands import clear, force, reset_failures, status


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Operate the memory workers: modes, probes, dead letters, drills."""


for command in (status, force, clear, reset_failures, config):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="memory-worker")
