"""Read and write objects by URI (``file://`` or ``s3://``), atomically.

A local write goes to a temporary file in the same folder and is renamed into place, so a
killed task never leaves half an object. An S3 PUT is atomic by the service's own semantics
(the object appears whole or not at all), so no temporary key is needed there.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from urllib.parse import quote, unquote, urlparse


class StorageError(RuntimeError):
    """An object could not be read or written; the message names the URI and the fix."""


def _local_path(uri: str) -> Path:
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "":
        return Path(uri)
    raise StorageError(f"{uri}: not a local path")


def _split_s3(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    return parsed.netloc, parsed.path.lstrip("/")


def path_to_uri(path: str | Path) -> str:
    """``file://`` URI of a local path, keeping ``=`` readable (Hive-style partition keys)."""
    return "file://" + quote(str(Path(path).resolve()), safe="/=:@+,-_.~")


def is_s3(uri: str) -> bool:
    """True for ``s3://`` URIs."""
    return uri.startswith("s3://")


def join(base: str, *parts: str) -> str:
    """Join URI path segments with single slashes."""
    out = base.rstrip("/")
    for part in parts:
        out += "/" + part.strip("/")
    return out


def s3_client():
    """A boto3 S3 client honouring ``AWS_ENDPOINT_URL`` (MinIO, moto, or AWS when unset)."""
    import boto3

    from include.settings import get_settings

    return boto3.client("s3", endpoint_url=get_settings().s3_endpoint_url)


def write_bytes(uri: str, data: bytes) -> str:
    """Write ``data`` at ``uri`` atomically; return the URI."""
    if is_s3(uri):
        bucket, key = _split_s3(uri)
        s3_client().put_object(Bucket=bucket, Key=key, Body=data)
        return uri
    path = _local_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return uri


def read_bytes(uri: str) -> bytes:
    """Read the object at ``uri``; a missing object raises :class:`FileNotFoundError`."""
    if is_s3(uri):
        from botocore.exceptions import ClientError

        bucket, key = _split_s3(uri)
        try:
            return s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
                raise FileNotFoundError(uri) from exc
            raise
    path = _local_path(uri)
    if not path.is_file():
        raise FileNotFoundError(uri)
    return path.read_bytes()


def exists(uri: str) -> bool:
    """True if an object is stored at ``uri``."""
    if is_s3(uri):
        from botocore.exceptions import ClientError

        bucket, key = _split_s3(uri)
        try:
            s3_client().head_object(Bucket=bucket, Key=key)
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return False
            raise
    return _local_path(uri).is_file()


def list_uris(prefix_uri: str) -> list[str]:
    """Sorted URIs of the objects directly or indirectly under ``prefix_uri`` (temp files excluded)."""
    if is_s3(prefix_uri):
        bucket, prefix = _split_s3(prefix_uri.rstrip("/") + "/")
        client = s3_client()
        out: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            out.extend(f"s3://{bucket}/{obj['Key']}" for obj in page.get("Contents", []))
        return sorted(out)
    root = _local_path(prefix_uri)
    if not root.is_dir():
        return []
    return sorted(
        path_to_uri(p)
        for p in root.rglob("*")
        if p.is_file() and not (p.name.startswith(".") and p.name.endswith(".tmp"))
    )


def delete(uri: str) -> None:
    """Remove the object at ``uri`` if it exists."""
    if is_s3(uri):
        bucket, key = _split_s3(uri)
        s3_client().delete_object(Bucket=bucket, Key=key)
        return
    _local_path(uri).unlink(missing_ok=True)


def ensure_bucket(uri: str) -> None:
    """Create the S3 bucket named by ``uri`` if it is missing (no-op for local URIs)."""
    if not is_s3(uri):
        return
    from botocore.exceptions import ClientError

    bucket, _ = _split_s3(uri)
    client = s3_client()
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError:
        client.create_bucket(Bucket=bucket)
