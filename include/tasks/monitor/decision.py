"""What ``<pipeline>__monitor`` decides each interval, from its checks and the earlier intervals' record
(:mod:`include.prediction_log.monitor_checks`).

* **No traffic** in the interval: status ``no_traffic``; nothing is judged, nothing alerts.
* **Drift**: any feature's PSI, or the champion's score PSI, above the spec's bound (see
  :mod:`include.tasks.monitor.drift`).
* **Performance**: live ROC AUC and the business value per 1,000 predictions on the predictions
  whose labels had time to arrive (made between ``label_delay_hours + window_hours`` and
  ``label_delay_hours`` before the interval's end), against the version's own test results. A drop
  counts as sustained after ``sustained_checks`` consecutive breaching checks.
* **Fairness, attribution, data quality** (:mod:`include.tasks.monitor.fairness`,
  :mod:`~include.tasks.monitor.attribution`, :mod:`~include.tasks.monitor.quality`): any failed
  result is a breach of that check; it alerts, and with the check's ``trigger: retrain`` it also
  triggers retraining as drift does.
* **Retraining** is triggered by a drift breach, a breach of a check whose ``trigger`` is
  ``retrain``, or a sustained performance drop, unless an earlier interval within
  ``cooldown_hours`` already triggered it: one episode, one retrain. Alerts follow the same
  cool-down. A data-quality breach (with its ``trigger: alert``) holds any retrain of the interval:
  nulls or impossible values also show as drift, and a retrain would learn the broken inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from include.prediction_log.monitor_checks import BREACH, NO_TRAFFIC, OK
from include.prediction_log.rows import iso_utc
from include.tasks.gates import FAILED, NOT_APPLICABLE

#: The checks judged beside drift and performance, in the order they are reported.
CHECKS = ("fairness", "attribution", "data_quality")


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
    breaches: tuple[str, ...] = field(default=())  # which of CHECKS breached
    blocked: str | None = None  # why a due retrain was not started (besides the cool-down)


def check_status(results: list[dict]) -> str:
    """A check's state in the record: ``breach``, ``ok`` (something measured, nothing failed) or
    ``not_judged`` (nothing measured: no results, or all not applicable)."""
    if any(r["status"] == FAILED for r in results):
        return BREACH
    if any(r["status"] != NOT_APPLICABLE for r in results):
        return OK
    return "not_judged"


def decide(
    cfg,
    interval_end: datetime,
    served_rows: int,
    drift: list[dict],
    performance: list[dict],
    history,
    checks: dict[str, list[dict]] | None = None,
):
    """What this interval's results mean, given the earlier checks (newest first). ``checks``: the
    results of the other checks by name (:data:`CHECKS`)."""
    checks = checks or {}
    breaches = tuple(n for n in CHECKS if check_status(checks.get(n, [])) == BREACH)
    # Live fairness judges the labelled window, which an interval without traffic may still have.
    if served_rows == 0 and not any(r["status"] == FAILED for r in performance) and not breaches:
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
    retrain_on = [n for n in breaches if getattr(cfg, n).trigger == "retrain"]
    cause = (
        "drift"
        if drift_breach
        else retrain_on[0]
        if retrain_on
        else ("performance" if sustained >= cfg.performance.sustained_checks else None)
    )
    floor = iso_utc(interval_end - timedelta(hours=cfg.cooldown_hours))
    recent = [c for c in history if c.interval_end > floor]
    trigger, held_by, blocked = cause, None, None
    if cause and "data_quality" in breaches and cfg.data_quality.trigger == "alert":
        # Nulls, impossible values or new categories also move the PSI: that drift is the breakage,
        # and a retrain on this traffic would learn it. A person fixes the inputs first.
        trigger = None
        blocked = (
            "the served inputs failed the data-quality check; a retrain would learn the broken inputs: "
            "fix them upstream (or set monitoring.data_quality.trigger: retrain)"
        )
    elif cause:
        before = next((c for c in recent if c.triggered), None)
        if before is not None:
            trigger, held_by = None, before.interval_end
    breach = drift_breach or perf_breach or bool(breaches)
    alert = breach and not any(c.alerted for c in recent)
    return Decision(
        BREACH if breach else OK,
        drift_breach,
        perf_breach,
        sustained,
        trigger,
        alert,
        held_by,
        breaches,
        blocked,
    )


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


def _item(r: dict) -> dict:
    return {
        "metric": r["metric"],
        "value": r["value"],
        "threshold": r["threshold"],
        "comparison": r["comparison"],
    }


def check_evidence(name: str, results: list[dict], limit: int = 8) -> dict:
    """One check's part of the evidence: its state, what failed (worst first, as far as a "worst"
    exists), and why it was not judged."""
    status = check_status(results)
    failed = [r for r in results if r["status"] == FAILED]
    out: dict = {"status": status, "failed": [_item(r) for r in failed][:limit], "failed_count": len(failed)}
    if status == "not_judged":
        out["reason"] = "; ".join(r.get("note", "") for r in results) or f"{name} did not run"
    return out


def evidence(
    drift: list[dict], performance: list[dict], limit: int = 8, checks: dict[str, list[dict]] | None = None
) -> dict:
    """The breach in a few lines (asset event extra, alert body, MLflow tag): the worst features first;
    with ``checks``, each other check's state under ``checks``."""
    failed = sorted((r for r in drift if r["status"] == FAILED), key=lambda r: -(r.get("value") or 0))
    extra = (
        {"checks": {n: check_evidence(n, checks.get(n, []), limit) for n in CHECKS}}
        if checks is not None
        else {}
    )
    return {
        **extra,
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
