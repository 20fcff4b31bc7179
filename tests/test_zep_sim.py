"""The Zep simulator, spoken to through the real zep-python SDK and raw HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from zep_python import Message
from zep_python.base_client import BaseClient
from zep_python.core.api_error import ApiError

from memory_worker.zep_sim import (
    DUPLICATE_UUID,
    MAX_CONTENT_CHARS,
    MAX_MESSAGES_PER_ADD,
    Fault,
    ZepSimulator,
)
from memory_worker.zep_sim.faults import FaultBook

KEY = "test-key"


@pytest.fixture
def sim() -> Iterator[ZepSimulator]:
    with ZepSimulator(api_key=KEY) as simulator:
        yield simulator


@pytest.fixture
def sdk(sim: ZepSimulator) -> Iterator[BaseClient]:
    http = httpx.Client(timeout=5)
    yield BaseClient(base_url=f"{sim.url}/api/v2", api_key=KEY, httpx_client=http, timeout=5)
    http.close()


@pytest.fixture
def raw(sim: ZepSimulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.url, timeout=5) as client:
        yield client


def message(uuid: str, content: str = "hello", **extra: Any) -> Message:
    return Message(uuid=uuid, role="alice", role_type="user", content=content, **extra)


def eventually(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    """Wait until ``condition`` holds (for effects another thread completes)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.005)


def refusal(excinfo: pytest.ExceptionInfo[ApiError]) -> tuple[int | None, str | None]:
    body = excinfo.value.body
    return excinfo.value.status_code, getattr(body, "message", None) or body.get("message")


# Zep's endpoints


def test_users_can_be_added_and_read_back(sdk: BaseClient) -> None:
    """A user added through the SDK is returned by its id."""
    sdk.user.add(user_id="alice", email="a@example.invalid")
    assert sdk.user.get("alice").user_id == "alice"


def test_an_unknown_user_is_not_found(sdk: BaseClient) -> None:
    """Reading a user that was never added is a 404."""
    with pytest.raises(ApiError) as excinfo:
        sdk.user.get("nobody")
    assert excinfo.value.status_code == 404


def test_sessions_are_created_for_a_user_and_read_back(sdk: BaseClient) -> None:
    """A session keeps its id and the user it was created for."""
    sdk.user.add(user_id="alice")
    sdk.memory.add_session(session_id="thread-1", user_id="alice")
    session = sdk.memory.get_session("thread-1")
    assert (session.session_id, session.user_id) == ("thread-1", "alice")


def test_a_session_for_an_unknown_user_is_refused(sdk: BaseClient) -> None:
    """Creating a session for a user Zep does not know is a 404."""
    with pytest.raises(ApiError) as excinfo:
        sdk.memory.add_session(session_id="thread-1", user_id="nobody")
    assert excinfo.value.status_code == 404


def test_a_session_cannot_be_created_twice(sdk: BaseClient) -> None:
    """The second creation of a session is a 400 saying it already exists."""
    sdk.memory.add_session(session_id="thread-1")
    with pytest.raises(ApiError) as excinfo:
        sdk.memory.add_session(session_id="thread-1")
    status, text = refusal(excinfo)
    assert status == 400 and "already exists" in (text or "")


def test_messages_keep_their_uuid_role_and_metadata(sim: ZepSimulator, sdk: BaseClient) -> None:
    """What the SDK sends is what the session's messages list returns."""
    sdk.memory.add_session(session_id="thread-1")
    sdk.memory.add("thread-1", messages=[message("m-1", metadata={"client_msg_id": "c1"})])
    listed = sdk.memory.get_session_messages("thread-1").messages or []
    assert [(m.uuid_, m.role, m.role_type, m.content, m.metadata) for m in listed] == [
        ("m-1", "alice", "user", "hello", {"client_msg_id": "c1"})
    ]
    assert sim.messages("thread-1")[0]["uuid"] == "m-1"


def test_memory_returns_the_last_messages_oldest_first_with_seeded_summary_and_facts(
    sim: ZepSimulator, sdk: BaseClient
) -> None:
    """``lastn`` picks the newest messages; summary, context and facts come as Zep shapes them."""
    sdk.memory.add_session(session_id="thread-1")
    sdk.memory.add("thread-1", messages=[message(f"m-{i}", f"turn {i}") for i in range(5)])
    sim.seed("thread-1", summary="They talked.", facts=["Alice likes tea"])
    memory = sdk.memory.get("thread-1", lastn=2)
    assert [m.content for m in memory.messages or []] == ["turn 3", "turn 4"]
    assert memory.summary is not None and memory.summary.content == "They talked."
    assert memory.facts == ["Alice likes tea"]
    assert [f.fact for f in memory.relevant_facts or []] == ["Alice likes tea"]
    assert "Alice likes tea" in getattr(memory, "context", "")


def test_memory_of_an_unknown_session_is_not_found(sdk: BaseClient) -> None:
    """Reading the memory of a session that does not exist is a 404."""
    with pytest.raises(ApiError) as excinfo:
        sdk.memory.get("thread-404")
    assert excinfo.value.status_code == 404


def test_adding_to_an_unknown_session_is_not_found(sdk: BaseClient) -> None:
    """Messages for a session that does not exist are refused with a 404."""
    with pytest.raises(ApiError) as excinfo:
        sdk.memory.add("thread-404", messages=[message("m-1")])
    assert excinfo.value.status_code == 404


# Zep's rules


def test_a_repeated_uuid_is_refused_with_zeps_message(sdk: BaseClient) -> None:
    """The same uuid twice is a 400 whose JSON body says ``message_uuid already exists``."""
    sdk.memory.add_session(session_id="thread-1")
    sdk.memory.add("thread-1", messages=[message("m-1")])
    with pytest.raises(ApiError) as excinfo:
        sdk.memory.add("thread-1", messages=[message("m-1")])
    assert refusal(excinfo) == (400, DUPLICATE_UUID)


def test_an_add_with_one_repeated_uuid_stores_nothing(sim: ZepSimulator, sdk: BaseClient) -> None:
    """The whole add is refused: the new messages next to a repeated one are not stored."""
    sdk.memory.add_session(session_id="thread-1")
    sdk.memory.add("thread-1", messages=[message("m-1")])
    with pytest.raises(ApiError):
        sdk.memory.add("thread-1", messages=[message("m-2"), message("m-1")])
    assert [m["uuid"] for m in sim.messages("thread-1")] == ["m-1"]


def test_content_up_to_2500_characters_is_accepted_and_longer_refused(
    sim: ZepSimulator, sdk: BaseClient
) -> None:
    """2500 characters fit in a message; 2501 are a 400."""
    sdk.memory.add_session(session_id="thread-1")
    sdk.memory.add("thread-1", messages=[message("m-1", "x" * MAX_CONTENT_CHARS)])
    with pytest.raises(ApiError) as excinfo:
        sdk.memory.add("thread-1", messages=[message("m-2", "x" * (MAX_CONTENT_CHARS + 1))])
    assert excinfo.value.status_code == 400
    assert len(sim.messages("thread-1")) == 1


def test_thirty_messages_fit_in_one_add_and_thirty_one_do_not(
    sim: ZepSimulator, sdk: BaseClient
) -> None:
    """An add carries at most 30 messages."""
    sdk.memory.add_session(session_id="thread-1")
    sdk.memory.add("thread-1", messages=[message(f"a-{i}") for i in range(MAX_MESSAGES_PER_ADD)])
    with pytest.raises(ApiError) as excinfo:
        sdk.memory.add(
            "thread-1", messages=[message(f"b-{i}") for i in range(MAX_MESSAGES_PER_ADD + 1)]
        )
    assert excinfo.value.status_code == 400
    assert len(sim.messages("thread-1")) == MAX_MESSAGES_PER_ADD


def test_a_wrong_api_key_is_unauthorized(sim: ZepSimulator) -> None:
    """Zep answers 401 to a key it was not started with."""
    with httpx.Client(timeout=5) as http:
        wrong = BaseClient(base_url=f"{sim.url}/api/v2", api_key="wrong-key", httpx_client=http)
        with pytest.raises(ApiError) as excinfo:
            wrong.memory.get("thread-1")
    assert excinfo.value.status_code == 401


def test_a_missing_api_key_is_unauthorized(raw: httpx.Client) -> None:
    """A request without ``Authorization`` is a 401."""
    assert raw.get("/api/v2/sessions/thread-1/memory").status_code == 401


# faults


def test_a_fault_answers_with_its_status_and_json_body_for_its_count(
    sim: ZepSimulator, sdk: BaseClient
) -> None:
    """A rule with ``times`` is used up, then Zep answers normally again."""
    sdk.memory.add_session(session_id="thread-1")
    sim.add_fault(Fault(method="GET", path="*/memory", status=503, body={"message": "down"},
                        times=2))
    for _ in range(2):
        with pytest.raises(ApiError) as excinfo:
            sdk.memory.get("thread-1")
        assert refusal(excinfo) == (503, "down")
    assert sdk.memory.get("thread-1").messages == []


def test_a_fault_without_a_count_lasts_until_cleared(sim: ZepSimulator, sdk: BaseClient) -> None:
    """A rule without ``times`` answers every matching request until the faults are cleared."""
    sdk.memory.add_session(session_id="thread-1")
    sim.add_fault(Fault(path="/api/v2/sessions/thread-1/memory", status=500))
    for _ in range(3):
        with pytest.raises(ApiError):
            sdk.memory.get("thread-1")
    sim.clear_faults()
    assert sdk.memory.get("thread-1").messages == []


def test_a_fault_only_matches_its_method_and_path(sim: ZepSimulator, sdk: BaseClient) -> None:
    """A rule for reads of one session leaves writes and other sessions alone."""
    sdk.memory.add_session(session_id="thread-1")
    sdk.memory.add_session(session_id="thread-2")
    sim.add_fault(Fault(method="GET", path="*/thread-1/memory", status=500))
    sdk.memory.add("thread-1", messages=[message("m-1")])
    assert sdk.memory.get("thread-2").messages == []


def test_a_raw_body_and_extra_headers_are_sent_as_given(
    sim: ZepSimulator, raw: httpx.Client
) -> None:
    """A non-JSON body and a ``Retry-After`` header reach the client unchanged."""
    sim.add_fault(Fault(status=429, raw_body="<html>slow down</html>",
                        headers={"Retry-After": "12"}))
    answer = raw.get("/api/v2/sessions/thread-1/memory")
    assert (answer.status_code, answer.text, answer.headers["retry-after"]) == (
        429, "<html>slow down</html>", "12"
    )


def test_latency_delays_the_answer_past_a_short_client_timeout(
    sim: ZepSimulator, raw: httpx.Client
) -> None:
    """A client that waits less than the latency times out."""
    sim.add_fault(Fault(latency_ms=2000))
    with pytest.raises(httpx.ReadTimeout):
        raw.get("/api/v2/sessions/thread-1/memory", timeout=0.05)


def test_a_trickled_body_arrives_in_many_pieces_after_the_headers(
    sim: ZepSimulator, raw: httpx.Client
) -> None:
    """Headers come at once; the body follows a few bytes at a time and is complete."""
    sim.ensure_session("thread-1")
    sim.add_fault(Fault(trickle_bytes=8, trickle_interval_ms=1))
    headers = {"Authorization": f"Api-Key {KEY}"}
    with raw.stream("GET", "/api/v2/sessions/thread-1/memory", headers=headers) as answer:
        assert answer.status_code == 200
        pieces = list(answer.iter_raw())
    assert len(pieces) > 5
    assert json.loads(b"".join(pieces))["messages"] == []


def test_a_dropped_connection_gets_no_answer(sim: ZepSimulator, raw: httpx.Client) -> None:
    """``drop`` closes the connection without a status line."""
    sim.add_fault(Fault(drop=True))
    with pytest.raises(httpx.RemoteProtocolError):
        raw.get("/api/v2/sessions/thread-1/memory")


def test_a_reset_connection_is_refused_by_a_tcp_reset(sim: ZepSimulator, raw: httpx.Client) -> None:
    """``reset`` aborts the connection."""
    sim.add_fault(Fault(reset=True))
    with pytest.raises(httpx.TransportError):
        raw.get("/api/v2/sessions/thread-1/memory")


def test_store_then_fail_stores_the_messages_and_answers_500(
    sim: ZepSimulator, sdk: BaseClient
) -> None:
    """With ``process_first`` the add happens, then the client sees a 500."""
    sdk.memory.add_session(session_id="thread-1")
    sim.add_fault(Fault(method="POST", path="*/memory", status=500, process_first=True, times=1))
    with pytest.raises(ApiError) as excinfo:
        sdk.memory.add("thread-1", messages=[message("m-1")])
    assert excinfo.value.status_code == 500
    assert [m["uuid"] for m in sim.messages("thread-1")] == ["m-1"]


def test_store_then_stall_stores_the_messages_and_outlasts_the_client(
    sim: ZepSimulator, sdk: BaseClient
) -> None:
    """With ``process_first`` and a long latency, the add is stored but never answered in time."""
    sdk.memory.add_session(session_id="thread-1")
    sim.add_fault(Fault(method="POST", path="*/memory", latency_ms=5000, process_first=True))
    with httpx.Client(timeout=0.2) as http:
        impatient = BaseClient(base_url=f"{sim.url}/api/v2", api_key=KEY, httpx_client=http,
                               timeout=0.2)
        with pytest.raises(httpx.ReadTimeout):
            impatient.memory.add("thread-1", messages=[message("m-1")])
    eventually(lambda: [m["uuid"] for m in sim.messages("thread-1")] == ["m-1"])


# control API and request log


def test_the_control_api_installs_lists_and_clears_faults(raw: httpx.Client) -> None:
    """Faults can be managed over HTTP with JSON."""
    created = raw.post("/_sim/faults", json={"method": "GET", "path": "*/memory", "status": 502,
                                             "raw_body": "bad gateway", "times": 1})
    assert created.status_code == 201
    listed = raw.get("/_sim/faults").json()["faults"]
    assert [(f["id"], f["status"], f["remaining"]) for f in listed] == [
        (created.json()["id"], 502, 1)
    ]
    answer = raw.get("/api/v2/sessions/x/memory", headers={"Authorization": f"Api-Key {KEY}"})
    assert (answer.status_code, answer.text) == (502, "bad gateway")
    assert raw.get("/_sim/faults").json()["faults"] == []
    raw.post("/_sim/faults", json={"status": 500})
    assert raw.delete("/_sim/faults").status_code == 200
    assert raw.get("/_sim/faults").json()["faults"] == []


def test_the_control_api_refuses_a_malformed_fault(raw: httpx.Client) -> None:
    """Unknown fields and wrong types are a 400, not a silent no-op."""
    assert raw.post("/_sim/faults", json={"stauts": 500}).status_code == 400
    assert raw.post("/_sim/faults", json={"status": "500"}).status_code == 400
    assert raw.post("/_sim/faults", json={"times": 0}).status_code == 400
    assert raw.post("/_sim/faults", json={"probability": 0}).status_code == 400
    assert raw.post("/_sim/faults", json={"probability": 1.5}).status_code == 400
    assert raw.post("/_sim/faults", json={"probability": True}).status_code == 400


def test_chance_rules_compose_in_order_into_the_shares_they_promise() -> None:
    """5 %, then 5/95, then 20/90 of what is left: 5 %, 5 % and 20 % of all requests."""
    book = FaultBook(seed=7)
    book.add(Fault(status=501, probability=0.05))
    book.add(Fault(status=502, probability=0.05 / 0.95))
    book.add(Fault(status=503, probability=0.20 / 0.90))
    book.add(Fault(status=429, times=10))
    total = 20_000
    taken = [book.take("POST", "/api/v2/sessions/t/memory") for _ in range(total)]
    counts = {status: sum(1 for f in taken if f is not None and f.status == status)
              for status in (501, 502, 503, 429)}
    # Binomial standard deviations: ~31 for 5 %, ~57 for 20 %; 5 sigma either side.
    assert abs(counts[501] - 1000) < 155
    assert abs(counts[502] - 1000) < 155
    assert abs(counts[503] - 4000) < 285
    # The counted rule is used up only by the requests the chance rules passed over.
    assert counts[429] == 10
    assert sum(1 for f in taken if f is None) == total - sum(counts.values())


def test_the_control_api_seeds_memory_and_shows_stored_messages(
    raw: httpx.Client, sdk: BaseClient
) -> None:
    """Seeding over HTTP creates the session; its stored messages can be read back."""
    seeded = raw.post("/_sim/sessions/thread-1/seed",
                      json={"summary": "S", "facts": ["F"], "user_id": "alice"})
    assert seeded.status_code == 200
    sdk.memory.add("thread-1", messages=[message("m-1")])
    assert sdk.memory.get("thread-1").facts == ["F"]
    stored = raw.get("/_sim/sessions/thread-1/messages").json()["messages"]
    assert [m["uuid"] for m in stored] == ["m-1"]


def test_the_request_log_records_zep_calls_but_not_control_calls(
    sim: ZepSimulator, sdk: BaseClient, raw: httpx.Client
) -> None:
    """Each Zep request is logged with method, path, time and status; a drop has no status."""
    sim.add_fault(Fault(method="GET", drop=True, times=1))
    with pytest.raises(httpx.RemoteProtocolError):
        sdk.memory.get("thread-1")
    with pytest.raises(ApiError):
        sdk.memory.get("thread-1")
    raw.get("/_sim/faults")
    logged = raw.get("/_sim/requests").json()["requests"]
    assert [(r["method"], r["path"], r["status"]) for r in logged] == [
        ("GET", "/api/v2/sessions/thread-1/memory", None),
        ("GET", "/api/v2/sessions/thread-1/memory", 404),
    ]
    assert logged[0]["time"] <= logged[1]["time"]
    assert len(sim.requests(method="GET", path="*/memory")) == 2
    raw.delete("/_sim/requests")
    assert sim.requests() == []


def test_a_full_reset_forgets_sessions_faults_and_the_log(
    sim: ZepSimulator, sdk: BaseClient, raw: httpx.Client
) -> None:
    """After ``/_sim/reset`` the simulator is as new."""
    sdk.memory.add_session(session_id="thread-1")
    sim.add_fault(Fault(method="POST", path="/nothing", status=500))
    assert raw.post("/_sim/reset").status_code == 200
    assert (sim.faults.listing(), sim.requests()) == ([], [])
    with pytest.raises(ApiError) as excinfo:
        sdk.memory.get_session("thread-1")
    assert excinfo.value.status_code == 404


# life cycle


def test_closing_ends_stalled_handlers_and_frees_their_threads(sim: ZepSimulator) -> None:
    """A handler waiting out a long latency stops when the simulator closes."""
    sim.add_fault(Fault(latency_ms=60_000))
    before = set(threading.enumerate())
    outcome: list[BaseException] = []

    def stalled_request() -> None:
        try:
            httpx.get(f"{sim.url}/api/v2/sessions/x/memory", timeout=30)
        except httpx.HTTPError as exc:
            outcome.append(exc)

    client = threading.Thread(target=stalled_request)
    client.start()
    eventually(lambda: any(t not in before and t is not client for t in threading.enumerate()))
    sim.close()
    client.join(10)
    assert not client.is_alive() and len(outcome) == 1
    assert [t for t in threading.enumerate() if t not in before and t.is_alive()] == []


def test_serve_runs_until_terminated() -> None:
    """The blocking entry point serves, reports its URL and exits cleanly on SIGTERM."""
    code = (
        "from memory_worker.zep_sim import serve\n"
        "serve('127.0.0.1', 0, 'test-key', on_ready=lambda url: print(url, flush=True))\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert httpx.get(f"{url}/_sim/health", timeout=5).json() == {"ok": True}
        process.terminate()
        assert process.wait(timeout=10) == 0
    finally:
        process.kill()
