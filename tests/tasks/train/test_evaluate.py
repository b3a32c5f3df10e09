"""Evaluate: correct metrics, and a gate whose failure names each failed check."""

from __future__ import annotations

import numpy as np
import pytest

from include import storage
from include.frames import read_parquet, to_parquet_bytes
from include.model_files import ModelIntegrityError, read_model_bytes
from include.spec import EvaluationGate
from include.tasks.gates import GateFailed, raise_for_gate
from include.tasks.train.evaluate import compute_metrics, evaluate_model, evaluation_gate


def test_metrics_on_a_known_case():
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.6, 0.4, 0.9])
    m = compute_metrics(y, p)
    assert m["roc_auc"] == pytest.approx(0.75)
    assert m["precision"] == pytest.approx(0.5) and m["recall"] == pytest.approx(0.5)
    assert m["f1"] == pytest.approx(0.5)
    assert m["brier"] == pytest.approx((0.01 + 0.36 + 0.36 + 0.01) / 4)
    assert m["pr_auc"] == pytest.approx(0.8333, abs=1e-3)
    assert m["rows"] == 4


def test_gate_passes_and_records_every_check():
    metrics = {"roc_auc": 0.84, "pr_auc": 0.63, "f1": 0.61, "brier": 0.17}
    results = evaluation_gate(metrics, EvaluationGate(min_roc_auc=0.8), "runs:/x/blessing/evaluation.json")
    assert {r["metric"] for r in results} == {"roc_auc", "pr_auc", "f1", "brier"}
    assert all(r["status"] == "passed" for r in results)
    assert set(results[0]) >= {"gate", "metric", "threshold", "value", "status", "evidence_uri"}
    raise_for_gate(results)  # no exception


def test_gate_failure_names_metric_value_and_threshold():
    metrics = {"roc_auc": 0.71, "pr_auc": 0.63, "f1": 0.61, "brier": 0.31}
    results = evaluation_gate(metrics, EvaluationGate(min_roc_auc=0.8, max_brier=0.25))
    with pytest.raises(GateFailed) as err:
        raise_for_gate(results)
    msg = str(err.value)
    assert "2 gate check(s) failed" in msg
    assert "roc_auc = 0.7100, required >= 0.8" in msg
    assert "brier = 0.3100, required <= 0.25" in msg
    assert "no alias moved" in msg
    assert [r["metric"] for r in err.value.results if r["status"] == "failed"] == ["roc_auc", "brier"]


def _test_split_with_months(tmp_path, trained, months):
    """The trained test split with ``batch_month`` rewritten row by row from ``months(test)``."""
    test = read_parquet(trained["splits"]["test"])
    test["batch_month"] = months(test)
    return storage.write_bytes(storage.path_to_uri(tmp_path / "test_months.parquet"), to_parquet_bytes(test))


def test_out_of_time_slice_scores_the_latest_month(tmp_path, telco_spec, telco_trained):
    # The last 120 test rows arrived in a later month than the rest.
    uri = _test_split_with_months(
        tmp_path, telco_trained, lambda t: ["2025-01"] * (len(t) - 120) + ["2025-02"] * 120
    )
    out = evaluate_model(telco_spec, telco_trained["model_uri"], uri, telco_trained["splits"]["validation"])
    oot = out["out_of_time"]
    assert oot["month"] == "2025-02" and oot["rows"] == 120 and "note" not in oot
    assert oot["metrics"]["rows"] == 120 and 0 <= oot["metrics"]["roc_auc"] <= 1
    assert oot["metrics"] != out["metrics"]  # a slice, not the whole split again
    assert all(r["metric"] != "out_of_time" for r in evaluation_gate(out["metrics"], EvaluationGate()))


def test_out_of_time_slice_with_one_class_has_a_note_not_metrics(tmp_path, telco_spec, telco_trained):
    def months(t):
        last = (t["churn"] == "No").to_numpy() & (np.arange(len(t)) % 3 == 0)
        return np.where(last, "2025-03", "2025-01")

    uri = _test_split_with_months(tmp_path, telco_trained, months)
    oot = evaluate_model(telco_spec, telco_trained["model_uri"], uri)["out_of_time"]
    assert oot["month"] == "2025-03" and oot["rows"] > 0
    assert "metrics" not in oot and "one class" in oot["note"]


def test_evaluate_refuses_a_model_swapped_after_training(tmp_path, telco_spec, telco_trained, wa_churn):
    from include.tasks.train.fit import train_model
    from tests.support.snapshots import make_snapshot

    snap = make_snapshot(wa_churn.iloc[1500:2300], telco_spec, tmp_path / "other.parquet")
    other = train_model(telco_spec, snap, storage.path_to_uri(tmp_path / "other"))
    storage.write_bytes(telco_trained["model_uri"].split("#")[0], read_model_bytes(other["model_uri"]))
    with pytest.raises(ModelIntegrityError, match="re-run train_model"):
        evaluate_model(telco_spec, telco_trained["model_uri"], telco_trained["splits"]["test"])
