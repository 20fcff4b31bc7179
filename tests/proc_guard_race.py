"""Child program of the race test: wait for the starting gun, then record one failure.

Run as ``python -m tests.proc_guard_race REDIS_URL``; prints the decision as JSON.
"""

from __future__ import annotations

import json
import sys

import redis

from memory_worker.config import Settings
from memory_worker.guard import Guard


def main(url: str) -> None:
    conn = redis.Redis.from_url(url, decode_responses=True)
    settings = Settings(flag_zep_write=True, flag_zep_read=True,
                        zep_api_url="http://127.0.0.1:9", zep_api_key="test-key", redis_url=url)
    guard = Guard(conn, settings)
    guard.failure_count()  # connect and load the script before the gun
    conn.incr("test:race:ready")
    if conn.blpop(["test:race:go"], timeout=60) is None:
        sys.exit("no starting gun")
    decision = guard.record_failure()
    print(json.dumps({"forced": decision.forced, "count": decision.fail_count}))


if __name__ == "__main__":
    main(sys.argv[1])
