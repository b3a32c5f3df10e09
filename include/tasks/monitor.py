"""What ``<pipeline>__monitor`` decides each interval, and the record it keeps.

Every check of an interval is one row of ``slipway_monitor`` in the prediction log's database (the
service exports the newest row per pipeline as Prometheus gauges; the cool-down and the "sustained"
rule read the earlier rows). A row is keyed by pipeline and interval end: a re-run of the interval
replaces its own row and never counts itself as an earlier breach.

* **No traffic** in the interval: status ``no_traffic``; nothing is judged, nothing alerts.
* **Drift**: any feature's PSI, or the champion's score PSI, above the spec's bound (see
  :mod:`include.tasks.drift`).
* **Performance**: live ROC AUC and the business value per 1,000 predictions on the predictions
  whose labels had time to arrive (made between ``label_delay_hours + window_hours`` and
  ``label_delay_hours`` before the interval's end), against the version's own test results. A drop
  counts as sustained after ``sustained_checks`` consecutive breaching checks.
* **Retraining** is triggered by a drift breach or a sustained performance drop, unless an earlier
  interval within ``cooldown_hours`` already triggered it: one episode, one retrain. Alerts follow
  the same cool-down.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np

from include.prediction_log import reads
from include.prediction_log.monitor_checks import BREACH, NO_TRAFFIC, OK
from include.prediction_log.rows import iso_utc
from include.tasks.gates import FAILED, check, not_applicable


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


# ---------------------------------------------------------------------------------------- decision
@dataclass(frozen=True)
class Decision:
    status: str
    drift_breach: bool
    performance_breach: bool
    sustained: int  # consecutive breaching performance checks, this one included
    trigger: str | None  # what starts a retrain now: "drift" | "performance" | None
    alert: bool
    held_by: str | None  # the interval end of the earlier trigger/alert inside the cool-down


def decide(
    cfg, interval_end: datetime, served_rows: int, drift: list[dict], performance: list[dict], history
):
    """What this interval's results mean, given the earlier checks (newest first)."""
    if served_rows == 0 and not any(r["status"] == FAILED for r in performance):
        return Decision(NO_TRAFFIC, False, False, 0, None, False, None)
    drift_breach = any(r["status"] == FAILED for r in drift)
    perf_breach = any(r["status"] == FAILED for r in performance)
    sustained = 0
    if perf_breach:
        sustained = 1
        for past in history:
            if not past.performance_breach:
                break
            sustained += 1
    cause = (
        "drift"
        if drift_breach
        else ("performance" if sustained >= cfg.performance.sustained_checks else None)
    )
    floor = iso_utc(interval_end - timedelta(hours=cfg.cooldown_hours))
    recent = [c for c in history if c.interval_end > floor]
    trigger, held_by = cause, None
    if cause:
        before = next((c for c in recent if c.triggered), None)
        if before is not None:
            trigger, held_by = None, before.interval_end
    breach = drift_breach or perf_breach
    alert = breach and not any(c.alerted for c in recent)
    return Decision(BREACH if breach else OK, drift_breach, perf_breach, sustained, trigger, alert, held_by)


# ---------------------------------------------------------------------------------------- retraining
def newest_landed_month(landing_uri: str, pipeline: str, before: str | None = None) -> str | None:
    """The newest ``YYYY-MM`` with a batch in the landing zone (before ``before`` when given): the
    month a drift-triggered retrain trains up to."""
    import re

    from include import storage
    from include.uri import join

    pattern = re.compile(r"/(\d{4}-\d{2})\.(csv|parquet)$")
    months = sorted(
        m.group(1) for uri in storage.list_uris(join(landing_uri, pipeline)) if (m := pattern.search(uri))
    )
    if before:
        months = [m for m in months if m < before]
    return months[-1] if months else None


def evidence(drift: list[dict], performance: list[dict], limit: int = 8) -> dict:
    """The breach in a few lines (asset event extra, alert body, MLflow tag): the worst features first."""
    failed = sorted((r for r in drift if r["status"] == FAILED), key=lambda r: -(r.get("value") or 0))
    return {
        "drifted": [
            {"metric": r["metric"], "value": round(r["value"], 4), "threshold": r["threshold"]}
            for r in failed
        ][:limit],
        "drifted_count": len(failed),
        "performance": [
            {"metric": r["metric"], "value": round(r["value"], 4), "threshold": r["threshold"]}
            for r in performance
            if r["status"] == FAILED
        ],
    }
