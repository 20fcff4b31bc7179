"""Telephone numbers: cheap candidate runs, then numbering-plan validation.

1. One possessive regex finds *runs*: digit groups joined by one space, dot,
   hyphen or slash, optionally in parentheses, optionally after ``+``.
   Possessive quantifiers never give back, so a run costs one pass over its
   characters whatever it holds (``'1 ' * 20000`` is a single run, read once).
2. A run is first judged whole. When it fails it may hold two numbers side
   by side, or a number next to another figure ("ilan no 5123456 0 532 ...",
   "... 45 67 2+1"), so it is cut at its spaces and slashes into the longest
   segments that pass, within a budget of checks that grows with the run.
3. A segment is a phone when it validates for its written form (see
   ``phone_plan``): ``+`` (any country), ``00`` (dialled abroad), trunk ``0``
   (Turkey, Britain, Germany) or bare digits. Written with a prefix, a valid
   number is a phone whatever the words around it say. Bare digits also need
   a phone-like grouping (``533 334 66 48``, ``90 216 111 22 33``) or words
   saying "phone", and no words saying "listing" or "order": bare 10-digit
   listing and order numbers look the same as mobile numbers. An unformatted
   Turkish mobile (``5321112233``) with no telling word at all is a phone:
   a leaked number costs more than a redacted listing number.

A label or letters glued before a number (``tel.0542...``, ``Tel:+44...``,
``whatsapp:0533...``) and a Turkish suffix after it (``'ü``, ``’u``, ``den``)
do not hide it. Prices, dates, times, years, room counts, areas, IBANs, TCKN,
plates and versions fail on length, on the characters glued to them, on their
grouping or on validation.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right

from memory_worker.redaction import phone_plan
from memory_worker.redaction.phone_context import Cue, cue_after, cue_before
from memory_worker.redaction.phone_shape import (
    grouped_like_phone,
    looks_like_amount,
    looks_like_date,
)
from memory_worker.redaction.spans import Span

_SEPARATOR = r"(?:[ \u00a0]{1,2}|[.\-/])"
_RUN = re.compile(
    # The first character is a plain character class, so the engine skips
    # to candidates in C; the look-ahead asks for eight characters at least.
    r"[+(\d](?=[\d ()\u00a0.\-/]{7})"
    r"(?:(?<=\+)\(?+\d++|(?<=\()\d++|(?<=\d)\d*+)\)?+"   # "+(", "+", "(" or a digit, then digits
    rf"(?:{_SEPARATOR}?+\(?+\d++\)?+)*+"
)
_CUT = re.compile(r"[^\s/]+")
_CUT_MARKS = frozenset(" \u00a0/")
_DIGITS = re.compile(r"\d+")
_NON_DIGIT = re.compile(r"\D+")
_UNIT_AFTER = re.compile(
    r"\s?(?:(?:y?tl|try|usd|eur|gbp|m2|m²|sqm|sq|km|kg|bin|milyon|million|k)(?!\w)|[₺€$£%°²])",
    re.IGNORECASE,
)
# International bank account numbers: two letters, two check digits, then
# groups of four (letters allowed). Their digits are never phone numbers.
_IBAN = re.compile(
    r"(?<![A-Za-z0-9\]])[A-Z]{2}\d{2}(?:[ \u00a0]?[A-Z0-9]{4}){2,8}(?:[ \u00a0]?[A-Z0-9]{1,3})?"
    r"(?![A-Za-z0-9])"
)
_HAS_IBAN = re.compile(r"[A-Z]{2}\d\d").search
_MESSENGER_LINK = re.compile(r"(?:wa\.me|whatsapp\.com/send\?phone=|t\.me|viber://chat\?number=)$",
                             re.IGNORECASE)

_SHORTEST = 8           # no number we accept has fewer digits
_LONGEST_RUN = 120      # eight numbers side by side; longer runs are not lists of phones
_CHUNKS_PER_NUMBER = 7  # "00 90 533 289 75 21" has six
_CHARACTERS_PER_CHECK = 8  # a split run may cost about one full check per number it can hold
_CHECKS_PER_TEXT = 128     # and a whole text this many, plus one per 32 characters
_CHARACTERS_PER_TEXT_CHECK = 32

# A number does not continue a decimal, a code, an amount or (so that a
# later pass judges it as this one did) a placeholder.
_GLUED_BEFORE = frozenset("_+,#@=&%$£€₺¥\\]")
_GLUED_AFTER = frozenset("_%°@$£€₺¥[")

# How a number is written, and the digit counts each form can have.
_FORMS = ("plus", "abroad", "trunk", "bare")
_DIGIT_COUNTS: dict[str, frozenset[int]] = {
    "plus": frozenset(range(8, 16)),
    "abroad": frozenset(range(10, 18)),
    "trunk": frozenset(range(9, 13)),
    "bare": frozenset({8, 9, 10, 11, 12, 13}),
}

_READ_BEFORE = 100  # cue words (80 characters back) and an IBAN's head
_READ_AFTER = 64    # the clause after a number (48) and a unit glued to it


class Progress:
    """What the passes over one text have judged, and whether the last one settled.

    A long run of figures is split within a budget of checks; when the
    budget runs out after a phone was found in it, the rest of the run is
    judged again on the redacted text, so the caller repeats the pass.
    Verdicts are kept by everything a verdict reads around its run, so a
    text that repeats a phrase (or a hostile one that repeats it thousands
    of times), and a repeated pass, judge each once.
    """

    __slots__ = ("checks", "seen", "settled")

    def __init__(self) -> None:
        self.settled = True
        self.seen: dict[tuple[str, int], list[tuple[int, int]]] = {}
        # Checks left for splitting runs in this text, set by the first pass:
        # a message is never worth more than this many, whatever it holds.
        self.checks = -1


# Dates, thousands-grouped amounts and payment card numbers, whole: refused
# before any other check.
_DATE_OR_AMOUNT = re.compile(
    r"\d{1,2}([./])\d{1,2}\1\d{2,4}(?:-\d{1,2}([./])\d{1,2}\2\d{2,4})?"
    r"|\d{4}-\d{2}-\d{2}|\d{1,3}(?:\.\d{3})+(?:-\d{1,3}(?:\.\d{3})+)?"
    r"|\d{4}([ \-])\d{4}\3\d{4}\3\d{4}(?:\3\d{1,3})?|\d{4} \d{6} \d{5}"
)


def find_phones(text: str, progress: Progress | None = None) -> list[Span]:
    """Every telephone number in ``text``, in order, without overlaps."""
    spans: list[Span] = []
    ibans: list[tuple[int, int]] | None = None
    progress = Progress() if progress is None else progress
    if progress.checks < 0:
        progress.checks = _CHECKS_PER_TEXT + len(text) // _CHARACTERS_PER_TEXT_CHECK
    seen = progress.seen
    for run in _RUN.finditer(text):
        start, end = run.span()
        if not _SHORTEST <= end - start <= _LONGEST_RUN:
            continue
        if ibans is None:
            ibans = [m.span() for m in _IBAN.finditer(text)] if _HAS_IBAN(text) else []
        if ibans:
            start, end = _after_ibans(text, start, end, ibans)
            if end - start < _SHORTEST:
                continue
        raw = text[start:end]
        groups = _DIGITS.findall(raw)
        if sum(map(len, groups)) < _SHORTEST or _DATE_OR_AMOUNT.fullmatch(raw):
            continue
        low = max(0, start - _READ_BEFORE)
        key = (text[low:end + _READ_AFTER], start - low)
        found = seen.get(key)
        if found is None:
            judged = _judge_run(text, start, end, raw, groups, progress)
            seen[key] = [(a - start, b - start) for a, b, _ in judged]
            spans.extend(judged)
        elif found:
            spans.extend(Span(start + a, start + b, "phone") for a, b in found)
    return spans


def _judge_run(text: str, start: int, end: int, raw: str, groups: list[str],
               progress: Progress) -> list[Span]:
    """The phones of one run: the whole run, or the segments it splits into."""
    whole = _outside_parentheses(text, start, end)
    fit = _fit(text, whole, groups)
    if fit == phone_plan.VALID or (fit and _CUT_MARKS.isdisjoint(raw)):
        return [whole]
    if _CUT_MARKS.isdisjoint(raw):
        return []
    # A number of a merely possible length may be a valid one with a figure
    # after it ("+4930132246 110 m²"): the valid one is taken.
    parts = _split_run(text, start, end, progress)
    if fit and not (parts and parts[0].start in (start, whole.start)):
        return [whole]
    return parts


def _after_ibans(text: str, start: int, end: int,
                 ibans: list[tuple[int, int]]) -> tuple[int, int]:
    """The part of a run after the IBAN it overlaps (a phone may follow one)."""
    index = bisect_right(ibans, (start, len(text))) - 1  # the last IBAN starting at or before
    for iban_start, iban_end in ibans[max(0, index):index + 2]:
        if iban_start < end and start < iban_end:
            rest = _RUN.search(text, iban_end, end) if iban_end < end else None
            return (end, end) if rest is None else rest.span()
    return start, end


def _split_run(text: str, start: int, end: int, progress: Progress) -> list[Span]:
    """The phones in a run that is not one phone, cut at its spaces and slashes.

    From each chunk, the longest segment that passes is taken and the search
    goes on after it. The digits are read once, so a segment of a length its
    form cannot have costs one subtraction; full checks are budgeted by the
    run's size.
    """
    if progress.checks == 0:
        return []
    chunks = [m.span() for m in _CUT.finditer(text, start, end)]
    digits = [_digits(text[a:b]) for a, b in chunks]
    digits_before = [0]
    for chunk in digits:
        digits_before.append(digits_before[-1] + len(chunk))
    found: list[Span] = []
    checks = 2 + (end - start) // _CHARACTERS_PER_CHECK
    refills = (end - start) // _CHARACTERS_PER_CHECK
    starved = False
    first = 0
    while first < len(chunks) and (checks > 0 or refills > 0):
        last = None
        head = text[chunks[first][0]]
        if head in "0(" and refills > 0:
            # a trunk 0 or an area code starts a number: such a start gets
            # checks of its own, so figures before it cannot use them all up.
            grant = min(3, refills)
            checks, refills = checks + grant, refills - grant
        elif checks <= 0:
            first += 1
            starved = True
            continue
        counts = _DIGIT_COUNTS[_form(head, "".join(digits[first:first + 2]))]
        for candidate in range(min(len(chunks), first + _CHUNKS_PER_NUMBER), first, -1):
            size = digits_before[candidate] - digits_before[first]
            if size not in counts or (first == 0 and candidate == len(chunks)):
                continue  # a length this form cannot have, or the whole run, judged already
            checks -= 1
            progress.checks -= 1
            segment = _outside_parentheses(text, chunks[first][0], chunks[candidate - 1][1])
            if _fit(text, segment, None):
                found.append(segment)
                last = candidate
                break
            if checks == 0 or progress.checks == 0:
                starved = True
                break
        if progress.checks == 0:
            return found  # the text has had all the checks it is worth
        first = last if last is not None else first + 1
    if (starved or first < len(chunks)) and found:
        progress.settled = False  # the rest of the run, apart from what was found, is judged again
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


def _form(first_character: str, digits: str) -> str:
    """How the number is written, from its first character and its digits."""
    if first_character == "+":
        return "plus"
    if digits.startswith("00"):
        return "abroad"
    return "trunk" if digits.startswith("0") else "bare"


def _fit(text: str, segment: Span, groups: list[str] | None) -> int:
    """The whole judgement of one segment: length, glue, grouping, words, numbering plan.

    ``phone_plan.VALID`` for a phone, ``POSSIBLE`` for a ``+`` or ``00``
    number of a possible length only, ``UNKNOWN`` for anything else.
    ``groups`` are the segment's digit groups when the caller has them.
    """
    raw = text[segment.start:segment.end]
    if groups is None:
        groups = _DIGITS.findall(raw)
    digits = "".join(groups)
    if not digits.isascii():
        digits = _digits(digits)
    form = _form(raw[0], digits)
    if len(digits) not in _DIGIT_COUNTS[form] or _glued(text, segment, form):
        return phone_plan.UNKNOWN
    if form == "plus":
        # "+44 (0) 7840 ...": the bracketed trunk zero is not dialled from abroad.
        if "(0)" in raw:
            digits = _digits(raw.replace("(0)", "", 1))
        return phone_plan.international(digits)
    sizes = [len(group) for group in groups]
    if looks_like_date(raw, sizes):
        return phone_plan.UNKNOWN
    if form == "abroad":
        return phone_plan.dialled_abroad(digits, separated=len(groups) > 1)
    if form == "trunk":
        found = phone_plan.national(digits) is not None
    else:
        readings = phone_plan.bare_readings(digits)
        found = bool(readings) and _is_bare_phone(text, segment, raw, sizes, readings)
    return phone_plan.VALID if found else phone_plan.UNKNOWN


def _is_bare_phone(text: str, segment: Span, raw: str, sizes: list[int],
                   readings: tuple[phone_plan.Reading, ...]) -> bool:
    """Whether bare digits with a valid reading are a phone here.

    In order: a qualifier after the number ("numaralı ilan") keeps it; a
    phone-like grouping makes it a phone; then the nearest telling word
    before it, in its sentence, decides, and words saying listing or order
    win over words saying phone after it; an unformatted Turkish mobile
    with no telling word at all is a phone.
    """
    after = cue_after(text, segment.end)
    if after is Cue.OTHER:
        return False  # "5336524085 numaralı ilan"
    if any(grouped_like_phone(reading, sizes) for reading in readings):
        return True
    if "." in raw:
        return False  # dotted bare figures are dates, prices and versions unless grouped
    before = cue_before(text, segment.start)
    if before is Cue.OTHER:
        return False
    if looks_like_amount(raw, sizes) and (any(mark in raw for mark in ",/") or (
            before is not Cue.PHONE and after is not Cue.PHONE)):
        return False
    if Cue.PHONE in (before, after):
        return True
    if len(sizes) > 1:
        return False
    # No telling word: a Turkish mobile, or a Turkish, Cypriot or British
    # number after its country code, is taken for a phone.
    return any(
        (reading.kind == "tr" and raw[0] == "5")
        or (reading.kind == "country_code" and reading.country_code in _OWN_COUNTRY_CODES)
        for reading in readings
    )


_OWN_COUNTRY_CODES = frozenset({phone_plan.TR, phone_plan.CY, phone_plan.GB})


def _glued(text: str, segment: Span, form: str) -> bool:
    """True when the segment continues a number, a code, a path or an amount.

    Letters before a number are a label (``tel.``, ``Tel:``, ``whatsapp:``,
    ``Numaram``) unless they are themselves glued to digits (a code such as
    ``A1B05331234567``); letters after it are a Turkish suffix.
    """
    start, end = segment.start, segment.end
    if start > 0:
        before = text[start - 1]
        if before.isalpha():
            if _label_is_a_code(text, start - 1):
                return True
        elif before.isdigit() or before in _GLUED_BEFORE:
            return True
        elif before in ".:-":
            # "tel.0542", "Tel:+44", "Whatsapp -0533" are labels; "1.5", "10:05",
            # "150-0533" go on a figure, "KYR-2023" is a code.
            previous = text[start - 2] if start > 1 else ""
            # (a placeholder's "]" stands where the figure before it stood)
            if previous.isdigit() or previous == "]" or (before == "." and not previous.isalpha()):
                return True
            if previous.isalpha() and _label_is_a_code(text, start - 2):
                return True
        elif before == "/" and form == "bare" and _MESSENGER_LINK.search(
                text, max(0, start - 40), start - 1) is None:
            return True  # a path or a ratio, not a messenger link (wa.me/905331234567)
    if end < len(text):
        after = text[end]
        if after.isdigit() or after in _GLUED_AFTER:
            return True
        if after.isalpha() and (form == "bare" and not after.islower()):
            return True
        if after in ",+." and (text[end + 1:end + 2].isdigit() or text[end + 1:end + 2] == "["):
            return True  # "1,500", "2+1": the figure goes on
        if after == "/" and form == "bare":
            return True  # a path, a ratio or a date
    return _UNIT_AFTER.match(text, end) is not None


def _label_is_a_code(text: str, index: int) -> bool:
    """Whether the letters ending at ``index`` follow a digit or a joiner: a code,
    a domain or a file name rather than a label."""
    floor = max(0, index - 24)
    while index >= floor and text[index].isalpha():
        index -= 1
    return index >= 0 and (text[index].isdigit() or text[index] in "_-#.@]")
