"""Messages: validation naming the field, derived uuids, chunks that join back exactly."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from memory_worker.errors import InvalidMessage
from memory_worker.messages import (
    CHUNK_CHARS,
    Payload,
    batches,
    message_uuid,
    split,
    validate,
    zep_messages,
)

GOOD: dict[str, Any] = {"thread_id": "t-1", "role": "user", "content": "hello",
                        "client_msg_id": "m-1", "user_id": None, "metadata": None}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("thread_id", "a/b"), ("thread_id", ""), ("thread_id", 7), ("thread_id", "x" * 257),
        ("role", "bot"), ("role", None),
        ("client_msg_id", ""), ("client_msg_id", "a b"), ("client_msg_id", "x" * 129),
        ("client_msg_id", 12),
        ("content", 5), ("content", "   \n"), ("content", "x" * 101), ("content", "\ud800"),
        ("user_id", "bad id"),
        ("metadata", []), ("metadata", {"x": object()}), ("metadata", {"x": "y" * 17_000}),
        ("metadata", {"n": float("nan")}),
    ],
)
def test_each_bad_field_is_named(field: str, value: Any) -> None:
    """InvalidMessage (a ValueError) names exactly the field that is wrong."""
    args = {**GOOD, field: value}
    with pytest.raises(InvalidMessage) as info:
        validate(**args, max_content_chars=100)
    assert info.value.field == field and isinstance(info.value, ValueError)


def test_good_input_passes() -> None:
    """All four roles and a small metadata object are accepted."""
    for role in ("user", "assistant", "system", "tool"):
        validate(**{**GOOD, "role": role, "metadata": {"lang": "tr"}}, max_content_chars=100)


def test_uuids_are_derived_and_stable() -> None:
    """The same client_msg_id always gives the same uuid; chunks get their own."""
    assert message_uuid("m-1") == message_uuid("m-1") != message_uuid("m-2")
    chunk_ids = {message_uuid("m-1", i, 3) for i in range(3)}
    assert len(chunk_ids) == 3 and message_uuid("m-1") not in chunk_ids


def test_a_6000_character_message_becomes_three_ordered_chunks() -> None:
    """≤2500 characters each, metadata client_msg_id/chunk/chunks at the top level."""
    content = ("word " * 1200)[:6000]
    messages = zep_messages(Payload("t", "assistant", content, "m-9", metadata={"k": "v"}))
    assert len(messages) == 3
    assert "".join(m["content"] for m in messages) == content
    assert all(len(m["content"]) <= CHUNK_CHARS for m in messages)
    assert [(m["metadata"] or {})["chunk"] for m in messages] == [1, 2, 3]
    assert all((m["metadata"] or {})["chunks"] == 3 for m in messages)
    assert all((m["metadata"] or {})["client_msg_id"] == "m-9" for m in messages)
    assert all((m["metadata"] or {})["k"] == "v" for m in messages)
    assert {m["role_type"] for m in messages} == {"assistant"}


@given(st.text(min_size=1, max_size=12_000))
def test_split_always_joins_back_exactly(content: str) -> None:
    """Any text: pieces within the limit, in order, nothing lost or added."""
    pieces = split(content)
    assert "".join(pieces) == content
    assert all(0 < len(p) <= CHUNK_CHARS for p in pieces)


def test_batches_hold_at_most_thirty_messages() -> None:
    """Zep takes 30 messages per add."""
    messages = zep_messages(Payload("t", "user", "x" * 80_000, "m"))
    assert [len(b) for b in batches(messages)] == [30, 2]


def test_payload_round_trips_and_rejects_garbage() -> None:
    """What the task receives is validated again: garbage is a ValueError."""
    payload = Payload("t", "user", "hi", "m", metadata={"a": 1}, enqueued_at=5.0)
    assert Payload.from_json(payload.to_json()) == payload
    garbage: Any
    for garbage in ([], {"thread_id": "t"}, {**payload.to_json(), "role": "robot"}):
        with pytest.raises(ValueError):
            Payload.from_json(garbage)


def test_a_payload_to_json_carries_every_field_and_comes_back_equal() -> None:
    """Written by hand for speed: a field added to Payload must not be left out of it."""
    import dataclasses

    from memory_worker.messages import Payload

    payload = Payload(thread_id="t-1", role="tool", content="done", client_msg_id="m-1",
                      user_id="u-1", metadata={"tags": ["a", "b"], "n": 2}, enqueued_at=5.5)
    data = payload.to_json()
    assert set(data) == {field.name for field in dataclasses.fields(Payload)}
    assert Payload.from_json(data) == payload
    data["metadata"]["n"] = 3
    assert payload.metadata == {"tags": ["a", "b"], "n": 2}
