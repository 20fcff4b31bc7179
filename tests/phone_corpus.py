"""A generated corpus of chat messages with phone numbers and figures that must stay.

Numbers come from ``phonenumbers`` (its example numbers and random numbers
it validates) for Turkey (North Cyprus +90 392 / 533 / 542 / 548 included),
the Republic of Cyprus, Britain, Germany, Russia, the US and a sample of
other regions; each is rendered the ways people type it (national and
international; spaces, dashes, dots, slashes, parentheses; 3-3-2-2, 3-3-4,
4-3-2-2, 4-7 and bare groupings; a separated trunk 0; a country code without
``+``), glued to labels with and without a space, followed by Turkish
suffixes, and set in Turkish and English sentences next to listing, order and
reference numbers, prices, dates, times, IBANs, TCKN, plates, areas and room
counts. Records and their side-car metadata follow the shared scorer's
format (``../shared/pii/score.py``).

    .venv/bin/python -m tests.phone_corpus     # prints the scores on this and the dev corpus
"""

from __future__ import annotations

import random
import string
from typing import Any

import phonenumbers
from phonenumbers import PhoneNumber, PhoneNumberFormat, PhoneNumberType

SEED = 20240605
RECORDS = 4000

_MOBILE, _FIXED = PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE
_HOME = ("TR", "CY", "GB", "DE", "RU", "US")
_ABROAD = ("FR", "IT", "ES", "NL", "SE", "CH", "AT", "PL", "UA", "KZ", "AZ", "GE", "IL", "IR",
           "IQ", "AE", "SA", "EG", "GR", "BG", "RO", "IE", "CN", "IN", "JP", "AU", "BR", "CA",
           "NG", "ZA", "PK", "LB", "JO", "SY")
_NORTH_CYPRUS = ("392", "533", "542", "548")

_LABELS = ("tel.", "tel:", "Tel", "Tel:", "TEL:", "☎", "📞", "whatsapp:", "WhatsApp:", "Numaram:",
           "numaram", "Cep:", "GSM:", "Phone:", "Mob.", "Mobile:", "wa:", "İletişim:", "Tel/Fax:",
           "T:", "M:", "☎️", "Telefon:", "Ph.", "Cep tel.", "Whatsapp -")
_SUFFIXES = ("'ü", "'yi", "’u", "'dan", "'den", "'a", "'yı", "’e", "'i", "'tan", "den", "ten",
             "’ten")

Piece = tuple[str, str | None, str | None]  # text, gold type or negative, format or category


class _Record:
    def __init__(self) -> None:
        self.text = ""
        self.spans: list[dict[str, Any]] = []
        self.negatives: list[dict[str, Any]] = []

    def add(self, text: str, kind: str | None = None, label: str | None = None) -> None:
        start = len(self.text)
        self.text += text
        if kind in ("PHONE", "EMAIL"):
            self.spans.append({"start": start, "end": len(self.text), "type": kind,
                               "format": label})
        elif kind == "NEG":
            self.negatives.append({"start": start, "end": len(self.text), "category": label})


# --------------------------------------------------------------------------- numbers
def _random_valid(rnd: random.Random, region: str, kind: int) -> PhoneNumber | None:
    example = phonenumbers.example_number_for_type(region, kind)
    if example is None:
        return None
    nsn = phonenumbers.national_significant_number(example)
    for _ in range(200):
        keep = rnd.randint(1, min(3, len(nsn) - 4))
        digits = nsn[:keep] + "".join(rnd.choice(string.digits) for _ in nsn[keep:])
        number = PhoneNumber(country_code=example.country_code, national_number=int(digits))
        if phonenumbers.is_valid_number(number):
            return number
    return example


def _north_cyprus(rnd: random.Random) -> PhoneNumber:
    for _ in range(200):
        digits = rnd.choice(_NORTH_CYPRUS) + "".join(rnd.choice(string.digits) for _ in range(7))
        number = PhoneNumber(country_code=90, national_number=int(digits))
        if phonenumbers.is_valid_number(number):
            return number
    raise AssertionError("no valid North Cyprus number generated")


def _number(rnd: random.Random) -> tuple[str, PhoneNumber]:
    roll = rnd.random()
    if roll < 0.12:
        return "NC", _north_cyprus(rnd)
    region = rnd.choice(_HOME) if roll < 0.82 else rnd.choice(_ABROAD)
    kind = _MOBILE if rnd.random() < 0.65 else _FIXED
    if region == "TR" and rnd.random() < 0.3:
        kind = _MOBILE
    number = (phonenumbers.example_number_for_type(region, kind) if rnd.random() < 0.1
              else _random_valid(rnd, region, kind))
    if number is None:
        number = _random_valid(rnd, region, _FIXED)
    assert number is not None
    return region, number


# --------------------------------------------------------------------------- renderings
def _groups(text: str) -> list[str]:
    return "".join(c if c.isdigit() else " " for c in text).split()


def _renderings(region: str, number: PhoneNumber) -> dict[str, str]:
    """Ways to write ``number``: format name -> text (``bare:`` ones need a phone word)."""
    cc = str(number.country_code)
    nsn = phonenumbers.national_significant_number(number)
    intl = phonenumbers.format_number(number, PhoneNumberFormat.INTERNATIONAL)
    groups = _groups(intl)[1:]
    out = {
        "intl": intl, "e164": "+" + cc + nsn, "intl_dash": "+" + cc + "-" + "-".join(groups),
        "intl_paren": f"+{cc} ({groups[0]}) " + " ".join(groups[1:]),
        "abroad": "00" + cc + " " + " ".join(groups),
        "abroad_sp": "00 " + cc + " " + " ".join(groups),
        "abroad_joined": "00" + cc + nsn, "nocc": cc + " " + " ".join(groups),
        "intl_nbsp": "+" + cc + "\u00a0" + "\u00a0".join(groups),
        "paren_cc": f"(+{cc}) " + " ".join(groups), "abroad_dash": f"00{cc}-" + "-".join(groups),
    }
    if region in ("TR", "NC", "CY", "GB", "US"):
        out["intl_dot"] = "+" + cc + "." + ".".join(groups)
    if region in _ABROAD:
        return out
    national = phonenumbers.format_number(number, PhoneNumberFormat.NATIONAL)
    plain = national.replace("(", "").replace(")", "")
    out["nat"] = national
    out["nat_dash"] = "-".join(_groups(plain))
    out["nat_bare"] = "".join(_groups(plain))
    if region in ("TR", "NC"):
        a, b, c, d = nsn[:3], nsn[3:6], nsn[6:8], nsn[8:]
        out |= {
            "0_4322": f"0{a} {b} {c} {d}", "0_434": f"0{a} {b} {c}{d}", "0_47": f"0{a} {b}{c}{d}",
            "0sep_3322": f"0 {a} {b} {c} {d}", "0paren": f"(0{a}) {b} {c} {d}",
            "0sep_paren": f"0 ({a}) {b} {c} {d}", "0_dots": f"0{a}.{b}.{c}.{d}",
            "3322": f"{a} {b} {c} {d}", "334": f"{a} {b} {c}{d}", "paren_334": f"({a}) {b} {c}{d}",
            "3322_dash": f"{a}-{b}-{c}-{d}", "nocc_3322": f"90 {a} {b} {c} {d}",
            "intl_334": f"+90 {a} {b} {c}{d}", "intl_paren_3322": f"+90 ({a}) {b} {c} {d}",
            "bare:10": nsn,
        }
    elif region == "GB":
        out |= {"0sep": "0 " + " ".join(_groups(plain))[1:].strip(),
                "intl_0": f"+44 (0){' '.join(groups)}",
                "0paren": f"(0{groups[0]}) " + " ".join(groups[1:])}
    elif region == "DE":
        rest = "".join(groups[1:])
        out |= {"intl_slash": f"+49 {groups[0]}/{rest}", "nat_slash": f"0{groups[0]}/{rest}",
                "0sep_slash": f"0 {groups[0]}/{rest}", "intl_0": f"+49 (0){groups[0]} {rest}",
                "nat_paren": f"(0{groups[0]}) {rest}"}
    elif region == "RU":
        a, b, c, d = nsn[:3], nsn[3:6], nsn[6:8], nsn[8:]
        out |= {"8_paren": f"8 ({a}) {b}-{c}-{d}", "8_sp": f"8 {a} {b} {c} {d}",
                "8_dash": f"8-{a}-{b}-{c}-{d}", "intl_paren_dash": f"+7 ({a}) {b}-{c}-{d}",
                "nocc_sp": f"7 {a} {b} {c} {d}"}
    elif region == "US":
        a, b, c = nsn[:3], nsn[3:6], nsn[6:]
        out |= {"paren": f"({a}) {b}-{c}", "dash": f"{a}-{b}-{c}", "dot": f"{a}.{b}.{c}",
                "1_dash": f"1-{a}-{b}-{c}", "intl_paren": f"+1 ({a}) {b}-{c}", "bare:10": nsn}
    elif region == "CY":
        out |= {"nat_26": f"{nsn[:2]} {nsn[2:]}", "nocc_26": f"357 {nsn[:2]} {nsn[2:]}",
                "bare:8": nsn}
    if region not in ("TR", "NC", "GB", "DE"):
        out.pop("nat_bare", None)  # no trunk prefix: a bare national number needs words
    return out


# --------------------------------------------------------------------------- neighbours
def _digits(rnd: random.Random, size: int, first: str = "123456789") -> str:
    return rnd.choice(first) + "".join(rnd.choice(string.digits) for _ in range(size - 1))


def _mobile_like(rnd: random.Random) -> str:
    return rnd.choice(("532", "533", "542", "505", "555", "544")) + _digits(rnd, 7, string.digits)


def _tckn(rnd: random.Random) -> str:
    d = [int(c) for c in _digits(rnd, 9)]
    d.append(((d[0] + d[2] + d[4] + d[6] + d[8]) * 7 - (d[1] + d[3] + d[5] + d[7])) % 10)
    d.append(sum(d) % 10)
    return "".join(map(str, d))


def _iban(rnd: random.Random) -> str:
    country, size = rnd.choice((("TR", 22), ("GB", 18), ("CY", 24), ("DE", 18)))
    body = _digits(rnd, size, string.digits)
    if country == "GB":
        body = "MIDL" + body[4:]
    text = country + _digits(rnd, 2, string.digits) + body
    return " ".join(text[i:i + 4] for i in range(0, len(text), 4)) if rnd.random() < 0.6 else text


def _figure(rnd: random.Random, category: str) -> str:
    if category in ("listing", "order", "reference"):
        roll = rnd.random()
        return (_mobile_like(rnd) if roll < 0.4 else _digits(rnd, 10) if roll < 0.7
                else _digits(rnd, rnd.choice((6, 7, 8))))
    if category == "price":
        return rnd.choice((f"{rnd.randint(50, 990)}.000 TL", f"₺{rnd.randint(10, 99)}.500",
                           f"£{rnd.randint(100, 900)},000", f"€{rnd.randint(1, 9)}.250.000",
                           f"{rnd.randint(1, 9)} 250 000 TL", f"${rnd.randint(1, 9)},165,000",
                           f"{rnd.randint(10, 99)}.210.000 TL",
                           f"{rnd.randint(100, 400)}.000-{rnd.randint(500, 900)}.000 TL"))
    if category == "date":
        day, month, year = rnd.randint(1, 28), rnd.randint(1, 12), rnd.randint(2023, 2027)
        return rnd.choice((f"{day:02}.{month:02}.{year}", f"{day:02}/{month:02}/{year}",
                           f"{year}-{month:02}-{day:02}", f"{day}.{month}.{year}"))
    if category == "time":
        hour = rnd.randint(8, 22)
        return rnd.choice((f"{hour}:{rnd.choice(('00', '15', '30'))}",
                           f"{hour - 1:02}:00 - {hour:02}:30", f"{hour - 1}.00-{hour}.30"))
    if category == "iban":
        return _iban(rnd)
    if category == "tckn":
        return _tckn(rnd)
    if category == "plate":
        letters = rnd.choice(("CC", "ABC", "TR", "KL"))
        return rnd.choice((f"{rnd.randint(1, 81):02} {letters} {rnd.randint(100, 9999)}",
                           f"{rnd.choice(('AB', 'KT', 'HR'))} {rnd.randint(100, 999)}"))
    if category == "area":
        return rnd.choice((f"{rnd.randint(60, 400)} m²", f"1.{rnd.randint(100, 999)} m2",
                           f"{rnd.randint(60, 400)}m2", f"{rnd.randint(60, 400)} sqm"))
    if category == "year":
        return str(rnd.randint(1960, 2027))
    if category == "postcode":
        return rnd.choice((f"{rnd.randint(1, 81):02}{rnd.randint(100, 999)}", "99300", "SW1A 1AA"))
    if category == "card":
        return " ".join(_digits(rnd, 4, "3456") if i == 0 else _digits(rnd, 4, string.digits)
                        for i in range(4))
    if category == "coords":
        return f"35.{_digits(rnd, 6, string.digits)}, 33.{_digits(rnd, 6, string.digits)}"
    return f"{rnd.randint(1, 5)}+{rnd.randint(0, 1)}"  # rooms


_NEIGHBOURS = {
    "tr": {
        "listing": ("İlan no {x}", "ilan numarası {x}", "{x} numaralı ilan", "İlan no: {x}",
                    "ilanın numarası {x}"),
        "order": ("sipariş no {x}", "Sipariş numarası {x}", "sipariş {x}"),
        "reference": ("Referans: {x}", "ref no {x}", "Ref: {x}"),
        "price": ("Fiyat {x}", "kira {x}", "aidat {x}"), "date": ("randevu {x}", "{x} tarihinde"),
        "time": ("saat {x}", "{x} arası"), "iban": ("IBAN: {x}", "{x} hesabına yatırdım"),
        "tckn": ("TC kimlik no {x}", "TCKN: {x}", "kimlik numaram {x}", "TC {x}"),
        "plate": ("aracın plakası {x}", "plaka {x}"), "area": ("daire {x}", "{x} bahçe"),
        "rooms": ("{x} daire", "{x} dubleks"),
        "year": ("{x} yapımı", "{x} yılında"), "postcode": ("posta kodu {x}",),
        "card": ("kart no {x}",), "coords": ("konum {x}",),
    },
    "en": {
        "listing": ("listing no. {x}", "Listing #{x}", "listing {x}", "property ID {x}"),
        "order": ("Order number {x}", "order #{x}", "order no {x}"),
        "reference": ("Reference {x}", "ref {x}", "booking ref {x}"),
        "price": ("it costs {x}", "rent is {x}", "price {x}"), "date": ("on {x}", "from {x}"),
        "time": ("at {x}", "open {x}"), "iban": ("IBAN {x}", "I paid to {x}"),
        "tckn": ("my TC ID is {x}", "TCKN {x}"), "plate": ("car plate {x}", "plate {x}"),
        "area": ("it is {x}", "{x} garden"), "rooms": ("a {x} flat", "the {x}"),
        "year": ("built in {x}", "since {x}"), "postcode": ("postcode {x}",),
        "card": ("card {x}",), "coords": ("pin {x}",),
    },
}

_PHONE_SENTENCES = {
    "tr": ("{L}{P}{S} arayabilirsiniz", "Numaram {P}{S}, akşam arayın", "Bana {P}{S} ulaşın",
           "{P}{S} ara, ben bakarım", "Müşterinin numarası {P}", "Whatsapp'tan yazın: {P}",
           "Ofis telefonu {P}{S}", "Ahmet Bey {P}", "Ev sahibinin numarası {P}{S}",
           "{L}{P}", "{P}{S} numaramdan whatsapp'tan yazın", "Türkiye numaram {P}",
           "Cep telefonum {P}{S}", "Acil durumda {P}{S} arayın", "{L}{P} (whatsapp)"),
    "en": ("You can reach me on {L}{P}", "Call me at {P} after six", "My number is {P}",
           "contact: {P}", "Landlord {P}", "{L}{P}", "{L}{P} (whatsapp)", "text me on {P}",
           "Office phone {P}", "my UK mobile is {P}", "Agent: {P}"),
}
# Sentences without a phone word: only forms that say "phone" by themselves go there.
_NO_WORD = ("Ahmet Bey {P}", "Landlord {P}", "Agent: {P}")


def _phone(rnd: random.Random, record: _Record, lang: str) -> None:
    region, number = _number(rnd)
    forms = _renderings(region, number)
    template = rnd.choice(_PHONE_SENTENCES[lang])
    names = [name for name in forms if not (name.startswith("bare:") and template in _NO_WORD)]
    name = rnd.choice(names)
    label = rnd.choice(_LABELS) + rnd.choice(("", " ")) if "{L}" in template else ""
    suffixed = "{S}" in template and lang == "tr" and rnd.random() < 0.6
    suffix = rnd.choice(_SUFFIXES) if suffixed else ""
    before, after = template.split("{P}")
    record.add(before.replace("{L}", label))
    record.add(forms[name], "PHONE", f"{region}:{name}")
    record.add(after.replace("{S}", suffix))


def _neighbour(rnd: random.Random, record: _Record, lang: str) -> None:
    category = rnd.choice(tuple(_NEIGHBOURS[lang]))
    before, after = rnd.choice(_NEIGHBOURS[lang][category]).split("{x}")
    record.add(before)
    record.add(_figure(rnd, category), "NEG", category)
    record.add(after)


def _email(rnd: random.Random, record: _Record) -> None:
    local = rnd.choice(("ayse", "mehmet.yilmaz", "j.smith", "deniz_k", "info", "elif.öztürk"))
    domain = rnd.choice(("ornek.com.tr", "gmail.com", "mail.co.uk", "emlak.net", "yandex.ru"))
    record.add(rnd.choice(("maili ", "e-posta: ", "email ")))
    record.add(f"{local}{rnd.randint(1, 99) if rnd.random() < 0.3 else ''}@{domain}", "EMAIL",
               "email:plain")


Records = list[dict[str, Any]]


def build(seed: int = SEED, size: int = RECORDS) -> tuple[Records, Records]:
    """``size`` records and their metadata, the same for the same seed."""
    rnd = random.Random(seed)
    records: list[dict[str, Any]] = []
    metas: list[dict[str, Any]] = []
    for index in range(size):
        lang = rnd.choice(("tr", "en"))
        record = _Record()
        parts = ["phone"] * (1 if rnd.random() < 0.85 else rnd.choice((0, 2)))
        parts += ["neighbour"] * rnd.choice((0, 1, 1, 2, 3))
        parts += ["email"] * (rnd.random() < 0.2)
        rnd.shuffle(parts)
        for position, part in enumerate(parts):
            if position:
                record.add(rnd.choice((", ", ". ", " ", "\n", "; ", ". ")))
            if part == "phone":
                _phone(rnd, record, lang)
            elif part == "neighbour":
                _neighbour(rnd, record, lang)
            else:
                _email(rnd, record)
        record.add(rnd.choice((".", "", "?", " 🙏", "!")))
        rid = f"gen-{index:05}"
        records.append({"id": rid, "lang": lang, "text": record.text, "spans": [
            {key: span[key] for key in ("start", "end", "type")} for span in record.spans]})
        metas.append({"id": rid, "spans": record.spans, "negatives": record.negatives})
    return records, metas


def _main() -> None:
    """Print the scores on the generated corpus and, when present, the dev corpus."""
    import importlib.util
    import json
    from pathlib import Path

    from memory_worker.redaction import redact_text

    shared = Path(__file__).resolve().parents[1].parent / "shared" / "pii"
    spec = importlib.util.spec_from_file_location("pii_score", shared / "score.py")
    assert spec is not None and spec.loader is not None
    scorer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scorer)
    def read(name: str) -> Records:
        with (shared / name).open(encoding="utf-8") as lines:
            return [json.loads(line) for line in lines if line.strip()]

    corpora = {"generated": build()}
    if (shared / "dev_corpus.jsonl").exists():
        corpora["dev"] = (read("dev_corpus.jsonl"), read("dev_corpus.meta.jsonl"))
    for name, (records, metas) in corpora.items():
        outputs = [redact_text(record["text"]) for record in records]
        metrics, extra, _ = scorer.evaluate(records, outputs, metas)
        phone, email = metrics["PHONE"], metrics["EMAIL"]
        print(json.dumps({
            "corpus": name, "records": len(records),
            "phone": {key: phone[key] for key in ("gold", "fn", "fp", "recall", "precision")},
            "email_f2": email["f2"],
            "must_stay_damaged": {
                category: f"{row['damaged']}/{row['total']} = {row['damaged'] / row['total']:.4f}"
                for category, row in extra["hard_negatives_damaged"].items()},
        }, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    _main()
