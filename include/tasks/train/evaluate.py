"""Evaluate: held-out metrics of a fitted model by task, and the evaluation gate against the spec's floors."""

from __future__ import annotations

from typing import Any

from include.frames import feature_frame, labels, read_parquet
from include.model_files import read_model
from include.spec import EvaluationGate, PipelineSpec
from include.tasks.gates import check
from include.tasks.metrics import binary_metrics as compute_metrics
from include.tasks.metrics import task_metrics


def evaluate_model(
    spec: PipelineSpec, model_uri: str, test_uri: str, validation_uri: str | None = None
) -> dict:
    """Choose the decision rule on the validation split (business value), score the test split.

    Binary: threshold-free metrics (ROC AUC, PR AUC, Brier) do not depend on the threshold; F1,
    precision, recall and accuracy are reported at the chosen threshold, and at 0.5 for reference.
    Multiclass and regression: see :mod:`include.tasks.metrics`. ``out_of_time`` scores the test rows
    of the latest ``batch_month`` alone (reported, not gated).
    """
    from include.problem import default_rule, scores
    from include.tasks.business import choose_rule, decision_value_per_1000

    model = read_model(model_uri)
    chosen: dict[str, Any] = {
        "rule": default_rule(spec),
        "value_per_1000": 0.0,
        "curve": [],
        "reason": "no validation split",
    }
    if validation_uri:
        val = read_parquet(validation_uri)
        if len(val):
            chosen = choose_rule(spec, labels(val, spec), scores(model, feature_frame(val, spec), spec))
    test = read_parquet(test_uri)
    y = labels(test, spec)
    s = scores(model, feature_frame(test, spec), spec)
    rule = chosen["rule"]
    out = {
        "metrics": task_metrics(spec, y, s, rule),
        "rule": rule,
        "rule_reason": chosen["reason"],
        "value_per_1000": decision_value_per_1000(spec, y, s, rule),
        "validation_value_per_1000": chosen["value_per_1000"],
        "value_curve": chosen["curve"],
        "out_of_time": out_of_time_slice(spec, test, y, s, rule),
    }
    if spec.task == "binary":
        out |= {
            "threshold": rule["threshold"],
            "threshold_reason": chosen["reason"],
            "metrics_at_0_5": compute_metrics(y, s, 0.5),
        }
    return out


def out_of_time_slice(spec: PipelineSpec, test, y, s, rule: dict) -> dict:
    """Metrics on the test rows of the latest ``batch_month``: the nearest thing to next month's data.

    A classifier's metrics need every class in the slice (binary: both; multiclass: at least two);
    otherwise ``note`` says why there are none.
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
    if spec.task != "regression" and len(set(y[mask])) < 2:
        out["note"] = f"the {month} test rows hold one class only: no metrics for this slice"
    elif spec.task == "regression" and mask.sum() < 2:
        out["note"] = f"the {month} test rows are fewer than 2: no metrics for this slice"
    else:
        out["metrics"] = task_metrics(spec, y[mask], s[mask], rule)
    return out


def evaluation_gate(
    metrics: dict, gate: EvaluationGate, evidence_uri: str | None = None, spec: PipelineSpec | None = None
) -> list[dict]:
    """One result per floor/ceiling of the task on the held-out metrics."""
    task = spec.task if spec is not None else "binary"
    if task == "binary":
        return [
            check("evaluation", "roc_auc", metrics["roc_auc"], gate.min_roc_auc, ">=", evidence_uri),
            check("evaluation", "pr_auc", metrics["pr_auc"], gate.min_pr_auc, ">=", evidence_uri),
            check("evaluation", "f1", metrics["f1"], gate.min_f1, ">=", evidence_uri),
            check("evaluation", "brier", metrics["brier"], gate.max_brier, "<=", evidence_uri),
        ]
    assert spec is not None
    if task == "multiclass":
        classes = list(spec.target.classes or [])
        chance = round(1.0 / len(classes), 6)
        floor = gate.min_balanced_accuracy if gate.min_balanced_accuracy is not None else chance
        note = (
            None
            if gate.min_balanced_accuracy is not None
            else f"no floor set: at least chance (1/{len(classes)})"
        )
        out = [
            check(
                "evaluation",
                "balanced_accuracy",
                metrics["balanced_accuracy"],
                floor,
                ">=",
                evidence_uri,
                note,
            )
        ]
        if gate.max_log_loss is not None:
            out.append(
                check("evaluation", "log_loss", metrics["log_loss"], gate.max_log_loss, "<=", evidence_uri)
            )
        if gate.min_macro_f1 is not None:
            out.append(
                check("evaluation", "macro_f1", metrics["macro_f1"], gate.min_macro_f1, ">=", evidence_uri)
            )
        if gate.min_class_recall is not None:
            for c in classes:
                out.append(
                    check(
                        "evaluation",
                        f"recall.{c}",
                        metrics[f"recall.{c}"],
                        gate.min_class_recall,
                        ">=",
                        evidence_uri,
                    )
                )
        return out
    floor = gate.min_r2 if gate.min_r2 is not None else 0.0
    note = None if gate.min_r2 is not None else "no floor set: better than predicting the mean (R² 0)"
    out = [check("evaluation", "r2", metrics["r2"], floor, ">=", evidence_uri, note)]
    if gate.max_mae is not None:
        out.append(check("evaluation", "mae", metrics["mae"], gate.max_mae, "<=", evidence_uri))
    if gate.max_rmse is not None:
        out.append(check("evaluation", "rmse", metrics["rmse"], gate.max_rmse, "<=", evidence_uri))
    return out
