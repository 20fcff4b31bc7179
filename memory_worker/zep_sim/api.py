"""What the simulator answers: the Zep v2 endpoints and the control API, without HTTP.

Zep endpoints live under ``/api/v2`` and need ``Authorization: Api-Key <key>``:

    POST /users                        GET /users/{user_id}
    POST /sessions                     GET /sessions/{session_id}
    POST /sessions/{id}/memory         GET /sessions/{id}/memory?lastn=N
    GET  /sessions/{id}/messages?limit=N&cursor=P

The control API lives under ``/_sim``, takes and returns JSON, needs no key and
is not written to the request log:

    GET    /_sim/health                       POST /_sim/reset
    POST   /_sim/faults        (a Fault)      GET  /_sim/faults
    DELETE /_sim/faults                       DELETE /_sim/faults/{id}
    POST   /_sim/sessions/{id}/seed  {"summary", "facts", "context", "user_id"}
    GET    /_sim/sessions/{id}/messages
    GET    /_sim/requests                     DELETE /_sim/requests
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote

from memory_worker.zep_sim.faults import Fault, FaultBook
from memory_worker.zep_sim.store import Refused, Store

API_PREFIX = "/api/v2"
CONTROL_PREFIX = "/_sim"


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any = None

    def encoded(self) -> bytes:
        return b"" if self.body is None else json.dumps(self.body).encode()


Handler = Callable[[re.Match[str], Mapping[str, list[str]], Any], Reply]


class Routes:
    """Both route tables, bound to one store, one fault book and one API key."""

    def __init__(self, store: Store, faults: FaultBook, api_key: str) -> None:
        self.store = store
        self.faults = faults
        self._authorization = f"Api-Key {api_key}".encode()
        self._zep: list[tuple[str, re.Pattern[str], Handler]] = [
            ("POST", re.compile(r"/users"), self._add_user),
            ("GET", re.compile(r"/users/([^/]+)"), self._get_user),
            ("POST", re.compile(r"/sessions"), self._add_session),
            ("GET", re.compile(r"/sessions/([^/]+)"), self._get_session),
            ("POST", re.compile(r"/sessions/([^/]+)/memory"), self._add_memory),
            ("GET", re.compile(r"/sessions/([^/]+)/memory"), self._get_memory),
            ("GET", re.compile(r"/sessions/([^/]+)/messages"), self._list_messages),
        ]
        self._control: list[tuple[str, re.Pattern[str], Handler]] = [
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
                "requests": [r.to_json() for r in self.store.requests()]})),
            ("DELETE", re.compile(r"/requests"), self._reset_requests),
        ]

    def is_control(self, path: str) -> bool:
        return path == CONTROL_PREFIX or path.startswith(CONTROL_PREFIX + "/")

    def answer(
        self, method: str, path: str, query: str, authorization: str | None, body: bytes
    ) -> Reply:
        """The reply to one request, Zep's or the control API's."""
        if self.is_control(path):
            return self._dispatch(self._control, method, path[len(CONTROL_PREFIX):], query, body)
        if not (path == API_PREFIX or path.startswith(API_PREFIX + "/")):
            return Reply(404, {"message": "not found"})
        given = (authorization or "").encode()
        if not hmac.compare_digest(given, self._authorization):
            return Reply(401, {"message": "unauthorized"})
        return self._dispatch(self._zep, method, path[len(API_PREFIX):], query, body)

    def _dispatch(
        self,
        table: list[tuple[str, re.Pattern[str], Handler]],
        method: str,
        path: str,
        query: str,
        raw: bytes,
    ) -> Reply:
        allowed = False
        for route_method, pattern, handler in table:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            allowed = True
            if route_method != method:
                continue
            try:
                body = json.loads(raw) if raw.strip() else None
            except ValueError:
                return Reply(400, {"message": "request body is not JSON"})
            try:
                return handler(match, parse_qs(query), body)
            except Refused as refused:
                return Reply(refused.status, {"message": refused.message})
            except ValueError as exc:
                return Reply(400, {"message": str(exc)})
        if allowed:
            return Reply(405, {"message": "method not allowed"})
        return Reply(404, {"message": "not found"})

    # Zep

    def _add_user(self, m: re.Match[str], q: Mapping[str, list[str]], body: Any) -> Reply:
        return Reply(201, self.store.add_user(_object(body)))

    def _get_user(self, m: re.Match[str], q: Mapping[str, list[str]], body: Any) -> Reply:
        return Reply(200, self.store.get_user(unquote(m[1])))

    def _add_session(self, m: re.Match[str], q: Mapping[str, list[str]], body: Any) -> Reply:
        return Reply(201, self.store.add_session(_object(body)))

    def _get_session(self, m: re.Match[str], q: Mapping[str, list[str]], body: Any) -> Reply:
        return Reply(200, self.store.get_session(unquote(m[1])))

    def _add_memory(self, m: re.Match[str], q: Mapping[str, list[str]], body: Any) -> Reply:
        self.store.add_messages(unquote(m[1]), _object(body).get("messages"))
        return Reply(200, {"message": "OK"})

    def _get_memory(self, m: re.Match[str], q: Mapping[str, list[str]], body: Any) -> Reply:
        return Reply(200, self.store.memory(unquote(m[1]), _count(q, "lastn")))

    def _list_messages(self, m: re.Match[str], q: Mapping[str, list[str]], body: Any) -> Reply:
        page = self.store.messages(unquote(m[1]), _count(q, "limit"), _count(q, "cursor"))
        return Reply(200, page)

    # control

    def _reset(self, m: re.Match[str], q: Mapping[str, list[str]], body: Any) -> Reply:
        self.faults.clear()
        self.store.reset()
        return Reply(200, {"ok": True})

    def _add_fault(self, m: re.Match[str], q: Mapping[str, list[str]], body: Any) -> Reply:
        return Reply(201, {"id": self.faults.add(Fault.from_json(_object(body)))})

    def _clear_faults(self, m: re.Match[str], q: Mapping[str, list[str]], body: Any) -> Reply:
        self.faults.clear()
        return Reply(200, {"ok": True})

    def _remove_fault(self, m: re.Match[str], q: Mapping[str, list[str]], body: Any) -> Reply:
        if not self.faults.remove(int(m[1])):
            return Reply(404, {"message": "no such fault"})
        return Reply(200, {"ok": True})

    def _seed(self, m: re.Match[str], q: Mapping[str, list[str]], body: Any) -> Reply:
        seed = _object(body)
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
        self.store.reset_requests()
        return Reply(200, {"ok": True})


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ValueError("request body must be a JSON object")
    return body


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
