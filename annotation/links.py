"""Image links Label Studio (and the annotator's browser) can fetch, and nothing public by default.

S3 backend: presigned GET URLs from the store. Local backend: editloop's small image endpoint
(annotation/web.py) with links signed by HMAC-SHA256 over (key, expiry); the secret comes from
EDITLOOP_LINK_SECRET or a random one kept in <state_dir>/link-secret (mode 0600).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from datetime import timedelta

from editloop.quote import quoted
from editloop.settings import Settings
from editloop.store.base import BlobStore, check_key


def link_secret(settings: Settings) -> bytes:
    if settings.link_secret:
        return settings.link_secret.encode()
    path = settings.state_dir / "link-secret"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{secrets.token_hex(4)}")
        tmp.write_text(secrets.token_hex(32))
        tmp.chmod(0o600)
        try:
            os.link(tmp, path)  # atomic create-if-absent: two processes starting together agree on one secret
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip().encode()


def signature(secret: bytes, key: str, expires: int) -> str:
    return hmac.new(secret, f"{key}|{expires}".encode(), hashlib.sha256).hexdigest()


def verify(secret: bytes, key: str, expires: str, sig: str, now: float | None = None) -> str | None:
    """None if the link is good, else why not (for the 403 body)."""
    try:
        check_key(key)
    except ValueError as exc:
        return str(exc)
    if not re.fullmatch(r"[0-9]{1,12}", expires):  # not int() on anything: 5000 digits would raise
        return f"`exp` must be a unix time (1 to 12 digits), got {quoted(expires, 20)}"
    if int(expires) < (now if now is not None else time.time()):
        return "link expired"
    if not hmac.compare_digest(signature(secret, key, int(expires)), sig):
        return "bad signature"
    return None


def webhook_token(settings: Settings) -> str:
    """Label Studio sends this header with every webhook; the receiver refuses requests without it."""
    return hmac.new(link_secret(settings), b"webhook", hashlib.sha256).hexdigest()


class LinkMaker:
    """key -> URL an annotator's browser can load, expiring after `ttl`."""

    def __init__(self, settings: Settings, store: BlobStore) -> None:
        self.settings, self.store = settings, store
        self.ttl = timedelta(hours=settings.link_ttl_hours)
        self.base = settings.resolved_annotation_web_url()
        self._secret = link_secret(settings) if settings.blob_backend == "local" else b""

    def __call__(self, key: str) -> str:
        if self.settings.blob_backend == "s3":
            return self.store.url(key, self.ttl)
        expires = int(time.time() + self.ttl.total_seconds())
        return f"{self.base}/blobs/{check_key(key)}?exp={expires}&sig={signature(self._secret, key, expires)}"
