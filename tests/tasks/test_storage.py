"""URI storage: atomic local writes, and the same behaviour on S3 (moto's server on loopback)."""

from __future__ import annotations

import os

import pytest

from include import storage


def test_local_roundtrip_and_listing(tmp_path):
    base = storage.path_to_uri(tmp_path)
    uri = storage.join(base, "a", "month=2025-01", "x.bin")
    storage.write_bytes(uri, b"hello")
    assert storage.exists(uri)
    assert storage.read_bytes(uri) == b"hello"
    assert storage.list_uris(storage.join(base, "a")) == [uri]
    storage.delete(uri)
    assert not storage.exists(uri)
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(uri)


def test_killed_write_leaves_no_object_and_keeps_the_old_one(tmp_path, monkeypatch):
    uri = storage.path_to_uri(tmp_path / "obj.bin")
    storage.write_bytes(uri, b"old")

    def crash(*_a, **_k):
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        storage.write_bytes(uri, b"new content that never lands")
    monkeypatch.undo()
    assert storage.read_bytes(uri) == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["obj.bin"]  # no temp file left behind


def test_s3_roundtrip(s3_env):
    storage.ensure_bucket("s3://lake-test")
    uri = "s3://lake-test/p/batches/month=2025-01/batch.parquet"
    assert not storage.exists(uri)
    storage.write_bytes(uri, b"\x00\x01")
    assert storage.exists(uri)
    assert storage.read_bytes(uri) == b"\x00\x01"
    assert storage.list_uris("s3://lake-test/p") == [uri]
    with pytest.raises(FileNotFoundError):
        storage.read_bytes("s3://lake-test/missing")
