"""Real Celery worker and beat processes for integration tests (no Docker needed)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CELERY = str(Path(sys.executable).with_name("celery"))


def niced(args: list[str], niceness: int) -> list[str]:
    """``args`` run at ``niceness`` (``nice`` execs the command: the pid stays its own)."""
    return ["nice", "-n", str(niceness), *args] if niceness else args


@contextmanager
def silent_redis() -> Iterator[str]:
    """The URL of a loopback port that accepts connections and never answers: a Redis
    that hangs."""
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"


def project_env(redis_url: str, **extra: str) -> dict[str, str]:
    """The current environment with the project's variables replaced by test values."""
    from memory_worker.config import VARIABLES

    env = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    env.update({"REDIS_URL": redis_url, "MEMORY_LOG_FORMAT": "json"})
    env.update(extra)
    return env


def deliveries_settled(conn: object, keys: object,
                       broker_drained: Callable[[], bool] | None = None) -> bool:
    """Nothing of the write path is left anywhere: no queued, delayed or unacknowledged
    task (``broker_drained``; by default the Redis broker behind ``conn``), and the
    delivery ledger holds no message (every one done or dead-lettered, none that the
    sweep could publish again). Past this, no further copy of a message can reach Zep."""
    if conn.zcard(keys.write_pending) != 0:  # type: ignore[attr-defined]
        return False
    return broker_drained() if broker_drained is not None else redis_queues_drained(conn)


def redis_queues_drained(conn: object) -> bool:
    """A Redis broker holds no write: none queued, none unacknowledged (nor waiting for
    its ETA in a worker, which holds it unacknowledged)."""
    from memory_worker.celery_app import WRITE_QUEUE

    return (conn.llen(WRITE_QUEUE) == 0  # type: ignore[attr-defined]
            and not conn.hlen("unacked"))  # type: ignore[attr-defined]


def rabbit_queues_drained(node: PrivateRabbit, vhost: str) -> bool:
    """A RabbitMQ vhost holds no write: none ready or unacknowledged in ``memory_writes``,
    none waiting in the delayed-delivery queues (``celery_delayed_*``)."""
    from memory_worker.celery_app import WRITE_QUEUE

    def empty() -> bool:
        return not any(n for name, n in node.messages(vhost).items()
                       if name == WRITE_QUEUE or name.startswith("celery_delayed_"))

    # Counts are as of each queue's last tick: empty twice in a row, more than a tick
    # apart (one listing takes longer than that), is empty.
    return empty() and empty()


def accepted_adds(sim: object, client_msg_id: str) -> int:
    """How many add requests carrying the message Zep accepted (2xx): what was sent and
    taken, counted from the simulator's request log, not from what its store kept."""
    carrying: list[Any] = sim.requests_carrying(client_msg_id)  # type: ignore[attr-defined]
    return sum(1 for r in carrying if r.status is not None and 200 <= r.status < 300)


def wait_for(condition: Callable[[], bool], timeout: float, what: str,
             interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@contextmanager
def celery_process(args: list[str], env: Mapping[str, str], log_path: Path
                   ) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``celery -A memory_worker ARGS``; on exit TERM it (warm) and then KILL its group."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen([CELERY, "-A", "memory_worker", *args], cwd=ROOT, env=dict(env),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield proc
        finally:
            end_process(proc)


def end_process(proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """TERM (a warm shutdown for Celery), then KILL its process group if it does not end."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc.pid)
            proc.wait(timeout=10)


class SupervisedWorker:
    """``celery worker`` in its own process group, started again when it exits on its own.

    Like supervisord's ``autorestart``: a watchdog thread notices an exit the
    test did not cause, records it in ``exits`` (seconds since ``epoch``, exit
    code) and starts a new worker. The test may kill the pool processes or the
    whole group with -9, and ``stop`` it warm.
    """

    def __init__(self, name: str, concurrency: int, env: Mapping[str, str], log: Path,
                 *, on_exit: Callable[[int | None], None] | None = None) -> None:
        self.name, self.concurrency, self.env, self.log = name, concurrency, dict(env), log
        self.on_exit = on_exit
        self.proc: subprocess.Popen[bytes] | None = None
        self.generation = 0
        self.exits: list[int | None] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._watchdog = threading.Thread(target=self._watch, name="worker-watchdog",
                                          daemon=True)

    def __enter__(self) -> SupervisedWorker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        with self._lock:
            self._start()
        if not self._watchdog.is_alive():
            self._watchdog.start()

    def pool(self) -> list[int]:
        assert self.proc is not None
        found = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True,
                               text=True, check=False)
        return [int(pid) for pid in found.stdout.split()]

    def kill_pool(self) -> int:
        """kill -9 every pool process; the master forks new ones."""
        pids = self.pool()
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        return len(pids)

    def kill_all_and_restart(self) -> None:
        """kill -9 the master and its pool at once, as a host dies; then start anew."""
        with self._lock:
            assert self.proc is not None
            kill_group(self.proc.pid)
            self.proc.wait(timeout=10)
            self._start()

    def stop(self) -> None:
        """TERM (warm shutdown), then KILL the group if it does not end in time."""
        self._stopping.set()
        with self._lock:
            if self.proc is not None:
                end_process(self.proc, timeout=60)

    def _start(self) -> None:
        self.generation += 1
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [CELERY, "-A", "memory_worker",
                 *worker_args(f"{self.name}{self.generation}", self.concurrency)],
                cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)

    def _watch(self) -> None:
        while not self._stopping.wait(0.5):
            with self._lock:
                if self._stopping.is_set() or self.proc is None or self.proc.poll() is None:
                    continue
                kill_group(self.proc.pid)  # pool processes the master left behind
                self.exits.append(self.proc.returncode)
                if self.on_exit is not None:
                    self.on_exit(self.proc.returncode)
                self._start()


def kill_group(pgid: int) -> None:
    """kill -9 a process group (a worker's master and its pool), gone or not."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def worker_args(name: str, concurrency: int = 1) -> list[str]:
    return ["worker", "--loglevel=INFO", f"--hostname={name}@%h", "--pool=prefork",
            f"--concurrency={concurrency}", "-Q", "memory_writes,memory_control",
            "--without-mingle", "--without-gossip"]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """A redis-server of the test's own, on a free port, that the test may stop and restart."""

    def __init__(self, directory: Path, *, appendonly: bool = False,
                 args: tuple[str, ...] = (), port: int | None = None) -> None:
        self.port = port or free_port()
        self.directory = directory
        self.appendonly = appendonly
        self.args = args  # more redis-server options, e.g. --replicaof
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PrivateRedis:
        import shutil

        exe = shutil.which("redis-server")
        if exe is None:
            raise AssertionError("redis-server is not installed (make test installs it)")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes" if self.appendonly else "no", "--dir", str(self.directory),
             # Plain text on disk, so tests can search everything Redis ever stored.
             "--aof-use-rdb-preamble", "no", "--rdbcompression", "no",
             # DEBUG SLEEP stands for a Redis that pauses (a fork, a failover).
             "--enable-debug-command", "local", *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        wait_for(lambda: _pings(client), 10, f"redis-server on port {self.port}")
        client.close()
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None

    def client(self) -> Any:
        """A ``redis.Redis`` of this server (strings decoded), for the test's look-ups."""
        import redis

        return redis.Redis(port=self.port, socket_timeout=1, decode_responses=True)

    def __enter__(self) -> PrivateRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _pings(client: object) -> bool:
    import redis

    try:
        return bool(client.ping())  # type: ignore[attr-defined]
    except redis.RedisError:
        return False


class PrivateSentinels:
    """A Sentinel-managed Redis of the test's own: a master, one replica and three
    sentinels (quorum 2), each on a free loopback port, announcing 127.0.0.1.

    ``start`` returns once every sentinel knows the replica and the two other
    sentinels, so a failover can be agreed on; ``kill_master`` is ``kill -9``;
    ``master_address`` is what the sentinels name now (``SENTINEL
    get-master-addr-by-name``), ``master`` the server that is master by role.
    """

    SERVICE = "memtest"

    def __init__(self, directory: Path, *, down_after_ms: int = 1000,
                 failover_timeout_ms: int = 3000) -> None:
        self.directory = directory
        self.down_after_ms, self.failover_timeout_ms = down_after_ms, failover_timeout_ms
        self.servers = [PrivateRedis(directory / "master", appendonly=True)]
        self.servers.append(PrivateRedis(
            directory / "replica", appendonly=True,
            args=("--replicaof", "127.0.0.1", str(self.servers[0].port),
                  "--replica-announce-ip", "127.0.0.1")))
        self.ports = [free_port() for _ in range(3)]
        self._sentinels: list[subprocess.Popen[bytes]] = []

    @property
    def addresses(self) -> str:
        """The value of ``REDIS_SENTINELS``."""
        return ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def start(self) -> PrivateSentinels:
        import shutil

        exe = shutil.which("redis-server")  # `redis-server CONF --sentinel` is redis-sentinel
        if exe is None:
            raise AssertionError("redis-server is not installed (make test installs it)")
        for server in self.servers:
            server.start()
        master_port = self.servers[0].port
        for port in self.ports:
            conf = self.directory / f"sentinel-{port}.conf"  # Sentinel rewrites it: its own
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.directory}\n"
                "sentinel announce-ip 127.0.0.1\n"
                f"sentinel monitor {self.SERVICE} 127.0.0.1 {master_port} 2\n"
                f"sentinel down-after-milliseconds {self.SERVICE} {self.down_after_ms}\n"
                f"sentinel failover-timeout {self.SERVICE} {self.failover_timeout_ms}\n"
                f"sentinel parallel-syncs {self.SERVICE} 1\n")
            self._sentinels.append(subprocess.Popen(
                [exe, str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL))
        replica = self.servers[1].client()
        wait_for(lambda: replica.info("replication").get("master_link_status") == "up", 20,
                 "the replica to sync")
        wait_for(self._acquainted, 30, "every sentinel to know the replica and each other")
        return self

    def _acquainted(self) -> bool:
        import redis

        for port in self.ports:
            try:
                with redis.Redis(port=port, socket_timeout=0.5, decode_responses=True) as sentinel:
                    state: Any = sentinel.sentinel_master(self.SERVICE)
                    replicas: Any = sentinel.sentinel_slaves(self.SERVICE)
            except redis.RedisError:
                return False
            if int(state["num-other-sentinels"]) < 2 or not replicas:
                return False
        return True

    def master_address(self) -> tuple[str, int] | None:
        """What the first sentinel that answers names as the master."""
        import redis

        for port in self.ports:
            try:
                with redis.Redis(port=port, socket_timeout=0.5, decode_responses=True) as sentinel:
                    address: Any = sentinel.sentinel_get_master_addr_by_name(self.SERVICE)
            except redis.RedisError:
                continue
            if address:
                host, master_port = address
                return str(host), int(master_port)
        return None

    def server_at(self, port: int) -> PrivateRedis:
        return next(server for server in self.servers if server.port == port)

    def kill_master(self) -> PrivateRedis:
        """kill -9 the server the sentinels name as master; return it."""
        address = self.master_address()
        assert address is not None
        master = self.server_at(address[1])
        assert master.proc is not None
        master.proc.kill()
        master.proc.wait(timeout=10)
        master.proc = None
        return master

    def stop(self) -> None:
        for proc in self._sentinels:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=10)
        self._sentinels.clear()
        for server in self.servers:
            server.stop()

    def __enter__(self) -> PrivateSentinels:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


def cluster_port() -> int:
    """A free port whose cluster bus port (10000 above it) is free too."""
    import socket

    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


class PrivateCluster:
    """A Redis Cluster of the test's own: three masters, no replicas, each a
    ``PrivateRedis`` on a free loopback port with ``--cluster-enabled yes``;
    ``start`` returns once ``CLUSTER INFO`` says ``cluster_state:ok`` on every node.
    ``url`` names the first node (the value of ``REDIS_URL``)."""

    def __init__(self, directory: Path, masters: int = 3) -> None:
        self.directory = directory
        self.servers = [
            PrivateRedis(directory / f"node-{n}", port=cluster_port(), args=(
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(directory / f"node-{n}" / "nodes.conf"),
                "--cluster-node-timeout", "2000"))
            for n in range(masters)]
        self.url = self.servers[0].url

    def start(self) -> PrivateCluster:
        import shutil

        cli = shutil.which("redis-cli")
        if cli is None:
            raise AssertionError("redis-cli is not installed (make test installs it)")
        for server in self.servers:
            server.start()
        subprocess.run([cli, "--cluster", "create",
                        *(f"127.0.0.1:{server.port}" for server in self.servers),
                        "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)
        wait_for(self._ok, 30, "the cluster to be ok on every node")
        return self

    def _ok(self) -> bool:
        import redis

        for server in self.servers:
            try:
                with redis.Redis(port=server.port, socket_timeout=0.5,
                                 decode_responses=True) as node:
                    info: Any = node.execute_command("CLUSTER INFO")
            except redis.RedisError:
                return False
            if info.get("cluster_state") != "ok":  # redis-py parses CLUSTER INFO
                return False
        return True

    def client(self) -> Any:
        """A ``redis.cluster.RedisCluster`` of it (strings decoded), for look-ups."""
        from redis.cluster import RedisCluster

        return RedisCluster(host="127.0.0.1", port=self.servers[0].port, socket_timeout=1,
                            decode_responses=True)

    def flush(self) -> None:
        """Empty every node (a cluster has one database, shared by the module's tests)."""
        for server in self.servers:
            with server.client() as node:
                node.flushall()

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def __enter__(self) -> PrivateCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


# Debian's scripts, run directly: the wrappers in /usr/sbin switch to the rabbitmq user.
RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")


class PrivateRabbit:
    """A RabbitMQ node of the test's own: its name, ports, files and Erlang cookie.

    Node ``memtest-<port>@localhost`` listens on 127.0.0.1 on a free port, keeps
    its database and logs under ``directory`` (so a stop and a start keep its
    quorum queues, as a restarted broker does) and its cookie in ``directory``
    as ``HOME``; a system RabbitMQ, if any, is left alone. Each test gets a
    vhost of its own (``vhost()``), deleted after it.
    """

    def __init__(self, directory: Path, niceness: int = 0) -> None:
        self.directory = directory
        self.niceness = niceness
        self.port = free_port()
        self.dist_port = free_port()
        self.node = f"memtest-{self.port}@localhost"
        self.proc: subprocess.Popen[bytes] | None = None
        self._vhosts = 0

    def url(self, vhost: str = "/") -> str:
        """The broker URL of ``vhost`` (the default vhost ``/`` is the URL without a path)."""
        base = f"amqp://guest:guest@127.0.0.1:{self.port}"
        return base if vhost == "/" else f"{base}/{vhost}"

    def start(self) -> PrivateRabbit:
        server = RABBITMQ_BIN / "rabbitmq-server"
        if not server.exists():
            raise AssertionError("rabbitmq-server is not installed (make test installs it)")
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "enabled_plugins").write_text("[].\n")
        (self.directory / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "log.console = false\nlog.file.level = warning\n")
        (self.directory / "rabbitmq-env.conf").write_text("")
        # Quorum queues report their counts to `rabbitmqctl list_queues` on each tick
        # (5 s by default): a short tick keeps `messages()` close to the truth.
        (self.directory / "advanced.config").write_text(
            "[{rabbit, [{quorum_tick_interval, 200}]}].\n")
        with (self.directory / "server.log").open("ab") as log:
            self.proc = subprocess.Popen(niced([str(server)], self.niceness), env=self._env(),
                                         cwd=self.directory,
                                         stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        wait_for(lambda: self._listening() or self._exited(), 120,
                 f"RabbitMQ node {self.node} to listen")
        if self._exited():
            raise AssertionError(f"RabbitMQ node {self.node} exited; see "
                                 f"{self.directory / 'server.log'}")
        self.ctl("await_startup")
        return self

    def stop(self) -> None:
        """``rabbitmqctl stop`` (a clean shutdown), then kill whatever is left."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.ctl("stop", check=False)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=30)
        kill_group(self.proc.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self.proc = None

    def __enter__(self) -> PrivateRabbit:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @contextmanager
    def vhost(self) -> Iterator[str]:
        """A fresh vhost with all permissions for ``guest``; its broker URL; deleted after."""
        import json

        self._vhosts += 1
        name = f"t{self._vhosts}-{os.urandom(3).hex()}"
        definitions = self.directory / f"{name}.json"
        definitions.write_text(json.dumps({
            "vhosts": [{"name": name}],
            "permissions": [{"user": "guest", "vhost": name, "configure": ".*",
                             "write": ".*", "read": ".*"}]}))
        self.ctl("import_definitions", str(definitions))  # one call: vhost and permissions
        definitions.unlink()
        try:
            yield self.url(name)
        finally:
            if self.proc is not None and self.proc.poll() is None:
                self.ctl("delete_vhost", name, check=False)

    def messages(self, vhost: str) -> dict[str, int]:
        """Every queue of ``vhost`` with its messages, ready and unacknowledged together
        (as of the queue's last tick, at most 200 ms old)."""
        out = self.ctl("list_queues", "-p", vhost, "name", "messages").stdout
        counts = {}
        for line in out.splitlines():
            name, _, count = line.rpartition("\t")
            if name and count.isdigit():
                counts[name] = int(count)
        return counts

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.node, "-q",
                               "--timeout", "60", *args], env=self._env(),
                              capture_output=True, text=True, timeout=90, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"rabbitmqctl {' '.join(args)} failed ({done.returncode}): "
                                 f"{done.stderr.strip() or done.stdout.strip()}")
        return done

    def _env(self) -> dict[str, str]:
        d = self.directory
        return {**os.environ, "HOME": str(d), "RABBITMQ_NODENAME": self.node,
                "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1", "RABBITMQ_NODE_PORT": str(self.port),
                "RABBITMQ_DIST_PORT": str(self.dist_port), "ERL_EPMD_ADDRESS": "127.0.0.1",
                "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
                "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
                "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
                "RABBITMQ_MNESIA_BASE": str(d / "mnesia"), "RABBITMQ_LOG_BASE": str(d / "log"),
                "RABBITMQ_PID_FILE": str(d / "node.pid"),
                # Idle schedulers sleep instead of spinning: the node shares two cores
                # with the processes under test.
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "+sbwt none +sbwtdcpu none +sbwtdio none"}

    def _listening(self) -> bool:
        import socket

        with socket.socket() as sock:
            sock.settimeout(0.5)
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def _exited(self) -> bool:
        return self.proc is None or self.proc.poll() is not None


def redis_queued_bodies(conn: object) -> list[str]:
    """The bodies (task arguments, as JSON text) of the writes waiting in a Redis broker."""
    import base64
    import json

    from memory_worker.celery_app import WRITE_QUEUE

    bodies = []
    for raw in conn.lrange(WRITE_QUEUE, 0, -1):  # type: ignore[attr-defined]
        envelope = json.loads(raw)
        body = envelope["body"]
        if envelope["properties"].get("body_encoding") == "base64":
            body = base64.b64decode(body).decode()
        bodies.append(str(body))
    return bodies


def rabbit_queued_bodies(url: str) -> list[str]:
    """The bodies of the writes ready in a RabbitMQ vhost, taken without acknowledgement:
    closing the channel puts them back."""
    from kombu import Connection

    from memory_worker.celery_app import WRITE_QUEUE

    bodies = []
    with Connection(url, connect_timeout=5) as connection:
        channel = connection.channel()
        while (message := channel.basic_get(WRITE_QUEUE, no_ack=False)) is not None:
            body = message.body
            bodies.append(body.decode() if isinstance(body, bytes) else str(body))
        channel.close()
    return bodies
