"""One real Airflow stack per test session: api-server, scheduler, dag-processor and triggerer as
separate processes (LocalExecutor), Airflow metadata and MLflow on the machine's PostgreSQL, REST
calls with a real login. Started lazily by the first test that asks for it, stopped at the end.

End-to-end runs on the real scheduler cost 10-20 s a task: tests share this stack instead of
starting their own.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

from include.serving.keys import new_presented_key
from tests.support.pg import create_databases, drop_databases
from tests.support.processes import ROOT, clean_env, free_port, wait_until

COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
#: The shipped multiclass and regression pipelines, on the stack beside telco_churn.
TASK_KIND_PIPELINES = ("job_runtime", "salary_benchmark")
PASSWORD = uuid.uuid4().hex


class LiveStack:
    """A started Airflow stack and the state folder its pipelines use."""

    def __init__(self, base: Path):
        self.base = base
        self.home = base / "state"
        self.pipelines = base / "pipelines"
        self.port = free_port()
        suffix = uuid.uuid4().hex[:8]
        self.databases = {
            "airflow": f"slipway_live_{suffix}_af",
            "mlflow": f"slipway_live_{suffix}_ml",
            "scores": f"slipway_live_{suffix}_sc",  # where telco_churn__score delivers
        }
        self.procs: dict[str, subprocess.Popen] = {}
        self._tokens: dict[str, str] = {}
        self.url = f"http://127.0.0.1:{self.port}"
        self.serving_port = free_port()  # the inference service the rollout DAG drives, when started
        self.metrics_key = new_presented_key()
        self.alert_port = free_port()  # the monitor's alert webhook (a test listens there when it needs it)
        self.tracking = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{self.databases['mlflow']}"
        airflow_home = base / "airflow"
        airflow_home.mkdir(parents=True)
        passwords = airflow_home / "passwords.json"
        # The operator triggers runs; the approver answers promotions (four eyes).
        passwords.write_text(json.dumps({"operator": PASSWORD, "approver": PASSWORD}))
        self.env = clean_env(
            SLIPWAY_HOME=str(self.home),
            SLIPWAY_PIPELINES_DIR=str(self.pipelines),
            MLFLOW_TRACKING_URI=self.tracking,
            SLIPWAY_SERVING_URL=f"http://127.0.0.1:{self.serving_port}",
            # The service adopts it; the rollout's tasks and the tests read /ready's versions with it.
            SLIPWAY_SERVING_METRICS_KEY=self.metrics_key,
            SLIPWAY_MLFLOW_ARTIFACT_URI=(self.home / "mlflow-artifacts").as_uri(),
            AIRFLOW_HOME=str(airflow_home),
            AIRFLOW_CONN_SLIPWAY_ALERTS=json.dumps(
                {"conn_type": "http", "host": "127.0.0.1", "port": self.alert_port, "schema": "http"}
            ),
            AIRFLOW_CONN_SLIPWAY_SCORES=json.dumps(
                {
                    "conn_type": "postgres",
                    "host": "127.0.0.1",
                    "port": 5432,
                    "login": "postgres",
                    "schema": self.databases["scores"],
                }
            ),
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=(
                f"postgresql+psycopg2://postgres@127.0.0.1:5432/{self.databases['airflow']}"
            ),
            AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "dags"),
            AIRFLOW__CORE__PLUGINS_FOLDER=str(ROOT / "plugins"),
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            AIRFLOW__CORE__EXECUTOR="LocalExecutor",
            AIRFLOW__CORE__PARALLELISM="4",
            AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{self.url}/execution/",
            AIRFLOW__API__HOST="127.0.0.1",
            AIRFLOW__API__PORT=str(self.port),
            AIRFLOW__API__WORKERS="1",
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="operator:admin,approver:user",
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(passwords),
            AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(free_port()),
            AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT=str(free_port()),
            AIRFLOW__SCHEDULER__DAG_DIR_LIST_INTERVAL="5",
            AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="5",
            AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC="2",
            PYTHONPATH=str(ROOT),
        )

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> LiveStack:
        create_databases(*self.databases.values())
        self.pipelines.mkdir()
        raw = yaml.safe_load((ROOT / "include" / "pipelines" / "telco_churn.yaml").read_text())
        # The current month's batch never lands in these tests: keep its run waiting, not skipped.
        raw["source"]["deadline_days"] = 90
        # A killed task's retry after seconds, not a minute (the retry path itself is unchanged).
        raw["retries"] = {"count": 2, "delay_seconds": 5, "max_delay_seconds": 10}
        # The ONNX gate's wall-clock p99 (300 single-row calls, ~0.1 ms each when idle) is judged on
        # a worker that shares 2 cores with the whole stack and the rest of the suite: one
        # preempted call decides a p99 there (5.41 ms against 5.0 was seen). The gate's pass/fail
        # path is tested in tests/tasks; here it must not fail a run for the machine's load.
        raw["gates"]["onnx"]["max_p99_latency_ms"] = 100.0
        # Rollout windows of seconds, not hours (the code path is the production one); latency
        # budgets with room for a 2-core machine running the whole stack.
        window = {"min_requests": 40, "max_duration_minutes": 4}
        raw["rollout"] = {
            "check_interval_seconds": 3,
            "infra": {"requests": 50, "max_p99_latency_ms": 500},
            "shadow": {**window, "max_p99_latency_ms": 250},
            "canary": {
                "steps": [{**window, "weight": 0.5}],
                "guardrails": {"min_requests_per_check": 20, "max_p99_latency_ms": 250},
            },
            "approval": {"timeout_hours": 0.01},  # 36 s: the timeout path runs in the suite
        }
        # The monitor test writes hours of traffic on 1 March 2026 and checks them; a cool-down of two
        # hours. Hourly on that day only: the scheduler's own latest interval (22:00-23:00 that day)
        # has no traffic, and no check of a real hour (the other tests' traffic) runs in a session.
        raw["monitoring"] = {
            "schedule": "0 * 1 3 *",
            "cooldown_hours": 2,
            "drift": {"min_rows": 200, "report_sample_rows": 500},
        }
        # Batch scoring by hand in this stack (the other tests' ingests must not start scoring runs);
        # a population file beside the batches, delivered to a PostgreSQL table.
        raw["scoring"] = {
            "schedule": "manual",
            "population": "population-{month}.csv",
            "max_reject_share": 0.05,
            "chunk_rows": 2000,
            "deliver": [{"connection": "slipway_scores", "table": "telco_scores"}],
        }
        # Retirement keeps one newest version besides the protected ones (the retire test registers two).
        raw["retirement"] = {**raw.get("retirement", {}), "keep_newest": 1}
        # Retention reaching back to just after what the session dates in the past: the monitor test's
        # traffic of 1 March 2026 and the score test's month 2025-12 are purged by the retire test's
        # run; everything the session made today stays.
        today = datetime.now(UTC).date()
        raw["retention"] = {
            "prediction_log_days": (today - date(2026, 3, 2)).days,
            "feedback_days": (today - date(2026, 3, 2)).days,
            "scores_days": (today - date(2026, 1, 2)).days,
        }
        (self.pipelines / "telco_churn.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        # The multiclass and the regression pipeline, with the same short windows; their canary's loss
        # test judged from 20 labelled customers a side, and their approval answered, not timed out.
        for kind in TASK_KIND_PIPELINES:
            other = yaml.safe_load((ROOT / "include" / "pipelines" / f"{kind}.yaml").read_text())
            for key in ("source", "retries", "monitoring"):
                other[key] = {**other.get(key, {}), **raw[key]}
            other["gates"]["onnx"]["max_p99_latency_ms"] = 100.0
            other["scoring"] = {"schedule": "manual"}
            other["rollout"] = {
                **raw["rollout"],
                "shadow": {**other.get("rollout", {}).get("shadow", {}), **raw["rollout"]["shadow"]},
                "canary": {
                    **raw["rollout"]["canary"],
                    # A second month's model is not worse in truth, but 20-80 labelled rows a side can say
                    # so by chance: a wage's squared error is heavy-tailed (one high earner in a sample moves
                    # its mean), and p = 0.047 and 0.048 were seen even with a 50% margin. A 50% margin and
                    # 99.9% confidence keep the test on the code path, not the dice.
                    "guardrails": {
                        **raw["rollout"]["canary"]["guardrails"],
                        "min_labelled_per_variant": 20,
                        "max_metric_degradation": 0.5,
                        "confidence": 0.999,
                        "interim_confidence": 0.9999,
                    },
                },
                "approval": {"timeout_hours": 0.25},
            }
            (self.pipelines / f"{kind}.yaml").write_text(yaml.safe_dump(other, sort_keys=False))
        self.cli("db", "migrate", timeout=600)
        for pipeline in ("telco_churn", *TASK_KIND_PIPELINES):
            subprocess.run(
                [sys.executable, "-m", "include.cli", "seed", pipeline],
                cwd=ROOT,
                env=self.env,
                check=True,
                capture_output=True,
            )
        logs = self.base / "logs"
        logs.mkdir()
        for component in COMPONENTS:
            out = open(logs / f"{component}.log", "wb")  # noqa: SIM115 - closed with the process
            # The scheduler as the embedded stack starts it: task libraries imported before it forks tasks.
            module = "include.deploy.preloaded" if component == "scheduler" else "airflow"
            self.procs[component] = subprocess.Popen(
                [sys.executable, "-m", module, component],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def startup_log() -> str:  # the first component that exited, else the api-server
            dead = [c for c, p in self.procs.items() if p.poll() is not None]
            return self.log(dead[0] if dead else "api-server")

        wait_until(
            lambda: self.api("GET", "/api/v2/dags/telco_churn__train").get("dag_id"),
            240,
            "the stack to come up (the api-server serving telco_churn__train)",
            every=2,
            retry_on=(OSError,),  # URLError and ConnectionError included
            procs=self.procs,
            log=startup_log,
            error=RuntimeError,
        )
        return self

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        drop_databases(*self.databases.values())
        shutil.rmtree(self.base, ignore_errors=True)

    # ------------------------------------------------------------------ helpers
    def cli(self, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [sys.executable, "-m", "airflow", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
        return proc

    def log(self, component: str) -> str:
        path = self.base / "logs" / f"{component}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def token(self, user: str = "operator") -> str:
        if user not in self._tokens:
            body = json.dumps({"username": user, "password": PASSWORD}).encode()
            req = urllib.request.Request(
                f"{self.url}/auth/token",
                data=body,
                method="POST",
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(req, timeout=30) as resp:
                self._tokens[user] = json.loads(resp.read())["access_token"]
        return self._tokens[user]

    def api(self, method: str, path: str, body: dict | None = None, user: str = "operator") -> dict:
        req = urllib.request.Request(
            f"{self.url}{path}",
            data=json.dumps(body).encode() if body is not None else None,
            method=method,
            headers={"Authorization": f"Bearer {self.token(user)}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read() or b"{}")

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        out = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=100")
        return {t["task_id"]: t["state"] for t in out["task_instances"]}

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")["state"]

    def explain_run(self, dag_id: str, run_id: str) -> str:
        """For an assertion message: every task's state and try, each unfinished or failed task's logs
        (all tries, as the UI shows them), and the scheduler lines that name the run. Never raises:
        a task that failed without running has no log, and that is worth saying too."""
        try:
            tis = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=100")
        except Exception as exc:  # noqa: BLE001 - a diagnostic must not hide the real failure
            return f"(task instances unreadable: {exc})"
        lines = [f"{t['task_id']}: {t['state']} (try {t.get('try_number')})" for t in tis["task_instances"]]
        for t in tis["task_instances"]:
            if t["state"] in ("success", "skipped", None):
                continue
            for attempt in range(1, int(t.get("try_number") or 0) + 1):
                path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{t['task_id']}/logs/{attempt}"
                try:
                    body = self.api("GET", path)
                    text = "\n".join(
                        str(line.get("event"))
                        + (f"\n{json.dumps(line['error_detail'])[:3000]}" if line.get("error_detail") else "")
                        for line in body.get("content", [])
                        if isinstance(line, dict)
                    )
                except Exception as exc:  # noqa: BLE001
                    text = f"(no log: {exc})"
                lines.append(f"--- {t['task_id']} try {attempt}:\n{text[-3000:]}")
        path = self.base / "logs" / "scheduler.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        named = [line for line in text.splitlines() if run_id in line]
        lines.append("--- scheduler lines naming the run:\n" + "\n".join(named[-40:]))
        return "\n".join(lines)

    def wait_for(self, predicate, timeout: float, what: str, every: float = 3.0):
        return wait_until(predicate, timeout, what, every=every, log=lambda: self.log("scheduler"))


def http_json(method: str, url: str, body=None, key: str | None = None) -> tuple[int, dict]:
    """One JSON call to the inference service: (status, body); an error status's body under ``error``."""
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
    req = urllib.request.Request(
        url, json.dumps(body).encode() if body is not None else None, headers, method=method
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, {"error": exc.read().decode()[:300]}


@contextlib.contextmanager
def serving(stack: LiveStack, pipelines: tuple[str, ...], log_name: str) -> Iterator[str]:
    """`slipway serve` of ``pipelines`` on the stack's serving port (the rollout DAG drives it), with
    the stack's registry and prediction log; yields its URL, stopped on exit."""
    url = f"http://127.0.0.1:{stack.serving_port}"
    out = open(stack.base / log_name, "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "include.cli",
            "serve",
            "--port",
            str(stack.serving_port),
            "--refresh-s",
            "1",
            "--pipelines",
            ",".join(pipelines),
        ],
        cwd=ROOT,
        env=stack.env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until(
            lambda: http_json("GET", f"{url}/health")[0] == 200,
            120,
            "the service to start",
            every=0.5,
            retry_on=(OSError,),
            procs={"slipway serve": proc},
        )
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        out.close()


class Webhook:
    """The stack's alert connection: a webhook on its alert port, keeping the JSON bodies it receives."""

    def __init__(self, port: int):
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
