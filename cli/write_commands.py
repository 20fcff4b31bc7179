"""Commands over the write path: the dead-letter queue and the local outbox.

``dlq replay`` and ``spool drain`` publish to the broker of the deployment the
command names (``Ops.send``: ``--broker-url``, else the Redis of ``--redis-url``).
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import click

from memory_worker import dlq
from memory_worker.cli.common import OperationalError, Ops, operation, publishing_operation
from memory_worker.ledger import Ledger
from memory_worker.messages import message_uuid
from memory_worker.spool import Outbox, Record


def _publish(ops: Ops, record: Record) -> None:
    """Publish one stored record (dead letter, outbox line) as the mirror task; raises when
    the broker does not take it."""
    ops.send(str(record["task_id"]), {"payload": record["payload"]})


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
@publishing_operation
def dlq_replay(ops: Ops) -> None:
    """Republish every entry (bypassing the duplicate check), removing each once published."""
    ledger = Ledger(ops.conn, ops.keys, ops.settings.redeliver_after_seconds)

    def publish(entry: dlq.DeadLetter) -> None:
        record = {"task_id": message_uuid(entry.client_msg_id), "payload": entry.payload}
        ledger.record(entry.client_msg_id, record, ops.now())  # on its way again
        _publish(ops, record)

    report = dlq.replay(ops.conn, ops.keys, publish)
    if report.busy:
        raise OperationalError("another replay is running")
    click.echo(f"Replayed {report.replayed}, unreadable {report.unreadable}, "
               f"remaining {report.remaining}")
    if report.error == "lock_lost":
        raise OperationalError("replay stopped early: another replay took over its lock")
    if report.error:
        raise OperationalError(f"replay stopped early: the broker at {ops.broker} did not "
                               f"take a task ({report.error})")


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
@publishing_operation
def spool_drain(ops: Ops) -> None:
    """Publish the outbox of MEMORY_SPOOL_DIR to the broker, oldest first."""
    directory = ops.settings.spool_dir
    if Path(directory).exists() and not Path(directory).is_dir():
        raise OperationalError(f"MEMORY_SPOOL_DIR {directory} is not a directory")
    try:
        report = Outbox(directory).drain(lambda record: _publish(ops, record))
    except OSError as exc:
        raise OperationalError(f"MEMORY_SPOOL_DIR {directory} cannot be used: "
                               f"{exc.strerror or type(exc).__name__}") from None
    if report.busy:
        raise OperationalError("another drain is running")
    click.echo(f"Published {report.published}, corrupt {report.corrupt}, "
               f"remaining {report.remaining}")
    if report.error:
        raise OperationalError(f"drain stopped: the broker at {ops.broker} did not take a "
                               f"task ({report.error})")
