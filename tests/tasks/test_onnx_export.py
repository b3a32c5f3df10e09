"""ONNX export: parity measured on real rows, typed per-column inputs, quantisation decided, failures gated."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError

from include import storage
from include.spec import OnnxGate, load_spec
from include.tasks.gates import GateFailed, raise_for_gate
from include.tasks.ingest import read_parquet
from include.tasks.onnx_export import (
    ConversionError,
    _session,
    convert,
    export_and_check,
    latency,
    onnx_gate,
    onnx_inputs,
    predict_proba_onnx,
    quantise_if_useful,
)
from include.tasks.train import build_pipeline, feature_frame, labels, read_model, save_model, train_model
from tests.conftest import PROJECT_ROOT, make_snapshot

# Fewer timed calls than production: latency is only recorded here, never asserted.
FAST = {"onnx_calls": 50, "sklearn_calls": 10}


def _spec(kind: str, **params):
    spec = load_spec(PROJECT_ROOT / "include" / "pipelines" / "telco_churn.yaml")
    if kind == spec.estimator.kind:
        return spec
    return spec.model_copy(
        update={"estimator": spec.estimator.model_copy(update={"kind": kind, "params": params})}
    )


@pytest.fixture(scope="module")
def snapshot_uri(tmp_path_factory, wa_churn):
    spec = _spec("logistic_regression")
    return make_snapshot(wa_churn.iloc[:1500], spec, tmp_path_factory.mktemp("onnx") / "snap.parquet")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, snapshot_uri):
    """Train LR and GB on the sample and export each once; tests read the results."""
    out = {}
    for kind in ("logistic_regression", "gradient_boosting"):
        spec = _spec(kind)
        base = tmp_path_factory.mktemp(kind)
        trained = train_model(spec, snapshot_uri, storage.path_to_uri(base / "run"))
        result = export_and_check(
            spec, trained["model_uri"], trained["splits"]["test"], base / "onnx", **FAST
        )
        out[kind] = {"spec": spec, "trained": trained, "result": result, "dir": base / "onnx"}
    return out


@pytest.mark.parametrize("kind", ["logistic_regression", "gradient_boosting"])
def test_parity_on_the_full_test_split(exported, kind):
    ex = exported[kind]
    res, spec = ex["result"], ex["spec"]
    assert res["converted"] is True
    assert res["rows"] == ex["trained"]["rows"]["test"] == 300
    assert res["max_abs_diff"] <= 1e-4
    assert res["label_agreement"] >= 0.999
    # Re-measure from the written artifact: the reported numbers describe the deployable file.
    model = read_model(ex["trained"]["model_uri"])
    X = feature_frame(read_parquet(ex["trained"]["splits"]["test"]), spec)
    with open(res["onnx_path"], "rb") as fh:
        p_onnx = predict_proba_onnx(_session(fh.read()), spec, X)
    p_skl = model.predict_proba(X)[:, 1]
    assert np.max(np.abs(p_onnx - p_skl)) == pytest.approx(res["max_abs_diff"], abs=1e-12)
    assert np.mean((p_onnx >= 0.5) == (p_skl >= 0.5)) >= 0.999
    # Every parity check passes; latency is on record with its threshold, whatever the machine load.
    gates = {g["metric"]: g for g in onnx_gate(res, spec.gates.onnx)}
    assert all(gates[m]["passed"] for m in ("converted", "max_abs_diff", "label_agreement"))
    assert gates["p99_latency_ms"]["value"] == round(res["latency_ms"]["onnx"]["p99"], 6)
    assert gates["p99_latency_ms"]["threshold"] == spec.gates.onnx.max_p99_latency_ms


@pytest.mark.parametrize("kind", ["logistic_regression", "gradient_boosting"])
def test_one_typed_input_per_feature_column(exported, kind):
    import onnx

    ex = exported[kind]
    spec = ex["spec"]
    graph = onnx.load(ex["result"]["onnx_path"]).graph
    assert [i.name for i in graph.input] == spec.features.all
    numeric = {*spec.features.numeric, *spec.features.binary}
    for inp in graph.input:
        want = onnx.TensorProto.FLOAT if inp.name in numeric else onnx.TensorProto.STRING
        assert inp.type.tensor_type.elem_type == want, inp.name
        assert inp.type.tensor_type.shape.dim[1].dim_value == 1
    assert ex["result"]["inputs"] == [
        {"name": c, "type": "tensor(float)" if c in numeric else "tensor(string)"} for c in spec.features.all
    ]
    # Probabilities come out as a tensor, not a ZipMap sequence.
    assert [o.name for o in graph.output] == ["label", "probabilities"]


@pytest.mark.parametrize(
    ("kind", "operator"),
    [("logistic_regression", "LinearClassifier"), ("gradient_boosting", "TreeEnsembleClassifier")],
)
def test_quantisation_is_recorded_as_not_applicable(exported, kind, operator):
    ex = exported[kind]
    q = ex["result"]["quantisation"]
    assert q["applies"] is False and q["kept"] is False
    assert "only ai.onnx.ml operators" in q["reason"] and operator in q["reason"]
    assert "MatMul/Gemm" in q["reason"]
    entry = onnx_gate(ex["result"], ex["spec"].gates.onnx)[-1]
    assert entry["metric"] == "quantisation_kept" and entry["passed"] and entry["applies"] is False
    assert entry["note"] == q["reason"]


def test_report_is_written_next_to_the_model(exported):
    ex = exported["gradient_boosting"]
    report = json.loads((ex["dir"] / "onnx_report.json").read_text())
    assert report["max_abs_diff"] == ex["result"]["max_abs_diff"]
    assert report["quantisation"]["reason"] == ex["result"]["quantisation"]["reason"]
    assert report["versions"]["skl2onnx"] and report["opset"]["ai.onnx.ml"] >= 1
    assert "ORT_ENABLE_ALL" in ex["result"]["optimisation"]
    assert (ex["dir"] / "model.onnx").stat().st_size > 0
    json.dumps(ex["result"])  # the result goes through XCom and into the blessing record


def test_impossibly_tight_thresholds_fail_the_gate(exported):
    res = exported["gradient_boosting"]["result"]
    assert res["max_abs_diff"] > 1e-12  # float32 trees: measured, not zero
    gates = {g["metric"]: g for g in onnx_gate(res, OnnxGate(max_abs_diff=1e-12, max_p99_latency_ms=1e-9))}
    assert not gates["max_abs_diff"]["passed"]
    assert f"{res['max_abs_diff']:.3g}" in gates["max_abs_diff"]["note"]  # exact figure despite rounding
    assert not gates["p99_latency_ms"]["passed"]
    assert gates["label_agreement"]["passed"]
    with pytest.raises(GateFailed, match="max_abs_diff"):
        raise_for_gate(list(gates.values()))
    # An agreement above 1 could never pass: the spec refuses it instead.
    with pytest.raises(ValidationError, match="min_label_agreement"):
        OnnxGate(min_label_agreement=1.1)
    # The strictest allowed floor passes only with perfect agreement.
    strict = {g["metric"]: g for g in onnx_gate(res, OnnxGate(min_label_agreement=1.0))}
    assert strict["label_agreement"]["passed"] == (res["label_agreement"] == 1.0)


def test_unconvertible_estimator_fails_the_gate_with_the_reason(tmp_path, snapshot_uri, exported):
    from sklearn.ensemble import HistGradientBoostingClassifier

    spec = _spec("gradient_boosting")
    df = read_parquet(snapshot_uri)
    pipe = build_pipeline(spec)
    pipe.steps[-1] = ("model", HistGradientBoostingClassifier(max_iter=5, random_state=0))
    pipe.fit(feature_frame(df, spec), labels(df, spec))
    model_uri = storage.write_bytes(storage.path_to_uri(tmp_path / "hgb.skops"), save_model(pipe))
    test_uri = exported["gradient_boosting"]["trained"]["splits"]["test"]

    res = export_and_check(spec, model_uri, test_uri, tmp_path / "onnx", **FAST)
    assert res["converted"] is False
    assert "HistGradientBoostingClassifier" in res["error"]
    assert not (tmp_path / "onnx" / "model.onnx").exists()
    assert json.loads((tmp_path / "onnx" / "onnx_report.json").read_text())["converted"] is False

    gates = onnx_gate(res, spec.gates.onnx, "file:///evidence/onnx_report.json")
    converted = next(g for g in gates if g["metric"] == "converted")
    assert converted["passed"] is False and converted["value"] == 0 and converted["threshold"] == 1
    assert converted["note"] == res["error"]
    assert all(g["evidence_uri"] == "file:///evidence/onnx_report.json" for g in gates)
    with pytest.raises(GateFailed, match="HistGradientBoostingClassifier"):
        raise_for_gate(gates)


def test_custom_estimator_raises_conversion_error_naming_it(snapshot_uri):
    from sklearn.base import BaseEstimator, ClassifierMixin

    class ConstantChurn(ClassifierMixin, BaseEstimator):
        def fit(self, X, y):
            self.classes_ = np.array([0, 1])
            return self

        def predict_proba(self, X):
            return np.tile([0.7, 0.3], (len(X), 1))

    spec = _spec("logistic_regression")
    df = read_parquet(snapshot_uri)
    pipe = build_pipeline(spec)
    pipe.steps[-1] = ("model", ConstantChurn())
    pipe.fit(feature_frame(df, spec), labels(df, spec))
    with pytest.raises(ConversionError, match="ConstantChurn") as err:
        convert(spec, pipe)
    assert "shape calculator" in str(err.value)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # a small MLP is enough
def test_quantisation_applies_to_matmul_graphs_and_is_refused_outside_parity(snapshot_uri):
    from sklearn.neural_network import MLPClassifier

    spec = _spec("logistic_regression")
    df = read_parquet(snapshot_uri)
    X, y = feature_frame(df, spec), labels(df, spec)
    pipe = build_pipeline(spec)
    pipe.steps[-1] = ("model", MLPClassifier(hidden_layer_sizes=(16,), max_iter=300, random_state=0))
    pipe.fit(X, y)
    onnx_bytes = convert(spec, pipe)
    ref = pipe.predict_proba(X)[:, 1]
    q = quantise_if_useful(onnx_bytes, spec, X, ref, OnnxGate(max_abs_diff=1e-12))
    assert q["applies"] is True and q["quantised_operators"] == ["MatMul"]
    assert q["max_abs_diff"] > 1e-12  # int8 weights: measured difference
    assert q["kept"] is False and "leaves parity" in q["reason"] and "model_bytes" not in q


def test_onnx_inputs_shapes_and_types(snapshot_uri):
    spec = _spec("logistic_regression")
    X = feature_frame(read_parquet(snapshot_uri).iloc[:3], spec)
    X.loc[0, "total_charges"] = np.nan
    feeds = onnx_inputs(spec, X)
    assert list(feeds) == spec.features.all
    assert all(v.shape == (3, 1) for v in feeds.values())
    assert feeds["tenure"].dtype == np.float32 and np.isnan(feeds["total_charges"][0, 0])
    assert feeds["contract"].dtype == object and isinstance(feeds["contract"][0, 0], str)


def test_latency_excludes_warmup_and_reports_percentiles():
    calls = []
    out = latency(calls.append, list(range(30)), 100)
    assert len(calls) == 20 + 100 and out["calls"] == 100 and out["warmup_calls"] == 20
    assert calls[20:50] == list(range(30))  # timed calls cycle through different rows
    assert 0 <= out["p50"] <= out["p99"]
    with pytest.raises(ValueError):
        latency(calls.append, [], 10)
