"""Cue words that tell a phone number from a listing, order or ID number.

A bare ``5xx xxx xx xx`` is both a Turkish mobile number and the shape of a
10-digit listing or order number; only the words around it tell them apart.
The nearest telling word among the few before a candidate wins; a word that
only names a number ("numarası", "number", "no") lets the word before it
decide ("İlan numarası" is a listing, "telefon numarası" a phone). The word
right after the number counts too ("'yı arayın", "numaralı ilan"). Words are
matched by stem so that Turkish suffixes (telefon-u, ara-yın, ulaş-abilirsiniz)
need no list of their own.
"""

from __future__ import annotations

from enum import Enum

from memory_worker.redaction.words import words_after, words_before


class Cue(Enum):
    """What the words next to a number say about it."""

    NONE = "none"
    PHONE = "phone"
    OTHER = "other"


# Folded (see ``words.fold``): ASCII, lower case, Turkish letters mapped.
_PHONE_WORDS = frozenset(
    {"tel", "tlf", "mob", "gsm", "cep", "wa", "wp", "sms", "ara", "call", "text", "txt", "ring",
     "dial", "fax", "faks", "cell", "line", "landline", "sabit", "hat", "viber", "telegram",
     "signal", "imo"}
)
_PHONE_STEMS = (
    "telefon", "teleph", "phone", "mobil", "whatsap", "aray", "arar", "aradig", "ulas",
    "iletisim", "hatt", "calling", "contact", "reach", "mesaj", "message", "dahili", "santral",
)
_OTHER_WORDS = frozenset(
    {"tc", "id", "ada", "tax", "pin", "vkn", "sku", "po", "ref"}
)
_OTHER_STEMS = (
    "ilan", "listing", "order", "siparis", "referans", "reference", "invoice", "fatura",
    "kimlik", "tckn", "iban", "hesap", "account", "plaka", "plate", "version", "surum", "kod",
    "code", "booking", "rezervasyon", "tracking", "takip", "kargo", "dekont", "receipt",
    "ticket", "vergi", "musteri", "customer", "abone", "sicil", "serial", "seri", "portfoy",
    "police", "policy", "sozlesme", "contract", "parsel", "advert", "property", "mulk",
    "hesab", "kart", "card", "dosya",
)
# "number", "numarası", "no" name a number without saying of what, so the
# word before them decides ("ilan numarası", "telefon numarası", "my
# number"). "numaram" (my number) says phone unless that word says otherwise
# ("kimlik numaram").
_NUMBER_WORDS = frozenset({"number", "numbers", "no", "nr", "num", "numara", "numarasi",
                           "numarali", "nolu", "numaradan", "numarasindan"})
_OWN_NUMBER_WORDS = frozenset({"numaram", "numaramiz", "numarami"})
_POSSESSIVES = frozenset({"my", "our", "his", "her", "their", "benim", "bizim"})

_BEFORE = 3
_AFTER = 2


def _classify(word: str) -> Cue:
    if not word.isalpha():
        return Cue.NONE  # a code such as REF72429 is not a cue word
    if word in _PHONE_WORDS or word.startswith(_PHONE_STEMS):
        return Cue.PHONE
    if word in _OTHER_WORDS or word.startswith(_OTHER_STEMS):
        return Cue.OTHER
    return Cue.NONE


def _nearest(words: list[str]) -> Cue:
    """The cue of the nearest telling word (``words`` nearest first)."""
    for index, word in enumerate(words):
        previous = words[index + 1] if index + 1 < len(words) else ""
        if word in _OWN_NUMBER_WORDS:
            cue = _classify(previous)
            return Cue.PHONE if cue is Cue.NONE else cue
        if word in _NUMBER_WORDS:
            if previous in _POSSESSIVES:
                return Cue.PHONE
            continue
        cue = _classify(word)
        if cue is not Cue.NONE:
            return cue
    return Cue.NONE


def cue_before(text: str, start: int) -> Cue:
    """The nearest cue among the few words before ``start``."""
    return _nearest(words_before(text, start, _BEFORE))


def cue_after(text: str, end: int) -> Cue:
    """The cue of the first word after ``end`` (number-words skipped).

    Only the adjacent word counts: "5336524085 numaralı ilan" and "'yı arayın"
    qualify the number; "call 0533... about listing 12" does not.
    """
    for word in words_after(text, end, _AFTER):
        if word not in _NUMBER_WORDS and word not in _OWN_NUMBER_WORDS:
            return _classify(word)
    return Cue.NONE
