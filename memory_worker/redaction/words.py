"""Words of running text, compared the way Turkish and English writers vary them.

Context decisions look at words, not at the characters between them, so a
placeholder or a redacted number between a cue word and a candidate does not
change what the cue says.
"""

from __future__ import annotations

import re
from functools import lru_cache

# A word is a token with at least one letter that does not continue another
# token: not the suffix after an apostrophe (``'yı``), not the inside of a
# placeholder. Plain figures are not words; codes such as ``REF72429`` are.
_WORD = re.compile(r"(?<![\w\[\]'’])(?=\d*[^\W\d_])\w++")

# Casefolding turns "İ" into "i" + U+0307; drop the dot, and map the Turkish
# letters to the ASCII ones people type on foreign keyboards.
_FOLD = str.maketrans(
    {"ı": "i", "ş": "s", "ç": "c", "ğ": "g", "ö": "o", "ü": "u", "â": "a", "î": "i",
     "û": "u", "\u0307": None}
)

# Three words usually fit in this many characters before a number.
_NEAR = 32


@lru_cache(maxsize=8192)
def fold(word: str) -> str:
    """A comparison key: case-insensitive, Turkish dotted/dotless i and accents merged."""
    return word.casefold().translate(_FOLD)


def words_before(
    text: str, position: int, count: int, reach: int = 80, *, floor: int = 0
) -> list[str]:
    """The last ``count`` folded words that end before ``position``, nearest first.

    Words before ``floor`` (the start of the sentence) are not read. A short
    window usually holds them; the full ``reach`` is read only when it does
    not. (A word cut by a window's edge is not a word: the look-behind sees
    the letter before the edge.)
    """
    found = _WORD.findall(text, max(floor, position - _NEAR), position)
    if len(found) < count and position - _NEAR > floor:
        found = _WORD.findall(text, max(floor, position - reach), position)
    return [fold(word) for word in reversed(found[-count:])]


def words_after(text: str, position: int, count: int, reach: int = 48, *,
                limit: int | None = None) -> list[str]:
    """The first ``count`` folded words from ``position`` on, before ``limit``, nearest first."""
    found: list[str] = []
    end = position + reach if limit is None else min(limit, position + reach)
    for match in _WORD.finditer(text, position, end):
        found.append(fold(match.group()))
        if len(found) == count:
            break
    return found
