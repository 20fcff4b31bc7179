"""The write circuit breaker's shared state (SPEC §6, §8).

One Redis hash per deployment, ``mem:write:circuit:v1``: ``state`` is
``closed`` or ``open``; an open circuit carries ``reopen_at`` (epoch seconds),
after which it is *half-open*: one trial call is admitted across all workers.
"""

from __future__ import annotations

import enum

import redis

from memory_worker.connections import as_text
from memory_worker.keys import Keys


class CircuitState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


def circuit_state(conn: redis.Redis, keys: Keys, *, now: float) -> CircuitState:
    fields = {as_text(k): as_text(v) for k, v in conn.hgetall(keys.write_circuit).items()}
    if fields.get("state") != CircuitState.OPEN:
        return CircuitState.CLOSED
    try:
        reopen_at = float(fields.get("reopen_at") or "0")
    except ValueError:
        return CircuitState.HALF_OPEN
    return CircuitState.OPEN if now < reopen_at else CircuitState.HALF_OPEN
