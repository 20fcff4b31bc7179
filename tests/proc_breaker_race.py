"""Child program of the breaker race tests: wait for the starting gun, then act once.

Run as ``python -m tests.proc_breaker_race REDIS_URL NOW ACTION``, where ``NOW``
is the epoch every child's clock reads and ``ACTION`` is ``allow`` (ask for
admission) or ``fail`` (record one failure). Prints the outcome as JSON.
"""

from __future__ import annotations

import json
import sys

import redis

from memory_worker.breaker import Breaker
from memory_worker.keys import Keys

READY = "test:breaker_race:ready"
GO = "test:breaker_race:go"


def main(url: str, now: float, action: str) -> None:
    conn = redis.Redis.from_url(url, decode_responses=True)
    breaker = Breaker(conn, Keys(), clock=lambda: now)
    breaker.state()  # connect before the gun
    conn.incr(READY)
    if conn.blpop([GO], timeout=60) is None:
        sys.exit("no starting gun")
    if action == "allow":
        admission = breaker.allow()
        print(json.dumps({"allowed": admission.allowed, "trial": admission.trial}))
    elif action == "fail":
        print(json.dumps({"opened": breaker.record_failure()}))
    else:
        sys.exit(f"unknown action {action!r}")


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]), sys.argv[3])
