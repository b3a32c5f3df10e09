"""Batch-scored rows in the prediction log: all or nothing, never twice, labelled and read like served rows,
kept out of a rollout's windows."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from include.prediction_log import reads
from include.prediction_log.batch import BatchRecorder
from include.prediction_log.errors import UnknownRequest
from include.prediction_log.rows import PredictionRow, iso_utc
from include.prediction_log.writer import PredictionLog


def _rows(n: int, version: int = 3, month: str = "2025-12") -> list[tuple]:
    return [
        (
            f"telco_churn/{month}/v{version}/key{i:04d}",
            f"key{i:04d}",
            json.dumps({"tenure": float(i), "contract": "Month-to-month"}),
            0.25 + i / (4 * n),
            float(i % 2),
            None,
        )
        for i in range(n)
    ]


def _window():
    now = datetime.now(UTC)
    return iso_utc(now - timedelta(minutes=5)), iso_utc(now + timedelta(minutes=5))


def test_rows_are_recorded_at_commit_only_and_a_rerun_adds_none(log_url):
    log = PredictionLog(log_url)
    log.start()
    try:
        with BatchRecorder(log_url, "telco_churn", 3, "2025-12", "telco_churn__score/run1") as rec:
            rec.add(_rows(300)[:200])
            rec.add(_rows(300)[200:])
            since, until = _window()
            seen = sum(len(c) for c in reads.served_inputs(log_url, "telco_churn", since, until))
            assert seen == 0  # nothing visible before the commit
            assert rec.commit() == 300
        # A run that fails before its commit records nothing.
        with BatchRecorder(log_url, "telco_churn", 3, "2025-11", "telco_churn__score/run2") as rec:
            rec.add(_rows(50, month="2025-11"))
        # The same month and version again: the same ids, nothing twice.
        with BatchRecorder(log_url, "telco_churn", 3, "2025-12", "telco_churn__score/run3") as rec:
            rec.add(_rows(300))
            rec.commit()
        since, until = _window()
        inputs = [r for c in reads.served_inputs(log_url, "telco_churn", since, until) for r in c]
        assert len(inputs) == 300 and {r[1] for r in inputs} == {3}
        # Feedback labels a scored row by its request id, as it labels a served one.
        rid = "telco_churn/2025-12/v3/key0007"
        assert log.feedback(rid, 1, pipeline="telco_churn") == "recorded"
        with pytest.raises(UnknownRequest):
            log.feedback("telco_churn/2025-11/v3/key0007", 1, pipeline="telco_churn")
        (got,) = log.get(rid)
        assert (got["variant"], got["served"], got["label"], got["model_version"]) == ("batch", True, 1, 3)
        labelled = reads.labelled_predictions(
            log_url, "telco_churn", iso_utc(datetime.now(UTC) + timedelta(1))
        )
        assert [r[0] for r in labelled] == [rid]
        assert reads.labelled_scores(log_url, "telco_churn", 3, since, until) == [
            (pytest.approx(0.25 + 7 / 1200), 1.0, 1.0, "key0007")
        ]
        assert 3 in reads.last_served(log_url, "telco_churn")
        # A rollout's window compares what the variants served: batch rows are not in it.
        served = PredictionRow(
            "served1",
            "telco_churn",
            "k",
            3,
            "champion",
            True,
            {"tenure": 1.0},
            0.5,
            1,
            1.0,
            datetime.now(UTC),
        )
        log.record_sync([served])
        window, _ = reads.rollout_window(log_url, "telco_churn", 3, 4, since, until, shadow=True)
        assert [r[0] for r in window] == ["served1"]
    finally:
        log.close()


def test_a_log_no_service_has_opened_yet_is_created_by_the_recorder(tmp_path):
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    with BatchRecorder(url, "telco_churn", 1, "2025-12", "d/r") as rec:
        rec.add(_rows(3, version=1))
        rec.commit()
    since, until = _window()
    assert sum(len(c) for c in reads.served_inputs(url, "telco_churn", since, until)) == 3
