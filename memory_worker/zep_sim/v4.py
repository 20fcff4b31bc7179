"""The Zep v4 endpoints (what ``zep-cloud`` 4.x calls) and their control API, without HTTP.

Under ``/api/v4``, with ``Authorization: Api-Key <key>`` (else 401):

    POST   /users                 201 User       (409 when user_id is taken)
    POST   /users/list            200 UserPage   (?page_size&cursor&order_by&order)
    POST   /users/lookup          200 User       ({"user_id"} or {"thread_id"})
    GET    /users/{uuid}          200 User       DELETE /users/{uuid}   202
    POST   /threads               201 Thread     ({"user_uuid"}; 404 for an unknown user)
    GET    /threads               200 ThreadPage (?user_uuid&page_size&cursor&order_by&order)
    POST   /threads/lookup        200 Thread     (migrated threads only, else 404)
    GET    /threads/{uuid}        200 Thread     DELETE /threads/{uuid} 202
    POST   /threads/{uuid}/messages   202 AddMessagesResult
    GET    /threads/{uuid}/messages   200 MessagePage (?page_size&cursor&order_by=created_at&order)
    GET    /threads/{uuid}/messages/{uuid}   200 Message   PATCH (metadata merge) 200
    GET    /threads/{uuid}/context    200 ThreadContextResponse
    GET    /threads/{uuid}/summary    200 ThreadSummary (summary null until seeded)

Lists default to ``created_at`` ascending, 50 per page (at most 1000). A
malformed uuid in a path is a 400, an unknown one a 404. Errors carry the body
the SDK's typed errors parse: ``{"error": {"code", "message"}}``.

Control API, under ``/_sim/v4``:

    POST /threads                {"user_id", "thread_id"?}  a thread (and its user),
                                 migrated when thread_id is given; 201 Thread
    GET  /threads?user_uuid=|user_id=                        {"threads": [Thread]}
    POST /threads/{uuid}/seed    {"summary", "context", "facts"}
    GET  /threads/{uuid}/messages                            {"messages": [Message]}
"""

from __future__ import annotations

import http
import re
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from memory_worker.zep_sim.paging import PageRequest
from memory_worker.zep_sim.routing import Reply, Table
from memory_worker.zep_sim.routing import json_object as _obj
from memory_worker.zep_sim.threads import ThreadStore

PREFIX = "/api/v4"
CONTROL = "/v4"

_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
          405: "method_not_allowed", 409: "conflict", 413: "content_too_large",
          429: "rate_limited", 500: "internal_error", 502: "bad_gateway",
          503: "service_unavailable", 504: "gateway_timeout"}

Query = Mapping[str, list[str]]
Match = re.Match[str]


def error_body(status: int, message: str) -> dict[str, Any]:
    """A v4 error as the SDK's ``ApiError`` type reads it."""
    code = _CODES.get(status)
    if code is None:
        try:
            code = http.HTTPStatus(status).phrase.lower().replace(" ", "_")
        except ValueError:
            code = "error"
    return {"error": {"code": code, "message": message}}


class V4Routes:
    """The v4 route table and its control routes, bound to one ``ThreadStore``."""

    def __init__(self, threads: ThreadStore) -> None:
        self.threads = threads
        t = threads
        self.table: Table = [
            ("POST", _p(r"/users"), lambda m, q, b: Reply(201, t.create_user(_obj(b)))),
            ("POST", _p(r"/users/list"), self._list_users),
            ("POST", _p(r"/users/lookup"), lambda m, q, b: Reply(200, t.lookup_user(_obj(b)))),
            ("GET", _p(r"/users/([^/]+)"), lambda m, q, b: Reply(200, t.get_user(_at(m)))),
            ("DELETE", _p(r"/users/([^/]+)"), self._delete_user),
            ("POST", _p(r"/threads"), lambda m, q, b: Reply(
                201, t.create_thread(_obj(b).get("user_uuid")))),
            ("GET", _p(r"/threads"), self._list_threads),
            ("POST", _p(r"/threads/lookup"), lambda m, q, b: Reply(
                200, t.lookup_thread(_obj(b)))),
            ("GET", _p(r"/threads/([^/]+)"), lambda m, q, b: Reply(200, t.get_thread(_at(m)))),
            ("DELETE", _p(r"/threads/([^/]+)"), self._delete_thread),
            ("POST", _p(r"/threads/([^/]+)/messages"), lambda m, q, b: Reply(
                202, t.add_messages(_at(m), _obj(b)))),
            ("GET", _p(r"/threads/([^/]+)/messages"), lambda m, q, b: Reply(
                200, t.list_messages(_at(m), PageRequest.from_query(q, ("created_at",))))),
            ("GET", _p(r"/threads/([^/]+)/messages/([^/]+)"), lambda m, q, b: Reply(
                200, t.get_message(_at(m), _at(m, 2)))),
            ("PATCH", _p(r"/threads/([^/]+)/messages/([^/]+)"), lambda m, q, b: Reply(
                200, t.update_message(_at(m), _at(m, 2), _obj(b).get("metadata")))),
            ("GET", _p(r"/threads/([^/]+)/context"), lambda m, q, b: Reply(
                200, t.context(_at(m)))),
            ("GET", _p(r"/threads/([^/]+)/summary"), lambda m, q, b: Reply(
                200, t.summary(_at(m)))),
        ]
        self.control: Table = [
            ("POST", _p(CONTROL + r"/threads"), self._add_migrated_thread),
            ("GET", _p(CONTROL + r"/threads"), lambda m, q, b: Reply(200, {
                "threads": t.threads_of(user_uuid=_arg(q, "user_uuid"),
                                        user_id=_arg(q, "user_id"))})),
            ("POST", _p(CONTROL + r"/threads/([^/]+)/seed"), self._seed),
            ("GET", _p(CONTROL + r"/threads/([^/]+)/messages"), lambda m, q, b: Reply(200, {
                "messages": t.stored_messages(_at(m))})),
        ]

    def _list_users(self, m: Match, q: Query, body: Any) -> Reply:
        search = _obj(body).get("search") if body is not None else None
        if search is not None and not isinstance(search, str):
            raise ValueError("search must be a string")
        paging = PageRequest.from_query(q, ("created_at", "user_id", "email", "uuid"))
        return Reply(200, self.threads.list_users(paging, search))

    def _delete_user(self, m: Match, q: Query, body: Any) -> Reply:
        self.threads.delete_user(_at(m))
        return Reply(202, {"task": _task("delete_user")})

    def _list_threads(self, m: Match, q: Query, body: Any) -> Reply:
        paging = PageRequest.from_query(q, ("created_at", "updated_at", "uuid"))
        return Reply(200, self.threads.list_threads(paging, _arg(q, "user_uuid")))

    def _delete_thread(self, m: Match, q: Query, body: Any) -> Reply:
        self.threads.delete_thread(_at(m))
        return Reply(202, {"task": _task("delete_thread")})

    def _add_migrated_thread(self, m: Match, q: Query, body: Any) -> Reply:
        data = _obj(body)
        user_id, thread_id = data.get("user_id"), data.get("thread_id")
        if not isinstance(user_id, str) or not user_id:
            raise ValueError("user_id must be a non-empty string")
        if thread_id is not None and (not isinstance(thread_id, str) or not thread_id):
            raise ValueError("thread_id must be a non-empty string")
        return Reply(201, self.threads.add_migrated_thread(user_id, thread_id))

    def _seed(self, m: Match, q: Query, body: Any) -> Reply:
        seed = _obj(body)
        facts = seed.get("facts")
        if facts is not None and not (
            isinstance(facts, list) and all(isinstance(f, str) for f in facts)
        ):
            raise ValueError("facts must be a list of strings")
        for name in ("summary", "context"):
            if seed.get(name) is not None and not isinstance(seed[name], str):
                raise ValueError(f"{name} must be a string")
        self.threads.seed(_at(m), summary=seed.get("summary"), context=seed.get("context"),
                          facts=facts)
        return Reply(200, {"ok": True})


def _p(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _at(match: Match, group: int = 1) -> str:
    return unquote(match[group])


def _arg(query: Query, name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


def _task(kind: str) -> dict[str, Any]:
    return {"uuid": str(uuid.uuid4()), "type": kind, "status": "pending"}
