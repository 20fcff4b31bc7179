"""Commands over the read path: invalidate, probe, and the local Zep simulator."""

from __future__ import annotations

import click

from memory_worker import cache
from memory_worker.cli.common import OperationalError, Ops, operation
from memory_worker.errors import ConfigError, InvalidRequest
from memory_worker.probe import Prober, ProbeResult
from memory_worker.reader import check_request
from memory_worker.zep import ZepApi, connect


@click.command()
@click.argument("thread_id")
@operation
def invalidate(ops: Ops, thread_id: str) -> None:
    """Delete a thread's cached context (all views, negative entries included)."""
    try:
        check_request(thread_id, "summary")
    except InvalidRequest as exc:
        raise click.BadParameter(str(exc), param_hint="THREAD_ID") from None
    removed = cache.invalidate(ops.conn, ops.keys, thread_id)
    click.echo(f"Invalidated {thread_id}: {removed} cache entr{'y' if removed == 1 else 'ies'}")


@click.command()
@operation
def probe(ops: Ops) -> None:
    """Run the recovery probe once, now (does nothing unless a hold is over)."""
    built: list[ZepApi] = []

    def zep() -> ZepApi:  # only when a request is due: a probe with nothing to do needs no Zep
        try:
            built.append(connect(ops.settings, ops.conn))
        except ConfigError as exc:
            raise OperationalError(f"configuration: {exc}") from None
        return built[-1]

    try:
        report = Prober(ops.conn, ops.settings, zep, clock=ops.clock, keys=ops.keys).run()
    finally:
        for client in built:
            client.close()
    click.echo(f"Probe: {report.result.value} ({report.detail})")
    if report.result is ProbeResult.FAILURE and report.record is not None:
        click.echo(f"Forced mode: {report.record.mode} (reason={report.record.reason}, "
                   f"remaining={report.record.hold_seconds}s)")


@click.command("zep-sim")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8001, show_default=True)
@click.option("--api-key", envvar="ZEP_API_KEY", default=None,
              help="The key clients must send (env ZEP_API_KEY).")
@operation
def zep_sim(ops: Ops, host: str, port: int, api_key: str | None) -> None:
    """Serve the Zep simulator (a test double) until interrupted."""
    from memory_worker.zep_sim import serve

    if not api_key:
        raise click.UsageError("set ZEP_API_KEY or pass --api-key")
    try:
        serve(host, port, api_key,
              on_ready=lambda url: click.echo(f"Zep simulator listening on {url}", err=True))
    except OSError as exc:
        raise OperationalError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
