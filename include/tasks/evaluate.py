"""Evaluate: held-out metrics of a fitted model, and the evaluation gate against the spec's floors."""

from __future__ import annotations

from include.spec import EvaluationGate, PipelineSpec
from include.tasks.ingest import read_parquet
from include.tasks.train import feature_frame, labels, read_model


class GateFailed(RuntimeError):
    """A gate did not pass; the message is the reason shown in the Airflow UI."""

    def __init__(self, message: str, results: list[dict]):
        super().__init__(message)
        self.results = results


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
    """One result per floor: gate, metric, threshold, value, passed, evidence URI."""
    checks = [
        ("roc_auc", gate.min_roc_auc, metrics["roc_auc"] >= gate.min_roc_auc, ">="),
        ("pr_auc", gate.min_pr_auc, metrics["pr_auc"] >= gate.min_pr_auc, ">="),
        ("f1", gate.min_f1, metrics["f1"] >= gate.min_f1, ">="),
        ("brier", gate.max_brier, metrics["brier"] <= gate.max_brier, "<="),
    ]
    return [
        {
            "gate": "evaluation",
            "metric": name,
            "comparison": op,
            "threshold": threshold,
            "value": round(metrics[name], 6),
            "passed": bool(ok),
            "evidence_uri": evidence_uri,
        }
        for name, threshold, ok, op in checks
    ]


def raise_for_gate(results: list[dict]) -> None:
    """Raise :class:`GateFailed` naming every failed check."""
    failed = [r for r in results if not r["passed"]]
    if failed:
        lines = [
            f"  - {r['gate']}: {r['metric']} = {r['value']:.4f}, required {r['comparison']} {r['threshold']}"
            for r in failed
        ]
        raise GateFailed(
            f"{len(failed)} gate check(s) failed:\n"
            + "\n".join(lines)
            + "\nThe candidate is not registered and no alias moved. Improve the model or revisit the "
            "thresholds in the pipeline spec.",
            results,
        )
