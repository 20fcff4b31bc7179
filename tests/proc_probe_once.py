"""Child program: run the recovery probe once after a starting gun; print the result.

Run as ``python -m tests.proc_probe_once REDIS_URL ZEP_URL [ZEP_API_VERSION]``.
"""

from __future__ import annotations

import sys

import redis

from memory_worker.config import Settings
from memory_worker.runtime import Runtime


def main(redis_url: str, zep_url: str, zep_api_version: str = "v2") -> None:
    settings = Settings(flag_zep_write=True, flag_zep_read=True, zep_api_url=zep_url,
                        zep_api_key="test-key", redis_url=redis_url, probe_timeout_ms=2000,
                        zep_api_version=zep_api_version)
    prober = Runtime(settings).prober()
    gun = redis.Redis.from_url(redis_url, decode_responses=True)
    gun.incr("test:probe:ready")
    if gun.blpop(["test:probe:go"], timeout=60) is None:
        sys.exit("no starting gun")
    print(prober.run().result.value)


if __name__ == "__main__":
    main(*sys.argv[1:4])
