"""Child program: enqueue_message from its own process, after a starting gun.

Run as ``python -m tests.proc_enqueue THREAD_ID CLIENT_MSG_ID CONTENT`` with the
project's environment set; prints the EnqueueResult as JSON.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import redis

from memory_worker import enqueue_message


def main(thread_id: str, client_msg_id: str, content: str) -> None:
    gun = redis.Redis.from_url(os.environ["REDIS_URL"], decode_responses=True)
    gun.incr("test:enqueue:ready")
    if gun.blpop(["test:enqueue:go"], timeout=60) is None:
        sys.exit("no starting gun")
    result = enqueue_message(thread_id, "user", content, client_msg_id)
    print(json.dumps(dataclasses.asdict(result)))


if __name__ == "__main__":
    main(*sys.argv[1:4])
