"""Zep behind an egress proxy: both clients honour ``*_PROXY``/``NO_PROXY`` as httpx does.

A forward proxy of the test's own (a threading HTTP server on 127.0.0.1 that
takes absolute-form requests, records them and forwards them to the target)
stands in front of the Zep simulator. With the environment naming it, the
synchronous calls (``add_messages``, ``get_memory``) and the asynchronous one
(``aget_memory``) go through it; with ``NO_PROXY`` covering the simulator's
host they go straight to it; a proxy that stalls or trickles still ends each
call within its budget, and the connection to it is dropped by the deadline.
httpx excludes nothing by default, loopback included: only ``NO_PROXY`` does.
"""

from __future__ import annotations

import asyncio
import http.client
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import urlsplit

import pytest

from memory_worker.zep import (
    Failure,
    Memory,
    OutgoingMessage,
    ReadResult,
    Reason,
    WriteStatus,
    Written,
    ZepClient,
)
from memory_worker.zep_sim import ZepSimulator

KEY = "test-key"
BUDGET = 0.25
SLACK = 0.025  # the contract: a call returns within its budget + 25 ms
MEMORY = "/api/v2/sessions/*/memory"
# The variables httpx reads (through urllib), in both cases; REQUEST_METHOD makes
# urllib ignore HTTP_PROXY (a CGI guard), so it must not leak in either.
PROXY_VARIABLES = [
    *(name for base in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
      for name in (base, base.upper())),
    "REQUEST_METHOD",
]
TRICKLE_INTERVAL_S = 0.02
# When the client hangs up on a trickling proxy, the proxy learns it from a write
# that fails: the first write after the close draws a reset, the next one fails.
# Two trickle intervals plus thread wake-ups on a shared machine; the contract
# bounds the call, not this notice, so the margin here is a generous 200 ms.
HANG_UP_NOTICE_S = 0.2
_HOP_BY_HOP = {"connection", "proxy-connection", "keep-alive", "transfer-encoding",
               "proxy-authorization", "te", "trailer", "upgrade"}


@dataclass(frozen=True)
class Seen:
    method: str
    target: str  # as it arrived (absolute-form for a proxy), without the query


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, mode: str) -> None:
        self.mode = mode  # "forward", "stall" or "trickle"
        self.seen: list[Seen] = []
        self.hung_up: list[float] = []  # time.perf_counter() when a held client left
        self.lock = threading.Lock()
        self.release = threading.Event()
        super().__init__(("127.0.0.1", 0), _ProxyHandler)


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    @property
    def _proxy(self) -> _ProxyServer:
        return cast(_ProxyServer, self.server)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: ``seen`` is the record."""

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with self._proxy.lock:
            self._proxy.seen.append(Seen(self.command, self.path.partition("?")[0]))
        if self._proxy.mode == "stall":
            self._hold_silently()
        elif self._proxy.mode == "trickle":
            self._trickle()
        else:
            self._forward(body)

    def _forward(self, body: bytes) -> None:
        target = urlsplit(self.path)
        if target.scheme != "http" or target.hostname is None:
            self.send_error(400, "a forward proxy needs an absolute http URL")
            return
        path = target.path + (f"?{target.query}" if target.query else "")
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        # http.client, not urllib: the test's own proxy variables must not apply here.
        upstream = http.client.HTTPConnection(target.hostname, target.port or 80, timeout=10)
        try:
            upstream.request(self.command, path, body=body or None, headers=headers)
            answer = upstream.getresponse()
            payload = answer.read()
        finally:
            upstream.close()
        self.send_response(answer.status)
        for name, value in answer.getheaders():
            if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _hold_silently(self) -> None:
        """Answer nothing; note when the client hangs up (or the test ends)."""
        while not self._proxy.release.is_set():
            readable, _, _ = select.select([self.connection], [], [], 0.01)
            if readable and not self.connection.recv(1, socket.MSG_PEEK):
                self._note_hang_up()
                return
        self.close_connection = True

    def _trickle(self) -> None:
        """Headers at once, then the body one byte at a time: no read timeout ever trips."""
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.flush()
            while not self._proxy.release.wait(TRICKLE_INTERVAL_S):
                self.wfile.write(b" ")
                self.wfile.flush()
        except OSError:
            self._note_hang_up()
        self.close_connection = True

    def _note_hang_up(self) -> None:
        with self._proxy.lock:
            self._proxy.hung_up.append(time.perf_counter())
        self.close_connection = True


class ForwardProxy:
    """A forward proxy on 127.0.0.1 that records what reaches it."""

    def __init__(self, mode: str = "forward") -> None:
        self._server = _ProxyServer(mode)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> ForwardProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    @property
    def seen(self) -> list[Seen]:
        with self._server.lock:
            return list(self._server.seen)

    def wait_for_hang_ups(self, count: int, until: float) -> None:
        """Return once ``count`` held clients have hung up; fail at ``until`` (perf_counter)."""
        while True:
            with self._server.lock:
                if len(self._server.hung_up) >= count:
                    return
            if time.perf_counter() > until:
                raise AssertionError(f"a held client was still connected {HANG_UP_NOTICE_S}s "
                                     "after its deadline")
            time.sleep(0.005)


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The environment without any proxy variable the machine may have set."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def proxy() -> Iterator[ForwardProxy]:
    with ForwardProxy() as running:
        yield running


def client(sim: ZepSimulator) -> ZepClient:
    """A client built after the test set the environment: it reads the proxies then."""
    return ZepClient(sim.url, KEY, read_budget_seconds=BUDGET, write_budget_seconds=1.0)


def outgoing(uuid: str) -> OutgoingMessage:
    return OutgoingMessage(uuid=uuid, role="alice", role_type="user", content="hello",
                           metadata=None)


def aget(zep: ZepClient, thread_id: str) -> ReadResult:
    async def on_loop() -> ReadResult:
        try:
            return await zep.aget_memory(thread_id, lastn=4)
        finally:
            await zep.aclose()

    return asyncio.run(on_loop())


def write_and_read_both_ways(zep: ZepClient, thread_id: str) -> None:
    """add_messages and get_memory (sync) and aget_memory (async), each answered by Zep."""
    try:
        assert zep.add_session(thread_id) == Written(WriteStatus.CREATED)
        assert zep.add_messages(thread_id, [outgoing(f"{thread_id}-1")]) == Written(
            WriteStatus.STORED)
        for result in (zep.get_memory(thread_id, lastn=4), aget(zep, thread_id)):
            assert isinstance(result, Memory), result
            assert [m["content"] for m in result.messages] == ["hello"]
    finally:
        zep.close()


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"])
def test_sync_and_async_calls_go_through_the_proxy_the_environment_names(
    no_proxy_env: pytest.MonkeyPatch, sim: ZepSimulator, proxy: ForwardProxy, variable: str
) -> None:
    """Writes, sync reads and async reads all reach Zep through the proxy, in absolute form."""
    # Given a proxy named by the environment and no NO_PROXY for the simulator's host
    no_proxy_env.setenv(variable, proxy.url)
    # When the client writes and reads both ways
    write_and_read_both_ways(client(sim), "via-proxy")
    # Then the proxy saw every call, addressed to the simulator
    base = f"{sim.url}/api/v2"
    assert proxy.seen == [
        Seen("POST", f"{base}/sessions"),
        Seen("POST", f"{base}/sessions/via-proxy/memory"),
        Seen("GET", f"{base}/sessions/via-proxy/memory"),
        Seen("GET", f"{base}/sessions/via-proxy/memory"),
    ]
    assert len(sim.requests(path="*/sessions/via-proxy/memory")) == 3


@pytest.mark.parametrize("exclusion", ["127.0.0.1", " localhost , 127.0.0.1", "*",
                                       "http://127.0.0.1"])
def test_calls_go_straight_to_zep_when_no_proxy_covers_its_host(
    no_proxy_env: pytest.MonkeyPatch, sim: ZepSimulator, proxy: ForwardProxy, exclusion: str
) -> None:
    """NO_PROXY patterns that cover 127.0.0.1 send every call direct, as httpx would."""
    no_proxy_env.setenv("HTTP_PROXY", proxy.url)
    no_proxy_env.setenv("NO_PROXY", exclusion)
    write_and_read_both_ways(client(sim), "direct")
    assert proxy.seen == []


def test_no_proxy_that_misses_the_host_and_an_https_only_proxy_leave_routing_to_httpx(
    no_proxy_env: pytest.MonkeyPatch, sim: ZepSimulator, proxy: ForwardProxy
) -> None:
    """HTTPS_PROXY does not apply to http://; NO_PROXY for another host changes nothing."""
    no_proxy_env.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # would refuse: never used
    no_proxy_env.setenv("NO_PROXY", "zep.example.com")
    write_and_read_both_ways(client(sim), "https-only")
    assert proxy.seen == []

    no_proxy_env.setenv("http_proxy", proxy.url)
    write_and_read_both_ways(client(sim), "other-host")
    assert len(proxy.seen) == 4


@pytest.mark.parametrize("mode", ["stall", "trickle"])
def test_a_stalling_proxy_ends_each_call_within_its_budget(
    no_proxy_env: pytest.MonkeyPatch, sim: ZepSimulator, mode: str
) -> None:
    """Sync and async reads and a write end by their budget; the proxy is hung up on then."""
    with ForwardProxy(mode) as stalling:
        no_proxy_env.setenv("HTTP_PROXY", stalling.url)
        zep = client(sim)
        calls: dict[str, Callable[[], object]] = {
            "get_memory": lambda: zep.get_memory("held", lastn=4),
            "add_messages": lambda: zep.add_messages("held", [outgoing("held-1")],
                                                     budget_seconds=BUDGET),
            "aget_memory": lambda: aget(zep, "held"),
        }
        try:
            for name, call in calls.items():
                started = time.perf_counter()
                result = call()
                elapsed = time.perf_counter() - started
                # Then the call ended within its budget, as a timeout
                assert elapsed <= BUDGET + SLACK, f"{mode} {name}: {elapsed * 1000:.0f} ms"
                assert result == Failure(Reason.TIMEOUT), (name, result)
                # And the socket to the proxy was closed by the deadline, not left reading
                stalling.wait_for_hang_ups(len(stalling.seen), started + BUDGET + HANG_UP_NOTICE_S)
        finally:
            zep.close()
        assert len(stalling.seen) == 3
        assert sim.requests() == []



def test_a_proxy_the_client_cannot_use_is_a_failed_call_not_an_exception(
    monkeypatch: pytest.MonkeyPatch, sim: ZepSimulator,
) -> None:
    """A SOCKS proxy without its package: the read returns a Failure, sync and async."""
    from memory_worker.zep import Failure, ZepClient

    def cannot_build(*args: object, **kwargs: object) -> object:
        raise ImportError("socksio is not installed")

    client = ZepClient(sim.url, "test-key")
    monkeypatch.setattr(client._clients, "sync", cannot_build)
    monkeypatch.setattr(client._clients, "for_loop", cannot_build)
    assert isinstance(client.get_memory("t", 4), Failure)
    assert isinstance(asyncio.run(client.aget_memory("t", 4)), Failure)
