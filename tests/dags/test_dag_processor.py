"""A broken spec beside a valid one, on the real components: Airflow's dag-processor writes what it
parsed to the metadata database (PostgreSQL) and the scheduler schedules from there.

The valid pipeline's DAG must stay fresh (not stale), carry no import error, and accept and start
a triggered run, while the broken spec shows as the import error of ``dags/spec_errors.py``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from tests.support.pg import create_databases, drop_databases
from tests.support.processes import ROOT, clean_env

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


def _airflow(env: dict, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "airflow", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"airflow {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def metadata(tmp_path_factory):
    """A fresh PostgreSQL metadata database and an Airflow home that uses it (dropped afterwards)."""
    name = f"slipway_dagproc_{uuid.uuid4().hex[:8]}"
    create_databases(name)
    home = tmp_path_factory.mktemp("dagproc")
    pipelines = home / "pipelines"
    pipelines.mkdir()
    shutil.copy(ROOT / "include" / "pipelines" / "telco_churn.yaml", pipelines)
    env = clean_env(
        SLIPWAY_HOME=str(home / "state"),
        SLIPWAY_PIPELINES_DIR=str(pipelines),
        AIRFLOW_HOME=str(home / "airflow"),
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}",
        AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "dags"),
        AIRFLOW__CORE__PLUGINS_FOLDER=str(ROOT / "plugins"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__EXECUTOR="LocalExecutor",
        PYTHONPATH=str(ROOT),
    )
    _airflow(env, "db", "migrate")
    yield {"env": env, "db": name, "pipelines": pipelines, "home": home}
    drop_databases(name)


def _query(db: str, sql: str, *params) -> list[tuple]:
    import psycopg2

    with psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname=db) as conn:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()


def _dag_state(db: str, dag_id: str) -> tuple:
    rows = _query(db, "SELECT is_stale, has_import_errors, fileloc FROM dag WHERE dag_id = %s", dag_id)
    assert rows, f"{dag_id} is not in the metadata database"
    return rows[0]


def test_a_broken_spec_leaves_the_valid_pipeline_scheduled(metadata):
    env, db = metadata["env"], metadata["db"]
    _airflow(env, "dag-processor", "--num-runs", "1")
    assert _dag_state(db, "telco_churn__train")[:2] == (False, False)

    raw = yaml.safe_load((metadata["pipelines"] / "telco_churn.yaml").read_text())
    raw["name"] = "broken_one"
    raw["schedule"]["cron"] = "0 0 32 * *"  # day 32: Airflow would reject it
    (metadata["pipelines"] / "broken_one.yaml").write_text(yaml.safe_dump(raw))
    _airflow(env, "dag-processor", "--num-runs", "1")

    stale, import_errors, fileloc = _dag_state(db, "telco_churn__train")
    assert (stale, import_errors) == (False, False)
    assert Path(fileloc).name == "train.py"
    errors = dict(_query(db, "SELECT filename, stacktrace FROM import_error"))
    [(path, trace)] = errors.items()
    assert path.endswith("spec_errors.py")
    assert "spec broken_one.yaml: schedule.cron" in trace
    assert _query(db, "SELECT dag_id FROM dag WHERE dag_id LIKE 'broken_one%%'") == []

    _airflow(env, "dags", "unpause", "telco_churn__train")
    _airflow(env, "dags", "trigger", "telco_churn__train", "--run-id", "manual__broken_spec_beside")
    # The real scheduler takes the run up: it starts and its first task is handed to the executor.
    log = open(metadata["home"] / "scheduler.log", "wb")  # noqa: SIM115 - closed below
    scheduler = subprocess.Popen(
        [sys.executable, "-m", "airflow", "scheduler"],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        runs, handed = {}, []
        while time.monotonic() < deadline:
            runs = dict(_query(db, "SELECT run_id, state FROM dag_run WHERE dag_id = 'telco_churn__train'"))
            # Handed to the executor: a try was started for the first task of a running DAG run.
            handed = _query(
                db,
                "SELECT ti.run_id, ti.state FROM task_instance ti JOIN dag_run dr "
                "ON dr.dag_id = ti.dag_id AND dr.run_id = ti.run_id WHERE ti.dag_id = 'telco_churn__train' "
                "AND ti.task_id = 'wait_for_batch' AND dr.state = 'running' AND ti.try_number >= 1",
            )
            if handed and "manual__broken_spec_beside" in runs:
                break
            time.sleep(2)
    finally:
        os.killpg(scheduler.pid, signal.SIGTERM)
        try:
            scheduler.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(scheduler.pid, signal.SIGKILL)
            scheduler.wait(10)
        log.close()
    tail = (metadata["home"] / "scheduler.log").read_text(errors="replace")[-3000:]
    # The triggered run was accepted (it queues behind the scheduled one: one active run per DAG)...
    assert runs.get("manual__broken_spec_beside") in ("queued", "running"), f"{runs}\n{tail}"
    # ...and the scheduler is scheduling the valid pipeline: a run started and its first task was sent to
    # the executor. (Tasks themselves need the API server, which this test does not start.)
    assert handed, f"{runs}\n{tail}"
