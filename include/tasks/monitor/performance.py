"""Live performance of the served champion on the predictions whose labels had time to arrive, against
the version's own test results: ROC AUC (binary), macro F1 (multiclass) or RMSE (regression), and the
business value per 1,000 predictions of the decisions it took."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from include.prediction_log import reads
from include.tasks.gates import check, not_applicable


# ---------------------------------------------------------------------------------------- performance
@dataclass
class Labelled:
    probability: np.ndarray  # the log's score: P(positive), P(decided class), or the prediction
    label: np.ndarray
    since: str
    until: str
    decision: np.ndarray | None = None  # 0/1, the class index, or the amount decided
    entity_key: list[str | None] | None = None  # hashed entity key per row (None: the row had none)


def read_labelled(db_url: str | None, pipeline: str, version: int, since: str, until: str) -> Labelled:
    """The rows ``version`` served in ``[since, until)`` that have a feedback label, with their
    entity keys (the live fairness check joins them to the sensitive attributes)."""
    rows = reads.labelled_scores(db_url, pipeline, version, since, until)
    return Labelled(
        np.array([r[0] for r in rows], dtype=float),
        np.array([r[1] for r in rows], dtype=float),
        since,
        until,
        np.array([r[2] for r in rows], dtype=float),
        [r[3] for r in rows],
    )


def _quality(cfg, spec, labelled: Labelled, tags: dict[str, str], window: str) -> dict:
    """The task's live quality check against the version's test result."""
    from sklearn.metrics import f1_score, roc_auc_score

    gate, n = "performance", len(labelled.label)
    if spec.task == "regression":
        test = float(tags.get("slipway.metric.rmse", "nan"))
        if math.isnan(test):
            return not_applicable(gate, "rmse", "the version has no test RMSE on record")
        live = float(np.sqrt(np.mean((labelled.probability - labelled.label) ** 2)))
        return check(
            gate,
            "rmse",
            live,
            round(test * (1 + cfg.max_rmse_increase), 6),
            "<=",
            note=f"test RMSE {test:.4f}; {n} labelled {window}",
        )
    if spec.task == "multiclass":
        test = float(tags.get("slipway.metric.macro_f1", "nan"))
        if math.isnan(test) or labelled.decision is None:
            return not_applicable(gate, "macro_f1", "the version has no test macro F1 on record")
        k = len(spec.target.classes or [])
        live = float(
            f1_score(
                labelled.label.astype(int),
                labelled.decision.astype(int),
                labels=list(range(k)),
                average="macro",
                zero_division=0,
            )
        )
        return check(
            gate,
            "macro_f1",
            live,
            round(test - cfg.max_macro_f1_drop, 6),
            ">=",
            note=f"test macro F1 {test:.4f}; {n} labelled {window}",
        )
    test_auc = float(tags.get("slipway.metric.roc_auc", "nan"))
    if len(set(labelled.label.tolist())) < 2:
        return not_applicable(gate, "roc_auc", f"the {n} labels of {window} are all one class")
    if math.isnan(test_auc):
        return not_applicable(gate, "roc_auc", "the version has no test ROC AUC on record")
    live = float(roc_auc_score(labelled.label.astype(int), labelled.probability))
    return check(
        gate,
        "roc_auc",
        live,
        round(test_auc - cfg.max_roc_auc_drop, 6),
        ">=",
        note=f"test ROC AUC {test_auc:.4f}; {n} labelled {window}",
    )


def live_value_per_1000(spec, labelled: Labelled, tags: dict[str, str]) -> float:
    """Value per 1,000 of the decisions the version took on the labelled rows."""
    from include.problem import value_matrix
    from include.tasks.business import value_per_1000

    if spec.task == "binary" or labelled.decision is None:
        threshold = float(tags.get("slipway.decision_threshold", "0.5"))
        return value_per_1000(labelled.label.astype(int), labelled.probability, threshold, spec.business)
    if not len(labelled.label):
        return 0.0
    if spec.task == "multiclass":
        m = value_matrix(spec)
        return (
            0.0
            if m is None
            else float(1000.0 * m[labelled.label.astype(int), labelled.decision.astype(int)].mean())
        )
    b, error = spec.business, labelled.decision - labelled.label
    cost = b.cost_per_unit_over * np.clip(error, 0, None) + b.cost_per_unit_under * np.clip(-error, 0, None)
    return float(-1000.0 * cost.mean())


def performance_checks(cfg, spec, labelled: Labelled, version_tags: dict[str, str]) -> list[dict]:
    """The task's live quality and value per 1,000 predictions against the version's test results."""
    from include.spec import has_value_model

    gate = "performance"
    n = len(labelled.label)
    window = f"predictions made {labelled.since} to {labelled.until}"
    from include.tasks.metrics import headline as headline_of

    headline = headline_of(spec.task)
    if n < cfg.min_labelled:
        why = f"{n} labelled {window}; judged from {cfg.min_labelled}"
        return [not_applicable(gate, headline, why), not_applicable(gate, "value_per_1000", why)]
    results = [_quality(cfg, spec, labelled, version_tags, window)]
    if not has_value_model(spec):
        results.append(not_applicable(gate, "value_per_1000", "the spec has no cost/benefit (business:)"))
    else:
        expected = float(version_tags.get("slipway.value_per_1000", "nan"))
        live_value = live_value_per_1000(spec, labelled, version_tags)
        if math.isnan(expected):
            results.append(not_applicable(gate, "value_per_1000", "the version has no test value on record"))
        else:
            floor = expected - cfg.max_kpi_drop * abs(expected)
            results.append(
                check(
                    gate,
                    "value_per_1000",
                    live_value,
                    round(floor, 6),
                    ">=",
                    note=f"test value {expected:.2f} {spec.business.unit} per 1,000; {n} labelled",
                )
            )
    return results
