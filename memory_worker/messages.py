"""A chat message on its way to Zep: validation, identity, chunks (SPEC §6).

Everything here is pure. ``validate`` names the field that is wrong and raises
before anything is published. The Zep ``uuid`` of a message is derived from its
``client_msg_id`` (and, for long content, from its chunk number), so every
redelivery and every duplicate enqueue writes the same uuids, and Zep's
duplicate-uuid refusal turns a second write into a no-op.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from memory_worker.errors import InvalidMessage
from memory_worker.ids import ID_RULE, is_valid_id
from memory_worker.zep import OutgoingMessage

ROLES: tuple[str, ...] = ("user", "assistant", "system", "tool")
CHUNK_CHARS = 2500  # Zep's limit per message
BATCH_SIZE = 30  # Zep's limit per add
MAX_CLIENT_MSG_ID = 128
MAX_METADATA_BYTES = 16 * 1024
# Zep v4 keeps at most 10 metadata keys of flat values (strings, numbers, booleans or
# arrays of those); the project adds client_msg_id, chunk, chunks and thread_id.
V4_PROJECT_KEYS = ("client_msg_id", "chunk", "chunks", "thread_id")
V4_MAX_CALLER_KEYS = 10 - len(V4_PROJECT_KEYS)
PAYLOAD_VERSION = 1

# Fixed forever: changing it would give already-written messages new uuids.
_NAMESPACE = uuid.UUID("5b0a3a0e-7c2f-4d1e-9a52-3f6a1c8e2d41")


@dataclass(frozen=True)
class Payload:
    """What the task carries: content already redacted."""

    thread_id: str
    role: str
    content: str
    client_msg_id: str
    user_id: str | None = None
    metadata: dict[str, Any] | None = None
    enqueued_at: float = 0.0
    v: int = PAYLOAD_VERSION

    def to_json(self) -> dict[str, Any]:
        # By hand: ``dataclasses.asdict`` deep-copies, several times slower on the enqueue
        # path. The metadata is copied one level; what it holds is JSON, serialized next.
        return {"thread_id": self.thread_id, "role": self.role, "content": self.content,
                "client_msg_id": self.client_msg_id, "user_id": self.user_id,
                "metadata": None if self.metadata is None else dict(self.metadata),
                "enqueued_at": self.enqueued_at, "v": self.v}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Payload:
        """Rebuild a payload from a task or an outbox line; ``ValueError`` when it is not one."""
        if not isinstance(data, Mapping):
            raise InvalidMessage("payload", f"is a {type(data).__name__}, not an object")
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        try:
            payload = cls(**known)
        except TypeError as exc:
            raise InvalidMessage("payload", str(exc)) from None
        # Redaction may lengthen content a little ("a@b.c" -> "[EMAIL]"): no length cap here.
        validate(payload.thread_id, payload.role, payload.content, payload.client_msg_id,
                 payload.user_id, payload.metadata, max_content_chars=10**9)
        return payload


def validate(thread_id: object, role: object, content: object, client_msg_id: object,
             user_id: object = None, metadata: object = None, *,
             max_content_chars: int) -> None:
    """Raise ``InvalidMessage`` naming the first bad field; return when all are good."""
    if not is_valid_id(thread_id):
        raise InvalidMessage("thread_id", ID_RULE)
    if role not in ROLES:
        raise InvalidMessage("role", f"must be one of {', '.join(ROLES)}; got {role!r}")
    if not isinstance(client_msg_id, str) or not client_msg_id:
        raise InvalidMessage("client_msg_id", "must be a non-empty string")
    if len(client_msg_id) > MAX_CLIENT_MSG_ID:
        raise InvalidMessage("client_msg_id", f"longer than {MAX_CLIENT_MSG_ID} characters")
    if any(c.isspace() for c in client_msg_id):
        raise InvalidMessage("client_msg_id", "must not contain whitespace")
    if not isinstance(content, str):
        raise InvalidMessage("content", f"must be a string, got {type(content).__name__}")
    if not content.strip():
        raise InvalidMessage("content", "is empty")
    if len(content) > max_content_chars:
        raise InvalidMessage("content", f"longer than MEMORY_MAX_CONTENT_CHARS "
                                        f"({len(content)} > {max_content_chars})")
    try:
        content.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidMessage("content", "is not encodable as UTF-8 (lone surrogate)") from None
    if user_id is not None and not is_valid_id(user_id):
        raise InvalidMessage("user_id", ID_RULE)
    if metadata is not None:
        check_metadata(metadata)


def check_flat_metadata(metadata: dict[str, Any]) -> None:
    """Zep v4's rule for message metadata, for the caller's part of it (SPEC §6)."""
    own = [key for key in metadata if key not in V4_PROJECT_KEYS]
    if len(own) > V4_MAX_CALLER_KEYS:
        raise InvalidMessage("metadata", f"has {len(own)} keys; Zep v4 keeps "
                                         f"{V4_MAX_CALLER_KEYS} besides the project's own")
    for key, value in metadata.items():
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(item, str | int | float | bool) for item in items):
            raise InvalidMessage("metadata", f"value of {key!r} is not flat: Zep v4 takes "
                                             f"strings, numbers, booleans or arrays of those")


def check_metadata(metadata: object, *, after: str = "") -> None:
    """A JSON object of at most 16 KB; ``after`` names what changed it, for the error."""
    if not isinstance(metadata, dict):
        raise InvalidMessage("metadata", f"must be a JSON object, got {type(metadata).__name__}")
    try:
        encoded = json.dumps(metadata, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError) as exc:
        raise InvalidMessage("metadata", f"is not JSON: {exc}") from None
    if len(encoded) > MAX_METADATA_BYTES:
        raise InvalidMessage("metadata", f"larger than 16 KB{after} ({len(encoded)} bytes)")


def message_uuid(client_msg_id: str, chunk: int = 0, chunks: int = 1) -> str:
    """The Zep uuid of a message or of one of its chunks; the same on every attempt."""
    name = client_msg_id if chunks == 1 else f"{client_msg_id}#{chunk}/{chunks}"
    return str(uuid.uuid5(_NAMESPACE, name))


def split(content: str, size: int = CHUNK_CHARS) -> list[str]:
    """Ordered pieces of at most ``size`` characters that join back to ``content`` exactly.

    A piece ends after the last whitespace of its window when there is one, so
    words stay whole; a window without whitespace is cut hard.
    """
    pieces: list[str] = []
    start = 0
    while len(content) - start > size:
        window = content[start:start + size]
        cut = max(window.rfind(" "), window.rfind("\n"), window.rfind("\t"))
        end = start + (cut + 1 if cut >= size // 2 else size)
        pieces.append(content[start:end])
        start = end
    pieces.append(content[start:])
    return pieces


def zep_messages(payload: Payload) -> list[OutgoingMessage]:
    """The Zep messages of one payload, in order, chunk metadata at the top level."""
    pieces = split(payload.content)
    return [
        OutgoingMessage(
            uuid=message_uuid(payload.client_msg_id, index, len(pieces)),
            role=payload.role, role_type=payload.role, content=piece,
            metadata={**(payload.metadata or {}), "client_msg_id": payload.client_msg_id,
                      "chunk": index + 1, "chunks": len(pieces)},
        )
        for index, piece in enumerate(pieces)
    ]


def batches(messages: list[OutgoingMessage], size: int = BATCH_SIZE
            ) -> list[list[OutgoingMessage]]:
    return [messages[i:i + size] for i in range(0, len(messages), size)]
