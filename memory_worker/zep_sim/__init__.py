"""A Zep test double served over real HTTP (SPEC §12): v2 and v4 side by side.

The demo, the drills and the tests talk to it through the real SDKs:
``zep-python`` under ``/api/v2``, ``zep-cloud`` under ``/api/v4``. It keeps
Zep's rules (API key; 2500 characters per message and 30 messages per add; on
v2 a message ``uuid`` is unique and an unknown session is a 404; on v4 Zep
assigns every uuid and a repeated message is stored again) and takes faults,
for every route of both, through a control API under ``/_sim`` or the same
methods on ``ZepSimulator``. The request log records, per add, which messages
(``client_msg_id``, ``chunk``) it carried and its ``Idempotency-Key``.

    with ZepSimulator(api_key="test-key") as sim:
        sim.add_fault(Fault(method="GET", path="*/memory", status=503, times=1))
        ...  # point the client at sim.url

Modules: ``store`` (v2 state and rules), ``threads`` and ``messages_v4`` (v4
state and rules), ``paging`` (v4 cursor pages), ``request_log``, ``faults``
(fault rules), ``routing``, ``api`` and ``v4`` (routes, without HTTP),
``server`` (HTTP, the handle and ``serve``).
"""

from __future__ import annotations

from memory_worker.zep_sim.faults import Fault
from memory_worker.zep_sim.messages_v4 import MAX_METADATA_KEYS
from memory_worker.zep_sim.request_log import MessageMark, RequestRecord
from memory_worker.zep_sim.server import ZepSimulator, serve
from memory_worker.zep_sim.store import (
    DUPLICATE_UUID,
    MAX_CONTENT_CHARS,
    MAX_MESSAGES_PER_ADD,
)

__all__ = [
    "DUPLICATE_UUID",
    "MAX_CONTENT_CHARS",
    "MAX_MESSAGES_PER_ADD",
    "MAX_METADATA_KEYS",
    "Fault",
    "MessageMark",
    "RequestRecord",
    "ZepSimulator",
    "serve",
]
