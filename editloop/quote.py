"""Client text in error messages: quoted, and cut to a short prefix (a client's text is never echoed whole)."""

from __future__ import annotations

QUOTED = 60  # characters of a refused text quoted back in an error


def quoted(text: str, limit: int = QUOTED) -> str:
    """`text`'s repr, cut to `limit` characters with the full length said (and the repr itself to 2 x `limit`:
    escapes of unprintable characters are up to ten characters each)."""
    shown = repr(text[:limit])
    if len(shown) > 2 * limit:
        shown = shown[:2 * limit] + "..."
    return shown if len(text) <= limit and not shown.endswith("...") else f"{shown}... ({len(text)} characters)"
