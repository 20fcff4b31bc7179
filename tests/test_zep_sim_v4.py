"""The simulator's v4 side, spoken to through the real zep-cloud SDK over HTTP."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from zep_cloud import AddMessage
from zep_cloud.client import Zep
from zep_cloud.core.api_error import ApiError
from zep_cloud.errors import BadRequestError, ConflictError, NotFoundError, UnauthorizedError

from memory_worker.zep_sim import (
    MAX_CONTENT_CHARS,
    MAX_MESSAGES_PER_ADD,
    MAX_METADATA_KEYS,
    Fault,
    MessageMark,
    ZepSimulator,
)

KEY = "test-key"
ADD = "/api/v4/threads/*/messages"


@pytest.fixture
def zep(sim: ZepSimulator) -> Iterator[Zep]:
    """The SDK as the project builds it: its own retries off, a short timeout."""
    with httpx.Client(timeout=5) as http:
        yield Zep(base_url=f"{sim.url}/api/v4", api_key=KEY, max_retries=0, timeout=5,
                  httpx_client=http)


@pytest.fixture
def raw(sim: ZepSimulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.url, timeout=5) as client:
        yield client


@pytest.fixture
def thread(zep: Zep) -> str:
    """A thread of the user ``alice``; its Zep uuid."""
    user = zep.user.create(user_id="alice")
    assert user.uuid_ is not None
    created = zep.thread.create(user_uuid=user.uuid_)
    assert created.uuid_ is not None
    return str(created.uuid_)


def said(content: str = "hello", client_msg_id: str = "c1", chunk: int = 1, chunks: int = 1,
         extra: dict[str, Any] | None = None) -> AddMessage:
    """A message as the project sends it: its id and chunk at the top of the metadata."""
    return AddMessage(role="user", name="alice", content=content, metadata={
        "client_msg_id": client_msg_id, "chunk": chunk, "chunks": chunks, **(extra or {})})


def message_text(error: ApiError) -> str | None:
    body = error.body
    if isinstance(body, dict):
        return str(body["error"]["message"])
    return body.error.message if body.error is not None else None


# users and threads


def test_a_user_gets_a_zep_uuid_and_is_found_by_its_developer_id(zep: Zep) -> None:
    """Zep assigns the uuid; ``lookup(user_id=...)`` and ``get(uuid)`` find the same user."""
    created = zep.user.create(user_id="alice", email="a@example.invalid")
    assert created.uuid_ is not None and uuid.UUID(created.uuid_)
    assert created.user_id == "alice"
    assert zep.user.lookup(user_id="alice").uuid_ == created.uuid_
    assert zep.user.get(created.uuid_).user_id == "alice"


def test_a_developer_user_id_is_taken_once(zep: Zep) -> None:
    """A second user with the same ``user_id`` is a 409 conflict."""
    zep.user.create(user_id="alice")
    with pytest.raises(ConflictError):
        zep.user.create(user_id="alice")


def test_a_thread_gets_a_zep_uuid_and_no_developer_id(zep: Zep, thread: str) -> None:
    """A v4 thread belongs to its user by uuid; lookup does not resolve it."""
    alice = zep.user.lookup(user_id="alice").uuid_
    got = zep.thread.get(thread)
    assert (got.uuid_, got.user_uuid, got.thread_id) == (thread, alice, None)
    with pytest.raises(NotFoundError):
        zep.thread.lookup(thread_id=thread)


def test_a_migrated_thread_is_resolved_by_lookup(zep: Zep, sim: ZepSimulator) -> None:
    """Only a thread that kept a developer id from an older API is found by ``thread_id``."""
    migrated = sim.add_migrated_thread("alice", "thread-1")
    assert zep.thread.lookup(thread_id="thread-1").uuid_ == migrated["uuid"]
    with pytest.raises(NotFoundError):
        zep.thread.lookup(thread_id="thread-2")


def test_the_threads_of_a_user_come_in_pages_the_sdk_follows(zep: Zep, sim: ZepSimulator) -> None:
    """Iterating the pager reads every page in creation order, and only that user's threads."""
    alice = zep.user.create(user_id="alice").uuid_
    bob = zep.user.create(user_id="bob").uuid_
    assert alice is not None and bob is not None
    mine = [zep.thread.create(user_uuid=alice).uuid_ for _ in range(5)]
    zep.thread.create(user_uuid=bob)
    sim.reset_requests()
    pager = zep.thread.list(user_uuid=alice, page_size=2)
    assert len(pager.items or []) == 2 and pager.response.total_size == 5
    assert [t.uuid_ for t in pager] == mine
    assert len(sim.requests("GET", "/api/v4/threads")) == 3
    newest_first = zep.thread.list(user_uuid=alice, page_size=2, order="desc")
    assert [t.uuid_ for t in newest_first] == mine[::-1]


def test_a_page_is_not_disturbed_by_threads_added_meanwhile(zep: Zep) -> None:
    """The cursor names the last row seen: a thread created between pages is not repeated."""
    alice = zep.user.create(user_id="alice").uuid_
    assert alice is not None
    first = [zep.thread.create(user_uuid=alice).uuid_ for _ in range(3)]
    page = zep.thread.list(user_uuid=alice, page_size=2)
    later = zep.thread.create(user_uuid=alice).uuid_
    following = page.next_page()
    assert following is not None
    assert [t.uuid_ for t in following.items or []] == [first[2], later]


def test_a_deleted_thread_is_gone(zep: Zep, thread: str) -> None:
    """Delete answers 202; then the thread is a 404."""
    assert zep.thread.with_raw_response.delete(thread).status_code == 202
    with pytest.raises(NotFoundError):
        zep.thread.get(thread)


def test_unknown_uuids_are_not_found_and_malformed_ones_are_bad_requests(zep: Zep) -> None:
    """A well-formed uuid Zep never gave is a 404; a path that is no uuid is a 400."""
    unknown = str(uuid.uuid4())
    calls: list[Callable[[], object]] = [
        lambda: zep.user.get(unknown), lambda: zep.thread.get(unknown),
        lambda: zep.thread.create(user_uuid=unknown),
        lambda: zep.thread.add_messages(unknown, messages=[said()]),
        lambda: zep.thread.get_context(unknown),
    ]
    for call in calls:
        with pytest.raises(NotFoundError):
            call()
    with pytest.raises(BadRequestError):
        zep.thread.get("thread-1")


# adding messages


def test_an_add_is_accepted_with_202_and_zep_assigns_the_message_uuids(
    zep: Zep, thread: str
) -> None:
    """The answer is 202 with the added messages, each with a uuid of Zep's."""
    answer = zep.thread.with_raw_response.add_messages(thread, messages=[said(), said("bye")])
    assert answer.status_code == 202
    added = answer.data.messages or []
    assert [m.content for m in added] == ["hello", "bye"]
    assert len({m.uuid_ for m in added}) == 2 and all(m.thread_uuid == thread for m in added)


def test_thirty_messages_fit_in_one_add_and_thirty_one_are_refused(
    zep: Zep, sim: ZepSimulator, thread: str
) -> None:
    """An add carries at most 30 messages; more is a 400 that stores none of them."""
    zep.thread.add_messages(thread, messages=[said(client_msg_id=f"a{i}")
                                              for i in range(MAX_MESSAGES_PER_ADD)])
    with pytest.raises(BadRequestError):
        zep.thread.add_messages(thread, messages=[said(client_msg_id=f"b{i}")
                                                  for i in range(MAX_MESSAGES_PER_ADD + 1)])
    assert len(sim.thread_messages(thread)) == MAX_MESSAGES_PER_ADD


def test_content_up_to_2500_characters_is_accepted_and_longer_refused(
    zep: Zep, sim: ZepSimulator, thread: str
) -> None:
    """2500 characters fit in a message; 2501 are a 400."""
    zep.thread.add_messages(thread, messages=[said("x" * MAX_CONTENT_CHARS)])
    with pytest.raises(BadRequestError):
        zep.thread.add_messages(thread, messages=[said("x" * (MAX_CONTENT_CHARS + 1))])
    assert len(sim.thread_messages(thread)) == 1


def test_a_message_uuid_set_by_the_client_is_refused(
    zep: Zep, sim: ZepSimulator, thread: str
) -> None:
    """The SDK says a message uuid must be left unset; Zep refuses one with a 400."""
    given = AddMessage.model_validate({"role": "user", "content": "hi", "uuid": str(uuid.uuid4())})
    with pytest.raises(BadRequestError) as excinfo:
        zep.thread.add_messages(thread, messages=[given])
    assert "server-assigned" in (message_text(excinfo.value) or "")
    assert sim.thread_messages(thread) == []


def test_a_repeated_message_is_stored_again(zep: Zep, sim: ZepSimulator, thread: str) -> None:
    """Zep does not deduplicate, not even on the same Idempotency-Key: exactly once is ours."""
    zep.thread.add_messages(thread, messages=[said()], idempotency_key="k-1")
    zep.thread.add_messages(thread, messages=[said()], idempotency_key="k-1")
    stored = sim.thread_messages(thread)
    assert [m["metadata"]["client_msg_id"] for m in stored] == ["c1", "c1"]
    assert stored[0]["uuid"] != stored[1]["uuid"]


def test_metadata_round_trips_and_must_be_flat(zep: Zep, thread: str) -> None:
    """Scalars and arrays of scalars come back as sent; nesting and an 11th key are a 400."""
    zep.thread.add_messages(thread, messages=[said(extra={"tags": ["a", "b"], "urgent": True,
                                                           "score": 0.5})])
    listed = list(zep.thread.list_messages(thread))
    assert listed[0].metadata == {"client_msg_id": "c1", "chunk": 1, "chunks": 1,
                                  "tags": ["a", "b"], "urgent": True, "score": 0.5}
    with pytest.raises(BadRequestError):
        zep.thread.add_messages(thread, messages=[said(extra={"nested": {"a": 1}})])
    with pytest.raises(BadRequestError):
        zep.thread.add_messages(thread, messages=[said(extra={
            f"k{i}": i for i in range(MAX_METADATA_KEYS - 2)})])
    assert len(list(zep.thread.list_messages(thread))) == 1


def test_messages_are_listed_in_pages_oldest_or_newest_first(
    zep: Zep, sim: ZepSimulator, thread: str
) -> None:
    """``list_messages`` pages by cursor in ``created_at`` order, with role, name and time."""
    for start in (0, 3, 6):
        zep.thread.add_messages(thread, messages=[
            said(f"turn {i}", client_msg_id=f"c{i}") for i in range(start, min(start + 3, 7))])
    sim.reset_requests()
    oldest_first = list(zep.thread.list_messages(thread, page_size=3, order_by="created_at"))
    assert [m.content for m in oldest_first] == [f"turn {i}" for i in range(7)]
    assert len(sim.requests("GET", "*/messages")) == 3
    assert {(m.role, m.name) for m in oldest_first} == {("user", "alice")}
    assert all(m.created_at for m in oldest_first)
    newest_first = list(zep.thread.list_messages(thread, page_size=3, order="desc"))
    assert [m.content for m in newest_first] == [f"turn {i}" for i in reversed(range(7))]


def test_a_cursor_that_zep_did_not_make_is_a_bad_request(zep: Zep, thread: str) -> None:
    """Garbage in ``cursor`` is a 400, not an empty page."""
    with pytest.raises(BadRequestError):
        zep.thread.list_messages(thread, cursor="not-a-cursor")


# context and summary


def test_context_and_summary_are_what_was_seeded(
    zep: Zep, sim: ZepSimulator, raw: httpx.Client, thread: str
) -> None:
    """Unseeded, both are empty; seeded through the control API, the SDK returns them."""
    assert zep.thread.get_context(thread).context is None
    assert zep.thread.get_summary(thread).summary is None
    seeded = raw.post(f"/_sim/v4/threads/{thread}/seed",
                      json={"context": "FACTS:\n- Alice likes tea", "summary": "They talked."})
    assert seeded.status_code == 200
    assert zep.thread.get_context(thread).context == "FACTS:\n- Alice likes tea"
    summary = zep.thread.get_summary(thread)
    assert (summary.summary, summary.thread_uuid) == ("They talked.", thread)
    sim.seed_thread(thread, context="later")
    assert zep.thread.get_context(thread).context == "later"


# authentication


def test_a_wrong_key_is_unauthorized(sim: ZepSimulator, thread: str) -> None:
    """Zep answers 401, in the shape of the SDK's typed error, to a key it does not know."""
    with httpx.Client(timeout=5) as http:
        wrong = Zep(base_url=f"{sim.url}/api/v4", api_key="wrong-key", max_retries=0,
                    httpx_client=http)
        with pytest.raises(UnauthorizedError):
            wrong.thread.add_messages(thread, messages=[said()])
        with pytest.raises(UnauthorizedError):
            wrong.thread.get_context(thread)
    assert sim.thread_messages(thread) == []


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/api/v4/users"), ("POST", "/api/v4/users/lookup"), ("GET", "/api/v4/threads"),
    ("POST", "/api/v4/threads"), ("GET", f"/api/v4/threads/{uuid.uuid4()}"),
    ("POST", f"/api/v4/threads/{uuid.uuid4()}/messages"),
    ("GET", f"/api/v4/threads/{uuid.uuid4()}/messages"),
    ("GET", f"/api/v4/threads/{uuid.uuid4()}/context"),
    ("GET", f"/api/v4/threads/{uuid.uuid4()}/summary"),
])
def test_every_v4_route_needs_the_key(raw: httpx.Client, method: str, path: str) -> None:
    """Without ``Authorization`` every route is a 401 with a v4 error body."""
    answer = raw.request(method, path, json={})
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "unauthorized"


# faults


def test_a_fault_on_the_add_route_shows_its_status_and_retry_after_on_the_sdk_error(
    zep: Zep, sim: ZepSimulator, thread: str
) -> None:
    """A 429 with ``Retry-After`` on any thread's add reaches the caller as the SDK's error."""
    sim.add_fault(Fault(method="POST", path=ADD, status=429, headers={"Retry-After": "7"},
                        times=1))
    assert list(zep.thread.list_messages(thread)) == []
    with pytest.raises(ApiError) as excinfo:
        zep.thread.add_messages(thread, messages=[said()])
    assert excinfo.value.status_code == 429
    assert (excinfo.value.headers or {})["retry-after"] == "7"
    assert excinfo.value.body["error"]["code"] == "rate_limited"
    assert sim.thread_messages(thread) == []
    zep.thread.add_messages(thread, messages=[said()])
    assert len(sim.thread_messages(thread)) == 1


def test_store_then_500_stores_the_add_and_a_resend_stores_it_again(
    zep: Zep, sim: ZepSimulator, thread: str
) -> None:
    """With ``process_first`` the add lands, the client sees a 500, and Zep keeps a resend too."""
    sim.add_fault(Fault(method="POST", path=ADD, status=500, process_first=True, times=1))
    with pytest.raises(ApiError) as excinfo:
        zep.thread.add_messages(thread, messages=[said()])
    assert excinfo.value.status_code == 500
    assert [m["metadata"]["client_msg_id"] for m in sim.thread_messages(thread)] == ["c1"]
    zep.thread.add_messages(thread, messages=[said()])
    assert len(sim.thread_messages(thread)) == 2
    assert [r.status for r in sim.requests_carrying("c1")] == [500, 202]


def test_a_dropped_add_has_no_answer_and_is_stored_only_with_process_first(
    zep: Zep, sim: ZepSimulator, thread: str
) -> None:
    """A drop is a protocol error at the SDK; ``process_first`` decides whether it landed."""
    sim.add_fault(Fault(method="POST", path=ADD, drop=True, times=1))
    with pytest.raises(httpx.RemoteProtocolError):
        zep.thread.add_messages(thread, messages=[said(client_msg_id="lost")])
    sim.add_fault(Fault(method="POST", path=ADD, drop=True, process_first=True, times=1))
    with pytest.raises(httpx.RemoteProtocolError):
        zep.thread.add_messages(thread, messages=[said(client_msg_id="landed")])
    stored = sim.thread_messages(thread)
    assert [m["metadata"]["client_msg_id"] for m in stored] == ["landed"]
    assert [r.status for r in sim.requests("POST", ADD)] == [None, None]


def test_a_fault_without_a_body_answers_in_the_v4_error_shape(
    zep: Zep, sim: ZepSimulator, thread: str
) -> None:
    """A 404 fault parses as the SDK's typed ``NotFoundError`` with its message."""
    sim.add_fault(Fault(method="GET", path="/api/v4/threads/*/context", status=404, times=1))
    with pytest.raises(NotFoundError) as excinfo:
        zep.thread.get_context(thread)
    assert message_text(excinfo.value) == "Not Found"


# request log


def test_the_request_log_names_the_messages_and_idempotency_key_of_each_add(
    zep: Zep, sim: ZepSimulator, raw: httpx.Client, thread: str
) -> None:
    """Each add lists ``client_msg_id`` and ``chunk`` per message, and its Idempotency-Key."""
    sim.reset_requests()
    zep.thread.add_messages(thread, idempotency_key="k-1", messages=[
        said("a", client_msg_id="long", chunk=1, chunks=2),
        said("b", client_msg_id="long", chunk=2, chunks=2)])
    zep.thread.add_messages(thread, messages=[said(client_msg_id="short")])
    list(zep.thread.list_messages(thread))
    logged = raw.get("/_sim/requests").json()["requests"]
    assert [(r["method"], r["messages"]) for r in logged] == [
        ("POST", [{"client_msg_id": "long", "chunk": 1}, {"client_msg_id": "long", "chunk": 2}]),
        ("POST", [{"client_msg_id": "short", "chunk": 1}]),
        ("GET", []),
    ]
    assert logged[0]["idempotency_key"] == "k-1"
    assert logged[1]["idempotency_key"] not in (None, "k-1")
    assert logged[2]["idempotency_key"] is None
    assert len(sim.requests_carrying("long", chunk=2)) == 1
    assert sim.requests("POST")[0].messages == (MessageMark("long", 1), MessageMark("long", 2))


def test_the_request_log_names_the_messages_of_v2_adds_the_same_way(
    sim: ZepSimulator, raw: httpx.Client
) -> None:
    """One log for both APIs: a v2 add is recorded with its messages too."""
    sim.ensure_session("thread-1")
    body = {"messages": [{"uuid": "m-1", "role_type": "user", "content": "hi",
                          "metadata": {"client_msg_id": "c9", "chunk": 1, "chunks": 1}}]}
    answer = raw.post("/api/v2/sessions/thread-1/memory", json=body,
                      headers={"Authorization": f"Api-Key {KEY}"})
    assert answer.status_code == 200
    assert [r.status for r in sim.requests_carrying("c9", chunk=1)] == [200]


# control API


def test_the_control_api_makes_lists_and_shows_v4_threads(
    zep: Zep, sim: ZepSimulator, raw: httpx.Client
) -> None:
    """Threads can be made, listed by user and read back over HTTP; a reset forgets them."""
    made = raw.post("/_sim/v4/threads", json={"user_id": "alice", "thread_id": "legacy"})
    assert made.status_code == 201
    thread = made.json()["uuid"]
    zep.thread.add_messages(thread, messages=[said()])
    listed = raw.get("/_sim/v4/threads", params={"user_id": "alice"}).json()["threads"]
    assert [t["uuid"] for t in listed] == [thread]
    stored = raw.get(f"/_sim/v4/threads/{thread}/messages").json()["messages"]
    assert [m["content"] for m in stored] == ["hello"]
    assert raw.post("/_sim/reset").status_code == 200
    assert sim.threads_of() == []
    with pytest.raises(NotFoundError):
        zep.user.lookup(user_id="alice")
