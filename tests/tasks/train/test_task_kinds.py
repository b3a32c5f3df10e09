"""Every task kind through the training stages: the spec's rules, labels, metrics, decisions, gates."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from include import storage
from include.frames import labels
from include.spec import SpecError, load_spec, parse_spec
from include.tasks.train.ingest import BatchError
from tests.support.snapshots import conformed, make_snapshot

PIPELINES = ("job_runtime", "salary_benchmark")


@pytest.fixture
def runtime_spec(project_root):
    return load_spec(project_root / "include" / "pipelines" / "job_runtime.yaml")


@pytest.fixture
def salary_spec(project_root):
    return load_spec(project_root / "include" / "pipelines" / "salary_benchmark.yaml")


def _yaml(project_root, name: str) -> str:
    return (project_root / "include" / "pipelines" / f"{name}.yaml").read_text()


# ----------------------------------------------------------------------------- the spec
@pytest.mark.parametrize(
    ("name", "old", "new", "expected"),
    [
        # a regressor under the wrong task, and a classifier under regression
        ("telco_churn", "kind: logistic_regression", "kind: ridge", "estimator.kind 'ridge' is a regressor"),
        ("salary_benchmark", "kind: hist_gradient_boosting", "kind: logistic_regression", "is a classifier"),
        # the target per task
        ("job_runtime", "  classes: [VF, F, M, L]\n", "", "target.classes is required for task multiclass"),
        ("job_runtime", "classes: [VF, F, M, L]", "classes: [VF, L]", "needs at least 3"),
        (
            "salary_benchmark",
            "range: [0, 1000]",
            'positive_label: "x"',
            "target.positive_label applies to task binary",
        ),
        ("telco_churn", 'positive_label: "Yes"', "classes: [a, b, c]", "target.positive_label is required"),
        ("salary_benchmark", "range: [0, 1000]", "range: [10, 5]", "low < high"),
        # metrics, bounds and value models of another task
        (
            "salary_benchmark",
            "min_r2: 0.25",
            "min_roc_auc: 0.7",
            "gates.evaluation.min_roc_auc applies to task binary",
        ),
        (
            "job_runtime",
            "min_macro_f1: 0.5",
            "max_mae: 3",
            "gates.evaluation.max_mae applies to task regression",
        ),
        (
            "salary_benchmark",
            "{rmse: 0.03, mae: 0.03}",
            "{roc_auc: 0.01}",
            "max_regression names ['roc_auc']",
        ),
        (
            "job_runtime",
            "unit: node-hours",
            "unit: node-hours\n  cost_of_action: 5",
            "business.cost_of_action applies",
        ),
        ("job_runtime", "VF: {VF: 1,", "XL: {VF: 1,", "business.value_matrix names ['XL']"),
        ("salary_benchmark", "    max_mae_difference: 8\n", "", "set gates.fairness.max_mae_difference"),
        (
            "salary_benchmark",
            "    tolerance: {kind: relative, delta: 0.1}",
            "",
            "gates.robustness.tolerance",
        ),
        (
            "salary_benchmark",
            "task: regression",
            "task: regression\nclass_imbalance: none",
            "class_imbalance applies",
        ),
    ],
)
def test_a_spec_that_contradicts_its_task_is_refused_with_the_fix(
    tmp_path, project_root, name, old, new, expected
):
    text = _yaml(project_root, name)
    assert old in text
    with pytest.raises(SpecError) as err:
        parse_spec(text.replace(old, new, 1), f"{name}.yaml")
    assert expected in str(err.value)


def test_the_shipped_specs_of_each_task_load(runtime_spec, salary_spec):
    assert runtime_spec.task == "multiclass" and runtime_spec.target.classes == ["VF", "F", "M", "L"]
    assert runtime_spec.estimator_path == "sklearn.ensemble.HistGradientBoostingClassifier"
    assert salary_spec.task == "regression" and salary_spec.estimator_path.endswith(
        "HistGradientBoostingRegressor"
    )
    assert not salary_spec.balanced  # a number has no classes to weight


# ----------------------------------------------------------------------------- ingest and labels
def test_ingest_refuses_another_class_with_counts(runtime_spec):
    from include.demo.data import load_hpc_jobs

    raw = load_hpc_jobs().iloc[:50].copy()
    raw.loc[raw.index[:3], "class"] = "XL"
    with pytest.raises(BatchError) as err:
        conformed(raw, runtime_spec, "2025-01")
    assert "outside target.classes ['VF', 'F', 'M', 'L'] ('XL': 3 rows)" in str(err.value)


def test_ingest_refuses_a_non_numeric_or_out_of_range_regression_target(salary_spec):
    from include.demo.data import load_wages

    raw = load_wages().iloc[:50].copy().astype(object)
    raw.loc[raw.index[0], "wage"] = "n/a"
    with pytest.raises(BatchError, match="target 'wage' must be a number, got \\['n/a'\\] in 1 rows"):
        conformed(raw, salary_spec, "2025-01")
    raw.loc[raw.index[0], "wage"] = 5000
    with pytest.raises(BatchError, match=r"must lie in target.range \[0, 1000\], got 1 rows outside"):
        conformed(raw, salary_spec, "2025-01")


def test_labels_per_task(runtime_spec, salary_spec):
    df = pd.DataFrame({"class": ["L", "VF", "M"], "wage": ["10.5", "20", "3"]})
    assert labels(df, runtime_spec).tolist() == [3, 0, 2]
    assert labels(df, salary_spec).tolist() == [10.5, 20.0, 3.0]
    with pytest.raises(ValueError, match="not in target.classes"):
        labels(pd.DataFrame({"class": ["Z"]}), runtime_spec)


# ----------------------------------------------------------------------------- metrics and decisions
def test_multiclass_metrics_and_the_value_matrix_decision(runtime_spec):
    from include.problem import decide, default_rule
    from include.tasks.business import decision_value_per_1000
    from include.tasks.metrics import task_metrics

    proba = np.array([[0.6, 0.3, 0.1, 0.0], [0.1, 0.2, 0.3, 0.4], [0.5, 0.1, 0.1, 0.3]])
    y = np.array([0, 3, 3])
    rule = default_rule(runtime_spec)
    # Expected values under the matrix: row 1 is most likely VF, but F is worth 0.4 against VF's 0.0
    # (a fast job in the very-fast queue costs 1); row 3 is most likely VF, but a long job sent to VF
    # costs 6: decide L.
    assert decide(runtime_spec, proba, rule).tolist() == [1, 3, 3]
    assert decide(runtime_spec, proba, {"value_matrix": None}).tolist() == [0, 3, 0]
    m = task_metrics(runtime_spec, y, proba, rule)
    assert m["recall.L"] == 1.0 and m["recall.VF"] == 0.0 and m["accuracy"] == pytest.approx(2 / 3)
    assert m["log_loss"] == pytest.approx(-(np.log(0.6) + np.log(0.4) + np.log(0.3)) / 3)
    # value: truth VF decided F (0.5), truth L decided L (1) twice
    assert decision_value_per_1000(runtime_spec, y, proba, rule) == pytest.approx(2500 / 3)


def test_regression_rule_is_the_cost_optimal_quantile(salary_spec):
    from include.tasks.business import choose_rule, decision_value_per_1000
    from include.tasks.metrics import regression_metrics

    rng = np.random.default_rng(0)
    pred = rng.uniform(50, 150, 4000)
    y = pred + rng.normal(0, 10, 4000)
    chosen = choose_rule(salary_spec, y, pred)
    # under-prediction costs 3, over 1: plan for the 75% quantile of the residuals (~ +6.7 for sd 10)
    assert chosen["rule"]["offset"] == pytest.approx(6.74, abs=0.8)
    assert "75% quantile" in chosen["reason"]
    shifted = decision_value_per_1000(salary_spec, y, pred, chosen["rule"])
    assert shifted > decision_value_per_1000(salary_spec, y, pred, {"offset": 0.0})
    m = regression_metrics(y, pred)
    assert m["mae"] == pytest.approx(np.mean(np.abs(y - pred)))
    assert m["residual_q05"] < 0 < m["residual_q95"]


def test_evaluation_gate_per_task_with_chance_and_mean_floors(runtime_spec, salary_spec):
    from include.tasks.train.evaluate import evaluation_gate

    spec = runtime_spec.model_copy(
        update={
            "gates": runtime_spec.gates.model_copy(
                update={"evaluation": type(runtime_spec.gates.evaluation)()}
            )
        }
    )
    results = evaluation_gate({"balanced_accuracy": 0.24}, spec.gates.evaluation, None, spec=spec)
    assert [(r["metric"], r["threshold"], r["status"]) for r in results] == [
        ("balanced_accuracy", 0.25, "failed")
    ]
    assert "chance" in results[0]["note"]
    results = evaluation_gate(
        {"r2": 0.3, "mae": 30.0, "rmse": 35.0}, salary_spec.gates.evaluation, None, spec=salary_spec
    )
    assert {r["metric"]: r["status"] for r in results} == {"r2": "passed", "mae": "failed", "rmse": "passed"}


# ----------------------------------------------------------------------------- fit, evaluate, champion, robustness
@pytest.fixture
def salary_trained(tmp_path, salary_spec):
    from include.demo.data import load_wages
    from include.tasks.train.fit import train_model
    from tests.support.snapshots import with_estimator

    spec = with_estimator(salary_spec, params={"max_iter": 40, "max_depth": 3})
    snap = make_snapshot(load_wages(), spec, tmp_path / "snap.parquet")
    return spec, train_model(spec, snap, storage.path_to_uri(tmp_path / "out"))


def test_a_regressor_trains_evaluates_and_is_compared_with_its_champion(salary_trained):
    from include.model_files import read_model
    from include.tasks.train.champion import compare_with_champion
    from include.tasks.train.evaluate import evaluate_model

    spec, out = salary_trained
    assert out["estimator"].endswith("HistGradientBoostingRegressor") and out["positive_rate"] is None
    assert 80 < out["target_summary"]["mean"] < 140
    ev = evaluate_model(spec, out["model_uri"], out["splits"]["test"], out["splits"]["validation"])
    assert ev["metrics"]["r2"] > 0.2 and 15 < ev["metrics"]["mae"] < 35
    assert ev["rule"]["offset"] > 0  # under-prediction is dearer: the decision plans above the estimate
    champion = {"version": 1, "model": read_model(out["model_uri"]), "threshold": 0.5, "tags": {}}
    cmp = compare_with_champion(spec, out["model_uri"], out["splits"]["test"], ev["rule"], champion)
    # the same model as champion: nothing regressed; its rule is the default (no offset tag)
    assert {r["metric"]: r["status"] for r in cmp["gates"]} == {
        "mae_increase": "passed",
        "rmse_increase": "passed",
    }
    assert cmp["champion"]["rule"] == {"offset": 0.0}
    assert cmp["candidate"]["value_per_1000"] > cmp["champion"]["value_per_1000"]


def test_regression_robustness_counts_predictions_moved_past_the_tolerance(salary_trained):
    from include.spec import Perturbation
    from include.tasks.train.robustness import check_robustness

    spec, out = salary_trained
    loose = check_robustness(spec, out["model_uri"], out["splits"]["test"], {"offset": 0.0})
    assert loose["tolerance"] == {"kind": "relative", "delta": 0.1} and 0 <= loose["flip_rate"] < 0.2
    tight = spec.model_copy(
        update={
            "gates": spec.gates.model_copy(
                update={
                    "robustness": spec.gates.robustness.model_copy(
                        update={"tolerance": Perturbation(kind="absolute", delta=1e-9)}
                    )
                }
            )
        }
    )
    # any move at all counts now: ageing a year moves many predictions
    assert (
        check_robustness(tight, out["model_uri"], out["splits"]["test"], {"offset": 0.0})["flip_rate"]
        > loose["flip_rate"]
    )


def test_multiclass_training_refuses_a_class_missing_from_the_training_split(tmp_path, runtime_spec):
    from include.demo.data import load_hpc_jobs
    from include.tasks.train.fit import TrainingError, split_frame

    df = conformed(load_hpc_jobs().iloc[:600], runtime_spec, "2025-01")
    df = df[df["class"] != "L"]
    with pytest.raises(TrainingError, match=r"no row of class\(es\) \['L'\]"):
        split_frame(df, runtime_spec)
    # and an untouched frame splits
    split_frame(conformed(load_hpc_jobs().iloc[:1500], runtime_spec, "2025-01"), runtime_spec)


def test_a_regression_target_reaches_the_lake_as_a_number(salary_spec):
    from include.demo.data import load_wages
    from include.spec import post_ingest_schema

    df = conformed(load_wages().iloc[:20], salary_spec, "2025-01")
    assert str(df["wage"].dtype) == "float64" == post_ingest_schema(salary_spec)["wage"]


def test_numeric_class_labels_are_the_batch_text(project_root):
    text = _yaml(project_root, "job_runtime").replace("classes: [VF, F, M, L]", "classes: [1, 2, 3, 4]")
    for old, new in (("VF", "1"), ("F", "2"), ("M", "3"), ("L", "4")):
        text = text.replace(f"{old}: {{", f"{new}: {{").replace(f"{old}: ", f"{new}: ")
    spec = parse_spec(text, "job_runtime.yaml")
    assert spec.target.classes == ["1", "2", "3", "4"] and spec.business.value_matrix["4"]["1"] == -6
    assert labels(pd.DataFrame({"class": [4, "1", 2]}), spec).tolist() == [3, 0, 1]
