"""PII redaction: emails, phone numbers and street addresses become placeholders.

    >>> redact_pii("Ara beni 0533 123 45 67'den, ayse@ornek.com.tr'ye yaz")["text"]
    "Ara beni [PHONE]'den, [EMAIL]'ye yaz"

``redact_pii`` is the contract of SPEC §6; ``Redactor`` is the same thing as a
reusable processor (for payloads and log events); ``redact_text`` and
``redact_all_text`` are plain text-to-text functions for scoring tools.
Prices, dates, times, room counts, IBANs, IDs and listing numbers are kept.
"""

from __future__ import annotations

from functools import lru_cache

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


@lru_cache(maxsize=8)
def _redactor(redact_email: bool, redact_phone: bool, redact_address: bool) -> Redactor:
    return Redactor(
        redact_email=redact_email, redact_phone=redact_phone, redact_address=redact_address
    )


def redact_pii(
    text: str, *, redact_email: bool = True, redact_phone: bool = True,
    redact_address: bool = False,
) -> RedactionResult:
    """Redact ``text`` under the given policy (one cached ``Redactor`` per policy)."""
    return _redactor(redact_email, redact_phone, redact_address)(text)


def redact_text(text: str) -> str:
    """The default policy (emails and phones), text in, text out."""
    return redact_pii(text)["text"]


def redact_all_text(text: str) -> str:
    """Emails, phones and addresses, text in, text out."""
    return redact_pii(text, redact_address=True)["text"]
