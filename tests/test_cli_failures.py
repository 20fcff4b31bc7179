"""Every operational failure of the CLI is one line on stderr and exit 1, never a traceback.

SPEC §8: exit 1 on an operational failure, reported as one line on stderr. The
installed `memory-worker` runs each subcommand under each failure setup that
applies to it. What is asserted of every run: exit code 1; the last line of
stderr, and only it, starts `memory-worker: error:`; every other stderr line is a
JSON log event; no `Traceback`; no password of a URL anywhere in the output.
A hypothesis property then throws malformed and dead URLs at `--redis-url` and
`--broker-url` in-process, with click's standalone handling, as the entry point.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from memory_worker import dlq
from memory_worker.cli.main import cli
from memory_worker.keys import Keys
from memory_worker.messages import message_uuid
from memory_worker.spool import Outbox
from tests.processes import ROOT, project_env

MEMORY_WORKER = str(Path(sys.executable).with_name("memory-worker"))
SECRET = "hunter2"
DEAD_REDIS = f"redis://:{SECRET}@127.0.0.1:1/0"

# Every subcommand, with arguments that would make it run (and, for the servers, serve).
COMMANDS: dict[str, list[str]] = {
    "status": ["status"],
    "status --json": ["status", "--json"],
    "force": ["force", "drill"],
    "clear": ["clear"],
    "reset-failures": ["reset-failures"],
    "invalidate": ["invalidate", "t-1"],
    "probe": ["probe"],
    "dlq list": ["dlq", "list"],
    "dlq replay": ["dlq", "replay"],
    "dlq purge": ["dlq", "purge", "--yes"],
    "spool drain": ["spool", "drain"],
    "config check": ["config", "check"],
    "drill": ["drill", "auth", "--zep-sim-url", "{sim}"],
    "metrics-server": ["metrics-server", "--port", "0"],
    "metrics-clean": ["metrics-clean"],
    "zep-sim": ["zep-sim", "--port", "0", "--api-key", "test-key"],
}
ALL = tuple(COMMANDS)
USING_REDIS = ("status", "status --json", "force", "clear", "reset-failures", "invalidate",
               "probe", "dlq list", "dlq replay", "dlq purge", "spool drain", "drill")
PUBLISHING = ("dlq replay", "spool drain")
SERVERS = ("metrics-server", "zep-sim")
# For the failures found before any command runs (one code path for all, tried with every
# subcommand under "bad variable"): one subcommand of each kind.
SAMPLE = ("status", "dlq replay", "spool drain", "config check", "metrics-server", "zep-sim")


@dataclass
class World:
    """What a setup may use: a scratch directory and a port another socket holds."""

    tmp: Path
    taken_port: int
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


def _unwritable_dir(world: World) -> str:
    """A directory this process cannot create files in, root included."""
    if os.geteuid() == 0:
        return "/proc/self"
    directory = world.tmp / "read-only"
    directory.mkdir()
    directory.chmod(0o500)
    return str(directory)


def _a_file(world: World) -> str:
    path = world.tmp / "a-file"
    path.write_text("")
    return str(path)


Setup = tuple[tuple[str, ...], Callable[[World], object]]

SETUPS: dict[str, Setup] = {
    "bad variable": (ALL, lambda w: w.env.update(MEMORY_NEGATIVE_CACHE_TTL_SECONDS="soon")),
    "REDIS_URL not a Redis URL": (
        SAMPLE, lambda w: w.env.update(REDIS_URL=f"http://:{SECRET}@127.0.0.1:1/0")),
    "--redis-url with a port that is not a number": (
        SAMPLE, lambda w: w.args.extend(["--redis-url", f"redis://:{SECRET}@127.0.0.1:port/0"])),
    "--redis-url with an option Redis refuses": (
        SAMPLE, lambda w: w.args.extend(
            ["--redis-url", f"redis://:{SECRET}@127.0.0.1:1/0?socket_timeout=soon"])),
    "Redis down": (USING_REDIS, lambda w: w.args.extend(["--redis-url", DEAD_REDIS])),
    "broker down": (PUBLISHING, lambda w: w.args.extend(["--broker-url", DEAD_REDIS])),
    "--broker-url not a broker URL": (
        PUBLISHING, lambda w: w.args.extend(["--broker-url", f"ftp://:{SECRET}@127.0.0.1/"])),
    "CELERY_BROKER_URL with a port out of range": (
        PUBLISHING, lambda w: w.env.update(
            CELERY_BROKER_URL=f"amqp://u:{SECRET}@127.0.0.1:70000//")),
    "MEMORY_SPOOL_DIR not a directory": (
        ("spool drain",), lambda w: w.env.update(MEMORY_SPOOL_DIR=_a_file(w))),
    "MEMORY_SPOOL_DIR not writable": (
        ("spool drain",), lambda w: w.env.update(MEMORY_SPOOL_DIR=_unwritable_dir(w))),
    "port taken": (SERVERS, lambda w: w.args.extend(["--port", str(w.taken_port)])),
    "address not of this host": (SERVERS, lambda w: w.args.extend(["--host", "192.0.2.1"])),
    "PROMETHEUS_MULTIPROC_DIR not a directory": (
        SAMPLE, lambda w: w.env.update(PROMETHEUS_MULTIPROC_DIR=_a_file(w))),
    "PROMETHEUS_MULTIPROC_DIR missing": (
        SAMPLE, lambda w: w.env.update(PROMETHEUS_MULTIPROC_DIR=str(w.tmp / "missing"))),
    "PROMETHEUS_MULTIPROC_DIR unset": (
        ("metrics-clean",), lambda w: w.env.pop("PROMETHEUS_MULTIPROC_DIR")),
}

CASES = [pytest.param(command, setup, id=f"{command} | {setup}")
         for setup, (commands, _) in SETUPS.items() for command in commands]


def assert_one_line_failure(stdout: str, stderr: str, exit_code: int | None) -> None:
    lines = stderr.splitlines()
    assert exit_code == 1, (stdout, stderr)
    assert lines and lines[-1].startswith("memory-worker: error: "), stderr
    for line in lines[:-1]:  # the logs of what ran before the failure, nothing else
        assert not line.startswith("memory-worker: error:"), stderr
        assert "event" in json.loads(line), line
    assert "Traceback" not in stderr
    assert SECRET not in stdout + stderr


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        yield int(taken.getsockname()[1])


@pytest.mark.parametrize(("command", "setup"), CASES)
def test_a_failure_is_one_line_on_stderr_and_exit_1(
    command: str, setup: str, redis_url: str, conn: redis.Redis, keys: Keys, tmp_path: Path,
    taken_port: int, zep_server: Any,
) -> None:
    """Each subcommand under each failure that applies to it: one line, exit 1."""
    # Given something to publish and a deployment whose configuration the setup spoils
    spool, multiproc = tmp_path / "spool", tmp_path / "prometheus"
    multiproc.mkdir()
    Outbox(spool).append({"task_id": message_uuid("m-1"), "payload": {"client_msg_id": "m-1"}})
    dlq.push(conn, keys, {"client_msg_id": "m-2", "thread_id": "t-1", "payload": {},
                          "reason": "client_error", "status_code": 400, "attempts": 1,
                          "failed_at": 1.0})
    world = World(tmp_path, taken_port, env=project_env(
        redis_url, FLAG_ZEP_WRITE="true", FLAG_ZEP_READ="true", ZEP_API_URL=zep_server.url,
        ZEP_API_KEY="test-key", MEMORY_SPOOL_DIR=str(spool),
        PROMETHEUS_MULTIPROC_DIR=str(multiproc)))
    SETUPS[setup][1](world)
    argv = [arg.format(sim=zep_server.url) for arg in COMMANDS[command]]

    # When the installed command runs
    done = subprocess.run([MEMORY_WORKER, *argv, *world.args], cwd=ROOT, env=world.env,
                          capture_output=True, text=True, timeout=60)

    # Then it fails in one line, and a publish that failed kept what it was publishing
    assert_one_line_failure(done.stdout, done.stderr, done.returncode)
    if command == "dlq replay":
        assert dlq.size(conn, keys) == 1
    if command == "spool drain" and setup in ("broker down", "Redis down"):
        assert Outbox(spool).pending() == 1


def test_dlq_replay_does_not_need_the_outbox(
    redis_url: str, conn: redis.Redis, keys: Keys, tmp_path: Path
) -> None:
    """An unusable MEMORY_SPOOL_DIR does not stop a replay: it publishes straight to the broker."""
    env = project_env(redis_url, MEMORY_SPOOL_DIR=_a_file(World(tmp_path, 0)))
    done = subprocess.run([MEMORY_WORKER, "dlq", "replay"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "Replayed 0, unreadable 0, remaining 0\n"


# In-process, with click's standalone handling as in the entry point: any exception that
# is not click's own exit would have been a traceback.

_PORTS = st.one_of(st.just("1"), st.integers(65536, 10**7).map(str),
                   st.text(alphabet="abc-+.:[]% 0", min_size=1, max_size=4))
_QUERIES = st.one_of(st.just(""), st.sampled_from(
    ["socket_timeout", "socket_connect_timeout", "health_check_interval", "db",
     "ssl_cert_reqs", "max_connections", "retry_on_timeout"]).map(lambda k: f"?{k}=soon"))
_PATHS = st.one_of(st.sampled_from(["", "/", "/0", "/15", "/-1", "/abc", "/99999"]),
                   st.text(alphabet="/abc0?=&#%", max_size=6))


@st.composite
def dead_urls(draw: st.DrawFn, schemes: list[str]) -> str:
    """A URL with a password whose server does not listen, or that cannot be parsed."""
    scheme = draw(st.sampled_from(schemes))
    host = draw(st.sampled_from(["127.0.0.1", "[::1]", ""]))  # no name to look up
    return (f"{scheme}://user:{SECRET}@{host}:{draw(_PORTS)}"
            f"{draw(_PATHS)}{draw(_QUERIES)}")


@pytest.fixture
def fuzz_env(cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    Outbox(spool).append({"task_id": message_uuid("m-1"), "payload": {"client_msg_id": "m-1"}})
    monkeypatch.setenv("MEMORY_SPOOL_DIR", str(spool))


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(url=dead_urls(["redis", "rediss", "unix", "http", "amqp", "redis+socket"]),
       command=st.sampled_from([["status"], ["dlq", "list"], ["invalidate", "t-1"]]))
@example(url="rediss://user:hunter2@127.0.0.1:1?ssl_cert_reqs=soon", command=["status"])
def test_any_dead_or_malformed_redis_url_is_one_line(
    fuzz_env: None, url: str, command: list[str]
) -> None:
    """Whatever --redis-url names, a Redis that cannot serve is one line and exit 1."""
    result = CliRunner().invoke(cli, [*command, "--redis-url", url])
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        repr(result.exception))
    assert_one_line_failure(result.stdout, result.stderr, result.exit_code)


# A broker that refuses the connection still costs its 2 s connection timeout: fewer examples.
@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(url=dead_urls(["redis", "rediss", "amqp", "pyamqp", "ftp", "sqs"]))
def test_any_dead_or_malformed_broker_url_is_one_line(fuzz_env: None, url: str) -> None:
    """Whatever --broker-url names, a broker that cannot take the outbox is one line, exit 1."""
    result = CliRunner().invoke(cli, ["spool", "drain", "--broker-url", url])
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        repr(result.exception))
    assert_one_line_failure(result.stdout, result.stderr, result.exit_code)
