"""The ``zep-cloud`` SDK clients of one Zep v4 and the threads its calls run on.

Part of the Zep boundary; ``zep_v4`` is its only caller. Like
``zep_http.Clients`` for v2: the synchronous SDK client, its call threads and
the threads that wait on a read's concurrent calls are built once per process
(a forked child builds its own), the asynchronous client once per event loop;
all of them over the deadline-bound httpx clients of ``zep_http``, with the
SDK's own retries off (``max_retries=0``). The SDK's client modules are
imported here, not on a call's first use, so no call spends its budget on an
import.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

import httpx
import zep_cloud.thread.client
import zep_cloud.user.client  # noqa: F401
from zep_cloud.client import AsyncZep, Zep

from memory_worker.zep_http import async_http_client, sync_http_client


class Clients:
    """The SDK clients of one Zep: per process for threads, per event loop for tasks."""

    def __init__(self, api_url: str, api_key: str, max_connections: int, timeout: float) -> None:
        self._api_url = api_url
        self._api_key = api_key
        self._timeout = timeout
        self._workers = max_connections
        self._limits = httpx.Limits(max_connections=max_connections,
                                    max_keepalive_connections=max_connections)
        self._lock = threading.Lock()
        self._pools_pid = -1
        self._pools: tuple[ThreadPoolExecutor, ThreadPoolExecutor] | None = None
        self._sdk_pid = -1
        self._sdk: tuple[Zep, httpx.Client] | None = None
        self._async: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[AsyncZep, httpx.AsyncClient, asyncio.Semaphore]
        ] = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        return f"Clients(api_url={self._api_url!r})"

    def _built_pools(self) -> tuple[ThreadPoolExecutor, ThreadPoolExecutor]:
        pools = self._pools
        if pools is None or self._pools_pid != os.getpid():
            with self._lock:
                if self._pools is None or self._pools_pid != os.getpid():
                    # A forked child must not use its parent's threads.
                    self._pools = (
                        ThreadPoolExecutor(self._workers, thread_name_prefix="zep4"),
                        ThreadPoolExecutor(self._workers, thread_name_prefix="zep4-wait"),
                    )
                    self._pools_pid = os.getpid()
                pools = self._pools
        return pools

    def calls(self) -> ThreadPoolExecutor:
        """Threads that run calls (and Redis steps), so that the caller's wait is bounded."""
        return self._built_pools()[0]

    def waiters(self) -> ThreadPoolExecutor:
        """Threads that make a read's calls at once, each within the read's deadline."""
        return self._built_pools()[1]

    def sync(self) -> tuple[Zep, ThreadPoolExecutor]:
        built = self._sdk
        if built is None or self._sdk_pid != os.getpid():
            with self._lock:
                if self._sdk is None or self._sdk_pid != os.getpid():
                    # A forked child must not use its parent's sockets.
                    http = sync_http_client(self._limits)
                    sdk = Zep(base_url=self._api_url, api_key=self._api_key, max_retries=0,
                              timeout=self._timeout, httpx_client=http)
                    self._sdk, self._sdk_pid = (sdk, http), os.getpid()
                built = self._sdk
        return built[0], self.calls()

    def for_loop(self) -> tuple[AsyncZep, asyncio.Semaphore]:
        """The running loop's SDK client and its gate (``zep_http.acall``), one per
        connection."""
        loop = asyncio.get_running_loop()
        built = self._async.get(loop)
        if built is None:
            http = async_http_client(self._limits)
            sdk = AsyncZep(base_url=self._api_url, api_key=self._api_key, max_retries=0,
                           timeout=self._timeout, httpx_client=http)
            with self._lock:
                built = self._async.setdefault(
                    loop, (sdk, http, asyncio.Semaphore(self._workers)))
        return built[0], built[2]

    def close(self) -> None:
        with self._lock:
            pools, self._pools = self._pools, None
            built, self._sdk = self._sdk, None
        if pools is not None and self._pools_pid == os.getpid():
            for pool in pools:
                pool.shutdown(wait=False, cancel_futures=True)
        if built is not None and self._sdk_pid == os.getpid():
            built[1].close()

    async def aclose(self) -> None:
        with self._lock:
            pair = self._async.pop(asyncio.get_running_loop(), None)
        if pair is not None:
            await pair[1].aclose()
