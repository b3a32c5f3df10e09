"""Fairness for multiclass and regression specs: hand-computed numbers, planted disparities fail the
gate with the metric named, fair models pass, an unset regression bound is not applicable."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from include import storage
from include.frames import feature_frame, labels, to_parquet_bytes
from include.model_files import pin, save_model, sha256_hex
from include.spec import FairnessGate, PipelineSpec
from include.tasks.gates import FAILED, NOT_APPLICABLE, PASSED, GateFailed, raise_for_gate, status_of
from include.tasks.train.fairness import FairnessInputError, assess_fairness, fairness_gate, fairness_report
from include.tasks.train.fit import build_pipeline

CLASSES = ["low", "mid", "high"]


def _spec(task: str, **fairness) -> PipelineSpec:
    """A minimal spec built in code: one numeric feature ``x``, sensitive attribute ``region``."""
    data: dict = {
        "name": f"fair_{task}",
        "description": f"synthetic {task} fairness test",
        "task": task,
        "features": {"numeric": ["x"]},
        "sensitive_attributes": ["region"],
        "gates": {"fairness": fairness},
    }
    if task == "multiclass":
        data["target"] = {"column": "tier", "classes": CLASSES}
        data["estimator"] = {"kind": "decision_tree", "params": {"max_depth": 3}}
    else:
        data["target"] = {"column": "amount"}
        data["estimator"] = {"kind": "linear_regression"}
    return PipelineSpec.model_validate(data)


def _tier(x):
    return np.where(x < -0.5, "low", np.where(x < 0.5, "mid", "high"))


def _multiclass_rows(n: int, seed: int, planted: bool) -> pd.DataFrame:
    """Half region "a", half "b"; the tier is a band of x. Planted: region "b" has x shifted up by 1.5
    but its tier is the band of the unshifted value, so a model of the unshifted relation decides "b"
    into higher tiers (unequal selection) and gets its tier wrong more often (lower recall)."""
    rng = np.random.default_rng(seed)
    region = np.array(["a", "b"] * (n // 2))
    base = rng.normal(0.0, 1.0, n)
    shift = np.where((region == "b") & planted, 1.5, 0.0)
    return pd.DataFrame({"x": base + shift, "region": region, "tier": _tier(base)})


def _regression_rows(n: int, seed: int, planted: bool) -> pd.DataFrame:
    """amount = 3x + noise; planted: region "b" is 5 higher and twelve times as noisy, which a model of x
    alone cannot see (it under-predicts "b", over-predicts "a", and errs more on "b")."""
    rng = np.random.default_rng(seed)
    region = np.array(["a", "b"] * (n // 2))
    x = rng.normal(0.0, 1.0, n)
    b = (region == "b") & planted
    noise = rng.normal(0.0, 1.0, n) * np.where(b, 6.0, 0.5)
    return pd.DataFrame({"x": x, "region": region, "amount": 3 * x + noise + np.where(b, 5.0, 0.0)})


def _model_and_test(tmp_path, spec: PipelineSpec, train: pd.DataFrame, test: pd.DataFrame):
    """Fit the spec's pipeline on ``train``; write the pinned model and the test split; their URIs."""
    X = feature_frame(train, spec)
    pipeline = build_pipeline(spec, X).fit(X, labels(train, spec))
    data = save_model(pipeline)
    model_uri = pin(
        storage.write_bytes(storage.path_to_uri(tmp_path / "model.skops"), data), sha256_hex(data)
    )
    test_uri = storage.write_bytes(storage.path_to_uri(tmp_path / "test.parquet"), to_parquet_bytes(test))
    return model_uri, test_uri


def _trained(tmp_path, task: str, planted: bool, **fairness):
    spec = _spec(task, **fairness)
    if task == "multiclass":
        # Planted: the model learnt the tiers where x meant the same in both regions; in the test
        # split region "b" has drifted.
        train, test = _multiclass_rows(600, 1, False), _multiclass_rows(800, 2, planted)
    else:
        train, test = _regression_rows(600, 1, planted), _regression_rows(800, 2, planted)
    model_uri, test_uri = _model_and_test(tmp_path, spec, train, test)
    return spec, model_uri, test_uri


MULTI_BOUNDS = {"max_selection_rate_difference": 0.2, "max_macro_recall_difference": 0.2}
REG_BOUNDS = {"max_mae_difference": 1.0, "max_mean_residual_difference": 1.0}
MOST_PROBABLE = {"value_matrix": None}


# ------------------------------------------------------------------------- hand-computed numbers
def test_multiclass_numbers_equal_a_hand_computation():
    group = np.array(["a"] * 6 + ["b"] * 6)
    y_true = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])
    y_pred = np.array([0, 1, 2, 0, 1, 1, 0, 0, 0, 0, 1, 2])
    rep = fairness_report(y_true, y_pred, pd.DataFrame({"region": group}), "multiclass", CLASSES)
    assert rep["task"] == "multiclass"
    a = rep["attributes"]["region"]

    shares, recalls = {}, {}
    for g in ("a", "b"):
        t, p = y_true[group == g], y_pred[group == g]
        shares[g] = np.array([(p == c).mean() for c in range(3)])
        recalls[g] = np.mean([((p == c) & (t == c)).sum() / (t == c).sum() for c in range(3)])
    # a decides 2/6, 3/6, 1/6; b decides 4/6, 1/6, 1/6. Recall: a (1 + 1 + 0.5) / 3, b (1 + 0.5 + 0.5) / 3.
    assert a["by_group"]["a"] == {
        "count": 6,
        "selection_rate": {c: pytest.approx(v, abs=1e-6) for c, v in zip(CLASSES, shares["a"], strict=True)},
        "macro_recall": pytest.approx(recalls["a"], abs=1e-6),
    }
    assert a["by_group"]["b"]["macro_recall"] == pytest.approx(2 / 3, abs=1e-6)
    gaps = np.abs(shares["a"] - shares["b"])
    assert a["selection_rate_difference_by_class"] == {
        c: pytest.approx(v, abs=1e-6) for c, v in zip(CLASSES, gaps, strict=True)
    }
    assert a["selection_rate_difference"] == pytest.approx(gaps.max(), abs=1e-6) == pytest.approx(2 / 6)
    assert a["macro_recall_difference"] == pytest.approx(abs(recalls["a"] - recalls["b"]), abs=1e-6)
    assert a["macro_recall_difference"] == pytest.approx(1 / 6, abs=1e-6)
    assert a["notes"] == {} and a["missing_classes"] == {}
    json.dumps(rep, allow_nan=False)

    results = fairness_gate(rep, FairnessGate(**MULTI_BOUNDS))
    assert [(r["metric"], r["status"]) for r in results] == [
        ("selection_rate_difference[region]", FAILED),  # 0.333 > 0.2
        ("macro_recall_difference[region]", PASSED),  # 0.167 <= 0.2
    ]


def test_regression_numbers_equal_a_hand_computation():
    group = np.array(["a", "a", "a", "b", "b", "b", "b"])
    y_true = np.array([1.0, 2.0, 3.0, 10.0, 20.0, 30.0, 40.0])
    y_pred = np.array([1.5, 2.0, 2.0, 12.0, 18.0, 35.0, 41.0])
    rep = fairness_report(y_true, y_pred, pd.DataFrame({"region": group}), "regression")
    a = rep["attributes"]["region"]
    mae = {g: np.abs(y_pred - y_true)[group == g].mean() for g in ("a", "b")}
    res = {g: (y_pred - y_true)[group == g].mean() for g in ("a", "b")}
    assert a["by_group"] == {
        "a": {
            "count": 3,
            "mae": pytest.approx(mae["a"], abs=1e-6),
            "mean_residual": pytest.approx(res["a"], abs=1e-6),
        },
        "b": {
            "count": 4,
            "mae": pytest.approx(mae["b"], abs=1e-6),
            "mean_residual": pytest.approx(res["b"], abs=1e-6),
        },
    }
    assert a["mae_difference"] == pytest.approx(abs(mae["b"] - mae["a"]), abs=1e-6)  # 2.5 - 0.5
    assert a["mean_residual_difference"] == pytest.approx(abs(res["b"] - res["a"]), abs=1e-6)  # 1.5 + 1/6
    assert a["mae_difference"] == pytest.approx(2.0, abs=1e-6)
    assert a["notes"] == {}
    results = {r["metric"]: r for r in fairness_gate(rep, FairnessGate(**REG_BOUNDS))}
    assert results["mae_difference[region]"]["status"] == FAILED
    assert results["mean_residual_difference[region]"]["status"] == FAILED
    assert results["mean_residual_difference[region]"]["value"] == pytest.approx(1.5 + 1 / 6, abs=1e-6)


def test_multiclass_group_missing_a_class_is_undefined_not_zero():
    # Group "b" has no true "high": its recall of "high" is 0/0, which scikit-learn would count as 0
    # and so report a macro recall gap that does not exist.
    group = np.array(["a"] * 3 + ["b"] * 3)
    y_true = np.array([0, 1, 2, 0, 1, 1])
    rep = fairness_report(y_true, y_true, pd.DataFrame({"region": group}), "multiclass", CLASSES)
    a = rep["attributes"]["region"]
    assert a["by_group"]["a"]["macro_recall"] == 1.0 and a["by_group"]["b"]["macro_recall"] is None
    assert a["macro_recall_difference"] is None
    assert a["missing_classes"] == {"b": ["high"]}
    json.dumps(rep, allow_nan=False)
    (mrd,) = [r for r in fairness_gate(rep, FairnessGate(**MULTI_BOUNDS)) if r["metric"].startswith("macro")]
    assert mrd["status"] == FAILED and mrd["value"] is None
    assert "'b' has no true ['high']" in mrd["note"] and "undefined" in mrd["note"]


def test_one_group_cannot_pass_for_any_task():
    one = pd.DataFrame({"region": ["a"] * 4})
    multi = fairness_report([0, 1, 2, 0], [0, 1, 2, 0], one, "multiclass", CLASSES)
    reg = fairness_report([1.0, 2, 3, 4], [1.0, 2, 3, 4], one, "regression")
    for rep, bounds in ((multi, MULTI_BOUNDS), (reg, REG_BOUNDS)):
        results = fairness_gate(rep, FairnessGate(**bounds))
        assert len(results) == 2 and all(r["status"] == FAILED for r in results)
        assert all("nothing to compare" in r["note"] for r in results)


# ------------------------------------------------------------------------- multiclass end to end
def test_multiclass_planted_disparity_fails_with_the_metrics_named(tmp_path):
    spec, model_uri, test_uri = _trained(tmp_path, "multiclass", planted=True, **MULTI_BOUNDS)
    out = assess_fairness(spec, model_uri, test_uri, MOST_PROBABLE, tmp_path / "fair")
    report = out["report"]
    assert report["task"] == "multiclass" and report["classes"] == CLASSES
    assert report["decision"] == "the most probable class"
    a = report["attributes"]["region"]
    assert set(a["by_group"]) == {"a", "b"} and sum(g["count"] for g in a["by_group"].values()) == 800
    # "b" is decided "high" far more often than "a", and recalled worse.
    assert a["by_group"]["b"]["selection_rate"]["high"] > a["by_group"]["a"]["selection_rate"]["high"] + 0.3
    assert a["by_group"]["b"]["macro_recall"] < a["by_group"]["a"]["macro_recall"] - 0.2

    results = {r["metric"]: r for r in out["gates"]}
    assert list(results) == ["selection_rate_difference[region]", "macro_recall_difference[region]"]
    srd, mrd = results.values()
    assert srd["status"] == FAILED and srd["value"] == a["selection_rate_difference"] > 0.2
    assert mrd["status"] == FAILED and mrd["value"] == a["macro_recall_difference"] > 0.2
    assert srd["value"] == max(a["selection_rate_difference_by_class"].values())
    with pytest.raises(GateFailed) as exc:
        raise_for_gate(out["gates"])
    assert f"fairness: selection_rate_difference[region] = {srd['value']:.4f}, required <= 0.2" in str(
        exc.value
    )
    assert f"fairness: macro_recall_difference[region] = {mrd['value']:.4f}, required <= 0.2" in str(
        exc.value
    )

    assert out["threshold"] is None and out["mitigation"] is None and out["note"] is None
    assert json.loads((tmp_path / "fair" / "fairness.json").read_text()) == report
    png = tmp_path / "fair" / "fairness_region.png"
    assert str(png) in out["artifacts"] and png.read_bytes()[:4] == b"\x89PNG"
    assert all(r["evidence_uri"].endswith("/fair/fairness.json") for r in out["gates"])


def test_multiclass_fair_model_passes(tmp_path):
    spec, model_uri, test_uri = _trained(tmp_path, "multiclass", planted=False, **MULTI_BOUNDS)
    out = assess_fairness(spec, model_uri, test_uri, MOST_PROBABLE, tmp_path / "fair")
    a = out["report"]["attributes"]["region"]
    assert a["selection_rate_difference"] < 0.1 and a["macro_recall_difference"] < 0.1
    assert [r["status"] for r in out["gates"]] == [PASSED, PASSED]
    raise_for_gate(out["gates"])


def test_multiclass_decisions_follow_the_rule(tmp_path):
    # A value matrix under which "high" is always worth most: every row of every group is decided "high".
    spec, model_uri, test_uri = _trained(tmp_path, "multiclass", planted=True, **MULTI_BOUNDS)
    always_high = {"value_matrix": [[0, 0, 1], [0, 0, 1], [0, 0, 1]]}
    out = assess_fairness(spec, model_uri, test_uri, always_high, tmp_path / "fair")
    a = out["report"]["attributes"]["region"]
    assert {g: r["selection_rate"] for g, r in a["by_group"].items()} == {
        g: {"low": 0.0, "mid": 0.0, "high": 1.0} for g in ("a", "b")
    }
    assert a["selection_rate_difference"] == 0.0
    assert "value_matrix" in out["report"]["decision"]


# ------------------------------------------------------------------------- regression end to end
def test_regression_planted_disparity_fails_with_the_metrics_named(tmp_path):
    spec, model_uri, test_uri = _trained(tmp_path, "regression", planted=True, **REG_BOUNDS)
    out = assess_fairness(spec, model_uri, test_uri, {"offset": 0.0}, tmp_path / "fair")
    report = out["report"]
    assert report["task"] == "regression" and "prediction" in report["compared"]
    a = report["attributes"]["region"]
    # The model of x alone splits the 5-unit gap: "a" over-predicted, "b" under-predicted.
    assert a["by_group"]["a"]["mean_residual"] > 2 and a["by_group"]["b"]["mean_residual"] < -2
    results = {r["metric"]: r for r in out["gates"]}
    assert list(results) == ["mae_difference[region]", "mean_residual_difference[region]"]
    mae, res = results.values()
    assert mae["status"] == FAILED and mae["value"] == a["mae_difference"] > 1.0
    assert res["status"] == FAILED and res["value"] == a["mean_residual_difference"] == pytest.approx(
        5, abs=0.5
    )
    with pytest.raises(
        GateFailed, match=r"fairness: mean_residual_difference\[region\] = \d\.\d{4}, required <= 1\.0"
    ):
        raise_for_gate(out["gates"])
    assert (tmp_path / "fair" / "fairness_region.png").read_bytes()[:4] == b"\x89PNG"

    # The model's prediction is compared, not the rule's decision: an offset changes nothing.
    shifted = assess_fairness(spec, model_uri, test_uri, {"offset": 100.0}, tmp_path / "shifted")
    assert shifted["report"] == report and shifted["gates"][0]["value"] == mae["value"]


def test_regression_fair_model_passes(tmp_path):
    spec, model_uri, test_uri = _trained(tmp_path, "regression", planted=False, **REG_BOUNDS)
    out = assess_fairness(spec, model_uri, test_uri, {"offset": 0.0}, tmp_path / "fair")
    a = out["report"]["attributes"]["region"]
    assert a["mae_difference"] < 0.2 and a["mean_residual_difference"] < 0.2
    assert [r["status"] for r in out["gates"]] == [PASSED, PASSED]


def test_regression_bound_not_set_is_not_applicable_never_passed(tmp_path):
    spec, model_uri, test_uri = _trained(tmp_path, "regression", planted=True, max_mae_difference=1.0)
    out = assess_fairness(spec, model_uri, test_uri, {"offset": 0.0}, tmp_path / "fair")
    mae, res = out["gates"]
    assert mae["metric"] == "mae_difference[region]" and mae["status"] == FAILED
    assert res["metric"] == "mean_residual_difference[region]" and res["status"] == NOT_APPLICABLE
    assert res["note"].startswith("gates.fairness.max_mean_residual_difference is not set: ")
    measured = out["report"]["attributes"]["region"]["mean_residual_difference"]
    assert f"measured {measured:g}" in res["note"] and res["value"] is None
    assert res["evidence_uri"].endswith("/fair/fairness.json")

    # Neither bound set: nothing judged, nothing passed; the spec's reason is carried.
    because = "amounts are not compared between regions in this pilot"
    rep = out["report"]
    results = fairness_gate(rep, FairnessGate(not_applicable_because=because))
    assert [r["status"] for r in results] == [NOT_APPLICABLE, NOT_APPLICABLE]
    assert results[0]["note"] == f"gates.fairness.max_mae_difference is not set: {because}"
    assert status_of(results) == NOT_APPLICABLE


# ------------------------------------------------------------------------- input errors and binary
def test_mitigation_is_binary_only(tmp_path):
    spec, model_uri, test_uri = _trained(tmp_path, "regression", planted=False, **REG_BOUNDS)
    # The spec refuses this; a copy made in code does not go through validation.
    fairness = spec.gates.fairness.model_copy(update={"mitigation": "threshold_optimizer"})
    bad = spec.model_copy(update={"gates": spec.gates.model_copy(update={"fairness": fairness})})
    with pytest.raises(FairnessInputError, match=r"task binary only.*task is regression.*mitigation: none"):
        assess_fairness(bad, model_uri, test_uri, {"offset": 0.0}, tmp_path / "fair")
    with pytest.raises(ValueError, match="mitigation applies to task binary"):
        PipelineSpec.model_validate(
            {
                **spec.model_dump(exclude_unset=True),
                "gates": {"fairness": {"mitigation": "threshold_optimizer"}},
            }
        )


def test_binary_rule_threshold_gives_the_same_decisions_as_before(tmp_path, telco_spec, telco_trained):
    from include.frames import read_parquet
    from include.model_files import read_model

    test = read_parquet(telco_trained["splits"]["test"])
    proba = read_model(telco_trained["model_uri"]).predict_proba(feature_frame(test, telco_spec))[:, 1]
    expected = fairness_report(
        labels(test, telco_spec), (proba >= 0.37).astype("int64"), test[telco_spec.sensitive_attributes]
    )
    out = assess_fairness(
        telco_spec, telco_trained["model_uri"], telco_trained["splits"]["test"], {"threshold": 0.37}, tmp_path
    )
    assert out["report"] == expected and out["threshold"] == 0.37
    with pytest.raises(FairnessInputError, match=r"rule must be the decision rule dict.*got 0\.37"):
        assess_fairness(
            telco_spec, telco_trained["model_uri"], telco_trained["splits"]["test"], 0.37, tmp_path
        )  # type: ignore[arg-type]


def test_a_group_below_min_group_rows_is_reported_but_left_out_of_the_gaps():
    import numpy as np
    import pandas as pd

    from include.tasks.train.fairness import fairness_report

    # two large groups predicted alike, and a group of 4 whose residuals are huge by chance
    y = np.r_[np.full(100, 10.0), np.full(100, 10.0), np.full(4, 10.0)]
    p = np.r_[np.full(100, 11.0), np.full(100, 9.0), np.full(4, 40.0)]
    groups = pd.DataFrame({"g": ["a"] * 100 + ["b"] * 100 + ["c"] * 4})
    every = fairness_report(y, p, groups, "regression")["attributes"]["g"]
    assert every["mean_residual_difference"] == pytest.approx(31.0)
    kept = fairness_report(y, p, groups, "regression", min_group_rows=30)["attributes"]["g"]
    assert kept["mean_residual_difference"] == pytest.approx(2.0) and kept["mae_difference"] == pytest.approx(
        0.0
    )
    assert kept["excluded_groups"] == {"c": 4} and kept["by_group"]["c"]["count"] == 4
    assert "fewer than 30 test rows" in kept["notes"]["excluded_groups"]
