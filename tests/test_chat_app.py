"""The example chat app over real HTTP: real Redis, the Zep simulator, a real broker queue."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis

from examples.chat_app import make_chat_server
from examples.chat_turn import reply_id
from memory_worker import runtime
from memory_worker.celery_app import WRITE_QUEUE
from memory_worker.config import Settings
from memory_worker.guard import Guard
from memory_worker.zep_sim import ZepSimulator
from tests.processes import ROOT, free_port, project_env, wait_for

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@contextmanager
def served_app(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The app on a free port in a thread, this process's runtime built from ``settings``.

    The previous runtime comes back after the test; messages go to the broker of
    ``settings`` (its Redis), not to the environment's.
    """
    monkeypatch.setattr(runtime, "_default", runtime._default)
    configured = runtime.configure(settings)
    server = make_chat_server("127.0.0.1", 0, quiet=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
        configured.zep.close()


@pytest.fixture
def app_settings(read_settings: Settings, tmp_path: Path) -> Settings:
    return dataclasses.replace(read_settings, spool_dir=str(tmp_path / "spool"))


@pytest.fixture
def app_url(app_settings: Settings, conn: redis.Redis, monkeypatch: pytest.MonkeyPatch
            ) -> Iterator[str]:
    with served_app(app_settings, monkeypatch) as url:
        yield url


def request(method: str, url: str, body: object = None, raw: bytes | None = None
            ) -> tuple[int, dict[str, str], bytes]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with _NO_PROXY.open(req, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def chat(app_url: str, body: object) -> tuple[int, dict[str, Any]]:
    status, _, raw = request("POST", f"{app_url}/api/chat/", body)
    return status, json.loads(raw)


def published(conn: redis.Redis) -> list[dict[str, Any]]:
    """The payloads waiting in the broker's write queue, oldest first."""
    payloads = []
    for raw in reversed(conn.lrange(WRITE_QUEUE, 0, -1)):
        message = json.loads(raw)
        _, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        payloads.append({"task_id": message["headers"]["id"], **kwargs["payload"]})
    return payloads


def test_a_conversation_reads_from_zep_then_from_the_cache(
    app_url: str, sim: ZepSimulator, conn: redis.Redis
) -> None:
    """Turn one reaches Zep (cached=false), turn two is a cache hit; each turn publishes two."""
    sim.seed("test_context_456", summary="Looking for a 2 bedroom flat")

    status, first = chat(app_url, {"message": "need a 2 bedroom",
                                   "thread_id": "test_context_456", "client_msg_id": "m-1"})
    assert status == 200, first
    assert first["trace"]["memory"] | {"took_ms": 0} == {
        "mode": "read_write", "used": True, "cached": False, "source": "zep", "took_ms": 0,
        "reason": None}
    assert first["reply"] and first["client_msg_id"] == "m-1"

    status, second = chat(app_url, {"message": "in girne", "thread_id": "test_context_456"})
    assert status == 200
    memory = second["trace"]["memory"]
    assert (memory["used"], memory["cached"], memory["source"]) == (True, True, "zep")

    # Then the user's message and the reply of each turn wait in the write queue, in order.
    generated = second["client_msg_id"]
    queue = published(conn)
    assert [(p["role"], p["client_msg_id"]) for p in queue] == [
        ("user", "m-1"), ("assistant", reply_id("m-1")),
        ("user", generated), ("assistant", reply_id(generated))]
    assert [p["content"] for p in queue[::2]] == ["need a 2 bedroom", "in girne"]
    assert queue[0]["task_id"] == first["trace"]["writes"]["user"]["task_id"]
    assert all(p["thread_id"] == "test_context_456" for p in queue)


def test_a_retried_request_publishes_nothing_twice(app_url: str, conn: redis.Redis) -> None:
    """The same client_msg_id again: both writes are duplicates, the queue keeps two."""
    body = {"message": "hello", "thread_id": "t-retry", "client_msg_id": "m-retry"}
    chat(app_url, body)
    status, again = chat(app_url, body)
    assert status == 200
    writes = again["trace"]["writes"]
    assert writes["user"]["duplicate"] and writes["assistant"]["duplicate"]
    assert len(published(conn)) == 2


def test_pii_is_redacted_before_the_message_is_published(app_url: str, conn: redis.Redis
                                                         ) -> None:
    """The queue holds [EMAIL] and [PHONE]; the trace counts them."""
    status, body = chat(app_url, {"message": "mail ayse@ornek.com.tr or 0533 123 45 67",
                                  "thread_id": "t-pii"})
    assert status == 200
    assert body["trace"]["writes"]["user"]["redactions"] == {"email": 1, "phone": 1,
                                                             "address": 0}
    user = published(conn)[0]
    assert user["content"] == "mail [EMAIL] or [PHONE]"


@pytest.mark.parametrize(("body", "kind", "field"), [
    ({"thread_id": "t"}, "InvalidMessage", "message"),
    ({"message": "   ", "thread_id": "t"}, "InvalidMessage", "message"),
    ({"message": 42, "thread_id": "t"}, "InvalidMessage", "message"),
    ({"message": "hi"}, "InvalidRequest", "thread_id"),
    ({"message": "hi", "thread_id": "bad/thread"}, "InvalidRequest", "thread_id"),
    ({"message": "hi", "thread_id": "t", "client_msg_id": "has space"},
     "InvalidMessage", "client_msg_id"),
    ({"message": "hi", "thread_id": "t", "client_msg_id": 7}, "InvalidMessage", "client_msg_id"),
    (["not", "an", "object"], "InvalidRequest", "body"),
])
def test_bad_input_is_a_400_naming_the_field(app_url: str, conn: redis.Redis, body: object,
                                              kind: str, field: str) -> None:
    """Nothing is published for a refused request."""
    status, answer = chat(app_url, body)
    assert status == 400
    assert answer["error"]["type"] == kind and answer["error"]["field"] == field
    assert published(conn) == []


def test_a_body_that_is_not_json_is_refused(app_url: str) -> None:
    status, _, raw = request("POST", f"{app_url}/api/chat/", raw=b"message=hi")
    assert status == 400 and json.loads(raw)["error"]["field"] == "body"


def test_unknown_paths_and_methods_are_refused(app_url: str) -> None:
    assert request("GET", f"{app_url}/api/chat/")[0] == 405
    assert request("GET", f"{app_url}/nowhere/")[0] == 404


def test_metrics_show_the_live_mode_and_this_process_counters(
    app_url: str, app_settings: Settings, conn: redis.Redis
) -> None:
    """memory_mode_gauge follows the shared state; the context counter is there."""
    status, headers, raw = request("GET", f"{app_url}/api/metrics/")
    text = raw.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert 'memory_mode_gauge{mode="read_write"} 1.0' in text
    assert "memory_zep_context_requests_total" in text
    assert "memory_write_dlq_size 0.0" in text

    Guard(conn, app_settings).force_now("auth")
    text = request("GET", f"{app_url}/api/metrics/")[2].decode()
    assert 'memory_mode_gauge{mode="write_only"} 1.0' in text
    assert 'memory_mode_gauge{mode="read_write"} 0.0' in text


def test_the_seeds_curl_commands_work_against_the_app_process(
    redis_url: str, conn: redis.Redis, sim: ZepSimulator, tmp_path: Path
) -> None:
    """`python -m examples.chat_app --port P`, then the seeds' curl lines as written."""
    port = free_port()
    env = project_env(redis_url, FLAG_ZEP_WRITE="true", FLAG_ZEP_READ="true",
                      ZEP_API_URL=sim.url, ZEP_API_KEY="test-key",
                      MEMORY_SPOOL_DIR=str(tmp_path / "spool"))
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = tmp_path / "app.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "examples.chat_app", "--port", str(port)],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "listening" in log.read_text(), 30, "the chat app to listen")
        base = f"http://127.0.0.1:{port}"
        post = subprocess.run(
            ["sh", "-c", f"curl -X POST {base}/api/chat/ -H \"Content-Type: application/json\" "
                         "-d '{\"message\": \"need a 2 bedroom in Girne\", "
                         "\"thread_id\": \"test-auth-drill\"}'"],
            capture_output=True, text=True, timeout=30, env={**os.environ, "NO_PROXY": "*"})
        answer = json.loads(post.stdout)
        assert answer["trace"]["memory"]["mode"] == "read_write" and answer["reply"]
        grep = subprocess.run(
            ["sh", "-c", f"curl -s {base}/api/metrics/ | grep memory_mode_gauge"],
            capture_output=True, text=True, timeout=30, env={**os.environ, "NO_PROXY": "*"})
        assert 'memory_mode_gauge{mode="read_write"} 1.0' in grep.stdout
        assert conn.llen(WRITE_QUEUE) == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0, log.read_text()
