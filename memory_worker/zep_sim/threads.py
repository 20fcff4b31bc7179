"""The v4 simulator's state: users, threads, their messages and seeded context.

On v4 Zep assigns every uuid. A user may carry a developer ``user_id``
(unique, kept, resolved by lookup); a thread belongs to a user by
``user_uuid`` and has no developer id, except a thread migrated from an older
API (made here only through the control API), whose ``thread_id`` lookup
resolves. The v2 sessions of the same simulator are a separate world: lookup
does not find them.

Zep's rules on adds: at most ``MAX_MESSAGES_PER_ADD`` messages, each with
content of at most ``MAX_CONTENT_CHARS`` characters and a role, no client
``uuid`` (the SDK says it must be left unset), metadata of at most
``MAX_METADATA_KEYS`` keys whose values are strings, numbers, booleans or
arrays of them. An add is stored whole or not at all. Nothing is deduplicated:
the same message sent twice is stored twice.
"""

from __future__ import annotations

import itertools
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from memory_worker.zep_sim.messages_v4 import Message, prepared, stamp
from memory_worker.zep_sim.paging import PageRequest, SortValue
from memory_worker.zep_sim.store import Refused, compose_context

MAX_USER_ID_CHARS = 500


@dataclass
class _User:
    uuid: str
    user_id: str | None
    fields: dict[str, Any]
    at: float
    seq: int
    graph_uuid: str = field(default_factory=lambda: str(uuid.uuid4()))

    def to_json(self) -> dict[str, Any]:
        return {"uuid": self.uuid, "user_id": self.user_id, "graph_uuid": self.graph_uuid,
                "created_at": stamp(self.at), **self.fields}


@dataclass
class _Thread:
    uuid: str
    user: _User
    thread_id: str | None
    at: float
    seq: int
    updated: float
    messages: list[Message] = field(default_factory=list)
    summary: str | None = None
    context: str | None = None
    facts: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"uuid": self.uuid, "user_uuid": self.user.uuid, "thread_id": self.thread_id,
                "graph_uuid": self.user.graph_uuid, "created_at": stamp(self.at),
                "updated_at": stamp(self.updated)}


_USER_FIELDS = ("email", "first_name", "last_name", "metadata", "time_zone",
                "disable_default_ontology")


class ThreadStore:
    """Zep's v4 data, as far as the project uses it; every method takes the one lock."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._seq = itertools.count(1)
        self._users: dict[str, _User] = {}
        self._threads: dict[str, _Thread] = {}

    def reset(self) -> None:
        with self._lock:
            self._users.clear()
            self._threads.clear()

    # users

    def create_user(self, body: Mapping[str, Any]) -> dict[str, Any]:
        user_id = body.get("user_id")
        if user_id is not None and (not isinstance(user_id, str) or not user_id):
            raise Refused(400, "user_id must be a non-empty string")
        if user_id is not None and len(user_id) > MAX_USER_ID_CHARS:
            raise Refused(400, f"user_id exceeds {MAX_USER_ID_CHARS} characters")
        fields = {name: body.get(name) for name in _USER_FIELDS}
        with self._lock:
            if user_id is not None and self._by_user_id(user_id) is not None:
                raise Refused(409, f"a user with user_id {user_id} already exists")
            return self._new_user(user_id, fields).to_json()

    def _new_user(self, user_id: str | None, fields: dict[str, Any]) -> _User:
        user = _User(str(uuid.uuid4()), user_id, fields, self._clock(), next(self._seq))
        self._users[user.uuid] = user
        return user

    def _by_user_id(self, user_id: str) -> _User | None:
        return next((u for u in self._users.values() if u.user_id == user_id), None)

    def get_user(self, user_uuid: str) -> dict[str, Any]:
        with self._lock:
            return self._user(user_uuid).to_json()

    def _user(self, user_uuid: str) -> _User:
        user = self._users.get(_uuid(user_uuid, "user"))
        if user is None:
            raise Refused(404, "user not found")
        return user

    def lookup_user(self, body: Mapping[str, Any]) -> dict[str, Any]:
        name, value = _one_id(body)
        with self._lock:
            user = None
            if name == "user_id":
                user = self._by_user_id(value)
            elif name == "thread_id":
                thread = self._by_thread_id(value)
                user = thread.user if thread is not None else None
            if user is None:
                raise Refused(404, "user not found")
            return user.to_json()

    def delete_user(self, user_uuid: str) -> None:
        """Forget the user with its threads and their messages."""
        with self._lock:
            user = self._user(user_uuid)
            del self._users[user.uuid]
            for thread in [t for t in self._threads.values() if t.user is user]:
                del self._threads[thread.uuid]

    def list_users(self, paging: PageRequest, search: str | None) -> dict[str, Any]:
        with self._lock:
            users = list(self._users.values())
            if search:
                needle = search.lower()
                users = [u for u in users if any(
                    needle in str(text).lower()
                    for text in (u.user_id, u.fields.get("email"), u.fields.get("first_name"),
                                 u.fields.get("last_name")) if text
                )]
            return paging.page(users, _user_value, lambda u: u.seq, _User.to_json)

    # threads

    def create_thread(self, user_uuid: Any) -> dict[str, Any]:
        if not isinstance(user_uuid, str) or not user_uuid:
            raise Refused(400, "user_uuid is required")
        with self._lock:
            return self._new_thread(self._user(user_uuid), None).to_json()

    def _new_thread(self, user: _User, thread_id: str | None) -> _Thread:
        at = self._clock()
        thread = _Thread(str(uuid.uuid4()), user, thread_id, at, next(self._seq), at)
        self._threads[thread.uuid] = thread
        return thread

    def add_migrated_thread(self, user_id: str, thread_id: str | None) -> dict[str, Any]:
        """A thread (its user made when missing) as if migrated with a developer ``thread_id``."""
        with self._lock:
            if thread_id is not None and self._by_thread_id(thread_id) is not None:
                raise Refused(409, f"a thread with thread_id {thread_id} already exists")
            user = self._by_user_id(user_id) or self._new_user(user_id, {})
            return self._new_thread(user, thread_id).to_json()

    def _by_thread_id(self, thread_id: str) -> _Thread | None:
        return next((t for t in self._threads.values() if t.thread_id == thread_id), None)

    def get_thread(self, thread_uuid: str) -> dict[str, Any]:
        with self._lock:
            return self._thread(thread_uuid).to_json()

    def _thread(self, thread_uuid: str) -> _Thread:
        thread = self._threads.get(_uuid(thread_uuid, "thread"))
        if thread is None:
            raise Refused(404, "thread not found")
        return thread

    def lookup_thread(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Only threads migrated from older APIs have a ``thread_id`` to resolve."""
        name, value = _one_id(body)
        with self._lock:
            thread = self._by_thread_id(value) if name == "thread_id" else None
            if thread is None:
                raise Refused(404, "thread not found")
            return thread.to_json()

    def delete_thread(self, thread_uuid: str) -> None:
        with self._lock:
            del self._threads[self._thread(thread_uuid).uuid]

    def list_threads(self, paging: PageRequest, user_uuid: str | None) -> dict[str, Any]:
        with self._lock:
            threads = list(self._threads.values())
            if user_uuid is not None:
                user = self._user(user_uuid)
                threads = [t for t in threads if t.user is user]
            return paging.page(threads, _thread_value, lambda t: t.seq, _Thread.to_json)

    def threads_of(self, *, user_uuid: str | None = None, user_id: str | None = None
                   ) -> list[dict[str, Any]]:
        """Every thread (of the user named by uuid or developer id), oldest first."""
        with self._lock:
            return [t.to_json() for t in sorted(self._threads.values(), key=lambda t: t.seq)
                    if (user_uuid is None or t.user.uuid == user_uuid)
                    and (user_id is None or t.user.user_id == user_id)]

    # messages

    def add_messages(self, thread_uuid: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Store every message or none; the answer is the SDK's ``AddMessagesResult``."""
        batch = prepared(body.get("messages"))
        with self._lock:
            thread = self._thread(thread_uuid)
            at = self._clock()
            added = [message.stored(thread.uuid, at, next(self._seq)) for message in batch]
            thread.messages.extend(added)
            thread.updated = at
            result: dict[str, Any] = {
                "messages": [m.to_json() for m in added],
                "task": {"uuid": str(uuid.uuid4()), "type": "add_messages",
                         "status": "succeeded", "created_at": stamp(at),
                         "completed_at": stamp(at)},
            }
            if body.get("return_context") is True:
                result["context"] = self._context(thread)
            return result

    def list_messages(self, thread_uuid: str, paging: PageRequest) -> dict[str, Any]:
        with self._lock:
            messages = self._thread(thread_uuid).messages
            return paging.page(messages, lambda m, _: m.at, lambda m: m.seq, Message.to_json)

    def get_message(self, thread_uuid: str, message_uuid: str) -> dict[str, Any]:
        with self._lock:
            return self._message(thread_uuid, message_uuid).to_json()

    def _message(self, thread_uuid: str, message_uuid: str) -> Message:
        thread = self._thread(thread_uuid)
        wanted = _uuid(message_uuid, "message")
        found = next((m for m in thread.messages if m.uuid == wanted), None)
        if found is None:
            raise Refused(404, "message not found")
        return found

    def update_message(self, thread_uuid: str, message_uuid: str, metadata: Any
                       ) -> dict[str, Any]:
        """Merge metadata onto a message; a key set to null is removed."""
        with self._lock:
            message = self._message(thread_uuid, message_uuid)
            message.merge(metadata)
            return message.to_json()

    def stored_messages(self, thread_uuid: str) -> list[dict[str, Any]]:
        """Every stored message of a thread, oldest first (empty when unknown)."""
        with self._lock:
            thread = self._threads.get(thread_uuid)
            return [m.to_json() for m in thread.messages] if thread else []

    # what Zep derives

    def seed(self, thread_uuid: str, *, summary: str | None = None, context: str | None = None,
             facts: Sequence[str] | None = None) -> None:
        """Give a thread the summary, facts or context block Zep would have derived."""
        with self._lock:
            thread = self._thread(thread_uuid)
            if summary is not None:
                thread.summary = summary
            if context is not None:
                thread.context = context
            if facts is not None:
                thread.facts = [str(fact) for fact in facts]

    def context(self, thread_uuid: str) -> dict[str, Any]:
        with self._lock:
            return {"context": self._context(self._thread(thread_uuid))}

    def _context(self, thread: _Thread) -> str | None:
        return thread.context or compose_context(thread.summary, thread.facts)

    def summary(self, thread_uuid: str) -> dict[str, Any]:
        """The SDK's ``ThreadSummary``; ``summary`` is null until one is seeded."""
        with self._lock:
            thread = self._thread(thread_uuid)
            body: dict[str, Any] = {"thread_uuid": thread.uuid, "summary": thread.summary,
                                    "graph_uuid": thread.user.graph_uuid}
            if thread.summary is not None:
                body.update(uuid=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{thread.uuid}/summary")),
                            created_at=stamp(thread.at), last_summarized_at=stamp(thread.updated))
            return body


def _uuid(value: str, what: str) -> str:
    """A path's uuid in canonical form; anything else is a 400."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise Refused(400, f"{what} uuid is not a valid UUID") from None


def _one_id(body: Mapping[str, Any]) -> tuple[str, str]:
    given = [(name, body[name]) for name in ("graph_id", "thread_id", "user_id")
             if body.get(name) is not None]
    if len(given) != 1 or not isinstance(given[0][1], str) or not given[0][1]:
        raise Refused(400, "give exactly one of graph_id, thread_id and user_id")
    return given[0]


def _user_value(user: _User, order_by: str) -> SortValue:
    if order_by == "created_at":
        return user.at
    if order_by == "uuid":
        return user.uuid
    if order_by == "user_id":
        return user.user_id or ""
    return str(user.fields.get("email") or "")


def _thread_value(thread: _Thread, order_by: str) -> SortValue:
    if order_by == "updated_at":
        return thread.updated
    if order_by == "uuid":
        return thread.uuid
    return thread.at
