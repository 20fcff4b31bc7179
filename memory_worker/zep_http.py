"""HTTP under the Zep SDK: its clients, a total deadline per call, the answer's headers.

Part of the Zep boundary; ``zep.py`` is its only caller. ``Clients`` builds the
SDK clients once per process (a forked child builds its own) and the
asynchronous one once per event loop, so connection pools are reused.

The SDK's timeout is per phase: a server that sends its headers and then one
byte every so often never trips it. Here each call carries a ``Call`` (its
deadline, and where the status and ``Retry-After`` of its answer are recorded,
since the SDK's errors carry no headers) in a context variable, so concurrent
calls from threads and tasks never see each other's. Three layers use it:

* a request hook sets every phase timeout to what is left of the budget, and
  refuses to send once nothing is left;
* the synchronous transport's network streams clamp each socket ``recv``,
  ``send`` and connect to the time left, and a host name is looked up on a
  resolver thread waited for no longer, so a call ends at its deadline whatever
  the server trickles: a read runs in its caller's thread (``call_here``), other
  calls on a pool thread that the caller waits for no longer (``call_on_pool``);
* a response hook records the status and ``Retry-After``.

Both clients honour the environment's proxies as httpx does (``HTTP_PROXY``,
``HTTPS_PROXY``, ``ALL_PROXY``, ``NO_PROXY``, lower-case too). The asynchronous
client keeps httpx's own transports, which read them: ``asyncio.timeout``
cancels the call at the deadline, in the caller's own task (no task of its own
to start and wind up), which closes its connection. Handing httpx a
transport of one's own turns that reading off, so the synchronous client mounts
one deadline-bound transport per proxy that httpx's own reading of the
environment names (``NO_PROXY`` patterns go straight to the direct transport),
and httpx picks among them per URL as it always does: the sockets to a proxy
obey the deadline like those to Zep.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime
import email.utils
import functools
import ipaddress
import os
import re
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpcore
import httpx
from httpx._utils import get_environment_proxies  # httpx's own reading of *_PROXY
from zep_python.base_client import AsyncBaseClient, BaseClient

_T = TypeVar("_T")

RETRY_AFTER_DEFAULT_SECONDS = 5.0
RETRY_AFTER_MAX_SECONDS = 300.0
# Host-name look-ups in flight at once per process (only new connections look up).
RESOLVER_THREADS = 4


@dataclass
class Call:
    """One call to Zep: its deadline (``time.monotonic``) and what its answer said."""

    deadline: float
    status_code: int | None = None
    retry_after: str | None = field(default=None, repr=False)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


_CURRENT: contextvars.ContextVar[Call | None] = contextvars.ContextVar("zep_call", default=None)


def call_on_pool(pool: ThreadPoolExecutor, call: Call, function: Callable[[], _T]) -> _T:
    """Run ``function`` on ``pool`` as ``call``; ``TimeoutError`` once its deadline passes.

    An abandoned call is not waited for: its sockets obey the same deadline.
    """

    def scoped() -> _T:
        _CURRENT.set(call)
        if call.remaining() <= 0:  # queued behind others for the whole budget
            raise httpx.PoolTimeout("the budget was spent before the request was sent")
        return function()

    # A copy of the caller's context: what it carries (a trace's current span) reaches
    # the request; ``_CURRENT`` is set inside the copy, never in the caller's.
    future = pool.submit(contextvars.copy_context().run, scoped)
    try:
        return future.result(timeout=max(0.0, call.remaining()))
    except TimeoutError:
        if future.done():
            raise
        future.cancel()
        raise TimeoutError("the call's deadline has passed") from None


def call_here(call: Call, function: Callable[[], _T]) -> _T:
    """Run ``function`` as ``call`` in the calling thread; it ends by the deadline.

    For the read path, whose caller is waiting anyway: a hand-off to a pool thread
    costs two thread wake-ups, 75-85 µs of a read's overhead on a quiet machine and
    more after the CPU idled. The deadline holds here as on a pool thread: the
    request hook clamps the wait for a pooled connection, every socket wait of the
    deadline-bound transport ends by it, and a host name is looked up on a resolver
    thread that the call waits for no longer than what is left.
    """
    token = _CURRENT.set(call)
    try:
        if call.remaining() <= 0:
            raise httpx.PoolTimeout("the budget was spent before the request was sent")
        return function()
    finally:
        _CURRENT.reset(token)


async def acall(call: Call, function: Callable[[], Awaitable[_T]],
                gate: asyncio.Semaphore) -> _T:
    """Await ``function()`` as ``call``; cancelled with ``TimeoutError`` at its deadline.

    ``gate`` (the loop's, from ``Clients.for_loop``) holds the calls beyond the
    connection limit here, in a plain FIFO wait within the same deadline. Left to
    httpcore's pool, every queued request is matched against every connection each
    time one frees up: a thousand reads at once against a stalled Zep spent more of
    the loop in that matching than in the calls themselves.
    """

    token = _CURRENT.set(call)
    try:
        async with asyncio.timeout(max(0.0, call.remaining())):
            async with gate:
                return await function()
    finally:
        _CURRENT.reset(token)


def parse_retry_after(value: str | None, now: float) -> float:
    """Seconds to wait from ``Retry-After`` (seconds or HTTP-date), at most 300; 5 if unusable."""
    if value is None or not value.strip():
        return RETRY_AFTER_DEFAULT_SECONDS
    text = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        seconds = float(text)
    else:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return RETRY_AFTER_DEFAULT_SECONDS
        if when.tzinfo is None:  # "-0000": UTC without a claim about local time
            when = when.replace(tzinfo=datetime.UTC)
        seconds = when.timestamp() - now
    return min(max(seconds, 0.0), RETRY_AFTER_MAX_SECONDS)


def _clamp(request: httpx.Request) -> None:
    call = _CURRENT.get()
    if call is None:
        return
    left = call.remaining()
    if left <= 0:
        raise httpx.PoolTimeout("the budget was spent before the request was sent", request=request)
    request.extensions["timeout"] = {"connect": left, "read": left, "write": left, "pool": left}


def _record(response: httpx.Response) -> None:
    call = _CURRENT.get()
    if call is not None:
        call.status_code = response.status_code
        call.retry_after = response.headers.get("retry-after")


async def _aclamp(request: httpx.Request) -> None:
    _clamp(request)


async def _arecord(response: httpx.Response) -> None:
    _record(response)


def _left(timeout: float | None, expired: type[Exception]) -> float | None:
    call = _CURRENT.get()
    if call is None:
        return timeout
    left = call.remaining()
    if left <= 0:
        raise expired("the call's deadline has passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        left = _left(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, left))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's synchronous backend with every wait bounded by the call's deadline,
    the host name's look-up included (``socket.getaddrinfo`` takes no timeout, and a
    resolver that does not answer holds it for seconds)."""

    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        options = list(socket_options or ())
        failure: Exception | None = None
        for address in _addresses(host, port, _left(timeout, httpcore.ConnectTimeout)):
            try:  # each address in the resolver's order, as socket.create_connection
                stream = self._inner.connect_tcp(
                    address, port, _left(timeout, httpcore.ConnectTimeout), local_address,
                    options)
            except httpcore.ConnectError as exc:
                failure = exc
                continue
            return _DeadlineStream(stream)
        raise failure or httpcore.ConnectError(f"{host} has no address")

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        left = _left(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.connect_unix_socket(path, left, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def _addresses(host: str, port: int, seconds: float | None) -> list[str]:
    """The addresses of ``host`` (itself when it is one), looked up within ``seconds``."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return [host]
    future = _resolver().submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    try:
        found = future.result(timeout=seconds)
    except TimeoutError:
        raise httpcore.ConnectTimeout(f"looking up {host} took the call's budget") from None
    except OSError as exc:
        raise httpcore.ConnectError(f"cannot look up {host}: {exc}") from exc
    return list(dict.fromkeys(str(sockaddr[0]) for *_, sockaddr in found))


_resolvers: tuple[int, ThreadPoolExecutor] | None = None
_resolvers_lock = threading.Lock()


def _resolver() -> ThreadPoolExecutor:
    """The process's look-up threads (a forked child builds its own)."""
    global _resolvers
    built = _resolvers
    if built is None or built[0] != os.getpid():
        with _resolvers_lock:
            if _resolvers is None or _resolvers[0] != os.getpid():
                _resolvers = (os.getpid(),
                              ThreadPoolExecutor(RESOLVER_THREADS,
                                                 thread_name_prefix="zep-resolve"))
            built = _resolvers
    return built[1]


# httpcore's errors as httpx raises them, most specific first.
_ERRORS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.ProxyError, httpx.ProxyError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


def _translated(exc: Exception, request: httpx.Request | None) -> Exception:
    for theirs, ours in _ERRORS:
        if isinstance(exc, theirs):
            return ours(str(exc) or type(exc).__name__, request=request)
    return exc


class _Body(httpx.SyncByteStream):
    def __init__(self, stream: Iterable[bytes], request: httpx.Request) -> None:
        self._stream = stream
        self._request = request

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._stream
        except Exception as exc:
            raise _translated(exc, self._request) from exc

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()


def _core_url(url: httpx.URL) -> httpcore.URL:
    return httpcore.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port,
                        target=url.raw_path)


class _DeadlineTransport(httpx.BaseTransport):
    """httpx's transport, rebuilt on an httpcore pool whose sockets obey the deadline.

    With ``proxy`` it is httpx's proxy transport (the same pools, built the
    same way as ``httpx.HTTPTransport(proxy=...)``), its sockets to the proxy
    deadline-bound too.
    """

    def __init__(self, limits: httpx.Limits, proxy: httpx.Proxy | None = None) -> None:
        ssl_context = shared_ssl_context()
        backend = _DeadlineBackend()
        most, idle, expiry = (limits.max_connections, limits.max_keepalive_connections,
                              limits.keepalive_expiry)
        self._pool: httpcore.ConnectionPool
        if proxy is None:
            self._pool = httpcore.ConnectionPool(
                ssl_context=ssl_context, max_connections=most, max_keepalive_connections=idle,
                keepalive_expiry=expiry, network_backend=backend,
            )
        elif proxy.url.scheme in ("http", "https"):
            self._pool = httpcore.HTTPProxy(
                proxy_url=_core_url(proxy.url), proxy_auth=proxy.raw_auth,
                proxy_headers=proxy.headers.raw, ssl_context=ssl_context,
                proxy_ssl_context=proxy.ssl_context, max_connections=most,
                max_keepalive_connections=idle, keepalive_expiry=expiry, network_backend=backend,
            )
        elif proxy.url.scheme in ("socks5", "socks5h"):
            self._pool = httpcore.SOCKSProxy(
                proxy_url=_core_url(proxy.url), proxy_auth=proxy.raw_auth,
                ssl_context=ssl_context, max_connections=most, max_keepalive_connections=idle,
                keepalive_expiry=expiry, network_backend=backend,
            )
        else:
            raise ValueError(
                "Proxy protocol must be either 'http', 'https', 'socks5', or 'socks5h',"
                f" but got {proxy.url.scheme!r}."
            )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if not isinstance(request.stream, httpx.SyncByteStream):
            raise TypeError("the synchronous transport needs a synchronous request body")
        core_request = httpcore.Request(
            method=request.method,
            url=_core_url(request.url),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        try:
            response = self._pool.handle_request(core_request)
        except Exception as exc:
            raise _translated(exc, request) from exc
        if not isinstance(response.stream, Iterable):
            raise TypeError("the connection pool returned an asynchronous body")
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_Body(response.stream, request),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self._pool.close()


def _environment_mounts(limits: httpx.Limits) -> dict[str, httpx.BaseTransport | None]:
    """What ``httpx.Client()`` would mount for the environment's proxies, deadline-bound.

    httpx reads the variables (its ``get_environment_proxies``, the same
    precedence and ``NO_PROXY`` patterns); a pattern mounted to ``None`` is
    served by the client's direct transport, as in httpx.
    """
    return {
        pattern: None if url is None else _DeadlineTransport(limits, httpx.Proxy(url))
        for pattern, url in get_environment_proxies().items()
    }


def sync_http_client(limits: httpx.Limits) -> httpx.Client:
    """The client under the synchronous SDK: deadline-bound sockets, recorded answers.

    The environment's proxies are read when the client is built, as httpx does.
    """
    return httpx.Client(
        transport=_DeadlineTransport(limits),
        mounts=_environment_mounts(limits),
        event_hooks={"request": [_clamp], "response": [_record]},
    )


@functools.cache
def shared_ssl_context() -> ssl.SSLContext:
    """One TLS context per process for every Zep client: loading the CA bundle costs
    100-250 ms, which must not land inside a call's budget each time a client is built."""
    return httpx.create_ssl_context()


def async_http_client(limits: httpx.Limits) -> httpx.AsyncClient:
    """The client under the asynchronous SDK: clamped phases, recorded answers."""
    return httpx.AsyncClient(
        verify=shared_ssl_context(), limits=limits,
        event_hooks={"request": [_aclamp], "response": [_arecord]},
    )


class Clients:
    """The SDK clients of one Zep: per process for threads, per event loop for tasks."""

    def __init__(self, api_url: str, api_key: str, max_connections: int, timeout: float) -> None:
        self._api_url = api_url
        self._api_key = api_key
        self._timeout = timeout
        self._workers = max_connections
        self._limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self._lock = threading.Lock()
        self._pid = -1
        self._sync: tuple[BaseClient, ThreadPoolExecutor, httpx.Client] | None = None
        self._async: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop,
            tuple[AsyncBaseClient, httpx.AsyncClient, asyncio.Semaphore],
        ] = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        return f"Clients(api_url={self._api_url!r})"

    def sync(self) -> tuple[BaseClient, ThreadPoolExecutor]:
        built = self._sync
        if built is None or self._pid != os.getpid():
            with self._lock:
                if self._sync is None or self._pid != os.getpid():
                    # A forked child must not use its parent's threads and sockets.
                    http = sync_http_client(self._limits)
                    sdk = BaseClient(
                        base_url=self._api_url, api_key=self._api_key,
                        timeout=self._timeout, httpx_client=http,
                    )
                    pool = ThreadPoolExecutor(self._workers, thread_name_prefix="zep")
                    self._sync, self._pid = (sdk, pool, http), os.getpid()
                built = self._sync
        return built[0], built[1]

    def for_loop(self) -> tuple[AsyncBaseClient, asyncio.Semaphore]:
        """The running loop's SDK client and its gate (``acall``), one per connection."""
        loop = asyncio.get_running_loop()
        built = self._async.get(loop)
        if built is None:
            http = async_http_client(self._limits)
            sdk = AsyncBaseClient(
                base_url=self._api_url, api_key=self._api_key,
                timeout=self._timeout, httpx_client=http,
            )
            with self._lock:
                built = self._async.setdefault(loop, (sdk, http, asyncio.Semaphore(self._workers)))
        return built[0], built[2]

    def close(self) -> None:
        with self._lock:
            built, self._sync = self._sync, None
        if built is not None and self._pid == os.getpid():
            built[1].shutdown(wait=False, cancel_futures=True)
            built[2].close()

    async def aclose(self) -> None:
        with self._lock:
            pair = self._async.pop(asyncio.get_running_loop(), None)
        if pair is not None:
            await pair[1].aclose()
