"""Retention in the lake and in training: scored months older than the period leave the lake (newer
ones stay), the daily purge records its counts on its MLflow run, and a forgotten entity never enters
a training snapshot again."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from types import SimpleNamespace

import pandas as pd
import pytest

from include import storage
from include.tasks.retire.erasure import erase_scored, purge_scores
from include.tasks.score.population import entity_hasher
from include.tasks.train.data_version import build_snapshot
from tests.support.lake_scores import write_scored_month

NOW = datetime(2026, 12, 7, 3, 0, tzinfo=UTC)
H = [entity_hasher(b"k")(f"id{i}") for i in range(4)]


def _files(root) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_scored_months_older_than_the_period_are_deleted_and_newer_ones_kept(tmp_path):
    lake = tmp_path / "lake"
    for month in ("2025-10", "2025-11", "2025-12"):
        write_scored_month(lake, "telco_churn", month, 3, H)
    write_scored_month(lake, "telco_churn", "2025-11", 4, H)
    write_scored_month(lake, "other", "2025-01", 1, H)  # another pipeline's: never touched
    uri = storage.path_to_uri(lake)
    # 2025-11 ends on 2025-12-01, which is 371 days before NOW: out of a 370-day period, 2025-12 is in.
    assert purge_scores(uri, "telco_churn", NOW, None) == {"months": [], "files": 0}
    assert purge_scores(uri, "telco_churn", NOW, 410) == {
        "months": [],
        "files": 0,
    }  # 2025-10 ended 401 days ago
    assert purge_scores(uri, "telco_churn", NOW, 370) == {"months": ["2025-10", "2025-11"], "files": 9}
    left = _files(lake)
    assert {f.split("/scores/")[1].split("/")[0] for f in left if f.startswith("telco_churn")} == {
        "month=2025-12"
    }
    assert len([f for f in left if f.startswith("other/")]) == 3
    assert purge_scores(uri, "telco_churn", NOW, 370) == {"months": [], "files": 0}


def test_erasing_an_entity_leaves_other_pipelines_and_rows_alone(tmp_path):
    import pyarrow.parquet as pq

    lake = tmp_path / "lake"
    mine = write_scored_month(lake, "telco_churn", "2025-12", 3, H)
    theirs = write_scored_month(lake, "other", "2025-12", 1, H)
    before = (theirs / "scores.parquet").read_bytes()
    assert erase_scored(storage.path_to_uri(lake), "telco_churn", H[1]) == {"files": 1, "rows": 1}
    assert pq.read_table(mine / "scores.parquet").column("entity_key").to_pylist() == [H[0], H[2], H[3]]
    assert json.loads((mine / "manifest.json").read_text())["erased_rows"] == 1
    assert (theirs / "scores.parquet").read_bytes() == before


def test_a_forgotten_entity_is_left_out_of_the_snapshot(tmp_path):
    frames = [
        pd.DataFrame({"customer_id": [H[0], H[1]], "tenure": [1.0, 2.0], "batch_month": "2025-01"}),
        pd.DataFrame({"customer_id": [H[2], H[1]], "tenure": [3.0, 4.0], "batch_month": "2025-02"}),
    ]
    uris = []
    for i, f in enumerate(frames):
        uris.append(
            storage.write_bytes(storage.path_to_uri(tmp_path / f"b{i}.parquet"), f.to_parquet(index=False))
        )
        # A label for the forgotten entity curated before it was forgotten: left out too.
    fb = storage.write_bytes(
        storage.path_to_uri(tmp_path / "fb.parquet"),
        pd.DataFrame(
            {"customer_id": [H[1], H[3]], "tenure": [5.0, 6.0], "batch_month": "2025-02"}
        ).to_parquet(index=False),
    )
    snap = storage.path_to_uri(tmp_path / "snap.parquet")
    full = build_snapshot(uris, snap, fb, "customer_id")
    assert full["rows"] == 4 and full["forgotten_rows"] == 0
    out = build_snapshot(uris, snap, fb, "customer_id", frozenset({H[1]}))
    got = pd.read_parquet(io.BytesIO(storage.read_bytes(snap)))
    assert H[1] not in set(got["customer_id"]) and out["forgotten_rows"] == 3
    assert list(got["customer_id"]) == [H[0], H[2], H[3]] and out["rows"] == 3


def test_the_forgotten_keys_reach_the_snapshot_from_the_log(tmp_path):
    from include.prediction_log.retention import forget, forgotten_keys

    url = f"sqlite:///{tmp_path / 'serving.db'}"
    assert forgotten_keys(url, "telco_churn") == frozenset()  # no log yet: none
    forget(url, "telco_churn", H[2])
    assert forgotten_keys(url, "telco_churn") == {H[2]} and forgotten_keys(url, "other") == frozenset()


def test_the_daily_purge_records_its_counts_on_its_run(isolated_home, telco_spec):
    import mlflow

    from include.blocks.retire import purge_expired
    from include.prediction_log.retention import purge
    from include.settings import get_settings

    settings = get_settings()
    lake = isolated_home / "lake"
    write_scored_month(lake, "telco_churn", "2024-01", 3, H)
    write_scored_month(lake, "telco_churn", "2026-11", 3, H)
    purge(None, "telco_churn", NOW, 400, 400)  # the log exists, as the service makes it
    step = SimpleNamespace(
        pipeline="telco_churn",
        spec=telco_spec,
        settings=settings,
        context={"data_interval_end": NOW},
        mlflow=mlflow,
    )
    with mlflow.start_run() as run:
        out = purge_expired.__wrapped_block__(step)
    assert out["score_months"] == ["2024-01"] and out["score_files"] == 3
    data = mlflow.MlflowClient().get_run(run.info.run_id).data
    assert data.params["retention.scores_days"] == "400"
    assert data.metrics["purged.score_months"] == 1 and data.metrics["purged.predictions"] == 0
    assert data.tags["slipway.purged.score_months"] == "2024-01"
    # A null period purges nothing, and says so.
    keep = telco_spec.retention.model_copy(update={"scores_days": None, "prediction_log_days": None})
    step.spec = telco_spec.model_copy(update={"retention": keep})
    write_scored_month(lake, "telco_churn", "2024-02", 3, H)
    with mlflow.start_run() as run:
        out = purge_expired.__wrapped_block__(step)
    assert out["score_months"] == [] and out["score_files"] == 0
    assert mlflow.MlflowClient().get_run(run.info.run_id).data.params["retention.scores_days"] == "forever"
    assert (lake / "telco_churn" / "scores" / "month=2024-02").is_dir()


def test_a_retention_period_must_be_a_day_or_more_or_null(telco_spec):
    import pytest

    from include.settings import PROJECT_ROOT
    from include.spec import SpecError, parse_spec

    text = (PROJECT_ROOT / "include" / "pipelines" / "telco_churn.yaml").read_text()
    assert telco_spec.retention.prediction_log_days == 400
    forever = parse_spec(text.replace("  feedback_days: 400", "  feedback_days: null"))
    assert forever.retention.feedback_days is None
    with pytest.raises(SpecError, match="retention.scores_days"):
        parse_spec(text.replace("  scores_days: 400", "  scores_days: 0"))


def test_the_purge_takes_airflow_s_pendulum_times():
    """Airflow's context hands out pendulum DateTimes (their arithmetic drops a standard UTC tzinfo);
    a naive time is refused with the reason."""
    import pendulum

    from include.prediction_log.retention import cutoffs

    at = pendulum.datetime(2026, 12, 7, 6, 0, tz="UTC")
    assert cutoffs(at.astimezone(UTC), 10, None) == ("2026-11-27T06:00:00.000000+00:00", None)
    assert cutoffs(at, None, 1) == (None, "2026-12-06T06:00:00.000000+00:00")
    with pytest.raises(ValueError, match="timezone-aware"):
        cutoffs(pendulum.naive(2026, 12, 7), 10, 10)
