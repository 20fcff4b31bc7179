"""Properties of the redactor over generated text (hypothesis)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memory_worker.redaction import redact_all_text, redact_pii, redact_text

# Fragments that make generated text look like the chat's messages, so that
# the generator reaches phones, emails and addresses, not only noise.
_FRAGMENTS = st.sampled_from([
    " ", "\n", ", ", ". ", "'ye ", "(", ")", "+", "-", "/", ":", "@", ".", "[", "]", "0", "5",
    "9", "0533 123 45 67", "+90 392 ", "00 357 ", "5321234567", "99 123456", "2+1", "150.000",
    "05.11.2024", "ali", "ayse@ornek", ".com.tr", "x@2x.png", "Tel", "ilan no", "numaram ",
    "Flat 4, ", "27 Ataturk Street", "Atatürk Cad.", " No: 12", " Daire 3", "Mah.", " Sok.",
    "[PHONE]", "[EMAIL]", "[ADDRESS]", "İ", "ı", "ş", "é", "\u0301", "０",
])
_CHAT_TEXT = st.lists(_FRAGMENTS, max_size=30).map("".join)
_ANY_TEXT = st.text(alphabet=st.characters(exclude_categories=()), max_size=200)

_ATOM = st.text(alphabet="abcdefghijklmnopqrstuvwxyzçğışöüABCXYZÇŞ0123456789_+-", min_size=1,
                max_size=12)
_LOCAL = st.lists(_ATOM, min_size=1, max_size=3).map(".".join)
_LABEL = st.from_regex(r"[a-z0-9çöü]([a-z0-9çöü-]{0,10}[a-z0-9çöü])?", fullmatch=True)
_TLD = st.sampled_from(["com", "net", "org", "tr", "uk", "de", "ru", "law", "museum", "КОМ"])
_EMAILS = st.builds(
    lambda local, labels, tld: f"{local}@{'.'.join(labels)}.{tld}",
    _LOCAL, st.lists(_LABEL, min_size=1, max_size=3), _TLD,
)
_BEFORE = st.sampled_from(["", " ", "\n", "(", "<", ": ", "mail: ", "E-posta "])
_AFTER = st.sampled_from(["", " ", "\n", ")", ">", ".", ",", "'ye ", "’den", "?", "; "])

_RELAXED = settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)


@_RELAXED
@given(st.one_of(_CHAT_TEXT, _ANY_TEXT))
def test_redaction_is_idempotent(text: str) -> None:
    """Redacting redacted text changes nothing, whatever the policy."""
    for redact in (redact_text, redact_all_text):
        once = redact(text)
        assert redact(once) == once


@_RELAXED
@given(st.one_of(_CHAT_TEXT, _ANY_TEXT))
def test_no_text_makes_the_redactor_raise(text: str) -> None:
    """Any str (surrogates, controls, marks) comes back as a str with consistent lengths."""
    result = redact_pii(text, redact_address=True)

    assert result["original_length"] == len(text)
    assert result["redacted_length"] == len(result["text"])
    counts = result["redactions"]
    assert min(counts["email"], counts["phone"], counts["address"]) >= 0


@_RELAXED
@given(_EMAILS, _BEFORE, _AFTER, _CHAT_TEXT, _CHAT_TEXT)
def test_no_email_of_the_input_survives_in_the_output(
    email: str, before: str, after: str, left: str, right: str
) -> None:
    """An email embedded anywhere in chat-like text is not in the redacted text."""
    text = f"{left} {before}{email}{after} {right}"

    assert email not in redact_text(text)
    assert email not in redact_all_text(text)
