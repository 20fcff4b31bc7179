"""Email addresses, RFC 5322 as people write them, in one linear regex pass.

The local part takes letters and digits of any script, ``. _ + % -`` and
combining marks; quoted local parts and the rarer RFC symbols (``/ = ? &``,
quotes) are left out because in chat they belong to URLs and quotations.
The domain needs at least one dot and an alphabetic (or punycode) top-level
label, so a bare ``user@host`` or an ``@handle`` is not an email.

Why it stays linear: a match may only start where a local part starts (the
look-behinds reject every position inside a run), every repetition is bounded
(64 characters of local part, 8 labels of at most 63) and a dot can only be
read one way, so a failed attempt costs a bounded amount of work per start.
"""

from __future__ import annotations

import re

from memory_worker.redaction.spans import Span

_MARKS = "\u0300-\u036f"
_ATOM = rf"\w+%{_MARKS}-"  # local-part characters other than the dot
_LABEL = rf"[^\W_](?:[\w{_MARKS}-]{{0,61}}[^\W_])?"

_ADDRESS = rf"""
    [{_ATOM}]                         # local part: a dot only between two other characters
    (?:[{_ATOM}]|\.(?=[{_ATOM}])){{0,63}}
    @
    (?:{_LABEL}\.){{1,8}}               # domain: at least one dot ...
    (?P<tld>[^\W\d_]{{2,24}}|xn--[a-z0-9-]{{1,59}})  # ... and a top-level label
    (?!\w|-\w)                        # the last label ends here
"""
_EMAIL = re.compile(
    rf"""
    (?<![{_ATOM}])                    # not inside a local part ...
    (?<![{_ATOM}]\.)                  # ... nor right after one of its dots
    {_ADDRESS}""",
    re.VERBOSE | re.IGNORECASE,
)
# Right after an address, or after its closing dot ("a@b.com.c@d.com"), a new
# one may start although it follows letters; this is tried only at that spot.
_EMAIL_AT = re.compile(_ADDRESS, re.VERBOSE | re.IGNORECASE)

# File names such as ``logo@2x.png`` look like addresses; no real top-level
# domain is an image or document extension, so these endings disqualify.
_FILE_EXTENSIONS = frozenset(
    {"png", "jpg", "jpeg", "gif", "webp", "svg", "bmp", "tif", "tiff", "ico", "heic",
     "avif", "pdf", "doc", "docx", "xls", "xlsx", "txt", "csv", "mp4"}
)


def find_emails(text: str) -> list[Span]:
    """Every email address in ``text``, in order, without overlaps."""
    if "@" not in text:
        return []
    spans: list[Span] = []
    position = 0
    while (match := _EMAIL.search(text, position)) is not None:
        while match is not None:
            if match.group("tld").lower() not in _FILE_EXTENSIONS:
                spans.append(Span(match.start(), match.end(), "email"))
            position = match.end()
            # An address may follow at once: after the closing dot
            # ("a@b.com.c@d.com"), or glued by a local-part character
            # ("a@b.com+c@d.com"), which a look-behind would refuse.
            after = position + 1 if text.startswith(".", position) else position
            match = _EMAIL_AT.match(text, after) if after < len(text) else None
    return spans
