"""A run started by ``slipway run`` (as ``make demo`` does) is recorded like a scheduler's run: the
real API server serves each task's log from where an operator clicks, and the run's duration is the
wall-clock time it took, not the months between its logical date and now.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime

import pytest

from tests.support.processes import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

DAG = "telco_churn__train"


def _lines(stack, run_id: str, task_id: str, try_number: int = 1) -> list[dict]:
    body = stack.api("GET", f"/api/v2/dags/{DAG}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}")
    return [line for line in body["content"] if isinstance(line, dict)]


def test_a_run_started_from_the_command_line_has_its_logs_and_true_duration_in_the_ui(live_stack):
    stack = live_stack
    # A month no other test of the shared stack trains: its version is this run's own.
    started = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "include.cli", "run", "telco_churn", "--month", "2025-09"],
        cwd=ROOT,
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    took = time.time() - started
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = stack.api("GET", f"/api/v2/dags/{DAG}/dagRuns?run_type=manual&limit=100")["dag_runs"]
    [run] = [r for r in runs if r["data_interval_start"].startswith("2025-09-01")]
    assert run["state"] == "success"

    # Duration: from the wall-clock start, within the time the command took.
    start = datetime.fromisoformat(run["start_date"]).timestamp()
    end = datetime.fromisoformat(run["end_date"]).timestamp()
    assert started - 5 <= start <= end <= started + took + 5, (run["start_date"], run["end_date"], took)

    # Every task's log is served by the API server, and tells the task's own story.
    states = stack.task_states(DAG, run["dag_run_id"])
    assert len(states) == 15 and set(states.values()) == {"success"}
    for task_id in states:
        lines = _lines(stack, run["dag_run_id"], task_id)
        events = " ".join(str(line.get("event", "")) for line in lines)
        assert "Task started" in events and "not found" not in events.lower(), (task_id, events[:500])
    story = " ".join(str(line.get("event", "")) for line in _lines(stack, run["dag_run_id"], "train_model"))
    assert "fitted sklearn.linear_model.LogisticRegression (binary) on train" in story
    assert "read training_snapshot:" in story and "written model:" in story
    # No noise: skops and Airflow's deprecation shims do not flood the log.
    noise = [
        line for line in _lines(stack, run["dag_run_id"], "train_model") if line.get("level") == "warning"
    ]
    assert noise == [], json.dumps(noise)[:1000]
