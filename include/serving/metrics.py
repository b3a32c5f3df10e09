"""Prometheus metrics of the service, correct with several worker processes.

With ``PROMETHEUS_MULTIPROC_DIR`` set (``slipway serve --workers N`` sets it), each worker writes
its samples to files there and ``/metrics`` in any worker sums them (prometheus_client's
multiprocess mode); with one process the default registry is used.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

REQUESTS = Counter(
    "slipway_requests", "HTTP requests by pipeline, route and status", ["pipeline", "route", "status"]
)
PREDICTIONS = Counter(
    "slipway_predictions",
    "Rows scored by pipeline, model version and variant",
    ["pipeline", "version", "variant"],
)
LATENCY = Histogram(
    "slipway_model_latency_seconds",
    "onnxruntime scoring time per call",
    ["pipeline", "version", "variant"],
    buckets=BUCKETS,
)
MODEL_FAILURES = Counter(
    "slipway_model_failures",
    "Rows a model could not score (exception or no probability in [0, 1]); a challenger's fall back to the champion",
    ["pipeline", "version", "variant"],
)
FEEDBACK = Counter("slipway_feedback", "Feedback labels received", ["pipeline"])
SHED = Counter(
    "slipway_shed",
    "Requests refused to protect the log (503) or shadow scorings dropped",
    ["pipeline", "reason"],
)
UNKNOWN_CATEGORY = Counter(
    "slipway_unknown_category", "Categorical values the model never saw (served)", ["pipeline", "field"]
)
QUEUE_DEPTH = Gauge(
    "slipway_log_queue_depth", "Rows waiting for the prediction log's commit", multiprocess_mode="livesum"
)
LOG_ROWS = Counter("slipway_log_rows_written", "Rows committed to the prediction log")
LOG_FAILURES = Counter("slipway_log_write_failures", "Failed prediction-log commits")
RELOAD_FAILURES = Counter("slipway_model_reload_failures", "Failed registry reads or refused model versions")
REQUEST_SECONDS = Histogram(
    "slipway_request_seconds",
    "Time from a request's arrival to its answer (predict: checks, scoring, the log's commit)",
    ["pipeline", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
LOG_COMMIT_SECONDS = Histogram(
    "slipway_log_commit_seconds",
    "Time of each successful prediction-log commit",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
# Set at each scrape by the worker that answers it ("livemostrecent": that worker's view).
LATENCY_BUDGET = Gauge(
    "slipway_latency_budget_seconds",
    "The spec's p99 budget (rollout.infra.max_p99_latency_ms)",
    ["pipeline"],
    multiprocess_mode="livemostrecent",
)
READY = Gauge(
    "slipway_ready",
    "1 when the pipeline serves a champion with no problem (/ready's 'ready'), else 0",
    ["pipeline"],
    multiprocess_mode="livemostrecent",
)
REGISTRY_AGE = Gauge(
    "slipway_registry_read_age_seconds",
    "Seconds since the registry was last read (the served models may be stale when it grows)",
    multiprocess_mode="livemostrecent",
)
# What happened to the pipeline's runs (Airflow records it in slipway_events; read at each scrape).
DAG_RUN_FAILURES = Gauge(
    "slipway_dag_run_failures",
    "Failed DAG runs of the pipeline recorded so far",
    ["pipeline"],
    multiprocess_mode="max",
)
ROLLBACKS = Gauge(
    "slipway_rollbacks",
    "Champions restored so far (a canary or shadow rolled back, a rejection, a manual rollback)",
    ["pipeline"],
    multiprocess_mode="max",
)
APPROVAL_WAITING = Gauge(
    "slipway_approval_waiting_seconds",
    "How long the oldest unanswered approval has waited (0: none waits)",
    ["pipeline"],
    multiprocess_mode="livemostrecent",
)

# The monitor's newest check per pipeline (``<pipeline>__monitor`` writes it to the prediction log's
# database; every worker reads the same row, so "max" across processes is that row).
MONITOR = {
    key: Gauge(f"slipway_monitor_{key}", help_, ["pipeline"], multiprocess_mode="max")
    for key, help_ in {
        "interval_end": "End of the newest interval the monitor checked (Unix time)",
        "served_rows": "Served rows in that interval",
        "no_traffic": "1 when that interval had no traffic",
        "drift_breach": "1 when that interval's traffic drifted from the champion's reference",
        "performance_breach": "1 when live performance or the business KPI was below its floor",
        "drifted_checks": "Features (and the score) whose PSI exceeded the bound in that interval",
        "fairness_breach": "1 when a live fairness gap (labelled window, per sensitive attribute) was out of bounds",
        "attribution_breach": "1 when the served rows' SHAP ranking fell below its rank correlation with training",
        "data_quality_breach": "1 when a served feature's null, out-of-range or unseen-category share was over bound",
    }.items()
}

_seen: dict[str, int] = {}
_children: dict[tuple, object] = {}


def child(metric, *labels: str):
    """``metric.labels(*labels)``, looked up once: the hot path skips prometheus_client's label lock."""
    key = (metric._name, *labels)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(*labels)
    return found


def _advance(counter: Counter, name: str, value: int) -> None:
    delta = value - _seen.get(name, 0)
    if delta > 0:
        counter.inc(delta)
        _seen[name] = value


def sync_counters(service) -> None:
    """Move the log's and the registry's plain counters into Prometheus (per process)."""
    _advance(LOG_ROWS, "rows", service.log.rows_written)
    _advance(LOG_FAILURES, "failures", service.log.commit_failures)
    _advance(RELOAD_FAILURES, "reloads", service.registry.reload_failures)
    QUEUE_DEPTH.set(service.log.queue_depth)
    durations = service.log.commit_seconds
    while durations:
        LOG_COMMIT_SECONDS.observe(durations.popleft())


def sync_state(service, ready: dict[str, bool], now: float) -> None:
    """Readiness per pipeline, the registry's age and the latency budgets, as this worker sees them."""
    for pipeline, ok in ready.items():
        child(READY, pipeline).set(int(ok))
    for pipeline, budget in service.latency_budgets_s.items():
        child(LATENCY_BUDGET, pipeline).set(budget)
    last = service.registry.last_refresh
    if last is not None:
        REGISTRY_AGE.set(max(0.0, now - last))


def sync_events(db_url: str | None, pipelines: list[str]) -> None:
    """Copy the pipelines' recorded run events into the gauges (blocking: a DB read)."""
    from include.prediction_log.events import summary

    for pipeline, found in summary(db_url, pipelines).items():
        child(DAG_RUN_FAILURES, pipeline).set(sum(found.failed_runs.values()))
        child(ROLLBACKS, pipeline).set(found.rollbacks)
        child(APPROVAL_WAITING, pipeline).set(found.approval_waiting_s)


def sync_monitor(db_url: str | None, pipelines: list[str]) -> None:
    """Copy the monitor's newest check of each pipeline into the gauges (blocking: a DB read)."""
    from include.prediction_log.monitor_checks import latest_summary

    for pipeline, values in latest_summary(db_url, pipelines).items():
        for key, value in values.items():
            child(MONITOR[key], pipeline).set(value)


def render() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
