"""The monitor's checks beside drift and performance (no Airflow): live fairness catches a bias shift
(one group's labels flipped) and passes an unshifted window; attribution drift catches a feature whose
SHAP rank collapses; data quality catches a null-rate jump and a unit change and passes clean traffic;
each reports why when there is nothing to judge; ``trigger: retrain`` makes a breach retrain, under the
cool-down; the newest record exports a 0/1 per check."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import orjson
import pandas as pd
import pytest

from include.tasks.gates import check, not_applicable
from include.tasks.rollout.infra_validation import to_request_rows
from tests.support.snapshots import make_snapshot

PIPELINE = "telco_churn"
T0 = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def spec():
    from include.spec import load_pipeline

    return load_pipeline(PIPELINE)


@pytest.fixture(scope="module")
def population(spec, tmp_path_factory):
    """The demo table as a training snapshot (ingest's frame), its train and test splits."""
    from include.demo.data import load_wa_churn
    from include.spec import SPLIT_COLUMN
    from include.tasks.monitor.drift import read_snapshot

    uri = make_snapshot(load_wa_churn(), spec, tmp_path_factory.mktemp("snap") / "snapshot.parquet")
    snapshot = read_snapshot(uri)
    train = snapshot[snapshot[SPLIT_COLUMN] == "train"].reset_index(drop=True)
    test = snapshot[snapshot[SPLIT_COLUMN] == "test"].reset_index(drop=True)
    return snapshot, train, test


@pytest.fixture(scope="module")
def profile(spec, population):
    from include.tasks.monitor.drift import build_profile

    snapshot, _, test = population
    return build_profile(spec, 3, snapshot, np.linspace(0, 1, len(test)))


# ------------------------------------------------------------------------------------- data quality
def _chunks(rows: list[dict]):
    return [[(orjson.dumps(r).decode(), 3, 0.5) for r in rows]]


def _quality(spec, profile, rows, **update):
    from include.settings import get_settings
    from include.tasks.monitor.quality import count_quality, quality_checks, suite_ranges

    cfg = spec.monitoring.data_quality.model_copy(update=update)
    suite = suite_ranges(get_settings().expectations_dir / spec.suite_file)
    results = quality_checks(cfg, count_quality(_chunks(rows), profile, suite))
    return {r["metric"]: r for r in results}


def _failed(results: dict) -> set[str]:
    return {m for m, r in results.items() if r["status"] == "failed"}


def test_clean_traffic_passes_data_quality_and_every_feature_is_measured(spec, profile, population):
    _, _, test = population
    results = _quality(spec, profile, to_request_rows(test, spec))
    assert _failed(results) == set()
    features = list(spec.features.all)
    assert {f"null_rate[{f}]" for f in features} <= set(results)
    assert results["out_of_range_share[monthly_charges]"]["status"] == "passed"  # the suite's range
    assert "suite" in results["out_of_range_share[monthly_charges]"]["note"]
    assert results["unseen_share[contract]"]["status"] == "passed"


def test_a_null_rate_jump_in_one_feature_breaches(spec, profile, population):
    _, _, test = population
    rows = to_request_rows(test, spec)
    for r in rows[: len(rows) // 5]:  # an upstream join lost tenure for a fifth of the traffic
        r["tenure"] = None
    results = _quality(spec, profile, rows)
    assert _failed(results) == {"null_rate[tenure]"}
    assert results["null_rate[tenure]"]["value"] == pytest.approx(0.2, abs=0.01)


def test_a_unit_change_and_a_new_category_breach(spec, profile, population):
    _, _, test = population
    rows = to_request_rows(test, spec)
    for r in rows:
        r["monthly_charges"] = r["monthly_charges"] * 100  # cents instead of dollars
    for r in rows[:50]:
        r["contract"] = "Three year"
    assert _failed(_quality(spec, profile, rows)) == {
        "out_of_range_share[monthly_charges]",
        "unseen_share[contract]",
    }


def test_data_quality_not_judged_on_too_few_rows_or_when_disabled(spec, profile, population):
    _, _, test = population
    few = _quality(spec, profile, to_request_rows(test.head(20), spec))
    assert [r["status"] for r in few.values()] == ["not_applicable"]
    assert "20 served rows" in few["data_quality"]["note"]
    from include.tasks.monitor.quality import quality_checks

    off = quality_checks(spec.monitoring.data_quality.model_copy(update={"enabled": False}), None)
    assert off[0]["status"] == "not_applicable" and "enabled is false" in off[0]["note"]


def test_a_profile_from_before_training_ranges_still_loads_and_says_why_no_range(spec, profile, population):
    from include.tasks.monitor.drift import Profile
    from include.tasks.monitor.quality import count_quality, quality_checks

    body = json.loads(profile.to_json())
    for f in body["features"]:
        f.pop("low", None), f.pop("high", None)
    old = Profile.from_json(json.dumps(body).encode())
    _, _, test = population
    counts = count_quality(_chunks(to_request_rows(test, spec)), old, {})  # no suite either
    results = {r["metric"]: r for r in quality_checks(spec.monitoring.data_quality, counts)}
    assert results["out_of_range_share[tenure]"]["status"] == "not_applicable"
    assert "predates" in results["out_of_range_share[tenure]"]["note"]
    assert results["null_rate[tenure]"]["status"] == "passed"


# ------------------------------------------------------------------------------------- live fairness
def _labelled(n: int = 800, seed: int = 0, flip_group: int | None = None, unknown: int = 0):
    """``n`` labelled rows of a classifier right 85% of the time in every group, keys ``e<i>``; with
    ``flip_group``, that group of ``female`` has its labels flipped (what the model decides for it
    went wrong); ``unknown`` extra rows have keys the lake does not know."""
    from include.tasks.monitor.performance import Labelled

    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, n)
    decision = np.where(rng.random(n) < 0.85, label, 1 - label)
    female = np.arange(n) % 2
    if flip_group is not None:
        label = np.where(female == flip_group, 1 - label, label)
    keys = [f"e{i}" for i in range(n)] + [f"x{i}" for i in range(unknown)]
    label = np.concatenate([label, np.zeros(unknown)])
    decision = np.concatenate([decision, np.zeros(unknown)])
    sensitive = pd.DataFrame(
        {"female": female, "senior_citizen": (np.arange(n) // 2) % 2},
        index=pd.Index([f"e{i}" for i in range(n)], name="customer_id"),
    )
    return Labelled(
        decision.astype(float), label.astype(float), "a", "b", decision.astype(float), keys
    ), sensitive


def test_an_unshifted_live_window_passes_live_fairness(spec):
    from include.tasks.monitor.fairness import live_fairness

    labelled, sensitive = _labelled(unknown=40)
    out = live_fairness(spec, labelled, sensitive, {})
    assert out["matched"] == 800 and out["unmatched"] == 40
    statuses = {r["metric"]: r["status"] for r in out["results"]}
    assert statuses["equal_opportunity_difference[female]"] == "passed"
    assert set(statuses.values()) == {"passed"}
    assert "40 of 840 rows without a known group" in out["results"][0]["note"]


def test_one_groups_flipped_labels_breach_live_fairness(spec):
    from include.tasks.monitor.fairness import live_fairness

    labelled, sensitive = _labelled(flip_group=1)
    failed = {
        r["metric"]
        for r in live_fairness(spec, labelled, sensitive, {})["results"]
        if r["status"] == "failed"
    }
    assert "equal_opportunity_difference[female]" in failed
    assert "equalized_odds_difference[female]" in failed
    assert not any(m.endswith("[senior_citizen]") for m in failed)  # the other attribute is unshifted


def test_a_margin_over_the_training_gap_tightens_the_bound(spec):
    from include.tasks.monitor.fairness import live_fairness, training_values

    labelled, sensitive = _labelled(seed=3)
    blessing = {"results": [check("fairness", "demographic_parity_difference[female]", 0.01, 0.2, "<=")]}
    trained = training_values(blessing)
    tight = spec.model_copy(
        update={
            "monitoring": spec.monitoring.model_copy(
                update={"fairness": spec.monitoring.fairness.model_copy(update={"margin": 0.0})}
            )
        }
    )
    r = {x["metric"]: x for x in live_fairness(tight, labelled, sensitive, trained)["results"]}
    dpd = r["demographic_parity_difference[female]"]
    assert dpd["threshold"] == pytest.approx(0.01)  # training 0.01 + margin 0, tighter than the gate's bound
    assert dpd["status"] == ("failed" if dpd["value"] > 0.01 else "passed")
    gate = spec.gates.fairness.max_demographic_parity_difference
    assert r["demographic_parity_difference[senior_citizen]"]["threshold"] == gate  # no training value


def test_live_fairness_says_why_when_there_is_nothing_to_judge(spec):
    from include.tasks.monitor.fairness import live_fairness

    labelled, sensitive = _labelled(n=100)
    few = live_fairness(spec, labelled, sensitive, {})["results"]
    assert [r["status"] for r in few] == ["not_applicable"] and "judged from 200" in few[0]["note"]
    nobody = spec.model_copy(update={"sensitive_attributes": []})
    assert "no sensitive_attributes" in live_fairness(nobody, labelled, sensitive, {})["results"][0]["note"]
    lake_unknown, _ = _labelled(n=0, unknown=300)
    out = live_fairness(spec, lake_unknown, sensitive, {})
    assert out["unmatched"] == 300 and out["results"][0]["status"] == "not_applicable"


def test_the_lake_gives_each_entity_its_newest_sensitive_values(spec, tmp_path):
    from include import storage
    from include.frames import to_parquet_bytes
    from include.tasks.monitor.fairness import read_sensitive
    from include.tasks.train.ingest import lake_batch_uri

    lake = storage.path_to_uri(tmp_path)
    for month, senior in (("2025-01", 0), ("2025-02", 1)):
        frame = pd.DataFrame({"customer_id": ["a", "b"], "female": [1, 0], "senior_citizen": [senior, 0]})
        storage.write_bytes(lake_batch_uri(lake, spec, month), to_parquet_bytes(frame))
    found = read_sensitive(lake, spec)
    assert found.loc["a", "senior_citizen"] == 1 and found.loc["b", "female"] == 0 and len(found) == 2


def test_read_labelled_returns_the_entity_keys(log_url):
    from include.prediction_log.rows import PredictionRow, iso_utc
    from include.prediction_log.writer import PredictionLog
    from include.tasks.monitor.performance import read_labelled

    log = PredictionLog(log_url)
    log.start()
    try:
        ids = [uuid.uuid4().hex for _ in range(3)]
        log.record_sync(
            [
                PredictionRow(rid, PIPELINE, key, 3, "champion", True, {"tenure": 1.0}, 0.7, 1, 0.1, T0)
                for rid, key in zip(ids, ["k1", None, "k3"], strict=True)
            ]
        )
        for rid in ids:
            log.feedback(rid, 1, pipeline=PIPELINE, at=T0 + timedelta(hours=1))
    finally:
        log.close()
    labelled = read_labelled(log_url, PIPELINE, 3, iso_utc(T0), iso_utc(T0 + timedelta(hours=1)))
    assert sorted(labelled.entity_key, key=str) == sorted(["k1", None, "k3"], key=str)


def test_a_regression_compares_the_logged_prediction_and_needs_its_bound(spec):
    from include.tasks.monitor.fairness import live_fairness

    regression = spec.model_copy(update={"task": "regression"})
    labelled, sensitive = _labelled()
    labelled.probability = labelled.label + np.where(
        np.arange(len(labelled.label)) % 2, 5.0, 0.0
    )  # female under-served
    out = live_fairness(regression, labelled, sensitive, {})
    statuses = {r["metric"]: r for r in out["results"]}
    # The gate's regression bounds are in target units and not set here: not judged, naming the field.
    assert statuses["mae_difference[female]"]["status"] == "not_applicable"
    assert "max_mae_difference" in statuses["mae_difference[female]"]["note"]
    bounded = regression.model_copy(
        update={
            "gates": regression.gates.model_copy(
                update={
                    "fairness": regression.gates.fairness.model_copy(
                        update={"max_mae_difference": 1.0, "max_mean_residual_difference": 1.0}
                    )
                }
            )
        }
    )
    failed = {
        r["metric"]
        for r in live_fairness(bounded, labelled, sensitive, {})["results"]
        if r["status"] == "failed"
    }
    assert failed == {"mae_difference[female]", "mean_residual_difference[female]"}


# ------------------------------------------------------------------------------------- attributions
@pytest.fixture(scope="module")
def explained(spec, population):
    """A small model trained here, its training importance on test rows (as the gate computes it)."""
    from include.frames import feature_frame, labels
    from include.tasks.monitor.attribution import live_importance
    from include.tasks.train.fit import build_pipeline

    _, train, test = population
    X = feature_frame(train, spec)
    model = build_pipeline(spec, X).fit(X, labels(train, spec))
    background = X.sample(n=100, random_state=0)
    training = live_importance(model, background, feature_frame(test.sample(n=300, random_state=0), spec))
    return model, background, training


def test_served_rows_like_the_training_rows_keep_the_attribution_ranking(spec, population, explained):
    from include.tasks.monitor.attribution import attribution_checks, live_importance, sample_frame

    model, background, training = explained
    _, _, test = population
    sample = to_request_rows(test.sample(n=300, random_state=7), spec)
    live = live_importance(model, background, sample_frame(sample, spec))
    (result,) = attribution_checks(spec.monitoring.attribution, training, live, 300)
    assert result["status"] == "passed" and result["value"] > 0.8


def test_a_feature_whose_values_stop_varying_breaches_attribution(spec, population, explained):
    from include.tasks.monitor.attribution import attribution_checks, live_importance, sample_frame

    model, background, training = explained
    _, _, test = population
    top = next(iter(training))
    sample = to_request_rows(test.sample(n=300, random_state=7), spec)
    # The top feature arrives as one value everywhere (a default filled upstream): it no longer
    # separates anyone, so its attribution against the background's spread collapses.
    constant = (
        background[top].mode().iloc[0] if top in spec.features.categorical else float(background[top].mean())
    )
    for r in sample:
        r[top] = constant
    live = live_importance(model, background, sample_frame(sample, spec))
    (result,) = attribution_checks(spec.monitoring.attribution, training, live, 300)
    assert result["status"] == "failed", result
    assert top in result["note"].split("left the top: ")[-1]


def test_attribution_says_why_when_there_is_nothing_to_judge(spec):
    from include.tasks.monitor.attribution import attribution_checks

    cfg = spec.monitoring.attribution
    assert "judged from" in attribution_checks(cfg, {"a": 1.0}, None, 10)[0]["note"]
    assert "no SHAP importance on record" in attribution_checks(cfg, None, None, 1000)[0]["note"]
    off = attribution_checks(cfg.model_copy(update={"enabled": False}), {"a": 1.0}, {"a": 1.0}, 1000)
    assert off[0]["status"] == "not_applicable"


# ------------------------------------------------------------------------------------- the decision
@pytest.fixture
def cfg(spec):
    return spec.monitoring.model_copy(update={"cooldown_hours": 6})


_CLEAN = [check("drift", "psi[tenure]", 0.01, 0.25, "<=")]
_NO_PERF = [not_applicable("performance", "roc_auc", "12 labelled; judged from 200")]


def _breach(name: str) -> dict[str, list[dict]]:
    failed = {
        "fairness": check("fairness", "equal_opportunity_difference[female]", 0.6, 0.2, "<="),
        "attribution": check("attribution", "rank_correlation", 0.1, 0.5, ">="),
        "data_quality": check("data_quality", "null_rate[tenure]", 0.2, 0.05, "<="),
    }[name]
    return {name: [failed]}


@pytest.mark.parametrize("name", ["fairness", "attribution", "data_quality"])
def test_a_breach_alerts_and_retrains_only_with_trigger_retrain(cfg, name):
    from include.tasks.monitor.decision import decide

    alert_cfg = cfg.model_copy(update={name: getattr(cfg, name).model_copy(update={"trigger": "alert"})})
    alert = decide(alert_cfg, T0, 1000, _CLEAN, _NO_PERF, [], _breach(name))
    assert (alert.status, alert.alert, alert.trigger, alert.breaches) == ("breach", True, None, (name,))
    retrain_cfg = cfg.model_copy(update={name: getattr(cfg, name).model_copy(update={"trigger": "retrain"})})
    retrain = decide(retrain_cfg, T0, 1000, _CLEAN, _NO_PERF, [], _breach(name))
    assert retrain.trigger == name and retrain.alert
    clean = decide(retrain_cfg, T0, 1000, _CLEAN, _NO_PERF, [], {name: [check(name, "m", 0.1, 0.2, "<=")]})
    assert (clean.status, clean.trigger, clean.alert) == ("ok", None, False)


def test_broken_inputs_hold_the_retrain_their_drift_would_start(cfg):
    """Nulls also move the PSI: with data quality set to alert, the interval alerts and names why
    nothing retrains; set to retrain, drift retrains as usual."""
    from include.blocks.monitor import outcome_line
    from include.tasks.monitor.decision import decide

    drifted = [check("drift", "psi[tenure]", 0.9, 0.25, "<=")]
    alert_cfg = cfg.model_copy(
        update={"data_quality": cfg.data_quality.model_copy(update={"trigger": "alert"})}
    )
    held = decide(alert_cfg, T0, 1000, drifted, _NO_PERF, [], _breach("data_quality"))
    assert (held.status, held.alert, held.trigger, held.held_by) == ("breach", True, None, None)
    assert held.blocked and "a retrain would learn the broken inputs" in held.blocked
    judged = {
        "status": held.status,
        "trigger": None,
        "month": None,
        "held_by": None,
        "breaches": list(held.breaches),
        "cause": None,
        "evidence": {
            "rows": 1000,
            "champion": 3,
            "drifted": [{"metric": "psi[tenure]", "value": 0.9, "threshold": 0.25}],
            "drifted_count": 1,
            "performance": [],
            "checks": {
                "data_quality": {"failed": [{"metric": "null_rate[tenure]", "value": 0.2, "threshold": 0.05}]}
            },
            "blocked": held.blocked,
        },
    }
    assert "retraining not triggered: the served inputs failed the data-quality check" in outcome_line(judged)
    assert decide(cfg, T0, 1000, drifted, _NO_PERF, [], {}).trigger == "drift"  # clean inputs: retrain
    retrain_cfg = cfg.model_copy(
        update={"data_quality": cfg.data_quality.model_copy(update={"trigger": "retrain"})}
    )
    assert decide(retrain_cfg, T0, 1000, drifted, _NO_PERF, [], _breach("data_quality")).trigger == "drift"


def test_a_retrain_breach_is_held_by_the_cool_down_and_recorded(cfg, log_url):
    from include.prediction_log.monitor_checks import Check, earlier, latest_summary, record
    from include.prediction_log.rows import iso_utc
    from include.tasks.monitor.decision import decide, evidence

    cfg = cfg.model_copy(update={"fairness": cfg.fairness.model_copy(update={"trigger": "retrain"})})
    for hour in (1, 2):
        end = T0 + timedelta(hours=hour)
        checks = {
            **_breach("fairness"),
            "attribution": [not_applicable("attribution", "rank_correlation", "few")],
        }
        d = decide(cfg, end, 1000, _CLEAN, _NO_PERF, earlier(log_url, PIPELINE, iso_utc(end)), checks)
        ev = evidence(_CLEAN, _NO_PERF, checks=checks)
        record(
            log_url,
            Check(
                PIPELINE,
                iso_utc(end - timedelta(hours=1)),
                iso_utc(end),
                3,
                1000,
                d.status,
                False,
                False,
                d.trigger,
                d.alert,
                ev,
            ),
        )
        if hour == 1:
            assert d.trigger == "fairness"
        else:
            assert d.trigger is None and d.held_by == iso_utc(T0 + timedelta(hours=1)) and not d.alert
    summary = latest_summary(log_url, [PIPELINE])[PIPELINE]
    assert (summary["fairness_breach"], summary["attribution_breach"], summary["data_quality_breach"]) == (
        1,
        0,
        0,
    )
    newest = earlier(log_url, PIPELINE, "9999", limit=1)[0]
    assert newest.evidence["checks"]["attribution"] == {
        "status": "not_judged",
        "failed": [],
        "failed_count": 0,
        "reason": "few",
    }


def test_the_record_of_an_interval_before_these_checks_exports_no_breach(log_url):
    from include.prediction_log.monitor_checks import Check, latest_summary, record

    record(
        log_url,
        Check(
            PIPELINE, "2026-03-01T00:00:00", "2026-03-01T01:00:00", 3, 10, "ok", False, False, None, False, {}
        ),
    )
    summary = latest_summary(log_url, [PIPELINE])[PIPELINE]
    assert (summary["fairness_breach"], summary["attribution_breach"], summary["data_quality_breach"]) == (
        0,
        0,
        0,
    )


def test_an_alert_names_the_breached_check():
    from include.blocks.monitor import alert_text, outcome_line

    judged = {
        "status": "breach",
        "alert": True,
        "trigger": None,
        "month": None,
        "held_by": None,
        "cause": None,
        "breaches": ["fairness"],
        "evidence": {
            "since": "2026-03-01T00:00:00",
            "until": "2026-03-01T01:00:00",
            "champion": 3,
            "rows": 900,
            "drifted": [],
            "drifted_count": 0,
            "performance": [],
            "checks": {
                "fairness": {
                    "status": "breach",
                    "failed": [
                        {
                            "metric": "equal_opportunity_difference[female]",
                            "value": 0.61,
                            "threshold": 0.2,
                            "comparison": "<=",
                        }
                    ],
                    "failed_count": 1,
                    "unmatched_rows": 12,
                }
            },
        },
    }
    subject, body = alert_text(PIPELINE, judged)
    assert "live fairness" in subject
    assert "equal_opportunity_difference[female] = 0.61 (limit 0.2)" in body
    assert "12 labelled rows had no matching entity" in body
    assert "trigger: alert" in body
    assert "live fairness: equal_opportunity_difference[female] 0.610 > 0.2" in outcome_line(judged)
