"""Address redaction (off by default): English and Turkish street addresses."""

from __future__ import annotations

import pytest

from memory_worker.redaction import redact_all_text, redact_text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Post the keys to Flat 4, 27 Ataturk Street?", "Post the keys to [ADDRESS]?"),
        ("It is at 12 Kyrenia Avenue.", "It is at [ADDRESS]."),
        ("I live at 42 Olive Tree Street, Esentepe, North Cyprus and work here.",
         "I live at [ADDRESS] and work here."),
        ("Send it to Apartment 8A, Sea Magic Court, Ziya Rizki Road, Iskele.",
         "Send it to [ADDRESS]."),
        ("Villa 8, Kyrenia Lane, Alsancak.", "[ADDRESS]."),
        ("Viewing address: 60 Baker Street, Brighton BN1 9EU\nHi",
         "Viewing address: [ADDRESS]\nHi"),
        ("12 Main St. is fine", "[ADDRESS] is fine"),
        ("Daire 7 Ecevit Close, Lefkoşa adresinde", "Daire [ADDRESS] adresinde"),
        ("I live at 12 King's Road, London SW3 4UP.", "I live at [ADDRESS]."),
        ("Villa 3, St. Hilarion Lane, Karmi.", "[ADDRESS]."),
    ],
)
def test_english_street_addresses_are_redacted(text: str, expected: str) -> None:
    """House or flat number, street name and type, then city, country or postcode."""
    assert redact_all_text(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Adres: Atatürk Cad. No: 12 Daire 3", "Adres: [ADDRESS]"),
        ("Ziya Rızkı Sk. No:5, Girne'de", "[ADDRESS]'de"),
        ("Adresim Mehmet Akif Mah. 1235 Sok. No 89.", "Adresim [ADDRESS]."),
        ("Faturayı Esentepe Mahallesi, Cumhuriyet Caddesi No:109 D:13, Kadıköy/İstanbul adresine",
         "Faturayı [ADDRESS] adresine"),
        ("Adresim Kordon Evleri Sitesi B Blok Daire 18, İskele.", "Adresim [ADDRESS]."),
        ("Anahtarları Mehmet Akif Sk. No:112, Ozanköy adresine", "Anahtarları [ADDRESS] adresine"),
        ("Şehit Mustafa Ruso Cad. No: 110 Daire 10 ve", "[ADDRESS] ve"),
        ("Kargo 1234 Sok. adresine", "Kargo [ADDRESS] adresine"),
        ("ATATÜRK CAD. NO: 12 DAİRE 3", "[ADDRESS]"),
        ("Osman Paşa Cad. No: 55 Daire 2'ye bırakın", "[ADDRESS]'ye bırakın"),
        ("Daire Dr. Fazıl Küçük Bulvarı No: 45 Daire 6 adresinde", "Daire [ADDRESS] adresinde"),
        ("Adresim 25 Haziran Cad. No: 3 Daire 1.", "Adresim [ADDRESS]."),
    ],
)
def test_turkish_street_addresses_are_redacted(text: str, expected: str) -> None:
    """Mahalle, cadde, sokak, site and blok parts with door and flat numbers."""
    assert redact_all_text(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "Girne Mahallesi'nde ev arıyorum.", "Atatürk Caddesi üzerinde mi?",
        "near Ataturk Street", "The 4 bedroom is 306 m² and costs 405,000 GBP.",
        "2 bedroom in Esentepe, 7 January 2024", "2+1 Esentepe Mahallesi'nde var mı?",
        "Gazimağusa bölgesinde 80.000-150.000 TL arası 1+0 var mı?",
        "Can we do the viewing on 6 May 2025 at 08:15?", "Follow the Road to Kyrenia",
        "The villa is 10 Minutes Drive from Kyrenia.", "Price 250,000 GBP. Way too high!",
        "Kat 3, Daire 5 mi?", "It is on the High Street near the bank.",
    ],
)
def test_places_streets_without_numbers_and_room_counts_are_not_addresses(text: str) -> None:
    """A place or street name alone is where, not an address."""
    assert redact_all_text(text) == text


def test_addresses_are_kept_by_the_default_policy() -> None:
    """SPEC §3: MEMORY_REDACT_ADDRESS defaults to false."""
    text = "Flat 4, 27 Ataturk Street"
    assert redact_text(text) == text
