"""The simulator in a process of its own, for benchmarks, demos and drills."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

_LISTENING = re.compile(r"listening on (http://\S+)")


def spawn(log: Path, api_key: str, port: int = 0, timeout: float = 30.0
          ) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``memory-worker zep-sim``; return the process and its base URL.

    Its output goes to ``log`` (a file, never a pipe nobody reads, which would
    stall the simulator once full).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    exe = Path(sys.executable).with_name("memory-worker")
    with log.open("wb") as out:
        proc = subprocess.Popen([str(exe), "zep-sim", "--port", str(port), "--api-key", api_key],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _LISTENING.search(log.read_text(errors="replace"))
        if found:
            return proc, found.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"the Zep simulator did not start; see {log}")
