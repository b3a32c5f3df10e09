"""On the real scheduler: the multiclass and the regression pipeline live a model's life side by side.

Each trains two months (``slipway run``); the first version is made champion by hand (the first
approval's path is telco_churn's rollout test). Then, on the shared stack and the real service:

1. the second version rolls out through ``<pipeline>__rollout``: infra validation, shadow and a
   canary on replayed traffic whose true labels come back as feedback (a class; a number), the
   canary's per-entity loss test of the task (log loss; squared error), and an approval over REST;
2. drifted traffic in the prediction log makes ``<pipeline>__monitor`` breach on its task's
   prediction statistic and features, and the drift asset event starts a retrain on the scheduler.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from include.demo.approvals import answer
from tests.support.live import TASK_KIND_PIPELINES, Webhook, http_json, serving
from tests.support.processes import mlflow_client, slipway, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

APPROVAL = "approve_promotion"
DAY = datetime(2026, 3, 1, tzinfo=UTC)
LOSS = {"job_runtime": "log_loss", "salary_benchmark": "squared_error"}


def _dataset(pipeline: str):
    from include.demo.data import DATASETS

    return DATASETS[pipeline]()


class Traffic(threading.Thread):
    """Replayed customers: each row predicted once, its true label sent back as feedback."""

    def __init__(self, url: str, key: str, pipeline: str):
        super().__init__(daemon=True)
        from include.spec import load_pipeline

        self.url, self.key, self.pipeline = url, key, pipeline
        self.spec = load_pipeline(pipeline)
        self.stop = threading.Event()
        self.answers: list[tuple[int, dict]] = []
        self.labels: list[int] = []

    def run(self) -> None:
        import math

        frame = _dataset(self.pipeline).sample(frac=1.0, random_state=1)
        entity, target = self.spec.entity_column, self.spec.target.column
        for rec in frame.to_dict("records"):
            if self.stop.is_set():
                return
            row = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in rec.items()}
            inputs = {k: row[k] for k in [entity, *self.spec.features.all]}
            status, reply = http_json(
                "POST", f"{self.url}/v1/{self.pipeline}/predict", {"inputs": inputs}, self.key
            )
            self.answers.append((status, reply))
            if status == 200:
                label = row[target] if self.spec.task == "multiclass" else float(row[target])
                body = {"request_id": reply["request_id"], "label": label}
                self.labels.append(
                    http_json("POST", f"{self.url}/v1/{self.pipeline}/feedback", body, self.key)[0]
                )
            time.sleep(0.02)


@pytest.fixture(scope="module")
def served(live_stack):
    """`slipway serve` of both pipelines on the stack's serving port (the rollout DAG drives it)."""
    stack = live_stack
    with serving(stack, TASK_KIND_PIPELINES, "serve-kinds.log") as url:
        keys = {
            p: slipway(
                stack.env, "keys", "create", "--scopes", "predict,feedback", "--pipeline", p
            ).stdout.split()[0]
            for p in TASK_KIND_PIPELINES
        }
        yield url, keys
        for p in TASK_KIND_PIPELINES:
            stack.api("PATCH", f"/api/v2/dags/{p}__rollout", {"is_paused": True})


def test_each_task_kind_rolls_out_through_shadow_and_canary_and_retrains_on_drift(live_stack, served):
    stack = live_stack
    url, keys = served
    client = mlflow_client(stack.tracking)
    for p in TASK_KIND_PIPELINES:  # two months: the first becomes the champion, the second the candidate
        for month in ("2025-11", "2025-12"):
            slipway(stack.env, "run", p, "--month", month, timeout=900)
        assert client.get_registered_model(p).aliases == {"candidate": 2}
        client.set_registered_model_alias(p, "champion", "1")
        stack.api("PATCH", f"/api/v2/dags/{p}__rollout", {"is_paused": False})

    def serving_both() -> bool:
        status, body = http_json("GET", f"{url}/ready", key=stack.metrics_key)
        return status == 200 and all(body["pipelines"][p]["champion"] == 1 for p in TASK_KIND_PIPELINES)

    wait_until(serving_both, 60, "the service to serve both champions", every=1)

    traffic = {p: Traffic(url, keys[p], p) for p in TASK_KIND_PIPELINES}
    approvals: dict[str, dict] = {}

    def approve(p: str) -> None:
        def approver_api(method, path, body=None):
            return stack.api(method, path, body, user="approver")

        approvals[p] = answer(
            approver_api, f"{p}__rollout", "rollout__kinds", APPROVAL, "Approve", timeout=900
        )

    approvers = [threading.Thread(target=approve, args=(p,), daemon=True) for p in TASK_KIND_PIPELINES]
    for t in traffic.values():
        t.start()
    try:
        for p in TASK_KIND_PIPELINES:
            stack.api(
                "POST",
                f"/api/v2/dags/{p}__rollout/dagRuns",
                {"dag_run_id": "rollout__kinds", "logical_date": None, "conf": {"version": 2}},
            )
        for t in approvers:
            t.start()
        for p in TASK_KIND_PIPELINES:
            dag = f"{p}__rollout"
            final = stack.wait_for(
                lambda dag=dag: (
                    s if (s := stack.run_state(dag, "rollout__kinds")) in ("success", "failed") else None
                ),
                900,
                f"the rollout of {p}",
                every=5,
            )
            assert final == "success", stack.explain_run(dag, "rollout__kinds")
    finally:
        for t in traffic.values():
            t.stop.set()
            t.join(30)
    for t in approvers:
        t.join(30)

    for p in TASK_KIND_PIPELINES:
        aliases = client.get_registered_model(p).aliases
        assert aliases.get("champion") == 2 and aliases.get("previous") == 1, aliases
        mv = client.get_model_version(p, "2")
        for gate in ("infra_validation", "shadow", "canary", "approval"):
            assert mv.tags[f"slipway.blessing.{gate}"] == "passed", (p, gate, mv.tags)
        assert approvals[p]["subject"].startswith(f"Promote {p} version 2?"), approvals[p]
        statuses = {s for s, _ in traffic[p].answers}
        assert statuses == {200}, (p, statuses)
        assert set(traffic[p].labels) == {200}, (p, set(traffic[p].labels))
        versions = {a.get("model_version") for _, a in traffic[p].answers}
        assert versions >= {1, 2}, (p, versions)  # the canary routed customers to the candidate
        first = traffic[p].answers[0][1]
        assert ("class" in first) if p == "job_runtime" else ("prediction" in first), first
    for p in TASK_KIND_PIPELINES:  # the canary judged the task's own loss on labelled customers of both
        checks = _canary_checks(stack, client, p)
        assert checks.get(f"{LOSS[p]}_worse_pvalue") == "passed", (p, checks)

    # The retrains' candidates are not rolled out here: nobody sends traffic any more.
    for p in TASK_KIND_PIPELINES:
        stack.api("PATCH", f"/api/v2/dags/{p}__rollout", {"is_paused": True})
    _drift_retrains(stack, client)


def _canary_checks(stack, client, pipeline: str) -> dict[str, str]:
    """The canary's last look, metric -> status, from the rollout's record (``slipway.rollout.canary_uri``)."""
    import mlflow

    mlflow.set_tracking_uri(stack.tracking)
    uri = client.get_model_version(pipeline, "2").tags["slipway.rollout.canary_uri"]
    steps = mlflow.artifacts.load_dict(uri)["steps"]
    return {r["metric"]: r["status"] for r in steps[-1]["results"]}


def _parent_tag(client, pipeline: str, dag_id: str, run_id: str, tag: str) -> str:
    """A tag of the DAG run's MLflow parent run (read through one of its task runs)."""
    from tests.support.processes import task_runs

    child = task_runs(client, pipeline, dag_id, run_id)[0]
    return client.get_run(child.data.tags["mlflow.parentRunId"]).data.tags.get(tag, "")


def _drift_retrains(stack, client) -> None:
    webhook = Webhook(stack.alert_port)
    try:
        _drift(stack, client)
    finally:
        webhook.close()
    assert {a["pipeline"] for a in webhook.received} == set(TASK_KIND_PIPELINES), webhook.received


def _drift(stack, client) -> None:
    import tempfile
    from pathlib import Path

    import mlflow
    import pandas as pd

    from include.frames import feature_frame
    from include.model_files import onnx_inputs
    from include.prediction_log.rows import PredictionRow
    from include.prediction_log.writer import PredictionLog
    from include.registry import load_version
    from include.spec import load_pipeline

    mlflow.set_tracking_uri(stack.tracking)
    drift = {
        "job_runtime": lambda r: {**r, "compounds": r["compounds"] * 5, "protocol": "O"},
        "salary_benchmark": lambda r: {**r, "age": r["age"] + 20, "education": "5. Advanced Degree"},
    }
    rows_written = []
    for p in TASK_KIND_PIPELINES:
        spec = load_pipeline(p)
        frame = _dataset(p).head(400)
        rows = [drift[p]({k: rec[k] for k in spec.features.all}) for rec in frame.to_dict("records")]
        with tempfile.TemporaryDirectory() as tmp:
            model = load_version(client, p, 2, Path(tmp))
            raw = model.predict(onnx_inputs(spec, feature_frame(pd.DataFrame(rows), spec)))
            decided, logged = model.decide(raw), model.logged_score(raw)
        for i, row in enumerate(rows):
            rows_written.append(
                PredictionRow(
                    uuid.uuid4().hex,
                    p,
                    None,
                    2,
                    "champion",
                    True,
                    row,
                    float(logged[i]),
                    decided[i].item(),
                    0.1,
                    DAY + timedelta(hours=8, seconds=i * 9),
                    None,
                    tuple(float(x) for x in raw[i]) if spec.task == "multiclass" else None,
                )
            )
    log = PredictionLog(f"sqlite:///{stack.home / 'serving' / 'serving.db'}")
    log.start()
    try:
        log.record_sync(rows_written)
    finally:
        log.close()
    for p in TASK_KIND_PIPELINES:
        for dag in (f"{p}__monitor", f"{p}__train"):
            stack.api("PATCH", f"/api/v2/dags/{dag}", {"is_paused": False})
        logical = (DAY + timedelta(hours=9)).isoformat().replace("+00:00", "Z")
        stack.api(
            "POST",
            f"/api/v2/dags/{p}__monitor/dagRuns",
            {"dag_run_id": "monitor__09", "logical_date": logical},
        )
    for p in TASK_KIND_PIPELINES:
        dag = f"{p}__monitor"
        stack.wait_for(
            lambda dag=dag: stack.run_state(dag, "monitor__09") in ("success", "failed"),
            300,
            f"{dag} run",
            every=2,
        )
        assert stack.run_state(dag, "monitor__09") == "success", stack.explain_run(dag, "monitor__09")
        path = f"/api/v2/dags/{dag}/dagRuns/monitor__09/taskInstances/judge_interval/xcomEntries/return_value"
        value = stack.api("GET", path)["value"]
        judged = json.loads(value) if isinstance(value, str) else value
        assert judged["status"] == "breach" and judged["trigger"] == "drift", (p, judged)
        drifted = {d["metric"] for d in judged["evidence"]["drifted"]}
        expected = "psi[compounds]" if p == "job_runtime" else "psi[age]"
        assert expected in drifted, (p, drifted)
        retrains = stack.wait_for(
            lambda p=p: (
                stack.api("GET", f"/api/v2/dags/{p}__train/dagRuns?run_type=asset_triggered")["dag_runs"]
                or None
            ),
            120,
            f"the drift-triggered training run of {p}",
        )
        assert len(retrains) == 1, retrains
        stack.api("PATCH", f"/api/v2/dags/{dag}", {"is_paused": True})
    # Each retrain runs to the end on the scheduler: the month again, with the labels the canary's
    # customers sent back as a feedback batch, so a new version becomes the candidate by itself.
    for p in TASK_KIND_PIPELINES:
        train = f"{p}__train"
        [run] = stack.api("GET", f"/api/v2/dags/{train}/dagRuns?run_type=asset_triggered")["dag_runs"]
        final = stack.wait_for(
            lambda train=train, rid=run["dag_run_id"]: (
                s if (s := stack.run_state(train, rid)) in ("success", "failed") else None
            ),
            600,
            f"the drift-triggered retrain of {p}",
            every=5,
        )
        assert final == "success", stack.explain_run(train, run["dag_run_id"])
        stack.api("PATCH", f"/api/v2/dags/{train}", {"is_paused": True})
        candidate = client.get_registered_model(p).aliases.get("candidate")
        assert candidate == 3, (p, client.get_registered_model(p).aliases)
        tags = client.get_model_version(p, "3").tags
        assert tags["slipway.month"] == "2025-12" and tags["slipway.blessing"] == "passed", tags
        feedback = _parent_tag(client, p, train, run["dag_run_id"], "slipway.feedback")
        assert not feedback.startswith("0 row"), feedback  # the replayed customers' labels entered training
