"""The request log: what reached Zep's endpoints, v2 and v4 alike.

Each record has the method, path, query, time received and the status sent
(``None`` when the connection was dropped without an answer), the
``Idempotency-Key`` header when the client sent one, and, for an add of
messages, one ``MessageMark`` per message: the ``client_msg_id`` and ``chunk``
found at the top level of its metadata. So a test counts how many adds carried
a given message, whatever the server did with them.

A request received before the log was last reset (a stalled one answering
late) belongs to the earlier test or drill: it is not logged.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MessageMark:
    """Which message an add carried: its metadata's ``client_msg_id`` and ``chunk``."""

    client_msg_id: str | None
    chunk: int | None

    def to_json(self) -> dict[str, Any]:
        return {"client_msg_id": self.client_msg_id, "chunk": self.chunk}


@dataclass(frozen=True)
class RequestRecord:
    """One request the Zep endpoints received (the control API is not logged)."""

    method: str
    path: str
    query: str
    time: float
    status: int | None  # None when the connection was dropped without an answer
    idempotency_key: str | None = None
    messages: tuple[MessageMark, ...] = ()  # one per message of an add, else empty

    def carries(self, client_msg_id: str, chunk: int | None = None) -> bool:
        """Whether this request added the message (the given chunk of it, when named)."""
        return any(
            mark.client_msg_id == client_msg_id and (chunk is None or mark.chunk == chunk)
            for mark in self.messages
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method, "path": self.path, "query": self.query,
            "time": self.time, "status": self.status,
            "idempotency_key": self.idempotency_key,
            "messages": [mark.to_json() for mark in self.messages],
        }


def message_marks(method: str, body: bytes) -> tuple[MessageMark, ...]:
    """The marks of an add of messages (a POST whose JSON has a ``messages`` list)."""
    if method != "POST" or not body.strip():
        return ()
    try:
        data = json.loads(body)
    except ValueError:
        return ()
    messages = data.get("messages") if isinstance(data, dict) else None
    if not isinstance(messages, list):
        return ()
    marks = []
    for message in messages:
        metadata = message.get("metadata") if isinstance(message, dict) else None
        if not isinstance(metadata, dict):
            metadata = {}
        client_msg_id = metadata.get("client_msg_id")
        chunk = metadata.get("chunk")
        marks.append(MessageMark(
            client_msg_id if isinstance(client_msg_id, str) else None,
            chunk if isinstance(chunk, int) and not isinstance(chunk, bool) else None,
        ))
    return tuple(marks)


class RequestLog:
    """The log shared by every handler thread."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._records: list[RequestRecord] = []
        self._since = float("-inf")

    def now(self) -> float:
        return self._clock()

    def record(
        self,
        method: str,
        path: str,
        query: str,
        at: float,
        status: int | None,
        *,
        body: bytes = b"",
        idempotency_key: str | None = None,
    ) -> None:
        entry = RequestRecord(method, path, query, at, status, idempotency_key,
                              message_marks(method, body))
        with self._lock:
            if at >= self._since:
                self._records.append(entry)

    def records(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._records)

    def reset(self) -> None:
        with self._lock:
            self._records.clear()
            self._since = self._clock()
