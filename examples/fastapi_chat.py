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

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from examples.chat_turn import achat_turn
from memory_worker.config import Settings
from memory_worker.exposition import metrics_asgi_app
from memory_worker.runtime import configure


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
    """``examples.chat_turn``'s turn, awaited: the read and both enqueues."""
    status, body = await achat_turn(await request.body())
    return JSONResponse(body, status_code=status)
