"""Lineage under faults: a SIGKILLed try, a DAG run that ends with runs left open, a cleared run.

The killed try is a real process killed with SIGKILL inside ``track()`` (its ``finally`` never
runs), against the same SQLite MLflow store the next try and the listener then use.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from tests.support.processes import ROOT

pytestmark = pytest.mark.e2e  # task tries in processes, one SIGKILLed

_KILLED_TRY = r"""
import sys, time
from types import SimpleNamespace
from include.lineage import track

ti = SimpleNamespace(dag_id="telco_churn__train", run_id="manual__kill", task_id="train_model",
                     try_number=1, map_index=-1)
ctx = {"ti": ti, "dag_run": SimpleNamespace(data_interval_start="2025-12-01", data_interval_end="2026-01-01",
                                            run_type="manual")}
with track("telco_churn", ctx):
    print("inside", flush=True)
    time.sleep(600)
"""


def _ctx(task_id: str, try_number: int, run_id: str = "manual__kill"):
    ti = SimpleNamespace(
        dag_id="telco_churn__train", run_id=run_id, task_id=task_id, try_number=try_number, map_index=-1
    )
    dag_run = SimpleNamespace(
        data_interval_start="2025-12-01", data_interval_end="2026-01-01", run_type="manual"
    )
    return {"ti": ti, "dag_run": dag_run}


def _runs(run_id: str = "manual__kill", task_id: str | None = None) -> dict:
    from include.tracking import configure_mlflow

    client = configure_mlflow().MlflowClient()
    exp = client.get_experiment_by_name("telco_churn")
    clause = f"tags.`slipway.run_id` = '{run_id}' and tags.`slipway.level` = 'task'"
    if task_id:
        clause += f" and tags.`slipway.task_id` = '{task_id}'"
    return {
        (r.data.tags["slipway.task_id"], int(r.data.tags["slipway.try_number"])): r
        for r in client.search_runs([exp.experiment_id], clause)
    }


def _sigkill_inside_track(env: dict) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_TRY], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "inside"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_the_next_try_closes_a_killed_try(isolated_home):
    from include.lineage import track

    _sigkill_inside_track(dict(os.environ))
    [(key, run)] = _runs().items()
    assert key == ("train_model", 1) and run.info.status == "RUNNING"  # what SIGKILL leaves behind

    with track("telco_churn", _ctx("train_model", 2)):
        pass
    runs = _runs()
    killed, retried = runs[("train_model", 1)], runs[("train_model", 2)]
    assert killed.info.status == "FAILED" and killed.data.tags["slipway.state"] == "killed"
    assert "try 1 ended without closing its run" in killed.data.tags["slipway.error"]
    assert retried.info.status == "FINISHED" and retried.data.tags["slipway.state"] == "success"


def test_the_dag_run_end_closes_what_is_left_open_to_match_airflow(isolated_home):
    from airflow.sdk.exceptions import TaskDeferred

    from include.lineage import close_parent, track

    _sigkill_inside_track(dict(os.environ))  # train_model try 1, killed; Airflow then failed the task
    try:  # a sensor left deferred when the DAG run was failed by hand
        with track("telco_churn", _ctx("wait_for_batch", 1)):
            raise TaskDeferred(trigger=None, method_name="execute_complete")
    except TaskDeferred:
        pass
    with track("telco_churn", _ctx("ingest_batch", 1)):
        pass
    assert _runs()[("wait_for_batch", 1)].info.status == "SCHEDULED"

    states = {"train_model": ("failed", 1), "wait_for_batch": ("failed", 1), "ingest_batch": ("success", 1)}
    close_parent("telco_churn", "telco_churn__train", "manual__kill", "failed", states)
    runs = _runs()
    for task in ("train_model", "wait_for_batch"):
        assert runs[(task, 1)].info.status == "FAILED", task
        assert runs[(task, 1)].data.tags["slipway.state"] == "killed"
        assert "Airflow has the task failed" in runs[(task, 1)].data.tags["slipway.error"]
    assert runs[("ingest_batch", 1)].info.status == "FINISHED"
    assert not [r for r in runs.values() if r.info.status in ("RUNNING", "SCHEDULED")]


def test_a_cleared_run_reopens_its_parent_and_keeps_every_attempt(isolated_home):
    from include.lineage import close_parent, find_parent, track
    from include.tracking import configure_mlflow

    with track("telco_churn", _ctx("train_model", 1, run_id="manual__clear")):
        pass
    close_parent("telco_churn", "telco_churn__train", "manual__clear", "failed", {})
    parent = find_parent("telco_churn", "telco_churn__train", "manual__clear")
    assert parent.info.status == "FAILED"

    time.sleep(0.01)
    with track("telco_churn", _ctx("train_model", 2, run_id="manual__clear")):  # cleared: try 2 runs
        running = configure_mlflow().MlflowClient().get_run(parent.info.run_id)
        assert running.info.status == "RUNNING" and running.data.tags["slipway.state"] == "running"
    close_parent(
        "telco_churn", "telco_churn__train", "manual__clear", "success", {"train_model": ("success", 2)}
    )
    parent = find_parent("telco_churn", "telco_churn__train", "manual__clear")
    assert parent.info.status == "FINISHED" and parent.data.tags["slipway.attempt"] == "2"
    assert "data month **2025-12**, success" in parent.data.tags["mlflow.note.content"]
    assert parent.data.tags["slipway.previous_states"] == "failed (attempt 1)"
    assert set(_runs("manual__clear")) == {("train_model", 1), ("train_model", 2)}
