"""Airflow's notifier mechanism for what happens to runs: a failed run, an approval waiting and a manual
rollback reach the spec's alert connection (a real webhook on localhost), each with what a person needs."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from airflow.sdk import DAG

from include.blocks.notify import PipelineNotifier, dag_callbacks, message
from tests.support.live import Webhook
from tests.support.processes import free_port


class _TI:
    def __init__(self, task_id: str, xcoms: dict):
        self.task_id = task_id
        self._xcoms = xcoms

    def xcom_pull(self, task_ids=None, key="return_value"):
        return self._xcoms.get(task_ids)


def _context(dag_id: str, task_id: str, xcoms: dict, **extra) -> dict:
    return {
        "dag": DAG(dag_id, schedule=None),
        "run_id": "manual__2026-12-07T10:00:00+00:00",
        "ti": _TI(task_id, xcoms),
        **extra,
    }


@pytest.fixture
def alerts(monkeypatch, tmp_path):
    """The spec's alert connection: a real webhook on localhost; what it received. The events go to
    a prediction-log database of the test's own."""
    monkeypatch.setenv("SLIPWAY_SERVING_DB", f"sqlite:///{tmp_path / 'serving.db'}")
    port = free_port()
    hook = Webhook(port)
    monkeypatch.setenv(
        "AIRFLOW_CONN_SLIPWAY_ALERTS",
        json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": port, "schema": "http"}),
    )
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.com")
    yield hook.received
    hook.close()


def test_a_waiting_approval_names_the_version_and_links_the_required_action(alerts):
    context = _context(
        "telco_churn__rollout",
        "approve_promotion",
        {"select_candidate": {"version": 4}},
        task=SimpleNamespace(response_timeout="2:00:00"),
    )
    PipelineNotifier("telco_churn", "approval")(context)
    (got,) = alerts
    assert got["subject"] == "[slipway] telco_churn: version 4 waits for your approval"
    assert got["url"] == (
        "https://airflow.example.com/dags/telco_churn__rollout/runs/"
        "manual__2026-12-07T10%3A00%3A00%2B00%3A00/tasks/approve_promotion"
    )
    assert "within 2:00:00, it is rejected and rolled back" in got["text"] and got["event"] == "approval"


def test_a_failed_run_names_the_task_and_links_the_run(alerts, monkeypatch):
    import time

    # MLflow unreachable: the message goes out at once, without the run's outcome line.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    context = _context("telco_churn__score", "score_population", {}, reason="task_failure")
    started = time.monotonic()
    dag_callbacks("telco_churn")["on_failure_callback"](context)
    assert time.monotonic() - started < 30
    (got,) = alerts
    assert got["outcome"] is None
    assert got["subject"] == "[slipway] telco_churn__score: run failed at score_population"
    assert got["reason"] == "task_failure" and got["url"].startswith("https://airflow.example.com/dags/")
    assert (
        "telco_churn__score run manual__2026-12-07T10:00:00+00:00 failed (task score_population)."
        in got["text"]
    )


def test_a_manual_rollback_says_from_which_version_to_which_and_why(alerts):
    event = {"version": 2, "from_version": 3, "reason": "complaints (triggered by operator)"}
    context = _context(
        "telco_churn__rollback", "restore_previous_champion", {"restore_previous_champion": {"event": event}}
    )
    PipelineNotifier("telco_churn", "rollback")(context)
    (got,) = alerts
    assert got["subject"] == "[slipway] telco_churn: champion restored to version 2"
    assert "from version 3 to version 2: complaints (triggered by operator)" in got["text"]


def test_without_a_connection_the_message_is_a_warning_and_an_unknown_event_is_refused(monkeypatch, caplog):
    monkeypatch.delenv("AIRFLOW_CONN_SLIPWAY_ALERTS", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    with caplog.at_level("WARNING", logger="slipway"):
        PipelineNotifier("telco_churn", "rollback")(
            _context("telco_churn__rollback", "restore_previous_champion", {})
        )
    assert "no Airflow connection 'slipway_alerts'" in caplog.text and "champion restored" in caplog.text
    with pytest.raises(ValueError, match="event must be one of"):
        PipelineNotifier("telco_churn", "deleted")
    subject, _, _ = message("telco_churn", "failed", {"dag_id": "x__train", "run_id": "r"})
    assert subject == "[slipway] x__train: run failed"


def test_every_generated_dag_and_the_approval_carry_the_notifiers():
    from airflow.dag_processing.dagbag import DagBag

    from include.settings import PROJECT_ROOT

    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags"))
    generated = [
        d for d in bag.dags.values() if "slipway" in d.tags and d.dag_id.split("__")[-1] != "explore"
    ]
    assert generated
    for dag in generated:
        callbacks = (
            dag.on_failure_callback
            if isinstance(dag.on_failure_callback, list)
            else [dag.on_failure_callback]
        )
        assert any(isinstance(c, PipelineNotifier) and c.event == "failed" for c in callbacks), dag.dag_id
    approval = bag.dags["telco_churn__rollout"].get_task("approve_promotion")
    assert [n.event for n in approval.notifiers] == ["approval"]
    restore = bag.dags["telco_churn__rollback"].get_task("restore_previous_champion")
    callbacks = (
        restore.on_success_callback
        if isinstance(restore.on_success_callback, list)
        else [restore.on_success_callback]
    )
    assert [c.event for c in callbacks] == ["rollback"]


def test_a_failed_run_carries_its_outcome_line(alerts, monkeypatch):
    import include.lineage

    record = SimpleNamespace(
        data=SimpleNamespace(tags={"slipway.outcome": "version 4 not promoted, rolled back: p99"})
    )
    monkeypatch.setattr(include.lineage, "find_parent", lambda *a: record)
    dag_callbacks("telco_churn")["on_failure_callback"](
        _context("telco_churn__rollout", "conclude_rollout", {})
    )
    (got,) = alerts
    assert "What it found: version 4 not promoted, rolled back: p99" in got["text"]


def test_an_unreachable_webhook_never_fails_what_it_reports_on(monkeypatch, caplog):
    monkeypatch.setenv(
        "AIRFLOW_CONN_SLIPWAY_ALERTS",
        json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": free_port(), "schema": "http"}),
    )
    context = _context("telco_churn__rollout", "approve_promotion", {"select_candidate": {"version": 4}})
    with caplog.at_level("WARNING", logger="slipway"):
        PipelineNotifier("telco_churn", "approval")(
            context
        )  # Airflow re-raises a notifier's error: none here
    assert "could not send the approval notification through 'slipway_alerts'" in caplog.text
    assert "version 4 waits for your approval" in caplog.text


def test_each_notification_is_recorded_for_prometheus(alerts, monkeypatch):
    """The alerting rules read what the notifiers record: the failed run, the waiting approval (closed
    when its run fails), the rollback."""
    from datetime import UTC, datetime, timedelta

    from include.prediction_log import events

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    rollout = _context("telco_churn__rollout", "approve_promotion", {"select_candidate": {"version": 4}})
    PipelineNotifier("telco_churn", "approval")(rollout)
    later = datetime.now(UTC) + timedelta(hours=1)
    assert events.summary(None, ["telco_churn"], now=later)["telco_churn"].approval_waiting_s > 3500
    event = {"version": 2, "from_version": 3, "reason": "complaints"}
    PipelineNotifier("telco_churn", "rollback")(
        _context(
            "telco_churn__rollback",
            "restore_previous_champion",
            {"restore_previous_champion": {"event": event}},
        )
    )
    dag_callbacks("telco_churn")["on_failure_callback"]({**rollout, "reason": "task_failure"})
    found = events.summary(None, ["telco_churn"], now=later)["telco_churn"]
    assert found == events.Summary({"telco_churn__rollout": 1}, 1, 0.0)
    assert len(alerts) == 3  # and each message went out


def test_a_database_that_cannot_record_never_stops_the_message(alerts, monkeypatch, caplog):
    monkeypatch.setenv("SLIPWAY_SERVING_DB", "postgresql://nobody@127.0.0.1:9/none")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    with caplog.at_level("WARNING", logger="slipway"):
        dag_callbacks("telco_churn")["on_failure_callback"](
            _context("telco_churn__train", "fit", {}, reason="task_failure")
        )
    assert len(alerts) == 1
    assert "the failed event was not recorded for Prometheus" in caplog.text
