"""The one door to Zep: calls the ``zep-python`` SDK and translates every outcome.

Nothing above this module sees an httpx or zep_python exception. Every call
returns a value: a success (``Memory``, ``Written``) or a ``Failure`` whose
``reason`` is a ``Reason``:

    status / error                      read            write
    401, 403                            auth            auth
    404                                 not_found       session_not_found (messages)
                                                        user_not_found (session)
    408, client timeout, deadline       timeout         timeout
    429                                 rate_limited    rate_limited
    5xx, a 2xx body that cannot be read server_error    server_error
    refused, reset, dropped             connection_error
    other 4xx                           client_error    client_error
    400 "... already exists"            --              Written(already_stored /
                                                        already_exists)

An error body that is not JSON (the SDK raises ``ValueError`` on it) is
classified by the status recorded under the SDK.

Each call has a total deadline (its budget), not the SDK's per-phase timeout:
synchronous calls run on a small thread pool and the caller waits at most the
budget, while the sockets under the call obey the same deadline
(``zep_http``), so an abandoned call ends with it; asynchronous calls are
cancelled by ``asyncio.timeout``. Clients and their connection pools are built
once per process (per event loop for the asynchronous side) and reused.

Ids go into URL paths and are checked first: ``[A-Za-z0-9._:@-]{1,256}``, and
not ``.`` or ``..``; anything else raises ``InvalidRequest``. The API key
never appears in a repr, a log line or a message.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, TypedDict, TypeVar

import httpx
from zep_python import Message
from zep_python.base_client import AsyncBaseClient, BaseClient
from zep_python.core.api_error import ApiError
from zep_python.types import Memory as SdkMemory

from memory_worker.config import Settings
from memory_worker.errors import ConfigError, InvalidRequest
from memory_worker.ids import ID_RULE, is_valid_id
from memory_worker.logs import log_event
from memory_worker.zep_http import (
    Call,
    Clients,
    acall,
    call_here,
    call_on_pool,
    parse_retry_after,
)

if TYPE_CHECKING:
    from memory_worker.redis_clients import StateRedis

log = logging.getLogger("memory_worker.zep")

# How many of a thread's latest messages are searched for a message whose earlier
# attempt may have stored it: enough for the chunks of one message (at most 40 of
# 100,000 characters) and the turns that other writers add meanwhile.
LANDED_WINDOW = 200
# A session no chat uses: the probe only asks whether Zep answers, and a 404 is an answer.
PROBE_SESSION = "memory-worker-probe"

_T = TypeVar("_T")
_R = TypeVar("_R")
_F = TypeVar("_F")


class Reason(enum.StrEnum):
    NOT_FOUND = "not_found"
    SESSION_NOT_FOUND = "session_not_found"
    USER_NOT_FOUND = "user_not_found"
    AUTH = "auth"
    TIMEOUT = "timeout"
    SERVER_ERROR = "server_error"
    CONNECTION_ERROR = "connection_error"
    RATE_LIMITED = "rate_limited"
    CLIENT_ERROR = "client_error"


class ContextMessage(TypedDict):
    role: str
    role_type: str
    content: str


class OutgoingMessage(TypedDict):
    uuid: str
    role: str
    role_type: str
    content: str
    metadata: dict[str, Any] | None


@dataclass(frozen=True)
class Memory:
    """A session's memory: messages oldest first, facts as plain sentences."""

    summary: str | None
    context: str | None
    messages: tuple[ContextMessage, ...]
    facts: tuple[str, ...]
    metadata: tuple[Mapping[str, Any] | None, ...] = ()  # of each message, in the same order


class WriteStatus(enum.StrEnum):
    STORED = "stored"
    ALREADY_STORED = "already_stored"  # every uuid of the add was stored before
    CREATED = "created"
    ALREADY_EXISTS = "already_exists"


@dataclass(frozen=True)
class Written:
    status: WriteStatus


@dataclass(frozen=True)
class Failure:
    """Zep did not do what was asked; ``message`` is the server's own, shortened."""

    reason: Reason
    status_code: int | None = None
    retry_after_seconds: float | None = None
    message: str | None = None


ReadResult = Memory | Failure
WriteResult = Written | Failure
Landed = frozenset[int]  # the chunk numbers (1-based) of a message found stored


class ZepApi(Protocol):
    """What the project needs of Zep, whichever API serves it (SPEC §12).

    One implementation per API: ``ZepClient`` (v2, zep-python) here and
    ``ZepV4Client`` (v4, zep-cloud) in ``zep_v4``; ``connect`` chooses once, from
    ``ZEP_API_VERSION``. Callers see the same outcome types from both. ``view``
    tells an API whose views cost different calls which parts are wanted.
    """

    def get_memory(self, session_id: str, lastn: int, budget_seconds: float | None = None,
                   view: str | None = None) -> ReadResult: ...

    async def aget_memory(self, session_id: str, lastn: int,
                          budget_seconds: float | None = None,
                          view: str | None = None) -> ReadResult: ...

    def probe(self, budget_seconds: float | None = None) -> Failure | None:
        """One request: None when Zep answered (a 404 counts), else the failure."""

    def add_messages(self, session_id: str, messages: Sequence[OutgoingMessage],
                     budget_seconds: float | None = None) -> WriteResult: ...

    def add_session(self, session_id: str, user_id: str | None = None,
                    budget_seconds: float | None = None) -> WriteResult: ...

    def add_user(self, user_id: str, budget_seconds: float | None = None) -> WriteResult: ...

    def landed(self, session_id: str, client_msg_id: str,
               budget_seconds: float | None = None) -> Landed | Failure:
        """The chunks of ``client_msg_id`` among the session's latest ``LANDED_WINDOW``
        messages; a missing session has none."""

    def close(self) -> None: ...

    async def aclose(self) -> None: ...


def connect(settings: Settings, conn: StateRedis | None = None) -> ZepApi:
    """The Zep client of ``ZEP_API_VERSION``; v4 keeps its id mapping in ``conn``.

    With tracing on (``tracing``), each of its calls is a span."""
    from memory_worker.tracing import traced_zep

    client: ZepApi
    if settings.zep_api_version == "v4":
        from memory_worker.zep_v4 import ZepV4Client

        if conn is None:
            from memory_worker.connections import state_client

            conn = state_client(settings)
        client = ZepV4Client.from_settings(settings, conn)
    else:
        client = ZepClient.from_settings(settings)
    return traced_zep(client, settings.zep_api_version)


def landed_chunks(metadata: Iterable[Mapping[str, Any] | None], client_msg_id: str) -> Landed:
    """The chunk numbers of ``client_msg_id`` among stored messages' metadata."""
    found: set[int] = set()
    for entry in metadata:
        if entry is None or entry.get("client_msg_id") != client_msg_id:
            continue
        chunk = entry.get("chunk", 1)
        if isinstance(chunk, int | float) and not isinstance(chunk, bool):
            found.add(int(chunk))
    return frozenset(found)


def check_id(value: object, name: str = "session_id") -> str:
    """``value`` when it is safe in a URL path; else ``InvalidRequest`` naming ``name``."""
    if not is_valid_id(value):
        raise InvalidRequest(f"{name} {ID_RULE}")
    return value


class ZepClient:
    """Zep, as the project uses it; safe to share between threads and tasks."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
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
        self._clients = Clients(
            f"{self.base_url}/api/v2", api_key, max_connections, write_budget_seconds
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> ZepClient:
        if not settings.zep_api_url:
            raise ConfigError("ZEP_API_URL", "required to talk to Zep")
        if not settings.zep_api_key:
            raise ConfigError("ZEP_API_KEY", "required to talk to Zep")
        return cls(
            settings.zep_api_url,
            settings.zep_api_key,
            read_budget_seconds=settings.read_timeout_ms / 1000,
            write_budget_seconds=settings.zep_timeout_ms / 1000,
            probe_budget_seconds=settings.probe_timeout_ms / 1000,
        )

    def __repr__(self) -> str:
        return f"ZepClient(base_url={self.base_url!r})"

    # reads

    def get_memory(
        self, session_id: str, lastn: int, budget_seconds: float | None = None,
        view: str | None = None,
    ) -> ReadResult:
        """The last ``lastn`` messages, summary, context and facts of a session (one call
        serves every view on v2)."""
        check_id(session_id)
        _check_count(lastn)
        return self._call(
            _budget(budget_seconds, self.read_budget_seconds),
            lambda sdk: sdk.memory.get(session_id, lastn=lastn),
            _memory, self._read_failure, here=True,
        )

    async def aget_memory(
        self, session_id: str, lastn: int, budget_seconds: float | None = None,
        view: str | None = None,
    ) -> ReadResult:
        """``get_memory`` without blocking the event loop."""
        check_id(session_id)
        _check_count(lastn)
        return await self._acall(
            _budget(budget_seconds, self.read_budget_seconds),
            lambda sdk: sdk.memory.get(session_id, lastn=lastn),
            _memory, self._read_failure,
        )

    def probe(self, budget_seconds: float | None = None) -> Failure | None:
        """One read of a session no chat uses: None when Zep answered, a 404 included."""
        outcome = self.get_memory(PROBE_SESSION, 1, _budget(budget_seconds,
                                                            self.probe_budget_seconds))
        if isinstance(outcome, Failure) and outcome.reason is not Reason.NOT_FOUND:
            return outcome
        return None

    def landed(self, session_id: str, client_msg_id: str,
               budget_seconds: float | None = None) -> Landed | Failure:
        """Chunks of ``client_msg_id`` among the session's latest messages (one read)."""
        outcome = self.get_memory(session_id, LANDED_WINDOW,
                                  _budget(budget_seconds, self.write_budget_seconds))
        if isinstance(outcome, Failure):
            return frozenset() if outcome.reason is Reason.NOT_FOUND else outcome
        return landed_chunks(outcome.metadata, client_msg_id)

    # writes

    def add_messages(
        self,
        session_id: str,
        messages: Sequence[OutgoingMessage],
        budget_seconds: float | None = None,
    ) -> WriteResult:
        """Store messages under their own uuids; a repeated uuid is ``already_stored``."""
        check_id(session_id)
        try:
            sdk_messages = [
                Message(
                    uuid=m["uuid"], role=m["role"], role_type=m["role_type"],
                    content=m["content"], metadata=m.get("metadata"),
                )
                for m in messages
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidRequest(f"messages are malformed: {type(exc).__name__}") from None
        return self._call(
            _budget(budget_seconds, self.write_budget_seconds),
            lambda sdk: sdk.memory.add(session_id, messages=sdk_messages),
            lambda _: Written(WriteStatus.STORED),
            partial(self._write_outcome, missing=Reason.SESSION_NOT_FOUND,
                    already=WriteStatus.ALREADY_STORED),
        )

    def add_session(
        self, session_id: str, user_id: str | None = None, budget_seconds: float | None = None
    ) -> WriteResult:
        """Create a session (for ``user_id`` when given); an existing one is fine."""
        check_id(session_id)
        if user_id is not None:
            check_id(user_id, "user_id")

        return self._call(
            _budget(budget_seconds, self.write_budget_seconds),
            lambda sdk: sdk.memory.add_session(session_id=session_id, user_id=user_id),
            lambda _: Written(WriteStatus.CREATED),
            partial(self._write_outcome, missing=Reason.USER_NOT_FOUND,
                    already=WriteStatus.ALREADY_EXISTS),
        )

    def add_user(self, user_id: str, budget_seconds: float | None = None) -> WriteResult:
        """Create a user; an existing one is fine."""
        check_id(user_id, "user_id")
        return self._call(
            _budget(budget_seconds, self.write_budget_seconds),
            lambda sdk: sdk.user.add(user_id=user_id),
            lambda _: Written(WriteStatus.CREATED),
            partial(self._write_outcome, missing=Reason.CLIENT_ERROR,
                    already=WriteStatus.ALREADY_EXISTS),
        )

    # life cycle

    def close(self) -> None:
        """Close the synchronous side; ``aclose`` closes the running loop's."""
        self._clients.close()

    async def aclose(self) -> None:
        await self._clients.aclose()

    # machinery

    def _call(
        self,
        budget: float,
        operation: Callable[[BaseClient], _T],
        convert: Callable[[_T], _R],
        translate: Callable[[Exception, Call], _F],
        *, here: bool = False,
    ) -> _R | _F:
        """One SDK call within ``budget``: on a pool thread, or ``here`` in the caller's
        (a read, whose caller waits for it anyway: ``call_here``)."""
        call = Call(time.monotonic() + budget)
        try:
            # Built on first use, inside the try: a client that cannot be built (a proxy
            # scheme without its package) is a failure of this call, never an exception.
            sdk, pool = self._clients.sync()
            if here:
                value = call_here(call, lambda: operation(sdk))
            else:
                value = call_on_pool(pool, call, lambda: operation(sdk))
        except Exception as exc:
            return translate(exc, call)
        return self._converted(value, convert, translate, call)

    async def _acall(
        self,
        budget: float,
        operation: Callable[[AsyncBaseClient], Awaitable[_T]],
        convert: Callable[[_T], _R],
        translate: Callable[[Exception, Call], _F],
    ) -> _R | _F:
        call = Call(time.monotonic() + budget)
        try:
            sdk, gate = self._clients.for_loop()
            value = await acall(call, lambda: operation(sdk), gate)
        except Exception as exc:
            return translate(exc, call)
        return self._converted(value, convert, translate, call)

    @staticmethod
    def _converted(
        value: _T,
        convert: Callable[[_T], _R],
        translate: Callable[[Exception, Call], _F],
        call: Call,
    ) -> _R | _F:
        try:
            return convert(value)
        except (AttributeError, TypeError, ValueError):
            return translate(ValueError("unreadable answer"), call)

    def _read_failure(self, exc: Exception, call: Call) -> Failure:
        return self._failure(exc, call, Reason.NOT_FOUND)

    def _write_outcome(
        self, exc: Exception, call: Call, missing: Reason, already: WriteStatus
    ) -> WriteResult:
        if isinstance(exc, ApiError):
            status = exc.status_code if exc.status_code is not None else call.status_code
            text = (_server_message(exc.body) or "").lower()
            if status in (400, 409) and "already exists" in text:
                return Written(already)
        return self._failure(exc, call, missing)

    def _failure(self, exc: Exception, call: Call, missing: Reason) -> Failure:
        """The failure an exception of the SDK or httpx stands for."""
        if isinstance(exc, ApiError):
            status = exc.status_code if exc.status_code is not None else call.status_code
            return failure_by_status(status, _server_message(exc.body), call.retry_after,
                                     self._now(), missing)
        return transport_failure(exc, call, missing, self._now())


def transport_failure(exc: Exception, call: Call, missing: Reason, now: float) -> Failure:
    """The failure of a call that raised something other than the SDK's own API error.

    Shared by both APIs' clients: a deadline or a timeout of httpx is ``timeout``,
    another httpx transport error ``connection_error``, a body the SDK could not
    parse is classified by the status recorded under it.
    """
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return Failure(Reason.TIMEOUT)
    if isinstance(exc, httpx.TransportError):
        return Failure(Reason.CONNECTION_ERROR, message=type(exc).__name__)
    if isinstance(exc, ValueError):
        # The SDK parses bodies as JSON and raises ValueError on anything else:
        # the status recorded under it still says what happened.
        status = call.status_code
        if status is not None and not 200 <= status < 300:
            return failure_by_status(status, None, call.retry_after, now, missing)
        return Failure(Reason.SERVER_ERROR, status, message="unreadable answer")
    if not isinstance(exc, httpx.HTTPError):
        log_event(log, "zep_unexpected_error", logging.WARNING, error=type(exc).__name__)
    return Failure(Reason.SERVER_ERROR, call.status_code, message=type(exc).__name__)


def failure_by_status(
    status: int | None, message: str | None, retry_after: str | None, now: float,
    missing: Reason,
) -> Failure:
    """The failure an HTTP status stands for (the table above); ``missing`` is a 404's."""
    if status is None or status >= 500 or status < 400:
        return Failure(Reason.SERVER_ERROR, status, message=message)
    if status in (401, 403):
        return Failure(Reason.AUTH, status, message=message)
    if status == 404:
        return Failure(missing, status, message=message)
    if status == 408:
        return Failure(Reason.TIMEOUT, status, message=message)
    if status == 429:
        return Failure(Reason.RATE_LIMITED, status, parse_retry_after(retry_after, now), message)
    return Failure(Reason.CLIENT_ERROR, status, message=message)


def _memory(value: SdkMemory) -> Memory:
    summary = value.summary.content if value.summary is not None else None
    context = getattr(value, "context", None)
    messages = tuple(
        ContextMessage(
            role=m.role or "", role_type=str(m.role_type or ""), content=m.content or ""
        )
        for m in value.messages or ()
    )
    facts = [f.fact for f in value.relevant_facts or () if f.fact]
    return Memory(
        summary=summary,
        context=context if isinstance(context, str) else None,
        messages=messages,
        facts=tuple(facts or (value.facts or ())),
        metadata=tuple(m.metadata if isinstance(m.metadata, dict) else None
                       for m in value.messages or ()),
    )


def _server_message(body: object) -> str | None:
    message = getattr(body, "message", None)
    if message is None and isinstance(body, dict):
        message = body.get("message")
    if message is None and isinstance(body, str):
        message = body
    return str(message)[:200] if message is not None else None


def _check_count(lastn: object) -> None:
    if not isinstance(lastn, int) or isinstance(lastn, bool) or lastn < 1:
        raise InvalidRequest("lastn must be a whole number of at least 1")


def _budget(given: float | None, default: float) -> float:
    budget = default if given is None else given
    if not budget > 0:
        raise InvalidRequest("budget_seconds must be positive")
    return budget
