"""On the real scheduler: `telco_churn__monitor` over logged traffic, and the retrain it starts.

The shared stack's champion (promoted by the rollout test; this module runs last on the stack, see
LIVE_ORDER in tests/conftest.py) serves nothing here: the test writes the traffic into the stack's prediction log as the service would,
then runs the monitor for chosen hours through the REST API:

1. drifted traffic (a price rise and a contract mix moved to month-to-month): drift, an alert
   POSTed to the stack's alert connection (a webhook this test listens on), and the drift asset
   event, which makes the scheduler start **one** training run whose MLflow record names the
   cause and evidence;
2. the next hour, still drifted, inside the cool-down: recorded, nothing triggered;
3. an hour without traffic: "no traffic", nothing alerts;
4. an hour of undrifted traffic after the cool-down: nothing triggered; still one retrain;
5. an hour with a third of one feature missing: the data-quality check breaches and alerts.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from tests.support.live import Webhook
from tests.support.processes import mlflow_client, task_runs

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

NAME = "telco_churn"
DAG = "telco_churn__monitor"
TRAIN = "telco_churn__train"
DAY = datetime(2026, 3, 1, tzinfo=UTC)


def _scores(stack, client, version: int, rows: list[dict]) -> list[float]:
    """The version's own probabilities for ``rows`` (its registered ONNX graph, as the service scores)."""
    import tempfile
    from pathlib import Path

    import mlflow
    import pandas as pd

    from include.frames import feature_frame
    from include.model_files import predict_proba_onnx
    from include.registry import load_version
    from include.spec import load_pipeline

    mlflow.set_tracking_uri(stack.tracking)
    with tempfile.TemporaryDirectory() as tmp:
        model = load_version(client, NAME, version, Path(tmp))
        spec = load_pipeline(NAME)
        return predict_proba_onnx(model.session, spec, feature_frame(pd.DataFrame(rows), spec)).tolist()


def _write_traffic(
    stack, rows: list[dict], scores: list[float], start: datetime, hours: int, version: int
) -> None:
    from include.prediction_log.rows import PredictionRow
    from include.prediction_log.writer import PredictionLog

    (stack.home / "serving").mkdir(parents=True, exist_ok=True)
    log = PredictionLog(f"sqlite:///{stack.home / 'serving' / 'serving.db'}")
    log.start()
    try:
        per_hour = len(rows)
        log.record_sync(
            [
                PredictionRow(
                    uuid.uuid4().hex,
                    NAME,
                    None,
                    version,
                    "champion",
                    True,
                    row,
                    score,
                    int(score >= 0.5),
                    0.1,
                    start + timedelta(hours=h, seconds=i * 3600 / per_hour),
                )
                for h in range(hours)
                for i, (row, score) in enumerate(zip(rows, scores, strict=True))
            ]
        )
    finally:
        log.close()


def _run(stack, hour: int) -> tuple[str, dict]:
    """The monitor run for the interval ending ``hour`` o'clock on DAY; its task states when done."""
    run_id = f"monitor__{hour:02d}"
    logical = (DAY + timedelta(hours=hour)).isoformat().replace("+00:00", "Z")
    stack.api("POST", f"/api/v2/dags/{DAG}/dagRuns", {"dag_run_id": run_id, "logical_date": logical})
    stack.wait_for(
        lambda: stack.run_state(DAG, run_id) in ("success", "failed"),
        300,
        f"the monitor run {run_id}",
        every=2,
    )
    states = stack.task_states(DAG, run_id)
    assert stack.run_state(DAG, run_id) == "success", stack.explain_run(DAG, run_id)
    run = stack.api("GET", f"/api/v2/dags/{DAG}/dagRuns/{run_id}")
    assert run["data_interval_end"].startswith((DAY + timedelta(hours=hour)).strftime("%Y-%m-%dT%H:00:00")), (
        run
    )
    return run_id, states


def _judged(stack, run_id: str) -> dict:
    path = f"/api/v2/dags/{DAG}/dagRuns/{run_id}/taskInstances/judge_interval/xcomEntries/return_value"
    value = stack.api("GET", path)["value"]
    return json.loads(value) if isinstance(value, str) else value


def _note(stack, run_id: str) -> str:
    """The DAG run's note in the Airflow UI: the monitor's outcome, written when the run ended."""
    return stack.wait_for(
        lambda: stack.api("GET", f"/api/v2/dags/{DAG}/dagRuns/{run_id}").get("note"),
        90,
        f"the note of {run_id}",
        every=2,
    )


def _retrains(stack) -> list[dict]:
    return stack.api("GET", f"/api/v2/dags/{TRAIN}/dagRuns?run_type=asset_triggered")["dag_runs"]


def test_drift_triggers_one_retrain_and_no_drift_or_no_traffic_none(live_stack):
    from include.spec import load_pipeline
    from include.tasks.rollout.infra_validation import request_rows

    stack = live_stack
    client = mlflow_client(stack.tracking)
    champion = client.get_registered_model(NAME).aliases.get("champion")
    assert champion, "the rollout test promotes the stack's first champion before this test"
    spec = load_pipeline(NAME)
    rows = request_rows(spec, client.get_model_version(NAME, str(champion)).tags["slipway.snapshot_uri"], 400)
    drifted = [
        {
            **r,
            "monthly_charges": r["monthly_charges"] * 1.4,
            "contract": "Month-to-month" if i % 4 else r["contract"],
        }
        for i, r in enumerate(rows)
    ]
    scored = {
        "drifted": _scores(stack, client, champion, drifted),
        "as trained": _scores(stack, client, champion, rows),
    }
    _write_traffic(stack, drifted, scored["drifted"], DAY + timedelta(hours=8), 2, champion)  # 08:00-10:00
    _write_traffic(stack, rows, scored["as trained"], DAY + timedelta(hours=14), 1, champion)  # 14:00-15:00
    # 17:00-18:00: as trained, but a third of the rows arrive without monthly_charges (an upstream
    # join broke): the data-quality check, not drift, must catch it.
    holes = [{**r, "monthly_charges": None} if i % 3 == 0 else r for i, r in enumerate(rows)]
    _write_traffic(stack, holes, scored["as trained"], DAY + timedelta(hours=17), 1, champion)
    for dag in (DAG, TRAIN):
        stack.api("PATCH", f"/api/v2/dags/{dag}", {"is_paused": False})
    before = len(_retrains(stack))
    webhook = Webhook(stack.alert_port)
    try:
        _lifecycle(stack, client, champion, before, webhook)
    finally:
        webhook.close()
    stack.api("PATCH", f"/api/v2/dags/{DAG}", {"is_paused": True})


def _lifecycle(stack, client, champion: int, before: int, webhook: Webhook) -> None:
    # 1. Drift: an alert to the webhook and the asset event; the scheduler starts one training run.
    run_id, states = _run(stack, 9)
    assert states["send_alert"] == "success" and states["trigger_retraining"] == "success", states
    [alert] = webhook.received
    assert (
        alert["pipeline"] == NAME and "drift" in alert["subject"] and "psi[monthly_charges]" in alert["text"]
    )
    assert "Retraining was triggered (month 2025-12)" in alert["text"]
    judged = _judged(stack, run_id)
    assert judged["status"] == "breach" and judged["trigger"] == "drift" and judged["month"] == "2025-12"
    drifted_metrics = {d["metric"] for d in judged["evidence"]["drifted"]}
    assert {"psi[monthly_charges]", "psi[contract]"} <= drifted_metrics, judged
    assert "psi[tenure]" not in drifted_metrics and judged["evidence"]["rows"] == 400
    # Evidently's report measures what the check measures (PSI, the same threshold), and says so.
    assert "monthly_charges" in judged["evidence"]["report"]["drifted"], judged["evidence"]["report"]
    unchanged = {"partner", "dependents", "phone_service", "paperless_billing", "tenure"}
    assert not unchanged & set(judged["evidence"]["report"]["drifted"]), judged["evidence"]["report"]
    assert judged["evidence"]["report"]["measure"].startswith("Evidently: PSI > 0.25")
    # The run, all green, says it found a breach: its note in the Airflow UI.
    note = _note(stack, run_id)
    assert note.startswith("BREACH on 400 rows of version") and "monthly_charges (PSI" in note, note
    assert note.endswith("retraining triggered on 2025-12"), note
    events = [
        e
        for e in stack.api("GET", "/api/v2/assets/events?limit=100")["asset_events"]
        if e.get("source_dag_id") == DAG
    ]
    assert [(e["uri"], e["source_run_id"], e["extra"]["cause"]) for e in events] == [
        (f"slipway://{NAME}/drift", run_id, "drift")
    ]
    [retrain] = stack.wait_for(
        lambda: _retrains(stack)[before:] or None, 120, "the drift-triggered training run"
    )
    # The retrain's record names its cause before any model is trained.
    parents = stack.wait_for(
        lambda: [
            r
            for r in task_runs(client, NAME, TRAIN, retrain["dag_run_id"])
            if r.data.tags.get("slipway.task_id") == "wait_for_batch"
        ],
        180,
        "the retrain's first task to record its lineage",
    )
    parent = client.get_run(parents[0].data.tags["mlflow.parentRunId"])
    assert parent.data.tags["slipway.trigger"] == "drift" and parent.data.tags["slipway.month"] == "2025-12"
    evidence = json.loads(parent.data.tags["slipway.trigger.evidence"])
    assert evidence["since"].startswith("2026-03-01T08:00") and "psi[monthly_charges]" in json.dumps(evidence)
    # Left to train (the month's training is tested elsewhere): this module runs last on the stack,
    # which stops whatever still runs at the end of the session.
    drift_run = next(
        r for r in task_runs(client, NAME, DAG, run_id) if r.data.tags.get("slipway.task_id") == "check_drift"
    )
    assert {a.path for a in client.list_artifacts(drift_run.info.run_id, "drift")} == {
        "drift/report.html",
        "drift/report.json",
    }
    assert drift_run.data.metrics["drift.psi.monthly_charges"] > 0.25
    mv = client.get_model_version(NAME, str(champion))
    assert mv.tags["slipway.monitor.report_uri"].startswith(f"runs:/{drift_run.info.run_id}/")

    # 2. Still drifted, inside the cool-down: recorded, nothing sent, nothing triggered.
    run_id, states = _run(stack, 10)
    assert states["send_alert"] == "skipped" and states["trigger_retraining"] == "skipped", states
    judged = _judged(stack, run_id)
    assert judged["status"] == "breach" and judged["held_by"].startswith("2026-03-01T09:00")
    assert "held back by the cool-down (already triggered for the interval ending 2026-03-01 09:00 UTC)" in (
        _note(stack, run_id)
    )

    # 3. An hour without traffic.
    run_id, states = _run(stack, 13)
    assert _judged(stack, run_id)["status"] == "no_traffic"
    assert _note(stack, run_id).startswith("no traffic between 2026-03-01 12:00 UTC and 2026-03-01 13:00 UTC")
    assert states["send_alert"] == "skipped" and states["trigger_retraining"] == "skipped", states

    # 4. Traffic as trained, after the cool-down: no drift, nothing triggered.
    run_id, states = _run(stack, 15)
    judged = _judged(stack, run_id)
    assert judged["status"] == "ok" and judged["evidence"]["drifted"] == [], judged
    assert states["trigger_retraining"] == "skipped", states
    assert len(_retrains(stack)) == before + 1
    assert len(webhook.received) == 1  # one alert in all: the episode's first hour

    # 5. A null-rate jump in one feature, after the cool-down: the data-quality check breaches and
    # alerts, naming the feature. The nulls also move monthly_charges' PSI, but a retrain on broken
    # inputs would learn them: nothing retrains, and the note says why.
    run_id, states = _run(stack, 18)
    judged = _judged(stack, run_id)
    quality = judged["evidence"]["checks"]["data_quality"]
    assert judged["status"] == "breach" and quality["status"] == "breach", judged
    assert [f["metric"] for f in quality["failed"]] == ["null_rate[monthly_charges]"], quality
    assert 0.3 < quality["failed"][0]["value"] < 0.36, quality
    assert states["send_alert"] == "success" and states["trigger_retraining"] == "skipped", states
    alert = webhook.received[-1]
    assert len(webhook.received) == 2 and "null_rate[monthly_charges]" in alert["text"], alert
    assert "a retrain would learn the broken inputs" in _note(stack, run_id)
    assert len(_retrains(stack)) == before + 1
