"""Blob store on a local directory (the embedded default)."""

from __future__ import annotations

import os
import tempfile
from datetime import timedelta
from pathlib import Path

from editloop.store.base import BlobNotFound, BlobStore, blob_key, object_name


class LocalBlobStore(BlobStore):
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / object_name(key)

    def put(self, data: bytes, content_type: str = "application/octet-stream") -> str:
        key = blob_key(data)
        path = self._path(key)
        if path.is_file():
            return key
        path.parent.mkdir(parents=True, exist_ok=True)
        # write beside, fsync, rename: readers never see a partial blob
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return key

    def get(self, key: str) -> bytes:
        path = self._path(key)
        if not path.is_file():
            raise BlobNotFound(key)
        return path.read_bytes()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def url(self, key: str, expires: timedelta = timedelta(hours=1)) -> str:
        if not self.exists(key):
            raise BlobNotFound(key)
        return self._path(key).resolve().as_uri()
