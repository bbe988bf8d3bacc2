"""Content-addressed blob store: images and checkpoints, local directory or S3 (MinIO)."""

from editloop.store.base import BlobStore, blob_key, open_store

__all__ = ["BlobStore", "blob_key", "open_store"]
