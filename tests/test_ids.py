"""One rule for thread and user ids, on the read path, the write path and at the Zep boundary."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import redis
from prometheus_client import REGISTRY

from memory_worker.config import Settings
from memory_worker.enqueue import Publisher
from memory_worker.errors import InvalidMessage, InvalidRequest
from memory_worker.ids import is_valid_id
from memory_worker.runtime import Runtime
from memory_worker.zep import ZepClient, check_id
from memory_worker.zep_sim import ZepSimulator
from tests.conftest import FakeClock

DOT_SEGMENTS = [".", ".."]
VALID = ["t", "chat-1", "a.b", "...", "user@example.com", "x:y", "A_Z-09", "x" * 256]
INVALID = [*DOT_SEGMENTS, "", "a/b", "a b", "x" * 257, "ş", None, 7]


def _requests() -> float:
    return REGISTRY.get_sample_value("memory_zep_context_requests_total") or 0.0


@pytest.mark.parametrize("value", VALID)
def test_every_caller_accepts_the_same_ids(value: str) -> None:
    """The read path, the write path and the Zep boundary agree on what is valid."""
    assert is_valid_id(value)
    assert check_id(value) == value


@pytest.mark.parametrize("value", INVALID)
def test_every_caller_refuses_the_same_ids(value: object) -> None:
    """Dot segments, slashes, spaces, over 256 characters, non-strings: refused everywhere."""
    assert not is_valid_id(value)
    with pytest.raises(InvalidRequest):
        check_id(value)


@pytest.mark.parametrize("thread_id", DOT_SEGMENTS)
def test_a_dot_segment_thread_id_is_refused_before_anything_is_counted_or_sent(
    read_settings: Settings, sim: ZepSimulator, thread_id: str,
) -> None:
    """`.` and `..` raise InvalidRequest on a cache miss too, before metrics or Zep."""
    runtime = Runtime(read_settings)
    before = _requests()
    with pytest.raises(InvalidRequest, match="thread_id"):
        runtime.fetch(thread_id, "summary")
    assert _requests() == before
    assert sim.requests() == []


@pytest.mark.parametrize("field", ["thread_id", "user_id"])
@pytest.mark.parametrize("value", DOT_SEGMENTS)
def test_a_dot_segment_id_is_refused_at_enqueue(
    settings: Settings, conn: redis.Redis, clock: FakeClock, tmp_path: Path, field: str,
    value: str,
) -> None:
    """InvalidMessage names the field, and nothing is published or stored."""
    sent: list[str] = []
    publisher = Publisher(dataclasses.replace(settings, spool_dir=str(tmp_path)), conn,
                          lambda task_id, kwargs: sent.append(task_id), clock=clock)
    args = {"thread_id": "t", "user_id": "u", field: value}
    with pytest.raises(InvalidMessage) as info:
        publisher.enqueue(args["thread_id"], "user", "hello", "m-1", user_id=args["user_id"])
    assert info.value.field == field
    assert sent == [] and conn.dbsize() == 0


def test_the_zep_client_refuses_dot_segments_in_paths(sim: ZepSimulator) -> None:
    """The boundary's own check stands behind the callers'."""
    client = ZepClient(sim.url, "test-key")
    try:
        with pytest.raises(InvalidRequest):
            client.get_memory("..", 4)
    finally:
        client.close()
    assert sim.requests() == []
