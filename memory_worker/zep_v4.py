"""Zep v4 behind the project's Zep boundary: the ``zep-cloud`` 4.x SDK, in project terms.

``ZepV4Client`` implements ``zep.ZepApi`` and returns the same outcome types
and reasons as the v2 client for the same situations (the table in ``zep``'s
docstring, through the same ``failure_by_status`` and ``transport_failure``);
nothing above it sees an httpx or zep_cloud type. Differences of v4 it hides:

* Zep assigns thread and user uuids; ``zep_v4_identity`` keeps the mapping
  from ``thread_id`` (durably in Redis, cached in the process) and rebuilds it
  from Zep. A thread with no known mapping: a write answers
  ``session_not_found`` without a request (the writer then calls
  ``add_session``, which finds or creates the thread), a read answers
  ``not_found`` without a request (after Redis loses the mapping, reads of a
  thread answer ``not_found`` until its next write rebuilds it), ``landed``
  finds nothing. A uuid Zep answers 404 for is forgotten.
* Messages: ``role_type`` becomes v4's ``role`` and the project's ``role``
  the message ``name``; reading back, ``role`` is the name (else the role) and
  ``role_type`` the role, the shape a v2 reader sees. Every message carries its
  own metadata plus ``thread_id``; Zep sets its uuid. Zep refuses no repeat, so
  a 2xx is always ``stored``; the ``Idempotency-Key`` is derived from the
  message's ``client_msg_id`` and chunk range, the same on every attempt.
* Views, each within one total budget (the mapping lookup included), the
  calls of the summary view made at once:

      summary (and None)  get_context, get_summary, the last ``lastn`` messages
      recent              the last ``lastn`` messages (newest first, reversed)
      facts               get_context

  Facts are what v4 offers closest to them without another call: the items of
  the context block's facts section (``<FACTS>`` ... ``</FACTS>`` or
  ``FACTS:``), one sentence each, their date ranges cut. Every view that
  fetched the context fills ``facts`` too.
* The probe is one ``GET /threads/{uuid}`` of a uuid Zep never assigns; its
  404 is an answer.

The SDK's retries are off (``max_retries=0``): a request is sent once. Its
clients are built once per process (rebuilt in a forked child) and once per
event loop, over the deadline-bound httpx clients of ``zep_http``, so the
SDK's own 60 s timeout never applies. The API key never appears in a repr, a
log line or a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future, wait
from typing import Any, TypeVar

import redis
from zep_cloud.client import AsyncZep, Zep
from zep_cloud.core.api_error import ApiError
from zep_cloud.core.parse_error import ParsingError

from memory_worker.config import Settings
from memory_worker.errors import ConfigError, InvalidRequest
from memory_worker.keys import Keys
from memory_worker.redis_clients import StateRedis
from memory_worker.zep import (
    LANDED_WINDOW,
    PROBE_SESSION,
    Failure,
    Landed,
    OutgoingMessage,
    ReadResult,
    Reason,
    WriteResult,
    WriteStatus,
    Written,
    check_id,
    failure_by_status,
    landed_chunks,
    transport_failure,
)
from memory_worker.zep_http import Call, acall, call_here, call_on_pool
from memory_worker.zep_v4_clients import Clients
from memory_worker.zep_v4_identity import Identities, Stopped
from memory_worker.zep_v4_messages import NAMESPACE, idempotency_key, memory, metadata_of, outgoing

_T = TypeVar("_T")

PAGE_SIZE = 100
VIEWS = (None, "summary", "recent", "facts")
# A uuid Zep never assigns (it hands out random ones): the probe's thread.
PROBE_THREAD = str(uuid.uuid5(NAMESPACE, PROBE_SESSION))


class ZepV4Client:
    """Zep v4, as the project uses it; safe to share between threads and tasks."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        conn: StateRedis,
        *,
        keys: Keys | None = None,
        read_budget_seconds: float = 0.25,
        write_budget_seconds: float = 1.5,
        probe_budget_seconds: float = 0.15,
        max_connections: int = 64,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.read_budget_seconds = read_budget_seconds
        self.write_budget_seconds = write_budget_seconds
        self.probe_budget_seconds = probe_budget_seconds
        self._now = now
        self._clients = Clients(f"{self.base_url}/api/v4", api_key, max_connections,
                                 write_budget_seconds)
        self._ids = Identities(conn, keys or Keys(), self)

    @classmethod
    def from_settings(cls, settings: Settings, conn: StateRedis) -> ZepV4Client:
        if not settings.zep_api_url:
            raise ConfigError("ZEP_API_URL", "required to talk to Zep")
        if not settings.zep_api_key:
            raise ConfigError("ZEP_API_KEY", "required to talk to Zep")
        return cls(
            settings.zep_api_url, settings.zep_api_key, conn,
            keys=Keys.of(settings),
            read_budget_seconds=settings.read_timeout_ms / 1000,
            write_budget_seconds=settings.zep_timeout_ms / 1000,
            probe_budget_seconds=settings.probe_timeout_ms / 1000,
        )

    def __repr__(self) -> str:
        return f"ZepV4Client(base_url={self.base_url!r})"

    # reads

    def get_memory(self, session_id: str, lastn: int, budget_seconds: float | None = None,
                   view: str | None = None) -> ReadResult:
        """The parts of a thread's memory that ``view`` shows, within one budget."""
        _check_read(session_id, lastn, view)
        deadline = time.monotonic() + _budget(budget_seconds, self.read_budget_seconds)
        try:
            thread_uuid = self._ids.thread(session_id, deadline)
        except Stopped as stop:
            return stop.failure
        if thread_uuid is None:
            return _UNKNOWN_THREAD
        parts = _parts(thread_uuid, lastn, view)
        if len(parts) == 1:
            [(name, operation)] = parts.items()
            outcomes = {name: self._attempt(deadline, operation)}
        else:
            futures = {name: self._clients.waiters().submit(self._attempt, deadline, operation)
                       for name, operation in parts.items()}
            wait(futures.values(), timeout=max(0.0, deadline - time.monotonic()))
            outcomes = {name: _settled(future) for name, future in futures.items()}
        return self._combined(session_id, thread_uuid, outcomes)

    async def aget_memory(self, session_id: str, lastn: int,
                          budget_seconds: float | None = None,
                          view: str | None = None) -> ReadResult:
        """``get_memory`` without blocking the event loop."""
        _check_read(session_id, lastn, view)
        deadline = time.monotonic() + _budget(budget_seconds, self.read_budget_seconds)
        try:
            thread_uuid = await self._ids.athread(session_id, deadline)
        except Stopped as stop:
            return stop.failure
        if thread_uuid is None:
            return _UNKNOWN_THREAD
        parts = _aparts(thread_uuid, lastn, view)
        try:
            sdk, gate = self._clients.for_loop()
        except Exception as exc:
            return self._failure(exc, Call(deadline), Reason.NOT_FOUND)
        values = await asyncio.gather(*(self._aattempt(deadline, sdk, gate, operation)
                                        for operation in parts.values()))
        return self._combined(session_id, thread_uuid, dict(zip(parts, values, strict=True)))

    def probe(self, budget_seconds: float | None = None) -> Failure | None:
        """One ``GET`` of a thread that cannot exist: None when Zep answered (a 404 counts)."""
        deadline = time.monotonic() + _budget(budget_seconds, self.probe_budget_seconds)
        outcome = self._attempt(deadline, lambda sdk: sdk.thread.get(PROBE_THREAD))
        if isinstance(outcome, Failure) and outcome.reason is not Reason.NOT_FOUND:
            return outcome
        return None

    def landed(self, session_id: str, client_msg_id: str,
               budget_seconds: float | None = None) -> Landed | Failure:
        """Chunks of ``client_msg_id`` among the thread's latest ``LANDED_WINDOW`` messages."""
        check_id(session_id)
        deadline = time.monotonic() + _budget(budget_seconds, self.write_budget_seconds)
        thread_uuid: str | None = None
        try:
            thread_uuid = self._ids.thread(session_id, deadline)
            if thread_uuid is None:
                return frozenset()
            known = thread_uuid
            found = self.zep(deadline, lambda sdk: _latest(sdk, known, LANDED_WINDOW),
                             Reason.NOT_FOUND)
        except Stopped as stop:
            if stop.failure.reason is Reason.NOT_FOUND:
                self._forget_later(session_id, thread_uuid)
                return frozenset()
            return stop.failure
        return landed_chunks((metadata_of(m) for m in found), client_msg_id)

    # writes

    def add_messages(self, session_id: str, messages: Sequence[OutgoingMessage],
                     budget_seconds: float | None = None) -> WriteResult:
        """Add at most 30 messages to the thread of ``session_id``; Zep sets their uuids."""
        check_id(session_id)
        sdk_messages = outgoing(session_id, messages)
        key = idempotency_key(messages)
        deadline = time.monotonic() + _budget(budget_seconds, self.write_budget_seconds)
        thread_uuid: str | None = None
        try:
            thread_uuid = self._ids.thread(session_id, deadline)
            if thread_uuid is None:
                return Failure(Reason.SESSION_NOT_FOUND,
                               message="no Zep thread is known for this thread_id yet")
            known = thread_uuid
            self.zep(deadline, lambda sdk: sdk.thread.add_messages(
                known, messages=sdk_messages, idempotency_key=key), Reason.SESSION_NOT_FOUND)
        except Stopped as stop:
            if stop.failure.reason is Reason.SESSION_NOT_FOUND:
                self._forget_later(session_id, thread_uuid)
            return stop.failure
        return Written(WriteStatus.STORED)

    def add_session(self, session_id: str, user_id: str | None = None,
                    budget_seconds: float | None = None) -> WriteResult:
        """Find the thread of ``session_id`` (rebuilding its mapping) or create it."""
        check_id(session_id)
        if user_id is not None:
            check_id(user_id, "user_id")
        deadline = time.monotonic() + _budget(budget_seconds, self.write_budget_seconds)
        try:
            return Written(self._ids.ensure_thread(session_id, user_id, deadline))
        except Stopped as stop:
            return stop.failure

    def add_user(self, user_id: str, budget_seconds: float | None = None) -> WriteResult:
        """Create a user (an existing one is fine) and remember its uuid."""
        check_id(user_id, "user_id")
        deadline = time.monotonic() + _budget(budget_seconds, self.write_budget_seconds)
        try:
            return Written(self._ids.user(user_id, deadline)[1])
        except Stopped as stop:
            return stop.failure

    # life cycle

    def close(self) -> None:
        """Close the synchronous side; ``aclose`` closes the running loop's."""
        self._clients.close()

    async def aclose(self) -> None:
        await self._clients.aclose()

    # steps (``zep_v4_identity.Steps``)

    def zep(self, deadline: float, operation: Callable[[Zep], _T], missing: Reason, *,
            here: bool = False) -> _T:
        """One SDK call within ``deadline``, on a call thread or ``here`` in the caller's
        (``zep_http.call_here``); its failure raised as ``Stopped``."""
        call = Call(deadline)
        try:
            # Built on first use, inside the try: a client that cannot be built is a
            # failure of this call, never an exception.
            sdk, pool = self._clients.sync()
            if here:
                return call_here(call, lambda: operation(sdk))
            return call_on_pool(pool, call, lambda: operation(sdk))
        except Exception as exc:
            raise Stopped(self._failure(exc, call, missing)) from None

    def redis(self, deadline: float, operation: Callable[[], _T]) -> _T:
        """One Redis step within ``deadline``, on a call thread so the wait is bounded."""
        left = deadline - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError
            future = self._clients.calls().submit(operation)
            return future.result(timeout=left)
        except Exception as exc:
            raise Stopped(_redis_failure(exc)) from None

    async def aredis(self, deadline: float, operation: Callable[[], _T]) -> _T:
        """``redis`` for a task: the command runs on a call thread, the loop stays free."""
        try:
            pool = self._clients.calls()
            loop = asyncio.get_running_loop()
            return await asyncio.wait_for(loop.run_in_executor(pool, operation),
                                          timeout=max(0.0, deadline - time.monotonic()))
        except Exception as exc:
            raise Stopped(_redis_failure(exc)) from None

    # machinery

    def _attempt(self, deadline: float, operation: Callable[[Zep], Any]) -> Any:
        """The value of one read call, made in this thread (the reader's, or a waiter's
        that the reader waits for within the deadline), or its ``Failure``."""
        try:
            return self.zep(deadline, operation, Reason.NOT_FOUND, here=True)
        except Stopped as stop:
            return stop.failure

    async def _aattempt(self, deadline: float, sdk: AsyncZep, gate: asyncio.Semaphore,
                        operation: Callable[[AsyncZep], Awaitable[Any]]) -> Any:
        call = Call(deadline)
        try:
            return await acall(call, lambda: operation(sdk), gate)
        except Exception as exc:
            return self._failure(exc, call, Reason.NOT_FOUND)

    def _combined(self, thread_id: str, thread_uuid: str, outcomes: dict[str, Any]
                  ) -> ReadResult:
        failures = [value for value in outcomes.values() if isinstance(value, Failure)]
        if failures:
            failure = failures[0]
            if failure.reason is Reason.NOT_FOUND:
                self._forget_later(thread_id, thread_uuid)
            return failure
        try:
            return memory(outcomes)
        except (AttributeError, TypeError, ValueError):
            return Failure(Reason.SERVER_ERROR, message="unreadable answer")

    def _forget_later(self, thread_id: str, thread_uuid: str | None) -> None:
        """Zep answered 404 for the thread: forget it, without making the caller wait."""
        if thread_uuid is None:
            return
        deadline = time.monotonic() + self.write_budget_seconds
        with contextlib.suppress(Exception):  # closed or shutting down: the next 404 will
            self._clients.calls().submit(self._ids.forget, thread_id, thread_uuid, deadline)

    def _failure(self, exc: Exception, call: Call, missing: Reason) -> Failure:
        """The failure an exception of the SDK or httpx stands for."""
        if isinstance(exc, ApiError | ParsingError):
            status = exc.status_code if exc.status_code is not None else call.status_code
            if status is not None and 200 <= status < 300:
                return Failure(Reason.SERVER_ERROR, status, message="unreadable answer")
            headers = {str(k).lower(): str(v) for k, v in (exc.headers or {}).items()}
            retry_after = headers.get("retry-after", call.retry_after)
            return failure_by_status(status, _server_message(exc.body), retry_after,
                                     self._now(), missing)
        return transport_failure(exc, call, missing, self._now())


_UNKNOWN_THREAD = Failure(Reason.NOT_FOUND, message="no Zep thread is known for this thread_id")


def _parts(thread_uuid: str, lastn: int, view: str | None) -> dict[str, Callable[[Zep], Any]]:
    every: dict[str, Callable[[Zep], Any]] = {
        "messages": lambda sdk: _latest(sdk, thread_uuid, lastn),
        "context": lambda sdk: sdk.thread.get_context(thread_uuid).context,
        "summary": lambda sdk: sdk.thread.get_summary(thread_uuid).summary,
    }
    return {name: every[name] for name in _wanted(view)}


def _aparts(thread_uuid: str, lastn: int, view: str | None
            ) -> dict[str, Callable[[AsyncZep], Awaitable[Any]]]:
    async def context(sdk: AsyncZep) -> Any:
        return (await sdk.thread.get_context(thread_uuid)).context

    async def summary(sdk: AsyncZep) -> Any:
        return (await sdk.thread.get_summary(thread_uuid)).summary

    every: dict[str, Callable[[AsyncZep], Awaitable[Any]]] = {
        "messages": lambda sdk: _alatest(sdk, thread_uuid, lastn),
        "context": context, "summary": summary,
    }
    return {name: every[name] for name in _wanted(view)}


def _wanted(view: str | None) -> tuple[str, ...]:
    if view == "recent":
        return ("messages",)
    if view == "facts":
        return ("context",)
    return ("messages", "context", "summary")


def _latest(sdk: Zep, thread_uuid: str, count: int) -> list[Any]:
    """The thread's ``count`` latest messages, newest first, in pages of at most 100."""
    pager = sdk.thread.list_messages(thread_uuid, page_size=min(count, PAGE_SIZE),
                                     order_by="created_at", order="desc")
    return list(itertools.islice(pager, count))


async def _alatest(sdk: AsyncZep, thread_uuid: str, count: int) -> list[Any]:
    pager = await sdk.thread.list_messages(thread_uuid, page_size=min(count, PAGE_SIZE),
                                           order_by="created_at", order="desc")
    found: list[Any] = []
    async for message in pager:
        found.append(message)
        if len(found) >= count:
            break
    return found


def _settled(future: Future[Any]) -> Any:
    if not future.done():
        future.cancel()
        return Failure(Reason.TIMEOUT)
    return future.result()


def _redis_failure(exc: Exception) -> Failure:
    if isinstance(exc, TimeoutError | redis.TimeoutError):
        return Failure(Reason.TIMEOUT, message="the thread mapping did not answer in time")
    return Failure(Reason.CONNECTION_ERROR, message=f"thread mapping: {type(exc).__name__}")


def _server_message(body: object) -> str | None:
    error = getattr(body, "error", None)
    if error is None and isinstance(body, dict):
        error = body.get("error")
    message = getattr(error, "message", None)
    if message is None and isinstance(error, dict):
        message = error.get("message")
    if message is None and isinstance(body, dict):
        message = body.get("message")
    if message is None and isinstance(body, str):
        message = body
    return str(message)[:200] if message is not None else None


def _check_read(thread_id: str, lastn: object, view: str | None) -> None:
    check_id(thread_id)
    if not isinstance(lastn, int) or isinstance(lastn, bool) or lastn < 1:
        raise InvalidRequest("lastn must be a whole number of at least 1")
    if view not in VIEWS:
        raise InvalidRequest(f"view must be one of summary, recent, facts; got {view!r}")


def _budget(given: float | None, default: float) -> float:
    budget = default if given is None else given
    if not budget > 0:
        raise InvalidRequest("budget_seconds must be positive")
    return budget
