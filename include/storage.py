"""Read and write objects by URI (``file://`` or ``s3://``), atomically.

A local write goes to a temporary file in the same folder and is renamed into place, so a
killed task never leaves half an object. An S3 PUT is atomic by the service's own semantics
(the object appears whole or not at all), so no temporary key is needed there.
"""

from __future__ import annotations

import glob
import os
import socket
import tempfile
import time
from pathlib import Path

from include.uri import is_s3, join, local_path, path_to_uri, split_s3

__all__ = [
    "StorageError",
    "delete",
    "ensure_bucket",
    "exists",
    "is_s3",
    "local_copy",
    "join",
    "list_uris",
    "path_to_uri",
    "read_bytes",
    "s3_client",
    "split_s3",
    "sweep_temporaries",
    "write_bytes",
    "write_file",
]


class StorageError(RuntimeError):
    """An object could not be read or written; the message names the URI and the fix."""


def _local_path(uri: str) -> Path:
    try:
        return local_path(uri)
    except ValueError as exc:
        raise StorageError(str(exc)) from None


def s3_client(endpoint_url: str | None = None):
    """The one boto3 S3 client factory: ``endpoint_url``, else ``AWS_ENDPOINT_URL`` (MinIO, moto), else AWS."""
    import boto3

    from include.settings import get_settings

    return boto3.client("s3", endpoint_url=endpoint_url or get_settings().s3_endpoint_url)


# A local write goes to ".<name>.<host>-<pid>.<random>.tmp" beside its key: the writer is in the
# name, so the next write of the key can tell a killed writer's leftover from a live one's.
_HOST = socket.gethostname().replace(".", "_")[:40]
STALE_AFTER_S = 3600.0


def _temp_owner_gone(tmp: Path, max_age_s: float) -> bool:
    """A temporary file whose writer is gone: on this host its pid is dead; from elsewhere it is old."""
    try:
        age = time.time() - tmp.stat().st_mtime
    except FileNotFoundError:
        return False
    owner = tmp.name.rsplit(".", 3)[-3] if tmp.name.count(".") >= 4 else ""
    host, _, pid = owner.rpartition("-")
    if host == _HOST and pid.isdigit():  # written here: its writer's pid says whether it is still at it
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    return age > max_age_s  # another host's (or an old-style) temporary file: by age


def _clean_local_temporaries(path: Path, max_age_s: float = STALE_AFTER_S) -> list[Path]:
    removed = []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        if _temp_owner_gone(tmp, max_age_s):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _abort_incomplete_uploads(client, bucket: str, prefix: str, exact: bool, older_than_s: float = 0) -> int:
    """Abort multipart uploads a killed writer left (for one key, or under a prefix by age)."""
    import datetime as dt

    aborted = 0
    now = dt.datetime.now(dt.UTC)
    for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix):
        for upload in page.get("Uploads", []):
            if exact and upload["Key"] != prefix:
                continue
            if (now - upload["Initiated"]).total_seconds() < older_than_s:
                continue
            client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
            aborted += 1
    return aborted


def sweep_temporaries(prefix_uri: str, older_than_s: float = STALE_AFTER_S) -> int:
    """Remove what killed writers left under ``prefix_uri``: temporary files, incomplete S3 uploads."""
    if is_s3(prefix_uri):
        bucket, prefix = split_s3(prefix_uri)
        return _abort_incomplete_uploads(s3_client(), bucket, prefix, exact=False, older_than_s=older_than_s)
    root = _local_path(prefix_uri)
    removed = 0
    for tmp in root.rglob(".*.tmp") if root.is_dir() else []:
        if _temp_owner_gone(tmp, older_than_s):
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


def sse_args() -> dict[str, str]:
    """Server-side encryption every S3 write requests: ``SLIPWAY_S3_SSE`` = ``AES256`` (default,
    SSE-S3), ``aws:kms`` (with ``SLIPWAY_S3_SSE_KMS_KEY_ID``, else the bucket's default key) or
    ``none`` (an S3-compatible store without encryption support)."""
    mode = os.environ.get("SLIPWAY_S3_SSE", "AES256").strip()
    if mode.lower() == "none":
        return {}
    if mode not in ("AES256", "aws:kms"):
        raise ValueError(f"SLIPWAY_S3_SSE={mode!r}: use AES256, aws:kms or none")
    out = {"ServerSideEncryption": mode}
    if mode == "aws:kms" and os.environ.get("SLIPWAY_S3_SSE_KMS_KEY_ID"):
        out["SSEKMSKeyId"] = os.environ["SLIPWAY_S3_SSE_KMS_KEY_ID"]
    return out


def write_bytes(uri: str, data: bytes) -> str:
    """Write ``data`` at ``uri`` atomically; return the URI.

    What a killed earlier write of the same key left behind is removed first: its temporary file
    (locally) or its incomplete multipart upload (S3).
    """
    if is_s3(uri):
        bucket, key = split_s3(uri)
        client = s3_client()
        _abort_incomplete_uploads(client, bucket, key, exact=True)
        client.put_object(Bucket=bucket, Key=key, Body=data, **sse_args())
        return uri
    _replace_local(_local_path(uri), lambda fh: fh.write(data))
    return uri


def _replace_local(path: Path, fill) -> None:
    """Write ``path`` through a temporary file beside it (``fill(fh)`` writes the content), synced and
    renamed into place: a reader sees the old object or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _clean_local_temporaries(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_HOST}-{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fill(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_file(uri: str, source: Path) -> str:
    """Put the local file ``source`` at ``uri`` atomically; return the URI. For outputs too large to
    hold in memory (a scored population): written to a local file first, then moved into place (a
    temporary file beside the target, renamed) or uploaded (S3's multipart upload appears whole)."""
    import shutil

    if is_s3(uri):
        bucket, key = split_s3(uri)
        client = s3_client()
        _abort_incomplete_uploads(client, bucket, key, exact=True)
        client.upload_file(str(source), bucket, key, ExtraArgs=sse_args() or None)
        return uri

    def copy(fh) -> None:
        with open(source, "rb") as src:
            shutil.copyfileobj(src, fh, 1 << 20)

    _replace_local(_local_path(uri), copy)
    return uri


def local_copy(uri: str, folder: Path) -> Path:
    """A local path holding the object at ``uri``: the file itself for ``file://``, else a download
    into ``folder``. A missing object raises :class:`FileNotFoundError`."""
    if not is_s3(uri):
        path = _local_path(uri)
        if not path.is_file():
            raise FileNotFoundError(uri)
        return path
    from botocore.exceptions import ClientError

    bucket, key = split_s3(uri)
    target = Path(folder) / key.rsplit("/", 1)[-1]
    try:
        s3_client().download_file(bucket, key, str(target))
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
            raise FileNotFoundError(uri) from exc
        raise
    return target


def read_bytes(uri: str) -> bytes:
    """Read the object at ``uri``; a missing object raises :class:`FileNotFoundError`."""
    if is_s3(uri):
        from botocore.exceptions import ClientError

        bucket, key = split_s3(uri)
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

        bucket, key = split_s3(uri)
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
        bucket, prefix = split_s3(prefix_uri.rstrip("/") + "/")
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
        bucket, key = split_s3(uri)
        s3_client().delete_object(Bucket=bucket, Key=key)
        return
    _local_path(uri).unlink(missing_ok=True)


def ensure_bucket(uri: str) -> None:
    """Create the S3 bucket named by ``uri`` if it is missing (no-op for local URIs)."""
    if not is_s3(uri):
        return
    from botocore.exceptions import ClientError

    bucket, _ = split_s3(uri)
    client = s3_client()
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError:
        client.create_bucket(Bucket=bucket)
