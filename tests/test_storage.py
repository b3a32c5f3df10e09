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


_KILLED_WRITE = r"""
import os, sys, time
from include import storage
def hang(fd):
    print("writing", flush=True)
    time.sleep(600)
os.fsync = hang
storage.write_bytes(sys.argv[1], b"x" * 1_000_000)
"""


def test_a_write_killed_midway_leaves_debris_that_the_next_write_removes(tmp_path, project_root):
    import os
    import signal
    import subprocess
    import sys

    uri = storage.path_to_uri(tmp_path / "lake" / "batch.parquet")
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITE, uri], cwd=project_root, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    debris = [p for p in (tmp_path / "lake").iterdir() if p.name.endswith(".tmp")]
    assert len(debris) == 1 and not (tmp_path / "lake" / "batch.parquet").exists()
    assert storage.list_uris(storage.path_to_uri(tmp_path / "lake")) == []  # never listed as data

    storage.write_bytes(uri, b"whole")
    assert sorted(p.name for p in (tmp_path / "lake").iterdir()) == ["batch.parquet"]
    assert storage.read_bytes(uri) == b"whole"


def test_a_live_writers_temporary_file_is_left_alone(tmp_path):
    import os

    from include.storage import _HOST

    target = tmp_path / "model.skops"
    live = tmp_path / f".model.skops.{_HOST}-{os.getpid()}.abcd1234.tmp"  # this process: alive
    live.write_bytes(b"in progress")
    storage.write_bytes(storage.path_to_uri(target), b"done")
    assert live.exists()
    assert storage.sweep_temporaries(storage.path_to_uri(tmp_path), older_than_s=3600) == 0
    os.utime(live, (0, 0))  # a day-old leftover from another host would look like this
    assert storage.sweep_temporaries(storage.path_to_uri(tmp_path), older_than_s=3600) == 0  # still alive
    other = tmp_path / ".model.skops.otherhost-1.efgh5678.tmp"
    other.write_bytes(b"left by a killed writer elsewhere")
    os.utime(other, (0, 0))
    assert storage.sweep_temporaries(storage.path_to_uri(tmp_path), older_than_s=3600) == 1
    assert not other.exists()


def test_incomplete_multipart_uploads_are_aborted_on_s3(s3_env):
    import uuid

    client = storage.s3_client()
    bucket = f"debris-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    key = "slipway/telco_churn/runs/month=2025-12/model.skops"
    upload = client.create_multipart_upload(Bucket=bucket, Key=key)
    client.upload_part(Bucket=bucket, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=b"x" * 1024)
    other = client.create_multipart_upload(Bucket=bucket, Key="slipway/other/object")
    assert len(client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])) == 2
    assert storage.list_uris(f"s3://{bucket}/slipway") == []  # a partial upload is never data

    storage.write_bytes(f"s3://{bucket}/{key}", b"whole")
    left = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert [u["UploadId"] for u in left] == [other["UploadId"]]  # only that key's debris went
    assert storage.read_bytes(f"s3://{bucket}/{key}") == b"whole"
    assert storage.sweep_temporaries(f"s3://{bucket}/slipway", older_than_s=0) == 1
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_s3_writes_request_server_side_encryption(s3_env, monkeypatch):
    storage.ensure_bucket("s3://lake-sse")
    uri = "s3://lake-sse/p/batch.parquet"
    storage.write_bytes(uri, b"x")
    head = storage.s3_client().head_object(Bucket="lake-sse", Key="p/batch.parquet")
    assert head["ServerSideEncryption"] == "AES256"
    monkeypatch.setenv("SLIPWAY_S3_SSE", "none")  # a store without encryption support
    storage.write_bytes(uri, b"y")
    assert "ServerSideEncryption" not in storage.s3_client().head_object(
        Bucket="lake-sse", Key="p/batch.parquet"
    )
    monkeypatch.setenv("SLIPWAY_S3_SSE", "rot13")
    with pytest.raises(ValueError, match="use AES256, aws:kms or none"):
        storage.write_bytes(uri, b"z")
    assert storage.read_bytes(uri) == b"y"  # the refused write changed nothing


@pytest.mark.parametrize(
    "part", ["..", "../etc", "a/../../b", ".", "x\\..\\y", "%2e%2e", "a%2f%2E%2E%2fb", "%252e%252e"]
)
def test_a_key_segment_that_climbs_out_of_its_root_is_refused(tmp_path, part):
    from include.uri import UnsafePath

    root = storage.path_to_uri(tmp_path / "lake")
    with pytest.raises(UnsafePath, match="not allowed in a key"):
        storage.join(root, "telco_churn", part, "batch.parquet")
    assert not (tmp_path / "lake").exists()


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_large_local_file_is_put_whole_and_read_back_through_a_local_copy(where, tmp_path, request):
    """write_file: the output of a batch run, too large for memory, moved or uploaded in one piece."""
    if where == "s3":
        request.getfixturevalue("s3_env")
        storage.ensure_bucket("s3://lake-files")
        uri = "s3://lake-files/p/scores/month=2025-12/version=3/scores.parquet"
    else:
        uri = storage.path_to_uri(tmp_path / "lake" / "scores.parquet")
    source = tmp_path / "out.parquet"
    payload = os.urandom(3 << 20)
    source.write_bytes(payload)
    storage.write_bytes(uri, b"old")
    assert storage.write_file(uri, source) == uri
    assert storage.read_bytes(uri) == payload and storage.list_uris(uri.rsplit("/", 1)[0]) == [uri]
    (tmp_path / "dl").mkdir()
    assert storage.local_copy(uri, tmp_path / "dl").read_bytes() == payload
    with pytest.raises(FileNotFoundError):
        storage.local_copy(uri + ".missing", tmp_path / "dl")
