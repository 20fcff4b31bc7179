"""``memory.probe_recovery``: beat's recovery probe, on the ``memory_control`` queue."""

from __future__ import annotations

from typing import Any

from memory_worker.celery_app import PROBE_TASK, app
from memory_worker.runtime import default_runtime


@app.task(name=PROBE_TASK, ignore_result=True, acks_late=False)  # type: ignore[untyped-decorator]
def probe_recovery() -> dict[str, Any]:
    """Run the probe once; a lost probe needs no redelivery, the next interval brings one."""
    report = default_runtime().prober().run()
    return {"result": report.result.value, "detail": report.detail}
