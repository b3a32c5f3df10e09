"""Live performance of the served champion: ROC AUC and the business value per 1,000 predictions on
the predictions whose labels had time to arrive, against the version's own test results."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from include.prediction_log import reads
from include.tasks.gates import check, not_applicable


# ---------------------------------------------------------------------------------------- performance
@dataclass
class Labelled:
    probability: np.ndarray
    label: np.ndarray
    since: str
    until: str


def read_labelled(db_url: str | None, pipeline: str, version: int, since: str, until: str) -> Labelled:
    """The rows ``version`` served in ``[since, until)`` that have a feedback label."""
    rows = reads.labelled_scores(db_url, pipeline, version, since, until)
    return Labelled(
        np.array([r[0] for r in rows], dtype=float), np.array([r[1] for r in rows], dtype=int), since, until
    )


def performance_checks(cfg, spec, labelled: Labelled, version_tags: dict[str, str]) -> list[dict]:
    """Live ROC AUC and value per 1,000 predictions against the version's test results."""
    from sklearn.metrics import roc_auc_score

    from include.tasks.business import has_value_model, value_per_1000

    gate = "performance"
    n = len(labelled.label)
    window = f"predictions made {labelled.since} to {labelled.until}"
    if n < cfg.min_labelled:
        why = f"{n} labelled {window}; judged from {cfg.min_labelled}"
        return [not_applicable(gate, "roc_auc", why), not_applicable(gate, "value_per_1000", why)]
    results = []
    test_auc = float(version_tags.get("slipway.metric.roc_auc", "nan"))
    if len(set(labelled.label.tolist())) < 2:
        results.append(not_applicable(gate, "roc_auc", f"the {n} labels of {window} are all one class"))
    elif math.isnan(test_auc):
        results.append(not_applicable(gate, "roc_auc", "the version has no test ROC AUC on record"))
    else:
        live = float(roc_auc_score(labelled.label, labelled.probability))
        results.append(
            check(
                gate,
                "roc_auc",
                live,
                round(test_auc - cfg.max_roc_auc_drop, 6),
                ">=",
                note=f"test ROC AUC {test_auc:.4f}; {n} labelled {window}",
            )
        )
    if not has_value_model(spec.business):
        results.append(not_applicable(gate, "value_per_1000", "the spec has no cost/benefit (business:)"))
    else:
        threshold = float(version_tags.get("slipway.decision_threshold", "0.5"))
        expected = float(version_tags.get("slipway.value_per_1000", "nan"))
        live_value = value_per_1000(labelled.label, labelled.probability, threshold, spec.business)
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
