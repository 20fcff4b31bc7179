"""The simulator over real HTTP: a threading server, its handler and the Python handle.

``ZepSimulator`` binds at construction (``port=0`` picks a free port), serves on
a background thread inside ``with`` (or after ``start()``), and exposes the
control operations as methods. ``serve()`` is the blocking entry point of
``memory-worker zep-sim``.

Shutting down sets one event that every waiting handler (latency, trickle)
watches, shuts the open connections so idle keep-alive readers wake up, and
joins the handler threads, so nothing outlives ``close()``.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, cast
from urllib.parse import urlsplit

from memory_worker.zep_sim.api import Routes
from memory_worker.zep_sim.faults import Fault, FaultBook
from memory_worker.zep_sim.request_log import RequestLog, RequestRecord
from memory_worker.zep_sim.routing import Reply
from memory_worker.zep_sim.store import Store
from memory_worker.zep_sim.threads import ThreadStore

_JOIN_SECONDS = 2.0
_POLL_SECONDS = 0.02  # how soon serve_forever notices close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], routes: Routes) -> None:
        self.routes = routes
        self.stopping = threading.Event()
        self.open_lock = threading.Lock()
        self.open: dict[socket.socket, threading.Thread] = {}
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "zep-sim"
    sys_version = ""
    timeout = 120  # an idle keep-alive connection is closed after this many seconds

    @property
    def _sim(self) -> _Server:
        return cast(_Server, self.server)

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without this, Nagle's
        # algorithm and the client's delayed ACK add 40 ms to every answer.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._sim.open_lock:
            self._sim.open[self.connection] = threading.current_thread()

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        with self._sim.open_lock:
            self._sim.open.pop(self.connection, None)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the request log is the record of what arrived."""

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def _handle(self) -> None:
        routes = self._sim.routes
        received = routes.log.now()
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        authorization = self.headers.get("Authorization")
        idempotency_key = self.headers.get("Idempotency-Key")

        def answer() -> Reply:
            return routes.answer(self.command, parts.path, parts.query, authorization, body)

        if routes.is_control(parts.path):
            reply = answer()
            self._send(reply.status, reply.encoded(), "application/json", {}, None)
            return

        def log(status: int | None) -> None:
            routes.log.record(self.command, parts.path, parts.query, received, status,
                              body=body, idempotency_key=idempotency_key)

        fault = routes.faults.take(self.command, parts.path)
        if fault is None:
            reply = answer()
            log(reply.status)
            self._send(reply.status, reply.encoded(), "application/json", {}, None)
            return

        early = answer() if fault.process_first else None
        if fault.latency_ms > 0 and self._sim.stopping.wait(fault.latency_ms / 1000):
            self._drop(reset=False)
            return
        if fault.drop or fault.reset:
            log(None)
            self._drop(reset=fault.reset)
            return
        kind = "application/json"
        if fault.status is not None:
            status = fault.status
            payload, kind = _fault_body(fault, routes.error_body(parts.path, status))
        else:
            reply = early or answer()
            status, payload = reply.status, reply.encoded()
        log(status)
        self._send(status, payload, kind, fault.headers, fault)

    def _send(
        self,
        status: int,
        payload: bytes,
        kind: str,
        headers: Mapping[str, str],
        fault: Fault | None,
    ) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(payload)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            if fault is None or fault.trickle_bytes <= 0:
                self.wfile.write(payload)
                return
            step = fault.trickle_bytes
            for start in range(0, len(payload), step):
                self.wfile.write(payload[start:start + step])
                self.wfile.flush()
                if self._sim.stopping.wait(fault.trickle_interval_ms / 1000):
                    self._drop(reset=False)
                    return
        except OSError:  # the client went away; nothing left to answer
            self.close_connection = True

    def _drop(self, *, reset: bool) -> None:
        """Close the connection without an answer; with ``reset``, by a TCP reset."""
        self.close_connection = True
        try:
            if reset:
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                self.connection.close()
            else:
                self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _fault_body(fault: Fault, error: Any) -> tuple[bytes, str]:
    """What a fault with a status sends: its raw body, its JSON body, else the API's error."""
    if fault.raw_body is not None:
        return fault.raw_body.encode(), "text/html; charset=utf-8"
    body = fault.body if fault.body is not None else error
    return Reply(200, body).encoded(), "application/json"


class ZepSimulator:
    """A Zep v2 and v4 test double on ``host:port``; ``url`` is its base URL.

    Clients add ``/api/v2`` (``zep-python``) or ``/api/v4`` (``zep-cloud``).
    """

    def __init__(
        self,
        api_key: str,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = Store(clock)
        self.threads = ThreadStore(clock)
        self.log = RequestLog(clock)
        self.faults = FaultBook()
        self._routes = Routes(self.store, self.threads, self.log, self.faults, api_key)
        self._server = _Server((host, port), self._routes)
        self._thread: threading.Thread | None = None
        self._serving = False
        self._closed = False
        bound_host, bound_port = self._server.server_address[:2]
        shown = "127.0.0.1" if bound_host in ("0.0.0.0", "") else str(bound_host)
        self.host = shown
        self.port = int(bound_port)
        self.url = f"http://{shown}:{self.port}"

    def __repr__(self) -> str:
        return f"ZepSimulator(url={self.url!r})"

    def __enter__(self) -> ZepSimulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> ZepSimulator:
        """Serve on a background thread and return at once."""
        if self._thread is None:
            self._serving = True
            self._thread = threading.Thread(
                target=self._server.serve_forever, kwargs={"poll_interval": _POLL_SECONDS},
                name=f"zep-sim:{self.port}", daemon=True,
            )
            self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve on the calling thread until ``close()`` or an interrupt."""
        self._serving = True
        self._server.serve_forever(poll_interval=_POLL_SECONDS)

    def close(self) -> None:
        """Stop serving, end every handler (stalled ones included) and free the port."""
        if self._closed:
            return
        self._closed = True
        self._server.stopping.set()
        if self._serving:
            self._server.shutdown()
        with self._server.open_lock:
            handlers = dict(self._server.open)
        for connection in handlers:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        self._server.server_close()
        deadline = time.monotonic() + _JOIN_SECONDS
        for thread in handlers.values():
            thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))

    # control operations, the same as the /_sim API

    def add_fault(self, fault: Fault) -> int:
        """Install a fault rule; returns its id."""
        return self.faults.add(fault)

    def remove_fault(self, fault_id: int) -> bool:
        return self.faults.remove(fault_id)

    def clear_faults(self) -> None:
        self.faults.clear()

    def seed(
        self,
        session_id: str,
        *,
        summary: str | None = None,
        facts: Sequence[str] | None = None,
        context: str | None = None,
        user_id: str | None = None,
    ) -> None:
        """Give a session (created when missing) a summary, facts or context."""
        self.store.seed(session_id, summary=summary, facts=facts, context=context, user_id=user_id)

    def ensure_session(self, session_id: str, user_id: str | None = None) -> None:
        """Create the session (and its user) when missing."""
        self.store.ensure_session(session_id, user_id)

    def requests(self, method: str = "*", path: str = "*") -> list[RequestRecord]:
        """The logged Zep requests, oldest first, filtered like a fault rule."""
        probe = Fault(method=method, path=path)
        return [r for r in self.log.records() if probe.matches(r.method, r.path)]

    def requests_carrying(self, client_msg_id: str, chunk: int | None = None
                          ) -> list[RequestRecord]:
        """The logged adds (v2 or v4) that carried the message, or the given chunk of it."""
        return [r for r in self.log.records() if r.carries(client_msg_id, chunk)]

    def reset_requests(self) -> None:
        self.log.reset()

    def messages(self, session_id: str) -> list[dict[str, Any]]:
        """Every message stored in a v2 session, oldest first."""
        return self.store.stored_messages(session_id)

    # v4

    def thread_messages(self, thread_uuid: str) -> list[dict[str, Any]]:
        """Every message stored in a v4 thread, oldest first, in the SDK's ``Message`` shape."""
        return self.threads.stored_messages(thread_uuid)

    def seed_thread(
        self,
        thread_uuid: str,
        *,
        summary: str | None = None,
        context: str | None = None,
        facts: Sequence[str] | None = None,
    ) -> None:
        """Give a v4 thread the summary, context block or facts Zep would have derived."""
        self.threads.seed(thread_uuid, summary=summary, context=context, facts=facts)

    def threads_of(self, *, user_uuid: str | None = None, user_id: str | None = None
                   ) -> list[dict[str, Any]]:
        """The v4 threads (of one user, by uuid or developer id), oldest first."""
        return self.threads.threads_of(user_uuid=user_uuid, user_id=user_id)

    def add_migrated_thread(self, user_id: str, thread_id: str | None = None) -> dict[str, Any]:
        """A v4 thread for the user (made when missing), as if migrated with ``thread_id``."""
        return self.threads.add_migrated_thread(user_id, thread_id)

    def reset(self) -> None:
        """Forget everything: faults, v2 and v4 state and the request log."""
        self._routes.reset()


def serve(
    host: str,
    port: int,
    api_key: str,
    *,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve the simulator until SIGINT or SIGTERM; ``on_ready`` receives the base URL."""
    simulator = ZepSimulator(api_key=api_key, host=host, port=port)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        if on_ready is not None:
            on_ready(simulator.url)
        simulator.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        simulator.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
