"""Helpers for end-to-end runs: the ``slipway`` CLI in a subprocess with a clean environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def clean_env(**overrides: str) -> dict[str, str]:
    """The test process's environment without Airflow/MLflow/Slipway settings, plus ``overrides``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIRFLOW", "MLFLOW_", "SLIPWAY_", "AWS_", "PYTEST_"))
    }
    env["SLIPWAY_PII_KEY"] = "test-only-pii-key"
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.update(overrides)
    return env


def slipway(
    env: dict[str, str], *args: str, check: bool = True, timeout: int = 600
) -> subprocess.CompletedProcess:
    """Run ``python -m include.cli ARGS`` from the project root."""
    proc = subprocess.run(
        [sys.executable, "-m", "include.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"slipway {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def lineage(env: dict[str, str], ref: str) -> dict:
    """``slipway lineage REF --json`` parsed."""
    out = slipway(env, "lineage", ref, "--json").stdout
    return json.loads(out[out.index("{") :])


def mlflow_client(tracking_uri: str):
    """An MLflow client on ``tracking_uri``."""
    import mlflow

    return mlflow.MlflowClient(tracking_uri=tracking_uri)


def task_runs(client, pipeline: str, dag_id: str, run_id: str | None = None) -> list:
    """Nested (task-level) runs of a pipeline's DAG runs."""
    exp = client.get_experiment_by_name(pipeline)
    clause = f"tags.`slipway.dag_id` = '{dag_id}' and tags.`slipway.level` = 'task'"
    if run_id:
        clause += f" and tags.`slipway.run_id` = '{run_id}'"
    return client.search_runs([exp.experiment_id], filter_string=clause, max_results=1000)
