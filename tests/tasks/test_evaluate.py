"""Evaluate: correct metrics, and a gate whose failure names each failed check."""

from __future__ import annotations

import numpy as np
import pytest

from include.spec import EvaluationGate
from include.tasks.evaluate import compute_metrics, evaluation_gate
from include.tasks.gates import GateFailed, raise_for_gate


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
    assert all(r["passed"] for r in results)
    assert set(results[0]) >= {"gate", "metric", "threshold", "value", "passed", "evidence_uri"}
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
    assert [r["metric"] for r in err.value.results if not r["passed"]] == ["roc_auc", "brier"]
