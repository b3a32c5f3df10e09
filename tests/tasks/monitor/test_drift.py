"""Drift of logged traffic against a version's reference profile (no Airflow): shifts of several
shapes are caught, held-out traffic of the same population is not, too little traffic is not judged,
and the streamed count from the prediction log (SQLite and PostgreSQL) equals a count in memory."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from include.tasks.rollout.infra_validation import to_request_rows
from tests.support.snapshots import make_snapshot

PIPELINE = "telco_churn"
T0 = datetime(2026, 3, 1, 10, tzinfo=UTC)


@pytest.fixture(scope="module")
def population(tmp_path_factory):
    """The demo table as a training snapshot: its training split is the reference, its test split
    is traffic from the same population."""
    from include.demo.data import load_wa_churn
    from include.spec import SPLIT_COLUMN, load_pipeline
    from include.tasks.monitor.drift import read_snapshot

    spec = load_pipeline(PIPELINE)
    uri = make_snapshot(load_wa_churn(), spec, tmp_path_factory.mktemp("snap") / "snapshot.parquet")
    snapshot = read_snapshot(uri)
    test = snapshot[snapshot[SPLIT_COLUMN] == "test"].reset_index(drop=True)
    rng = np.random.default_rng(1)
    scores = np.clip(rng.beta(2, 5, size=len(test)), 0, 1)  # the version's scores on its test split
    return spec, snapshot, test, scores


@pytest.fixture(scope="module")
def profile(population):
    from include.tasks.monitor.drift import build_profile

    spec, snapshot, _, scores = population
    return build_profile(spec, 3, snapshot, scores)


def _judge(profile, spec, rows, scores, min_rows=500):
    from include.tasks.monitor.drift import Counts, drift_checks

    counts = Counts(profile)
    counts.add(rows, list(scores))
    cfg = spec.monitoring.drift.model_copy(update={"min_rows": min_rows})
    return {r["metric"]: r for r in drift_checks(cfg, counts)}


def _failed(results: dict) -> set[str]:
    return {m for m, r in results.items() if r["status"] == "failed"}


def test_held_out_traffic_of_the_same_population_has_no_drift(population, profile):
    spec, _, test, scores = population
    results = _judge(profile, spec, to_request_rows(test, spec), scores)
    assert len(results) == len(spec.features.all) + 1
    assert _failed(results) == set(), {m: r["value"] for m, r in results.items()}
    assert all(r["status"] == "passed" for r in results.values())


@pytest.mark.parametrize(
    ("shape", "shift", "drifted"),
    [
        (
            "price rise of 30% on monthly charges",
            lambda rows: [{**r, "monthly_charges": r["monthly_charges"] * 1.3} for r in rows],
            {"psi[monthly_charges]"},
        ),
        (
            "contract mix moved to month-to-month",
            lambda rows: [{**r, "contract": "Month-to-month"} if i % 3 else r for i, r in enumerate(rows)],
            {"psi[contract]"},
        ),
        (
            "a payment method the model never saw",
            lambda rows: [
                {**r, "payment_method": "Crypto wallet"} if i % 2 else r for i, r in enumerate(rows)
            ],
            {"psi[payment_method]"},
        ),
        (
            "total charges missing for 40% of customers",
            lambda rows: [{**r, "total_charges": None} if i % 5 < 2 else r for i, r in enumerate(rows)],
            {"psi[total_charges]"},
        ),
        (
            "newcomers only (tenure under a year)",
            lambda rows: [{**r, "tenure": float(r["tenure"]) % 12} for r in rows],
            {"psi[tenure]"},
        ),
    ],
)
def test_a_shift_is_caught_on_the_feature_that_moved(population, profile, shape, shift, drifted):
    spec, _, test, scores = population
    results = _judge(profile, spec, shift(to_request_rows(test, spec)), scores)
    assert drifted <= _failed(results), (shape, {m: r["value"] for m, r in results.items()})
    # Features nobody touched stay within bounds (tenure drags total charges with it, by design).
    untouched = {f"psi[{n}]" for n in ("partner", "internet_service", "streaming_tv", "online_security")}
    assert not (_failed(results) & untouched), shape


def test_scores_alone_can_drift(population, profile):
    spec, _, test, scores = population
    results = _judge(profile, spec, to_request_rows(test, spec), np.clip(scores + 0.25, 0, 1))
    assert _failed(results) == {"psi[prediction]"}


def test_too_little_traffic_is_not_judged(population, profile):
    spec, _, test, scores = population
    rows = [{**r, "monthly_charges": 500.0} for r in to_request_rows(test.head(100), spec)]
    results = _judge(profile, spec, rows, scores[:100])
    assert list(results) == ["feature_psi"] and results["feature_psi"]["status"] == "not_applicable"
    assert "100 served rows" in results["feature_psi"]["note"]


def test_profile_survives_its_json_and_keys_categories_as_served(population, profile):
    from include.tasks.monitor.drift import Profile, category_key

    assert Profile.from_json(profile.to_json()) == profile
    assert category_key(1) == category_key(1.0) == category_key(True) == "1"
    assert category_key(None) == category_key(float("nan")) == "__missing__"
    contract = next(f for f in profile.features if f.name == "contract")
    assert contract.kind == "categorical" and "Month-to-month" in contract.categories
    assert abs(sum(contract.shares) - 1) < 1e-9
    with pytest.raises(ValueError, match="format"):
        Profile.from_json(profile.to_json().replace(b'"format": 1', b'"format": 99'))


def _log(url: str, population, shift=None, start=T0) -> list[dict]:
    """Write the test split as served predictions, one second apart from ``start``; every third by
    another version (its scores are not the profile version's)."""
    from include.prediction_log.rows import PredictionRow
    from include.prediction_log.writer import PredictionLog

    spec, _, test, scores = population
    rows = to_request_rows(test, spec)
    rows = shift(rows) if shift else rows
    log = PredictionLog(url)
    log.start()
    try:
        log.record_sync(
            [
                PredictionRow(
                    request_id=uuid.uuid4().hex,
                    pipeline=PIPELINE,
                    entity_key=None,
                    model_version=3 if i % 3 else 4,
                    variant="champion" if i % 3 else "challenger",
                    served=True,
                    inputs=row,
                    probability=float(scores[i]),
                    decision=int(scores[i] >= 0.5),
                    latency_ms=0.1,
                    created_at=start + timedelta(seconds=i),
                )
                for i, row in enumerate(rows)
            ]
        )
    finally:
        log.close()
    return rows


def test_streamed_counts_equal_one_count_in_memory(log_url, population, profile):
    from include.prediction_log.reads import served_inputs
    from include.prediction_log.rows import iso_utc
    from include.tasks.monitor.drift import Counts, count_window

    spec, _, test, scores = population
    rows = _log(log_url, population)
    end = T0 + timedelta(seconds=len(rows))
    streamed, sample = count_window(
        served_inputs(log_url, PIPELINE, iso_utc(T0), iso_utc(end), chunk=97), profile, sample_rows=50
    )
    whole = Counts(profile)
    whole.add(rows, [float(s) for i, s in enumerate(scores) if i % 3])
    assert streamed.rows == len(rows) == whole.rows and streamed.scored == whole.scored
    assert all((streamed.features[k] == whole.features[k]).all() for k in whole.features)
    assert (streamed.scores == whole.scores).all()
    assert len(sample) == 50 and all(set(s) == set(spec.features.all) for s in sample)
    # The window's bounds hold: the first hundred seconds only.
    first, _ = count_window(
        served_inputs(log_url, PIPELINE, iso_utc(T0), iso_utc(T0 + timedelta(seconds=100))), profile
    )
    assert first.rows == 100


def test_the_report_spells_binary_values_as_the_check_does(telco_spec):
    """The log holds a binary 1 as 1.0, the snapshot as 1: the same category for the report too, so
    an unchanged binary column is not "drifted" in Evidently's report (it was, for every one)."""
    import numpy as np
    import pandas as pd

    from include.tasks.monitor.drift import evidently_report, feature_kinds, report_frames

    rng = np.random.default_rng(3)
    kinds = feature_kinds(telco_spec)
    n = 600

    def rows(scale: float):
        out = {}
        for name, kind in kinds.items():
            if kind == "numeric":
                out[name] = rng.normal(50, 10, n) * scale
            elif name in telco_spec.features.binary:
                out[name] = rng.integers(0, 2, n)
            else:
                out[name] = rng.choice(["a", "b", "c"], n)
        return pd.DataFrame(out)

    reference = rows(1.0)
    served = rows(1.0)
    served["monthly_charges"] = served["monthly_charges"] * 1.5  # the one real shift
    sample = [
        {k: (float(v) if isinstance(v, np.integer) else v) for k, v in r.items()}
        for r in served.to_dict("records")
    ]
    ref, cur = report_frames(kinds, reference, sample)
    assert set(ref["partner"]) == set(cur["partner"]) == {"0", "1"}
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        summary = evidently_report(ref, cur, f"{tmp}/r.html", f"{tmp}/r.json", 0.25)
    assert "monthly_charges" in summary["drifted"]
    assert not set(summary["drifted"]) & set(telco_spec.features.binary), summary["drifted"]
