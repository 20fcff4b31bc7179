"""``memory.mirror_message`` run in-process: what it does when its retry cannot be published.

Celery answers a failed retry publish (the broker went away mid-task) by
rejecting the message without requeue, which would drop it. The task turns that
into a requeue; the soak shows the whole story with a real broker restart.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
from celery.exceptions import Reject, Retry
from kombu.exceptions import OperationalError

from memory_worker import runtime
from memory_worker.config import Settings
from memory_worker.messages import Payload
from memory_worker.tasks.mirror import mirror_message
from memory_worker.zep_sim import Fault, ZepSimulator


@pytest.fixture
def installed(read_settings: Settings, tmp_path: Any) -> Iterator[runtime.Runtime]:
    previous = runtime._default
    yield runtime.configure(dataclasses.replace(read_settings, spool_dir=str(tmp_path)))
    runtime._default = previous


def _payload() -> dict[str, Any]:
    return Payload(thread_id="t-1", role="user", content="hello", client_msg_id="m-1").to_json()


def test_a_retry_that_cannot_be_published_requeues_the_message(
    installed: runtime.Runtime, sim: ZepSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim.ensure_session("t-1")
    sim.add_fault(Fault(method="POST", path="*/memory", status=503))
    asked: list[dict[str, Any]] = []

    def broker_gone(**options: Any) -> None:
        asked.append(options)
        raise Reject(OperationalError("Error 111 connecting to the broker"), requeue=False)

    monkeypatch.setattr(mirror_message, "retry", broker_gone)
    with pytest.raises(Reject) as raised:
        mirror_message(_payload(), 0)
    assert raised.value.requeue is True
    assert isinstance(raised.value.reason, OperationalError)
    assert asked and asked[0]["kwargs"]["failures"] == 1


def test_a_published_retry_is_raised_as_celery_expects(
    installed: runtime.Runtime, sim: ZepSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim.ensure_session("t-1")
    sim.add_fault(Fault(method="POST", path="*/memory", status=503))

    def published(**options: Any) -> Retry:
        return Retry(when=options["countdown"])

    monkeypatch.setattr(mirror_message, "retry", published)
    with pytest.raises(Retry):
        mirror_message(_payload(), 0)
