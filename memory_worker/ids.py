"""Identifiers that travel in Zep URL paths and Redis keys: one rule for every caller.

``thread_id`` and ``user_id`` are checked here by the read path, the write path
and the Zep boundary alike, so an id accepted by one is accepted by all (SPEC
§5, §6): up to 256 characters of ``[A-Za-z0-9._:@-]``, and neither ``.`` nor
``..``, which a URL path would resolve to its parent.
"""

from __future__ import annotations

import re
from typing import TypeGuard

ID_RULE = "must match [A-Za-z0-9._:@-]{1,256} and not be . or .."
_ID = re.compile(r"[A-Za-z0-9._:@-]{1,256}")
_DOT_SEGMENTS = frozenset({".", ".."})


def is_valid_id(value: object) -> TypeGuard[str]:
    """True when ``value`` is safe as a thread or user id."""
    return (isinstance(value, str) and _ID.fullmatch(value) is not None
            and value not in _DOT_SEGMENTS)
