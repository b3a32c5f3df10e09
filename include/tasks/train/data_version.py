"""Snapshot a pipeline's batches into one Parquet file and version it with DVC.

``build_snapshot`` concatenates the validated batches into a single, byte-for-byte
deterministic Parquet object. ``version_snapshot`` puts that object under DVC control in a
per-pipeline workspace (``<workdir>/<pipeline>``, initialised without Git) and pushes it to the
DVC remote; the returned md5 is the ``data_version`` a training run records as its lineage.
``fetch_version`` restores a snapshot from the remote by that md5.

No Airflow import here; pandas and DVC are imported inside the functions that need them so
that importing this module (e.g. while a DAG file is parsed) stays cheap.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

from include import storage
from include.settings import get_settings

logger = logging.getLogger(__name__)

# The name of the one remote each workspace has. Fixed, so that changing the remote URI only
# rewrites its url instead of piling up stale remotes in the config.
_REMOTE_NAME = "slipway"
_PIPELINE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_MD5_RE = re.compile(r"^[0-9a-f]{32}$")


class VersioningError(RuntimeError):
    """A snapshot could not be versioned or fetched; the message names the problem and the fix."""


def build_snapshot(
    batch_uris: list[str],
    snapshot_uri: str,
    feedback_uri: str | None = None,
    entity: str | None = None,
    forgotten: frozenset[str] | set[str] = frozenset(),
) -> dict:
    """Concatenate the Parquet batches (in the given order) into one Parquet object at ``snapshot_uri``.

    With a feedback batch (:mod:`include.tasks.train.feedback`), each of its rows replaces the rows of the
    same ``entity`` in the batches and the feedback rows come last. The bytes depend only on the
    inputs' contents and order, so a re-run writes an identical object and DVC sees the same md5.
    Rows of a ``forgotten`` entity (its keyed hash in ``entity``; see ``slipway forget``) are left out.
    Returns ``{"snapshot_uri", "rows", "sha256", "superseded", "feedback_rows", "forgotten_rows"}``.
    """
    if not batch_uris:
        raise ValueError(
            f"build_snapshot({snapshot_uri}): no batches given; land and validate at least one "
            "batch before building a snapshot"
        )
    import io

    import pandas as pd

    frames = []
    for uri in batch_uris:
        try:
            frames.append(pd.read_parquet(io.BytesIO(storage.read_bytes(uri)), engine="pyarrow"))
        except FileNotFoundError as exc:
            raise FileNotFoundError(
                f"build_snapshot: batch {uri} does not exist; re-run the task that lands it "
                "or drop it from the batch list"
            ) from exc
    forgotten_rows = 0
    if forgotten:
        if not entity:
            raise ValueError(
                f"build_snapshot({snapshot_uri}): leaving forgotten entities out needs the entity column"
            )
        kept = [f[~f[entity].isin(forgotten)] for f in frames]
        forgotten_rows = sum(len(f) for f in frames) - sum(len(f) for f in kept)
        frames = kept
    superseded = feedback_rows = 0
    if feedback_uri:
        if not entity:
            raise ValueError(f"build_snapshot({snapshot_uri}): a feedback batch needs the entity column")
        feedback = pd.read_parquet(io.BytesIO(storage.read_bytes(feedback_uri)), engine="pyarrow")
        if forgotten:
            before = len(feedback)
            feedback = feedback[~feedback[entity].isin(forgotten)]
            forgotten_rows += before - len(feedback)
        keys = set(feedback[entity])
        kept = [f[~f[entity].isin(keys)] for f in frames]
        superseded = sum(len(f) for f in frames) - sum(len(f) for f in kept)
        frames = [*kept, feedback]
        feedback_rows = len(feedback)
    # A column can come out as int64 in one month and as text in another (a sensitive attribute is
    # written as int64 only when every value of that batch is a whole number): the snapshot keeps
    # such a column as text in every row, where concatenating would mix types Parquet refuses.
    kinds: dict[str, set[str]] = {}
    for frame in frames:
        for col, dtype in frame.dtypes.items():
            kinds.setdefault(col, set()).add("text" if dtype.kind == "O" else str(dtype))
    mixed = [c for c, k in kinds.items() if "text" in k and len(k) > 1]
    if mixed:
        frames = [
            f.assign(**{c: f[c].astype("string").astype(object) for c in mixed if c in f}) for f in frames
        ]
    snapshot = pd.concat(frames, ignore_index=True)

    buf = io.BytesIO()
    # index=False: a RangeIndex would only add pandas metadata, and the concat index is
    # meaningless to a training set.
    snapshot.to_parquet(buf, index=False, engine="pyarrow")
    data = buf.getvalue()
    storage.write_bytes(snapshot_uri, data)
    return {
        "snapshot_uri": snapshot_uri,
        "rows": len(snapshot),
        "sha256": hashlib.sha256(data).hexdigest(),
        "superseded": superseded,
        "feedback_rows": feedback_rows,
        "forgotten_rows": forgotten_rows,
    }


def version_snapshot(
    snapshot_uri: str,
    pipeline: str,
    workdir: str | Path,
    remote_uri: str,
    s3_endpoint_url: str | None = None,
) -> dict:
    """Track the snapshot with DVC in ``<workdir>/<pipeline>`` and push it to ``remote_uri``.

    ``remote_uri`` is a local folder (path or ``file://``) or ``s3://bucket/prefix``; S3
    credentials come from the standard AWS environment variables, never from the DVC config.
    Re-running with the same snapshot changes nothing and returns the same ``data_version``.
    Returns ``{"data_version", "dvc_uri", "dvc_file", "path"}``.
    """
    _check_pipeline(pipeline)
    remote = _normalise_remote(remote_uri)
    endpoint = None
    if storage.is_s3(remote):
        # Resolved once so the bucket check and DVC talk to the same endpoint, also when it
        # only comes from SLIPWAY_S3_ENDPOINT_URL, which botocore does not read.
        endpoint = s3_endpoint_url or get_settings().s3_endpoint_url
        _check_s3_remote(remote, endpoint)

    try:
        data = storage.read_bytes(snapshot_uri)
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"version_snapshot({pipeline}): snapshot {snapshot_uri} does not exist; run build_snapshot first"
        ) from exc

    workspace = Path(workdir).resolve() / pipeline
    rel_path = f"data/{pipeline}.parquet"
    target = workspace / rel_path

    # DVC's own repo lock fails fast instead of waiting, and does not cover creating the
    # workspace or copying the file in; an exclusive lock per workspace serialises overlapping
    # runs of the same pipeline while different pipelines still run in parallel.
    with _workspace_lock(workspace):
        repo = _open_workspace(workspace, remote, endpoint)
        try:
            # Leave an identical file alone so DVC's state cache (keyed by inode and mtime)
            # can skip re-hashing it.
            if not (target.is_file() and target.read_bytes() == data):
                storage.write_bytes(str(target), data)
            stages = repo.add(str(target))
            md5 = stages[0].outs[0].hash_info.value
            dvc_file = stages[0].path
            expected = hashlib.md5(data, usedforsecurity=False).hexdigest()
            if md5 != expected:
                raise VersioningError(
                    f"version_snapshot({pipeline}): DVC recorded md5 {md5} but the snapshot's "
                    f"md5 is {expected}; delete the workspace {workspace} and re-run"
                )
            pushed = _push(repo, dvc_file, pipeline, remote)
        finally:
            repo.close()

    logger.info("versioned %s as %s (%d object(s) pushed to %s)", snapshot_uri, md5, pushed, remote)
    return {
        "data_version": md5,
        "dvc_uri": _object_uri(remote, md5),
        "dvc_file": str(dvc_file),
        "path": rel_path,
    }


def fetch_version(
    data_version: str,
    remote_uri: str,
    dest_path: str | Path,
    s3_endpoint_url: str | None = None,
) -> Path:
    """Restore the snapshot with md5 ``data_version`` from the DVC remote to ``dest_path``.

    Reads the object straight from the remote's content-addressed layout (no workspace
    needed) and refuses to write anything whose md5 does not match.
    """
    if not _MD5_RE.match(data_version or ""):
        raise ValueError(
            f"fetch_version: {data_version!r} is not a DVC md5 (32 lowercase hex characters); "
            "pass the data_version recorded by version_snapshot"
        )
    remote = _normalise_remote(remote_uri)
    uri = _object_uri(remote, data_version)
    try:
        if storage.is_s3(uri):
            bucket, key = storage.split_s3(uri)
            data = storage.s3_client(s3_endpoint_url).get_object(Bucket=bucket, Key=key)["Body"].read()
        else:
            data = storage.read_bytes(uri)
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"fetch_version: data version {data_version} is not on the remote ({uri}); check "
            "SLIPWAY_DVC_REMOTE_URI points at the remote it was pushed to"
        ) from exc
    except Exception as exc:
        if _s3_error_code(exc) in {"NoSuchKey", "404"}:
            raise FileNotFoundError(
                f"fetch_version: data version {data_version} is not on the remote ({uri}); "
                "check SLIPWAY_DVC_REMOTE_URI points at the remote it was pushed to"
            ) from exc
        if storage.is_s3(uri):
            raise VersioningError(f"fetch_version: cannot read {uri}: {_describe_s3(exc)}") from exc
        raise

    actual = hashlib.md5(data, usedforsecurity=False).hexdigest()
    if actual != data_version:
        raise VersioningError(
            f"fetch_version: object {uri} has md5 {actual}, expected {data_version}; the remote "
            "copy is corrupt, re-push it with version_snapshot from a workspace that still has it"
        )
    dest = Path(dest_path)
    storage.write_bytes(str(dest), data)
    return dest


# --- helpers -------------------------------------------------------------------------------


def _check_pipeline(pipeline: str) -> None:
    # The name becomes a folder and a file name; anything path-like could escape the workdir.
    if not _PIPELINE_RE.match(pipeline or ""):
        raise ValueError(
            f"version_snapshot: pipeline name {pipeline!r} must start with a letter or digit and "
            "contain only letters, digits, '_', '-' or '.'"
        )


def _normalise_remote(remote_uri: str) -> str:
    """``s3://bucket/prefix`` unchanged (minus a trailing slash); a local remote as an absolute path."""
    if not remote_uri:
        raise ValueError("DVC remote is empty; set SLIPWAY_DVC_REMOTE_URI")
    if storage.is_s3(remote_uri):
        bucket, _ = storage.split_s3(remote_uri)
        if not bucket:
            raise ValueError(f"DVC remote {remote_uri!r} names no bucket; use s3://bucket/prefix")
        return remote_uri.rstrip("/")
    parsed = urlparse(remote_uri)
    if parsed.scheme == "file":
        return str(Path(unquote(parsed.path)).resolve())
    if parsed.scheme:
        raise ValueError(
            f"DVC remote {remote_uri!r}: only a local folder or s3://bucket/prefix is supported; "
            "fix SLIPWAY_DVC_REMOTE_URI"
        )
    # An absolute path, because DVC resolves a relative remote url against .dvc/, not the cwd.
    return str(Path(remote_uri).resolve())


def _object_uri(remote: str, md5: str) -> str:
    # DVC 3 stores objects content-addressed under files/md5/<first two hex>/<remaining 30>.
    tail = ("files", "md5", md5[:2], md5[2:])
    if storage.is_s3(remote):
        return storage.join(remote, *tail)
    return Path(remote, *tail).as_uri()


def _s3_error_code(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return response.get("Error", {}).get("Code")
    return None


def _describe_s3(exc: BaseException) -> str:
    from botocore.exceptions import EndpointConnectionError, NoCredentialsError

    if isinstance(exc, EndpointConnectionError):
        return f"the S3 endpoint is unreachable ({exc}); start the object store or fix AWS_ENDPOINT_URL"
    if isinstance(exc, NoCredentialsError):
        return "no AWS credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    code = _s3_error_code(exc)
    if code in {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}:
        return f"access denied ({code}); check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
    return f"{type(exc).__name__}: {exc}"


def _check_s3_remote(remote: str, s3_endpoint_url: str | None) -> None:
    # DVC reports a missing bucket or a dead endpoint only as "N files failed to upload" after
    # retries; one HEAD up front turns that into an error that says what to do.
    bucket, _ = storage.split_s3(remote)
    try:
        storage.s3_client(s3_endpoint_url).head_bucket(Bucket=bucket)
    except Exception as exc:
        if _s3_error_code(exc) in {"404", "NoSuchBucket", "NotFound"}:
            raise VersioningError(
                f"DVC remote {remote}: bucket {bucket!r} does not exist; create the bucket or set "
                "SLIPWAY_DVC_REMOTE_URI"
            ) from exc
        raise VersioningError(f"DVC remote {remote}: {_describe_s3(exc)}") from exc


@contextlib.contextmanager
def _workspace_lock(workspace: Path) -> Iterator[None]:
    import fcntl

    workspace.parent.mkdir(parents=True, exist_ok=True)
    # Beside the workspace, not in it, so the lock exists before the workspace does.
    lock_path = workspace.parent / f".{workspace.name}.lock"
    with open(lock_path, "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _open_workspace(workspace: Path, remote: str, endpoint: str | None):
    """Open (initialising on first use) the no-Git DVC repo, pointed at ``remote``."""
    from dvc.config import Config
    from dvc.repo import Repo

    dvc_dir = workspace / ".dvc"
    if not (dvc_dir / "config").is_file():
        workspace.mkdir(parents=True, exist_ok=True)
        # force=True only matters after a crash mid-init left a .dvc folder without a config.
        initialised = Repo.init(str(workspace), no_scm=True, force=True)
        initialised.close()
        # Init opens a state database under the machine-wide /var/tmp/dvc before our config
        # can say otherwise; drop that copy, the workspace gets its own below.
        shutil.rmtree(initialised.site_cache_dir, ignore_errors=True)

    # Written on every run (cheap) so the workspace follows SLIPWAY_DVC_REMOTE_URI and the
    # endpoint; only locations go in, credentials stay in the AWS environment variables.
    with Config(str(dvc_dir)).edit() as conf:
        conf["core"]["no_scm"] = True
        # The Python API never calls home (analytics and the version check live in the CLI);
        # these keep a `dvc` CLI run in the workspace from doing so either.
        conf["core"]["analytics"] = False
        conf["core"]["check_update"] = False
        # Keep DVC's state and index databases inside the workspace rather than the shared
        # /var/tmp/dvc, so the workspace is self-contained and deleting it resets everything.
        conf["core"]["site_cache_dir"] = str(dvc_dir / "tmp" / "site")
        conf["core"]["remote"] = _REMOTE_NAME
        section: dict = {"url": remote}
        if endpoint:
            section["endpointurl"] = endpoint
        if storage.is_s3(remote):  # DVC's pushes request the same server-side encryption as the lake
            sse = storage.sse_args()
            if sse:
                section["sse"] = sse["ServerSideEncryption"]
                if "SSEKMSKeyId" in sse:
                    section["sse_kms_key_id"] = sse["SSEKMSKeyId"]
        conf["remote"][_REMOTE_NAME] = section
    return Repo(str(workspace))


def _push(repo, dvc_file: str, pipeline: str, remote: str) -> int:
    from dvc.exceptions import DvcException

    try:
        # An absolute target: DVC resolves relative push targets against the process's cwd,
        # not the repo root.
        return repo.push(targets=[dvc_file], remote=_REMOTE_NAME)
    except DvcException as exc:
        fix = (
            "check the bucket exists, AWS_ENDPOINT_URL and the AWS credentials"
            if storage.is_s3(remote)
            else "check the folder is writable or set SLIPWAY_DVC_REMOTE_URI"
        )
        raise VersioningError(f"dvc push of {pipeline} to {remote} failed ({exc}); {fix}") from exc


__all__ = ["VersioningError", "build_snapshot", "fetch_version", "version_snapshot"]
