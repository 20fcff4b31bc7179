"""The ``memory-worker`` command group and its subcommands."""

from __future__ import annotations

import click

from memory_worker.cli.config_commands import config
from memory_worker.cli.drill_commands import drill
from memory_worker.cli.metrics_commands import metrics_clean, metrics_server
from memory_worker.cli.mode_commands import clear, force, reset_failures, status
from memory_worker.cli.read_commands import invalidate, probe, zep_sim
from memory_worker.cli.write_commands import dlq_group, spool_group


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Operate the memory workers: modes, probes, dead letters, drills."""


for command in (status, force, clear, reset_failures, invalidate, probe, dlq_group,
                spool_group, drill, metrics_server, metrics_clean, config, zep_sim):
    cli.add_command(command)
