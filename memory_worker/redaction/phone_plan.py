"""Numbering plans: does a digit string form a real telephone number?

The plans are libphonenumber's (the ``phonenumbers`` package), read once per
country code into one compiled pattern per number length, so a check is a
dictionary look-up and one regex match instead of the library's walk over
every number type. A number is *valid* when it matches its plan's general
pattern and one number type, exactly as ``phonenumbers.is_valid_number``
decides; it is *possible* when its length is one the plan allows.

Written forms map onto the plans as follows:

- ``+`` and ``00``: a country code of any country the library knows;
- trunk ``0`` (national): Turkey (North Cyprus is +90 392 and +90 533/542/548),
  the United Kingdom and Germany;
- bare digits: a Turkish, US or Cypriot national number, a Russian one after
  its trunk ``8``, or any country code written without ``+``.
"""

from __future__ import annotations

import re
from functools import cache, lru_cache
from typing import Literal, NamedTuple

import phonenumbers
from phonenumbers import NumberParseException, PhoneMetadata

TR, CY, GB, DE, RU, US = 90, 357, 44, 49, 7, 1

_TYPES = ("premium_rate", "toll_free", "shared_cost", "voip", "personal_number", "pager", "uan",
          "voicemail", "fixed_line", "mobile")


class _Plan(NamedTuple):
    """One country code's plans: per national length, one pattern that a valid
    number of any of its regions matches, and the lengths its main region allows."""

    by_length: dict[int, re.Pattern[str]]
    possible_lengths: frozenset[int]


def _region_patterns(metadata: PhoneMetadata) -> dict[int, str]:
    """Per length, the pattern of one region: its general pattern and one type."""
    general = metadata.general_desc
    if general is None or general.national_number_pattern is None:
        return {}
    by_length: dict[int, list[str]] = {}
    for name in _TYPES:
        desc = getattr(metadata, name, None)
        if desc is None or desc.national_number_pattern is None:
            continue
        for size in desc.possible_length or general.possible_length:
            if size in general.possible_length:
                by_length.setdefault(size, []).append(f"(?:{desc.national_number_pattern})")
    return {size: f"(?=(?:{general.national_number_pattern})$)(?:{'|'.join(types)})"
            for size, types in by_length.items()}


@cache
def _plan(country_code: int) -> _Plan:
    """The plans of every region sharing ``country_code``, compiled once."""
    by_length: dict[int, list[str]] = {}
    possible_lengths: frozenset[int] = frozenset()
    for region in phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(country_code, ()):
        metadata = (PhoneMetadata.metadata_for_nongeo_region(country_code) if region == "001"
                    else PhoneMetadata.metadata_for_region(region))
        if metadata is None:
            continue
        if not possible_lengths and metadata.general_desc is not None:
            general = metadata.general_desc
            possible_lengths = frozenset(general.possible_length) | frozenset(
                general.possible_length_local_only)
        for size, pattern in _region_patterns(metadata).items():
            by_length.setdefault(size, []).append(f"(?:{pattern})")
    return _Plan(
        by_length={size: re.compile("|".join(patterns)) for size, patterns in by_length.items()},
        possible_lengths=possible_lengths,
    )


def warm() -> None:
    """Compile every country code's plan now (about half a second of CPU, once per
    process), so no message pays for compiling the plans it happens to touch."""
    for country_code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
        _plan(country_code)


def valid(country_code: int, national: str) -> bool:
    """``national`` is a valid number of some region of ``country_code``."""
    pattern = _plan(country_code).by_length.get(len(national))
    return pattern is not None and pattern.fullmatch(national) is not None


def possible(country_code: int, national: str) -> bool:
    """``national`` has a length the main plan of ``country_code`` allows."""
    return len(national) in _plan(country_code).possible_lengths


# The answers below are pure functions of the digits: recent ones are kept,
# so a number repeated in a thread (or thousands of times in a hostile
# message) is looked up once.
_answers = lru_cache(maxsize=4096)


def _fictional_or_new_gb_mobile(country_code: int, national: str) -> bool:
    """``7`` + nine digits is a British mobile by its shape alone (no Turkish
    number starts with 7), also in ranges the library holds back, such as the
    07700 900xxx numbers reserved for fiction."""
    return country_code == GB and len(national) == 10 and national[0] == "7"


def valid_or_gb_mobile(country_code: int, national: str) -> bool:
    """``valid``, widened to every British mobile-shaped number."""
    return valid(country_code, national) or _fictional_or_new_gb_mobile(country_code, national)


def split_country_code(digits: str) -> tuple[int, str] | None:
    """Country code and national number; codes are prefix-free, so the first known one is it."""
    if digits.startswith("0"):
        return None
    for size in (1, 2, 3):
        code = int(digits[:size])
        if code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
            return code, digits[size:]
    return None


# How well digits fit a numbering plan.
UNKNOWN, POSSIBLE, VALID = 0, 1, 2


@_answers
def international(digits: str) -> int:
    """Digits written after ``+``: ``VALID``, ``POSSIBLE`` (a length the plan
    allows) or ``UNKNOWN``.

    Nothing else people write starts with ``+`` and eight or more digits, so a
    number outside the library's known ranges is still taken as a phone. A
    national trunk prefix kept after the country code (``+90 0533 ...``) is
    left to the library's own parser.
    """
    split = split_country_code(digits)
    if split is not None and split[1] and not split[1].startswith("0"):
        code, national = split
        if valid_or_gb_mobile(code, national):
            return VALID
        if possible(code, national):
            return POSSIBLE
    try:
        number = phonenumbers.parse("+" + digits, None)
    except NumberParseException:
        return UNKNOWN
    if phonenumbers.is_valid_number(number):
        return VALID
    return POSSIBLE if phonenumbers.is_possible_number(number) else UNKNOWN


@_answers
def dialled_abroad(digits: str, *, separated: bool) -> int:
    """``00`` + country code + number, as dialled from Turkey, Cyprus, Britain or Europe.

    A number the plan does not know but of a possible length counts when it
    is written apart from its prefix (``00 44 7700 900123``): run-together
    zeros and digits are more often a reference than a phone.
    """
    if digits[2:3] == "0":
        return UNKNOWN
    fit = international(digits[2:])
    return fit if fit == VALID or separated else UNKNOWN


NationalPlan = Literal["TR", "GB", "DE"]


@_answers
def national(digits: str) -> NationalPlan | None:
    """Which plan a number dialled with trunk ``0`` belongs to, if any.

    Turkey first (0 + ten digits), then the United Kingdom (0 + nine or ten)
    and Germany (0 + eight to eleven).
    """
    rest = digits[1:]
    if len(rest) == 10 and rest[0] in "2345" and valid(TR, rest):
        return "TR"
    if len(rest) in (9, 10) and rest[0] in "12378" and valid_or_gb_mobile(GB, rest):
        return "GB"
    if 8 <= len(rest) <= 11 and valid(DE, rest):
        return "DE"
    return None


ReadingKind = Literal["tr", "cy", "us", "ru_trunk", "country_code"]


class Reading(NamedTuple):
    """One valid way to read bare digits: which plan, and how many leading
    digits are a prefix (country code, Russian trunk ``8``) rather than the
    national number."""

    kind: ReadingKind
    country_code: int
    prefix: int


@_answers
def bare_readings(digits: str) -> tuple[Reading, ...]:
    """Every valid reading of digits written without ``+``, ``00`` or trunk ``0``."""
    size = len(digits)
    readings: list[Reading] = []
    if size == 10:
        if digits[0] in "2345" and valid(TR, digits):
            readings.append(Reading("tr", TR, 0))
        if valid(US, digits):
            readings.append(Reading("us", US, 0))
    elif size == 8 and digits[0] in "29" and valid(CY, digits):
        readings.append(Reading("cy", CY, 0))
    if size == 11 and digits[0] == "8" and valid(RU, digits[1:]):
        readings.append(Reading("ru_trunk", RU, 1))
    split = split_country_code(digits) if size >= 9 else None
    if split is not None and split[1] and not split[1].startswith("0"):
        code, rest = split
        if valid_or_gb_mobile(code, rest):
            readings.append(Reading("country_code", code, size - len(rest)))
    return tuple(readings)
