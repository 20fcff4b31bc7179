"""One chat turn of the example endpoints, whatever the web framework.

``POST /api/chat/`` takes ``{"message": str, "thread_id": str, "client_msg_id": str}``
(the id is generated when absent). The turn reads the thread's summary inline
(``fetch_thread_context``, which answers within its budget whatever Zep does),
enqueues the user's message and a canned assistant reply (``enqueue_message``), and
answers::

    {"reply": "...", "client_msg_id": "...",
     "trace": {"memory": <read meta>, "writes": {"user": {...}, "assistant": {...}}}}

The reply's id is derived from the message's, so a retried request publishes
nothing twice. Bad input is a 400 naming the field::

    {"error": {"type": "InvalidMessage", "field": "message", "detail": "is empty"}}

and an outbox that cannot take a message while the broker is down a 503. The WSGI
(``examples.chat_app``), Django (``examples/django_chat``) and FastAPI
(``examples.fastapi_chat``) endpoints only carry bytes in and the answer out:
``chat_turn(body)`` blocking, ``achat_turn(body)`` on an event loop.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from memory_worker import (
    EnqueueResult,
    aenqueue_message,
    afetch_thread_context,
    enqueue_message,
    fetch_thread_context,
)
from memory_worker.errors import InvalidMessage, InvalidRequest, OutboxUnavailable

MAX_CLIENT_MSG_ID = 128  # SPEC §6
# The library names the message "content"; this API calls it "message".
_REQUEST_FIELDS = {"content": "message"}

# An answer: the HTTP status and the JSON body.
Answer = tuple[int, dict[str, Any]]


class BadInput(Exception):
    """A request the endpoint refuses: a 400 naming ``field``."""

    def __init__(self, kind: str, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.kind, self.field, self.detail = kind, field, detail


@dataclass(frozen=True)
class ChatRequest:
    message: str
    thread_id: str
    client_msg_id: str


def chat_turn(body: bytes) -> Answer:
    """The turn of the request ``body``, blocking."""
    try:
        request = parse_chat(body)
        context, meta = fetch_thread_context(request.thread_id, "summary")
        reply = canned_reply(context, meta)
        user = enqueue_message(request.thread_id, "user", request.message,
                               request.client_msg_id)
        assistant = enqueue_message(request.thread_id, "assistant", reply,
                                    reply_id(request.client_msg_id))
    except (BadInput, InvalidMessage, InvalidRequest, OutboxUnavailable) as exc:
        return refusal(exc)
    return answer(request, reply, meta, user, assistant)


async def achat_turn(body: bytes) -> Answer:
    """``chat_turn`` on an event loop: the read and the enqueues are awaited."""
    try:
        request = parse_chat(body)
        context, meta = await afetch_thread_context(request.thread_id, "summary")
        reply = canned_reply(context, meta)
        user = await aenqueue_message(request.thread_id, "user", request.message,
                                      request.client_msg_id)
        assistant = await aenqueue_message(request.thread_id, "assistant", reply,
                                           reply_id(request.client_msg_id))
    except (BadInput, InvalidMessage, InvalidRequest, OutboxUnavailable) as exc:
        return refusal(exc)
    return answer(request, reply, meta, user, assistant)


def parse_chat(body: bytes) -> ChatRequest:
    """The request's fields, checked for presence and type; the library checks the rest."""
    try:
        data = json.loads(body)
    except ValueError:
        raise BadInput("InvalidRequest", "body", "is not JSON") from None
    if not isinstance(data, dict):
        raise BadInput("InvalidRequest", "body", "must be a JSON object")
    message = data.get("message")
    if not isinstance(message, str) or not message.strip():
        problem = "is required" if message is None else "must be a non-empty string"
        raise BadInput("InvalidMessage", "message", problem)
    thread_id = data.get("thread_id")
    if not isinstance(thread_id, str):
        raise BadInput("InvalidRequest", "thread_id",
                       "is required" if thread_id is None else "must be a string")
    client_msg_id = data.get("client_msg_id")
    if client_msg_id is None:
        client_msg_id = uuid.uuid4().hex
    elif not isinstance(client_msg_id, str):
        raise BadInput("InvalidMessage", "client_msg_id", "must be a string")
    return ChatRequest(message, thread_id, client_msg_id)


def reply_id(client_msg_id: str) -> str:
    """The assistant reply's id: derived, so a retried request is a duplicate."""
    candidate = f"{client_msg_id}.reply"
    if len(candidate) <= MAX_CLIENT_MSG_ID:
        return candidate
    return "reply." + hashlib.sha256(client_msg_id.encode()).hexdigest()[:48]


def canned_reply(context: Mapping[str, Any] | None, meta: Mapping[str, Any]) -> str:
    """What the assistant says; it never repeats the user's words (they may hold PII)."""
    if context is not None:
        earlier = len(context.get("messages") or [])
        return f"Noted. I can see {earlier} recent message(s) of this conversation."
    if meta.get("source") == "write_only_forced":
        return "Noted. Memory is paused for a moment; I will still remember this."
    return "Noted. As far as I remember, this is the start of our conversation."


def answer(request: ChatRequest, reply: str, meta: Mapping[str, Any], user: EnqueueResult,
           assistant: EnqueueResult) -> Answer:
    return 200, {
        "reply": reply,
        "client_msg_id": request.client_msg_id,
        "trace": {"memory": dict(meta), "writes": {"user": written(user),
                                                   "assistant": written(assistant)}},
    }


def written(result: EnqueueResult) -> dict[str, Any]:
    return {"task_id": result.task_id, "duplicate": result.duplicate,
            "skipped": result.skipped, "spooled": result.spooled,
            "redactions": result.redactions}


def refusal(exc: BadInput | InvalidMessage | InvalidRequest | OutboxUnavailable) -> Answer:
    """The answer to a turn that could not be taken: 400 naming the field, or 503."""
    if isinstance(exc, BadInput):
        return rejected(exc.kind, exc.field, exc.detail)
    if isinstance(exc, InvalidMessage):
        return rejected("InvalidMessage", _REQUEST_FIELDS.get(exc.field, exc.field),
                        exc.problem)
    if isinstance(exc, InvalidRequest):  # the only argument left to the read is thread_id
        return rejected("InvalidRequest", "thread_id", str(exc))
    return 503, {"error": {"type": "OutboxUnavailable", "detail": str(exc)}}


def rejected(kind: str, field: str, detail: str) -> Answer:
    return 400, {"error": {"type": kind, "field": field, "detail": detail}}
