"""``POST /api/chat/``: read the thread's context inline, enqueue both sides of the turn.

Body ``{"message": str, "thread_id": str, "client_msg_id": str}`` (the id is
generated when absent). The context comes from ``fetch_thread_context``, which
answers within its budget whatever Zep does; the user's message and the
assistant's reply go out with ``enqueue_message``. The answer::

    {"reply": "...", "client_msg_id": "...",
     "trace": {"memory": <read meta>, "writes": {"user": {...}, "assistant": {...}}}}

The reply's id is derived from the message's, so a retried request publishes
nothing twice. Bad input is a 400 naming the field::

    {"error": {"type": "InvalidMessage", "field": "message", "detail": "is empty"}}
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from typing import Any

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from memory_worker import EnqueueResult, enqueue_message, fetch_thread_context
from memory_worker.errors import InvalidMessage, InvalidRequest, OutboxUnavailable

MAX_CLIENT_MSG_ID = 128  # SPEC §6
# The library names the message "content"; this API calls it "message".
_REQUEST_FIELDS = {"content": "message"}


class BadInput(Exception):
    """A request this endpoint refuses: a 400 naming ``field``."""

    def __init__(self, kind: str, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.kind, self.field, self.detail = kind, field, detail


# The API is called with a token (the design notes send a Bearer header), not a session
# cookie, so Django's CSRF check does not apply; authenticate as your project does.
@csrf_exempt  # type: ignore[untyped-decorator]  # django ships no types
@require_POST  # type: ignore[untyped-decorator]
def chat(request: HttpRequest) -> JsonResponse:
    try:
        message, thread_id, client_msg_id = parse(request.body)
        context, meta = fetch_thread_context(thread_id, "summary")
        reply = canned_reply(context, meta)
        user = enqueue_message(thread_id, "user", message, client_msg_id)
        assistant = enqueue_message(thread_id, "assistant", reply, reply_id(client_msg_id))
    except BadInput as bad:
        return rejected(bad.kind, bad.field, bad.detail)
    except InvalidMessage as exc:
        return rejected("InvalidMessage", _REQUEST_FIELDS.get(exc.field, exc.field), exc.problem)
    except InvalidRequest as exc:  # the only argument left to the read is thread_id
        return rejected("InvalidRequest", "thread_id", str(exc))
    except OutboxUnavailable as exc:
        return JsonResponse({"error": {"type": "OutboxUnavailable", "detail": str(exc)}},
                            status=503)
    return JsonResponse({
        "reply": reply,
        "client_msg_id": client_msg_id,
        "trace": {"memory": meta, "writes": {"user": written(user),
                                             "assistant": written(assistant)}},
    })


def parse(body: bytes) -> tuple[str, str, str]:
    """``(message, thread_id, client_msg_id)``, checked for presence and type; the library
    checks the rest."""
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
    return message, thread_id, client_msg_id


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


def written(result: EnqueueResult) -> dict[str, Any]:
    return {"task_id": result.task_id, "duplicate": result.duplicate,
            "skipped": result.skipped, "spooled": result.spooled,
            "redactions": result.redactions}


def rejected(kind: str, field: str, detail: str) -> JsonResponse:
    return JsonResponse({"error": {"type": kind, "field": field, "detail": detail}}, status=400)
