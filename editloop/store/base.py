"""The blob store interface and content addressing."""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from datetime import timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from editloop.settings import Settings

_KEY = re.compile(r"^sha256:[0-9a-f]{64}$")


def blob_key(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_key(key: str) -> str:
    if not isinstance(key, str) or not _KEY.match(key):
        raise ValueError(f"`key` must look like 'sha256:<64 hex digits>', got {key!r}")
    return key


def object_name(key: str) -> str:
    """Where a key lives: sha256/ab/abcdef... (two-level fan-out)."""
    digest = check_key(key).split(":", 1)[1]
    return f"sha256/{digest[:2]}/{digest}"


class BlobNotFound(KeyError):
    """No blob under that key."""


class BlobStore(ABC):
    """Immutable, content-addressed blobs: putting the same bytes twice is a no-op."""

    @abstractmethod
    def put(self, data: bytes, content_type: str = "application/octet-stream") -> str: ...

    @abstractmethod
    def get(self, key: str) -> bytes: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def url(self, key: str, expires: timedelta = timedelta(hours=1)) -> str:
        """A GET URL for the blob (presigned and expiring on S3)."""


def open_store(settings: Settings) -> BlobStore:
    if settings.blob_backend == "s3":
        from editloop.store.s3 import S3BlobStore

        return S3BlobStore(settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key,
                           settings.s3_bucket, secure=settings.s3_secure, region=settings.s3_region)
    from editloop.store.local import LocalBlobStore

    return LocalBlobStore(settings.resolved_blob_dir())
