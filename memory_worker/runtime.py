"""One process's wiring: Redis clients, the Zep client, the read drivers, the write side.

``fetch_thread_context`` and ``afetch_thread_context`` run ``ReadPolicy``'s
read: the ``MGET`` and its decision directly (the hot path), then, for a miss,
``ReadPolicy.miss``, performing each step it yields: synchronously with
redis-py and the Zep client's thread-bounded calls, or asynchronously with
``redis.asyncio`` and the SDK's async client, so an event loop is never blocked.

A Redis step that fails marks Redis down for this process for one second: the
following reads skip Redis at once (no socket timeout paid per read) and fail
open onto the process's ``LocalGuard``. The steps after the Zep call take at
most the ``budget_seconds`` they carry (what is left of the read's budget):
synchronously on a client whose every socket wait ends by then
(``deadline_redis``), asynchronously under ``asyncio.timeout``, whose
cancellation makes redis.asyncio disconnect the connection it interrupts. A
step cut short, or left no time at all, is lost like a failed one, but only a
step that had Redis's whole timeout blames Redis; on an event loop that timeout
counts the loop's attention, not its stalls (``LoopTimeout``).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import redis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript, Script
from redis.exceptions import NoScriptError
from redis.retry import Retry

from memory_worker import logs, metrics, tracing
from memory_worker.clock import Clock, system_clock
from memory_worker.config import Settings
from memory_worker.connections import state_client
from memory_worker.deadline_redis import deadline_client, within
from memory_worker.enqueue import EnqueueResult, Publisher, enqueue_redis
from memory_worker.fallback import LocalGuard
from memory_worker.guard import SCRIPT as GUARD_SCRIPT
from memory_worker.guard import Guard
from memory_worker.keys import Keys
from memory_worker.ledger import Ledger
from memory_worker.loop_timeout import LoopTimeout
from memory_worker.probe import Prober
from memory_worker.reader import (
    AFTER_FAILURE,
    AFTER_FAILURE_SHARED,
    AFTER_READ,
    AFTER_READ_SHARED,
    PAUSE,
    AfterRead,
    Context,
    Flow,
    Meta,
    Pause,
    ReadPolicy,
    RunGuard,
    Snapshot,
    Step,
    ZepRead,
)
from memory_worker.redis_clients import StateRedis, async_state_redis, state_redis
from memory_worker.shapes import ReadMeta, ThreadContext
from memory_worker.writer import Writer
from memory_worker.zep import Failure, Reason, ZepApi, connect
from memory_worker.zep_http import shared_ssl_context

# A Redis that does not answer must cost a read milliseconds, not its budget.
READ_PATH_REDIS_TIMEOUT_S = 0.05
# On an event loop, that timeout counts the loop's attention (``LoopTimeout``): a loop
# stalled for hundreds of milliseconds is not a sign of a sick Redis, and blaming Redis
# would send every read of the next second past the cache to Zep. However busy the loop,
# an exchange with Redis ends after this. The asyncio client's own socket timeouts are
# only a backstop behind it.
ASYNC_REDIS_CEILING_S = 0.5
ASYNC_REDIS_BACKSTOP_S = 2 * ASYNC_REDIS_CEILING_S
REDIS_DOWN_BACKOFF_S = 1.0
# How much earlier an asynchronous read's Zep call ends for each other read in flight on
# its loop, and at most, as a share of the read's budget (``Runtime._aread_zep``).
ZEP_WIND_UP_PER_READ_S = 0.0001
ZEP_WIND_UP_MAX_SHARE = 0.2
# aenqueue_message's threads: enqueues in flight at once per process before they queue.
ENQUEUE_THREADS = 16

_REDIS_OP = {Snapshot: "cache", AfterRead: "cache", RunGuard: "guard", Pause: "rate_limit"}
Bounded = AfterRead | RunGuard | Pause  # the Redis steps after the Zep call


def _on_connection(pool: redis.ConnectionPool, *command: Any) -> Any:
    """``command``'s reply, sent on a connection of ``pool`` directly: the command
    wrapper's retry closure and observability hooks cost a tenth of a round trip. A
    connection that failed is closed before it goes back to the pool, as the wrapper
    would; an error reply leaves it sound."""
    conn = pool.get_connection()
    try:
        conn.send_command(*command)  # type: ignore[no-untyped-call]
        return conn.read_response()
    except (redis.ConnectionError, redis.TimeoutError):
        conn.disconnect()  # type: ignore[no-untyped-call]
        raise
    finally:
        pool.release(conn)


def _redis_op(step: Step) -> str:
    """The ``op`` label of a step's Redis error: a failure's after-read script that
    also carries the guard's count is counted as the guard's."""
    if type(step) is AfterRead and step.guard is not None:
        return "guard"
    return _REDIS_OP.get(type(step), "cache")


class Runtime:
    """Everything one process needs to read context; built once, shared by threads."""

    def __init__(self, settings: Settings, *, clock: Clock = system_clock,
                 zep: ZepApi | None = None) -> None:
        self.settings = settings
        self.keys = Keys.of(settings)
        self.clock = clock
        self.conn = state_redis(
            settings, decode_responses=True, retry=Retry(NoBackoff(), 0),
            socket_timeout=READ_PATH_REDIS_TIMEOUT_S,
            socket_connect_timeout=READ_PATH_REDIS_TIMEOUT_S,
        )
        # The hot path's MGET goes straight to a connection of this pool; a cluster's
        # client has a pool per node and takes the pipelined ``_slot_snapshot``.
        self._pool = self.conn.connection_pool if isinstance(self.conn, redis.Redis) else None
        self.guard = Guard(self.conn, settings, keys=self.keys, clock=clock)
        self.policy = ReadPolicy(settings, self.keys, self.guard, LocalGuard(settings), clock)
        self._zep = zep
        self._zep_lock = threading.Lock()
        # The steps after the Zep call: their own pool, every wait within the step's budget.
        self._bounded = deadline_client(settings, READ_PATH_REDIS_TIMEOUT_S)
        self._scripts = {
            AfterRead: self._bounded.register_script(
                AFTER_READ_SHARED if settings.redis_cluster else AFTER_READ),
            RunGuard: self._bounded.register_script(GUARD_SCRIPT),
            Pause: self._bounded.register_script(PAUSE),
        }
        self._after_failure = self._bounded.register_script(
            AFTER_FAILURE_SHARED if settings.redis_cluster else AFTER_FAILURE)
        self._bounded_pool = (self._bounded.connection_pool
                              if isinstance(self._bounded, redis.Redis) else None)
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _AsyncRedis] = (
            weakref.WeakKeyDictionary()
        )
        self._redis_down_until = 0.0
        self._wind_up_max = ZEP_WIND_UP_MAX_SHARE * settings.read_timeout_ms / 1000
        self._writer: Writer | None = None
        self._ledger: Ledger | None = None
        self._publisher: Publisher | None = None
        # How this runtime publishes memory.mirror_message: the broker of its settings
        # unless set (an application routing publishes itself, or a test).
        self.send: Callable[[str, dict[str, Any]], None] | None = None
        self._enqueue_pool: ThreadPoolExecutor | None = None

    @property
    def zep(self) -> ZepApi:
        if self._zep is None:
            with self._zep_lock:
                if self._zep is None:
                    self._zep = connect(self.settings, self.ops_conn)
        return self._zep

    def warm(self) -> None:
        """Build the Zep client now (when Zep is configured), off any call's budget."""
        if self.settings.zep_api_url and self.settings.zep_api_key:
            self.zep  # noqa: B018  (connect: the API's SDK imported, its client built)
            shared_ssl_context()

    @property
    def ops_conn(self) -> StateRedis:
        """Redis with operator timeouts, for work off the chat's hot path (workers, probe)."""
        return state_client(self.settings)

    def prober(self) -> Prober:
        return Prober(self.ops_conn, self.settings, lambda: self.zep, clock=self.clock,
                      keys=self.keys)

    def writer(self) -> Writer:
        if self._writer is None:
            self._writer = Writer(self.ops_conn, self.settings, self.zep, clock=self.clock,
                                  keys=self.keys)
        return self._writer

    def ledger(self) -> Ledger:
        if self._ledger is None:
            self._ledger = Ledger(self.ops_conn, self.keys, self.settings.redeliver_after_seconds)
        return self._ledger

    @property
    def publisher(self) -> Publisher:
        if self._publisher is None:
            with self._zep_lock:
                if self._publisher is None:
                    # Not the read path's client (50 ms, no retry): the duplicate check
                    # and the ledger entry must survive a pause of Redis.
                    self._publisher = Publisher(self.settings,
                                                enqueue_redis(self.settings),
                                                self._publish, clock=self.clock)
        return self._publisher

    def _publish(self, task_id: str, kwargs: dict[str, Any]) -> None:
        if self.send is None:
            # The broker of this runtime's settings, not the environment's: a process
            # configured with explicit settings publishes where they say.
            from memory_worker.celery_app import sender

            with self._zep_lock:
                if self.send is None:
                    self.send = sender(self.settings)
        self.send(task_id, kwargs)

    @property
    def enqueue_pool(self) -> ThreadPoolExecutor:
        """Threads that run ``aenqueue_message``'s blocking work, built on first use."""
        if self._enqueue_pool is None:
            with self._zep_lock:
                if self._enqueue_pool is None:
                    self._enqueue_pool = ThreadPoolExecutor(
                        ENQUEUE_THREADS, thread_name_prefix="memory-enqueue")
        return self._enqueue_pool

    # synchronous

    def fetch(self, thread_id: str, view: str = "summary") -> tuple[Context | None, Meta]:
        policy = self.policy
        started = policy.perf()
        keys = policy.begin(thread_id, view)
        if keys is None:
            return policy.disabled(started)
        snapshot = self._snapshot(keys)  # the hot path: one MGET, then the decision
        decided = policy.decide(thread_id, started, snapshot)
        if decided is not None:
            return decided
        flow = policy.miss(thread_id, view, started, keys[1], snapshot is not None)
        try:
            step = next(flow)
            while True:
                step = flow.send(self._perform(step))
        except StopIteration as stop:
            result: tuple[Context | None, Meta] = stop.value
            return result

    def _snapshot(self, keys: list[str]) -> list[Any] | None:
        """The one ``MGET``, on a connection of the pool (``_on_connection``: this
        client never retries, so the command wrapper would only cost time); None
        when Redis fails."""
        if time.monotonic() < self._redis_down_until:
            return None
        pool = self._pool
        if pool is None:
            return self._slot_snapshot(keys)
        try:
            reply: list[Any] = _on_connection(pool, "MGET", *keys)
        except redis.RedisError:
            self._redis_failed(Snapshot(keys))
            return None
        return reply

    def _slot_snapshot(self, keys: list[str]) -> list[Any] | None:
        """The snapshot on a Redis Cluster, in the order of ``keys``; None when Redis fails.

        The forced record and the pause share the deployment's slot (one
        ``MGET``), the cache entry is in its thread's: one pipeline, whose
        commands redis-py writes to each node before it reads any reply, so
        the snapshot waits for about one round trip however many nodes it
        touches (two at most). Each wait is bounded by the client's 50 ms
        socket timeout, as on one server; a topology refresh that a failed
        command asked for runs before the next command, on the same timeouts.
        """
        forced, entry, pause = keys
        try:
            pipe = self.conn.pipeline(transaction=False)
            # The command, not pipe.mget(): redis-py refuses MGET's method in a pipeline.
            pipe.execute_command("MGET", forced, pause)  # type: ignore[no-untyped-call]
            pipe.get(entry)
            (forced_raw, pause_raw), raw = pipe.execute()
        except redis.RedisError:
            self._redis_failed(Snapshot(keys))
            return None
        return [forced_raw, raw, pause_raw]

    def _perform(self, step: Step) -> Any:
        if type(step) is ZepRead:
            return self.zep.get_memory(step.thread_id, step.lastn, step.budget_seconds, step.view)
        if time.monotonic() < self._redis_down_until:
            return None
        if type(step) is Snapshot:  # the hot path: one MGET
            if self._pool is None:
                return self._slot_snapshot(step.keys)
            try:
                return self.conn.execute_command("MGET", *step.keys)  # type: ignore[no-untyped-call]
            except redis.RedisError:
                self._redis_failed(step)
                return None
        assert isinstance(step, Bounded)
        if step.budget_seconds <= 0:
            return self._no_time_left(step)
        try:
            with within(step.budget_seconds):
                if type(step) is RunGuard:
                    return self._eval(self._scripts[RunGuard], step.call.keys, step.call.args)
                if type(step) is AfterRead:
                    if self._pool is None:
                        return self._after_read_by_slot(step)
                    keys, args = step.call()
                    return self._eval(self._after_read_script(step), keys, args)
                assert isinstance(step, Pause)
                return self._eval(self._scripts[Pause], step.keys, step.args)
        except redis.TimeoutError:
            return self._timed_out(step)
        except redis.RedisError:
            self._redis_failed(step)
            return None

    def _eval(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        """``script``'s reply, on a connection of the bounded pool (``_on_connection``);
        ``EVAL`` once when Redis does not know the script (it restarted, or its
        scripts were flushed). A cluster's client sends it to its keys' node."""
        pool = self._bounded_pool
        if pool is None:
            return script(keys=keys, args=args)
        try:
            return _on_connection(pool, "EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            return _on_connection(pool, "EVAL", script.script, len(keys), *keys, *args)

    def _after_read_by_slot(self, step: AfterRead) -> Any:
        """``AfterRead`` on a Redis Cluster: the entry's ``SET``, then ``AFTER_READ_SHARED``
        (reader.py says why in this order); both within the step's deadline."""
        entry = step.entry()
        if entry is not None:
            key, value, ttl_ms = entry
            self._bounded.set(key, value, px=ttl_ms)
        keys, args = step.shared()
        return self._after_read_script(step)(keys=keys, args=args)

    def _after_read_script(self, step: AfterRead) -> Any:
        return self._scripts[AfterRead] if step.guard is None else self._after_failure

    def _redis_failed(self, step: Step) -> None:
        self._redis_down_until = time.monotonic() + REDIS_DOWN_BACKOFF_S
        metrics.safe_inc(metrics.redis_errors, op=_redis_op(step))

    def _timed_out(self, step: Bounded) -> None:
        """A step that ran out of time: Redis is blamed (taken off for a second) only
        when it had its whole socket timeout. A step that the read's budget cut shorter
        (after a slow Zep call, or on a busy event loop) says nothing about Redis, and
        blaming it would send every read of the next second past the cache."""
        if step.budget_seconds >= READ_PATH_REDIS_TIMEOUT_S:
            self._redis_failed(step)
        else:
            self._no_time_left(step)

    def _no_time_left(self, step: Step) -> None:
        """A step the budget left no time for: lost like a failed one, Redis not blamed."""
        metrics.safe_inc(metrics.redis_errors, op=_redis_op(step))

    # asynchronous

    async def afetch(self, thread_id: str, view: str = "summary") -> tuple[Context | None, Meta]:
        policy = self.policy
        started = policy.perf()
        keys = policy.begin(thread_id, view)
        if keys is None:
            return policy.disabled(started)
        state = self._async_redis()
        state.reads += 1
        try:
            snapshot = await self._aperform(Snapshot(keys), state)  # the hot path: one MGET
            decided = policy.decide(thread_id, started, snapshot)
            if decided is not None:
                return decided
            flow: Flow = policy.miss(thread_id, view, started, keys[1], snapshot is not None)
            try:
                step = next(flow)
                while True:
                    step = flow.send(await self._aperform(step, state))
            except StopIteration as stop:
                result: tuple[Context | None, Meta] = stop.value
                return result
        finally:
            state.reads -= 1

    async def _aperform(self, step: Step, state: _AsyncRedis) -> Any:
        if isinstance(step, ZepRead):
            return await self._aread_zep(step, state)
        if time.monotonic() < self._redis_down_until:
            return None
        if type(step) is Snapshot:  # the hot path: one MGET, pipelined with the others
            try:
                return await state.snapshot(step.keys)
            except redis.RedisError:
                self._redis_failed(step)
                return None
        assert isinstance(step, Bounded)
        if step.budget_seconds <= 0:
            return self._no_time_left(step)
        try:
            async with asyncio.timeout(step.budget_seconds):
                return await state.perform(step)
        except redis.TimeoutError:  # Redis had its timeout of the loop's attention
            return self._timed_out(step)
        except TimeoutError:  # the read's budget ran out first: on a busy loop
            return self._no_time_left(step)
        except redis.RedisError:
            self._redis_failed(step)
            return None

    async def _aread_zep(self, step: ZepRead, state: _AsyncRedis) -> Any:
        """The Zep call of a read on this loop, its deadline brought forward by the time
        the loop will need to wind up the other reads in flight on it.

        Reads that start together reach their deadlines together, and the loop then
        ends each in turn (cancel the request, record the failure with the guard):
        0.1 to 0.3 ms a read on two cores, so a thousand reads at once (two hundred of
        them misses) against a stalled Zep ended up to 40 ms past their budget. The
        reserve is 0.1 ms for each other read in flight, at most a fifth of the read
        budget (50 ms of the default 250): a crowd's Zep call could not have used that
        time and still returned within the budget. A read alone loses nothing.
        """
        reserve = min(self._wind_up_max, (state.reads - 1) * ZEP_WIND_UP_PER_READ_S)
        budget = step.budget_seconds - reserve
        if budget <= 0.002:
            return Failure(Reason.TIMEOUT, message="no time left for the call")
        return await self.zep.aget_memory(step.thread_id, step.lastn, budget, step.view)

    def _async_redis(self) -> _AsyncRedis:
        loop = asyncio.get_running_loop()
        state = self._async.get(loop)
        if state is None:
            state = self._async[loop] = _AsyncRedis(self.settings)
        return state


class _AsyncRedis:
    """The asyncio Redis client and scripts of one event loop.

    The commands of the reads that reach a Redis step in the same pass of the
    loop go to Redis together, in one pipeline on one connection: the snapshots'
    ``MGET``s, and on one server the scripts after the Zep call too. A thousand
    reads at once cost a few round trips and a few connections, not a thousand of
    each: connecting that many within the read path's 50 ms would fail and take
    the process off Redis for a second, and the reads whose Zep call ran out of
    budget at the same moment would each open a connection for their guard
    script, with 25 ms left to do it in.
    """

    def __init__(self, settings: Settings) -> None:
        self.conn = async_state_redis(
            settings, decode_responses=True, retry=AsyncRetry(NoBackoff(), 0),
            socket_timeout=ASYNC_REDIS_BACKSTOP_S,
            socket_connect_timeout=ASYNC_REDIS_BACKSTOP_S,
        )
        self._cluster = settings.redis_cluster
        self.after_read = self.conn.register_script(
            AFTER_READ_SHARED if self._cluster else AFTER_READ)
        self.after_failure = self.conn.register_script(
            AFTER_FAILURE_SHARED if self._cluster else AFTER_FAILURE)
        self.guard = self.conn.register_script(GUARD_SCRIPT)
        self.pause = self.conn.register_script(PAUSE)
        self.reads = 0  # reads in flight on this loop
        self._waiting: list[tuple[_Queued, asyncio.Future[Any]]] = []
        self._sending: set[asyncio.Task[None]] = set()

    def snapshot(self, keys: list[str]) -> asyncio.Future[Any]:
        """The reply of ``MGET keys``, sent with the others of this pass of the loop."""
        return self._queue(("MGET", keys))

    def _queue(self, command: _Queued) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.append((command, future))
        if len(self._waiting) == 1:  # the first of this pass: send them all on the next
            task = asyncio.get_running_loop().create_task(self._send_waiting())
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)
        return future

    async def _send_waiting(self) -> None:
        batch, self._waiting = self._waiting, []
        replies: list[Any]
        try:
            async with _redis_time():
                if self._cluster:  # snapshots only: the scripts are not queued on a cluster
                    replies = await self._slot_snapshots([command[1] for command, _ in batch])
                elif len(batch) == 1:
                    replies = [await self._one(batch[0][0])]
                else:
                    replies = await self._pipelined([command for command, _ in batch])
        except Exception as exc:  # each waiting read fails open, as after its own command
            error = exc if isinstance(exc, redis.RedisError) else redis.RedisError(repr(exc))
            replies = [error for _ in batch]
        for (_, future), reply in zip(batch, replies, strict=True):
            if future.done():  # a caller that was cancelled no longer waits
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _pipelined(self, commands: list[_Queued]) -> list[Any]:
        """The replies of ``commands``, sent in one pipeline. A script Redis does not
        know (it restarted, or its scripts were flushed) is loaded and its calls sent
        again, once: checking every time would cost each batch a round trip."""
        replies = await self._send(commands)
        missing = {command[1] for command, reply in zip(commands, replies, strict=True)
                   if isinstance(reply, NoScriptError)}
        if not missing:
            return replies
        for script in missing:
            await self.conn.script_load(script.script)
        again = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        for i, reply in zip(again, await self._send([commands[i] for i in again]), strict=True):
            replies[i] = reply
        return replies

    async def _send(self, commands: list[_Queued]) -> list[Any]:
        pipe = self.conn.pipeline(transaction=False)
        for command in commands:
            if command[0] == "MGET":
                pipe.mget(command[1])
            else:
                _, script, keys, args = command
                pipe.evalsha(script.sha, len(keys), *keys, *args)
        return list(await pipe.execute(raise_on_error=False))

    async def _one(self, command: _Queued) -> Any:
        if command[0] == "MGET":
            return await self.conn.mget(command[1])
        _, script, keys, args = command
        return await script(keys=keys, args=args)

    async def _slot_snapshots(self, batch: list[list[str]]) -> list[list[Any]]:
        """The snapshots of ``batch`` on a Redis Cluster: the deployment's two keys once
        (one ``MGET``, the same for every read), each cache entry by its ``GET``; one
        pipeline, sent to its nodes at once (``Runtime._slot_snapshot``)."""
        forced, _, pause = batch[0]
        pipe = self.conn.pipeline(transaction=False)
        pipe.execute_command("MGET", forced, pause)
        for keys in batch:
            pipe.get(keys[1])
        (forced_raw, pause_raw), *entries = await pipe.execute()
        return [[forced_raw, raw, pause_raw] for raw in entries]

    async def _after_read_by_slot(self, step: AfterRead) -> Any:
        """``Runtime._after_read_by_slot``'s asyncio twin."""
        async with _redis_time():
            entry = step.entry()
            if entry is not None:
                key, value, ttl_ms = entry
                await self.conn.set(key, value, px=ttl_ms)
            keys, args = step.shared()
            return await self._after_read_script(step)(keys=keys, args=args)

    def _after_read_script(self, step: AfterRead) -> AsyncScript:
        return self.after_read if step.guard is None else self.after_failure

    async def _script_by_slot(self, script: AsyncScript, keys: list[Any],
                              args: list[Any]) -> Any:
        async with _redis_time():
            return await script(keys=keys, args=args)

    def perform(self, step: Bounded) -> Awaitable[Any]:
        if isinstance(step, AfterRead) and self._cluster:
            return self._after_read_by_slot(step)
        script, keys, args = self._script_call(step)
        if self._cluster:  # a script's keys are in one slot, not those of the others
            return self._script_by_slot(script, keys, args)
        return self._queue(("EVALSHA", script, keys, args))

    def _script_call(self, step: Bounded) -> tuple[AsyncScript, list[Any], list[Any]]:
        if isinstance(step, RunGuard):
            return self.guard, list(step.call.keys), list(step.call.args)
        if isinstance(step, AfterRead):
            keys, args = step.call()
            return self._after_read_script(step), list(keys), list(args)
        return self.pause, list(step.keys), list(step.args)


def _redis_time() -> LoopTimeout:
    """The read path's Redis timeout, counted in the event loop's attention."""
    return LoopTimeout(READ_PATH_REDIS_TIMEOUT_S, ceiling=ASYNC_REDIS_CEILING_S)


# What a pass of the loop sends together: ("MGET", keys) or ("EVALSHA", script, keys, args).
_Queued = tuple[Any, ...]


_default: tuple[int, Runtime] | None = None
_default_lock = threading.Lock()


def configure(settings: Settings | None = None, *, clock: Clock = system_clock,
              zep: ZepApi | None = None) -> Runtime:
    """Set this process's runtime (an application at start-up, or a test).

    Called at start-up, it also builds the Zep client (its SDK imported, the TLS
    context loaded), so the first read does not pay for that inside its budget; a
    process that never calls it builds them on its first call.
    """
    runtime = Runtime(settings or Settings.from_env(), clock=clock, zep=zep)
    runtime.warm()
    logs.use_format(runtime.settings.log_format)
    with _default_lock:
        _install(runtime)
    return runtime


def _install(runtime: Runtime) -> None:
    global _default
    _default = (os.getpid(), runtime)


def default_runtime() -> Runtime:
    """The process's runtime, built from the environment on first use (and after a fork)."""
    current = _default
    if current is not None and current[0] == os.getpid():
        return current[1]
    with _default_lock:
        if _default is None or _default[0] != os.getpid():
            _install(Runtime(Settings.from_env()))
        assert _default is not None
        return _default[1]


def fetch_thread_context(thread_id: str, view: str = "summary"
                         ) -> tuple[ThreadContext | None, ReadMeta]:
    """The thread's context within MEMORY_READ_TIMEOUT_MS; never raises for a fault."""
    if tracing.enabled():
        with tracing.span("memory.fetch_thread_context", view=view) as current:
            result = default_runtime().fetch(thread_id, view)
            tracing.record_read(current, result[1])
            return cast(tuple[ThreadContext | None, ReadMeta], result)
    return cast(tuple[ThreadContext | None, ReadMeta], default_runtime().fetch(thread_id, view))


async def afetch_thread_context(thread_id: str, view: str = "summary"
                                ) -> tuple[ThreadContext | None, ReadMeta]:
    """``fetch_thread_context`` for asyncio: never blocks the event loop."""
    if tracing.enabled():
        with tracing.span("memory.fetch_thread_context", view=view) as current:
            result = await default_runtime().afetch(thread_id, view)
            tracing.record_read(current, result[1])
            return cast(tuple[ThreadContext | None, ReadMeta], result)
    result = await default_runtime().afetch(thread_id, view)
    return cast(tuple[ThreadContext | None, ReadMeta], result)


def enqueue_message(thread_id: str, role: str, content: str, client_msg_id: str,
                    user_id: str | None = None, metadata: dict[str, Any] | None = None
                    ) -> EnqueueResult:
    """Validate, redact and publish one message for mirroring to Zep (SPEC §6)."""
    if tracing.enabled():
        with tracing.span("memory.enqueue_message", role=role) as current:
            result = default_runtime().publisher.enqueue(thread_id, role, content,
                                                         client_msg_id, user_id, metadata)
            tracing.record_enqueue(current, result)
            return result
    return default_runtime().publisher.enqueue(thread_id, role, content, client_msg_id,
                                               user_id, metadata)


async def aenqueue_message(thread_id: str, role: str, content: str, client_msg_id: str,
                           user_id: str | None = None, metadata: dict[str, Any] | None = None
                           ) -> EnqueueResult:
    """``enqueue_message`` for asyncio: never blocks the event loop.

    Enqueueing may wait on Redis, on a broker connect, on an fsync or a file lock of
    the outbox; it runs on a small pool of this process's threads, and the caller's
    task awaits it. ``InvalidMessage`` and ``OutboxUnavailable`` are raised here as
    from ``enqueue_message``.
    """
    runtime = default_runtime()
    call = functools.partial(runtime.publisher.enqueue, thread_id, role, content,
                             client_msg_id, user_id, metadata)
    if tracing.enabled():
        with tracing.span("memory.enqueue_message", role=role) as current:
            # The pool's thread publishes inside this span (Celery's publish span, headers).
            in_span = functools.partial(contextvars.copy_context().run, call)
            result = await asyncio.get_running_loop().run_in_executor(runtime.enqueue_pool,
                                                                      in_span)
            tracing.record_enqueue(current, result)
            return result
    return await asyncio.get_running_loop().run_in_executor(runtime.enqueue_pool, call)


def send_mirror(task_id: str, kwargs: dict[str, Any]) -> None:
    """Publish ``memory.mirror_message`` once, without kombu's retries (the outbox retries)."""
    from memory_worker.celery_app import app, publish_mirror

    publish_mirror(app, task_id, kwargs)
