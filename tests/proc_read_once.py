"""Child program: one fetch_thread_context from its own process, after a starting gun.

Run as ``python -m tests.proc_read_once REDIS_URL ZEP_URL THREAD_ID``; prints the meta.
"""

from __future__ import annotations

import json
import sys

import redis

from memory_worker.config import Settings
from memory_worker.runtime import Runtime


def main(redis_url: str, zep_url: str, thread_id: str) -> None:
    settings = Settings(flag_zep_write=True, flag_zep_read=True, zep_api_url=zep_url,
                        zep_api_key="test-key", redis_url=redis_url)
    runtime = Runtime(settings)
    gun = redis.Redis.from_url(redis_url, decode_responses=True)
    gun.incr("test:read:ready")
    if gun.blpop(["test:read:go"], timeout=60) is None:
        sys.exit("no starting gun")
    _, meta = runtime.fetch(thread_id, "summary")
    print(json.dumps(meta))


if __name__ == "__main__":
    main(*sys.argv[1:4])
