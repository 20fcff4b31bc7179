"""Child program: a process of the project writing metrics in multiprocess mode.

Run as ``python -m tests.proc_metrics_writer ACTION [ARG]`` with
``PROMETHEUS_MULTIPROC_DIR`` set; prints the pid whose files it wrote.

- ``count N``: N stored writes and one email redaction, then exit.
- ``hold N``: the same, then stay alive until stdin closes.
- ``pool-exit``: a Celery pool process ending: a live gauge and a stored write,
  then ``worker_process_shutdown`` as the pool sends it, then exit.
- ``pool-start FILE``: a Celery master forking a pool process whose pid a dead
  process had: FILE is put in place as that dead process's counter file, the
  child gets ``worker_process_init`` and stores one write.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from celery.signals import worker_process_init, worker_process_shutdown
from prometheus_client import Gauge

import memory_worker.exposition  # noqa: F401  (importing it connects the Celery signals)
from memory_worker import metrics


def _count(n: int) -> None:
    metrics.write_success.inc(n)
    metrics.redactions.labels(field_type="email").inc()


def _pool_exit() -> None:
    Gauge("memory_test_pool_busy", "A live gauge of a pool process",
          multiprocess_mode="livesum").set(1)
    metrics.write_success.inc()
    worker_process_shutdown.send(sender=None, pid=os.getpid(), exitcode=0)


def _pool_start(stale: Path) -> int:
    child = os.fork()
    if child == 0:
        directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
        shutil.copy(stale, Path(directory) / f"counter_{os.getpid()}.db")
        worker_process_init.send(sender=None)
        metrics.write_success.inc()
        os._exit(0)
    _, status = os.waitpid(child, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit("the pool process failed")
    return child


def main(action: str, arg: str = "") -> None:
    pid = os.getpid()
    if action in ("count", "hold"):
        _count(int(arg))
    elif action == "pool-exit":
        _pool_exit()
    elif action == "pool-start":
        pid = _pool_start(Path(arg))
    else:
        sys.exit(f"unknown action {action!r}")
    print(pid, flush=True)
    if action == "hold":
        sys.stdin.read()


if __name__ == "__main__":
    main(*sys.argv[1:3])
