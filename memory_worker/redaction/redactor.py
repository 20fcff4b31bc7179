"""The redaction processor: a small callable configured once, applied to any text.

Kinds run one after the other, each on the text the previous one produced:
emails first (a local part may be all digits, "05331121385@outlook.com"),
then phones, then addresses.

Redacting redacted text must be a no-op, so that a later pass over a
payload or a log line never finds, counts or changes anything more. Email
and phone verdicts read only what their own replacements leave as it was:
placeholders are not words, a placeholder's brackets end a figure where its
digits did, and the characters glued to a number are never part of another
one. So one pass settles them. Two things can still move a verdict, and only
then is the pass repeated (bounded): an address replaced after the
phones (its words were cue words), and a long run of figures whose split
ran out of its budget of checks.
"""

from __future__ import annotations

from typing import TypedDict

from memory_worker.redaction.address import find_addresses
from memory_worker.redaction.email import find_emails
from memory_worker.redaction.phone import Progress, find_phones
from memory_worker.redaction.spans import replace_spans

_MAX_PASSES = 4


class RedactionCounts(TypedDict):
    """Replacements made, per field type."""

    email: int
    phone: int
    address: int


class RedactionResult(TypedDict):
    """What ``Redactor`` returns (SPEC §6)."""

    text: str
    redactions: RedactionCounts
    original_length: int
    redacted_length: int


class Redactor:
    """Replaces emails, phone numbers and (optionally) addresses by placeholders.

    Configured once with the policy; ``__call__`` is a pure function of the
    text: it returns the replacements it made per field type and touches no
    metric, so tools and notebooks can call it freely. The caller that
    publishes (``enqueue_message``) counts what it redacted.
    """

    def __init__(
        self, *, redact_email: bool = True, redact_phone: bool = True,
        redact_address: bool = False,
    ) -> None:
        self.redact_email = redact_email
        self.redact_phone = redact_phone
        self.redact_address = redact_address

    def __repr__(self) -> str:
        return (f"Redactor(redact_email={self.redact_email}, redact_phone={self.redact_phone}, "
                f"redact_address={self.redact_address})")

    def __call__(self, text: str) -> RedactionResult:
        emails = phones = addresses = 0
        redacted = text
        progress = Progress()
        for _ in range(_MAX_PASSES):
            progress.settled = True
            changed = False
            if self.redact_email and (spans := find_emails(redacted)):
                redacted, found = replace_spans(redacted, spans)
                emails += found
                changed = True
            if self.redact_phone and (spans := find_phones(redacted, progress)):
                redacted, found = replace_spans(redacted, spans)
                phones += found
                changed = True
            if self.redact_address and (spans := find_addresses(redacted)):
                redacted, found = replace_spans(redacted, spans)
                addresses += found
                changed = True
                progress.settled = False
            if not changed or progress.settled:
                break
        return {
            "text": redacted,
            "redactions": {"email": emails, "phone": phones, "address": addresses},
            "original_length": len(text),
            "redacted_length": len(redacted),
        }

