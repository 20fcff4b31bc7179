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
    with_bodies,
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
