"""The auto-downgrade rule: when read failures force ``write_only`` (SPEC §4, §7).

Counting a failure and deciding to downgrade are one Lua script, so however
many processes cross the threshold at the same moment, exactly one of them
creates the forced record (``SET`` only when no live record exists) and only
that one logs ``memory_mode_forced`` and counts the downgrade. The window is
measured with the caller's clock, passed into the script, so tests move time
instead of waiting for it.

Shadow mode (``DISABLE_AUTO_DOWNGRADE``) runs the same script, which then sets
a marker instead of the record: the would-be downgrade is logged and counted
once per incident, and reads go on.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from memory_worker import metrics
from memory_worker.clock import Clock, system_clock
from memory_worker.config import Settings
from memory_worker.keys import Keys
from memory_worker.logs import log_event
from memory_worker.modes import ForcedRecord, Mode, announce_forced, base_mode, record_ttl_ms
from memory_worker.redis_clients import StateRedis

log = logging.getLogger("memory_worker.guard")

# KEYS: counter, window start, forced record, shadow marker
# ARGV: now_ms, window_ms, threshold (0 = force now), record, ttl_ms, shadow, grace_ms
# Returns {failure count, outcome}: 0 nothing, 1 forced, 2 shadow-suppressed.
# A failure stamped up to EARLIER_MS before the window began still belongs to it: Redis
# can see it after a later one (another connection's pipeline, another host's clock).
# One stamped earlier still (a clock set back) starts a new window.
EARLIER_MS = 1000
_DOWNGRADE = """
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local threshold = tonumber(ARGV[3])
local count = 0
if threshold > 0 then
  local since = tonumber(redis.call('GET', KEYS[2]))
  if since == nil or now - since >= window or since - now > """ + str(EARLIER_MS) + """ then
    redis.call('SET', KEYS[1], 0, 'PX', window)
    redis.call('SET', KEYS[2], now, 'PX', window)
  end
  count = redis.call('INCR', KEYS[1])
  if count < threshold then
    return {count, 0}
  end
end
if ARGV[6] == '1' then
  if redis.call('SET', KEYS[4], ARGV[4], 'NX', 'PX', ARGV[5]) then
    return {count, 2}
  end
  return {count, 0}
end
local existing = redis.call('GET', KEYS[3])
if existing then
  local ok, record = pcall(cjson.decode, existing)
  local live = true
  if ok and type(record) == 'table' and tonumber(record['until']) then
    live = tonumber(record['until']) * 1000 + tonumber(ARGV[7]) > now
  end
  if live then
    return {count, 0}
  end
end
redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[5])
redis.call('DEL', KEYS[1], KEYS[2])
return {count, 1}
"""

_AUTO_DOWNGRADE_EVENTS = {
    "auth": "zep_auth_failure_auto_downgrade",
    "consecutive_failures": "zep_consecutive_failures_auto_downgrade",
    "latency": "zep_latency_auto_downgrade",
    "probe_failed": "zep_probe_failed_auto_downgrade",
}


SCRIPT = _DOWNGRADE


@dataclass(frozen=True)
class ScriptCall:
    """One run of the downgrade script: what to pass, and what it would create."""

    reason: str
    record: ForcedRecord
    keys: list[str]
    args: list[str | int]


@dataclass(frozen=True)
class Decision:
    fail_count: int
    forced: bool = False
    suppressed: bool = False
    record: ForcedRecord | None = None


def escalated_hold(base_seconds: int, failures: int, cap_seconds: int,
                   jitter: Callable[[float, float], float] = random.uniform) -> int:
    """``base × 2^n`` with ±10 % jitter, capped; ``n`` failed probes in a row, 1 on the first."""
    hold: float = base_seconds * float(2 ** min(failures, 32)) * jitter(0.9, 1.1)
    return max(1, min(cap_seconds, round(hold)))


class Guard:
    """Shared downgrade state of one deployment, seen from one process."""

    def __init__(self, conn: StateRedis, settings: Settings, *, keys: Keys | None = None,
                 clock: Clock = system_clock) -> None:
        self._conn = conn
        self._settings = settings
        self._keys = keys or Keys.of(settings)
        self._clock = clock
        self._script = conn.register_script(_DOWNGRADE)

    @property
    def base(self) -> Mode:
        return base_mode(write=self._settings.flag_zep_write, read=self._settings.flag_zep_read)

    def record_failure(self) -> Decision:
        """Count one read failure (timeout, 5xx, connection); downgrade at the threshold."""
        return self._run("consecutive_failures", self._settings.downgrade_threshold,
                         self._settings.downgrade_hold_seconds)

    def force_now(self, reason: str, hold_seconds: int | None = None) -> Decision:
        """Downgrade at once (auth, latency, a failed probe) unless a live record exists."""
        hold = self._settings.downgrade_hold_seconds if hold_seconds is None else hold_seconds
        return self._run(reason, 0, hold)

    def reset_failures(self) -> None:
        self._conn.delete(self._keys.consecutive_failures, self._keys.failure_window_start)

    def failure_count(self) -> int:
        return int(self._conn.get(self._keys.consecutive_failures) or 0)

    def next_probe_hold(self) -> int:
        """Count a failed probe and return the escalated hold for the record it creates."""
        failures = int(self._conn.incr(self._keys.probe_failures))
        self._conn.expire(self._keys.probe_failures,
                          self._settings.downgrade_hold_max_seconds + self._settings.grace_seconds)
        return escalated_hold(self._settings.downgrade_hold_seconds, failures,
                              self._settings.downgrade_hold_max_seconds)

    def reset_probe_failures(self) -> None:
        self._conn.delete(self._keys.probe_failures)

    def failure_call(self) -> ScriptCall:
        """The script call counting one read failure, for callers that run it themselves."""
        return self._prepare("consecutive_failures", self._settings.downgrade_threshold,
                             self._settings.downgrade_hold_seconds)

    def force_call(self, reason: str, hold_seconds: int | None = None) -> ScriptCall:
        hold = self._settings.downgrade_hold_seconds if hold_seconds is None else hold_seconds
        return self._prepare(reason, 0, hold)

    def conclude(self, call: ScriptCall, reply: Sequence[int]) -> Decision:
        """Interpret the script's reply: announce, count and log what it did."""
        count, outcome = int(reply[0]), int(reply[1])
        if outcome == 1:
            self._announce(call.reason, count, call.record)
            return Decision(count, forced=True, record=call.record)
        if outcome == 2:
            metrics.safe_inc(metrics.shadow_downgrades, reason=call.reason)
            log_event(log, "memory_mode_force_suppressed", logging.WARNING, reason=call.reason,
                      fail_count=count, shadow=True)
            return Decision(count, suppressed=True)
        return Decision(count)

    def _run(self, reason: str, threshold: int, hold_seconds: int) -> Decision:
        call = self._prepare(reason, threshold, hold_seconds)
        return self.conclude(call, self._script(keys=call.keys, args=call.args))

    def _prepare(self, reason: str, threshold: int, hold_seconds: int) -> ScriptCall:
        now = self._clock()
        record = ForcedRecord.new(reason=reason, source="guard", now=now, hold_seconds=hold_seconds)
        grace = self._settings.grace_seconds
        keys = [self._keys.consecutive_failures, self._keys.failure_window_start,
                self._keys.forced, self._keys.shadow_marker]
        args: list[str | int] = [
            int(now * 1000), self._settings.downgrade_window_seconds * 1000, threshold,
            record.to_json(), record_ttl_ms(hold_seconds, grace),
            int(self._settings.disable_auto_downgrade), grace * 1000,
        ]
        return ScriptCall(reason, record, keys, args)

    def _announce(self, reason: str, count: int, record: ForcedRecord) -> None:
        metrics.safe_inc(metrics.downgrades, reason=reason)
        event = _AUTO_DOWNGRADE_EVENTS.get(reason)
        if event is not None:
            fields: dict[str, object] = {"reason": reason}
            if reason == "consecutive_failures":
                fields["fail_count"] = count
            log_event(log, event, logging.ERROR, **fields)
        announce_forced(self.base, None, record)
