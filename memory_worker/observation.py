"""Talking to a running stack from outside: the simulator's control API and metric scrapes.

Used by the drills and the demo. Every failure to reach what was asked for is
a ``DrillAborted`` naming the URL, never a traceback from urllib.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import Metric
from prometheus_client.parser import text_string_to_metric_families

from memory_worker.errors import DrillAborted

HTTP_TIMEOUT_S = 10.0
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_call(method: str, url: str, body: object = None) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with _NO_PROXY.open(request, timeout=HTTP_TIMEOUT_S) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        raise DrillAborted(f"{method} {url} failed: {getattr(exc, 'reason', exc)}") from None


# The routes each Zep API reads through (fault globs: ``*`` crosses ``/``). v4's cover
# the probe's ``GET /api/v4/threads/{uuid}``, as v2's probe is a memory read.
READ_PATHS = {"v2": "*/sessions/*/memory", "v4": "/api/v4/threads/*"}


class SimControl:
    """The simulator's control API (``/_sim``): faults, seeds and what Zep stores.

    v2 sessions are named by the project's ``thread_id``; v4 threads by the uuid Zep
    assigned (``messages_of`` finds them by the ``thread_id`` in their messages' metadata).
    """

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")

    def _call(self, method: str, path: str, body: object = None) -> Any:
        status, raw = http_call(method, f"{self.base_url}/_sim{path}", body)
        if status >= 300 and not (method == "DELETE" and status == 404):  # 404: used up
            raise DrillAborted(f"simulator {method} /_sim{path} answered {status}"
                         + (" (is this a Zep simulator?)" if status == 404 else ""))
        return json.loads(raw) if raw else None

    def check(self) -> None:
        self._call("GET", "/health")

    def add_fault(self, **fault: object) -> int:
        return int(self._call("POST", "/faults", fault)["id"])

    def remove_fault(self, fault_id: int) -> None:
        self._call("DELETE", f"/faults/{fault_id}")

    def seed(self, session_id: str, summary: str) -> None:
        """Give a v2 session (created when missing) a summary."""
        self._call("POST", f"/sessions/{session_id}/seed", {"summary": summary})

    def seed_thread(self, thread_uuid: str, summary: str) -> None:
        """Give an existing v4 thread a summary."""
        self._call("POST", f"/v4/threads/{thread_uuid}/seed", {"summary": summary})

    def session_messages(self, session_id: str) -> list[dict[str, Any]]:
        """The messages of a v2 session, oldest first."""
        return list(self._call("GET", f"/sessions/{session_id}/messages")["messages"])

    def threads(self) -> list[dict[str, Any]]:
        """Every v4 thread, oldest first."""
        return list(self._call("GET", "/v4/threads")["threads"])

    def thread_messages(self, thread_uuid: str) -> list[dict[str, Any]]:
        """The messages of a v4 thread, oldest first."""
        return list(self._call("GET", f"/v4/threads/{thread_uuid}/messages")["messages"])

    def messages_of(self, thread_id: str, zep_api_version: str) -> list[dict[str, Any]]:
        """The messages Zep holds for the project's ``thread_id`` on that API, oldest first."""
        if zep_api_version != "v4":
            return self.session_messages(thread_id)
        found: list[dict[str, Any]] = []
        for thread in self.threads():
            found.extend(m for m in self.thread_messages(str(thread["uuid"]))
                         if (m.get("metadata") or {}).get("thread_id") == thread_id)
        return found


@dataclass(frozen=True)
class Samples:
    """Counter values at one moment: (sample name, labels, value) rows."""

    rows: tuple[tuple[str, dict[str, str], float], ...]

    @classmethod
    def of(cls, families: Iterable[Metric]) -> Samples:
        return cls(tuple((s.name, dict(s.labels), float(s.value))
                         for family in families for s in family.samples))

    def get(self, name: str, **labels: str) -> float:
        """The sum of the samples named ``name`` carrying ``labels`` (pid labels summed over)."""
        return sum(value for sample, have, value in self.rows
                   if sample == name and all(have.get(k) == v for k, v in labels.items()))


def scrape(url: str) -> Samples:
    status, raw = http_call("GET", url)
    if status != 200:
        raise DrillAborted(f"metrics at {url} answered {status}")
    return Samples.of(text_string_to_metric_families(raw.decode("utf-8", "replace")))
