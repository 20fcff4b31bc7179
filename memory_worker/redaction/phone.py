"""Telephone numbers: cheap candidate runs, then numbering-plan validation.

1. One possessive regex finds *runs*: digit groups joined by one space, dot
   or hyphen, optionally in parentheses, optionally after ``+``. Possessive
   quantifiers never give back, so a run costs one pass over its characters
   whatever it holds (``'1 ' * 20000`` is a single run, read once).
2. A run is first judged whole. When it fails and has spaces in it, it may
   hold two numbers side by side or a number plus a stray group
   ("... 45 67 2+1"), so it is cut at its spaces into the longest segments
   that pass, within a budget of checks that grows with the run.
3. A segment is a phone when it validates for its written form: ``+`` (any
   country), ``00`` (dialled abroad), trunk ``0`` (Turkey, Britain) or bare
   digits (Turkey, Cyprus). Bare digits also need the words around them to
   say "phone", or a phone-like grouping (``533 334 66 48``) without words
   saying "listing", because bare 10-digit listing and order numbers look
   the same as mobile numbers.

Prices, dates, times, years, room counts, areas, IBANs, TCKN, plates and
versions fail on length, on the characters glued to them or on validation.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from typing import Literal

from memory_worker.redaction import phone_plan
from memory_worker.redaction.phone_context import Cue, cue_after, cue_before
from memory_worker.redaction.spans import Span

_RUN = re.compile(
    r"(?=[+(\d][\d ()\u00a0.\-]{7})"   # at least eight characters: skip short figures in C
    r"\+?+\(?+\d++\)?+(?:[ \u00a0.\-]?+\(?+\d++\)?+)*+"
)
_CHUNK = re.compile(r"\S+")
_DIGITS = re.compile(r"\d+")
_NON_DIGIT = re.compile(r"\D+")
_UNIT_AFTER = re.compile(
    r"\s?(?:(?:y?tl|try|usd|eur|gbp|m2|sqm|km|kg|bin|milyon|million)(?![^\W\d_])|[₺€$£%°²])",
    re.IGNORECASE,
)

_SHORTEST = 8           # no number we accept has fewer digits
_LONGEST_RUN = 120      # eight numbers side by side; longer runs are not lists of phones
_CHUNKS_PER_NUMBER = 7  # "00 90 533 289 75 21" has six
_CHARACTERS_PER_CHECK = 14  # a split run may cost about one full check per number it can hold

# A number does not continue a word, a decimal, a code, a path, an amount or
# (so that a later pass judges it as this one did) a placeholder.
_GLUED_BEFORE = frozenset("_+-.,#@=&%$£€₺¥\\]")
_GLUED_AFTER = frozenset("_%°@$£€₺¥[")

# How a number is written, and the digit counts each form can have.
Form = Literal["plus", "abroad", "trunk", "bare"]
_DIGIT_COUNTS: dict[Form, frozenset[int]] = {
    "plus": frozenset(range(8, 16)),
    "abroad": frozenset(range(10, 18)),
    "trunk": frozenset({10, 11}),
    "bare": frozenset({8, 10, 11, 12}),
}


# Numbering-plan verdicts already given in this text, by written form and digits:
# a message that repeats a number (or a hostile one that repeats it thousands
# of times) asks the library once.
Verdicts = dict[tuple[Form, str], bool]

_PLAN: dict[Form, Callable[[str], bool]] = {
    "plus": phone_plan.international,
    "abroad": phone_plan.dialled_abroad,
    "trunk": phone_plan.national,
    "bare": phone_plan.bare,
}


def find_phones(text: str) -> list[Span]:
    """Every telephone number in ``text``, in order, without overlaps."""
    spans: list[Span] = []
    verdicts: Verdicts = {}
    for run in _RUN.finditer(text):
        start, end = run.span()
        raw = run.group()
        if not (_SHORTEST <= end - start <= _LONGEST_RUN and _may_hold_phone(raw)):
            continue
        whole = _outside_parentheses(text, start, end)
        if _is_phone(text, whole, verdicts):
            spans.append(whole)
        elif (" " in raw or "\u00a0" in raw) and not _continues_a_word(text, start):
            spans.extend(_split_run(text, start, end, verdicts))
    return spans


def _may_hold_phone(raw: str) -> bool:
    """Cheap refusals: too few digits, or one dotted bare figure (date, price, range)."""
    if len(_NON_DIGIT.sub("", raw)) < _SHORTEST:
        return False
    return raw[0] in "+(0" or "." not in raw or " " in raw


def _continues_a_word(text: str, start: int) -> bool:
    """A run glued to a word is the body of a code (``TR42 0001 0024 ...``), not a list."""
    return start > 0 and text[start - 1].isalnum()


def _split_run(text: str, start: int, end: int, verdicts: Verdicts) -> list[Span]:
    """The phones in a run that is not one phone, cut at its spaces, longest first.

    Inside a run only a trunk ``0`` or an area code in parentheses starts a
    further number: anything else is the tail of the number before it. The
    digits are read once, so a segment of a length its form cannot have costs
    one subtraction; full checks are budgeted by the run's size.
    """
    chunks = [m.span() for m in _CHUNK.finditer(text, start, end)]
    digits = [_digits(text[a:b]) for a, b in chunks]
    digits_before = [0]
    for chunk in digits:
        digits_before.append(digits_before[-1] + len(chunk))
    found: list[Span] = []
    checks = 2 + (end - start) // _CHARACTERS_PER_CHECK
    first = 0
    while first < len(chunks) and checks > 0:
        last = None
        if first == 0 or text[chunks[first][0]] in "0(":
            counts = _DIGIT_COUNTS[_form(text[chunks[first][0]], "".join(digits[first:first + 2]))]
            for candidate in range(min(len(chunks), first + _CHUNKS_PER_NUMBER), first, -1):
                size = digits_before[candidate] - digits_before[first]
                if size not in counts or (first == 0 and candidate == len(chunks)):
                    continue  # a length this form cannot have, or the whole run, judged already
                checks -= 1
                segment = _outside_parentheses(text, chunks[first][0], chunks[candidate - 1][1])
                if _is_phone(text, segment, verdicts):
                    found.append(segment)
                    last = candidate
                    break
                if checks == 0:
                    break
        first = last if last is not None else first + 1
    return found


def _outside_parentheses(text: str, start: int, end: int) -> Span:
    """The segment without a parenthesis that encloses it rather than an area code."""
    if text[start] == "(" and ")" not in text[start:end - 1]:
        start += 1
    if text[end - 1] == ")" and "(" not in text[start:end]:
        end -= 1
    return Span(start, end, "phone")


def _digits(raw: str) -> str:
    """The digits of ``raw`` as ASCII (people also type full-width and Arabic-Indic digits)."""
    digits = _NON_DIGIT.sub("", raw)
    if digits.isascii():
        return digits
    return "".join(str(unicodedata.digit(char, 0)) for char in digits)


def _is_phone(text: str, segment: Span, verdicts: Verdicts) -> bool:
    """The whole judgement of one segment: length, glue, words, numbering plan."""
    raw = text[segment.start:segment.end]
    digits = _digits(raw)
    form = _form(raw[0], digits)
    if len(digits) not in _DIGIT_COUNTS[form] or _glued(text, segment, form):
        return False
    if form == "plus":
        # "+44 (0) 7840 ...": the bracketed trunk zero is not dialled from abroad.
        digits = _digits(raw.replace("(0)", "", 1))
    elif form == "bare":
        if phone_plan.bare_reading(digits) is None or not _is_bare_phone(text, segment, raw):
            return False
    elif cue_before(text, segment.start) is Cue.OTHER:
        return False
    key = (form, digits)
    verdict = verdicts.get(key)
    if verdict is None:
        verdict = verdicts[key] = _PLAN[form](digits)
    return verdict


def _is_bare_phone(text: str, segment: Span, raw: str) -> bool:
    """Whether bare digits read as a phone here (before the numbering-plan check)."""
    sizes = [len(group) for group in _DIGITS.findall(raw)]
    if "." in raw or _looks_like_amount(sizes):
        return False
    after = cue_after(text, segment.end)
    before = cue_before(text, segment.start)
    if Cue.OTHER in (after, before):
        return False
    if Cue.PHONE in (after, before):
        return True
    return sum(sizes) == 10 and _grouped_like_phone(sizes)


def _form(first_character: str, digits: str) -> Form:
    """How the number is written, from its first character and its digits."""
    if first_character == "+":
        return "plus"
    if digits.startswith("00"):
        return "abroad"
    return "trunk" if digits.startswith("0") else "bare"


def _glued(text: str, segment: Span, form: Form) -> bool:
    """True when the segment continues a word, a number, a path or an amount."""
    start, end = segment.start, segment.end
    if start > 0:
        before = text[start - 1]
        if before.isalnum() or before in _GLUED_BEFORE:
            return True
        if before == "/" and form == "bare":
            return True
    if end < len(text):
        after = text[end]
        if after.isalnum() or after in _GLUED_AFTER:
            return True
        if after in ",+" and text[end + 1:end + 2].isdigit():
            return True  # "1,500", "2+1": the figure goes on
        if after == "/" and form == "bare":
            return True  # a path, a ratio or a date; "0533 ... / 0542 ..." lists keep their 0
    return _UNIT_AFTER.match(text, end) is not None


def _looks_like_amount(sizes: list[int]) -> bool:
    """Thousands grouping (``23 210 000``) or a date's 2-2-4 / 4-2-2 grouping."""
    if len(sizes) >= 3 and all(size == 3 for size in sizes[1:]):
        return True
    return sizes in ([2, 2, 4], [4, 2, 2], [1, 2, 4])


def _grouped_like_phone(sizes: list[int]) -> bool:
    """A 3-digit operator or area code written apart: ``533 334 66 48``, ``(545) 678-0231``."""
    return len(sizes) >= 2 and sizes[0] == 3
