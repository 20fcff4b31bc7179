"""Which Zep v4 thread is a ``thread_id``: the mapping kept in Redis, and its rebuild.

Part of the Zep boundary; ``zep_v4`` is its only caller. On v4 Zep assigns the
uuids of users and threads, so the project keeps, durably (no TTL), under its
key prefix:

    zep:v4:thread:{thread_id}        -> the thread's uuid
    zep:v4:thread_of:{thread_uuid}   -> its thread_id (the mapping read backwards)
    zep:v4:user:{user_id}            -> the user's uuid
    zep:v4:thread_lock:{thread_id}   the one process creating the thread (SET NX PX)

and an in-process cache of both, so that the steady state costs no round trip
(a thread's uuid changes only when Zep answers 404 for it: then it is
forgotten, compare-and-delete, and resolved again).

Finding the thread of a ``thread_id`` without a mapping (``ensure_thread``):

1. a mapping another process stored meanwhile, checked with one ``GET`` of
   the thread (a stale one is forgotten);
2. ``thread.lookup(thread_id=...)``: a thread migrated from an older API
   keeps its developer id;
3. the rebuild: every message the project adds carries ``thread_id`` in its
   metadata, so among the user's threads (``thread.list(user_uuid=...)``, all
   pages) the one whose first message carries it is the thread. Threads whose
   owner is already known (the backward keys) are skipped; every first message
   read is remembered for its own ``thread_id`` too, so after a loss of Redis
   a user's threads are read once, not once per thread;
4. only then is a thread created, under the lock, so that two processes
   creating the same thread at once end with one: the loser waits, within its
   budget, for the winner's mapping (or takes the lock when the winner gave up)
   and otherwise fails as ``timeout`` (the write is retried).

A thread created but never written (its creator died before the first add) has
no message to be found by: the rebuild then creates another, and the empty one
stays unused; a thread's messages are never split over two threads.

The user of a thread is the caller's ``user_id``; without one, a user of its
own per thread, ``memory-worker-thread:{thread_id}`` (or, when that would
break the id rule, ``memory-worker-thread-sha256:{sha256 of thread_id}``).
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Protocol, TypeVar

from zep_cloud.client import Zep

from memory_worker.connections import as_text, delete_if_value, get_many
from memory_worker.ids import is_valid_id
from memory_worker.keys import Keys
from memory_worker.redis_clients import StateRedis
from memory_worker.zep import Failure, Reason, WriteStatus

_T = TypeVar("_T")

PER_THREAD_USER = "memory-worker-thread:"
PER_THREAD_USER_HASHED = "memory-worker-thread-sha256:"
CACHE_ENTRIES = 100_000
PAGE_SIZE = 100
# How long a lock outlives its holder's budget, should the holder die with it.
LOCK_MARGIN_SECONDS = 1.0
POLL_SECONDS = 0.02


class Stopped(Exception):
    """A step failed; ``failure`` is what the whole call returns."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.reason.value)
        self.failure = failure


class Steps(Protocol):
    """How the client runs one Zep call or one Redis command within a deadline."""

    def zep(self, deadline: float, operation: Callable[[Zep], _T], missing: Reason) -> _T: ...

    def redis(self, deadline: float, operation: Callable[[], _T]) -> _T: ...

    def aredis(self, deadline: float, operation: Callable[[], _T]) -> Awaitable[_T]: ...


def user_key(thread_id: str, user_id: str | None) -> str:
    """The developer user id a thread is created under."""
    if user_id is not None:
        return user_id
    own = PER_THREAD_USER + thread_id
    if is_valid_id(own):
        return own
    return PER_THREAD_USER_HASHED + hashlib.sha256(thread_id.encode()).hexdigest()


class _Cache:
    """A bounded map of ids to uuids, safe to share between threads."""

    def __init__(self, size: int = CACHE_ENTRIES) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, str] = OrderedDict()

    def get(self, name: str) -> str | None:
        with self._lock:
            value = self._entries.get(name)
            if value is not None:
                self._entries.move_to_end(name)
            return value

    def put(self, name: str, value: str) -> None:
        with self._lock:
            self._entries[name] = value
            self._entries.move_to_end(name)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)

    def drop(self, name: str, value: str) -> None:
        with self._lock:
            if self._entries.get(name) == value:
                del self._entries[name]


class Identities:
    """The uuids of threads and users, from the cache, Redis or Zep."""

    def __init__(self, conn: StateRedis, keys: Keys, steps: Steps) -> None:
        self._conn = conn
        self._keys = keys
        self._steps = steps
        self._threads = _Cache()
        self._users = _Cache()

    # the mapping

    def thread(self, thread_id: str, deadline: float) -> str | None:
        """The known uuid of ``thread_id`` (cache, else Redis), or None."""
        cached = self._threads.get(thread_id)
        if cached is not None:
            return cached
        found = as_text(self._steps.redis(deadline, lambda: self._conn.get(
            self._keys.zep_thread(thread_id))))
        if found is not None:
            self._threads.put(thread_id, found)
        return found

    async def athread(self, thread_id: str, deadline: float) -> str | None:
        """``thread`` without blocking the event loop (Redis is asked on a thread)."""
        cached = self._threads.get(thread_id)
        if cached is not None:
            return cached
        found = as_text(await self._steps.aredis(deadline, lambda: self._conn.get(
            self._keys.zep_thread(thread_id))))
        if found is not None:
            self._threads.put(thread_id, found)
        return found

    def forget(self, thread_id: str, thread_uuid: str, deadline: float) -> None:
        """Zep answered 404 for ``thread_uuid``: drop it here and in Redis, if still ours."""
        self._threads.drop(thread_id, thread_uuid)
        with contextlib.suppress(Stopped):  # else the next 404 forgets it again
            self._steps.redis(deadline, lambda: self._forget(thread_id, thread_uuid))

    def _forget(self, thread_id: str, thread_uuid: str) -> None:
        delete_if_value(self._conn, self._keys.zep_thread(thread_id), thread_uuid)
        delete_if_value(self._conn, self._keys.zep_thread_owner(thread_uuid), thread_id)

    def _remember(self, thread_id: str, thread_uuid: str, deadline: float) -> str:
        """Store the mapping unless one exists; the uuid that stands (ours or the earlier)."""

        def store() -> str:
            if self._conn.set(self._keys.zep_thread(thread_id), thread_uuid, nx=True):
                standing = thread_uuid
            else:
                standing = as_text(self._conn.get(self._keys.zep_thread(thread_id))) or thread_uuid
            self._conn.set(self._keys.zep_thread_owner(standing), thread_id)
            return standing

        standing = self._steps.redis(deadline, store)
        self._threads.put(thread_id, standing)
        return standing

    # threads

    def ensure_thread(self, thread_id: str, user_id: str | None, deadline: float
                      ) -> WriteStatus:
        """Find or create the thread of ``thread_id``; raises ``Stopped``."""
        stored = as_text(self._steps.redis(deadline, lambda: self._conn.get(
            self._keys.zep_thread(thread_id))))
        if stored is not None:
            if self._exists(stored, deadline):
                self._threads.put(thread_id, stored)
                return WriteStatus.ALREADY_EXISTS
            self.forget(thread_id, stored, deadline)
        migrated = self._migrated(thread_id, deadline)
        if migrated is not None:
            self._remember(thread_id, migrated, deadline)
            return WriteStatus.ALREADY_EXISTS
        name = user_key(thread_id, user_id)
        for last_try in (False, True):
            user_uuid = self.user(name, deadline)[0]
            try:
                found = self._search(thread_id, user_uuid, deadline)
                if found is not None:
                    self._remember(thread_id, found, deadline)
                    return WriteStatus.ALREADY_EXISTS
                return self._create(thread_id, user_uuid, deadline)
            except Stopped as stop:
                if last_try or stop.failure.reason is not Reason.USER_NOT_FOUND:
                    raise
                self._forget_user(name, user_uuid, deadline)  # deleted in Zep: make it again
        raise AssertionError("unreachable")

    def _exists(self, thread_uuid: str, deadline: float) -> bool:
        try:
            self._steps.zep(deadline, lambda sdk: sdk.thread.get(thread_uuid), Reason.NOT_FOUND)
        except Stopped as stop:
            if stop.failure.reason is Reason.NOT_FOUND:
                return False
            raise
        return True

    def _migrated(self, thread_id: str, deadline: float) -> str | None:
        try:
            found = self._steps.zep(deadline, lambda sdk: sdk.thread.lookup(thread_id=thread_id),
                                    Reason.NOT_FOUND)
        except Stopped as stop:
            if stop.failure.reason is Reason.NOT_FOUND:
                return None
            raise
        return _uuid_of(found)

    def _search(self, thread_id: str, user_uuid: str, deadline: float) -> str | None:
        """The user's thread whose first message carries ``thread_id`` (the rebuild)."""
        threads = self._steps.zep(deadline, lambda sdk: list(sdk.thread.list(
            user_uuid=user_uuid, page_size=PAGE_SIZE, order_by="created_at", order="asc")),
            Reason.USER_NOT_FOUND)
        uuids = [u for u in (_uuid_of(t) for t in threads) if u is not None]
        for thread in threads:
            if getattr(thread, "thread_id", None) == thread_id and _uuid_of(thread):
                return _uuid_of(thread)
        if not uuids:
            return None
        owners = self._steps.redis(deadline, lambda: get_many(
            self._conn, [self._keys.zep_thread_owner(u) for u in uuids]))
        unknown = []
        for thread_uuid, owner in zip(uuids, owners, strict=True):
            if as_text(owner) == thread_id:
                return thread_uuid
            if owner is None:
                unknown.append(thread_uuid)
        for thread_uuid in unknown:
            owner = self._first_owner(thread_uuid, deadline)
            if owner is None:
                continue
            standing = self._remember(owner, thread_uuid, deadline)
            if owner == thread_id:
                return standing
        return None

    def _first_owner(self, thread_uuid: str, deadline: float) -> str | None:
        """The ``thread_id`` in the metadata of a thread's first message, if any."""
        try:
            page = self._steps.zep(deadline, lambda sdk: sdk.thread.list_messages(
                thread_uuid, page_size=1, order_by="created_at", order="asc").items,
                Reason.NOT_FOUND)
        except Stopped as stop:
            if stop.failure.reason is Reason.NOT_FOUND:
                return None  # deleted meanwhile
            raise
        for message in page or ():
            owner = (getattr(message, "metadata", None) or {}).get("thread_id")
            return owner if isinstance(owner, str) and owner else None
        return None

    def _create(self, thread_id: str, user_uuid: str, deadline: float) -> WriteStatus:
        """Create the thread under the lock; or wait for whoever holds it."""
        lock = self._keys.zep_thread_lock(thread_id)
        token = secrets.token_hex(16)
        while True:
            if self._steps.redis(deadline, partial(self._take, lock, token, deadline)):
                try:
                    return self._create_locked(thread_id, user_uuid, deadline)
                finally:
                    with contextlib.suppress(Stopped):  # else it expires
                        self._steps.redis(deadline + LOCK_MARGIN_SECONDS,
                                          lambda: delete_if_value(self._conn, lock, token))
            stored = as_text(self._steps.redis(deadline, lambda: self._conn.get(
                self._keys.zep_thread(thread_id))))
            if stored is not None:
                self._threads.put(thread_id, stored)
                return WriteStatus.ALREADY_EXISTS
            left = deadline - time.monotonic()
            if left <= POLL_SECONDS:
                raise Stopped(Failure(Reason.TIMEOUT,
                                      message="the thread is being created by another process"))
            time.sleep(POLL_SECONDS)

    def _take(self, lock: str, token: str, deadline: float) -> bool:
        """The lock, held until the holder's budget ends and a margin more."""
        hold_ms = int((deadline - time.monotonic() + LOCK_MARGIN_SECONDS) * 1000)
        return bool(self._conn.set(lock, token, nx=True, px=max(hold_ms, 1)))

    def _create_locked(self, thread_id: str, user_uuid: str, deadline: float) -> WriteStatus:
        stored = as_text(self._steps.redis(deadline, lambda: self._conn.get(
            self._keys.zep_thread(thread_id))))
        if stored is not None:  # the previous holder finished just before
            self._threads.put(thread_id, stored)
            return WriteStatus.ALREADY_EXISTS
        created = self._steps.zep(deadline, lambda sdk: sdk.thread.create(user_uuid=user_uuid),
                                  Reason.USER_NOT_FOUND)
        thread_uuid = _uuid_of(created)
        if thread_uuid is None:
            raise Stopped(Failure(Reason.SERVER_ERROR, message="a thread without a uuid"))
        standing = self._remember(thread_id, thread_uuid, deadline)
        return WriteStatus.CREATED if standing == thread_uuid else WriteStatus.ALREADY_EXISTS

    # users

    def user(self, user_id: str, deadline: float) -> tuple[str, WriteStatus]:
        """The uuid of the user ``user_id``, created when Zep has none; raises ``Stopped``."""
        cached = self._users.get(user_id)
        if cached is not None:
            return cached, WriteStatus.ALREADY_EXISTS
        key = self._keys.zep_user(user_id)
        stored = as_text(self._steps.redis(deadline, lambda: self._conn.get(key)))
        status = WriteStatus.ALREADY_EXISTS
        if stored is None:
            stored, status = self._create_user(user_id, deadline)
            self._steps.redis(deadline, lambda: self._conn.set(key, stored))
        self._users.put(user_id, stored)
        return stored, status

    def _create_user(self, user_id: str, deadline: float) -> tuple[str, WriteStatus]:
        try:
            user = self._steps.zep(deadline, lambda sdk: sdk.user.create(user_id=user_id),
                                   Reason.CLIENT_ERROR)
            status = WriteStatus.CREATED
        except Stopped as stop:
            if stop.failure.status_code != 409:
                raise
            user = self._steps.zep(deadline, lambda sdk: sdk.user.lookup(user_id=user_id),
                                   Reason.USER_NOT_FOUND)
            status = WriteStatus.ALREADY_EXISTS
        found = _uuid_of(user)
        if found is None:
            raise Stopped(Failure(Reason.SERVER_ERROR, message="a user without a uuid"))
        return found, status

    def _forget_user(self, user_id: str, user_uuid: str, deadline: float) -> None:
        self._users.drop(user_id, user_uuid)
        self._steps.redis(deadline, lambda: delete_if_value(
            self._conn, self._keys.zep_user(user_id), user_uuid))


def _uuid_of(value: Any) -> str | None:
    found = getattr(value, "uuid_", None)
    return str(found) if found else None

