"""Evaluate: held-out metrics of a fitted model, and the evaluation gate against the spec's floors."""

from __future__ import annotations

from include.spec import EvaluationGate, PipelineSpec
from include.tasks.gates import GateFailed, check, raise_for_gate  # noqa: F401 (re-exported)
from include.tasks.ingest import read_parquet
from include.tasks.train import feature_frame, labels, read_model


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


def evaluate_model(spec: PipelineSpec, model_uri: str, test_uri: str, threshold: float = 0.5) -> dict:
    """Score the model on the held-out test split."""
    model = read_model(model_uri)
    test = read_parquet(test_uri)
    proba = model.predict_proba(feature_frame(test, spec))[:, 1]
    return {"metrics": compute_metrics(labels(test, spec), proba, threshold), "threshold": threshold}


def evaluation_gate(metrics: dict, gate: EvaluationGate, evidence_uri: str | None = None) -> list[dict]:
    """One result per floor/ceiling on the held-out metrics."""
    return [
        check("evaluation", "roc_auc", metrics["roc_auc"], gate.min_roc_auc, ">=", evidence_uri),
        check("evaluation", "pr_auc", metrics["pr_auc"], gate.min_pr_auc, ">=", evidence_uri),
        check("evaluation", "f1", metrics["f1"], gate.min_f1, ">=", evidence_uri),
        check("evaluation", "brier", metrics["brier"], gate.max_brier, "<=", evidence_uri),
    ]
