"""What the simulator answers: Zep's v2 and v4 endpoints and the control API, without HTTP.

Zep v2 endpoints live under ``/api/v2``, v4 under ``/api/v4`` (see ``v4``);
both need ``Authorization: Api-Key <key>``:

    POST /users                        GET /users/{user_id}
    POST /sessions                     GET /sessions/{session_id}
    POST /sessions/{id}/memory         GET /sessions/{id}/memory?lastn=N
    GET  /sessions/{id}/messages?limit=N&cursor=P

The control API lives under ``/_sim``, takes and returns JSON, needs no key and
is not written to the request log (its v4 part is under ``/_sim/v4``):

    GET    /_sim/health                       POST /_sim/reset   (v2 and v4 state)
    POST   /_sim/faults        (a Fault)      GET  /_sim/faults
    DELETE /_sim/faults                       DELETE /_sim/faults/{id}
    POST   /_sim/sessions/{id}/seed  {"summary", "facts", "context", "user_id"}
    GET    /_sim/sessions/{id}/messages
    GET    /_sim/requests                     DELETE /_sim/requests
"""

from __future__ import annotations

import hmac
import http
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from memory_worker.zep_sim import v4
from memory_worker.zep_sim.faults import Fault, FaultBook
from memory_worker.zep_sim.request_log import RequestLog
from memory_worker.zep_sim.routing import (
    ErrorBody,
    Reply,
    Table,
    dispatch,
    json_object,
    message_body,
)
from memory_worker.zep_sim.store import Store
from memory_worker.zep_sim.threads import ThreadStore

API_PREFIX = "/api/v2"
CONTROL_PREFIX = "/_sim"


class Routes:
    """Every route table, bound to the state, the fault book, the log and one API key."""

    def __init__(
        self, store: Store, threads: ThreadStore, log: RequestLog, faults: FaultBook,
        api_key: str,
    ) -> None:
        self.store = store
        self.threads = threads
        self.log = log
        self.faults = faults
        self._authorization = f"Api-Key {api_key}".encode()
        self._v4 = v4.V4Routes(threads)
        self._zep: Table = [
            ("POST", re.compile(r"/users"), self._add_user),
            ("GET", re.compile(r"/users/([^/]+)"), self._get_user),
            ("POST", re.compile(r"/sessions"), self._add_session),
            ("GET", re.compile(r"/sessions/([^/]+)"), self._get_session),
            ("POST", re.compile(r"/sessions/([^/]+)/memory"), self._add_memory),
            ("GET", re.compile(r"/sessions/([^/]+)/memory"), self._get_memory),
            ("GET", re.compile(r"/sessions/([^/]+)/messages"), self._list_messages),
        ]
        self._control: Table = [
            ("GET", re.compile(r"/health"), lambda m, q, b: Reply(200, {"ok": True})),
            ("POST", re.compile(r"/reset"), self._reset),
            ("POST", re.compile(r"/faults"), self._add_fault),
            ("GET", re.compile(r"/faults"), lambda m, q, b: Reply(200, {
                "faults": self.faults.listing()})),
            ("DELETE", re.compile(r"/faults"), self._clear_faults),
            ("DELETE", re.compile(r"/faults/(\d+)"), self._remove_fault),
            ("POST", re.compile(r"/sessions/([^/]+)/seed"), self._seed),
            ("GET", re.compile(r"/sessions/([^/]+)/messages"), lambda m, q, b: Reply(200, {
                "messages": self.store.stored_messages(unquote(m[1]))})),
            ("GET", re.compile(r"/requests"), lambda m, q, b: Reply(200, {
                "requests": [r.to_json() for r in self.log.records()]})),
            ("DELETE", re.compile(r"/requests"), self._reset_requests),
            *self._v4.control,
        ]

    def is_control(self, path: str) -> bool:
        return path == CONTROL_PREFIX or path.startswith(CONTROL_PREFIX + "/")

    def answer(
        self, method: str, path: str, query: str, authorization: str | None, body: bytes
    ) -> Reply:
        """The reply to one request, Zep's or the control API's."""
        if self.is_control(path):
            return dispatch(self._control, method, path[len(CONTROL_PREFIX):], query, body,
                            message_body)
        for prefix, table, error in (
            (API_PREFIX, self._zep, message_body), (v4.PREFIX, self._v4.table, v4.error_body)
        ):
            if path == prefix or path.startswith(prefix + "/"):
                given = (authorization or "").encode()
                if not hmac.compare_digest(given, self._authorization):
                    return Reply(401, error(401, "unauthorized"))
                return dispatch(table, method, path[len(prefix):], query, body, error)
        return Reply(404, {"message": "not found"})

    def error_body(self, path: str, status: int) -> Any:
        """The body of an error the fault rules send, in the shape of the path's API."""
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = "error"
        error: ErrorBody = message_body
        if path == v4.PREFIX or path.startswith(v4.PREFIX + "/"):
            error = v4.error_body
        return error(status, phrase)

    # Zep

    def _add_user(self, m: re.Match[str], q: Mapping[str, list[str]], body: Any) -> Reply:
        return Reply(201, self.store.add_user(json_object(body)))

    def _get_user(self, m: re.Match[str], q: Mapping[str, list[str]], body: Any) -> Reply:
        return Reply(200, self.store.get_user(unquote(m[1])))

    def _add_session(self, m: re.Match[str], q: Mapping[str, list[str]], body: Any) -> Reply:
        return Reply(201, self.store.add_session(json_object(body)))

    def _get_session(self, m: re.Match[str], q: Mapping[str, list[str]], body: Any) -> Reply:
        return Reply(200, self.store.get_session(unquote(m[1])))

    def _add_memory(self, m: re.Match[str], q: Mapping[str, list[str]], body: Any) -> Reply:
        self.store.add_messages(unquote(m[1]), json_object(body).get("messages"))
        return Reply(200, {"message": "OK"})

    def _get_memory(self, m: re.Match[str], q: Mapping[str, list[str]], body: Any) -> Reply:
        return Reply(200, self.store.memory(unquote(m[1]), _count(q, "lastn")))

    def _list_messages(self, m: re.Match[str], q: Mapping[str, list[str]], body: Any) -> Reply:
        page = self.store.messages(unquote(m[1]), _count(q, "limit"), _count(q, "cursor"))
        return Reply(200, page)

    # control

    def _reset(self, m: re.Match[str], q: Mapping[str, list[str]], body: Any) -> Reply:
        self.reset()
        return Reply(200, {"ok": True})

    def reset(self) -> None:
        """Forget faults, v2 and v4 state and the request log."""
        self.faults.clear()
        self.store.reset()
        self.threads.reset()
        self.log.reset()

    def _add_fault(self, m: re.Match[str], q: Mapping[str, list[str]], body: Any) -> Reply:
        return Reply(201, {"id": self.faults.add(Fault.from_json(json_object(body)))})

    def _clear_faults(self, m: re.Match[str], q: Mapping[str, list[str]], body: Any) -> Reply:
        self.faults.clear()
        return Reply(200, {"ok": True})

    def _remove_fault(self, m: re.Match[str], q: Mapping[str, list[str]], body: Any) -> Reply:
        if not self.faults.remove(int(m[1])):
            return Reply(404, {"message": "no such fault"})
        return Reply(200, {"ok": True})

    def _seed(self, m: re.Match[str], q: Mapping[str, list[str]], body: Any) -> Reply:
        seed = json_object(body)
        facts = seed.get("facts")
        if facts is not None and not (
            isinstance(facts, list) and all(isinstance(f, str) for f in facts)
        ):
            raise ValueError("facts must be a list of strings")
        for name in ("summary", "context", "user_id"):
            if seed.get(name) is not None and not isinstance(seed[name], str):
                raise ValueError(f"{name} must be a string")
        self.store.seed(
            unquote(m[1]), summary=seed.get("summary"), facts=facts,
            context=seed.get("context"), user_id=seed.get("user_id"),
        )
        return Reply(200, {"ok": True})

    def _reset_requests(self, m: re.Match[str], q: Mapping[str, list[str]], body: Any) -> Reply:
        self.log.reset()
        return Reply(200, {"ok": True})


def _count(query: Mapping[str, list[str]], name: str) -> int | None:
    values = query.get(name)
    if not values:
        return None
    try:
        value = int(values[-1])
    except ValueError:
        raise ValueError(f"{name} must be a whole number") from None
    if value < 0:
        raise ValueError(f"{name} must not be negative")
    return value
