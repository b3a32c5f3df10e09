"""What the monitor decides each interval (no Airflow): one drift episode triggers one retrain
within the cool-down, no drift triggers none, an empty interval reports no traffic, a performance
drop triggers only once sustained, late labels join the predictions they belong to, and a re-run
of an interval replaces its own record."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from include.tasks.gates import check, not_applicable

PIPELINE = "telco_churn"
T0 = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture
def db(log_url):
    return log_url


@pytest.fixture
def cfg():
    from include.spec import load_pipeline

    return load_pipeline(PIPELINE).monitoring.model_copy(update={"cooldown_hours": 6})


def _drift(value: float) -> list[dict]:
    return [
        check("drift", "psi[monthly_charges]", value, 0.25, "<="),
        check("drift", "psi[tenure]", 0.01, 0.25, "<="),
    ]


def _perf(auc: float | None) -> list[dict]:
    if auc is None:
        return [not_applicable("performance", "roc_auc", "12 labelled; judged from 200")]
    return [check("performance", "roc_auc", auc, 0.78, ">=")]


def _hour(cfg, db, hour: int, drift: list[dict], perf: list[dict], rows: int = 1000):
    """Judge and record the interval ending ``hour`` hours after T0, as judge_interval does."""
    from include.prediction_log.monitor_checks import Check, earlier, record
    from include.prediction_log.rows import iso_utc
    from include.tasks.monitor.decision import decide

    end = T0 + timedelta(hours=hour)
    d = decide(cfg, end, rows, drift, perf, earlier(db, PIPELINE, iso_utc(end)))
    record(
        db,
        Check(
            PIPELINE,
            iso_utc(end - timedelta(hours=1)),
            iso_utc(end),
            3,
            rows,
            d.status,
            d.drift_breach,
            d.performance_breach,
            d.trigger,
            d.alert,
            {"rows": rows},
        ),
    )
    return d


def test_one_drift_episode_triggers_one_retrain_per_cooldown(cfg, db):
    triggers = [_hour(cfg, db, h, _drift(0.6), _perf(None)).trigger for h in range(1, 10)]
    # Hours 1..9 all drifted; the cool-down is 6 h: hour 1 triggers, hours 2-6 are held, hour 7
    # (6 h after the trigger, outside the cool-down) triggers the next one.
    assert triggers == ["drift", None, None, None, None, None, "drift", None, None]
    held = _hour(cfg, db, 10, _drift(0.6), _perf(None))
    assert held.trigger is None and held.held_by.startswith("2026-03-01T07:00")


def test_no_drift_triggers_nothing_and_an_empty_interval_is_no_traffic(cfg, db):
    from include.prediction_log.monitor_checks import latest

    decisions = [_hour(cfg, db, h, _drift(0.05), _perf(0.85)) for h in range(1, 6)]
    assert {(d.status, d.trigger, d.alert) for d in decisions} == {("ok", None, False)}
    empty = _hour(cfg, db, 6, [], [_perf(None)[0]], rows=0)
    assert (empty.status, empty.trigger, empty.alert) == ("no_traffic", None, False)
    assert latest(db, PIPELINE).status == "no_traffic"


def test_a_performance_drop_triggers_once_sustained(cfg, db):
    sustained = cfg.performance.sustained_checks
    decisions = [_hour(cfg, db, h, _drift(0.05), _perf(0.70)) for h in range(1, sustained + 2)]
    assert [d.trigger for d in decisions] == [None] * (sustained - 1) + ["performance", None]
    assert decisions[0].alert and not decisions[1].alert  # alerted once per cool-down too
    assert [d.sustained for d in decisions] == list(range(1, sustained + 2))
    # A good hour breaks the streak.
    assert _hour(cfg, db, sustained + 2, _drift(0.05), _perf(0.9)).sustained == 0


def test_a_rerun_of_an_interval_replaces_its_record_and_triggers_again(cfg, db):
    """A retry after the record was written (the event not yet emitted) must still emit it."""
    from include.prediction_log.monitor_checks import earlier
    from include.prediction_log.rows import iso_utc

    assert _hour(cfg, db, 1, _drift(0.6), _perf(None)).trigger == "drift"
    assert _hour(cfg, db, 1, _drift(0.6), _perf(None)).trigger == "drift"
    rows = earlier(db, PIPELINE, iso_utc(T0 + timedelta(hours=2)))
    assert [r.interval_end for r in rows] == [iso_utc(T0 + timedelta(hours=1))]


def _predictions(db: str, created: list[datetime], versions: list[int]) -> list[str]:
    from include.prediction_log.rows import PredictionRow
    from include.prediction_log.writer import PredictionLog

    ids = [uuid.uuid4().hex for _ in created]
    log = PredictionLog(db)
    log.start()
    try:
        log.record_sync(
            [
                PredictionRow(
                    rid, PIPELINE, None, v, "champion", True, {"tenure": 1.0}, p, int(p >= 0.5), 0.1, at
                )
                for rid, at, v, p in zip(
                    ids, created, versions, [0.9, 0.2, 0.8, 0.1, 0.7, 0.3] * 100, strict=False
                )
            ]
        )
        for i, rid in enumerate(ids):
            if i % 4 != 3:  # every fourth prediction never gets its label
                log.feedback(rid, int(i % 2 == 0), pipeline=PIPELINE, at=created[i] + timedelta(hours=20))
    finally:
        log.close()
    return ids


def test_late_labels_join_the_predictions_they_belong_to(db):
    from include.prediction_log.rows import iso_utc
    from include.tasks.monitor.performance import read_labelled

    created = [T0 + timedelta(minutes=10 * i) for i in range(24)]
    _predictions(db, created, [3] * 20 + [4] * 4)
    labelled = read_labelled(db, PIPELINE, 3, iso_utc(T0), iso_utc(T0 + timedelta(hours=3)))
    # 18 of version 3 fall in the 3 hours; every fourth has no label: 14 labelled (indices 0..17).
    expected = [i for i in range(18) if i % 4 != 3]
    assert len(labelled.label) == len(expected)
    assert labelled.label.tolist() == [int(i % 2 == 0) for i in expected]
    assert labelled.probability.tolist() == [[0.9, 0.2, 0.8, 0.1, 0.7, 0.3][i % 6] for i in expected]
    # Another version's predictions, and rows outside the window, never join.
    assert len(read_labelled(db, PIPELINE, 4, iso_utc(T0), iso_utc(T0 + timedelta(hours=3))).label) == 0
    assert len(read_labelled(db, PIPELINE, 4, iso_utc(T0), iso_utc(T0 + timedelta(hours=4))).label) == 3


def test_performance_checks_use_the_version_record_and_need_enough_labels():
    import numpy as np

    from include.spec import load_pipeline
    from include.tasks.business import value_per_1000
    from include.tasks.monitor.performance import Labelled, performance_checks

    spec = load_pipeline(PIPELINE)
    cfg = spec.monitoring.performance.model_copy(update={"min_labelled": 50})
    tags = {
        "slipway.metric.roc_auc": "0.84",
        "slipway.decision_threshold": "0.4",
        "slipway.value_per_1000": "5000",
    }
    rng = np.random.default_rng(0)
    label = rng.integers(0, 2, 400)
    good = Labelled(np.clip(label * 0.6 + rng.normal(0.2, 0.15, 400), 0, 1), label, "a", "b")
    noise = Labelled(rng.random(400), label, "a", "b")
    few = Labelled(good.probability[:20], label[:20], "a", "b")
    by = {r["metric"]: r for r in performance_checks(cfg, spec, good, tags)}
    assert by["roc_auc"]["status"] == "passed" and by["roc_auc"]["threshold"] == pytest.approx(0.79)
    live = value_per_1000(label, good.probability, 0.4, spec.business)  # at the version's threshold
    assert by["value_per_1000"]["value"] == pytest.approx(live, abs=1e-6)
    assert by["value_per_1000"]["threshold"] == pytest.approx(5000 - 0.25 * 5000)
    assert by["value_per_1000"]["status"] == ("passed" if live >= 3750 else "failed")
    assert performance_checks(cfg, spec, noise, tags)[0]["status"] == "failed"
    assert {r["status"] for r in performance_checks(cfg, spec, few, tags)} == {"not_applicable"}


def test_reading_before_the_first_record_is_empty_and_creates_nothing(cfg, db):
    """The service's /metrics and the retirement DAG read the monitor's record before any monitor
    run: an empty answer, and no table created by a reader (a read never takes a write lock)."""
    from include.database import database
    from include.prediction_log.monitor_checks import earlier, latest, latest_summary
    from include.prediction_log.rows import iso_utc

    assert earlier(db, PIPELINE, "9999") == [] and latest(db, PIPELINE) is None
    assert latest_summary(db, [PIPELINE]) == {}
    d = database(db)
    with d.reading() as conn:
        cur = conn.cursor()
        if d.dialect == "sqlite":
            cur.execute("SELECT count(*) FROM sqlite_master WHERE name = 'slipway_monitor'")
        else:
            cur.execute("SELECT count(*) FROM pg_tables WHERE tablename = 'slipway_monitor'")
        assert cur.fetchone()[0] == 0
    _hour(cfg, db, 1, _drift(0.6), _perf(None))  # the first record creates the table
    assert [c.interval_end for c in earlier(db, PIPELINE, "9999")] == [iso_utc(T0 + timedelta(hours=1))]
