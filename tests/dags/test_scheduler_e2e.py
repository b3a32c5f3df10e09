"""On the real scheduler (api-server, scheduler, dag-processor, triggerer; PostgreSQL): the training
DAG as an operator runs it, through the REST API with a real login.

The current month's batch has not landed, so its scheduled run waits in the triggerer; an operator
runs a past month meanwhile, and it trains, gates (side by side) and registers without queueing
behind the waiting month.
"""

from __future__ import annotations

import pytest

from tests.support.processes import mlflow_client, task_runs

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

DAG = "telco_churn__train"


def _runs(stack, run_type: str) -> list[dict]:
    return stack.api("GET", f"/api/v2/dags/{DAG}/dagRuns?run_type={run_type}")["dag_runs"]


def test_a_past_month_runs_while_the_current_month_waits_for_its_batch(live_stack):
    stack = live_stack
    stack.api("PATCH", f"/api/v2/dags/{DAG}", {"is_paused": False})
    [current] = stack.wait_for(
        lambda: _runs(stack, "scheduled"), 180, "the scheduled run of the current month"
    )
    waiting = current["dag_run_id"]
    stack.wait_for(
        lambda: stack.task_states(DAG, waiting).get("wait_for_batch") == "deferred",
        240,
        "the sensor to defer",
    )

    stack.api(
        "POST",
        f"/api/v2/dags/{DAG}/dagRuns",
        {"dag_run_id": "manual__past_2025_12", "logical_date": "2026-01-01T00:00:00Z"},
    )
    final = stack.wait_for(
        lambda: (
            stack.run_state(DAG, "manual__past_2025_12") in ("success", "failed")
            and stack.run_state(DAG, "manual__past_2025_12")
        ),
        1200,
        "the past month's run to finish",
        every=5,
    )
    states = stack.task_states(DAG, "manual__past_2025_12")
    assert final == "success", stack.explain_run(DAG, "manual__past_2025_12")
    assert set(states.values()) == {"success"} and len(states) == 15
    # The current month still waits, in the triggerer: it never held the past month up.
    assert stack.run_state(DAG, waiting) == "running"
    assert stack.task_states(DAG, waiting)["wait_for_batch"] == "deferred"

    client = mlflow_client(stack.tracking)
    mv = client.get_model_version_by_alias("telco_churn", "candidate")
    assert mv.tags["slipway.run_id"] == "manual__past_2025_12" and mv.tags["slipway.month"] == "2025-12"
    runs = task_runs(client, "telco_churn", DAG, "manual__past_2025_12")
    assert sorted(r.data.tags["slipway.task_id"] for r in runs) == sorted(states)
    assert {r.info.status for r in runs} == {"FINISHED"}
    parent = client.get_run(runs[0].data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FINISHED" and parent.data.tags["slipway.state"] == "success"
    # The gates ran side by side: at least two of them overlapped in time.
    gates = sorted(
        (r.info.start_time, r.info.end_time)
        for r in runs
        if r.data.tags["slipway.task_id"]
        in {"compare_champion", "check_fairness", "explain_model", "check_robustness", "optimise_onnx"}
    )
    assert any(b[0] < a[1] for a, b in zip(gates, gates[1:], strict=False)), gates


def _open_try(client, run_id: str, task_id: str):
    runs = [
        r
        for r in task_runs(client, "telco_churn", DAG, run_id)
        if r.data.tags["slipway.task_id"] == task_id and r.info.status == "RUNNING"
    ]
    return runs[0] if runs else None


def test_a_task_killed_midway_and_a_cleared_run_leave_a_true_record(live_stack):
    """SIGKILL of a running task under the scheduler, then the run cleared from training on and run again."""
    import os
    import signal

    stack = live_stack
    client = mlflow_client(stack.tracking)
    run_id = "manual__past_2025_11"
    # A month that is no month is refused when the trigger is pressed (the form's 400, kept open
    # with the message); no run starts.
    import urllib.error

    with pytest.raises(urllib.error.HTTPError) as refused:
        stack.api(
            "POST",
            f"/api/v2/dags/{DAG}/dagRuns",
            {"dag_run_id": "bad_month", "logical_date": "2026-03-01T00:00:00Z", "conf": {"month": "2025-13"}},
        )
    assert refused.value.code == 400 and "Invalid input for param month" in refused.value.read().decode()
    assert not [
        r
        for r in stack.api("GET", f"/api/v2/dags/{DAG}/dagRuns")["dag_runs"]
        if r["dag_run_id"] == "bad_month"
    ]
    # Named in the trigger form's month parameter, which wins over the logical date (that alone
    # would mean 2026-02).
    stack.api(
        "POST",
        f"/api/v2/dags/{DAG}/dagRuns",
        {"dag_run_id": run_id, "logical_date": "2026-03-01T00:00:00Z", "conf": {"month": "2025-11"}},
    )
    # validate_snapshot has opened its MLflow run and is inside Great Expectations: kill its process.
    stack.wait_for(
        lambda: _open_try(client, run_id, "validate_snapshot"), 600, "validate_snapshot to run", every=0.5
    )
    ti = stack.api("GET", f"/api/v2/dags/{DAG}/dagRuns/{run_id}/taskInstances/validate_snapshot")
    assert ti["pid"], ti
    os.kill(ti["pid"], signal.SIGKILL)

    final = stack.wait_for(
        lambda: stack.run_state(DAG, run_id) in ("success", "failed") and stack.run_state(DAG, run_id),
        900,
        "the run to finish after the kill",
        every=5,
    )
    assert final == "success", stack.explain_run(DAG, run_id)
    tries = {
        int(r.data.tags["slipway.try_number"]): r
        for r in task_runs(client, "telco_churn", DAG, run_id)
        if r.data.tags["slipway.task_id"] == "validate_snapshot"
    }
    assert tries[1].info.status == "FAILED" and tries[1].data.tags["slipway.state"] == "killed"
    assert tries[2].info.status == "FINISHED" and tries[2].data.tags["slipway.state"] == "success"
    assert not [
        r for r in task_runs(client, "telco_churn", DAG, run_id) if r.info.status in ("RUNNING", "SCHEDULED")
    ]

    # Cleared by an operator from train_model on ("Clear" with downstream in the UI) and run again:
    # the parent reopens, then ends again; every try stays on record.
    stack.api(
        "POST",
        f"/api/v2/dags/{DAG}/clearTaskInstances",
        {
            "dry_run": False,
            "dag_run_id": run_id,
            "task_ids": ["train_model"],
            "include_downstream": True,
            "only_failed": False,
            "reset_dag_runs": True,
        },
    )
    stack.wait_for(
        lambda: stack.run_state(DAG, run_id) in ("queued", "running"), 120, "the cleared run to start"
    )
    final = stack.wait_for(
        lambda: stack.run_state(DAG, run_id) in ("success", "failed") and stack.run_state(DAG, run_id),
        900,
        "the cleared run to finish",
        every=5,
    )
    assert final == "success"
    runs = task_runs(client, "telco_churn", DAG, run_id)
    parent = client.get_run(runs[0].data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FINISHED" and parent.data.tags["slipway.state"] == "success"
    assert (
        int(parent.data.tags["slipway.attempt"]) >= 2
        and "success" in parent.data.tags["slipway.previous_states"]
    )
    train_tries = sorted(
        int(r.data.tags["slipway.try_number"])
        for r in runs
        if r.data.tags["slipway.task_id"] == "train_model"
    )
    assert len(train_tries) == 2 and train_tries[0] < train_tries[1]
    # The backfill registered its own version (for the month named) and left candidate on the newer month.
    assert client.get_model_version_by_alias("telco_churn", "candidate").tags["slipway.month"] == "2025-12"
    # So it announced no candidate: register_model is a skip with the reason, and no asset event (no
    # rollout of an older model) came from the run, which is green.
    assert stack.task_states(DAG, run_id)["register_model"] == "skipped"
    assert "'candidate' did not move" in parent.data.tags["slipway.reason"]
    events = stack.api("GET", f"/api/v2/assets/events?source_dag_id={DAG}&source_run_id={run_id}")
    # Only the month's ingest is announced (batch scoring's asset), never a candidate.
    assert [e["name"] for e in events["asset_events"]] == ["telco_churn__landed"], events
    assert events["asset_events"][0]["extra"]["month"] == "2025-11", events
    nov = [
        v for v in client.search_model_versions("name = 'telco_churn'") if v.tags["slipway.run_id"] == run_id
    ]
    assert [v.tags["slipway.month"] for v in nov] == ["2025-11"]
    assert parent.data.tags["slipway.month"] == "2025-11"


def test_a_sweep_closes_lineage_that_mlflow_missed_at_the_end(live_stack):
    """MLflow down when a DAG run ended: its parent and a task run stayed open; `slipway sweep` closes them."""
    from tests.support.processes import slipway

    stack = live_stack
    client = mlflow_client(stack.tracking)
    runs = task_runs(client, "telco_churn", DAG, "manual__past_2025_12")
    parent_id = runs[0].data.tags["mlflow.parentRunId"]
    left_open = next(r for r in runs if r.data.tags["slipway.task_id"] == "optimise_onnx")
    for run_id in (parent_id, left_open.info.run_id):  # what a missed close leaves behind
        client.update_run(run_id, status="RUNNING")

    out = slipway(stack.env, "sweep", "--days", "2").stdout
    assert f"closed the lineage of {DAG}/manual__past_2025_12" in out
    assert client.get_run(parent_id).info.status == "FINISHED"
    closed = client.get_run(left_open.info.run_id)
    assert (
        closed.info.status == "FINISHED"
        and "Airflow has the task success" in closed.data.tags["slipway.reason"]
    )
    assert "needed closing" in slipway(stack.env, "sweep", "--days", "2").stdout.splitlines()[-1]
    assert f"{DAG}/manual__past_2025_12" not in slipway(stack.env, "sweep", "--days", "2").stdout
