"""The write circuit breaker, shared by every worker process through Redis (SPEC §6, §8).

One Redis hash per deployment, ``mem:write:circuit:v1``: ``state`` is
``closed`` or ``open``; an open circuit carries ``reopen_at`` (epoch seconds),
after which it is *half-open*: one trial call is admitted across all workers.

The numbers (``BreakerPolicy``, every one a parameter):

* **5 consecutive failures over at least 1 s** open the circuit. A write
  call has a 1.5 s budget, so five failures in a row that long is a Zep that
  is down, not a blip, and the circuit opens within seconds of an outage
  instead of letting every worker burn its budget against it. The second
  keeps a busy deployment's circuit shut on a Zep that fails a share of its
  calls: at 100 calls a second and 30 % failures, five failures in a row
  come every few seconds, a second of nothing but failures never.
* **A failure rate of 50 % over at least 50 calls in 30 s** opens it too. This
  catches a flapping Zep whose odd success keeps breaking the run on a busy
  deployment (a quiet one meets the first rule first). The floor is what keeps
  chance from judging a degraded Zep down: at 30 % failures, the window as it
  fills reaches 50 % about one time in sixteen with a floor of 20 calls, one
  time in three hundred with 50. The window is ten buckets of 3 s, so it
  slides in 3 s steps.
* **Open for 30 s**, doubled after each failed trial, **capped at 300 s** (the
  write retry cap). Tasks reschedule to ``reopen_at``, so with default retries
  a write outlives a 30-minute outage.
* **A trial lease of 15 s**: one write attempt (a session call and a few
  batches at 1.5 s each) fits twice over, and a trial whose worker died stops
  blocking the circuit after that.
* **Three failed trials in a row reopen it**; a failed trial short of that
  frees the lease at once, so the next write is the next trial. The first
  successful trial closes the circuit. One trial alone would judge a Zep that
  fails a third of its calls (degraded, but storing two writes in three) as
  down about one time in three, and each such verdict doubles the stall of
  every write; three failures in a row are a 1-in-37 chance there, and what a
  Zep that is really down gives within seconds.

Only timeouts, 5xx and connection errors are failures (``record_failure``);
any other answer from Zep, 4xx, 429 and auth included, shows that Zep is up
and is recorded with ``record_success``: the caller decides.

Every operation is one Lua script, given ``now`` from the injected clock, so
no process reads state and writes it back in two steps: however many workers
fail at once, exactly one of them opens the circuit (and counts
``memory_circuit_breaker_opens_total`` and logs ``memory_circuit_opened``), and
exactly one takes the trial lease. A result that comes back while the circuit
is open and not half-open belongs to a call admitted before it opened and is
ignored; a trial's result counts only while the circuit is half-open. A
closed circuit's counters expire after ten idle windows: failures that far
apart are not a run.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

import redis

from memory_worker import metrics
from memory_worker.clock import Clock, system_clock
from memory_worker.connections import as_text
from memory_worker.errors import StateUnavailable
from memory_worker.keys import Keys
from memory_worker.logs import log_event
from memory_worker.redis_clients import StateRedis

log = logging.getLogger("memory_worker.breaker")


class CircuitState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


def circuit_state(conn: StateRedis, keys: Keys, *, now: float) -> CircuitState:
    fields = {as_text(k): as_text(v) for k, v in conn.hgetall(keys.write_circuit).items()}
    if fields.get("state") != CircuitState.OPEN:
        return CircuitState.CLOSED
    try:
        reopen_at = float(fields.get("reopen_at") or "0")
    except ValueError:
        return CircuitState.HALF_OPEN
    return CircuitState.OPEN if now < reopen_at else CircuitState.HALF_OPEN


@dataclass(frozen=True)
class BreakerPolicy:
    """When the circuit opens and for how long; the module docstring says why these."""

    failure_threshold: int = 5
    failure_run_seconds: float = 1.0
    failure_rate: float = 0.5
    min_calls: int = 50
    window_seconds: float = 30.0
    open_seconds: float = 30.0
    max_open_seconds: float = 300.0
    trial_lease_seconds: float = 15.0
    trial_failures_to_reopen: int = 3
    buckets: int = 10

    def __post_init__(self) -> None:
        if min(self.failure_threshold, self.min_calls, self.buckets,
               self.trial_failures_to_reopen) < 1:
            raise ValueError("failure_threshold, min_calls, buckets and "
                             "trial_failures_to_reopen must be at least 1")
        if not 0 < self.failure_rate <= 1:
            raise ValueError("failure_rate must be in (0, 1]")
        if min(self.window_seconds, self.open_seconds, self.trial_lease_seconds) <= 0:
            raise ValueError("durations must be positive")
        if self.failure_run_seconds < 0:
            raise ValueError("failure_run_seconds must not be negative")
        if self.max_open_seconds < self.open_seconds:
            raise ValueError("max_open_seconds must not be below open_seconds")

    @property
    def idle_expiry_ms(self) -> int:
        return int(self.window_seconds * 10 * 1000)


@dataclass(frozen=True)
class Admission:
    """Whether to call Zep now; when not, ``retry_at`` (epoch) is when to try again."""

    allowed: bool
    trial: bool
    retry_at: float | None
    state: CircuitState


# Shared by the scripts, and by the writer's, which run ``allow`` and ``success``
# inside its own (``LUA_HELPERS``, ``ALLOW_LUA``, ``SUCCESS_LUA``). Numbers are
# stored with millisecond precision so ``circuit_state`` and operators can read them.
LUA_HELPERS = """
local function fmt(x) return string.format('%.3f', x) end

local function open(key, now, seconds, reason)
  redis.call('DEL', key)
  redis.call('HSET', key, 'state', 'open', 'opened_at', fmt(now),
             'reopen_at', fmt(now + seconds), 'open_seconds', fmt(seconds), 'reason', reason)
end

-- Count one call in the current bucket; drop buckets that left the window.
local function count(key, now, width, nbuckets, failed)
  local bucket = math.floor(now / width)
  redis.call('HINCRBY', key, 'c:' .. bucket, 1)
  if failed then redis.call('HINCRBY', key, 'f:' .. bucket, 1) end
  local calls, fails = 0, 0
  local all = redis.call('HGETALL', key)
  for i = 1, #all, 2 do
    local kind = string.sub(all[i], 1, 2)
    if kind == 'c:' or kind == 'f:' then
      local b = tonumber(string.sub(all[i], 3))
      if b == nil or b <= bucket - nbuckets then
        redis.call('HDEL', key, all[i])
      elseif kind == 'c:' then
        calls = calls + tonumber(all[i + 1])
      else
        fails = fails + tonumber(all[i + 1])
      end
    end
  end
  return calls, fails
end
"""

# ``allow(key, args)``, args: now, trial lease seconds.
# Returns {'closed'} | {'open', reopen_at} | {'busy', lease end} | {'trial', lease end}
ALLOW_LUA = """
local function allow(key, args)
  local now = tonumber(args[1])
  local h = redis.call('HMGET', key, 'state', 'reopen_at', 'trial_until')
  if h[1] ~= 'open' then return {'closed'} end
  local reopen_at = tonumber(h[2]) or 0
  if now < reopen_at then return {'open', fmt(reopen_at)} end
  local trial_until = tonumber(h[3]) or 0
  if now < trial_until then return {'busy', fmt(trial_until)} end
  trial_until = now + tonumber(args[2])
  redis.call('HSET', key, 'trial_until', fmt(trial_until))
  return {'trial', fmt(trial_until)}
end
"""
_ALLOW = LUA_HELPERS + ALLOW_LUA + "return allow(KEYS[1], ARGV)"

# ``success(key, args)``, args: now, trial (1|0), window bucket width, buckets, idle
# expiry ms. Returns {0} or {1, opened_at} when this call closed the circuit.
SUCCESS_LUA = """
local function success(key, args)
  local now = tonumber(args[1])
  local h = redis.call('HMGET', key, 'state', 'reopen_at', 'opened_at')
  if h[1] == 'open' then
    if args[2] ~= '1' or now < (tonumber(h[2]) or 0) then return {0} end
    redis.call('DEL', key)
    redis.call('HSET', key, 'state', 'closed', 'closed_at', fmt(now))
    redis.call('PEXPIRE', key, args[5])
    return {1, h[3] or fmt(now)}
  end
  redis.call('HSET', key, 'consecutive', 0)
  count(key, now, tonumber(args[3]), tonumber(args[4]), false)
  redis.call('PEXPIRE', key, args[5])
  return {0}
end
"""
_SUCCESS = LUA_HELPERS + SUCCESS_LUA + "return success(KEYS[1], ARGV)"

# ARGV: now, trial (1|0), window bucket width, buckets, idle expiry ms,
#       failure threshold, failure rate, min calls, open seconds, max open seconds,
#       failed trials that reopen, seconds a run of failures must last
# Returns {0}; {2} for a failed trial that freed the lease for the next one; or
# {1, reason, reopen_at, open_seconds, consecutive, calls, failures} when this
# call opened the circuit.
_FAILURE = LUA_HELPERS + """
local now = tonumber(ARGV[1])
local h = redis.call('HMGET', KEYS[1], 'state', 'reopen_at', 'open_seconds')
if h[1] == 'open' then
  if ARGV[2] ~= '1' or now < (tonumber(h[2]) or 0) then return {0} end
  if redis.call('HINCRBY', KEYS[1], 'trial_failures', 1) < tonumber(ARGV[11]) then
    redis.call('HSET', KEYS[1], 'trial_until', '0')
    return {2}
  end
  local base = tonumber(ARGV[9])
  local seconds = math.min(tonumber(ARGV[10]), math.max(base, (tonumber(h[3]) or base) * 2))
  open(KEYS[1], now, seconds, 'trial_failed')
  return {1, 'trial_failed', fmt(now + seconds), fmt(seconds), 0, 0, 0}
end
local consecutive = redis.call('HINCRBY', KEYS[1], 'consecutive', 1)
if consecutive == 1 then redis.call('HSET', KEYS[1], 'run_started', fmt(now)) end
local run_started = tonumber(redis.call('HGET', KEYS[1], 'run_started')) or now
local calls, fails = count(KEYS[1], now, tonumber(ARGV[3]), tonumber(ARGV[4]), true)
local reason = nil
if consecutive >= tonumber(ARGV[6]) and now - run_started >= tonumber(ARGV[12]) then
  reason = 'consecutive_failures'
elseif calls >= tonumber(ARGV[8]) and fails >= tonumber(ARGV[7]) * calls then
  reason = 'failure_rate'
end
if reason == nil then
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  return {0}
end
local seconds = tonumber(ARGV[9])
open(KEYS[1], now, seconds, reason)
return {1, reason, fmt(now + seconds), fmt(seconds), consecutive, calls, fails}
"""


class Breaker:
    """The deployment's write circuit, seen from one process.

    Redis errors surface as ``StateUnavailable``: without Redis the write path
    cannot keep its exactly-once promise, so the caller retries the task.
    """

    def __init__(self, conn: StateRedis, keys: Keys, *, policy: BreakerPolicy | None = None,
                 clock: Clock = system_clock) -> None:
        self._conn = conn
        self._keys = keys
        self._policy = policy or BreakerPolicy()
        self._clock = clock
        self._allow = conn.register_script(_ALLOW)
        self._success = conn.register_script(_SUCCESS)
        self._failure = conn.register_script(_FAILURE)

    @property
    def policy(self) -> BreakerPolicy:
        return self._policy

    @property
    def key(self) -> str:
        return self._keys.write_circuit

    def allow(self) -> Admission:
        """May this process call Zep now? Half-open, only the one caller that gets the trial."""
        return self.admission(self._run(self._allow, self.allow_args()))

    def allow_args(self) -> list[float | int | str]:
        """The arguments of ``ALLOW_LUA``'s ``allow``, for a script that runs it itself."""
        return self._text_args([self._clock(), self._policy.trial_lease_seconds])

    def admission(self, reply: list[str]) -> Admission:
        """What a reply of ``allow`` means (and its log line)."""
        verdict = reply[0]
        if verdict == "closed":
            return Admission(True, False, None, CircuitState.CLOSED)
        until = float(reply[1])
        if verdict == "trial":
            log_event(log, "memory_circuit_trial", lease_until=until)
            return Admission(True, True, None, CircuitState.HALF_OPEN)
        if verdict == "busy":  # another worker's trial holds the lease
            return Admission(False, False, until, CircuitState.HALF_OPEN)
        return Admission(False, False, until, CircuitState.OPEN)

    def record_success(self, trial: bool = False) -> bool:
        """Zep answered (anything but a breaker failure). True when this call closed the circuit."""
        args = self.success_args(trial)
        return self.succeeded(self._run(self._success, args), args)

    def success_args(self, trial: bool = False) -> list[float | int | str]:
        """The arguments of ``SUCCESS_LUA``'s ``success``, for a script that runs it itself."""
        return self._text_args([self._clock(), int(trial), *self._window_args()])

    def succeeded(self, reply: list[str], args: list[float | int | str]) -> bool:
        """What a reply of ``success`` run with ``args`` means; True: it closed the circuit."""
        if int(reply[0]) != 1:
            return False
        opened_at = float(reply[1])
        log_event(log, "memory_circuit_closed",
                  open_for_seconds=round(float(args[0]) - opened_at, 3))
        return True

    def record_failure(self, trial: bool = False) -> bool:
        """A timeout, 5xx or connection error. True when this call opened the circuit.

        A failed trial that does not reopen the circuit frees the trial lease:
        the next write to ask is admitted as the next trial.
        """
        p = self._policy
        reply = self._run(self._failure, [
            self._clock(), int(trial), *self._window_args(),
            p.failure_threshold, repr(p.failure_rate), p.min_calls,
            repr(p.open_seconds), repr(p.max_open_seconds), p.trial_failures_to_reopen,
            repr(p.failure_run_seconds),
        ])
        if int(reply[0]) == 2:
            log_event(log, "memory_circuit_trial_failed", trial_failures_to_reopen=(
                p.trial_failures_to_reopen))
            return False
        if int(reply[0]) != 1:
            return False
        metrics.safe_inc(metrics.circuit_breaker_opens)
        log_event(
            log, "memory_circuit_opened", logging.WARNING,
            reason=reply[1], reopen_at=float(reply[2]), open_seconds=float(reply[3]),
            consecutive_failures=int(reply[4]),
            window_calls=int(reply[5]), window_failures=int(reply[6]),
        )
        return True

    def state(self) -> CircuitState:
        try:
            return circuit_state(self._conn, self._keys, now=self._clock())
        except redis.RedisError as exc:
            raise StateUnavailable(f"write circuit: {type(exc).__name__}") from exc

    def _window_args(self) -> list[str | int]:
        p = self._policy
        return [repr(p.window_seconds / p.buckets), p.buckets, p.idle_expiry_ms]

    def _run(self, script: redis.commands.core.Script, args: list[float | int | str]
             ) -> list[str]:
        """Run one script; its reply as text (Lua numbers arrive as integers)."""
        try:
            reply = script(keys=[self._keys.write_circuit], args=self._text_args(args))
        except redis.RedisError as exc:
            raise StateUnavailable(f"write circuit: {type(exc).__name__}") from exc
        return [as_text(item) or "" for item in reply]

    @staticmethod
    def _text_args(args: list[float | int | str]) -> list[float | int | str]:
        """Floats as their exact repr (Lua reads them back unchanged)."""
        return [repr(a) if isinstance(a, float) else a for a in args]
