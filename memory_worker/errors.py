"""Every exception the project raises, under one root.

    MemoryWorkerError
     ├── ConfigError            a bad environment variable; names it
     ├── InvalidRequest         (also ValueError) bad read arguments: thread_id, view
     ├── InvalidMessage         (also ValueError) bad enqueue arguments; names the field
     ├── StateUnavailable       Redis could not be reached for shared state
     ├── OutboxUnavailable      the broker and the local outbox both failed a message
     └── DrillAborted           a drill could not go on (its message is the FAIL reason)

Third-party errors (redis, httpx, zep_python) are translated where they occur:
Redis errors in the state modules, HTTP and SDK errors in ``zep.py``. Nothing
above those modules catches a third-party exception type.
"""

from __future__ import annotations


class MemoryWorkerError(Exception):
    """Root of every error raised by memory_worker."""


class ConfigError(MemoryWorkerError):
    """An environment variable holds a value the project cannot run with."""

    def __init__(self, variable: str, problem: str) -> None:
        self.variable = variable
        self.problem = problem
        super().__init__(f"{variable}: {problem}")


class InvalidRequest(MemoryWorkerError, ValueError):
    """A read was asked for with arguments that can never succeed."""


class InvalidMessage(MemoryWorkerError, ValueError):
    """A message handed to ``enqueue_message`` is malformed; ``field`` names the culprit."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class StateUnavailable(MemoryWorkerError):
    """The Redis holding shared state did not answer."""


class OutboxUnavailable(MemoryWorkerError):
    """The broker could not be reached and the local outbox could not be written."""


class DrillAborted(MemoryWorkerError):
    """A drill cannot go on: a stack it talks to did not answer as it must."""
