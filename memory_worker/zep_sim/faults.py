"""Fault rules: what the simulator does instead of answering like Zep.

A rule matches requests by method and a glob of the path (``fnmatch``, where
``*`` also crosses ``/``; the query string is not part of the path). A matched
rule is used up one request at a time when it has ``times``, or stays until it
is cleared. A rule with a ``probability`` below 1 applies to each matching
request with that chance (a request it passes over goes on to the next rule,
and only applied requests use up ``times``): three rules of 5 %, 5/95 and
20/90 give 5 %, 5 % and 20 % of all requests. The first live rule that
applies, in the order they were added, wins.

What a rule does, in the order the server applies it:

``process_first``  handle the request as Zep would at once ("store then
                   fail"): state changes, then the rule decides the answer.
``latency_ms``     wait before anything is sent (a stall when long).
``drop``           close the connection without answering; ``reset`` closes
                   it with a TCP reset instead of a clean close.
``status``         answer with this status; the body is ``raw_body`` (sent as
                   is, not JSON), else ``body`` as JSON, else
                   ``{"message": <reason phrase>}``. Without ``status`` the
                   request is handled after the latency (unless it already
                   was) and the real answer is sent.
``headers``        extra response headers (``Retry-After`` and friends).
``trickle_bytes``  send the headers, then the body this many bytes at a time,
                   ``trickle_interval_ms`` apart.

A request that is dropped, or cut short by the simulator closing, is handled
only with ``process_first``.
"""

from __future__ import annotations

import fnmatch
import itertools
import random
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

_FIELDS = (
    "method", "path", "times", "status", "body", "raw_body", "headers", "latency_ms",
    "drop", "reset", "trickle_bytes", "trickle_interval_ms", "process_first", "probability",
)


@dataclass(frozen=True)
class Fault:
    """One fault rule; see the module docstring for what each field does."""

    method: str = "*"
    path: str = "*"
    times: int | None = None
    status: int | None = None
    body: Any = None
    raw_body: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    latency_ms: float = 0.0
    drop: bool = False
    reset: bool = False
    trickle_bytes: int = 0
    trickle_interval_ms: float = 0.0
    process_first: bool = False
    probability: float = 1.0

    def __post_init__(self) -> None:
        if self.times is not None and self.times < 1:
            raise ValueError("times must be at least 1 (or absent for until cleared)")
        if self.status is not None and not 100 <= self.status <= 599:
            raise ValueError(f"status must be an HTTP status, got {self.status}")
        if self.latency_ms < 0 or self.trickle_interval_ms < 0 or self.trickle_bytes < 0:
            raise ValueError("latency_ms, trickle_bytes and trickle_interval_ms must be >= 0")
        if not 0.0 < self.probability <= 1.0:
            raise ValueError(f"probability must be in (0, 1], got {self.probability}")
        if self.body is not None and self.raw_body is not None:
            raise ValueError("give body (JSON) or raw_body (text), not both")

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Fault:
        """Build a rule from the control API's JSON; unknown or mistyped fields are refused."""
        unknown = set(data) - set(_FIELDS)
        if unknown:
            raise ValueError(f"unknown fault fields: {', '.join(sorted(unknown))}")
        values = dict(data)
        headers = values.get("headers", {})
        if not isinstance(headers, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str | int | float) for k, v in headers.items()
        ):
            raise ValueError("headers must be an object of strings")
        values["headers"] = {k: str(v) for k, v in headers.items()}
        _expect(values, ("method", "path"), str)
        _expect(values, ("raw_body",), str)
        _expect(values, ("times", "status", "trickle_bytes"), int)
        _expect(values, ("latency_ms", "trickle_interval_ms", "probability"), int | float)
        _expect(values, ("drop", "reset", "process_first"), bool)
        return cls(**values)

    def matches(self, method: str, path: str) -> bool:
        return (self.method == "*" or self.method.upper() == method.upper()) and (
            fnmatch.fnmatchcase(path, self.path)
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["headers"] = dict(self.headers)
        return data


def _expect(values: Mapping[str, Any], names: tuple[str, ...], kind: Any) -> None:
    for name in names:
        value = values.get(name)
        if value is None:
            continue
        if isinstance(value, bool) and kind is not bool:
            raise ValueError(f"{name} must not be a boolean")
        if not isinstance(value, kind):
            raise ValueError(f"{name} has the wrong type")


@dataclass
class _Rule:
    id: int
    fault: Fault
    remaining: int | None


class FaultBook:
    """The live fault rules, shared by every handler thread."""

    def __init__(self, seed: int | None = None) -> None:
        self._lock = threading.Lock()
        self._rules: list[_Rule] = []
        self._ids = itertools.count(1)
        self._random = random.Random(seed)

    def add(self, fault: Fault) -> int:
        with self._lock:
            rule = _Rule(next(self._ids), fault, fault.times)
            self._rules.append(rule)
            return rule.id

    def take(self, method: str, path: str) -> Fault | None:
        """The rule for this request, used up by one when it is counted."""
        with self._lock:
            for rule in self._rules:
                if rule.fault.matches(method, path):
                    if rule.fault.probability < 1.0 and (
                        self._random.random() >= rule.fault.probability
                    ):
                        continue
                    if rule.remaining is not None:
                        rule.remaining -= 1
                        if rule.remaining <= 0:
                            self._rules.remove(rule)
                    return rule.fault
            return None

    def remove(self, rule_id: int) -> bool:
        with self._lock:
            before = len(self._rules)
            self._rules = [rule for rule in self._rules if rule.id != rule_id]
            return len(self._rules) != before

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def listing(self) -> list[dict[str, Any]]:
        with self._lock:
            return [
                {"id": rule.id, "remaining": rule.remaining, **rule.fault.to_json()}
                for rule in self._rules
            ]
