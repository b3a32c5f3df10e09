"""Evaluate: held-out metrics of a fitted model, and the evaluation gate against the spec's floors."""

from __future__ import annotations

from typing import Any

from include.frames import feature_frame, labels, read_parquet
from include.model_files import read_model
from include.spec import EvaluationGate, PipelineSpec
from include.tasks.gates import check


def compute_metrics(y_true, proba, threshold: float = 0.5) -> dict:
    """ROC AUC, PR AUC (average precision), F1, precision, recall, Brier score, accuracy."""
    from sklearn.metrics import (
        accuracy_score,
        average_precision_score,
        brier_score_loss,
        f1_score,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    pred = (proba >= threshold).astype(int)
    return {
        "roc_auc": float(roc_auc_score(y_true, proba)),
        "pr_auc": float(average_precision_score(y_true, proba)),
        "f1": float(f1_score(y_true, pred, zero_division=0)),
        "precision": float(precision_score(y_true, pred, zero_division=0)),
        "recall": float(recall_score(y_true, pred, zero_division=0)),
        "brier": float(brier_score_loss(y_true, proba)),
        "accuracy": float(accuracy_score(y_true, pred)),
        "positive_rate": float(y_true.mean()),
        "rows": int(len(y_true)),
    }


def evaluate_model(
    spec: PipelineSpec, model_uri: str, test_uri: str, validation_uri: str | None = None
) -> dict:
    """Choose the decision threshold on the validation split (business value), score the test split.

    Threshold-free metrics (ROC AUC, PR AUC, Brier) do not depend on it; F1, precision, recall and
    accuracy are reported at the chosen threshold, and at 0.5 for reference. ``out_of_time`` scores
    the test rows of the latest ``batch_month`` alone (reported, not gated).
    """
    from include.tasks.business import choose_threshold, value_per_1000

    model = read_model(model_uri)
    chosen: dict[str, Any] = {
        "threshold": 0.5,
        "value_per_1000": 0.0,
        "curve": [],
        "reason": "no validation split",
    }
    if validation_uri:
        val = read_parquet(validation_uri)
        if len(val):
            proba_val = model.predict_proba(feature_frame(val, spec))[:, 1]
            chosen = choose_threshold(labels(val, spec), proba_val, spec.business)
    test = read_parquet(test_uri)
    y = labels(test, spec)
    proba = model.predict_proba(feature_frame(test, spec))[:, 1]
    threshold = chosen["threshold"]
    return {
        "metrics": compute_metrics(y, proba, threshold),
        "metrics_at_0_5": compute_metrics(y, proba, 0.5),
        "threshold": threshold,
        "threshold_reason": chosen["reason"],
        "value_per_1000": value_per_1000(y, proba, threshold, spec.business),
        "validation_value_per_1000": chosen["value_per_1000"],
        "value_curve": chosen["curve"],
        "out_of_time": out_of_time_slice(test, y, proba, threshold),
    }


def out_of_time_slice(test, y, proba, threshold: float) -> dict:
    """Metrics on the test rows of the latest ``batch_month``: the nearest thing to next month's data.

    Metrics need both classes in the slice; otherwise ``note`` says why there are none.
    """
    if "batch_month" not in test.columns or not len(test):
        return {
            "month": None,
            "rows": 0,
            "note": "the test split has no rows or no batch_month column: nothing to slice",
        }
    months = test["batch_month"].astype(str)
    month = months.max()  # YYYY-MM sorts chronologically as text
    mask = (months == month).to_numpy()
    out = {"month": month, "rows": int(mask.sum())}
    if len(set(y[mask])) < 2:
        out["note"] = f"the {month} test rows hold one class only: no metrics for this slice"
    else:
        out["metrics"] = compute_metrics(y[mask], proba[mask], threshold)
    return out


def evaluation_gate(metrics: dict, gate: EvaluationGate, evidence_uri: str | None = None) -> list[dict]:
    """One result per floor/ceiling on the held-out metrics."""
    return [
        check("evaluation", "roc_auc", metrics["roc_auc"], gate.min_roc_auc, ">=", evidence_uri),
        check("evaluation", "pr_auc", metrics["pr_auc"], gate.min_pr_auc, ">=", evidence_uri),
        check("evaluation", "f1", metrics["f1"], gate.min_f1, ">=", evidence_uri),
        check("evaluation", "brier", metrics["brier"], gate.max_brier, "<=", evidence_uri),
    ]
