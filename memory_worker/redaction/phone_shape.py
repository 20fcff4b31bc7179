"""How a figure is grouped: the way phone numbers, dates and amounts are written.

``sizes`` are the lengths of the digit groups of a candidate, in order
(``0533 123 45 67`` is ``[4, 3, 2, 2]``). Bare digits need a grouping that
matches how their reading is dialled (``533 334 66 48``, ``(213) 915-1484``,
``90 216 111 22 33``) unless words say "phone"; dates and amounts are refused
whatever their digits.
"""

from __future__ import annotations

from memory_worker.redaction.phone_plan import Reading

_DATE_MARKS = frozenset("./-")
_DATES = ([2, 2, 4], [4, 2, 2], [1, 2, 4], [2, 1, 4], [1, 1, 4], [2, 2, 2])
_DATES_IN_A_RUN = ([2, 2, 4], [4, 2, 2])


def looks_like_date(raw: str, sizes: list[int]) -> bool:
    """Day, month and year joined by dots, slashes or hyphens (``05.11.2024``),
    alone or next to another figure (``05.11.2024 1030``)."""
    if _DATE_MARKS.isdisjoint(raw):
        return False
    if len(sizes) == 3:
        return sizes in _DATES
    return sizes[:3] in _DATES_IN_A_RUN or sizes[-3:] in _DATES_IN_A_RUN


def looks_like_amount(raw: str, sizes: list[int]) -> bool:
    """Thousands grouping: ``23.210.000``, ``5 250 000``, ``1,500,000``."""
    return len(sizes) >= 3 and sizes[0] <= 3 and all(size == 3 for size in sizes[1:])


def grouped_like_phone(reading: Reading, sizes: list[int]) -> bool:
    """The groups fall where the reading's numbers are split when dialled."""
    if len(sizes) < 2:
        return False
    if reading.prefix:
        # The country code or the Russian trunk 8 stands apart, then the number.
        return sizes[0] == reading.prefix
    if reading.kind == "tr":
        return sizes[0] == 3 and min(sizes) >= 2
    if reading.kind == "us":
        return sizes in ([3, 3, 4], [3, 7])
    return sizes == [2, 6]  # Cyprus: 99 123456
