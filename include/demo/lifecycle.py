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
5. A drift episode: ``telco_churn__monitor`` checks the last minute of traffic (as trained: no
   drift), then the replayed customers change (``DRIFT``: a 30% price rise in ``monthly_charges``
   and two in five contracts moved to month-to-month). The monitor's next check finds the drift,
   records it and emits the drift asset event; the scheduler starts ``telco_churn__train`` by
   itself (on the newest landed month, 2025-12); its candidate's asset event starts the rollout,
   which goes through shadow and canary on the drifted traffic; the demo approves it.
6. The whole loop is printed with timestamps (monitor checks, the retrain's cause, the rollout
   timeline, the champions); everything is stopped.

The windows are the spec's (``include/pipelines/telco_churn.yaml``: minutes, for the demo); the
code path is the production one.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path

from include.times import utc_minute

PIPELINE = "telco_churn"
FIRST_MONTH, NEXT_MONTH, HELD_OUT_MONTH = "2025-10", "2025-11", "2025-12"
SCORE_MONTH = "2025-12"  # the customers of the newest month, ranked by the final champion
LABEL_DELAY_S = 3.0
DRIFT = "monthly_charges x 1.3 (a price rise); 2 in 5 contracts moved to Month-to-month"
DRIFTED_TRAFFIC_S = 50.0  # drifted rows flow this long before the monitor's check
CHECK_MINUTES = 0.75  # the window the demo's monitor runs check (the last 45 s before each run)


def drifted(rows: list[dict]) -> list[dict]:
    """The documented shift of the demo's drift episode (:data:`DRIFT`)."""
    out = []
    for i, row in enumerate(rows):
        charges = row["monthly_charges"]
        out.append(
            {
                **row,
                "monthly_charges": None if charges is None else round(charges * 1.3, 2),
                "contract": "Month-to-month" if i % 5 < 2 else row["contract"],
            }
        )
    return out


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

    def __init__(self, url: str, password: str, user: str = "admin"):
        self.url, self.password, self.user = url, password, user
        self._token: str | None = None

    def api(self, method: str, path: str, body=None) -> dict:
        if self._token is None:
            status, out = _http(
                "POST", f"{self.url}/auth/token", {"username": self.user, "password": self.password}
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


def _monitor(af: Airflow, run_id: str, procs: dict) -> dict:
    """Run ``<pipeline>__monitor`` over the last ``CHECK_MINUTES`` of traffic; its judgement."""
    dag = f"{PIPELINE}__monitor"
    af.api(
        "POST",
        f"/api/v2/dags/{dag}/dagRuns",
        {"dag_run_id": run_id, "logical_date": None, "conf": {"minutes": CHECK_MINUTES}},
    )
    state = _wait(
        f"the monitor run {run_id}",
        lambda: (st := af.run_state(dag, run_id)) in ("success", "failed") and st,
        300,
        procs=procs,
    )
    if state != "success":
        raise SystemExit(f"monitor run {run_id} ended {state}: {af.task_states(dag, run_id)}")
    value = af.api(
        "GET", f"/api/v2/dags/{dag}/dagRuns/{run_id}/taskInstances/judge_interval/xcomEntries/return_value"
    )["value"]
    return json.loads(value) if isinstance(value, str) else value


def _approve(af: Airflow, approver: Airflow, run_id: str, procs: dict, t0: float) -> None:
    from include.demo.approvals import answer

    dag = f"{PIPELINE}__rollout"

    def awaiting() -> bool:
        states = af.task_states(dag, run_id)
        failed = [t for t, s in states.items() if s == "failed"]
        if failed:
            raise SystemExit(f"rollout {run_id}: {failed} failed; the task logs in the Airflow UI say why")
        return states.get("approve_promotion") == "awaiting_input"

    _wait(f"{run_id} to ask for approval", awaiting, 900, procs=procs)

    def asked(detail: dict) -> None:
        _say(f"+{time.monotonic() - t0:5.0f} s  Required Action: {detail['subject']}")
        for line in detail["body"].splitlines():
            if line.lstrip().startswith("- "):  # the checks, and the canary's under their step
                print(f"           {line}")

    # Answered 20 s after the question, as a person reading the evidence would, and again if Airflow
    # asks again (see include/demo/approvals.py: an answer within seconds can meet Airflow 3.3.2's stale
    # defer-exit race, apache/airflow#67287, and the retry asks again after its retry delay).
    answer(approver.api, dag, run_id, "approve_promotion", "Approve", on_asked=asked, settle_s=20)
    _say(
        f"+{time.monotonic() - t0:5.0f} s  approved through the REST API (PATCH …/hitlDetails) as user "
        f"{approver.user} (four eyes: not the user who triggered the run)"
    )
    state = _wait(
        f"{run_id} to finish",
        lambda: (s := af.run_state(dag, run_id)) in ("success", "failed") and s,
        300,
        procs=procs,
    )
    if state != "success":
        raise SystemExit(f"rollout {run_id} ended {state}: {af.task_states(dag, run_id)}")


def _fresh_state(home: Path) -> None:
    """The demo tells its story from an empty state folder. An earlier demo's state is moved aside to
    ``<home>.previous`` (the one before that is removed), never mixed in: its run ids, versions and
    monitor records would change the story. A state folder named by SLIPWAY_HOME is not the demo's to
    move: the demo refuses it with the fix instead."""
    import shutil

    if not home.exists() or not any(home.iterdir()):
        return
    if os.environ.get("SLIPWAY_HOME"):
        raise SystemExit(
            f"SLIPWAY_HOME={home} already holds a state; the demo starts from an empty state folder: "
            "unset SLIPWAY_HOME (the demo then uses the project's .slipway) or point it at a new folder"
        )
    previous = home.with_name(home.name + ".previous")
    shutil.rmtree(previous, ignore_errors=True)
    home.rename(previous)
    _say(f"an earlier demo's state moved to {previous}; this demo starts from an empty {home}")


def main() -> None:
    from include.demo.data import seed_landing
    from include.deploy import embedded as stack
    from include.deploy.dag_run import migrate_airflow_db, run_dag
    from include.settings import get_settings
    from include.spec import load_pipeline
    from include.tracking import mlflow_client

    t0 = time.monotonic()
    s = get_settings()
    _fresh_state(s.home)
    _say(f"state folder {s.home}")
    landed = seed_landing(s.landing_uri, start="2025-01", months=12)
    _say(f"landed {len(landed)} monthly batches of {PIPELINE} in {s.landing_uri}")
    port = str(_free_port(int(os.environ.get("SLIPWAY_AIRFLOW_PORT", "8080"))))
    serve_port = _free_port(int(os.environ.get("SLIPWAY_SERVE_PORT", "8000")))
    serving_url = f"http://127.0.0.1:{serve_port}"
    os.environ["SLIPWAY_SERVING_URL"] = serving_url
    # The service adopts this metrics key at start; the rollout's tasks read /ready's versions with it.
    from include.serving.keys import new_presented_key

    os.environ.setdefault("SLIPWAY_SERVING_METRICS_KEY", new_presented_key())
    stack.configure(port)
    migrate_airflow_db()
    _say(f"training the first model on the batches up to {FIRST_MONTH} (dag.test, in this process)")
    dr = run_dag(f"{PIPELINE}__train", FIRST_MONTH)
    if str(dr.state) != "success":
        raise SystemExit("the first training run failed; the failed task's log is above")
    client = mlflow_client()
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
        home = Path(os.environ["AIRFLOW_HOME"])
        af = Airflow(f"http://127.0.0.1:{port}", stack.password(home))
        # A second person approves: four eyes, the user who triggers a rollout may not approve it.
        approver = Airflow(af.url, stack.password(home, "approver"), user="approver")
        _say(
            f"+{time.monotonic() - t0:5.0f} s  Airflow on http://127.0.0.1:{port} (user admin), service on {serving_url}"
        )
        _wait(
            "the DAG processor to load the rollout DAG",
            lambda: af.api("GET", f"/api/v2/dags/{PIPELINE}__rollout"),
            300,
            procs=procs,
        )
        for dag in ("rollout", "train", "monitor"):
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
        _approve(af, approver, "demo__first_model", procs, t0)
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
        _approve(af, approver, run_id, procs, t0)
        _say(
            f"+{time.monotonic() - t0:5.0f} s  version {second} is the champion; version {first} is 'previous'"
        )
        _drift_episode(af, approver, client, traffic, rows, procs, t0, run_id)
    finally:
        if traffic is not None:
            traffic.stop.set()
            traffic.join(10)
        stack.stop(procs)
    scored = _score_month(client, t0)
    _retire(t0)
    _summary(client, traffic, t0, scored)


def _retire(t0: float) -> None:
    """``<pipeline>__retire`` once (dag.test, its own process): the oldest version, superseded by the
    spec's ``retirement.keep_newest``, is archived with the reason on record."""
    _say(
        f"+{time.monotonic() - t0:5.0f} s  {PIPELINE}__retire: archiving what the retirement policy no longer needs"
    )
    done = subprocess.run(
        [sys.executable, "-m", "include.cli", "run", PIPELINE, "--purpose", "retire"], check=False
    )
    if done.returncode != 0:
        raise SystemExit("the retirement run failed; the failed task's log is above")


def _retired_lines(client) -> list[str]:
    import json

    out = []
    for mv in sorted(client.search_model_versions(f"name = '{PIPELINE}'"), key=lambda m: int(m.version)):
        if "slipway.retired" in mv.tags:
            r = json.loads(mv.tags["slipway.retired"])
            out.append(
                f"  version {mv.version}: {r.get('reason')} (no longer rolled out or served; lineage kept)"
            )
    return out


def _score_month(client, t0: float) -> dict:
    """The month's customers scored with the final champion (``<pipeline>__score``, dag.test here)."""
    import json

    champion = int(client.get_model_version_by_alias(PIPELINE, "champion").version)
    _say(f"+{time.monotonic() - t0:5.0f} s  scoring the {SCORE_MONTH} customers with version {champion}")
    # In its own process, as `slipway run` (one dag.test per process: Airflow's logging keeps the first).
    done = subprocess.run(
        [sys.executable, "-m", "include.cli", "run", PIPELINE, "--purpose", "score", "--month", SCORE_MONTH],
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"scoring {SCORE_MONTH} failed; the failed task's log is above")
    tags = client.get_model_version(PIPELINE, str(champion)).tags
    return {"version": champion, **json.loads(tags[f"slipway.scored.{SCORE_MONTH}"])}


def _ranking_lines(scored: dict, top: int = 10) -> list[str]:
    """The top of the month's ranking, each scored row joined back to its customer through ``row``
    (the file holds the hashed key only; the population holds the id)."""
    import io

    import pandas as pd

    from include import storage

    scores = pd.read_parquet(io.BytesIO(storage.read_bytes(scored["uri"])))
    ids = pd.read_csv(io.BytesIO(storage.read_bytes(scored["input"])), usecols=["customer_id"], dtype=str)
    best = scores.nlargest(top, "probability")
    return [
        f"  {i:2d}. {ids['customer_id'].iloc[int(r.row)]}  P(churn) {r.probability:.3f}  "
        f"{'offer' if r.decision else 'no offer'}"
        for i, r in enumerate(best.itertuples(), 1)
    ]


def _drift_episode(
    af: Airflow,
    approver: Airflow,
    client,
    traffic: Traffic,
    rows: list[dict],
    procs: dict,
    t0: float,
    last_rollout: str,
):
    """Monitor (no drift), drift the traffic, monitor (drift) -> retrain by the asset -> rollout."""
    time.sleep(CHECK_MINUTES * 60)  # a full window of traffic served by the new champion
    judged = _monitor(af, "demo__monitor_before_drift", procs)
    _say(
        f"+{time.monotonic() - t0:5.0f} s  {PIPELINE}__monitor on the last {CHECK_MINUTES * 60:.0f} s: "
        f"{judged['status']}, {judged['evidence']['rows']} served rows, nothing triggered"
    )
    traffic.rows = drifted(rows)
    _say(f"+{time.monotonic() - t0:5.0f} s  the customers change: {DRIFT}")
    time.sleep(DRIFTED_TRAFFIC_S)
    judged = _monitor(af, "demo__monitor_drift", procs)
    ev = judged["evidence"]
    _say(
        f"+{time.monotonic() - t0:5.0f} s  {PIPELINE}__monitor: {judged['status']} on {ev['rows']} rows; "
        f"{ev['drifted_count']} drifted check(s): "
        + ", ".join(f"{d['metric']} {d['value']:.2f}" for d in ev["drifted"][:4])
    )
    if judged["status"] != "breach" or not (judged["trigger"] == "drift" or judged["held_by"]):
        raise SystemExit(f"the drift was not acted on: {judged}")
    if judged["trigger"]:
        _say(
            f"+{time.monotonic() - t0:5.0f} s  drift asset event emitted: retraining on {judged['month']} (the newest landed month)"
        )
    else:  # the hourly scheduled check reached the drifted traffic first and triggered it
        _say(
            f"+{time.monotonic() - t0:5.0f} s  the hourly check already triggered the retrain ({judged['held_by']})"
        )

    def retrain():
        runs = af.api("GET", f"/api/v2/dags/{PIPELINE}__train/dagRuns?run_type=asset_triggered")["dag_runs"]
        return runs[0]["dag_run_id"] if runs else None

    retrain_id = _wait("the drift-triggered training run", retrain, 120, procs=procs)
    _say(f"+{time.monotonic() - t0:5.0f} s  {PIPELINE}__train started by the asset: {retrain_id}")
    state = _wait(
        "the drift-triggered training run",
        lambda: (st := af.run_state(f"{PIPELINE}__train", retrain_id)) in ("success", "failed") and st,
        900,
        procs=procs,
    )
    if state != "success":
        raise SystemExit(f"the retrain ended {state}: {af.task_states(f'{PIPELINE}__train', retrain_id)}")
    third = int(client.get_model_version_by_alias(PIPELINE, "candidate").version)
    _say(f"+{time.monotonic() - t0:5.0f} s  version {third} registered as 'candidate'; its rollout starts")

    def rollout():
        runs = af.api("GET", f"/api/v2/dags/{PIPELINE}__rollout/dagRuns?run_type=asset_triggered")["dag_runs"]
        fresh = [r["dag_run_id"] for r in runs if r["dag_run_id"] != last_rollout]
        return fresh[0] if fresh else None

    run_id = _wait("the rollout of the retrained model", rollout, 300, procs=procs)
    _approve(af, approver, run_id, procs, t0)
    _say(f"+{time.monotonic() - t0:5.0f} s  version {third}, retrained on the drift, is the champion")


def _monitor_lines() -> list[str]:
    from include.prediction_log.monitor_checks import earlier

    out = []
    for c in reversed(earlier(None, PIPELINE, "9999", limit=20)):
        if c.status == "no_traffic":
            continue
        what = f"{c.evidence.get('drifted_count', 0)} drifted" if c.drift_breach else "no drift"
        out.append(
            f"  {utc_minute(c.interval_start)} -> {utc_minute(c.interval_end)}  {c.status:<7} "
            f"{c.served_rows:>5} rows, {what}"
            + (f"; retraining triggered ({c.triggered})" if c.triggered else "")
        )
    return out


def _retrain_lines(client) -> list[str]:
    from include.tracking import experiment_id

    runs = client.search_runs(
        [experiment_id(PIPELINE)],
        filter_string="tags.`slipway.level` = 'dag_run' and tags.`slipway.trigger` = 'drift'",
    )
    return [
        f"  {r.data.tags['slipway.dag_id']} {r.data.tags['slipway.run_id']}: trigger drift, month "
        f"{r.data.tags.get('slipway.month')}, registered version {r.data.tags.get('slipway.registered_version', '-')}"
        f"\n    feedback in its snapshot: {r.data.tags.get('slipway.feedback', 'none recorded')}"
        for r in runs
    ]


def _summary(client, traffic: Traffic | None, t0: float, scored: dict | None = None) -> None:
    from include.registry import aliases, champion_timeline, history

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
        print(f"  {utc_minute(e['at'])}  version {e['version']} {e['event']}{extra}")
    print("monitor checks:")
    for line in _monitor_lines() or ["  none"]:
        print(line)
    print("retraining started by drift:")
    for line in _retrain_lines(client) or ["  none"]:
        print(line)
    print("champions:")
    for span in champion_timeline(events):
        print(f"  version {span['version']} since {utc_minute(span['since'])}: {span['why']}")
    if traffic is not None:
        print(
            f"traffic: {traffic.sent} predictions answered ({', '.join(f'{k}: {v}' for k, v in sorted(traffic.variants.items()))}), "
            f"{traffic.failed} refused, {traffic.labelled} labels sent as feedback"
        )
    print("retired:")
    for line in _retired_lines(client) or ["  none"]:
        print(line)
    if scored:
        print(
            f"{SCORE_MONTH} scored by version {scored['version']}: {scored['scored']} customers, "
            f"{scored['rejected']} rejected; {scored['uri']}"
        )
        print("highest churn risk (the retention team's call list):")
        for line in _ranking_lines(scored):
            print(line)
    print("=" * 78)
    _say(f"demo finished in {time.monotonic() - t0:.0f} s")
    _say(
        "see it all: make up-embedded (this state: Airflow UI :8080, MLflow UI :5000); slipway history telco_churn; "
        "slipway serve serves the champion"
    )
