"""The soak's own checks can fail: its leak search finds what it looks for, also base64-encoded."""

from __future__ import annotations

import base64
import json

from scripts.soak import (
    PLANS,
    answered,
    content,
    email,
    leak_needles,
    phone,
    pii_in,
    weather_503_messages,
    with_bodies,
    write_phases,
)


def test_every_planted_email_and_phone_is_found_as_written_and_in_e164() -> None:
    needles = set(leak_needles(PLANS["short"]))
    text = f"log line: {content(3)} and +90{phone(6)[3:].replace(' ', '')}."
    assert pii_in(text) & needles == {email(3), phone(3), phone(6).replace(" ", "")}


def test_a_celery_body_in_the_broker_is_decoded_before_the_search() -> None:
    body = base64.b64encode(json.dumps([[], {"payload": {"content": content(9)}}]).encode())
    aof = f'LPUSH memory_writes {{"body": "{body.decode()}", "content-encoding": "utf-8"}}'
    assert email(9) not in aof
    assert email(9) in pii_in(with_bodies(aof))


def test_redacted_text_and_logged_floats_are_no_leak() -> None:
    needles = set(leak_needles(PLANS["short"]))
    text = "Write to [EMAIL] or call [PHONE]; succeeded in 0.02855553300014435s"
    assert pii_in(text) & needles == set()


def test_a_read_counts_as_back_when_zep_answered_it_found_or_not() -> None:
    assert answered("zep", None) and answered("error", "not_found")
    assert not answered("write_only_forced", "probe_failed")
    assert not answered("error", "timeout")


def test_adds_are_tallied_by_the_phase_they_arrived_in() -> None:
    def add(at: float, status: int | None) -> dict[str, object]:
        return {"method": "POST", "path": "/api/v2/sessions/t/memory", "time": at,
                "status": status}

    requests = [add(1, 200), add(2, 503), add(10, 503), add(12, 503), add(21, 200),
                add(30, None), {"method": "GET", "path": "/api/v2/sessions/t/memory",
                                "time": 3, "status": 503},
                {"method": "POST", "path": "/api/v2/sessions", "time": 4, "status": 503}]
    phases = write_phases(requests, {"start": 10, "end": 12}, weather_end=25)
    assert phases == {"weather": {"200": 2, "503": 1}, "outage": {"503": 2},
                      "calm": {"None": 1}}
    # Before the weather ended, nothing is calm yet.
    assert write_phases(requests, {})["calm"] == {}
    assert write_phases(requests, {})["weather"] == {"200": 2, "503": 3, "None": 1}


def test_an_outage_met_by_reads_already_forced_off_counts_as_guarded() -> None:
    """No downgrade in the window is fine only when its reads were blocked, not failing."""
    from scripts.soak import held_into_outage

    outage = {"start": 10.0, "end": 20.0}
    blocked = [[12.0, 1.0, "write_only_forced", "probe_failed"]] * 5
    failing = [[13.0, 250.0, "error", "server_error"]] * 3
    assert held_into_outage([], blocked, outage)
    assert not held_into_outage([], blocked + failing, outage)  # failures went uncounted
    assert not held_into_outage([], [], outage)  # no read in the window proves nothing
    assert not held_into_outage([{"time": 12.0}], blocked, outage)  # one downgrade: the rule


def test_the_messages_the_weather_met_are_counted_by_what_each_503_add_carried() -> None:
    """An add of three queued messages answered 503 met three messages."""
    def add(at: float, status: int, carried: int) -> dict[str, object]:
        return {"method": "POST", "path": "/api/v4/threads/x/messages", "time": at,
                "status": status, "messages": [{"client_msg_id": f"m{i}"} for i in range(carried)]}

    requests = [add(1, 503, 3), add(2, 201, 5), add(3, 503, 1), add(11, 503, 4),
                add(30, 503, 2)]
    assert weather_503_messages(requests, {"start": 10, "end": 12}, weather_end=25) == 4
