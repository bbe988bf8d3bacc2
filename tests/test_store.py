import urllib.request
import uuid

import pytest

from editloop.settings import Settings
from editloop.store import blob_key, open_store
from editloop.store.base import BlobNotFound


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return open_store(Settings(state_dir=tmp_path))
    endpoint = request.getfixturevalue("s3_server")
    return open_store(Settings(blob_backend="s3", s3_endpoint=endpoint, s3_access_key="test",
                               s3_secret_key="testsecret", s3_bucket=f"b{uuid.uuid4().hex[:12]}"))


def test_put_is_content_addressed_and_idempotent(store):
    data = b"\x89PNG fake bytes " + uuid.uuid4().bytes
    key = store.put(data, "image/png")
    assert key == blob_key(data) and key.startswith("sha256:") and len(key) == 71
    assert store.put(data) == key
    assert store.exists(key) and store.get(key) == data


def test_url_serves_the_bytes(store):
    data = uuid.uuid4().bytes * 100
    key = store.put(data)
    url = store.url(key)
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.read() == data
    if url.startswith("http"):
        assert "X-Amz-Signature=" in url and "X-Amz-Expires=" in url  # presigned, expiring


def test_missing_and_malformed_keys(store):
    missing = blob_key(b"never stored " + uuid.uuid4().bytes)
    assert not store.exists(missing)
    with pytest.raises(BlobNotFound):
        store.get(missing)
    with pytest.raises(BlobNotFound):
        store.url(missing)
    with pytest.raises(ValueError, match="`key` must look like 'sha256:<64 hex digits>', got '../etc/passwd'"):
        store.get("../etc/passwd")


def test_delete(store):
    key = store.put(b"to delete " + uuid.uuid4().bytes)
    store.delete(key)
    assert not store.exists(key)


def test_local_store_leaves_no_partial_files(tmp_path):
    store = open_store(Settings(state_dir=tmp_path))
    for i in range(20):
        store.put(bytes([i]) * 1000)
    leftovers = [p for p in (tmp_path / "blobs").rglob(".tmp-*")]
    assert leftovers == []
