"""Numbering-plan checks: does a digit string form a real telephone number?

Validation is libphonenumber's (the ``phonenumbers`` package). The regions
tried for national numbers are the ones the chat's users dial from: Turkey
(North Cyprus is +90 392), the Republic of Cyprus and the United Kingdom.
Each check first rejects on length and leading digit, which costs nothing,
so the library is only asked about strings that could be numbers at all.
"""

from __future__ import annotations

from typing import NamedTuple

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumber

_TR, _CY, _GB = 90, 357, 44

# Turkish geographic and mobile numbers start with 2, 3, 4 or 5 after the
# trunk 0; British ones with 1, 2 or 3 (geographic), 7 (mobile) or 8.
_TR_LEADS = "2345"
_GB_LEADS = "12378"
_CY_LEADS = "29"


def _valid(country_code: int, national: str) -> bool:
    number = PhoneNumber(country_code=country_code, national_number=int(national))
    return bool(phonenumbers.is_valid_number(number))


def international(digits: str) -> bool:
    """Digits written after ``+``: a valid number, or one of a possible length.

    Nothing else people write starts with ``+`` and eight or more digits, so a
    number outside the library's known ranges is still taken as a phone. The
    common case is checked on a number built from the digits directly; the
    library's full parser settles the rest (national prefixes after the
    country code, leading zeros).
    """
    quick = _with_country_code(digits)
    if quick is not None and _valid_or_possible(quick):
        return True
    try:
        return _valid_or_possible(phonenumbers.parse("+" + digits, None))
    except NumberParseException:
        return False


def _valid_or_possible(number: PhoneNumber) -> bool:
    return bool(phonenumbers.is_valid_number(number) or phonenumbers.is_possible_number(number))


def _with_country_code(digits: str) -> PhoneNumber | None:
    """Split off the country code; codes are prefix-free, so the first known one is it."""
    if digits.startswith("0"):
        return None
    for size in (1, 2, 3):
        code = int(digits[:size])
        if code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
            national = digits[size:]
            if not national or national.startswith("0"):
                return None
            return PhoneNumber(country_code=code, national_number=int(national))
    return None


def dialled_abroad(digits: str) -> bool:
    """``00`` + country code + number, as dialled from Turkey, Cyprus or Britain."""
    if len(digits) < 10 or digits[2] == "0":
        return False
    try:
        number = phonenumbers.parse("+" + digits[2:], None)
    except NumberParseException:
        return False
    return bool(phonenumbers.is_valid_number(number))


def national(digits: str) -> bool:
    """Trunk ``0`` + a Turkish or British national number.

    ``07`` + nine digits is a British mobile by its shape alone (no Turkish
    number starts with 7), so it counts even in ranges the library holds
    back, such as the 07700 900xxx numbers reserved for fiction.
    """
    rest = digits[1:]
    if len(rest) == 10 and rest[0] in _TR_LEADS and _valid(_TR, rest):
        return True
    if len(rest) not in (9, 10) or rest[0] not in _GB_LEADS:
        return False
    number = PhoneNumber(country_code=_GB, national_number=int(rest))
    if phonenumbers.is_valid_number(number):
        return True
    return len(rest) == 10 and rest[0] == "7" and bool(phonenumbers.is_possible_number(number))


class Reading(NamedTuple):
    """Bare digits read as a national number of one country."""

    country_code: int
    national: str


def bare_reading(digits: str) -> Reading | None:
    """How digits without trunk or ``+`` could be read, judged on length and
    leading digits only: a Turkish or Cypriot national number, or a country
    code written without its ``+`` (905..., 357..., 44...)."""
    size = len(digits)
    if size == 10 and digits[0] in _TR_LEADS:
        return Reading(_TR, digits)
    if size == 8 and digits[0] in _CY_LEADS:
        return Reading(_CY, digits)
    if size == 12 and digits.startswith("90") and digits[2] in _TR_LEADS:
        return Reading(_TR, digits[2:])
    if size == 11 and digits.startswith("357") and digits[3] in _CY_LEADS:
        return Reading(_CY, digits[3:])
    if size == 12 and digits.startswith("44") and digits[2] in _GB_LEADS:
        return Reading(_GB, digits[2:])
    return None


def bare(digits: str) -> bool:
    """Digits without trunk or ``+`` that some reading's numbering plan has."""
    reading = bare_reading(digits)
    return reading is not None and _valid(reading.country_code, reading.national)
