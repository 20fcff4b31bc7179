"""Commands over the write path: the dead-letter queue and the local outbox."""

from __future__ import annotations

import datetime
import json

import click

from cli.common import OperationalError, Ops, operation
from memory_worker import dlq
from memory_worker.enqueue import Publisher
from memory_worker.ledger import Ledger
from memory_worker.messages import message_uuid
from memory_worker.runtime import send_mirror


def _publisher(ops: Ops) -> Publisher:
    return Publisher(ops.settings, ops.conn, send_mirror, clock=ops.clock)


@click.group("dlq")
def dlq_group() -> None:
    """Inspect, replay or purge dead-lettered writes (mem:write:dlq)."""


@dlq_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most N entries.")
@operation
def dlq_list(ops: Ops, as_json: bool, limit: int | None) -> None:
    """Show dead letters, oldest first (message content is not printed)."""
    found = dlq.entries(ops.conn, ops.keys, limit)
    for entry in found:
        if isinstance(entry, dlq.Unreadable):
            click.echo(json.dumps({"unreadable": entry.error}) if as_json
                       else f"(unreadable entry: {entry.error})")
            continue
        row = {"client_msg_id": entry.client_msg_id, "thread_id": entry.thread_id,
               "reason": entry.reason, "status_code": entry.status_code,
               "attempts": entry.attempts, "failed_at": entry.failed_at}
        if as_json:
            click.echo(json.dumps(row))
        else:
            when = datetime.datetime.fromtimestamp(entry.failed_at, datetime.UTC)
            click.echo(f"{entry.client_msg_id}  thread={entry.thread_id}  reason={entry.reason}"
                       f"  status={entry.status_code}  attempts={entry.attempts}"
                       f"  failed_at={when:%Y-%m-%dT%H:%M:%SZ}")
    if not as_json:
        click.echo(f"{len(found)} entr{'y' if len(found) == 1 else 'ies'}")


@dlq_group.command("replay")
@operation
def dlq_replay(ops: Ops) -> None:
    """Republish every entry (bypassing the duplicate check), removing each once published."""
    publisher = _publisher(ops)
    ledger = Ledger(ops.conn, ops.keys, ops.settings.redeliver_after_seconds)

    def publish(entry: dlq.DeadLetter) -> None:
        record = {"task_id": message_uuid(entry.client_msg_id), "payload": entry.payload}
        ledger.record(entry.client_msg_id, record, ops.now())  # on its way again
        publisher.publish(record)

    report = dlq.replay(ops.conn, ops.keys, publish)
    if report.busy:
        raise OperationalError("another replay is running")
    click.echo(f"Replayed {report.replayed}, unreadable {report.unreadable}, "
               f"remaining {report.remaining}")
    if report.error:
        raise OperationalError(f"replay stopped early: {report.error}")


@dlq_group.command("purge")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@operation
def dlq_purge(ops: Ops, yes: bool) -> None:
    """Drop every dead letter for good."""
    if not yes:
        click.confirm(f"Drop {dlq.size(ops.conn, ops.keys)} dead letters?", abort=True)
    click.echo(f"Purged {dlq.purge(ops.conn, ops.keys)} entries")


@click.group("spool")
def spool_group() -> None:
    """The local outbox used while the broker is unreachable."""


@spool_group.command("drain")
@operation
def spool_drain(ops: Ops) -> None:
    """Publish the outbox of MEMORY_SPOOL_DIR to the broker, oldest first."""
    report = _publisher(ops).drain()
    if report.busy:
        raise OperationalError("another drain is running")
    click.echo(f"Published {report.published}, corrupt {report.corrupt}, "
               f"remaining {report.remaining}")
    if report.error:
        raise OperationalError(f"drain stopped: the broker refused ({report.error})")
