"""Held-out metrics of a task: what evaluation gates, the champion comparison compares and the model
card reports.

* binary: ROC AUC, PR AUC (average precision), Brier score (threshold-free), and F1, precision,
  recall, accuracy of the decisions at the rule's threshold;
* multiclass: log loss (of the probabilities), macro F1, balanced accuracy, accuracy and the recall
  of each class (of the decisions);
* regression: MAE, RMSE, R², and the residual (truth - prediction) quantiles 5/50/95 %: the
  version's empirical prediction interval.
"""

from __future__ import annotations

from include.spec import PipelineSpec

#: Per task: metric -> True when higher is better. The first one is the task's headline metric.
DIRECTION: dict[str, dict[str, bool]] = {
    "binary": {
        "roc_auc": True,
        "pr_auc": True,
        "f1": True,
        "precision": True,
        "recall": True,
        "brier": False,
        "accuracy": True,
    },
    "multiclass": {"macro_f1": True, "log_loss": False, "balanced_accuracy": True, "accuracy": True},
    "regression": {"rmse": False, "mae": False, "r2": True},
}


#: How a page titles a task's headline metric.
TITLES = {"roc_auc": "ROC AUC", "macro_f1": "macro F1", "rmse": "RMSE"}


#: The metrics a page shows of a version of ``task``, in order (the version's description, a
#: promotion's comparison with the champion).
SHOWN = {
    "binary": ("roc_auc", "pr_auc", "f1", "brier"),
    "multiclass": ("macro_f1", "balanced_accuracy", "log_loss"),
    "regression": ("rmse", "mae", "r2"),
}


def headline(task: str) -> str:
    """The metric a person reads first for ``task`` (ROC AUC, macro F1, RMSE)."""
    return next(iter(DIRECTION[task]))


def binary_metrics(y_true, proba, threshold: float = 0.5) -> dict:
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


def multiclass_metrics(y_true, proba, decided, classes: list[str]) -> dict:
    """Log loss, macro F1, balanced accuracy, accuracy and ``recall.<class>`` per class."""
    import numpy as np
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, log_loss, recall_score

    labels = list(range(len(classes)))
    recalls = recall_score(y_true, decided, labels=labels, average=None, zero_division=0)
    out = {
        "log_loss": float(log_loss(y_true, np.clip(proba, 1e-15, 1.0), labels=labels)),
        "macro_f1": float(f1_score(y_true, decided, labels=labels, average="macro", zero_division=0)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, decided)),
        "accuracy": float(accuracy_score(y_true, decided)),
        "rows": int(len(y_true)),
    }
    out |= {f"recall.{c}": float(r) for c, r in zip(classes, recalls, strict=True)}
    out |= {f"share.{c}": float(np.mean(np.asarray(y_true) == i)) for i, c in enumerate(classes)}
    return out


def regression_metrics(y_true, predicted) -> dict:
    """MAE, RMSE, R², mean residual and the residual quantiles (truth - prediction)."""
    import numpy as np
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    y, p = np.asarray(y_true, dtype="float64"), np.asarray(predicted, dtype="float64")
    residual = y - p
    q05, q50, q95 = (float(np.quantile(residual, q)) for q in (0.05, 0.5, 0.95))
    return {
        "mae": float(mean_absolute_error(y, p)),
        "rmse": float(np.sqrt(mean_squared_error(y, p))),
        "r2": float(r2_score(y, p)) if len(y) > 1 else float("nan"),
        "mean_residual": float(residual.mean()),
        "residual_q05": q05,
        "residual_q50": q50,
        "residual_q95": q95,
        "target_mean": float(y.mean()),
        "rows": int(len(y)),
    }


def task_metrics(spec: PipelineSpec, y_true, s, rule: dict) -> dict:
    """The task's metrics of scores ``s`` (see :mod:`include.problem`) under decision ``rule``."""
    from include.problem import decide

    if spec.task == "binary":
        return binary_metrics(y_true, s, float(rule["threshold"]))
    if spec.task == "multiclass":
        return multiclass_metrics(y_true, s, decide(spec, s, rule), list(spec.target.classes or []))
    return regression_metrics(y_true, s)


def prediction_interval(metrics: dict) -> dict | None:
    """A regression version's 90% empirical prediction interval: [prediction + q05, prediction + q95]."""
    if "residual_q05" not in metrics:
        return None
    return {
        "low": round(metrics["residual_q05"], 6),
        "high": round(metrics["residual_q95"], 6),
        "coverage": 0.9,
    }
