"""On the real scheduler: `telco_churn__retire` archives a superseded version, which then can no longer
be rolled out, while the champion and the newest version stay; its purge lets go what the retention
periods allow.

Runs after the other tests on the shared stack (the stack's spec keeps 1 newest version besides the
protected ones). Two versions are registered like any other (copies of the champion's graph, no
alias); the older is superseded by the newer.
"""

from __future__ import annotations

import json
import sqlite3
import urllib.request

import pytest

from include.registry import HISTORY_TAGS
from tests.support.processes import mlflow_client, slipway, task_runs

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

NAME = "telco_churn"


def _finished(stack, dag: str, run_id: str) -> str:
    return stack.wait_for(
        lambda: s if (s := stack.run_state(dag, run_id)) in ("success", "failed") else None,
        600,
        f"{dag} run {run_id}",
        every=3,
    )


def _old_rows(log_db) -> int:
    """The stack's logged rows made before 2 March 2026 (none when nothing was logged yet)."""
    if not log_db.exists():
        return 0
    with sqlite3.connect(log_db) as conn:
        try:
            (n,) = conn.execute(
                "SELECT COUNT(*) FROM slipway_predictions WHERE pipeline = ? AND created_at < '2026-03-02'",
                (NAME,),
            ).fetchone()
        except sqlite3.OperationalError:  # no table yet
            return 0
    return n


def test_a_superseded_version_is_retired_on_record_and_can_no_longer_be_rolled_out(live_stack):
    stack = live_stack
    client = mlflow_client(stack.tracking)
    champion = int(client.get_registered_model(NAME).aliases["champion"])
    src = client.get_model_version(NAME, str(champion))
    tags = {
        k: v
        for k, v in src.tags.items()
        if not k.startswith(
            (
                *HISTORY_TAGS,
                "slipway.approval",
                "slipway.blessing.approval",
                "slipway.rollout.",
                "slipway.scored.",
            )
        )
    }
    source = client.get_model_version_download_uri(NAME, str(champion))
    older, newer = (
        int(client.create_model_version(NAME, source, run_id=src.run_id, tags=tags).version) for _ in range(2)
    )
    log_db = stack.home / "serving" / "serving.db"
    old_rows = _old_rows(log_db)  # the monitor test's traffic of 1 March 2026 (when it ran before)
    # The score test's months (all of 2025): every one ended before the stack's scores period
    old_scores = sorted(stack.home.glob(f"**/{NAME}/scores/month=2025-*"))
    retire = f"{NAME}__retire"
    stack.api("PATCH", f"/api/v2/dags/{retire}", {"is_paused": False})
    stack.api("POST", f"/api/v2/dags/{retire}/dagRuns", {"dag_run_id": "retire__e2e", "logical_date": None})
    assert _finished(stack, retire, "retire__e2e") == "success", stack.explain_run(retire, "retire__e2e")

    record = json.loads(client.get_model_version(NAME, str(older)).tags["slipway.retired"])
    # Retired by a run of the retire DAG: this one, or the scheduled run unpausing it started first.
    assert record["reason"].startswith("superseded") and record["dag_run"].startswith(f"{retire}/"), record
    assert "slipway.retired" not in client.get_model_version(NAME, str(newer)).tags  # the newest stays
    assert "slipway.retired" not in client.get_model_version(NAME, str(champion)).tags  # protected
    assert "RETIRED" in slipway(stack.env, "lineage", f"{NAME}/{older}").stdout
    # The Models view (Airflow UI) marks it retired with the reason; the others are not.
    request = urllib.request.Request(
        f"{stack.url}/models/api/models", headers={"Authorization": f"Bearer {stack.token()}"}
    )
    with urllib.request.urlopen(request, timeout=60) as resp:
        record = json.loads(resp.read())
    [churn] = [p for p in record["pipelines"] if p["name"] == NAME]
    shown = {v["version"]: v["retired"] for v in churn["versions"]}
    assert shown[older] and json.loads(shown[older])["reason"].startswith("superseded"), shown[older]
    assert not shown[newer] and not shown[champion]

    # The same DAG's purge_expired let go what the stack's retention periods allow (set to reach just
    # past 1 March 2026 and the end of 2025): the counts on its MLflow runs, the rows and files gone.
    purges = [
        r for r in task_runs(client, NAME, retire) if r.data.tags.get("slipway.task_id") == "purge_expired"
    ]
    assert purges, "purge_expired recorded no MLflow run"
    assert sum(r.data.metrics.get("purged.predictions", 0) for r in purges) == old_rows
    assert _old_rows(log_db) == 0
    assert sum(r.data.metrics.get("purged.score_months", 0) for r in purges) == len(old_scores)
    assert not [f for folder in old_scores for f in folder.rglob("*") if f.is_file()]  # every file gone
    with sqlite3.connect(log_db) as conn:
        kinds = [k for (k,) in conn.execute("SELECT kind FROM slipway_erasures WHERE pipeline = ?", (NAME,))]
    assert "purge" in kinds

    # Even named as the candidate by hand, a retired version is not rolled out: a recorded skip.
    client.set_registered_model_alias(NAME, "candidate", older)
    rollout = f"{NAME}__rollout"
    stack.api("PATCH", f"/api/v2/dags/{rollout}", {"is_paused": False})
    stack.api(
        "POST",
        f"/api/v2/dags/{rollout}/dagRuns",
        {"dag_run_id": "rollout__retired", "logical_date": None, "conf": {"version": older}},
    )
    assert _finished(stack, rollout, "rollout__retired") == "success", stack.explain_run(
        rollout, "rollout__retired"
    )
    skipped = stack.api(
        "GET",
        f"/api/v2/dags/{rollout}/dagRuns/rollout__retired/taskInstances/select_candidate/xcomEntries/skipped",
    )
    assert f"version {older} is retired" in json.dumps(skipped.get("value")), skipped
    assert int(client.get_registered_model(NAME).aliases["champion"]) == champion
