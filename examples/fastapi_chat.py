"""The example chat endpoint on FastAPI: the memory layer without blocking the event loop.

    uvicorn --factory examples.fastapi_chat:create_app --port 8000

``POST /api/chat/`` and ``GET /api/metrics/`` answer as ``examples.chat_app``
does (the design notes' curl drills run against either). The handler awaits
``afetch_thread_context``, which reads Redis and Zep with asyncio clients within
its budget, and ``aenqueue_message``, which runs the blocking part of an enqueue
(Redis, a broker connect, an fsync or a lock of the outbox) on the library's own
threads: a slow broker delays the request that enqueues, never the others.
The metrics are the library's ASGI helper (``metrics_asgi_app``), mounted.
Settings come from the environment (SPEC §3), read once by ``create_app``.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from examples.chat_app import BadInput, ChatRequest, canned_reply, reply_id
from memory_worker import EnqueueResult, aenqueue_message, afetch_thread_context
from memory_worker.config import Settings
from memory_worker.errors import InvalidMessage, InvalidRequest, OutboxUnavailable
from memory_worker.exposition import metrics_asgi_app
from memory_worker.runtime import configure

# The library names the message "content"; this API calls it "message".
_REQUEST_FIELDS = {"content": "message"}


def create_app(settings: Settings | None = None, *, live_state: bool = True) -> FastAPI:
    """The application, this process's runtime configured from ``settings`` (default: the
    environment). ``live_state=False`` leaves the mode gauge and the dead-letter size to
    ``memory-worker metrics-server``."""
    runtime = configure(settings)
    app = FastAPI(title="memory_worker example chat")
    app.post("/api/chat/")(chat)
    app.mount("/api/metrics", metrics_asgi_app(runtime.settings, live_state=live_state))
    return app


async def chat(request: Request) -> JSONResponse:
    """Read the thread's summary inline, enqueue both sides of the turn, answer with a trace."""
    try:
        parsed = parse_chat(await request.body())
        context, meta = await afetch_thread_context(parsed.thread_id, "summary")
        reply = canned_reply(context, meta)
        user = await aenqueue_message(parsed.thread_id, "user", parsed.message,
                                      parsed.client_msg_id)
        assistant = await aenqueue_message(parsed.thread_id, "assistant", reply,
                                           reply_id(parsed.client_msg_id))
    except BadInput as bad:
        return rejected(bad.kind, bad.field, bad.detail)
    except InvalidMessage as exc:
        return rejected("InvalidMessage", _REQUEST_FIELDS.get(exc.field, exc.field), exc.problem)
    except InvalidRequest as exc:  # the only argument left to the read is thread_id
        return rejected("InvalidRequest", "thread_id", str(exc))
    except OutboxUnavailable as exc:
        return JSONResponse({"error": {"type": "OutboxUnavailable", "detail": str(exc)}},
                            status_code=503)
    return JSONResponse({
        "reply": reply,
        "client_msg_id": parsed.client_msg_id,
        "trace": {"memory": dict(meta), "writes": {"user": written(user),
                                                   "assistant": written(assistant)}},
    })


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


def written(result: EnqueueResult) -> dict[str, Any]:
    return {"task_id": result.task_id, "duplicate": result.duplicate,
            "skipped": result.skipped, "spooled": result.spooled,
            "redactions": result.redactions}


def rejected(kind: str, field: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "field": field, "detail": detail}},
                        status_code=400)
