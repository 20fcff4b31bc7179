"""``python manage.py memory_worker <subcommand>``: ``memory-worker`` with Django's settings.

Every argument goes to the click group unchanged, so ``manage.py memory_worker
status --json`` prints what ``memory-worker status --json`` prints, and exits
with its code (0, 1 for an operational failure, 2 for a usage error). The
settings are those ``ready()`` resolved from ``settings.MEMORY_WORKER`` and the
environment (see ``memory_worker.contrib.django.apps``).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from memory_worker.contrib.django.apps import COMMAND, configuration_error


def run_cli(args: Sequence[str], prog_name: str) -> int:
    """Run the click group on ``args``; its exit code."""
    error = configuration_error()
    if error is not None and not {"-h", "--help"} & set(args):
        print(f"memory-worker: error: configuration: {error}", file=sys.stderr)
        return 1
    from memory_worker.cli.main import cli

    try:
        cli.main(args=list(args), prog_name=prog_name, standalone_mode=True)
    except SystemExit as done:
        code = done.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


class Command(BaseCommand):  # type: ignore[misc]  # django ships no types
    help = "The memory-worker CLI with this project's settings (try: status --json)."

    def run_from_argv(self, argv: list[str]) -> None:
        """From the command line: not Django's parser, click's, so options reach it as given."""
        sys.exit(run_cli(argv[2:], prog_name=f"{Path(argv[0]).name} {COMMAND}"))

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("arguments", nargs=argparse.REMAINDER,
                            help="a memory-worker subcommand and its options")

    def handle(self, *args: Any, **options: Any) -> None:
        """From ``call_command``: the output goes to the command's streams."""
        out = getattr(self.stdout, "_out", sys.stdout)
        err = getattr(self.stderr, "_out", sys.stderr)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = run_cli(options["arguments"], prog_name=f"manage.py {COMMAND}")
        if code:
            raise CommandError(f"memory-worker exited with status {code}", returncode=code)
