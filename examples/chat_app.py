"""A chat endpoint on the memory layer, with nothing but the standard library.

    python -m examples.chat_app --port 8000

``POST /api/chat/`` is ``examples.chat_turn``'s turn: the thread's summary read
inline with ``fetch_thread_context``, the user's message and a canned reply
enqueued with ``enqueue_message``, an answer with the trace of both; bad input is
a 400 naming the field. This module only carries the request's body in (at most
2 MiB) and the answer out.

``GET /api/metrics/`` is the library's WSGI metrics helper
(``memory_worker.exposition.metrics_wsgi_app``): this process's metrics in
Prometheus text (every process's in ``PROMETHEUS_MULTIPROC_DIR`` when it is
set) plus the effective mode and the dead-letter size read from Redis at scrape
time, so ``curl -s http://127.0.0.1:8000/api/metrics/ | grep memory_mode_gauge``
shows the mode. Settings come from the environment (SPEC §3), read once at start.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Iterable
from http import HTTPStatus
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from examples.chat_turn import BadInput, chat_turn, refusal
from memory_worker.config import Settings
from memory_worker.errors import ConfigError
from memory_worker.exposition import metrics_wsgi_app
from memory_worker.runtime import configure, default_runtime

CHAT_PATH = "/api/chat/"
METRICS_PATH = "/api/metrics/"
MAX_BODY_BYTES = 2 * 1024 * 1024

Response = tuple[int, list[tuple[str, str]], bytes]


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
            body = request_body(environ)
        except BadInput as bad:
            return _json(*refusal(bad))
        return _json(*chat_turn(body))


def request_body(environ: WSGIEnvironment) -> bytes:
    """The request's body, refused when its length is not a number or too large."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise BadInput("InvalidRequest", "body", "Content-Length is not a number") from None
    if length > MAX_BODY_BYTES:
        raise BadInput("InvalidRequest", "body", f"larger than {MAX_BODY_BYTES} bytes")
    return bytes(environ["wsgi.input"].read(length)) if length > 0 else b""


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
