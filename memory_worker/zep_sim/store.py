"""The v2 simulator's state: users, sessions, messages and seeded memory.

Every method takes the one lock, so handler threads see each operation whole:
an add of messages is refused or stored entirely, never half. Zep's rules live
here (a message ``uuid`` is unique across the project, at most
``MAX_MESSAGES_PER_ADD`` messages per add, at most ``MAX_CONTENT_CHARS``
characters each); a broken rule raises ``Refused`` with the status and message
Zep would answer with.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

MAX_CONTENT_CHARS = 2500
MAX_MESSAGES_PER_ADD = 30
ROLE_TYPES = frozenset({"norole", "system", "assistant", "user", "function", "tool"})
DUPLICATE_UUID = "message_uuid already exists"


class Refused(Exception):
    """Zep refuses the request; ``status`` and ``message`` are its answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class _Session:
    session_id: str
    user_id: str | None
    metadata: dict[str, Any] | None
    created_at: str
    row_id: int
    uuid: str = field(default_factory=lambda: str(uuid.uuid4()))
    messages: list[dict[str, Any]] = field(default_factory=list)
    summary: str | None = None
    context: str | None = None
    facts: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid, "id": self.row_id, "session_id": self.session_id,
            "user_id": self.user_id, "metadata": self.metadata, "created_at": self.created_at,
            "updated_at": self.created_at,
        }


class Store:
    """Zep's data, as far as the project uses it."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._users: dict[str, dict[str, Any]] = {}
        self._sessions: dict[str, _Session] = {}
        self._uuids: set[str] = set()

    def _stamp(self) -> str:
        return datetime.fromtimestamp(self._clock(), UTC).isoformat().replace("+00:00", "Z")

    def reset(self) -> None:
        with self._lock:
            self._users.clear()
            self._sessions.clear()
            self._uuids.clear()

    # users

    def add_user(self, body: Mapping[str, Any]) -> dict[str, Any]:
        user_id = body.get("user_id")
        if not isinstance(user_id, str) or not user_id:
            raise Refused(400, "user_id is required")
        with self._lock:
            if user_id in self._users:
                raise Refused(400, f"user {user_id} already exists")
            user = {
                "uuid": str(uuid.uuid4()), "id": len(self._users) + 1, "user_id": user_id,
                "email": body.get("email"), "first_name": body.get("first_name"),
                "last_name": body.get("last_name"), "metadata": body.get("metadata"),
                "created_at": self._stamp(), "session_count": 0,
            }
            self._users[user_id] = user
            return dict(user)

    def get_user(self, user_id: str) -> dict[str, Any]:
        with self._lock:
            user = self._users.get(user_id)
            if user is None:
                raise Refused(404, "user not found")
            sessions = sum(1 for s in self._sessions.values() if s.user_id == user_id)
            return {**user, "session_count": sessions}

    # sessions

    def add_session(self, body: Mapping[str, Any]) -> dict[str, Any]:
        session_id = body.get("session_id")
        user_id = body.get("user_id")
        metadata = body.get("metadata")
        if not isinstance(session_id, str) or not session_id:
            raise Refused(400, "session_id is required")
        if user_id is not None and not isinstance(user_id, str):
            raise Refused(400, "user_id must be a string")
        with self._lock:
            if session_id in self._sessions:
                raise Refused(400, f"session {session_id} already exists")
            if user_id is not None and user_id not in self._users:
                raise Refused(404, "user not found")
            session = _Session(
                session_id, user_id, metadata if isinstance(metadata, dict) else None,
                self._stamp(), len(self._sessions) + 1,
            )
            self._sessions[session_id] = session
            return session.to_json()

    def ensure_session(self, session_id: str, user_id: str | None = None) -> None:
        """Create the session (and its user) when missing; for test and demo set-up."""
        with self._lock:
            if user_id is not None and user_id not in self._users:
                self._users[user_id] = {
                    "uuid": str(uuid.uuid4()), "id": len(self._users) + 1, "user_id": user_id,
                    "created_at": self._stamp(),
                }
            if session_id not in self._sessions:
                self._sessions[session_id] = _Session(
                    session_id, user_id, None, self._stamp(), len(self._sessions) + 1
                )

    def get_session(self, session_id: str) -> dict[str, Any]:
        with self._lock:
            return self._session(session_id).to_json()

    def _session(self, session_id: str) -> _Session:
        session = self._sessions.get(session_id)
        if session is None:
            raise Refused(404, "session not found")
        return session

    # memory

    def add_messages(self, session_id: str, messages: Any) -> None:
        """Store every message or none of them, by Zep's rules."""
        if not isinstance(messages, list) or not messages:
            raise Refused(400, "messages must be a non-empty list")
        if len(messages) > MAX_MESSAGES_PER_ADD:
            raise Refused(400, f"at most {MAX_MESSAGES_PER_ADD} messages per request")
        prepared = [self._prepared(message) for message in messages]
        with self._lock:
            session = self._session(session_id)
            seen: set[str] = set()
            for message in prepared:
                if message["uuid"] in self._uuids or message["uuid"] in seen:
                    raise Refused(400, DUPLICATE_UUID)
                seen.add(message["uuid"])
            stamp = self._stamp()
            for message in prepared:
                message["created_at"] = message["updated_at"] = stamp
                session.messages.append(message)
            self._uuids.update(seen)

    def _prepared(self, message: Any) -> dict[str, Any]:
        if not isinstance(message, dict):
            raise Refused(400, "each message must be an object")
        content = message.get("content")
        if not isinstance(content, str):
            raise Refused(400, "message content is required")
        if len(content) > MAX_CONTENT_CHARS:
            raise Refused(400, f"message content exceeds {MAX_CONTENT_CHARS} characters")
        role_type = message.get("role_type")
        if role_type not in ROLE_TYPES:
            raise Refused(400, "role_type must be one of " + ", ".join(sorted(ROLE_TYPES)))
        given = message.get("uuid")
        if given is not None and (not isinstance(given, str) or not given):
            raise Refused(400, "uuid must be a non-empty string")
        metadata = message.get("metadata")
        return {
            "uuid": given or str(uuid.uuid4()),
            "role": message.get("role") if isinstance(message.get("role"), str) else None,
            "role_type": role_type,
            "content": content,
            "metadata": metadata if isinstance(metadata, dict) else None,
            "token_count": max(1, len(content) // 4),
        }

    def memory(self, session_id: str, lastn: int | None) -> dict[str, Any]:
        """The session's memory in the shape of the SDK's ``Memory``."""
        with self._lock:
            session = self._session(session_id)
            if lastn is None:
                messages = session.messages
            else:
                messages = session.messages[-lastn:] if lastn > 0 else []
            summary = session.summary
            facts = list(session.facts)
            stamp = session.created_at
            body: dict[str, Any] = {
                "messages": [dict(m) for m in messages],
                "facts": facts,
                "relevant_facts": [
                    {"uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{session_id}/{fact}")),
                     "fact": fact, "rating": 1.0, "created_at": stamp}
                    for fact in facts
                ],
                "metadata": {},
                "context": session.context or compose_context(summary, facts),
            }
        if summary is not None:
            body["summary"] = {
                "uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{session_id}/summary")),
                "content": summary, "created_at": stamp, "token_count": len(summary) // 4,
            }
        return body

    def messages(self, session_id: str, limit: int | None, cursor: int | None) -> dict[str, Any]:
        """A page of the session's messages, oldest first; ``cursor`` is a 1-based page."""
        with self._lock:
            stored = list(self._session(session_id).messages)
        size = limit or 100
        start = ((cursor or 1) - 1) * size
        page = [dict(m) for m in stored[start:start + size]]
        return {"messages": page, "row_count": len(page), "total_count": len(stored)}

    def stored_messages(self, session_id: str) -> list[dict[str, Any]]:
        """Every stored message of a session, oldest first (empty when unknown)."""
        with self._lock:
            session = self._sessions.get(session_id)
            return [dict(m) for m in session.messages] if session else []

    def seed(
        self,
        session_id: str,
        *,
        summary: str | None = None,
        facts: Sequence[str] | None = None,
        context: str | None = None,
        user_id: str | None = None,
    ) -> None:
        """Give a session the summary, facts or context Zep would have derived."""
        self.ensure_session(session_id, user_id)
        with self._lock:
            session = self._sessions[session_id]
            if summary is not None:
                session.summary = summary
            if facts is not None:
                session.facts = [str(fact) for fact in facts]
            if context is not None:
                session.context = context


def compose_context(summary: str | None, facts: Sequence[str]) -> str | None:
    """The context string Zep composes from what it knows about a session or thread."""
    if summary is None and not facts:
        return None
    parts = []
    if facts:
        parts.append("FACTS:\n" + "\n".join(f"- {fact}" for fact in facts))
    if summary is not None:
        parts.append("SUMMARY:\n" + summary)
    return "\n\n".join(parts)
