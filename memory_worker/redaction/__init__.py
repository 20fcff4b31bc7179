"""PII redaction: emails, phone numbers and street addresses become placeholders.

    >>> redact_pii("Ara beni 0533 123 45 67'den, ayse@ornek.com.tr'ye yaz")["text"]
    "Ara beni [PHONE]'den, [EMAIL]'ye yaz"

``redact_pii`` is the contract of SPEC §6; ``Redactor`` is the same thing as a
reusable processor (for payloads and log events); ``redact_text`` and
``redact_all_text`` are plain text-to-text functions for scoring tools.
Prices, dates, times, room counts, IBANs, IDs and listing numbers are kept.
"""

from __future__ import annotations

from memory_worker.redaction.redactor import RedactionCounts, RedactionResult, Redactor
from memory_worker.redaction.spans import PLACEHOLDERS

__all__ = [
    "PLACEHOLDERS",
    "RedactionCounts",
    "RedactionResult",
    "Redactor",
    "redact_all_text",
    "redact_pii",
    "redact_text",
]


# One redactor per policy, built once.
_REDACTORS = {
    (email, phone, address): Redactor(
        redact_email=email, redact_phone=phone, redact_address=address)
    for email in (False, True) for phone in (False, True) for address in (False, True)
}
_DEFAULT = _REDACTORS[True, True, False]
_ALL = _REDACTORS[True, True, True]


def redact_pii(
    text: str, *, redact_email: bool = True, redact_phone: bool = True,
    redact_address: bool = False,
) -> RedactionResult:
    """Redact ``text`` under the given policy (one ``Redactor`` per policy)."""
    return _REDACTORS[bool(redact_email), bool(redact_phone), bool(redact_address)](text)


def redact_text(text: str) -> str:
    """The default policy (emails and phones), text in, text out."""
    return _DEFAULT(text)["text"]


def redact_all_text(text: str) -> str:
    """Emails, phones and addresses, text in, text out."""
    return _ALL(text)["text"]
