"""What a test needs that differs between Zep's v2 and v4 APIs, behind one small object.

A test module opts in to running on both APIs with ``pytestmark =
pytest.mark.zep_apis``; its tests that use ``settings`` (or ``read_settings``,
``env``, ``zep_api``) then run once per API, ids ``v2`` and ``v4``. Other
modules stay on v2.

``ZepApiUnderTest`` gives, per API:

* ``read_path`` / ``add_path``: fault globs (``fnmatch``, ``*`` crosses ``/``)
  of the read routes and of the add route. v2 reads and adds go to
  ``/api/v2/sessions/{id}/memory`` (GET, POST); v4 reads are ``GET
  /api/v4/threads/{uuid}[/messages|/context|/summary]`` (the probe's ``GET
  /api/v4/threads/{uuid}`` included, as v2's probe is a memory read) and adds
  ``POST /api/v4/threads/{uuid}/messages``.
* ``prepare``: the Zep thread of a ``thread_id`` exists and, on v4, Redis maps
  it (made through the project's own v4 client, under the test's key prefix):
  reads of it reach Zep.
* ``seed``, ``write``: what Zep derived (summary, context, facts) and messages.
* ``stored``, ``zep_threads``: what Zep holds for a ``thread_id``, found on v4
  by the ``thread_id`` every message carries in its metadata.
* ``reads``, ``reads_per_view``: requests to the read routes (v4's summary
  view is three at once).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import redis

from memory_worker.config import Settings
from memory_worker.zep import OutgoingMessage, Written, connect
from memory_worker.zep_sim import Fault, ZepSimulator

ZEP_APIS = ("v2", "v4")

_READ_PATHS = {"v2": "*/sessions/*/memory", "v4": "/api/v4/threads/*"}
_ADD_PATHS = {"v2": "*/sessions/*/memory", "v4": "/api/v4/threads/*/messages"}
# Requests one read of a view sends to Zep once the thread is known.
_READS_PER_VIEW = {
    "v2": {"summary": 1, "recent": 1, "facts": 1},
    "v4": {"summary": 3, "recent": 1, "facts": 1},  # context, summary, messages at once
}


@dataclasses.dataclass
class ZepApiUnderTest:
    """The simulator as one Zep API sees it, and the test's Redis (v4's id mapping)."""

    version: str
    sim: ZepSimulator
    conn: redis.Redis
    settings: Settings

    @property
    def read_path(self) -> str:
        return _READ_PATHS[self.version]

    @property
    def add_path(self) -> str:
        return _ADD_PATHS[self.version]

    def read_fault(self, **spec: Any) -> Fault:
        """A fault on every read route (GET) of this API."""
        return Fault(method="GET", path=self.read_path, **spec)

    def add_fault(self, **spec: Any) -> Fault:
        """A fault on the add route (POST) of this API."""
        return Fault(method="POST", path=self.add_path, **spec)

    def reads(self) -> int:
        """How many requests reached the read routes."""
        return len(self.sim.requests("GET", self.read_path))

    def reads_per_view(self, view: str) -> int:
        return _READS_PER_VIEW[self.version][view]

    # set-up

    def prepare(self, thread_id: str, user_id: str | None = None) -> None:
        """The thread exists in Zep and (v4) its mapping in Redis: reads of it reach Zep."""
        if self.version == "v2":
            self.sim.ensure_session(thread_id, user_id)
            return
        client = connect(self.settings, self.conn)
        try:
            outcome = client.add_session(thread_id, user_id)
        finally:
            client.close()
        assert isinstance(outcome, Written), outcome

    def thread_uuid(self, thread_id: str) -> str:
        """The v4 thread uuid Redis maps ``thread_id`` to (prepared first when missing)."""
        assert self.version == "v4", "only v4 threads have a uuid of Zep's"
        key = f"{self.settings.key_prefix}zep:v4:thread:{thread_id}"
        found = self.conn.get(key)
        if found is None:
            self.prepare(thread_id)
            found = self.conn.get(key)
        assert found is not None, f"no mapping for {thread_id}"
        return found.decode() if isinstance(found, bytes) else str(found)

    def seed(self, thread_id: str, *, summary: str | None = None, context: str | None = None,
             facts: Sequence[str] | None = None) -> None:
        """Give the thread (prepared when missing) what Zep would have derived.

        On v4 facts appear as the facts section of the thread's context block, which
        the simulator composes from them when no context is seeded.
        """
        if self.version == "v2":
            self.sim.seed(thread_id, summary=summary, context=context, facts=facts)
            return
        self.sim.seed_thread(self.thread_uuid(thread_id), summary=summary, context=context,
                             facts=facts)

    def write(self, thread_id: str, count: int, roles: Sequence[str] = ("user", "assistant"),
              content: str = "message {i}") -> None:
        """``count`` messages added through the project's client, ``content`` formatted by i."""
        self.prepare(thread_id)
        messages = [
            OutgoingMessage(uuid=f"00000000-0000-4000-8000-{i:012d}", role=roles[i % len(roles)],
                            role_type=roles[i % len(roles)], content=content.format(i=i),
                            metadata={"client_msg_id": f"seed-{i}"})
            for i in range(count)
        ]
        client = connect(self.settings, self.conn)
        try:
            for start in range(0, len(messages), 30):  # v4 takes at most 30 per add
                outcome = client.add_messages(thread_id, messages[start:start + 30])
                assert isinstance(outcome, Written), outcome
        finally:
            client.close()

    # what Zep holds

    def stored(self, thread_id: str) -> list[dict[str, Any]]:
        """Every message Zep holds for ``thread_id``, oldest first, as
        ``{uuid, role, role_type, content, metadata}`` (on v4 ``role`` is the message
        name, and the ``thread_id`` the project adds to metadata is left out)."""
        if self.version == "v2":
            return [{"uuid": m.get("uuid"), "role": m.get("role"),
                     "role_type": m.get("role_type"), "content": m.get("content"),
                     "metadata": m.get("metadata")} for m in self.sim.messages(thread_id)]
        found = []
        for thread in self._threads_holding(thread_id):
            for m in self.sim.thread_messages(thread["uuid"]):
                metadata = dict(m.get("metadata") or {})
                if metadata.pop("thread_id", None) != thread_id:
                    continue
                found.append({"uuid": m["uuid"], "role": m.get("name") or m.get("role"),
                              "role_type": m.get("role"), "content": m.get("content"),
                              "metadata": metadata or None})
        return found

    def zep_threads(self, thread_id: str) -> int:
        """How many Zep threads (v2 sessions) hold messages of ``thread_id``: 0 or 1."""
        if self.version == "v2":
            return 1 if self.sim.messages(thread_id) else 0
        return len(self._threads_holding(thread_id))

    def _threads_holding(self, thread_id: str) -> list[dict[str, Any]]:
        return [t for t in self.sim.threads_of()
                if any((m.get("metadata") or {}).get("thread_id") == thread_id
                       for m in self.sim.thread_messages(t["uuid"]))]
