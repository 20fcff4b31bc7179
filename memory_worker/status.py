"""What an operator sees: the shared state of a deployment, read in one place (SPEC §8)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from memory_worker.breaker import CircuitState, circuit_state
from memory_worker.config import Settings
from memory_worker.dlq import replaying_key
from memory_worker.keys import Keys
from memory_worker.modes import ForcedRecord, Mode, base_mode, effective_mode, get_forced
from memory_worker.redis_clients import StateRedis


@dataclass(frozen=True)
class Status:
    now: float
    base_mode: Mode
    effective_mode: Mode
    forced: ForcedRecord | None
    consecutive_failures: int
    probe_lock: bool
    write_circuit: CircuitState
    dlq_size: int
    rate_limited_until: float | None
    zep_api: str = "v2"

    def as_json(self) -> dict[str, Any]:
        forced = None
        if self.forced is not None:
            forced = {
                "reason": self.forced.reason,
                "source": self.forced.source,
                "forced_at": self.forced.forced_at,
                "until": self.forced.until,
                "remaining_seconds": self.forced.remaining_seconds(self.now),
            }
        return {
            "base_mode": self.base_mode.value,
            "effective_mode": self.effective_mode.value,
            "forced": forced,
            "consecutive_failures": self.consecutive_failures,
            "probe_lock": self.probe_lock,
            "write_circuit": self.write_circuit.value,
            "dlq_size": self.dlq_size,
            "rate_limited_until": self.rate_limited_until,
            "zep_api": self.zep_api,
        }

    def as_text(self) -> str:
        if self.forced is None:
            forced_line = "Forced mode: None"
        else:
            forced_line = (
                f"Forced mode: {self.forced.mode} (reason={self.forced.reason}, "
                f"remaining={self.forced.remaining_seconds(self.now)}s)"
            )
        return "\n".join([
            f"Base mode (from flags): {self.base_mode.value}",
            forced_line,
            f"Effective mode: {self.effective_mode.value}",
        ])


def _as_float(raw: str | None) -> float | None:
    try:
        return None if raw is None else float(raw)
    except ValueError:
        return None


def read_status(conn: StateRedis, settings: Settings, keys: Keys, *, now: float) -> Status:
    base = base_mode(write=settings.flag_zep_write, read=settings.flag_zep_read)
    forced = get_forced(conn, keys, now=now, grace_seconds=settings.grace_seconds)
    pipe = conn.pipeline(transaction=False)
    pipe.get(keys.consecutive_failures)
    pipe.exists(keys.probe_lock)
    pipe.llen(keys.dlq)
    pipe.llen(replaying_key(keys))  # an entry mid-replay is still a dead letter
    pipe.get(keys.rate_limited_until)
    failures, lock, queued, replaying, rate_limited = pipe.execute()
    rate_limited_until = _as_float(rate_limited)
    if rate_limited_until is not None and rate_limited_until <= now:
        rate_limited_until = None
    return Status(
        now=now,
        base_mode=base,
        effective_mode=effective_mode(base, forced),
        forced=forced,
        consecutive_failures=int(_as_float(failures) or 0),
        probe_lock=bool(lock),
        write_circuit=circuit_state(conn, keys, now=now),
        dlq_size=int(queued) + int(replaying),
        rate_limited_until=rate_limited_until,
        zep_api=settings.zep_api_version,
    )
