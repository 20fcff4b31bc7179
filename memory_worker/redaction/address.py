"""Street addresses in English and Turkish, found by a small grammar.

English: ``[Flat 4, ]27 Ataturk Street[, Kyrenia Court][, City[, Country]]``
and ``Villa 8, Kyrenia Lane, Alsancak``; a house or unit number is required,
because a street name alone ("near Ataturk Street") is a place, not an address.

Turkish: place parts (``... Mahallesi``/``Mah.``, ``... Caddesi``/``Cad.``,
``... Sokak``/``Sk.``, ``1234 Sok.``, ``... Sitesi``) followed by further
parts, door and flat numbers (``No: 12``, ``D:3``, ``Daire 3``, ``B Blok``)
and a district or city (``, Çankaya/Ankara``). One place part alone counts
only when it carries a number (``1234 Sok.``, ``Atatürk Cad. No: 12``), or
"Girne Mahallesi'nde" would be an address.

Names are capitalised words, at most four before a street word, so every
repetition is bounded and the pattern is tried once per word start. Words
that open Turkish and English sentences ("Faturayı", "Adresim", "The") are
not names, so the address starts after them.
"""

from __future__ import annotations

import re

from memory_worker.redaction.spans import Span

_UP = "A-ZÇĞİÖŞÜÂÎÛ"
# Words that open Turkish and English sentences or name a unit after a figure
# ("5 Minutes Walk", "3 Bedroom Place"): never part of a street name.
_STOP_WORDS = (
    "Adres", "Adresi", "Adresim", "Adresimiz", "Adresine", "Address", "Faturayı", "Fatura",
    "Faturası", "Anahtarları", "Anahtarı", "Anahtar", "Daire", "Dairem", "Ev", "Evim", "Evimiz",
    "Ofis", "Ofisimiz", "Bana", "Beni", "Bize", "Lütfen", "Merhaba", "Teslim", "Kargo",
    "Kargoyu", "Paketi", "Sözleşmeyi", "Belgeleri", "Konum", "Tel", "Telefon", "Cep", "The", "A",
    "An", "At", "In", "On", "To", "From", "Near", "By", "My", "Our", "Your", "I", "We", "You",
    "It", "This", "That", "Viewing", "Please", "Send", "Post", "Flat", "Apartment", "Villa",
    "Hi", "Hello", "Dear", "Thanks", "Thank", "Can", "Could", "Would", "Is", "Are", "And", "But",
    "Also", "Call", "Phone", "Email", "Mobile", "Ve", "Ama", "Bu", "Şu", "Bir", "Ben", "Biz",
    "Siz", "Sen", "Teşekkürler", "Minutes", "Minute", "Mins", "Min", "Hours", "Days", "Weeks",
    "Months", "Years", "Miles", "Mile", "Km", "Metres", "Meters", "Bedroom", "Bedrooms", "Bed",
    "Beds", "Room", "Rooms", "Star", "Dakika", "Saat", "Gün", "Yıl",
)


def _alternation(words: tuple[str, ...]) -> str:
    """``words`` as one alternation grouped by first letter, so that the regex
    engine compares one letter per group rather than every word at each name."""
    groups: dict[str, list[str]] = {}
    for word in sorted(set(words), key=len, reverse=True):
        groups.setdefault(word[0], []).append(re.escape(word[1:]))
    return "|".join(
        f"{first}(?:{'|'.join(rests)})" for first, rests in groups.items()
    )


_NAME = (
    rf"(?!(?:{_alternation(_STOP_WORDS)})(?![^\W\d_]))"
    rf"[{_UP}][^\W\d_]{{0,24}}(?:-[^\W\d_]{{1,24}})?(?:['’]s)?(?![^\W_])"  # "King's"
)
# Title abbreviations keep their dot inside a name: "Dr. Fazıl Küçük", "Şht. Hüseyin Ruso".
_ABBREVIATION = rf"[{_UP}][a-zçğıöşü]{{1,4}}\."
_NAME_WORD = rf"(?:{_ABBREVIATION}|{_NAME})"
_NAMES = rf"{_NAME_WORD}(?:[ ]{_NAME_WORD}){{0,3}}"
_PLACE_NAME = rf"{_NAME}(?:[ ]{_NAME}){{0,2}}"

# Street words are matched in any case ("CAD.", "sokak", "road"); a full word
# must end where it ends, an abbreviation's dot already ends it.
_EN_TYPE = (
    r"(?i:(?:St|Rd|Ave|Blvd)\.|(?:Street|St|Road|Rd|Avenue|Ave|Lane|Drive|Close|Boulevard|Blvd|"
    r"Court|Way|Crescent|Place|Square|Terrace|Gardens|Grove|Hill|Row|Mews|Parade)(?!\w))"
)
_UNIT = r"(?:Flat|Apartment|Apt\.?|Unit|Suite|Villa|House)[ ]?\d{1,4}[A-Za-z]?"
_HOUSE = r"\d{1,4}[A-Za-z]?(?:[-/]\d{1,4}[A-Za-z]?)?"
_EN_STREET = rf"{_NAMES}[ ]{_EN_TYPE}"
_EN_ADDRESS = (
    rf"(?:{_UNIT},[ ]?(?:{_HOUSE}[ ])?|{_HOUSE},?[ ]){_EN_STREET}"
    rf"(?:,[ ]?{_EN_STREET})?(?:,[ ]?{_UNIT})?"
)

_TR_STREET_TYPE = (
    r"(?i:(?:Cad|Cd|Sok|Sk|Blv|Bulv)\.|(?:Caddesi|Cadde|Sokağı|Sokak|Bulvarı|Yolu)(?!\w))"
)
_TR_AREA_TYPE = (
    r"(?i:(?:Mah|Mh|Apt)\.|(?:Mahallesi|Sitesi|Apartmanı|Evleri|Konutları|Rezidans|Residence)"
    r"(?!\w))"
)
_TR_TYPES = re.compile(rf"{_TR_STREET_TYPE}|{_TR_AREA_TYPE}")
_TR_PLACE = rf"(?:{_NAMES}|\d{{1,5}}\.?)[ ](?:{_TR_STREET_TYPE}|{_TR_AREA_TYPE})"
_TR_DOOR = r"(?i:No|Numara)[:.]?[ ]?\d{1,5}[A-Za-z]?(?:[ ]?/[ ]?\d{1,4})?"
_TR_FLAT = r"(?i:Daire|D|Kat|K)[ ]?[:.]?[ ]?\d{1,4}(?!\d)"
_TR_BLOCK = r"(?:[A-Z]\d?[ ](?i:Blok)|(?i:Blok)[ ][A-Z]\d?)(?!\w)"
_TR_PART = rf"(?:{_TR_PLACE}|{_TR_DOOR}|{_TR_FLAT}|{_TR_BLOCK})"
# A house number may precede a street ("42 Atatürk Caddesi"), not a neighbourhood.
_TR_ADDRESS = (
    rf"(?:{_HOUSE}[ ](?={_NAMES}[ ]{_TR_STREET_TYPE}))?{_TR_PLACE}"
    rf"(?:(?:,[ ]?|[ ]){_TR_PART}){{0,6}}"
)

_POSTCODE = r"(?:[A-Z]{1,2}\d[A-Z\d]?[ ]\d[A-Z]{2}|\d{5})(?!\w)"
_CITY = rf"(?:\d{{5}}[ ])?{_PLACE_NAME}(?:[ ]?/[ ]?{_NAME})?(?:[ ]{_POSTCODE})?"
# ", Esentepe, North Cyprus", ", Brighton BN1 9EU", " Kadıköy/İstanbul", " Girne", or nothing.
_TAIL = rf"(?:,[ ]?{_CITY}){{1,2}}|[ ]{_NAME}(?:[ ]?/[ ]?{_NAME})?(?!\w)|"

# An address does not continue a word, a placeholder, a room count or a code.
_ADDRESS = re.compile(rf"(?<![\w\[\]+/.,-])(?:{_EN_ADDRESS}|{_TR_ADDRESS})(?:{_TAIL})")

# Cheap test for a street word before the grammar runs. Capitalised and
# upper-case words make a fast regex (only capitals enter the alternation);
# lower-case forms are looked up as substrings, which is faster still.
_STREET_WORDS = (
    "street", "road", "avenue", "lane", "drive", "close", "boulevard", "blvd", "court", "way",
    "crescent", "place", "square", "terrace", "gardens", "grove", "hill", "row", "mews",
    "parade", "st", "rd", "ave", "mahallesi", "mah", "mh", "caddesi", "cadde", "cad", "cd",
    "sokağı", "sokak", "sok", "sk", "bulvarı", "blv", "bulv", "yolu", "sitesi", "apartmanı",
    "apt", "evleri", "konutları", "rezidans", "residence",
)
_CAPITALISED_STREET_WORD = re.compile(
    "|".join(sorted({w.capitalize() for w in _STREET_WORDS} | {w.upper() for w in _STREET_WORDS},
                    key=len, reverse=True))
)
# Lower case matters only after a capitalised name or a number ("Atatürk cad.",
# "1234 sok.", "Kyrenia road"), where people drop the capital of the street word.
_LOWER_STREET_WORDS = ("cad", "sok", "sk.", "mah", "street", "road")


def _has_street_word(text: str) -> bool:
    """Whether the grammar could match at all: it needs a street or area word."""
    if _CAPITALISED_STREET_WORD.search(text) is not None:
        return True
    return any(word in text for word in _LOWER_STREET_WORDS)


def find_addresses(text: str) -> list[Span]:
    """Every street address in ``text``, in order, without overlaps."""
    if not _has_street_word(text):
        return []
    spans: list[Span] = []
    for match in _ADDRESS.finditer(text):
        found = match.group()
        if _is_complete(found):
            spans.append(Span(match.start(), match.end(), "address"))
    return spans


def _is_complete(found: str) -> bool:
    """A number (house, door, flat, numbered street) or two Turkish place parts."""
    if any(char.isdigit() for char in found):
        return True
    return len(_TR_TYPES.findall(found)) >= 2
