"""Found PII as spans of the input, and their replacement by placeholders.

Each finder reports ``Span`` values in the coordinates of the text it was
given; ``replace_spans`` turns them into the redacted text. Placeholders hold
no digit and no ``@``, and no finder reads ``[`` or ``]`` as part of a match,
so a placeholder itself is never matched again.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, NamedTuple

Kind = Literal["email", "phone", "address"]

KINDS: tuple[Kind, ...] = ("email", "phone", "address")

PLACEHOLDERS: dict[Kind, str] = {
    "email": "[EMAIL]",
    "phone": "[PHONE]",
    "address": "[ADDRESS]",
}


class Span(NamedTuple):
    """A half-open range ``[start, end)`` of the text that holds one PII value."""

    start: int
    end: int
    kind: Kind


def replace_spans(text: str, spans: Iterable[Span]) -> tuple[str, int]:
    """Replace each span by its placeholder; return the new text and the count.

    Spans must be sorted and must not overlap (each finder guarantees it for
    its own kind, and the kinds run one after the other).
    """
    pieces: list[str] = []
    cursor = 0
    count = 0
    for span in spans:
        pieces.append(text[cursor:span.start])
        pieces.append(PLACEHOLDERS[span.kind])
        cursor = span.end
        count += 1
    if not count:
        return text, 0
    pieces.append(text[cursor:])
    return "".join(pieces), count
