"""Child program of the cluster tests, configured by its environment (a cluster state store).

``python -m tests.proc_cluster reads NAME THREADS SECONDS``: after the starting gun,
THREADS threads read fresh threads for SECONDS; prints the sources seen, as JSON.
``python -m tests.proc_cluster probe NAME``: after the gun, the recovery probe once;
prints its result. The gun: each child counts itself in ``test:ready:NAME`` and waits
for an item on ``test:go:NAME``, both in the state cluster.
"""

from __future__ import annotations

import collections
import json
import sys
import threading
import time

from memory_worker.config import Settings
from memory_worker.connections import state_client
from memory_worker.runtime import Runtime


def wait_for_gun(settings: Settings, name: str) -> None:
    gun = state_client(settings)
    gun.incr(f"test:ready:{name}")
    if gun.blpop([f"test:go:{name}"], timeout=60) is None:
        sys.exit("no starting gun")


def reads(runtime: Runtime, threads: int, seconds: float) -> dict[str, int]:
    sources: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    ends = time.monotonic() + seconds

    def read(worker: int) -> None:
        n = 0
        while time.monotonic() < ends:
            _, meta = runtime.fetch(f"fresh-{worker}-{n}-{time.monotonic_ns()}", "summary")
            with lock:
                sources[str(meta["source"])] += 1
            n += 1

    pool = [threading.Thread(target=read, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return dict(sources)


def main(mode: str, name: str, *rest: str) -> None:
    settings = Settings.from_env()
    runtime = Runtime(settings)
    runtime.warm()
    if mode == "reads":
        runtime.fetch("warm-up", "summary")  # connections and scripts before the gun
        wait_for_gun(settings, name)
        print(json.dumps(reads(runtime, int(rest[0]), float(rest[1]))))
        return
    prober = runtime.prober()
    wait_for_gun(settings, name)
    print(prober.run().result.value)


if __name__ == "__main__":
    main(*sys.argv[1:])
