"""The recovery probe: one read of Zep, by one process, once a hold is over (SPEC §7).

Beat runs it every interval in every deployment; it does nothing until a
forced record exists whose ``until`` has passed. Then the first process to
take ``mem:mode:probe_lock:v1`` (``SET NX PX``) re-reads the record under the
lock and sends one request within ``MEMORY_PROBE_TIMEOUT_MS``:

- Zep answered (a 404 included): the record it evaluated is deleted —
  compare-and-delete, so an operator's newer force stays — and the failure
  count and the hold exponent are reset;
- otherwise: the evaluated record is replaced by a ``probe_failed`` one with an
  escalated hold (``guard.escalated_hold``), again only if nobody changed it.

A probe with nothing to do does nothing: the Zep client is built only when a
request is about to be sent, so a deployment with both flags off and no
``ZEP_API_URL`` runs beat's probe every interval without an error.
"""

from __future__ import annotations

import enum
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from memory_worker import metrics
from memory_worker.clock import Clock
from memory_worker.config import Settings
from memory_worker.connections import as_text, delete_if_value
from memory_worker.guard import Guard
from memory_worker.keys import Keys
from memory_worker.logs import log_event
from memory_worker.modes import (
    ForcedRecord,
    announce_forced,
    clear_if_same,
    parse_forced,
    read_forced_raw,
    record_ttl_ms,
)
from memory_worker.redis_clients import StateRedis
from memory_worker.zep import PROBE_SESSION as PROBE_SESSION
from memory_worker.zep import ZepApi

log = logging.getLogger("memory_worker.probe")


_REPLACE_IF_SAME = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""


class ProbeResult(enum.StrEnum):
    SKIPPED = "skipped"  # nothing to probe: no record, or its hold is not over
    LOCKED = "locked"  # another process is probing
    SUCCESS = "success"
    FAILURE = "failure"


@dataclass(frozen=True)
class ProbeReport:
    result: ProbeResult
    detail: str
    record: ForcedRecord | None = None  # the record now in force after a failure


class Prober:
    def __init__(self, conn: StateRedis, settings: Settings,
                 zep: ZepApi | Callable[[], ZepApi], *,
                 clock: Clock, keys: Keys | None = None) -> None:
        """``zep`` may be a factory: it is called only when a request is due."""
        self._conn = conn
        self._settings = settings
        self._zep = zep
        self._clock = clock
        self._keys = keys or Keys.of(settings)
        self._guard = Guard(conn, settings, keys=self._keys, clock=clock)

    def run(self) -> ProbeReport:
        raw, record = self._due()
        if raw is None or record is None:
            return ProbeReport(ProbeResult.SKIPPED, "no forced record past its hold")
        if not (self._settings.zep_api_url and self._settings.zep_api_key):
            # Only possible with both flags off (Settings requires both otherwise):
            # there are no reads to restore.
            return ProbeReport(ProbeResult.SKIPPED, "Zep is not configured")
        token = secrets.token_hex(8)
        lock_ms = max(2 * self._settings.probe_timeout_ms, 1000)
        if not self._conn.set(self._keys.probe_lock, token, nx=True, px=lock_ms):
            metrics.safe_inc(metrics.probes, result=ProbeResult.LOCKED.value)
            return ProbeReport(ProbeResult.LOCKED, "another process is probing")
        try:
            # Under the lock, look again: the previous holder may have just decided.
            raw, record = self._due()
            if raw is None or record is None:
                return ProbeReport(ProbeResult.SKIPPED, "another process already probed")
            return self._probe(raw, record)
        finally:
            delete_if_value(self._conn, self._keys.probe_lock, token)

    def _due(self) -> tuple[str | None, ForcedRecord | None]:
        now = self._clock()
        raw = read_forced_raw(self._conn, self._keys)
        record = parse_forced(raw, now, self._settings.grace_seconds)
        if record is None or not record.expired(now):
            return None, None
        return raw, record

    def _probe(self, raw: str, record: ForcedRecord) -> ProbeReport:
        zep = self._zep() if callable(self._zep) else self._zep
        failure = zep.probe(self._settings.probe_timeout_ms / 1000)
        if failure is not None:
            return self._reforce(raw, record, failure.reason.value)
        return self._restore(raw, record)

    def _restore(self, raw: str, record: ForcedRecord) -> ProbeReport:
        metrics.safe_inc(metrics.probes, result=ProbeResult.SUCCESS.value)
        if clear_if_same(self._conn, self._keys, raw, base=self._guard.base,
                         reason="probe_success"):
            self._guard.reset_failures()
            self._guard.reset_probe_failures()
            return ProbeReport(ProbeResult.SUCCESS,
                               f"reads restored (was {record.reason}); mode {self._guard.base}")
        return ProbeReport(ProbeResult.SUCCESS, "Zep answered, but the record changed meanwhile")

    def _reforce(self, raw: str, record: ForcedRecord, why: str) -> ProbeReport:
        metrics.safe_inc(metrics.probes, result=ProbeResult.FAILURE.value)
        hold = self._guard.next_probe_hold()
        new = ForcedRecord.new(reason="probe_failed", source="guard", now=self._clock(),
                               hold_seconds=hold)
        ttl = record_ttl_ms(hold, self._settings.grace_seconds)
        replaced = as_text(self._conn.eval(_REPLACE_IF_SAME, 1, self._keys.forced, raw,
                                           new.to_json(), ttl))
        if replaced != "1":
            return ProbeReport(ProbeResult.FAILURE, f"Zep failed ({why}); record changed meanwhile")
        metrics.safe_inc(metrics.downgrades, reason="probe_failed")
        log_event(log, "zep_probe_failed_auto_downgrade", logging.ERROR, reason="probe_failed",
                  failure=why, hold_seconds=hold)
        announce_forced(self._guard.base, record, new)
        return ProbeReport(ProbeResult.FAILURE, f"Zep failed ({why}); held {hold}s more", new)
