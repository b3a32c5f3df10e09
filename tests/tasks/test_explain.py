"""Explain: the right SHAP explainer per model, importance per original column, and the gate."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from include import storage
from include.spec import ExplainabilityGate, PipelineSpec, load_spec
from include.tasks.explain import (
    IMPORTANCE_FILE,
    IMPORTANCE_PLOT,
    SUMMARY_PLOT,
    ExplainError,
    aggregate_importance,
    choose_explainer,
    explain_model,
    explain_pipeline,
    explainability_gate,
    feature_origins,
)
from include.tasks.gates import GateFailed, raise_for_gate
from include.tasks.ingest import conform_batch, to_parquet_bytes
from include.tasks.train import build_pipeline, feature_frame, labels, train_model

SPEC_FILE = Path(__file__).resolve().parents[2] / "include" / "pipelines" / "telco_churn.yaml"


def _with(spec: PipelineSpec, **changes) -> PipelineSpec:
    """A re-validated copy of ``spec``: ``changes`` are dotted paths, e.g. ``{"estimator.kind": ...}``."""
    raw = spec.model_dump()
    for path, value in changes.items():
        *parents, leaf = path.split(".")
        node = raw
        for p in parents:
            node = node[p]
        node[leaf] = value
    return PipelineSpec.model_validate(raw)


# --- choosing the explainer -------------------------------------------------------------------


def test_explainer_follows_the_model_type():
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC
    from sklearn.tree import DecisionTreeClassifier

    assert choose_explainer(LogisticRegression()) == "linear"
    assert choose_explainer(GradientBoostingClassifier()) == "tree"
    assert choose_explainer(RandomForestClassifier()) == "tree"
    assert choose_explainer(DecisionTreeClassifier()) == "tree"
    assert choose_explainer(SVC(probability=True)) == "permutation"
    assert choose_explainer(KNeighborsClassifier()) == "permutation"
    # A Pipeline is judged by its final estimator.
    assert choose_explainer(make_pipeline(StandardScaler(), LogisticRegression())) == "linear"


# --- the gate ---------------------------------------------------------------------------------

IMPORTANCE = {"tenure": 1.0, "contract": 0.7, "internet_service": 0.6, "senior_citizen": 0.4, "partner": 0.0}


def test_gate_passes_when_forbidden_features_are_outside_top_k():
    gate = ExplainabilityGate(top_k=3, forbidden_features=["senior_citizen", "partner", "customer_id"])
    results = explainability_gate(IMPORTANCE, gate, evidence_uri="file:///e/shap_importance.json")
    assert [r["metric"] for r in results] == ["rank[senior_citizen]", "rank[partner]", "rank[customer_id]"]
    assert all(r["passed"] and r["gate"] == "explainability" for r in results)
    assert all(r["threshold"] == 4 and r["comparison"] == ">=" for r in results)
    assert results[0]["value"] == 4  # ranked fourth
    assert "zero SHAP importance" in results[1]["note"]
    assert "not a model input" in results[2]["note"]
    assert results[0]["evidence_uri"] == "file:///e/shap_importance.json"
    raise_for_gate(results)  # nothing failed: no exception


def test_gate_fails_naming_the_feature_inside_top_k():
    gate = ExplainabilityGate(top_k=5, forbidden_features=["senior_citizen", "customer_id"])
    results = explainability_gate(IMPORTANCE, gate)
    assert [r["passed"] for r in results] == [False, True]
    with pytest.raises(GateFailed) as err:
        raise_for_gate(results)
    assert "rank[senior_citizen]" in str(err.value) and "top 5" in str(err.value)
    assert "customer_id" not in str(err.value)


def test_absent_feature_passes_even_when_top_k_exceeds_the_feature_count():
    # len(importance) + 1 alone would be 6 here, inside a top-10: the rank must clear top_k.
    gate = ExplainabilityGate(top_k=10, forbidden_features=["customer_id"])
    assert explainability_gate(IMPORTANCE, gate)[0]["passed"]


def test_no_forbidden_features_no_checks():
    assert explainability_gate(IMPORTANCE, ExplainabilityGate(forbidden_features=[])) == []


# --- mapping transformed features back to columns ------------------------------------------------


def _tiny_spec(kind: str = "logistic_regression", **params) -> PipelineSpec:
    return PipelineSpec.model_validate(
        {
            "name": "tiny",
            "description": "synthetic",
            "target": {"column": "y", "positive_label": 1},
            "features": {
                "numeric": ["x0", "x1", "x2"],
                "binary": ["flag"],
                "categorical": ["plan", "plan_type"],
            },
            "estimator": {"kind": kind, "params": params},
        }
    )


def _tiny_frame(n: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "x0": rng.normal(size=n),
            "x1": rng.normal(size=n),
            "x2": rng.normal(size=n),
            "flag": rng.integers(0, 2, n),
            # "plan" is a prefix of "plan_type", and a category contains "_type_": string
            # splitting of "cat__plan_type_a" would be ambiguous.
            "plan": rng.choice(["basic", "type_a", "pro plus"], n),
            "plan_type": rng.choice(["a", "b"], n),
        }
    )
    df["y"] = (df["x1"] > 0).astype(int)  # the label depends on x1 alone
    return df


def test_one_hot_columns_map_to_their_column_by_categories():
    spec = _tiny_spec()
    df = _tiny_frame(60)
    pipe = build_pipeline(spec).fit(feature_frame(df, spec), labels(df, spec))
    pairs = feature_origins(pipe.named_steps["preprocess"])
    origins = dict(pairs)
    assert len(origins) == len(pairs)  # names are unique, so no importance is overwritten
    assert origins["num__x1"] == "x1" and origins["num__flag"] == "flag"
    # scikit-learn names category "type_a" of "plan" and category "a" of "plan_type" alike.
    assert origins["cat__plan_type_a [plan]"] == "plan"
    assert origins["cat__plan_type_a [plan_type]"] == "plan_type"
    assert origins["cat__plan_type_b"] == "plan_type"
    assert origins["cat__plan_pro plus"] == "plan"
    assert [col for _, col in pairs].count("plan") == 3
    assert set(origins.values()) == set(spec.features.all)


@pytest.mark.parametrize(
    ("kind", "params", "explainer"),
    [
        ("logistic_regression", {}, "linear"),
        ("decision_tree", {"max_depth": 3}, "tree"),
    ],
)
def test_the_only_informative_feature_ranks_first(kind, params, explainer):
    spec = _tiny_spec(kind, **params)
    df = _tiny_frame()
    pipe = build_pipeline(spec).fit(feature_frame(df, spec), labels(df, spec))
    X = feature_frame(df, spec)
    out = explain_pipeline(pipe, X.iloc[:100], X.iloc[100:200], seed=1)
    transformed, original = aggregate_importance(out["values"], out["features"])
    assert out["explainer"] == explainer
    assert next(iter(original)) == "x1" and next(iter(transformed)) == "num__x1"
    assert original["x1"] > 5 * max(v for k, v in original.items() if k != "x1")
    assert set(original) == set(spec.features.all)


def test_model_agnostic_explainer_uses_the_positive_class_probability():
    from sklearn.naive_bayes import GaussianNB

    spec = _tiny_spec()
    df = _tiny_frame(200)
    pipe = build_pipeline(spec)
    pipe.steps[-1] = ("model", GaussianNB())
    X = feature_frame(df, spec)
    pipe.fit(X, labels(df, spec))
    out = explain_pipeline(pipe, X.iloc[:40], X.iloc[100:130], seed=1)
    assert out["explainer"] == "permutation" and out["output"] == "probability"
    assert out["values"].shape == (30, len(out["features"]))
    # Efficiency: base value + SHAP values = the positive-class probability of each row.
    proba = pipe.predict_proba(X.iloc[100:130])[:, 1]
    np.testing.assert_allclose(out["base_values"] + out["values"].sum(axis=1), proba, atol=1e-6)
    _, original = aggregate_importance(out["values"], out["features"])
    assert next(iter(original)) == "x1"


def test_a_model_shap_cannot_explain_is_named_with_the_fix():
    from sklearn.svm import SVC

    spec = _tiny_spec()
    df = _tiny_frame(80)
    pipe = build_pipeline(spec)
    pipe.steps[-1] = ("model", SVC())  # no predict_proba
    X = feature_frame(df, spec)
    pipe.fit(X, labels(df, spec))
    with pytest.raises(ExplainError, match=r"SVC .*no predict_proba.*estimator kinds"):
        explain_pipeline(pipe, X.iloc[:20], X.iloc[20:40])


def test_a_multiclass_model_is_refused_with_a_reason():
    from sklearn.linear_model import LogisticRegression

    spec = _tiny_spec()
    df = _tiny_frame(90)
    pipe = build_pipeline(spec)
    pipe.steps[-1] = ("model", LogisticRegression())
    X = feature_frame(df, spec)
    pipe.fit(X, np.arange(len(X)) % 3)
    with pytest.raises(ExplainError, match=r"LogisticRegression has 3 classes.*binary classifiers"):
        explain_pipeline(pipe, X.iloc[:20], X.iloc[20:40])


# --- end to end on the telco data ------------------------------------------------------------------


@pytest.fixture(scope="module")
def telco():
    return load_spec(SPEC_FILE)


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory, telco):
    from include.demo_data import load_wa_churn

    raw = load_wa_churn().iloc[:1500].astype(str).replace({"nan": None})
    df = conform_batch(raw, telco, "mem://", "2025-01", b"k")
    path = tmp_path_factory.mktemp("explain") / "snap.parquet"
    return storage.write_bytes(storage.path_to_uri(path), to_parquet_bytes(df))


def _train_and_explain(spec: PipelineSpec, snapshot: str, root: Path) -> tuple[dict, dict]:
    trained = train_model(spec, snapshot, storage.path_to_uri(root / "run"))
    splits = trained["splits"]
    result = explain_model(spec, trained["model_uri"], splits["train"], splits["test"], root / "explain")
    record = json.loads((root / "explain" / IMPORTANCE_FILE).read_text())
    return result, record


@pytest.mark.parametrize(
    ("kind", "params", "explainer"),
    [
        ("logistic_regression", {"C": 1.0, "max_iter": 2000}, "linear"),
        ("gradient_boosting", {"n_estimators": 20, "max_depth": 2}, "tree"),
    ],
)
def test_explain_model_end_to_end(tmp_path, snapshot, telco, kind, params, explainer):
    spec = _with(telco, **{"estimator.kind": kind, "estimator.params": params})
    result, record = _train_and_explain(spec, snapshot, tmp_path)

    assert result["explainer"] == record["explainer"] == explainer
    assert record["output"] == "log_odds"
    for name in (IMPORTANCE_FILE, SUMMARY_PLOT, IMPORTANCE_PLOT):
        assert (tmp_path / "explain" / name).stat().st_size > 0
    assert sorted(result["artifacts"]) == sorted(
        str(tmp_path / "explain" / n) for n in (IMPORTANCE_FILE, SUMMARY_PLOT, IMPORTANCE_PLOT)
    )
    # Importance is per input column, sorted, and the one-hot columns are reported separately.
    imp = result["global_importance"]
    assert set(imp) == set(spec.features.all)
    assert list(imp.values()) == sorted(imp.values(), reverse=True)
    assert result["top_k"] == list(imp)[: spec.gates.explainability.top_k]
    assert any(k.startswith("cat__contract_") for k in record["transformed_importance"])
    contract = sum(v for k, v in record["transformed_importance"].items() if k.startswith("cat__contract_"))
    assert imp["contract"] == pytest.approx(contract, abs=1e-5)
    assert record["sample_size"] <= 300 and 0 < record["background_size"] <= 300
    # Local explanations add up to the model's prediction (log-odds of the positive class).
    assert 3 <= len(record["local"]) <= 5
    for row in record["local"]:
        assert len(row["top_contributions"]) == 5
        assert {c["feature"] for c in row["top_contributions"]} <= set(spec.features.all)
        assert row["output_value"] == pytest.approx(
            math.log(row["prediction"] / (1 - row["prediction"])), abs=1e-3
        )
    assert result["seconds"] < 20


def test_a_leaked_sensitive_attribute_fails_the_gate(tmp_path, snapshot, telco):
    # A spec change brings senior_citizen back in as a feature: SHAP sees it, the gate names it.
    binary = [*telco.features.binary, "senior_citizen"]
    n_features = len(telco.features.all) + 1
    spec = _with(telco, **{"features.binary": binary, "gates.explainability.top_k": n_features})
    result, _ = _train_and_explain(spec, snapshot, tmp_path)
    assert "senior_citizen" in result["global_importance"]

    results = explainability_gate(result["global_importance"], spec.gates.explainability)
    failed = [r for r in results if not r["passed"]]
    assert [r["metric"] for r in failed] == ["rank[senior_citizen]"]
    with pytest.raises(GateFailed, match=r"rank\[senior_citizen\]"):
        raise_for_gate(results)
    # The same model passes a top-3 gate, as long as senior_citizen is not among the 3 most important.
    rank = list(result["global_importance"]).index("senior_citizen") + 1
    assert rank > 3
    assert all(
        r["passed"]
        for r in explainability_gate(
            result["global_importance"], ExplainabilityGate(top_k=3, forbidden_features=["senior_citizen"])
        )
    )
