"""Bench: the training DAG on Airflow's real scheduler, task by task, against the same DAG in one process.

``python -m benchmarks.scheduler`` builds a fresh embedded stack in a temp folder (the demo data
landed as monthly batches, Airflow on SQLite with the LocalExecutor, as ``make demo`` runs it) and
measures ``telco_churn__train`` twice:

* **in one process** (the peer): ``dag.test()`` for 2025-10, every task in this process, one
  after the other, as ``slipway run`` does; the first model is registered;
* **on the scheduler**: the api-server, scheduler, DAG processor and triggerer started, the DAG
  unpaused and triggered through the REST API for 2025-11; trigger to done measured by this
  process, and each task instance's times read back from the API.

Each task's time is split into **wait** (from the moment it could start, its last upstream's end
or the run's start, to its start on a worker: the scheduler's loop, the executor's queue, the
worker process's start) and **run** (start to end, as Airflow records it: the task process parses
the DAG file, runs the task, reports back). What a task process pays before its own code runs
is measured apart, each in a fresh interpreter: importing the DAG file and the libraries tasks
import (``--imports``, on by default).

Targets: trigger to done under 60 s on 2 cores. Reported, never enforced.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = "telco_churn"
DAG_ID = f"{PIPELINE}__train"
PEER_MONTH, MONTH = "2025-10", "2025-11"
TARGET_S = 60.0
PII_KEY = "slipway-bench-scheduler-pii-key"  # fixed: the bench must not depend on the environment's key
#: What a task process may import, timed each in a fresh interpreter (the DAG file first).
IMPORTS = {
    "the DAG file (dags/train.py)": "import runpy; runpy.run_path('dags/train.py')",
    "airflow.sdk": "import airflow.sdk",
    "mlflow": "import mlflow",
    "sklearn (+ pandas)": "import sklearn.linear_model, pandas",
    "great_expectations": "import great_expectations",
    "shap": "import shap",
    "fairlearn": "import fairlearn.metrics",
    "skl2onnx + onnxruntime": "import skl2onnx, onnxruntime",
    "evidently": "import evidently",
}


def _say(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _ts(value: str | None) -> float | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else None


def breakdown(tis: list[dict], upstream: dict[str, list[str]], run_start: float) -> list[dict]:
    """Per task: wait (ready to start) and run (start to end), in seconds, in start order."""
    ends = {t["task_id"]: _ts(t.get("end_date")) for t in tis}
    out = []
    for t in tis:
        start, end = _ts(t.get("start_date")), _ts(t.get("end_date"))
        if start is None or end is None:
            out.append(
                {"task": t["task_id"], "state": t.get("state"), "wait": None, "run": None, "start": None}
            )
            continue
        ups = [ends[u] for u in upstream.get(t["task_id"], []) if ends.get(u) is not None]
        ready = max(ups) if ups else run_start
        out.append(
            {
                "task": t["task_id"],
                "state": t.get("state"),
                "wait": max(0.0, start - ready),
                "run": end - start,
                "start": start,
            }
        )
    return sorted(out, key=lambda r: (r["start"] is None, r["start"] or 0))


def import_times(env: dict[str, str]) -> list[tuple[str, float]]:
    """Seconds each import takes in a fresh interpreter, the interpreter's own start subtracted."""

    def timed(code: str) -> float:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, capture_output=True)
        return time.perf_counter() - t0

    bare = min(timed("pass") for _ in range(3))
    return [("python itself", bare)] + [
        (name, max(0.0, timed(code) - bare)) for name, code in IMPORTS.items()
    ]


def _table(rows: list[dict], title: str) -> list[str]:
    out = [title, "| task | state | wait s | run s |", "|---|---|---:|---:|"]
    for r in rows:
        wait = "" if r["wait"] is None else f"{r['wait']:.1f}"
        run = "" if r["run"] is None else f"{r['run']:.1f}"
        out.append(f"| {r['task']} | {r['state']} | {wait} | {run} |")
    done = [r for r in rows if r["run"] is not None]
    if done:
        out.append(f"| **sum** | | {sum(r['wait'] for r in done):.1f} | {sum(r['run'] for r in done):.1f} |")
    return out


def run(args) -> str:
    started = time.perf_counter()
    base = Path(tempfile.mkdtemp(prefix="slipway-bench-scheduler-"))
    from include.procenv import clean_env

    os.environ.clear()
    os.environ.update(
        clean_env(
            SLIPWAY_HOME=str(base / "state"),
            SLIPWAY_PII_KEY=PII_KEY,
            MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false",
        )
    )
    from include.demo.data import seed_landing
    from include.demo.lifecycle import Airflow, _free_port
    from include.deploy import embedded as stack
    from include.deploy.dag_run import migrate_airflow_db, run_dag
    from include.settings import get_settings

    s = get_settings()
    procs: dict = {}
    lines: list[str] = []
    try:
        seed_landing(s.landing_uri, start="2025-01", months=12)
        port = str(_free_port(18080))
        stack.configure(port)
        migrate_airflow_db()
        env = dict(os.environ)
        imports = import_times(env) if args.imports else []

        _say(f"{DAG_ID} for {PEER_MONTH} in one process (dag.test)")
        t0 = time.perf_counter()
        dr = run_dag(DAG_ID, PEER_MONTH)
        peer_s = time.perf_counter() - t0
        if str(dr.state) != "success":
            raise SystemExit(f"the in-process run ended {dr.state}; its log is under {s.home}/logs")
        peer_rows = _in_process_breakdown(dr.run_id)

        _say("starting Airflow (api-server, scheduler, dag-processor, triggerer)")
        procs = stack.launch(stack.airflow_components(), base / "logs")
        stack.wait_for_api(port, procs)
        af = Airflow(f"http://127.0.0.1:{port}", stack.password(Path(os.environ["AIRFLOW_HOME"])))
        deadline = time.monotonic() + 300
        while True:
            try:
                dag = af.api("GET", f"/api/v2/dags/{DAG_ID}")
                break
            except RuntimeError:
                if time.monotonic() > deadline or any(p.poll() is not None for p in procs.values()):
                    raise SystemExit(
                        f"the DAG processor did not load {DAG_ID}; logs in {base / 'logs'}"
                    ) from None
                time.sleep(1)
        af.api("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False})
        tasks = af.api("GET", f"/api/v2/dags/{DAG_ID}/tasks")["tasks"]
        upstream: dict[str, list[str]] = {t["task_id"]: [] for t in tasks}
        for t in tasks:
            for d in t.get("downstream_task_ids", []):
                upstream.setdefault(d, []).append(t["task_id"])
        _say(f"{DAG_ID} for {MONTH} triggered on the scheduler")
        t0 = time.perf_counter()
        triggered_at = time.time()
        af.api(
            "POST",
            f"/api/v2/dags/{DAG_ID}/dagRuns",
            {"dag_run_id": "bench", "logical_date": None, "conf": {"month": MONTH}},
        )
        state = "queued"
        while state not in ("success", "failed") and time.perf_counter() - t0 < args.timeout:
            time.sleep(0.5)
            state = af.run_state(DAG_ID, "bench")
        sched_s = time.perf_counter() - t0
        tis = af.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/bench/taskInstances?limit=100")["task_instances"]
        sched_rows = breakdown(tis, upstream, triggered_at)
        last_end = max((_ts(t.get("end_date")) or 0) for t in tis)
        first_start = min((_ts(t.get("start_date")) or 1e18) for t in tis)

        lines += [
            f"Slipway scheduler bench: {DAG_ID} ({len(tis)} tasks), embedded stack (LocalExecutor, SQLite), "
            f"dag {dag.get('dag_display_name', DAG_ID)}",
            f"machine: {os.cpu_count()} cores; Python {platform.python_version()}; "
            f"parallelism {os.environ.get('AIRFLOW__CORE__PARALLELISM')}",
            "",
            "| run | trigger to done s | target |",
            "|---|---:|---|",
            f"| on the scheduler ({MONTH}) | {sched_s:.1f} | < {TARGET_S:.0f} s: "
            + ("met" if sched_s < TARGET_S and state == "success" else "NOT met")
            + " |",
            f"| in one process, dag.test ({PEER_MONTH}) | {peer_s:.1f} | (the peer) |",
            "",
            f"on the scheduler: run {state}; trigger to first task start {first_start - triggered_at:.1f} s, "
            f"last task end to done seen {triggered_at + sched_s - last_end:.1f} s",
            "",
            *_table(
                sched_rows, "On the scheduler (wait: ready to start on a worker; run: as Airflow records it):"
            ),
            "",
            *_table(peer_rows, "In one process (dag.test):"),
        ]
        if imports:
            lines += ["", "What a task process can pay before its code runs (fresh interpreter each):"]
            lines += ["| import | s |", "|---|---:|"] + [f"| {n} | {v:.2f} |" for n, v in imports]
        lines.append(f"\ntotal bench time {time.perf_counter() - started:.0f} s")
    finally:
        stack.stop(procs)
        if args.keep:
            _say(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    return "\n".join(lines)


def _in_process_breakdown(run_id: str) -> list[dict]:
    """The in-process run's task instances, from Airflow's database (dag.test records them)."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        tis = session.scalars(
            select(TaskInstance).where(TaskInstance.dag_id == DAG_ID, TaskInstance.run_id == run_id)
        ).all()
        rows = [
            {
                "task": ti.task_id,
                "state": str(ti.state),
                "wait": 0.0,
                "run": (ti.end_date - ti.start_date).total_seconds()
                if ti.start_date and ti.end_date
                else None,
                "start": ti.start_date.timestamp() if ti.start_date else None,
            }
            for ti in tis
        ]
    rows.sort(key=lambda r: (r["start"] is None, r["start"] or 0))
    prev_end = None
    for r in rows:  # one after the other: the gap to the previous task's end is dag.test's own loop
        if r["start"] is not None and prev_end is not None:
            r["wait"] = max(0.0, r["start"] - prev_end)
        if r["start"] is not None and r["run"] is not None:
            prev_end = r["start"] + r["run"]
    return rows


def _terminate(signum, frame):  # SIGTERM runs the finally blocks: Airflow stopped, temp folder removed
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.scheduler", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--timeout", type=float, default=900, help="give up on the scheduled run after this")
    parser.add_argument("--no-imports", dest="imports", action="store_false", help="skip the import timings")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (logs, databases)")
    signal.signal(signal.SIGTERM, _terminate)
    print(run(parser.parse_args(argv)), flush=True)


if __name__ == "__main__":
    main()
