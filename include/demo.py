"""``make demo``: the lifecycle on the embedded stack, on Airflow's real scheduler.

1. The demo data lands as twelve monthly batches (2025-01 ... 2025-12).
2. A first model is trained on the batches up to 2025-10 (``telco_churn__train`` with Airflow's
   ``dag.test``, in this process).
3. Airflow starts (api-server, scheduler, DAG processor, triggerer; LocalExecutor on SQLite), and
   the inference service. ``telco_churn__rollout`` of the first version runs on the scheduler:
   infra validation, no shadow or canary (no champion yet), then an approval, given through
   Airflow's REST API as an operator's client would. It becomes the champion.
4. ``telco_churn__train`` for 2025-11 runs on the scheduler; its new candidate (asset event)
   starts the rollout by itself. Meanwhile a traffic simulator replays the 2025-12 batch (rows no
   model trained on) through the service and sends each row's true label as feedback a few
   seconds later. The candidate goes through shadow and the canary steps on that traffic, the
   demo approves it, and it becomes the champion (the first one is kept as ``previous``).
5. The rollout timeline and the champion history are printed; everything is stopped.

The windows are the spec's (``include/pipelines/telco_churn.yaml``: minutes, for the demo); the
code path is the production one.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path

PIPELINE = "telco_churn"
FIRST_MONTH, NEXT_MONTH, HELD_OUT_MONTH = "2025-10", "2025-11", "2025-12"
LABEL_DELAY_S = 3.0


def _say(msg: str) -> None:
    print(f"[slipway] {msg}", flush=True)


def _free_port(preferred: int) -> int:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free to listen on
        try:
            sock.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]


def _http(method: str, url: str, body=None, headers: dict | None = None, timeout: float = 30):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url, data, {"Content-Type": "application/json", **(headers or {})}, method=method
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, {"error": exc.read().decode(errors="replace")[:500]}


class Airflow:
    """The Airflow REST API as an operator's client uses it (a bearer token from /auth/token)."""

    def __init__(self, url: str, password: str):
        self.url, self.password = url, password
        self._token: str | None = None

    def api(self, method: str, path: str, body=None) -> dict:
        if self._token is None:
            status, out = _http(
                "POST", f"{self.url}/auth/token", {"username": "admin", "password": self.password}
            )
            if status not in (200, 201):
                raise RuntimeError(f"Airflow login failed ({status}): {out}")
            self._token = out["access_token"]
        status, out = _http(method, f"{self.url}{path}", body, {"Authorization": f"Bearer {self._token}"})
        if status >= 400:
            raise RuntimeError(f"{method} {path}: {status} {out}")
        return out

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        out = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=100")
        return {t["task_id"]: t["state"] for t in out["task_instances"]}

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")["state"]


class Traffic(threading.Thread):
    """Replays held-out rows through the service; each row's label follows ``LABEL_DELAY_S`` later."""

    def __init__(self, url: str, key: str, rows: list[dict], labels: list[int]):
        super().__init__(daemon=True, name="slipway-demo-traffic")
        self.url, self.key, self.rows, self.labels = url, key, rows, labels
        self.stop = threading.Event()
        self.sent = self.failed = self.labelled = 0
        self.variants: dict[str, int] = {}
        self._pending: deque[tuple[float, str, int]] = deque()

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        i = 0
        while not self.stop.is_set():
            row, label = self.rows[i % len(self.rows)], self.labels[i % len(self.rows)]
            i += 1
            status, out = _http("POST", f"{self.url}/v1/{PIPELINE}/predict", {"inputs": row}, headers)
            if status == 200:
                self.sent += 1
                key = f"v{out['model_version']} {out['variant']}"
                self.variants[key] = self.variants.get(key, 0) + 1
                self._pending.append((time.monotonic() + LABEL_DELAY_S, out["request_id"], label))
            else:
                self.failed += 1
                time.sleep(0.5)
            while self._pending and self._pending[0][0] <= time.monotonic():
                _, request_id, y = self._pending.popleft()
                status, _ = _http(
                    "POST",
                    f"{self.url}/v1/{PIPELINE}/feedback",
                    {"request_id": request_id, "label": y},
                    headers,
                )
                self.labelled += status == 200
            time.sleep(0.01)


def _held_out_rows(spec) -> tuple[list[dict], list[int]]:
    import io
    import math

    import pandas as pd

    from include import storage
    from include.settings import get_settings

    uri = storage.join(get_settings().landing_uri, PIPELINE, f"{HELD_OUT_MONTH}.csv")
    frame = pd.read_csv(io.BytesIO(storage.read_bytes(uri)))
    entity = spec.entity_column
    rows = []
    for rec in frame.to_dict("records"):
        row = {k: rec[k] for k in spec.features.all}
        for k in spec.features.numeric:
            row[k] = (
                None
                if row[k] is None or (isinstance(row[k], float) and math.isnan(row[k]))
                else float(row[k])
            )
        for k in spec.features.binary:
            row[k] = int(row[k])
        for k in spec.features.categorical:
            row[k] = str(row[k])
        if entity:
            row[entity] = str(rec[entity])
        rows.append(row)
    positive = str(spec.target.positive_label)
    labels = [int(str(v) == positive) for v in frame[spec.target.column]]
    return rows, labels


def _wait(what: str, predicate, timeout: float, every: float = 2.0, procs: dict | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (OSError, RuntimeError, KeyError):
            value = None
        if value:
            return value
        dead = [n for n, p in (procs or {}).items() if p.poll() is not None]
        if dead:
            raise SystemExit(f"{', '.join(dead)} stopped while waiting for {what}; see .slipway/logs/demo/")
        time.sleep(every)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}; see .slipway/logs/demo/")


def _approve(af: Airflow, run_id: str, procs: dict, t0: float) -> None:
    dag = f"{PIPELINE}__rollout"

    def awaiting() -> bool:
        states = af.task_states(dag, run_id)
        failed = [t for t, s in states.items() if s == "failed"]
        if failed:
            raise SystemExit(f"rollout {run_id}: {failed} failed; the task logs in the Airflow UI say why")
        return states.get("approve_promotion") == "awaiting_input"

    _wait(f"{run_id} to ask for approval", awaiting, 900, procs=procs)
    path = f"/api/v2/dags/{dag}/dagRuns/{run_id}/taskInstances/approve_promotion/-1/hitlDetails"
    detail = af.api("GET", path)
    # An answer within a second of the task parking races Airflow's own state change (the resumed
    # task can be lost): answer after a few seconds, as a person reading the evidence would.
    time.sleep(5)
    _say(f"+{time.monotonic() - t0:5.0f} s  Required Action: {detail['subject']}")
    for line in detail["body"].splitlines():
        if line.startswith("- "):
            print(f"           {line}")
    af.api("PATCH", path, {"chosen_options": ["Approve"], "params_input": {}})
    _say(
        f"+{time.monotonic() - t0:5.0f} s  approved through the REST API (PATCH …/hitlDetails) as user admin"
    )
    state = _wait(
        f"{run_id} to finish",
        lambda: (s := af.run_state(dag, run_id)) in ("success", "failed") and s,
        300,
        procs=procs,
    )
    if state != "success":
        raise SystemExit(f"rollout {run_id} ended {state}: {af.task_states(dag, run_id)}")


def main() -> None:
    from include import stack
    from include.demo_data import seed_landing
    from include.lineage import configure_mlflow
    from include.local_run import migrate_airflow_db, run_dag
    from include.settings import get_settings
    from include.spec import load_pipeline

    t0 = time.monotonic()
    s = get_settings()
    _say(f"state folder {s.home}")
    landed = seed_landing(s.landing_uri, start="2025-01", months=12)
    _say(f"landed {len(landed)} monthly batches of {PIPELINE} in {s.landing_uri}")
    port = str(_free_port(int(os.environ.get("SLIPWAY_AIRFLOW_PORT", "8080"))))
    serve_port = _free_port(int(os.environ.get("SLIPWAY_SERVE_PORT", "8000")))
    serving_url = f"http://127.0.0.1:{serve_port}"
    os.environ["SLIPWAY_SERVING_URL"] = serving_url
    stack.configure(port)
    migrate_airflow_db()
    _say(f"training the first model on the batches up to {FIRST_MONTH} (dag.test, in this process)")
    dr = run_dag(f"{PIPELINE}__train", FIRST_MONTH)
    if str(dr.state) != "success":
        raise SystemExit("the first training run failed; the failed task's log is above")
    client = configure_mlflow().MlflowClient()
    first = int(client.get_model_version_by_alias(PIPELINE, "candidate").version)
    _say(f"+{time.monotonic() - t0:5.0f} s  {PIPELINE} version {first} registered as 'candidate'")

    logs = s.home / "logs" / "demo"
    commands = stack.airflow_components()
    commands["service"] = [
        sys.executable,
        "-m",
        "include.cli",
        "serve",
        "--port",
        str(serve_port),
        "--pipelines",
        PIPELINE,
        "--refresh-s",
        "1",
    ]
    procs: dict = {}
    traffic: Traffic | None = None
    try:
        procs = stack.launch(commands, logs)
        stack.wait_for_api(port, procs)
        af = Airflow(f"http://127.0.0.1:{port}", stack.password(Path(os.environ["AIRFLOW_HOME"])))
        _say(
            f"+{time.monotonic() - t0:5.0f} s  Airflow on http://127.0.0.1:{port} (user admin), service on {serving_url}"
        )
        _wait(
            "the DAG processor to load the rollout DAG",
            lambda: af.api("GET", f"/api/v2/dags/{PIPELINE}__rollout"),
            300,
            procs=procs,
        )
        for dag in ("rollout", "train"):
            af.api("PATCH", f"/api/v2/dags/{PIPELINE}__{dag}", {"is_paused": False})
        af.api(
            "POST",
            f"/api/v2/dags/{PIPELINE}__rollout/dagRuns",
            {"dag_run_id": "demo__first_model", "logical_date": None, "conf": {"version": first}},
        )
        _say(
            f"+{time.monotonic() - t0:5.0f} s  {PIPELINE}__rollout of version {first} started (no champion yet: infra validation, then approval)"
        )
        # The next month trains meanwhile, on the scheduler; its candidate will start the next rollout.
        af.api(
            "POST",
            f"/api/v2/dags/{PIPELINE}__train/dagRuns",
            {"dag_run_id": "demo__next_month", "logical_date": None, "conf": {"month": NEXT_MONTH}},
        )
        _say(f"+{time.monotonic() - t0:5.0f} s  {PIPELINE}__train for {NEXT_MONTH} started on the scheduler")
        _approve(af, "demo__first_model", procs, t0)
        _say(f"+{time.monotonic() - t0:5.0f} s  version {first} is the champion and serving")

        from include.serving.keys import KeyStore

        keys = KeyStore()
        keys.start()
        _, key = keys.create(["predict", "feedback"], PIPELINE, "demo traffic simulator")
        rows, labels = _held_out_rows(load_pipeline(PIPELINE))
        traffic = Traffic(serving_url, key, rows, labels)
        traffic.start()
        _say(
            f"+{time.monotonic() - t0:5.0f} s  replaying {len(rows)} held-out rows of {HELD_OUT_MONTH} through the service, labels {LABEL_DELAY_S:.0f} s later"
        )

        def next_rollout():
            runs = af.api("GET", f"/api/v2/dags/{PIPELINE}__rollout/dagRuns?run_type=asset_triggered")[
                "dag_runs"
            ]
            return runs[0]["dag_run_id"] if runs else None

        train_state = _wait(
            f"{PIPELINE}__train for {NEXT_MONTH}",
            lambda: (
                (st := af.run_state(f"{PIPELINE}__train", "demo__next_month")) in ("success", "failed") and st
            ),
            900,
            procs=procs,
        )
        if train_state != "success":
            raise SystemExit(
                f"training {NEXT_MONTH} ended {train_state}: {af.task_states(f'{PIPELINE}__train', 'demo__next_month')}"
            )
        second = int(client.get_model_version_by_alias(PIPELINE, "candidate").version)
        _say(
            f"+{time.monotonic() - t0:5.0f} s  version {second} registered as 'candidate'; its asset event schedules the rollout"
        )
        run_id = _wait("the asset-triggered rollout", next_rollout, 300, procs=procs)
        _approve(af, run_id, procs, t0)
        _say(
            f"+{time.monotonic() - t0:5.0f} s  version {second} is the champion; version {first} is 'previous'"
        )
    finally:
        if traffic is not None:
            traffic.stop.set()
            traffic.join(10)
        stack.stop(procs)
    _summary(client, traffic, t0)


def _summary(client, traffic: Traffic | None, t0: float) -> None:
    from include.tasks.promotion import aliases, champion_timeline, history

    print()
    print("=" * 78)
    events = history(client, PIPELINE)
    print(f"{PIPELINE}: aliases {aliases(client, PIPELINE)}")
    print("rollout timeline:")
    for e in events:
        extra = (
            f" ({e['reason']})"
            if e.get("reason")
            else (f" weight {e['weight']:.0%}" if e.get("weight") else "")
        )
        print(f"  {e['at']}  version {e['version']} {e['event']}{extra}")
    print("champions:")
    for span in champion_timeline(events):
        print(f"  version {span['version']} since {span['since']}: {span['why']}")
    if traffic is not None:
        print(
            f"traffic: {traffic.sent} predictions answered ({', '.join(f'{k}: {v}' for k, v in sorted(traffic.variants.items()))}), "
            f"{traffic.failed} refused, {traffic.labelled} labels sent as feedback"
        )
    print("=" * 78)
    _say(f"demo finished in {time.monotonic() - t0:.0f} s")
    _say(
        "see it all: make up (Airflow UI :8080, MLflow UI :5000); slipway history telco_churn; "
        "slipway serve serves the champion"
    )
