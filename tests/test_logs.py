"""Event logs: JSON lines with `event`, a console option, secrets and content withheld."""

from __future__ import annotations

import io
import json
import logging

import pytest

from memory_worker import logs


def _record(event: str, **fields: object) -> logging.LogRecord:
    record = logging.LogRecord("memory_worker.test", logging.WARNING, __file__, 1, event, None,
                               None)
    record.event_fields = fields
    return record


def test_json_lines_name_the_event_and_carry_the_fields() -> None:
    """One JSON object per line with `event` and the event's fields."""
    line = logs.JsonFormatter().format(_record("memory_mode_forced", reason="auth",
                                               hold_seconds=300))
    data = json.loads(line)
    assert data["event"] == "memory_mode_forced" and data["level"] == "warning"
    assert data["reason"] == "auth" and data["hold_seconds"] == 300
    assert "\n" not in line


def test_console_format_is_one_readable_line() -> None:
    """MEMORY_LOG_FORMAT=console: time, level, event, key=value pairs."""
    line = logs.ConsoleFormatter().format(_record("memory_mode_restored", mode="read_write"))
    assert "WARNING" in line and "memory_mode_restored mode=read_write" in line


@pytest.mark.parametrize("field", ["content", "text", "api_key", "zep_api_key", "Authorization"])
def test_fields_that_could_leak_content_or_secrets_are_withheld(field: str) -> None:
    """Even a careless caller cannot log message content or the key."""
    for formatter in (logs.JsonFormatter(), logs.ConsoleFormatter()):
        line = formatter.format(_record("x", **{field: "call me at 0533 123 45 67"}))
        assert "0533" not in line and "[withheld]" in line


def test_the_format_is_chosen_from_the_environment_at_first_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Importing reads nothing; the first line written reads MEMORY_LOG_FORMAT via Settings."""
    monkeypatch.setenv("MEMORY_LOG_FORMAT", "console")
    formatter = logs._LazyFormatter()
    assert not formatter.format(_record("e", a=1)).startswith("{")
    monkeypatch.setenv("MEMORY_LOG_FORMAT", "json")
    assert not formatter.format(_record("e", a=1)).startswith("{")  # chosen once per process
    assert logs._LazyFormatter().format(_record("e", a=1)).startswith("{")


def test_an_invalid_format_falls_back_to_json_and_is_refused_by_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MEMORY_LOG_FORMAT=xml is not silently console: Settings refuses it, lines stay JSON."""
    from memory_worker.config import Settings
    from memory_worker.errors import ConfigError

    monkeypatch.setenv("MEMORY_LOG_FORMAT", " Console ")
    assert not logs._LazyFormatter().format(_record("e")).startswith("{")  # parsed as Settings does
    monkeypatch.setenv("MEMORY_LOG_FORMAT", "xml")
    assert logs._LazyFormatter().format(_record("e")).startswith("{")
    with pytest.raises(ConfigError, match="MEMORY_LOG_FORMAT"):
        Settings.from_env()


def test_use_format_sets_the_format_of_the_installed_handler() -> None:
    """A process configured from explicit settings writes in their format."""
    logger = logs.install()
    handler = next(h for h in logger.handlers if isinstance(h, logs._StderrHandler))
    try:
        logs.use_format("console")
        assert not handler.format(_record("e", a=1)).startswith("{")
        logs.use_format("json")
        assert handler.format(_record("e", a=1)).startswith("{")
    finally:
        logs.use_format("json")


def test_install_is_idempotent_and_does_not_propagate() -> None:
    """One handler however often the package is imported; root handlers see nothing."""
    logger = logs.install()
    logs.install()
    handlers = [h for h in logger.handlers if isinstance(h, logs._StderrHandler)]
    assert len(handlers) == 1 and logger.propagate is False
    assert logger.level == logging.INFO


def test_log_event_never_raises() -> None:
    """A broken handler must not break the caller (STYLE 8)."""

    class Broken(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            raise RuntimeError("disk full")

        def handleError(self, record: logging.LogRecord) -> None:
            raise RuntimeError("still broken")

    logger = logging.getLogger("memory_worker.test_broken")
    logger.addHandler(Broken())
    try:
        logs.log_event(logger, "memory_mode_forced", reason="auth")
    finally:
        logger.handlers.clear()


def test_handler_writes_to_the_process_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    """The handler follows sys.__stderr__, which Celery's redirection leaves alone."""
    buffer = io.StringIO()
    monkeypatch.setattr("sys.__stderr__", buffer)
    handler = logs._StderrHandler()
    handler.setFormatter(logs.JsonFormatter())
    handler.emit(_record("zep_write_retry", attempt=2))
    assert json.loads(buffer.getvalue())["attempt"] == 2


def test_importing_the_library_leaves_other_loggers_alone() -> None:
    """The host's httpx logger keeps the level the host gave it (none, here)."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", "import logging, memory_worker; "
         "print(logging.getLogger('httpx').level, logging.getLogger().handlers)"],
        capture_output=True, text=True, check=True)
    assert out.stdout.split(maxsplit=1) == ["0", "[]\n"]


def test_use_host_logging_routes_events_to_the_host_once(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str],
) -> None:
    """One switch: the host's handler on the root logger gets each event once, stderr none."""
    logger = logging.getLogger(logs.ROOT_LOGGER)
    monkeypatch.setattr(logger, "handlers", list(logger.handlers))
    monkeypatch.setattr(logger, "propagate", logger.propagate)
    monkeypatch.setattr(logger, "level", logger.level)
    monkeypatch.setattr(logs, "_host_logging", False)

    class Host(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.INFO)
            self.records: list[logging.LogRecord] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.records.append(record)

    host = Host()
    root = logging.getLogger()
    root.addHandler(host)
    try:
        logs.use_host_logging()
        logs.install()  # a later import of the library does not bring its handler back
        logs.log_event(logging.getLogger("memory_worker.test"), "memory_mode_forced",
                       reason="auth")
    finally:
        root.removeHandler(host)
    assert [r.getMessage() for r in host.records] == ["memory_mode_forced"]
    assert host.records[0].event_fields == {"reason": "auth"}  # type: ignore[attr-defined]
    assert not any(isinstance(h, logs._StderrHandler) for h in logger.handlers)
    assert "memory_mode_forced" not in capfd.readouterr().err
