"""A chat endpoint on the memory layer, with nothing but the standard library.

    python -m examples.chat_app --port 8000

``POST /api/chat/`` takes ``{"message": str, "thread_id": str, "client_msg_id": str}``
(the id is generated when absent). It reads the thread's summary inline with
``fetch_thread_context``, which answers within its budget whatever Zep does,
enqueues the user's message and a canned assistant reply with
``enqueue_message``, and answers::

    {"reply": "...", "client_msg_id": "...",
     "trace": {"memory": <read meta>, "writes": {"user": {...}, "assistant": {...}}}}

The reply's id is derived from the message's, so a retried request publishes
nothing twice. Bad input is a 400 naming the field::

    {"error": {"type": "InvalidMessage", "field": "message", "detail": "is empty"}}

``GET /api/metrics/`` is the library's WSGI metrics helper
(``memory_worker.exposition.metrics_wsgi_app``): this process's metrics in
Prometheus text (every process's in ``PROMETHEUS_MULTIPROC_DIR`` when it is
set) plus the effective mode and the dead-letter size read from Redis at scrape
time, so ``curl -s http://127.0.0.1:8000/api/metrics/ | grep memory_mode_gauge``
shows the mode. Settings come from the environment (SPEC §3), read once at start.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import signal
import sys
import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from memory_worker import enqueue_message, fetch_thread_context
from memory_worker.config import Settings
from memory_worker.enqueue import EnqueueResult
from memory_worker.errors import ConfigError, InvalidMessage, InvalidRequest, OutboxUnavailable
from memory_worker.exposition import metrics_wsgi_app
from memory_worker.runtime import configure, default_runtime

CHAT_PATH = "/api/chat/"
METRICS_PATH = "/api/metrics/"
MAX_BODY_BYTES = 2 * 1024 * 1024
MAX_CLIENT_MSG_ID = 128  # SPEC §6
# The library names the message "content"; this API calls it "message".
_REQUEST_FIELDS = {"content": "message"}

Response = tuple[int, list[tuple[str, str]], bytes]


class BadInput(Exception):
    """A request this endpoint refuses: a 400 naming ``field``."""

    def __init__(self, kind: str, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.kind, self.field, self.detail = kind, field, detail


@dataclass(frozen=True)
class ChatRequest:
    message: str
    thread_id: str
    client_msg_id: str


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


class ChatApp:
    """The WSGI application: ``/api/chat/`` and ``/api/metrics/``.

    ``live_state=False`` leaves the mode gauge and the dead-letter size to the
    metrics server, for deployments where Prometheus scrapes both.
    """

    def __init__(self, *, live_state: bool = True) -> None:
        self._live_state = live_state
        self._metrics: WSGIApplication | None = None
        self._metrics_lock = threading.Lock()

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse
                 ) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        path = path if path.endswith("/") else path + "/"
        method = environ.get("REQUEST_METHOD", "GET")
        allowed = {CHAT_PATH: "POST", METRICS_PATH: "GET"}.get(path)
        if allowed is None:
            status, headers, body = _json(404, {"error": {"type": "NotFound", "detail": path}})
        elif method != allowed:
            status, headers, body = _json(405, {"error": {"type": "MethodNotAllowed",
                                                          "detail": f"use {allowed}"}})
            headers.append(("Allow", allowed))
        elif path == METRICS_PATH:
            return self.metrics_app()(environ, start_response)
        else:
            status, headers, body = self.chat(environ)
        start_response(f"{status} {HTTPStatus(status).phrase}", headers)
        return [body]

    def metrics_app(self) -> WSGIApplication:
        """The library's metrics helper, built on first use from this process's settings."""
        with self._metrics_lock:
            if self._metrics is None:
                self._metrics = metrics_wsgi_app(default_runtime().settings,
                                                 live_state=self._live_state)
            return self._metrics

    def chat(self, environ: WSGIEnvironment) -> Response:
        try:
            request = parse_chat(environ)
            context, meta = fetch_thread_context(request.thread_id, "summary")
            reply = canned_reply(context, meta)
            user = enqueue_message(request.thread_id, "user", request.message,
                                   request.client_msg_id)
            assistant = enqueue_message(request.thread_id, "assistant", reply,
                                        reply_id(request.client_msg_id))
        except BadInput as bad:
            return _rejected(bad.kind, bad.field, bad.detail)
        except InvalidMessage as exc:
            return _rejected("InvalidMessage", _REQUEST_FIELDS.get(exc.field, exc.field),
                             exc.problem)
        except InvalidRequest as exc:  # the only argument left to the read is thread_id
            return _rejected("InvalidRequest", "thread_id", str(exc))
        except OutboxUnavailable as exc:
            return _json(503, {"error": {"type": "OutboxUnavailable", "detail": str(exc)}})
        return _json(200, {
            "reply": reply,
            "client_msg_id": request.client_msg_id,
            "trace": {"memory": meta, "writes": {"user": _write(user),
                                                 "assistant": _write(assistant)}},
        })


def parse_chat(environ: WSGIEnvironment) -> ChatRequest:
    """The request's fields, checked for presence and type; the library checks the rest."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise BadInput("InvalidRequest", "body", "Content-Length is not a number") from None
    if length > MAX_BODY_BYTES:
        raise BadInput("InvalidRequest", "body", f"larger than {MAX_BODY_BYTES} bytes")
    raw = environ["wsgi.input"].read(length) if length > 0 else b""
    try:
        data = json.loads(raw)
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


def _write(result: EnqueueResult) -> dict[str, Any]:
    return {"task_id": result.task_id, "duplicate": result.duplicate,
            "skipped": result.skipped, "spooled": result.spooled,
            "redactions": result.redactions}


def _rejected(kind: str, field: str, detail: str) -> Response:
    return _json(400, {"error": {"type": kind, "field": field, "detail": detail}})


def _json(status: int, body: object) -> Response:
    data = json.dumps(body).encode()
    return status, [("Content-Type", "application/json"),
                    ("Content-Length", str(len(data)))], data


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    """wsgiref's server, one thread per request: a slow read must not queue the others."""

    daemon_threads = True


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log."""


def make_chat_server(host: str, port: int, app: ChatApp | None = None, *,
                     quiet: bool = False) -> WSGIServer:
    """A threaded wsgiref server for the app; ``port=0`` picks a free port."""
    handler = QuietHandler if quiet else WSGIRequestHandler
    return make_server(host, port, app or ChatApp(), server_class=ThreadingWSGIServer,
                       handler_class=handler)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.chat_app",
                                     description="Serve the example chat app.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"chat_app: configuration error: {exc}", file=sys.stderr)
        return 1
    configure(settings)
    try:
        server = make_chat_server(args.host, args.port)
    except OSError as exc:
        print(f"chat_app: cannot listen on {args.host}:{args.port}: {exc.strerror}",
              file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _interrupt)
    print(f"chat app listening on http://{args.host}:{server.server_port}", file=sys.stderr,
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
