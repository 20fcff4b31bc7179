"""Phone redaction: each written form of each region, the context rule, and the
numbers that are not phones (prices, dates, times, IDs, codes) left intact."""

from __future__ import annotations

import pytest

from memory_worker.redaction import redact_text


@pytest.mark.parametrize(
    "number",
    [
        "0533 123 45 67", "0 533 123 45 67", "05331234567", "0533-123-45-67",
        "0533.123.45.67", "0 (533) 123 45 67", "(0533) 123 45 67", "0548 641 3501",
        "+90 533 123 45 67", "+905331234567", "+90 (533) 123 4567", "+90.548.719.2184",
        "+90-533-123-45-67", "00 90 533 289 75 21", "0090 533 289 75 21",
    ],
)
def test_turkish_mobile_numbers_are_redacted_in_every_common_format(number: str) -> None:
    """Trunk 0, +90, 00 90; spaces, dots, hyphens and parentheses."""
    assert redact_text(f"Numaram {number}, akşam arayın.") == "Numaram [PHONE], akşam arayın."


@pytest.mark.parametrize(
    "number",
    ["0392 444 29 35", "+90 392 855 74 49", "0 392 816 07 18", "+90 (392) 816 5797",
     "+903923712355", "0212 432 63 45", "+90 (252) 819 1376", "03248217886"],
)
def test_north_cyprus_and_turkish_landlines_are_redacted(number: str) -> None:
    """North Cyprus is +90 392; Turkish area codes validate the same way."""
    assert redact_text(f"Ofis telefonu {number}.") == "Ofis telefonu [PHONE]."


@pytest.mark.parametrize(
    "number",
    ["+357 24 463134", "+357 96 162 208", "00357 94 105821", "+44 7907 691000",
     "+44 (0) 7840 048662", "+44 20 7636 2134", "07840 048662", "020 7636 2134",
     "+49 (0)89 88570159", "+49 151 94480477", "+7 (499) 402-54-02", "+7 929 731-57-31",
     "+1 (213) 915-1484", "+1 702-953-0863", "+1 718 332 4940", "07700 900123"],
)
def test_cypriot_british_and_other_international_numbers_are_redacted(number: str) -> None:
    """+/00 forms of any country, and British national numbers with trunk 0."""
    assert redact_text(f"You can reach me on {number}.") == "You can reach me on [PHONE]."


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0533 123 45 67'yi ara", "[PHONE]'yi ara"),
        ("0548 641 3501'i arayın", "[PHONE]'i arayın"),
        ("+7 (499) 912-79-12'yi arayın", "[PHONE]'yi arayın"),
        ("542 553 6336'yı arayın", "[PHONE]'yı arayın"),
        ("03248217886’dan ulaşın", "[PHONE]’dan ulaşın"),
    ],
)
def test_turkish_mobile_with_suffix_is_redacted_and_suffix_kept(
    text: str, expected: str
) -> None:
    """The suffix after the apostrophe is grammar, not part of the number."""
    assert redact_text(text) == expected


@pytest.mark.parametrize(
    "text",
    ["Cep numaram 5423990708, whatsapp da var.", "Text me at 5341884068 please",
     "Tel: 5321234567", "Call 5059876543 after six", "whatsapp: 5421234567",
     "My number is 5331234567.", "5421234567'yi arayın", "mobile 5331234567"],
)
def test_bare_ten_digit_mobile_is_redacted_when_the_words_say_phone(text: str) -> None:
    """Context words (tel, numaram, call, text, whatsapp, mobile, arayın) decide."""
    assert "[PHONE]" in redact_text(text)


@pytest.mark.parametrize(
    "text",
    ["İlan numarası 5487175262 olan daireyi görmek istiyorum.",
     "Order number 5485457398 - when will the furniture arrive?",
     "Sipariş numarası 5333558585, eşyalar ne zaman gelir?",
     "Listing 5756312806 looks perfect.", "5336524085 numaralı ilanı gördüm.",
     "Reference 5321234567, 2 bedroom in Esentepe.", "Ref: 5321234567",
     "Müşteri no 5321234567", "İlan no: 5421234567",
     "Bize ulaşabilirsiniz. 5421234567 numaralı ilan hâlâ var mı?"],
)
def test_listing_order_and_reference_numbers_starting_with_5_are_kept(text: str) -> None:
    """Words saying listing, order, ilan or ref win over the mobile-like shape."""
    assert redact_text(text) == text


def test_bare_number_grouped_like_a_phone_needs_no_context_word() -> None:
    """``533 334 66 48`` is written the way phone numbers are written."""
    assert redact_text("Ahmet: 533 334 66 48") == "Ahmet: [PHONE]"


def test_a_bare_unformatted_number_is_kept_when_words_name_something_else() -> None:
    """Words saying code, listing or order keep ten bare digits."""
    assert redact_text("Kod 5321234567 geçerli mi?") == "Kod 5321234567 geçerli mi?"
    assert redact_text("Bunu 4151036567 ile karşılaştır") == "Bunu 4151036567 ile karşılaştır"


def test_a_bare_turkish_mobile_without_any_word_is_redacted() -> None:
    """A leaked number costs more than a redacted listing number: 5xx alone is a phone."""
    assert redact_text("5321234567") == "[PHONE]"
    assert redact_text("Ahmet 5321112233") == "Ahmet [PHONE]"


def test_cypriot_eight_digit_number_is_redacted_only_with_a_phone_word() -> None:
    """Eight digits are a date, a listing or a Cypriot number; only words tell."""
    assert redact_text("Mob: 99 123456") == "Mob: [PHONE]"
    assert redact_text("Landline 22 123456") == "Landline [PHONE]"
    assert redact_text("İlan no: 99334166") == "İlan no: 99334166"
    assert redact_text("about listing 25524445.") == "about listing 25524445."


def test_two_numbers_side_by_side_are_two_redactions() -> None:
    """A run holding two numbers is cut where the second trunk 0 starts."""
    assert redact_text("Tel 0533 123 45 67 0542 111 22 33") == "Tel [PHONE] [PHONE]"
    assert redact_text("0533 123 45 67 / 0392 815 53 23") == "[PHONE] / [PHONE]"


def test_a_stray_group_after_a_number_is_left_out() -> None:
    """``... 45 67 2+1`` redacts the number and keeps the room count."""
    assert redact_text("Tel 0533 123 45 67 2+1 daire") == "Tel [PHONE] 2+1 daire"


def test_enclosing_parentheses_stay_outside_the_placeholder() -> None:
    """Only an area code keeps its parentheses inside the number."""
    assert redact_text("(0533 123 45 67)") == "([PHONE])"
    assert redact_text("(545) 678-0231 arayın") == "[PHONE] arayın"


def test_full_width_digits_are_read_as_digits() -> None:
    """Digits typed on other keyboards are validated like ASCII ones."""
    assert redact_text("Tel: ０５３３ １２３ ４５ ６７") == "Tel: [PHONE]"


@pytest.mark.parametrize(
    "text",
    [
        # prices and price ranges
        "Fiyat 23.210.000 TL, pazarlık payı var.", "Aidat aylık ₺66.500, depozito £1,550 pcm.",
        "costs 405,000 GBP", "$1,165,000", "bütçemiz 100.000-245.000 TL", "£255,000–£380,000",
        "Fiyat 5 250 000 TL", "€200.000-270.000",
        # dates, date ranges, times, years
        "Randevu 04/01/2026 saat 10:15", "on 23.09.2025.", "Teslim tarihi 2024-07-24",
        "04.07.23", "01.01.2024-28.02.2024 tarihleri", "12/02/2026 – 04/03/2026",
        "10-22 Nisan 2026", "Ofisimiz 09:00 - 16:00 arası", "hafta içi 10.00-20.30",
        "built in 2006", "Tel: hafta içi 11.00-18.30 arası", "Arayın: 28.09.2024 saat 17:20",
        # rooms, areas, coordinates
        "2+1, 150 m², 3+1 dubleks", "1.344 m2 arsa", "248m2", "35.3228, 33.9940",
        # IBANs, TCKN, plates, versions, references
        "GB34 MIDL 2126 9018 4134 19", "TR27 0004 6044 7375 9735 2929 78",
        "TR760004609629380805235606", "CY47 0185 2977 0939 0728 3671 5422",
        "TC kimlik numaram 51052172306", "My TC ID number is 89758297634",
        "Aracın plakası 06 CC 4480", "A car with plate 19 TRN 625",
        "The app crashed on version v11.2.12", "Uygulama 13.10.1 sürümünde",
        "Reference KYR-2023-22232", "Referans: 2023/4326", "Listing #38813624",
        "https://www.kktc-ilan.com/ilan/33385479", "www.northcyprusproperty.co.uk/?ref=2029797636",
        "listing 3625959205", "4428163510 numaralı ilanı",
    ],
)
def test_figures_that_are_not_phones_are_never_redacted(text: str) -> None:
    """Prices, dates, times, years, rooms, m², coordinates, IBAN, TCKN, plates, versions."""
    assert redact_text(text) == text


def test_a_phone_next_to_prices_times_and_dates_leaves_them_intact() -> None:
    """Only the number goes; the figures around it are the assistant's material."""
    text = ("Whatsapp: 00 90 548 397 79 86 Fiyat 23.210.000 TL. Ofis telefonu 392 720 0636, "
            "hafta içi 10.00-20.30 arası, randevu 05.11.2024.")
    assert redact_text(text) == (
        "Whatsapp: [PHONE] Fiyat 23.210.000 TL. Ofis telefonu [PHONE], "
        "hafta içi 10.00-20.30 arası, randevu 05.11.2024."
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tel.0542 111 22 33", "tel.[PHONE]"),
        ("tel.+44 7700 900123", "tel.[PHONE]"),
        ("tel.+7 (495) 123-45-67", "tel.[PHONE]"),
        ("tel.05331112233", "tel.[PHONE]"),
        ("tel:+49 30/12345678 (whatsapp)", "tel:[PHONE] (whatsapp)"),
        ("Tel05331112233", "Tel[PHONE]"),
        ("☎0533 111 22 33", "☎[PHONE]"),
        ("📞 5321112233", "📞 [PHONE]"),
        ("whatsapp:+905331112233", "whatsapp:[PHONE]"),
        ("Numaram:0533 111 22 33", "Numaram:[PHONE]"),
        ("Müşterinin numarası 0533 111 22 33, maili a@b.com, ilan no 5123456",
         "Müşterinin numarası [PHONE], maili [EMAIL], ilan no 5123456"),
        ("sipariş no 7530000000. Müşterinin numarası 0507 111 2233",
         "sipariş no 7530000000. Müşterinin numarası [PHONE]"),
        ("0 532 111 22 33'ü ara", "[PHONE]'ü ara"),
        ("90 216 111 22 33", "[PHONE]"),
        ("Ara: 90 554 111 22 33", "Ara: [PHONE]"),
        ("5321112233 numaramdan whatsapp'tan yazın", "[PHONE] numaramdan whatsapp'tan yazın"),
        ("Türkiye numaram 501 111 2233", "Türkiye numaram [PHONE]"),
        ("542 111 2233", "[PHONE]"),
        ("+49 30/12345678", "[PHONE]"),
        ("+7 (912) 123-45-67", "[PHONE]"),
        ("+44 7700 900123", "[PHONE]"),
        ("İlan no 1234. 0392 444 11 22’u ara", "İlan no 1234. [PHONE]’u ara"),
        ("Ev sahibinin numarası 96108868'a yazın", "Ev sahibinin numarası [PHONE]'a yazın"),
    ],
)
def test_the_shapes_that_leaked_are_redacted(text: str, expected: str) -> None:
    """Labels glued before, listing numbers nearby, a separated 0, a country code without +."""
    assert redact_text(text) == expected


@pytest.mark.parametrize(
    "number",
    ["030 12345678", "030/12345678", "0151 23456789", "8 (495) 123-45-67", "8 912 123 45 67",
     "(213) 915-1484", "213-915-1484", "1-213-915-1484", "7 495 123 45 67", "357 99 123456",
     "44 7700 900123", "0044 7700 900123", "wa.me/905331112233"],
)
def test_german_russian_and_us_national_forms_are_redacted(number: str) -> None:
    """National forms of Germany, Russia and the US, and country codes without +."""
    assert "[PHONE]" in redact_text(f"Telefon: {number}")
    assert not any(char.isdigit() for char in redact_text(f"Telefon: {number}"))


@pytest.mark.parametrize(
    "text",
    ["Ref: 5321234567 0533 111 22 33 ara, ben bakarım", "İlan no 5323617104 +1 201 237 2160'ı ara",
     "TCKN: 34628512416 tel: 0533 111 22 33", "IBAN GB82 MIDL 0721 7362 3835 40 tel 0533 111 22 33",
     "kimlik numaram 32468239906 whatsapp: 0533 111 22 33"],
)
def test_a_phone_word_after_another_figure_does_not_make_it_a_phone(text: str) -> None:
    """Words after a listing number or an ID speak of the phone that follows, not of it."""
    redacted = redact_text(text)
    kept = [chunk for chunk in text.split() if chunk.isdigit() and len(chunk) >= 10][:1]
    assert all(chunk in redacted for chunk in kept) and "[PHONE]" in redacted
