"""The redaction contract (SPEC §6): result shape, policies, purity, idempotence."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from memory_worker.redaction import (
    PLACEHOLDERS,
    Redactor,
    redact_all_text,
    redact_pii,
    redact_text,
)

MESSAGE = (
    "Merhaba, numaram 0533 123 45 67, mailim ayse@ornek.com.tr'dir. "
    "Adres: Atatürk Cad. No: 12 Daire 3. Fiyat 2+1 için 150.000 TL, randevu 05.11.2024."
)


def _redactions_counted(field_type: str) -> float:
    value = REGISTRY.get_sample_value(
        "memory_zep_redactions_total", {"field_type": field_type}
    )
    return value or 0.0


def test_redact_pii_returns_the_contract_shape() -> None:
    """The result holds the text, per-type counts and both lengths."""
    result = redact_pii(MESSAGE)

    assert set(result) == {"text", "redactions", "original_length", "redacted_length"}
    assert result["redactions"] == {"email": 1, "phone": 1, "address": 0}
    assert result["original_length"] == len(MESSAGE)
    assert result["redacted_length"] == len(result["text"])


def test_default_policy_redacts_emails_and_phones_but_keeps_addresses() -> None:
    """Addresses are off by default (SPEC §3 MEMORY_REDACT_ADDRESS=false)."""
    text = redact_pii(MESSAGE)["text"]

    assert "[PHONE]" in text and "[EMAIL]'dir" in text
    assert "Atatürk Cad. No: 12 Daire 3" in text
    assert "2+1" in text and "150.000 TL" in text and "05.11.2024" in text


def test_address_policy_adds_address_redaction() -> None:
    """With redact_address=True the street address becomes [ADDRESS] too."""
    result = redact_pii(MESSAGE, redact_address=True)

    assert "Adres: [ADDRESS]." in result["text"]
    assert result["redactions"] == {"email": 1, "phone": 1, "address": 1}


def test_each_type_can_be_switched_off() -> None:
    """A disabled type is left alone and counted as zero."""
    result = redact_pii(MESSAGE, redact_email=False, redact_phone=False)

    assert result["text"] == MESSAGE
    assert result["redactions"] == {"email": 0, "phone": 0, "address": 0}


def test_placeholders_are_the_contract_strings() -> None:
    """Downstream readers rely on these exact placeholders."""
    assert PLACEHOLDERS == {"email": "[EMAIL]", "phone": "[PHONE]", "address": "[ADDRESS]"}


def test_redactor_is_a_reusable_callable_configured_once() -> None:
    """A Redactor keeps its policy and returns the redact_pii shape on every call."""
    redactor = Redactor(redact_email=True, redact_phone=False, redact_address=True)

    first = redactor("Tel 0533 123 45 67, a.b@example.com")
    second = redactor("Flat 4, 27 Ataturk Street")

    assert first["text"] == "Tel 0533 123 45 67, [EMAIL]"
    assert second["text"] == "[ADDRESS]"
    assert "redact_phone=False" in repr(redactor)


def test_text_functions_apply_the_default_and_the_full_policy() -> None:
    """redact_text keeps addresses, redact_all_text removes them."""
    assert "[ADDRESS]" not in redact_text(MESSAGE)
    assert "[ADDRESS]" in redact_all_text(MESSAGE)
    assert redact_text(MESSAGE) == redact_pii(MESSAGE)["text"]


def test_redaction_is_pure_and_touches_no_metric() -> None:
    """redact_pii returns its counts and leaves memory_zep_redactions_total alone."""
    before = {kind: _redactions_counted(kind) for kind in ("email", "phone", "address")}

    result = redact_pii("0533 123 45 67 ve 0542 111 22 33, x@y.com", redact_address=True)

    after = {kind: _redactions_counted(kind) for kind in ("email", "phone", "address")}
    assert result["redactions"] == {"email": 1, "phone": 2, "address": 0}
    assert after == before


def test_redacting_redacted_text_changes_nothing_and_counts_nothing() -> None:
    """Placeholders are never matched again, so a second pass is a no-op."""
    once = redact_pii(MESSAGE, redact_address=True)
    twice = redact_pii(once["text"], redact_address=True)

    assert twice["text"] == once["text"]
    assert twice["redactions"] == {"email": 0, "phone": 0, "address": 0}


@pytest.mark.parametrize(
    "text",
    ["", " ", "@", "+", "(", "[PHONE]", "\ud800", "\x00" * 10, "0" * 100, "@" * 100,
     "a@" * 50, "+90 " * 40, "İ" * 30, "Cad. " * 30],
)
def test_odd_inputs_are_returned_without_raising(text: str) -> None:
    """Empty, lone surrogates, control characters and repetitions are all just text."""
    result = redact_pii(text, redact_address=True)

    assert isinstance(result["text"], str)
