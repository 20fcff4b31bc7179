"""Email redaction: the formats people write, and the look-alikes that must stay."""

from __future__ import annotations

import pytest

from memory_worker.redaction import redact_text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Drop me a line at a.schmidt@superonline.com, thanks!",
         "Drop me a line at [EMAIL], thanks!"),
        ("My email is mehmetarslan@protonmail.com.", "My email is [EMAIL]."),
        ("Please cc FATMA_ÇELIK@OZTURKINSAAT.COM.TR on it", "Please cc [EMAIL] on it"),
        ("Invoice to zeynep.öztürk+rentals@mail.northcyprusvillas.co.uk and",
         "Invoice to [EMAIL] and"),
        ("E-posta: olgaarslan@örnekemlak.com.tr", "E-posta: [EMAIL]"),
        ("Bana 05331121385@outlook.com adresinden", "Bana [EMAIL] adresinden"),
        ("name@xn--rnekemlak-q9a.com.tr", "[EMAIL]"),
        ("mailto:ali@example.org", "mailto:[EMAIL]"),
        ("kemal+cyprus2024@office.lapta-estates.net Referans", "[EMAIL] Referans"),
    ],
)
def test_practical_rfc_5322_addresses_are_redacted(text: str, expected: str) -> None:
    """Dots, plus-tags, underscores, hyphens, sub-domains, upper case, IDN and digits."""
    assert redact_text(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Sözleşmeyi ayse@ornek.com.tr'ye gönderin", "Sözleşmeyi [EMAIL]'ye gönderin"),
        ("Sözleşmeyi oguz.celik@icloud.com'a gönderebilir", "Sözleşmeyi [EMAIL]'a gönderebilir"),
        ("ali@ornek.com.tr’den aldım", "[EMAIL]’den aldım"),
        ("Oğuz Smith <elif+rentals@office.lapta-estates.net>", "Oğuz Smith <[EMAIL]>"),
        ("(write to ali@example.com)", "(write to [EMAIL])"),
        ("is it ali@example.com?", "is it [EMAIL]?"),
        ("old one: ali@example.com; new one", "old one: [EMAIL]; new one"),
        ("see...ali@example.com", "see...[EMAIL]"),
    ],
)
def test_turkish_suffixes_brackets_and_punctuation_stay_outside_the_email(
    text: str, expected: str
) -> None:
    """The placeholder replaces the address only; suffixes and punctuation are kept."""
    assert redact_text(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "The floor plan is attached as logo@2x.png.",
        "Logo dosyası thumb@3x.jpg olarak ekte.",
        "banner@2x.webp and icon@3x.svg",
        "Follow us on Instagram @emlak_kktc for new listings",
        "Instagram hesabımız @lapta.living, yeni ilanlar",
        "https://medium.com/@kyrenia_homes/buying-in-north-cyprus",
        "write to root@localhost or user@host",
        "meet @ 5 pm",
    ],
)
def test_file_names_handles_urls_and_bare_hosts_are_not_emails(text: str) -> None:
    """Retina file names, @handles, URL paths and user@host without a dot stay as they are."""
    assert redact_text(text) == text


def test_two_addresses_side_by_side_are_both_redacted() -> None:
    """Each address is replaced on its own, with the separator kept."""
    assert redact_text("a@b.co,c@d.co d@e.com.tr") == "[EMAIL],[EMAIL] [EMAIL]"
