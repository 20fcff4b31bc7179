"""The redaction processor: a small callable configured once, applied to any text.

Kinds run one after the other, each on the text the previous one produced:
emails first (a local part may be all digits, "05331121385@outlook.com"),
then phones, then addresses.

Some verdicts depend on surroundings that a replacement changes: the cue
words a few words before a number, the character glued to it. So a pass is
repeated until it changes nothing; redacting redacted text is then a no-op
by construction, and a later pass over a payload or a log line can never
find, count or change anything more. One pass settles ordinary text and the
second only confirms it; the repetition is bounded all the same.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypedDict

from memory_worker.redaction.address import find_addresses
from memory_worker.redaction.email import find_emails
from memory_worker.redaction.phone import find_phones
from memory_worker.redaction.spans import Kind, Span, replace_spans

Finder = Callable[[str], list[Span]]

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
        stages: list[tuple[Kind, Finder]] = []
        if redact_email:
            stages.append(("email", find_emails))
        if redact_phone:
            stages.append(("phone", find_phones))
        if redact_address:
            stages.append(("address", find_addresses))
        self._stages = tuple(stages)

    def __repr__(self) -> str:
        return (f"Redactor(redact_email={self.redact_email}, redact_phone={self.redact_phone}, "
                f"redact_address={self.redact_address})")

    def __call__(self, text: str) -> RedactionResult:
        counts: RedactionCounts = {"email": 0, "phone": 0, "address": 0}
        redacted = text
        for _ in range(_MAX_PASSES):
            changed = False
            for kind, find in self._stages:
                redacted, found = replace_spans(redacted, find(redacted))
                counts[kind] += found
                changed = changed or found > 0
            if not changed:
                break
        return {
            "text": redacted,
            "redactions": counts,
            "original_length": len(text),
            "redacted_length": len(redacted),
        }

