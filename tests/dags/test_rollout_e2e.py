"""On the real scheduler: `telco_churn__rollout` driven by an operator's REST client.

1. The pipeline's first candidate (no champion): infra validation in a sandbox, shadow and canary
   not applicable, the approval given with `PATCH .../hitlDetails` as a client would, by a second
   user: the operator who triggered the run is refused (four eyes); promotion; the service then serves it, and `slipway history` says who approved it.
2. A second candidate, with live traffic: shadow and canary pass on the real service, nobody
   answers the approval, the scheduler's timeout applies the default (Reject), and the candidate is
   rolled back: the run fails with the reason, the champion is unchanged and still serving.

The spec of the live stack (tests/support/live.py) shortens the windows and the approval timeout.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import pytest

from include.demo.approvals import answer
from include.registry import HISTORY_TAGS
from tests.support.live import Webhook, http_json, serving
from tests.support.processes import mlflow_client, slipway, task_runs, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

DAG = "telco_churn__rollout"
NAME = "telco_churn"
APPROVAL = "approve_promotion"


@pytest.fixture(scope="module")
def served(live_stack):
    """`slipway serve` on the stack's serving port, with the stack's registry and prediction log."""
    stack = live_stack
    with serving(stack, (NAME,), "serve.log") as url:
        key = slipway(
            stack.env, "keys", "create", "--scopes", "predict,feedback", "--pipeline", NAME
        ).stdout.split()[0]
        yield url, key
        stack.api("PATCH", f"/api/v2/dags/{DAG}", {"is_paused": True})  # later tests' candidates: no rollout


def _trigger(stack, run_id: str, version: int) -> None:
    stack.api(
        "POST",
        f"/api/v2/dags/{DAG}/dagRuns",
        {"dag_run_id": run_id, "logical_date": None, "conf": {"version": version}},
    )


def _finished(stack, run_id: str) -> str | None:
    state = stack.run_state(DAG, run_id)
    return state if state in ("success", "failed") else None


def _candidate(stack) -> int:
    client = mlflow_client(stack.tracking)
    if not client.search_model_versions(f"name='{NAME}'"):
        slipway(stack.env, "run", NAME, "--month", "2025-09", timeout=900)
    return int(client.get_model_version_by_alias(NAME, "candidate").version)


class Traffic(threading.Thread):
    def __init__(self, url: str, key: str):
        super().__init__(daemon=True)
        self.url, self.key = url, key
        self.stop = threading.Event()
        self.answers: list[tuple[float, int, dict]] = []

    def run(self) -> None:
        i = 0
        row = {
            "tenure": 12.0,
            "monthly_charges": 70.0,
            "total_charges": 840.0,
            "partner": 1,
            "dependents": 0,
            "phone_service": 1,
            "paperless_billing": 1,
            "multiple_lines": "No",
            "internet_service": "Fiber optic",
            "online_security": "No",
            "online_backup": "No",
            "device_protection": "No",
            "tech_support": "No",
            "streaming_tv": "Yes",
            "streaming_movies": "No",
            "contract": "Month-to-month",
            "payment_method": "Electronic check",
        }
        while not self.stop.is_set():
            i += 1
            body = {"inputs": {**row, "customer_id": f"E2E-{i}", "tenure": float(1 + i % 70)}}
            status, reply = http_json("POST", f"{self.url}/v1/{NAME}/predict", body, self.key)
            self.answers.append((time.time(), status, reply))
            time.sleep(0.02)


def test_first_candidate_is_approved_over_rest_and_a_timed_out_one_is_rolled_back(
    live_stack, served, request
):
    stack = live_stack
    url, key = served
    webhook = Webhook(stack.alert_port)  # the spec's alert connection: what reaches a person
    request.addfinalizer(webhook.close)
    client = mlflow_client(stack.tracking)
    first = _candidate(stack)
    assert "champion" not in client.get_registered_model(NAME).aliases
    # Unpaused after the candidate exists: its asset event came earlier and starts no run.
    stack.api("PATCH", f"/api/v2/dags/{DAG}", {"is_paused": False})

    # 1. The first candidate: sandbox, no shadow/canary, approval through the REST API. The operator
    # triggers the run, so the operator may not approve it (four eyes): Airflow answers 403 and its
    # audit log keeps the attempt; the approver, a second user, approves.
    _trigger(stack, "rollout__first", first)
    base = f"/api/v2/dags/{DAG}/dagRuns/rollout__first/taskInstances/{APPROVAL}/-1/hitlDetails"
    self_approval: list[int] = []

    def operator_tries(detail: dict) -> None:
        assert detail["assigned_users"] == [{"id": "approver", "name": "approver"}], detail
        try:
            stack.api("PATCH", base, {"chosen_options": ["Approve"], "params_input": {}})
            self_approval.append(200)
        except urllib.error.HTTPError as exc:
            self_approval.append(exc.code)

    def approver_api(method, path, body=None):
        return stack.api(method, path, body, user="approver")

    # Answered a few seconds after the task asks, as a person would, and again if Airflow asks again
    # (an answer racing the task's parking is lost by Airflow 3.3.2: see include/demo/approvals.py).
    detail = answer(
        approver_api, DAG, "rollout__first", APPROVAL, "Approve", timeout=600, on_asked=operator_tries
    )
    assert self_approval == [403]
    attempts = stack.api("GET", f"/api/v2/eventLogs?dag_id={DAG}&event_pattern=hitl&limit=100")["event_logs"]
    assert any(
        e["owner"] == "operator" and e["run_id"] == "rollout__first" and "update_hitl_detail" in e["event"]
        for e in attempts
    ), attempts
    assert "operator may not (triggered this rollout run)" in detail["body"]
    assert f"Promote {NAME} version {first}?" in detail["subject"]
    assert "Infra validation" in detail["body"] and "p99_latency_ms" in detail["body"]
    assert "no champion yet" in detail["body"]  # shadow and canary: not applicable, and why
    # Why it is asked: what started the training, and the offline comparison (none: the first model).
    assert "**Why**: the training run `telco_churn__train/" in detail["body"], detail["body"]
    assert "**Offline** no champion when it was trained" in detail["body"], detail["body"]
    final = stack.wait_for(lambda: _finished(stack, "rollout__first"), 300, "the promotion", every=3)
    assert final == "success", stack.explain_run(DAG, "rollout__first")
    # The approval has its nested MLflow run like every other task: who answered what.
    # (Its newest try: Airflow may ask again in a second try; each try has its record.)
    approval_run = max(
        (
            r
            for r in task_runs(client, NAME, DAG, "rollout__first")
            if r.data.tags["slipway.task_id"] == APPROVAL
        ),
        key=lambda r: int(r.data.tags["slipway.try_number"]),
    )
    tags = approval_run.data.tags
    assert (tags["slipway.state"], tags["slipway.approval.chosen"], tags["slipway.approval.by"]) == (
        "success",
        "Approve",
        "approver",
    ), tags
    states = stack.task_states(DAG, "rollout__first")
    assert set(states.values()) == {"success"}, states

    mv = client.get_model_version(NAME, str(first))
    assert client.get_registered_model(NAME).aliases.get("champion") == first
    approval = json.loads(mv.tags["slipway.approval"])
    # Four eyes excluded the operator, and whoever trained the version (here `slipway run`: a login).
    assert approval["by"] == "approver" and "operator" in approval["four_eyes"], approval
    assert mv.tags["slipway.blessing.infra_validation"] == "passed"
    assert mv.tags["slipway.blessing.approval"] == "passed"
    ready = wait_until(
        lambda: (
            (r := http_json("GET", f"{url}/ready", key=stack.metrics_key)[1]["pipelines"][NAME])["champion"]
            == first
            and r
        ),
        30,
        "the service to serve the new champion",
        every=1,
    )
    assert ready["challenger"] is None
    history = slipway(stack.env, "history", NAME).stdout
    assert f"version {first}" in history and "approved by approver" in history
    events = stack.api("GET", "/api/v2/assets/events?limit=100")["asset_events"]
    promoted = [
        e for e in events if e.get("source_dag_id") == DAG and e.get("source_run_id") == "rollout__first"
    ]
    assert [(e["uri"], e["extra"]["version"]) for e in promoted] == [(f"slipway://{NAME}/champion", first)]

    # The champion rolled out again (a re-trigger, or a past month's asset event): a recorded skip.
    _trigger(stack, "rollout__again", first)
    again = stack.wait_for(lambda: _finished(stack, "rollout__again"), 300, "the repeated rollout", every=3)
    assert again == "success", stack.explain_run(DAG, "rollout__again")
    states = stack.task_states(DAG, "rollout__again")
    assert states["select_candidate"] == "skipped" and states["conclude_rollout"] == "success", states
    assert states["approve_promotion"] == "skipped"
    assert "already the champion" in slipway(stack.env, "history", NAME).stdout
    assert client.get_registered_model(NAME).aliases.get("champion") == first

    # 2. A second candidate (the same graph, another version) with live traffic; nobody answers.
    src = client.get_model_version(NAME, str(first))
    tags = {
        k: v
        for k, v in src.tags.items()
        if not k.startswith(
            (
                *HISTORY_TAGS,
                "slipway.approval",
                "slipway.blessing.approval",
                "slipway.blessing.infra",
                "slipway.rollout.",
            )
        )
    }
    second = int(
        client.create_model_version(
            NAME, client.get_model_version_download_uri(NAME, str(first)), run_id=src.run_id, tags=tags
        ).version
    )
    client.set_registered_model_alias(NAME, "candidate", second)  # only the candidate is rolled out
    traffic = Traffic(url, key)
    traffic.start()
    try:
        _trigger(stack, "rollout__second", second)
        final = stack.wait_for(
            lambda: _finished(stack, "rollout__second"), 900, "the timed-out rollout", every=5
        )
    finally:
        time.sleep(2)
        traffic.stop.set()
        traffic.join(30)
    states = stack.task_states(DAG, "rollout__second")
    assert final == "failed", stack.explain_run(DAG, "rollout__second")
    assert states["run_shadow"] == "success" and states["run_canary"] == "success", states
    assert states["promote_candidate"] == "skipped" and states["conclude_rollout"] == "failed", states
    aliases = client.get_registered_model(NAME).aliases
    assert aliases.get("champion") == first and "challenger" not in aliases, aliases
    mv2 = client.get_model_version(NAME, str(second))
    assert mv2.tags["slipway.blessing.shadow"] == "passed" and mv2.tags["slipway.blessing.canary"] == "passed"
    assert json.loads(mv2.tags.get("slipway.approval", "{}")).get("by") == "timeout", stack.explain_run(
        DAG, "rollout__second"
    )
    assert '"rows_served_by_old_version_after": 0' in mv2.tags["slipway.rollout.served_after_rollback"]
    lineage = slipway(stack.env, "lineage", f"{NAME}/{second}").stdout
    assert "shadow_started" in lineage and "canary_started" in lineage
    assert "rolled_back" in lineage and "no decision before the approval timeout" in lineage
    # The customers: every request answered, the canary routed some to the second version.
    statuses = {s for _, s, _ in traffic.answers}
    assert statuses == {200}, statuses
    assert {a.get("model_version") for _, _, a in traffic.answers} == {first, second}
    # One answered request traced back: the version that answered it, and that version's lineage.
    _, _, reply = next(a for a in traffic.answers if a[2].get("model_version") == second)
    traced = json.loads(slipway(stack.env, "lineage", "--request", reply["request_id"], "--json").stdout)
    assert traced["prediction"]["request_id"] == reply["request_id"] and traced["model"]["version"] == second
    assert traced["prediction"]["variant"] == "challenger" and traced["prediction"]["served"] is True
    # What reached a person through the alert connection (Airflow's notifiers): each approval when it
    # was asked, with its link, and the failed run with what it found.
    asked = [m for m in webhook.received if m.get("event") == "approval"]
    assert {m["run_id"] for m in asked} >= {"rollout__first", "rollout__second"}, webhook.received
    assert all(
        m["url"].endswith("/tasks/approve_promotion") and m["version"] in (first, second) for m in asked
    )
    failed = wait_until(
        lambda: [
            m for m in webhook.received if m.get("event") == "failed" and m["run_id"] == "rollout__second"
        ],
        120,
        "the failed rollout's notification",
    )
    assert "rolled back" in (failed[0]["outcome"] or ""), failed
