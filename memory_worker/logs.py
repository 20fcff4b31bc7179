"""Event logs: one JSON line per event on stderr, or a console line (SPEC §10).

The ``memory_worker`` logger gets its own handler and does not propagate, so
Celery's root-logger set-up neither removes nor duplicates it. The format
(``MEMORY_LOG_FORMAT``) comes from ``Settings`` like every other variable: when
the first line is written, not at import, unless a process set it first with
``use_format`` (``runtime.configure`` does, from the settings it is given).
Fields that could carry message content or a secret are withheld here, the
last line of defence behind the callers' own care.

A web application that wants the library's events in its own logging (its
handlers, Sentry, pytest's capture) calls ``use_host_logging()`` once at
start-up: the project's handler is removed and the ``memory_worker`` loggers
propagate to the host's, so each event is handled once, by the host. Importing
the library never changes another logger: only the project's own Celery
processes quieten ``httpx``'s per-request INFO lines (``quiet_http_clients``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from typing import Any

ROOT_LOGGER = "memory_worker"
_WITHHELD = frozenset({"content", "text", "api_key", "zep_api_key", "authorization", "password"})
_STANDARD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message", "asctime", "taskName",
}


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log ``event`` with structured ``fields``; never raises into the caller."""
    with contextlib.suppress(Exception):  # a logging failure must not break a web handler
        logger.log(level, event, extra={"event_fields": fields})


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = dict(getattr(record, "event_fields", {}) or {})
    for name, value in record.__dict__.items():
        if name not in _STANDARD_ATTRS and name != "event_fields":
            fields.setdefault(name, value)
    shown = {k: ("[withheld]" if k.lower() in _WITHHELD else v) for k, v in fields.items()}
    shown.update(_trace_ids())
    return shown


def _trace_ids() -> dict[str, str]:
    """``trace_id`` and ``span_id`` of the recording span the line is written in, if any.

    Only when something in the process imported OpenTelemetry: no import, no cost, here.
    """
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return {}
    current = trace.get_current_span()
    if not current.is_recording():
        return {}
    ids = current.get_span_context()
    return {"trace_id": f"{ids.trace_id:032x}", "span_id": f"{ids.span_id:016x}"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        line.update(_fields(record))
        if record.exc_info and record.exc_info[0] is not None:
            line["error_type"] = record.exc_info[0].__name__
        return json.dumps(line, default=str, ensure_ascii=False)


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        pairs = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        return f"{stamp} {record.levelname:<7} {record.getMessage()} {pairs}".rstrip()


def _formatter(name: str) -> logging.Formatter:
    return ConsoleFormatter() if name == "console" else JsonFormatter()


def _configured_format() -> str:
    """``MEMORY_LOG_FORMAT`` as ``Settings`` validated it; JSON when the environment is bad
    (the process is about to stop on that error, which it reports itself)."""
    from memory_worker.config import Settings
    from memory_worker.errors import ConfigError

    try:
        return Settings.from_env().log_format
    except ConfigError:
        return "json"


class _LazyFormatter(logging.Formatter):
    """Chooses JSON or console on first use, so importing reads no environment."""

    def __init__(self) -> None:
        super().__init__()
        self._delegate: logging.Formatter | None = None

    def use(self, name: str) -> None:
        self._delegate = _formatter(name)

    def format(self, record: logging.LogRecord) -> str:
        if self._delegate is None:
            self._delegate = _formatter(_configured_format())
        return self._delegate.format(record)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.__stderr__`` is now: survives Celery's stream redirection."""

    def __init__(self) -> None:
        super().__init__(sys.__stderr__)

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.__stderr__
        super().emit(record)


def use_format(name: str) -> None:
    """Write this process's lines as ``name``: ``json`` or ``console`` (validated by Settings)."""
    for handler in logging.getLogger(ROOT_LOGGER).handlers:
        if isinstance(handler, _StderrHandler) and isinstance(handler.formatter, _LazyFormatter):
            handler.formatter.use(name)


_host_logging = False


def install() -> logging.Logger:
    """Attach the project's handler once; idempotent; nothing once the host took over."""
    logger = logging.getLogger(ROOT_LOGGER)
    if _host_logging:
        return logger
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(_LazyFormatter())
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


def use_host_logging(level: int = logging.INFO) -> None:
    """Route the library's events into the host application's logging, once each.

    The project's stderr handler is removed and ``memory_worker`` propagates to the
    root logger (and whatever the host attached there); ``level`` is the lowest level
    the library passes on. Call it once, at start-up.
    """
    global _host_logging
    _host_logging = True
    logger = logging.getLogger(ROOT_LOGGER)
    for handler in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
        logger.removeHandler(handler)
    logger.setLevel(level)
    logger.propagate = True


def quiet_http_clients() -> None:
    """In the project's own processes: httpx logs every request at INFO; the project's
    events say what matters."""
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
