"""Zep v4 messages and memory in project terms: what an add sends, what a read returns.

Part of the Zep boundary; ``zep_v4`` is its only caller.

* An outgoing message's ``role_type`` is v4's ``role`` and its ``role`` the
  message ``name``; its metadata gains ``thread_id`` (the rebuild of the id
  mapping searches for it). Zep sets the message uuid: the project's is not
  sent.
* Reading back, ``role`` is the name (else the role) and ``role_type`` the
  role: the shape a v2 reader sees.
* Facts: the items of the context block's facts section (``<FACTS>`` ...
  ``</FACTS>`` as Zep writes it, or ``FACTS:`` up to the next section), one
  sentence each, date ranges cut.
* The ``Idempotency-Key`` of an add is a uuid5 of its ``client_msg_id`` and
  chunk range, so every attempt of the same add carries the same key.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from typing import Any

from zep_cloud import AddMessage

from memory_worker.errors import InvalidRequest
from memory_worker.zep import ContextMessage, Memory, OutgoingMessage

ROLES = frozenset({"user", "assistant", "system", "tool", "function"})
# Fixed forever: the Idempotency-Keys of messages already sent derive from it.
NAMESPACE = uuid.UUID("0f4b8f7e-3d6a-5c21-9e8b-2a7d4c1f6e93")


def memory(outcomes: dict[str, Any]) -> Memory:
    newest_first = outcomes.get("messages") or []
    messages = list(reversed(newest_first))
    context = outcomes.get("context")
    summary = outcomes.get("summary")
    return Memory(
        summary=summary if isinstance(summary, str) else None,
        context=context if isinstance(context, str) else None,
        messages=tuple(_context_message(m) for m in messages),
        facts=facts_of(context if isinstance(context, str) else None),
        metadata=tuple(metadata_of(m) for m in messages),
    )


def _context_message(message: Any) -> ContextMessage:
    role = str(message.role or "")
    return ContextMessage(role=message.name or role, role_type=role,
                          content=message.content or "")


def metadata_of(message: Any) -> dict[str, Any] | None:
    metadata = getattr(message, "metadata", None)
    return metadata if isinstance(metadata, dict) else None


_FACTS_OPEN = re.compile(r"^(<facts>|facts:?)$", re.IGNORECASE)
_FACTS_CLOSE = re.compile(r"^(</facts>|<[a-z_]+>|[A-Z][A-Z _]*:)$")
_DATE_RANGE = re.compile(r"\s*\((?:date range:\s*)?[^()]*\d{4}-\d{2}-\d{2}[^()]*\)\s*$",
                         re.IGNORECASE)


def facts_of(context: str | None) -> tuple[str, ...]:
    """The items of a context block's facts section, date ranges cut (the ``facts`` view)."""
    if not context:
        return ()
    facts: list[str] = []
    inside = False
    for line in context.splitlines():
        text = line.strip()
        if not inside:
            inside = bool(_FACTS_OPEN.match(text))
            continue
        if not text or _FACTS_CLOSE.match(text):
            if facts or text:
                break
            continue
        if text.startswith(("- ", "* ")):
            fact = _DATE_RANGE.sub("", text[2:]).strip()
            if fact:
                facts.append(fact)
    return tuple(facts)


def idempotency_key(messages: Sequence[OutgoingMessage]) -> str:
    """The add's ``Idempotency-Key``: from ``client_msg_id`` and the chunk range, stable."""
    marks: list[tuple[str, int]] = []
    for message in messages:
        metadata = message.get("metadata") or {}
        client_msg_id = metadata.get("client_msg_id")
        chunk = metadata.get("chunk", 1)
        if not isinstance(client_msg_id, str) or not isinstance(chunk, int):
            client_msg_id, chunk = str(message.get("uuid")), 1
        marks.append((client_msg_id, chunk))
    names = {name for name, _ in marks}
    if len(names) == 1:
        chunks = [chunk for _, chunk in marks]
        label = f"{marks[0][0]}#{min(chunks)}-{max(chunks)}"
    else:
        label = "|".join(f"{name}#{chunk}" for name, chunk in marks)
    return str(uuid.uuid5(NAMESPACE, label))


def outgoing(thread_id: str, messages: Sequence[OutgoingMessage]) -> list[AddMessage]:
    try:
        converted = []
        for m in messages:
            role = m["role_type"]
            if role not in ROLES:
                raise ValueError("role_type")
            converted.append(AddMessage(
                role=role, name=m["role"], content=m["content"],
                metadata={**(m.get("metadata") or {}), "thread_id": thread_id},
            ))
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidRequest(f"messages are malformed: {type(exc).__name__}") from None
    return converted
