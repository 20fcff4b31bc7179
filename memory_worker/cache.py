"""Context cache entries: a positive entry holds context, a negative one the failure.

Both live at ``mem:ctx:{thread_id}:{view}``, so ``memory-worker invalidate``
removes either with the same three keys. Values are JSON; anything else found
there (a garbage value, an older format) reads as a miss, never as an error.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from memory_worker.keys import Keys
from memory_worker.redis_clients import StateRedis


class CacheEntry(NamedTuple):  # a tuple: decoded on every cache hit, it must be cheap
    context: dict[str, Any] | None = None
    reason: str | None = None  # set on negative entries

    @property
    def negative(self) -> bool:
        return self.context is None


def positive(context: dict[str, Any]) -> str:
    return json.dumps({"context": context}, separators=(",", ":"), ensure_ascii=False)


def negative(reason: str) -> str:
    return json.dumps({"negative": True, "reason": reason}, separators=(",", ":"))


def decode(raw: str | None) -> CacheEntry | None:
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    if data.get("negative") is True and isinstance(data.get("reason"), str):
        return CacheEntry(reason=data["reason"])
    context = data.get("context")
    return CacheEntry(context=context) if isinstance(context, dict) else None


def invalidate(conn: StateRedis, keys: Keys, thread_id: str) -> int:
    """Delete the thread's cached views, negative entries included; return how many existed."""
    return int(conn.delete(*keys.contexts(thread_id)))
