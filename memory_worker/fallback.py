"""The guard of one process, for when Redis cannot be reached (SPEC §5, last row).

Reads then go on to Zep without a cache, and this in-memory twin of the shared
guard still protects the chat: the same threshold, window and hold, an
immediate force on auth, and the 429 pause, all local to the process. A local
hold ends by itself at ``until`` (no beat can probe what it cannot see); the
next read then acts as the probe.
"""

from __future__ import annotations

import threading

from memory_worker.config import Settings
from memory_worker.modes import ForcedRecord


class LocalGuard:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._failures = 0
        self._window_start = 0.0
        self._forced: ForcedRecord | None = None
        self._rate_limited_until = 0.0

    def forced(self, now: float) -> ForcedRecord | None:
        with self._lock:
            if self._forced is not None and self._forced.expired(now):
                self._forced = None
            return self._forced

    def rate_limited(self, now: float) -> bool:
        return now < self._rate_limited_until

    def pause(self, until: float) -> None:
        with self._lock:
            self._rate_limited_until = max(self._rate_limited_until, until)

    def record_failure(self, now: float) -> ForcedRecord | None:
        """Count a failure; return the record when this one crossed the threshold."""
        with self._lock:
            if now - self._window_start >= self._settings.downgrade_window_seconds:
                self._failures, self._window_start = 0, now
            self._failures += 1
            if self._failures < self._settings.downgrade_threshold:
                return None
            return self._force("consecutive_failures", now)

    def force_now(self, reason: str, now: float) -> ForcedRecord | None:
        with self._lock:
            return self._force(reason, now)

    def reset(self) -> None:
        with self._lock:
            self._failures = 0

    def _force(self, reason: str, now: float) -> ForcedRecord | None:
        self._failures = 0
        if self._settings.disable_auto_downgrade:
            return None
        if self._forced is not None and not self._forced.expired(now):
            return None
        self._forced = ForcedRecord.new(reason=reason, source="local", now=now,
                                        hold_seconds=self._settings.downgrade_hold_seconds)
        return self._forced
