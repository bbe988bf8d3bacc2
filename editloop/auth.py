"""Client tokens for the gRPC services: made, listed, revoked and looked up (`editloop auth`).

A token is `elt_` + 32 random bytes (URL-safe base64); the database keeps its SHA-256 only, so a copy of the
database reveals no token (a slow hash buys nothing for 256 random bits). Scopes name what a token may call:
`generate` (Generator), `edit` (Editor), `score` (Reward), `admin` (everything).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from editloop.db.models import ApiToken

SCOPES = ("generate", "edit", "score", "admin")
PREFIX = "elt_"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class TokenInfo:
    name: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def parse_scopes(text: str) -> list[str]:
    """'generate,edit' -> ['edit', 'generate']; ValueError naming an unknown scope and the valid ones."""
    scopes = sorted({s.strip() for s in text.split(",") if s.strip()})
    if not scopes:
        raise ValueError(f"`--scopes` must name at least one of {', '.join(SCOPES)}")
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise ValueError(f"`--scopes` names unknown scopes {unknown}; scopes are {', '.join(SCOPES)}")
    return scopes


def create_token(session: Session, name: str, scopes: list[str]) -> str:
    """Store a new token's hash under `name`; returns the token (shown once, never stored)."""
    if not NAME.fullmatch(name):
        raise ValueError(f"`name` must be 1-64 letters, digits, '_', '.' or '-' (starting with a letter or digit), "
                         f"got {name[:40]!r}")
    found = session.scalars(select(ApiToken).where(ApiToken.name == name)).first()
    if found is not None:
        raise ValueError(f"a token named {name!r} exists ({'revoked' if found.revoked_at else 'live'}); names are "
                         f"never reused, choose another")
    token = PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(name=name, token_hash=token_hash(token), scopes=",".join(parse_scopes(",".join(scopes)))))
    return token


def revoke_token(session: Session, name: str) -> ApiToken:
    row = session.scalars(select(ApiToken).where(ApiToken.name == name)).first()
    if row is None:
        raise ValueError(f"no token named {name[:64]!r} (`editloop auth list` shows them)")
    if row.revoked_at is None:
        row.revoked_at = datetime.now(UTC)
    return row


def list_tokens(session: Session) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).order_by(ApiToken.id)))


def lookup(session: Session, token: str) -> TokenInfo | None:
    """The live token's name and scopes, or None (unknown, revoked or malformed)."""
    if not token.startswith(PREFIX) or len(token) > 128:
        return None
    row = session.scalars(select(ApiToken).where(ApiToken.token_hash == token_hash(token))).first()
    if row is None or row.revoked_at is not None:
        return None
    return TokenInfo(row.name, frozenset(row.scopes.split(",")))
