"""Route tables without HTTP: a reply, a handler and the dispatch shared by every table.

A table is a list of (method, path pattern, handler). The first pattern that
matches the whole path with the request's method answers; a path that some
pattern matches with another method is a 405, else a 404. A handler's
``Refused`` or ``ValueError`` becomes an error reply whose body the table's
API shapes (v2: ``{"message"}``; v4: ``{"error": {"code", "message"}}``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from memory_worker.zep_sim.store import Refused


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any = None

    def encoded(self) -> bytes:
        return b"" if self.body is None else json.dumps(self.body).encode()


Handler = Callable[[re.Match[str], Mapping[str, list[str]], Any], Reply]
Table = list[tuple[str, re.Pattern[str], Handler]]
ErrorBody = Callable[[int, str], Any]


def message_body(status: int, message: str) -> dict[str, Any]:
    """The error body of v2 and of the control API."""
    return {"message": message}


def dispatch(
    table: Table, method: str, path: str, query: str, raw: bytes, error: ErrorBody
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
            return Reply(400, error(400, "request body is not JSON"))
        try:
            return handler(match, parse_qs(query), body)
        except Refused as refused:
            return Reply(refused.status, error(refused.status, refused.message))
        except ValueError as exc:
            return Reply(400, error(400, str(exc)))
    if allowed:
        return Reply(405, error(405, "method not allowed"))
    return Reply(404, error(404, "not found"))


def json_object(body: Any) -> dict[str, Any]:
    """The request's JSON object; anything else is a 400."""
    if not isinstance(body, dict):
        raise ValueError("request body must be a JSON object")
    return body
