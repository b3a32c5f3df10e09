"""What ``<pipeline>__monitor`` decides each interval, from its checks and the earlier intervals' record
(:mod:`include.prediction_log.monitor_checks`).

* **No traffic** in the interval: status ``no_traffic``; nothing is judged, nothing alerts.
* **Drift**: any feature's PSI, or the champion's score PSI, above the spec's bound (see
  :mod:`include.tasks.monitor.drift`).
* **Performance**: live ROC AUC and the business value per 1,000 predictions on the predictions
  whose labels had time to arrive (made between ``label_delay_hours + window_hours`` and
  ``label_delay_hours`` before the interval's end), against the version's own test results. A drop
  counts as sustained after ``sustained_checks`` consecutive breaching checks.
* **Retraining** is triggered by a drift breach or a sustained performance drop, unless an earlier
  interval within ``cooldown_hours`` already triggered it: one episode, one retrain. Alerts follow
  the same cool-down.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from include.prediction_log.monitor_checks import BREACH, NO_TRAFFIC, OK
from include.prediction_log.rows import iso_utc
from include.tasks.gates import FAILED


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
