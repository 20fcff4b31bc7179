"""A Zep v2 test double served over real HTTP (SPEC §12).

The demo, the drills and the tests talk to it through the real ``zep-python``
SDK. It keeps Zep's rules (API key, message ``uuid`` unique, 2500 characters
per message, 30 messages per add, 404 for an unknown session) and takes faults
through a control API under ``/_sim`` or the same methods on ``ZepSimulator``.

    with ZepSimulator(api_key="test-key") as sim:
        sim.add_fault(Fault(method="GET", path="*/memory", status=503, times=1))
        ...  # point the client at sim.url

Modules: ``store`` (state and Zep's rules), ``faults`` (fault rules), ``api``
(routes, without HTTP), ``server`` (HTTP, the handle and ``serve``).
"""

from __future__ import annotations

from memory_worker.zep_sim.faults import Fault
from memory_worker.zep_sim.server import ZepSimulator, serve
from memory_worker.zep_sim.store import (
    DUPLICATE_UUID,
    MAX_CONTENT_CHARS,
    MAX_MESSAGES_PER_ADD,
    RequestRecord,
)

__all__ = [
    "DUPLICATE_UUID",
    "MAX_CONTENT_CHARS",
    "MAX_MESSAGES_PER_ADD",
    "Fault",
    "RequestRecord",
    "ZepSimulator",
    "serve",
]
