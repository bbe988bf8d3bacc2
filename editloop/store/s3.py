"""Blob store on MinIO or any S3 endpoint, through the minio client."""

from __future__ import annotations

import io
from datetime import timedelta

from minio import Minio
from minio.error import S3Error

from editloop.store.base import BlobNotFound, BlobStore, blob_key, object_name


class S3BlobStore(BlobStore):
    def __init__(self, endpoint: str, access_key: str, secret_key: str, bucket: str,
                 secure: bool = False, region: str = "us-east-1") -> None:
        self.client = Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=secure, region=region)
        self.bucket = bucket
        if not self.client.bucket_exists(bucket):
            self.client.make_bucket(bucket)

    def put(self, data: bytes, content_type: str = "application/octet-stream") -> str:
        key = blob_key(data)
        if not self.exists(key):  # an S3 PUT is atomic: the object appears whole or not at all
            self.client.put_object(self.bucket, object_name(key), io.BytesIO(data), len(data),
                                   content_type=content_type)
        return key

    def get(self, key: str) -> bytes:
        try:
            response = self.client.get_object(self.bucket, object_name(key))
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject"):
                raise BlobNotFound(key) from None
            raise
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def exists(self, key: str) -> bool:
        try:
            self.client.stat_object(self.bucket, object_name(key))
            return True
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
                return False
            raise

    def delete(self, key: str) -> None:
        self.client.remove_object(self.bucket, object_name(key))

    def url(self, key: str, expires: timedelta = timedelta(hours=1)) -> str:
        if not self.exists(key):
            raise BlobNotFound(key)
        return self.client.presigned_get_object(self.bucket, object_name(key), expires=expires)
