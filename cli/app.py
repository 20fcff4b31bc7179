"""The ``memory-worker`` command group and its subcommands."""

from __future__ import annotations

import click

from cli.config_commands import config
from cli.drill_commands import drill
from cli.metrics_commands import metrics_clean, metrics_server
from cli.mode_commands import clear, force, reset_failures, status
from cli.read_commands import invalidate, probe, zep_sim
from cli.write_commands import dlq_group, spool_group


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Operate the memory workers: modes, probes, dead letters, drills."""


for command in (status, force, clear, reset_failures, invalidate, probe, dlq_group,
                spool_group, drill, metrics_server, metrics_clean, config, zep_sim):
    cli.add_command(command)
