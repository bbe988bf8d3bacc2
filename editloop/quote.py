"""Client text in error messages: quoted, and cut to a short prefix (a client's text is never echoed whole)."""

from __future__ import annotations

QUOTED = 60  # characters of a refused text quoted back in an error


def quoted(text: str, limit: int = QUOTED) -> str:
    """`text`'s repr, cut to `limit` characters with the full length said."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"
