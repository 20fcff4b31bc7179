"""``memory.sweep_pending``: beat's sweep of the delivery ledger, on ``memory_control``.

Publishes again each message past its deadline that is neither done nor being
written (see ``memory_worker.ledger``).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from memory_worker.celery_app import SWEEP_TASK, app
from memory_worker.runtime import default_runtime, send_mirror


@app.task(name=SWEEP_TASK, ignore_result=True, acks_late=False)  # type: ignore[untyped-decorator]
def sweep_pending() -> dict[str, int]:
    """One sweep; a lost sweep needs no redelivery, the next interval brings one."""
    runtime = default_runtime()

    def publish(record: dict[str, Any]) -> None:
        send_mirror(str(record["task_id"]), {"payload": record["payload"]})

    return asdict(runtime.ledger().sweep(publish, now=runtime.clock()))
