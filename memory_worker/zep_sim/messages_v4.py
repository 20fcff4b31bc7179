"""v4 messages: Zep's rules for an add, and a stored message in the SDK's ``Message`` shape."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from memory_worker.zep_sim.store import MAX_CONTENT_CHARS, MAX_MESSAGES_PER_ADD, Refused

MAX_METADATA_KEYS = 10
ROLES = frozenset({"system", "assistant", "user", "function", "tool"})
CLIENT_UUID = "uuid must be left unset: message identifiers are server-assigned"


def stamp(at: float) -> str:
    """A time as v4 shows it: ISO 8601 in UTC with microseconds."""
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="microseconds").replace(
        "+00:00", "Z"
    )


@dataclass(frozen=True)
class NewMessage:
    """One message of an add, checked; Zep has not given it a uuid yet."""

    role: str
    content: str
    name: str | None
    metadata: dict[str, Any] | None
    reference_time: str | None

    def stored(self, thread_uuid: str, at: float, seq: int) -> Message:
        return Message(str(uuid.uuid4()), thread_uuid, self.role, self.content, self.name,
                       self.metadata, self.reference_time, at, seq)


@dataclass
class Message:
    """A stored message; only its metadata changes (through an update)."""

    uuid: str
    thread_uuid: str
    role: str
    content: str
    name: str | None
    metadata: dict[str, Any] | None
    reference_time: str | None
    at: float
    seq: int

    def to_json(self) -> dict[str, Any]:
        created = stamp(self.at)
        return {
            "uuid": self.uuid, "thread_uuid": self.thread_uuid, "role": self.role,
            "name": self.name, "content": self.content,
            "metadata": dict(self.metadata) if self.metadata is not None else None,
            "created_at": created, "reference_time": self.reference_time or created,
            "processed": True,
        }

    def merge(self, changes: Any) -> None:
        if not isinstance(changes, dict):
            raise Refused(400, "metadata must be an object")
        merged = dict(self.metadata or {})
        for key, value in changes.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        self.metadata = flat_metadata(merged)


def prepared(messages: Any) -> list[NewMessage]:
    """The messages of an add, checked against Zep's rules; a broken rule raises ``Refused``."""
    if not isinstance(messages, list) or not messages:
        raise Refused(400, "messages must be a non-empty list")
    if len(messages) > MAX_MESSAGES_PER_ADD:
        raise Refused(400, f"at most {MAX_MESSAGES_PER_ADD} messages per request")
    return [_checked(message) for message in messages]


def _checked(message: Any) -> NewMessage:
    if not isinstance(message, dict):
        raise Refused(400, "each message must be an object")
    if message.get("uuid") is not None:
        raise Refused(400, CLIENT_UUID)
    content = message.get("content")
    if not isinstance(content, str) or not content:
        raise Refused(400, "message content is required")
    if len(content) > MAX_CONTENT_CHARS:
        raise Refused(400, f"message content exceeds {MAX_CONTENT_CHARS} characters")
    role = message.get("role")
    if role not in ROLES:
        raise Refused(400, "role must be one of " + ", ".join(sorted(ROLES)))
    for name in ("name", "reference_time"):
        if message.get(name) is not None and not isinstance(message[name], str):
            raise Refused(400, f"{name} must be a string")
    metadata = message.get("metadata")
    return NewMessage(role, content, message.get("name"),
                      None if metadata is None else flat_metadata(metadata),
                      message.get("reference_time"))


def flat_metadata(metadata: Any) -> dict[str, Any]:
    """Metadata as v4 takes it: at most 10 keys of strings, numbers, booleans or arrays of them."""
    if not isinstance(metadata, dict):
        raise Refused(400, "metadata must be an object")
    if len(metadata) > MAX_METADATA_KEYS:
        raise Refused(400, f"metadata has more than {MAX_METADATA_KEYS} keys")
    for key, value in metadata.items():
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str | int | float | bool) for v in values):
            raise Refused(400, f"metadata value of {key} must be a string, number, boolean "
                               "or array of them")
    return dict(metadata)
