"""Cue words that tell a phone number from a listing, order or ID number.

A bare ``5xxxxxxxxx`` is both a Turkish mobile number and the shape of a
10-digit listing or order number; only the words around it tell them apart.
The nearest telling word among the few before a candidate, in the same
sentence, wins; a word that only names a number ("numarası", "number",
"no") lets the word before it decide ("İlan numarası" is a listing,
"telefon numarası" a phone, "Müşterinin numarası" the customer's phone). The
word right after the number counts too ("'yı arayın", "numaralı ilan",
"numaramdan yazın") when no punctuation separates them. Words are matched by
stem so that Turkish suffixes (telefon-u, ara-yın, ulaş-abilirsiniz) need no
list of their own. A telephone sign (☎, 📞, 📱) right before a number is a cue
like a word.
"""

from __future__ import annotations

import re
from enum import Enum
from functools import lru_cache

from memory_worker.redaction.words import words_after, words_before


class Cue(Enum):
    """What the words next to a number say about it."""

    NONE = "none"
    PHONE = "phone"
    OTHER = "other"


# Folded (see ``words.fold``): ASCII, lower case, Turkish letters mapped.
_PHONE_WORDS = frozenset(
    {"tel", "tlf", "tf", "mob", "gsm", "cep", "wa", "wp", "sms", "ara", "call", "text", "txt",
     "ring", "dial", "fax", "faks", "cell", "line", "landline", "sabit", "hat", "viber",
     "telegram", "signal", "imo", "hotline", "ph", "whats", "t", "m"}
)
_PHONE_STEMS = (
    "telefon", "teleph", "phone", "mobil", "whatsap", "watsap", "vatsap", "aray", "arar", "aradig",
    "ulas", "iletisim", "hatt", "calling", "contact", "reach", "mesaj", "message", "dahili",
    "santral", "numaram",
)
# "musteri" alone is a customer number; "musterinin" is the customer's (phone) number.
_OTHER_WORDS = frozenset(
    {"tc", "id", "ada", "tax", "pin", "vkn", "sku", "po", "ref", "musteri", "customer", "kod",
     "code", "kodu", "seri", "serial"}
)
_OTHER_STEMS = (
    "ilan", "listing", "order", "siparis", "referans", "reference", "invoice", "fatura",
    "kimlik", "tckn", "iban", "hesap", "account", "plaka", "plate", "version", "surum",
    "booking", "rezervasyon", "tracking", "takip", "kargo", "dekont", "receipt", "ticket",
    "vergi", "abone", "sicil", "portfoy", "police", "policy", "sozlesme", "contract", "parsel",
    "advert", "property", "mulk", "hesab", "kart", "card", "dosya", "isbn", "barkod", "barcode",
)
# Words that only name a number, whose neighbour decides what kind.
_NUMBER_WORDS = frozenset({"number", "numbers", "no", "num", "nolu", "numara"})
_NUMBER_STEM = "numara"
_OWN_NUMBER_STEM = "numaram"
_POSSESSIVES = frozenset({"my", "our", "his", "her", "their", "benim", "bizim", "onun"})

_BEFORE = 3
_AFTER = 2
_SIGNS = frozenset("☎☏✆📞📱📲")
# Words before a number speak of it only within its sentence and after the
# figure before it (a digit or a placeholder's ``]``): "plate 55 ABC 6920
# Agent: ..." says nothing about the agent's number. A sentence ends at ! ?
# or a line break, and at a full stop after a word of four letters or more
# ("no." and "Tel." are abbreviations).
# Searched backwards, on the reversed text before the number, so that the
# nearest end is the first match.
_FIGURE_OR_SENTENCE_END_REVERSED = re.compile(r"[!?\n\d\]]|(?<=\s)\.(?=[^\W\d_]{4}|[)\"'”’])")
# Words after the number qualify it only within its clause, before any other figure.
_CLAUSE_END = re.compile(r"[,;:!?\n(\d+\[]|\.(?:\s|$)")
# Turkish genitive endings: "sahibinin numarası" is the owner's (phone) number.
_GENITIVE = ("nin", "nun", "in", "un")


@lru_cache(maxsize=8192)
def _classify(word: str) -> Cue:
    """What one folded word says (kept per word: chat reuses few words)."""
    if not word.isalpha():
        return Cue.NONE  # a code such as REF72429 is not a cue word
    if word in _PHONE_WORDS or word.startswith(_PHONE_STEMS):
        return Cue.PHONE
    if word in _OTHER_WORDS or word.startswith(_OTHER_STEMS):
        return Cue.OTHER
    return Cue.NONE


@lru_cache(maxsize=8192)
def _names_a_number(word: str) -> bool:
    return word in _NUMBER_WORDS or (word.startswith(_NUMBER_STEM)
                                     and not word.startswith(_OWN_NUMBER_STEM))


def _nearest(words: list[str]) -> Cue:
    """The cue of the nearest telling word (``words`` nearest first)."""
    for index, word in enumerate(words):
        previous = words[index + 1] if index + 1 < len(words) else ""
        if word.startswith(_OWN_NUMBER_STEM):
            # "numaram" (my number) says phone unless the word before says
            # what else ("kimlik numaram").
            cue = _classify(previous)
            return Cue.PHONE if cue is Cue.NONE else cue
        if _names_a_number(word):
            if previous in _POSSESSIVES or (
                    previous.endswith(_GENITIVE) and _classify(previous) is Cue.NONE):
                return Cue.PHONE
            continue
        cue = _classify(word)
        if cue is not Cue.NONE:
            return cue
    return Cue.NONE


def _sentence_start(text: str, start: int, reach: int) -> int:
    """Where the sentence holding ``start`` begins, within ``reach`` characters."""
    floor = max(0, start - reach)
    nearest = _FIGURE_OR_SENTENCE_END_REVERSED.search(text[floor:start][::-1])
    return floor if nearest is None else start - nearest.start()


def sign_before(text: str, start: int) -> bool:
    """A telephone sign among the few characters before ``start``."""
    return not _SIGNS.isdisjoint(text[max(0, start - 3):start])


def cue_before(text: str, start: int) -> Cue:
    """The nearest cue among the few words before ``start``, in its sentence."""
    if sign_before(text, start):
        return Cue.PHONE
    floor = _sentence_start(text, start, 80)
    return _nearest(words_before(text, start, _BEFORE, floor=floor))


def cue_after(text: str, end: int) -> Cue:
    """The cue of the first word after ``end`` in the same clause.

    Only the adjacent word counts: "'yı arayın", "numaramdan yazın" and
    "whatsapp'tan" say phone; a word naming something else qualifies the
    number only behind a number-word ("5336524085 numaralı ilan"), since
    in run-on chat the next word often starts the next phrase ("... 33 ref
    no 12").
    """
    clause = _CLAUSE_END.search(text, end, end + 48)
    limit = clause.start() if clause is not None else end + 48
    named = False
    for word in words_after(text, end, _AFTER, limit=limit):
        if word.startswith(_OWN_NUMBER_STEM):
            return Cue.PHONE
        if _names_a_number(word):
            named = True
            continue
        cue = _classify(word)
        return cue if cue is Cue.PHONE or named else Cue.NONE
    return Cue.NONE
