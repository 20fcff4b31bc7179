"""`memory-worker drill`: the go-live checklist's drills against a running stack."""

from __future__ import annotations

import sys

import click

from memory_worker import drills
from memory_worker.cli.common import Ops, operation
from memory_worker.observation import SimControl


@click.command()
@click.argument("names", nargs=-1, required=True, metavar="auth|timeout|probe-fail|all",
                type=click.Choice([*drills.DRILL_NAMES, "all"]))
@click.option("--zep-sim-url", metavar="URL", default=None,
              help="The Zep simulator the stack reads from (default ZEP_API_URL).")
@click.option("--app-url", metavar="URL", default=None,
              help="Drive reads through this app's /api/chat/ (default: in this process).")
@click.option("--metrics-url", metavar="URL", default=None,
              help="Check metric deltas here, e.g. http://127.0.0.1:9808/metrics.")
@click.option("--wait-for-beat", is_flag=True,
              help="probe-fail: wait for the beat's probe instead of probing here.")
@click.option("--hold", type=click.IntRange(min=1), default=1, show_default=True,
              metavar="SECONDS", help="probe-fail: hold of the record the drill forces.")
@operation
def drill(ops: Ops, names: tuple[str, ...], zep_sim_url: str | None, app_url: str | None,
          metrics_url: str | None, wait_for_beat: bool, hold: int) -> None:
    """Run drills: inject a fault in the simulator, watch the guard react, clean up.

    Prints `PASS <drill>: ...` or `FAIL <drill>: ...` per drill; exits 1 unless all
    passed. Each drill removes its faults and clears the forced record it caused,
    so drills run back to back; none starts while a forced record exists.
    """
    sim_url = zep_sim_url or ops.settings.zep_api_url
    if not sim_url:
        raise click.UsageError("pass --zep-sim-url or set ZEP_API_URL")
    stack = drills.Stack(ops.settings, SimControl(sim_url), app_url=app_url,
                         metrics_url=metrics_url, wait_for_beat=wait_for_beat,
                         drill_hold_seconds=hold, clock=ops.clock)
    passed = True
    try:
        for result in drills.run_drills(stack, names):
            click.echo(result.line())
            passed = passed and result.passed
    finally:
        stack.close()
    if not passed:
        sys.exit(1)
