"""Snapshots are deterministic, versioned idempotently with DVC, and restorable by their md5."""

from __future__ import annotations

import hashlib
import io
import logging
import multiprocessing
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
import pytest

from include import storage
from include.tasks.train.data_version import VersioningError, build_snapshot, fetch_version, version_snapshot


def _write_batch(uri: str, start: int, rows: int = 5) -> str:
    frame = pd.DataFrame(
        {
            "customer_id": [f"c{i:04d}" for i in range(start, start + rows)],
            "tenure": list(range(start, start + rows)),
            "monthly_charges": [20.5 + i for i in range(rows)],
            "churn": [i % 2 == 0 for i in range(rows)],
        }
    )
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False, engine="pyarrow")
    storage.write_bytes(uri, buf.getvalue())
    return uri


@pytest.fixture
def batches(tmp_path: Path) -> list[str]:
    lake = (tmp_path / "lake").as_uri()
    return [_write_batch(f"{lake}/batches/b{i}.parquet", start=i * 10) for i in range(3)]


@pytest.fixture
def local_dvc(tmp_path: Path) -> dict[str, Path]:
    return {"workdir": tmp_path / "dvc", "remote": tmp_path / "dvc-remote"}


def _remote_objects(remote: Path) -> list[str]:
    return [
        Path(uri.removeprefix("file://")).relative_to(remote).as_posix()
        for uri in storage.list_uris(str(remote))
    ]


# --- build_snapshot ------------------------------------------------------------------------


def test_build_snapshot_is_byte_for_byte_deterministic(batches: list[str], tmp_path: Path) -> None:
    first = build_snapshot(batches, (tmp_path / "a" / "snap.parquet").as_uri())
    second = build_snapshot(batches, (tmp_path / "b" / "snap.parquet").as_uri())

    bytes_a = storage.read_bytes(first["snapshot_uri"])
    bytes_b = storage.read_bytes(second["snapshot_uri"])
    assert bytes_a == bytes_b
    assert first["sha256"] == second["sha256"] == hashlib.sha256(bytes_a).hexdigest()
    assert first["rows"] == 15


def test_build_snapshot_keeps_batch_order_and_a_fresh_index(batches: list[str], tmp_path: Path) -> None:
    result = build_snapshot(list(reversed(batches)), (tmp_path / "snap.parquet").as_uri())

    frame = pd.read_parquet(io.BytesIO(storage.read_bytes(result["snapshot_uri"])))
    assert frame["tenure"].tolist()[:5] == [20, 21, 22, 23, 24]
    assert frame.index.tolist() == list(range(15))


def test_build_snapshot_without_batches_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no batches given"):
        build_snapshot([], (tmp_path / "snap.parquet").as_uri())


# --- version_snapshot / fetch_version with a local remote ----------------------------------


def test_version_snapshot_pushes_the_object_where_dvc_uri_says(
    batches: list[str], local_dvc: dict[str, Path], tmp_path: Path
) -> None:
    snap = build_snapshot(batches, (tmp_path / "snap.parquet").as_uri())

    result = version_snapshot(
        snap["snapshot_uri"], "telco_churn", local_dvc["workdir"], str(local_dvc["remote"])
    )

    md5 = hashlib.md5(storage.read_bytes(snap["snapshot_uri"])).hexdigest()
    assert result["data_version"] == md5
    assert result["path"] == "data/telco_churn.parquet"
    assert result["dvc_uri"] == (local_dvc["remote"] / "files" / "md5" / md5[:2] / md5[2:]).as_uri()
    assert storage.read_bytes(result["dvc_uri"]) == storage.read_bytes(snap["snapshot_uri"])
    # DVC 3's layout: nothing else is pushed, only the content-addressed object.
    assert _remote_objects(local_dvc["remote"]) == [f"files/md5/{md5[:2]}/{md5[2:]}"]
    dvc_file = Path(result["dvc_file"])
    assert dvc_file == local_dvc["workdir"] / "telco_churn" / "data" / "telco_churn.parquet.dvc"
    assert f"md5: {md5}" in dvc_file.read_text()
    config = (local_dvc["workdir"] / "telco_churn" / ".dvc" / "config").read_text()
    assert "no_scm = True" in config and "analytics = False" in config


def test_version_snapshot_rerun_is_a_no_op(
    batches: list[str], local_dvc: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    snap = build_snapshot(batches, (tmp_path / "snap.parquet").as_uri())
    args = (snap["snapshot_uri"], "telco_churn", local_dvc["workdir"], str(local_dvc["remote"]))
    first = version_snapshot(*args)
    dvc_file_text = Path(first["dvc_file"]).read_text()

    with caplog.at_level(logging.INFO, logger="include.tasks.train.data_version"):
        again = version_snapshot(*args)

    assert again == first
    assert Path(first["dvc_file"]).read_text() == dvc_file_text
    assert "0 object(s) pushed" in caplog.text
    assert len(_remote_objects(local_dvc["remote"])) == 1


def test_a_changed_snapshot_is_a_new_version_and_the_old_one_stays(
    batches: list[str], local_dvc: dict[str, Path], tmp_path: Path
) -> None:
    snap_uri = (tmp_path / "snap.parquet").as_uri()
    build_snapshot(batches[:2], snap_uri)
    old = version_snapshot(snap_uri, "telco_churn", local_dvc["workdir"], str(local_dvc["remote"]))

    build_snapshot(batches, snap_uri)
    # The remote as a file:// URI names the same folder.
    new = version_snapshot(snap_uri, "telco_churn", local_dvc["workdir"], local_dvc["remote"].as_uri())

    assert new["data_version"] != old["data_version"]
    assert new["dvc_file"] == old["dvc_file"]
    assert storage.exists(old["dvc_uri"]) and storage.exists(new["dvc_uri"])
    assert len(_remote_objects(local_dvc["remote"])) == 2


def test_fetch_version_restores_the_exact_snapshot(
    batches: list[str], local_dvc: dict[str, Path], tmp_path: Path
) -> None:
    snap = build_snapshot(batches, (tmp_path / "snap.parquet").as_uri())
    result = version_snapshot(
        snap["snapshot_uri"], "telco_churn", local_dvc["workdir"], str(local_dvc["remote"])
    )

    restored = fetch_version(
        result["data_version"], str(local_dvc["remote"]), tmp_path / "restored" / "train.parquet"
    )

    assert restored.read_bytes() == storage.read_bytes(snap["snapshot_uri"])


def test_fetch_version_refuses_a_corrupt_object(
    batches: list[str], local_dvc: dict[str, Path], tmp_path: Path
) -> None:
    snap = build_snapshot(batches, (tmp_path / "snap.parquet").as_uri())
    result = version_snapshot(
        snap["snapshot_uri"], "telco_churn", local_dvc["workdir"], str(local_dvc["remote"])
    )
    obj = Path(result["dvc_uri"].removeprefix("file://"))
    obj.chmod(0o644)  # DVC pushes objects read-only
    obj.write_bytes(b"not the snapshot")
    dest = tmp_path / "restored.parquet"

    with pytest.raises(VersioningError, match="corrupt"):
        fetch_version(result["data_version"], str(local_dvc["remote"]), dest)
    assert not dest.exists()


def test_fetch_version_of_an_unknown_version_names_the_remote(
    local_dvc: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(FileNotFoundError, match="SLIPWAY_DVC_REMOTE_URI"):
        fetch_version("0" * 32, str(local_dvc["remote"]), tmp_path / "x.parquet")


def test_two_pipelines_version_at_once(
    batches: list[str], local_dvc: dict[str, Path], tmp_path: Path
) -> None:
    snap_a = build_snapshot(batches[:1], (tmp_path / "a.parquet").as_uri())["snapshot_uri"]
    snap_b = build_snapshot(batches[1:], (tmp_path / "b.parquet").as_uri())["snapshot_uri"]
    workdir, remote = local_dvc["workdir"], str(local_dvc["remote"])
    # Separate processes, as Airflow runs tasks; spawn so no DVC/pyarrow state is forked.
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [
            pool.submit(version_snapshot, snap_a, "alpha", workdir, remote),
            pool.submit(version_snapshot, snap_b, "beta", workdir, remote),
            # Same pipeline again while the first may still run: waits for it, then a no-op.
            pool.submit(version_snapshot, snap_a, "alpha", workdir, remote),
        ]
        alpha, beta, alpha_again = (f.result(timeout=60) for f in futures)

    assert alpha == alpha_again
    assert alpha["data_version"] != beta["data_version"]
    assert storage.exists(alpha["dvc_uri"]) and storage.exists(beta["dvc_uri"])


def test_version_snapshot_rejects_a_path_like_pipeline_name(batches: list[str], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="pipeline name"):
        version_snapshot(batches[0], "../escape", tmp_path / "dvc", str(tmp_path / "remote"))


# --- S3 (moto server) ----------------------------------------------------------------------


def test_version_snapshot_with_s3_lake_and_s3_remote(s3_env: str, tmp_path: Path) -> None:
    # moto keeps buckets per process: unique names keep this test independent of others.
    lake, dvc = f"lake-{uuid.uuid4().hex[:8]}", f"dvc-{uuid.uuid4().hex[:8]}"
    moto_s3 = s3_env
    storage.ensure_bucket(f"s3://{lake}")
    batch_uris = [_write_batch(f"s3://{lake}/batches/b{i}.parquet", start=i * 10) for i in range(2)]
    snap = build_snapshot(batch_uris, f"s3://{lake}/snapshots/telco_churn.parquet")
    workdir = tmp_path / "dvc"

    with pytest.raises(VersioningError, match="create the bucket or set SLIPWAY_DVC_REMOTE_URI"):
        version_snapshot(snap["snapshot_uri"], "telco_churn", workdir, f"s3://{dvc}/remote", moto_s3)

    storage.ensure_bucket(f"s3://{dvc}")
    result = version_snapshot(snap["snapshot_uri"], "telco_churn", workdir, f"s3://{dvc}/remote", moto_s3)
    # No explicit endpoint: falls back to AWS_ENDPOINT_URL, and DVC is pointed at the same one.
    again = version_snapshot(snap["snapshot_uri"], "telco_churn", workdir, f"s3://{dvc}/remote")

    data = storage.read_bytes(snap["snapshot_uri"])
    md5 = hashlib.md5(data).hexdigest()
    assert result == again
    assert result["data_version"] == md5
    assert result["dvc_uri"] == f"s3://{dvc}/remote/files/md5/{md5[:2]}/{md5[2:]}"
    assert storage.list_uris(f"s3://{dvc}/") == [result["dvc_uri"]]
    config = (workdir / "telco_churn" / ".dvc" / "config").read_text()
    assert f"endpointurl = {moto_s3}" in config
    assert "access_key_id" not in config and "secret_access_key" not in config

    restored = fetch_version(md5, f"s3://{dvc}/remote", tmp_path / "restored.parquet", moto_s3)
    assert restored.read_bytes() == data


def test_build_snapshot_of_a_column_typed_differently_by_month(tmp_path: Path, telco_spec, wa_churn) -> None:
    """A sensitive attribute written as int64 one month and as text (a blank) the next still snapshots."""
    from include.frames import to_parquet_bytes
    from include.tasks.train.ingest import conform_batch

    raw = wa_churn.iloc[:20].astype(str).replace({"nan": None})
    later = raw.copy()
    later["customer_id"] = [f"X-{i}" for i in range(len(later))]
    later.loc[later.index[0], "senior_citizen"] = None
    uris = []
    for month, frame in (("2025-01", raw), ("2025-02", later)):
        df = conform_batch(frame, telco_spec, "mem://", month, b"k")
        uris.append(
            storage.write_bytes(storage.path_to_uri(tmp_path / f"{month}.parquet"), to_parquet_bytes(df))
        )
    assert pd.read_parquet(uris[0])["senior_citizen"].dtype == "int64"
    out = build_snapshot(uris, storage.path_to_uri(tmp_path / "snap.parquet"))
    snap = pd.read_parquet(out["snapshot_uri"])
    assert out["rows"] == 40
    assert snap["senior_citizen"].isna().sum() == 1
    assert set(snap["senior_citizen"].dropna()) <= {"0", "1"}
