"""Commands over the memory mode: status, force, clear, reset-failures."""

from __future__ import annotations

import json
import re

import click

from memory_worker import modes
from memory_worker.cli.common import Ops, operation
from memory_worker.guard import Guard
from memory_worker.status import read_status

_REASON = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def _base(ops: Ops) -> modes.Mode:
    return modes.base_mode(write=ops.settings.flag_zep_write, read=ops.settings.flag_zep_read)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@operation
def status(ops: Ops, as_json: bool) -> None:
    """Show base, forced and effective mode."""
    snapshot = read_status(ops.conn, ops.settings, ops.keys, now=ops.now())
    click.echo(json.dumps(snapshot.as_json()) if as_json else snapshot.as_text())


def _reason(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not _REASON.match(value):
        raise click.BadParameter("one word of letters, digits, '_', '.', ':' or '-' (max 64)")
    return value


@click.command()
@click.argument("reason", callback=_reason)
@click.option("--ttl", type=click.IntRange(min=1), default=None, metavar="SECONDS",
              help="Hold in seconds (default MEMORY_DOWNGRADE_HOLD_SECONDS).")
@operation
def force(ops: Ops, reason: str, ttl: int | None) -> None:
    """Force write_only now: reads stop until `clear` or a successful probe."""
    hold = ttl if ttl is not None else ops.settings.downgrade_hold_seconds
    now = ops.now()
    record = modes.ForcedRecord.new(reason=reason, source="ops", now=now, hold_seconds=hold)
    modes.force(ops.conn, ops.keys, record, base=_base(ops),
                grace_seconds=ops.settings.grace_seconds, now=now)
    click.echo(f"Forced mode: {record.mode} (reason={reason}, remaining={hold}s)")
    click.echo(f"Effective mode: {modes.effective_mode(_base(ops), record).value}")


@click.command()
@operation
def clear(ops: Ops) -> None:
    """Remove the forced record: reads resume at once."""
    removed = modes.clear(ops.conn, ops.keys, base=_base(ops), now=ops.now(),
                          grace_seconds=ops.settings.grace_seconds, reason="ops_clear")
    if removed is None:
        click.echo("Forced mode: None (nothing to clear)")
    else:
        click.echo(f"Cleared forced mode (reason={removed.reason}, source={removed.source})")
    click.echo(f"Effective mode: {_base(ops).value}")


@click.command("reset-failures")
@operation
def reset_failures(ops: Ops) -> None:
    """Zero the consecutive read failure counter."""
    guard = Guard(ops.conn, ops.settings, keys=ops.keys, clock=ops.clock)
    before = guard.failure_count()
    guard.reset_failures()
    click.echo(f"Consecutive failures reset (was {before})")
