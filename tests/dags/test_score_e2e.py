"""On the real scheduler: ``telco_churn__score`` scores a month's customers with the champion.

The shared stack's champion (promoted by the rollout test) scores the population of 2025-12 (the
landed batch's customers, as ``population-2025-12.csv``): the scores land in the lake and in a
PostgreSQL table through an Airflow connection, the rows in the prediction log, the version is tagged;
a re-run changes no byte and no row; a file with bad rows has them rejected with their reasons, and one
with too many fails with the reason and publishes nothing; ``slipway lineage --scored`` traces a row.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import psycopg2
import pyarrow.parquet as pq
import pytest

from tests.support.live import Webhook
from tests.support.pg import pg_url
from tests.support.processes import mlflow_client, slipway

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

NAME = "telco_churn"
DAG = f"{NAME}__score"


def _run(stack, run_id: str, conf: dict) -> str:
    stack.api(
        "POST", f"/api/v2/dags/{DAG}/dagRuns", {"dag_run_id": run_id, "logical_date": None, "conf": conf}
    )
    return stack.wait_for(
        lambda: s if (s := stack.run_state(DAG, run_id)) in ("success", "failed") else None,
        600,
        f"the scoring run {run_id}",
        every=3,
    )


def _pii_key(stack) -> bytes:
    """The stack's PII key, as its workers read it."""
    return stack.env["SLIPWAY_PII_KEY"].encode()


def _table(stack, sql: str) -> list[tuple]:
    with psycopg2.connect(pg_url(stack.databases["scores"])) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall()


def test_a_month_is_scored_delivered_rerun_unchanged_and_bad_rows_rejected(live_stack):
    stack = live_stack
    stack.api("PATCH", f"/api/v2/dags/{DAG}", {"is_paused": False})
    client = mlflow_client(stack.tracking)
    champion = int(client.get_registered_model(NAME).aliases["champion"])
    home = Path(stack.env["SLIPWAY_HOME"])
    landing = home / "landing" / NAME
    shutil.copy(landing / "2025-12.csv", landing / "population-2025-12.csv")
    population = pd.read_csv(landing / "population-2025-12.csv", dtype=str, keep_default_na=False)

    assert _run(stack, "score__first", {"month": "2025-12"}) == "success", stack.explain_run(
        DAG, "score__first"
    )
    folder = home / "lake" / NAME / "scores" / "month=2025-12" / f"version={champion}"
    scores = pq.read_table(folder / "scores.parquet").to_pandas()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert len(scores) == len(population) == manifest["scored"] and manifest["rejected"] == 0
    key = _pii_key(stack)
    from include.tasks.train.ingest import _hash

    assert scores["entity_key"].tolist() == [_hash(c, key) for c in population["customer_id"]]
    assert set(scores["model_version"]) == {champion} and scores["probability"].between(0, 1).all()
    tag = json.loads(client.get_model_version(NAME, str(champion)).tags["slipway.scored.2025-12"])
    assert (tag["scored"], tag["sha256"]) == (len(population), manifest["scores_sha256"])
    # Delivered: one row per customer and month, the file's numbers.
    delivered = _table(
        stack, "SELECT entity_key, probability, decision, model_version FROM telco_scores ORDER BY row"
    )
    assert [r[0] for r in delivered] == scores["entity_key"].tolist()
    assert [r[1] for r in delivered] == pytest.approx(scores["probability"].tolist())
    # Recorded in the prediction log, under the ids feedback labels them by.
    from include.prediction_log.writer import PredictionLog

    log = PredictionLog(stack.env.get("SLIPWAY_SERVING_DB") or f"sqlite:///{home / 'serving' / 'serving.db'}")
    first_id = f"{NAME}/2025-12/v{champion}/{scores['entity_key'].iloc[0]}"
    (logged,) = log.get(first_id)
    assert logged["variant"] == "batch" and logged["probability"] == pytest.approx(
        scores["probability"].iloc[0]
    )

    # The same month and version again: not a byte changed, no row added anywhere.
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    assert _run(stack, "score__again", {"month": "2025-12", "version": champion}) == "success", (
        stack.explain_run(DAG, "score__again")
    )
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()} == before
    assert _table(stack, "SELECT COUNT(*) FROM telco_scores") == [(len(population),)]

    # Bad rows: rejected with their reasons (2% of the file, under the spec's 5%), the rest scored.
    bad = pd.read_csv(landing / "2025-11.csv", dtype=str, keep_default_na=False)
    broken = bad.sample(n=len(bad) // 50, random_state=1).index
    bad.loc[broken, "tenure"] = "unknown"
    bad.to_csv(landing / "population-2025-11.csv", index=False)
    assert _run(stack, "score__bad_rows", {"month": "2025-11"}) == "success", stack.explain_run(
        DAG, "score__bad_rows"
    )
    nov = home / "lake" / NAME / "scores" / "month=2025-11" / f"version={champion}"
    rejects = pq.read_table(nov / "rejects.parquet").to_pandas()
    assert sorted(rejects["row"]) == sorted(broken) and set(rejects["reason"]) == {"tenure: not a number"}
    assert len(pq.read_table(nov / "scores.parquet")) == len(bad) - len(broken)
    # Too many bad rows: the run fails with the reason; the rejects are written, no scores published.
    bad.loc[bad.sample(frac=0.2, random_state=2).index, "contract"] = ""
    bad.to_csv(landing / "population-2025-10.csv", index=False)
    assert _run(stack, "score__too_many", {"month": "2025-10"}) == "failed"
    oct_ = home / "lake" / NAME / "scores" / "month=2025-10" / f"version={champion}"
    assert (oct_ / "rejects.parquet").is_file() and not (oct_ / "scores.parquet").exists()
    assert "max_reject_share" in stack.explain_run(DAG, "score__too_many")
    assert _table(stack, "SELECT COUNT(*) FROM telco_scores WHERE month = '2025-10'") == [(0,)]

    # One scored row traced to its version and data.
    customer = population["customer_id"].iloc[17]
    out = slipway(stack.env, "lineage", "--scored", f"{NAME}/2025-12/{customer}", "--json")
    rec = json.loads(out.stdout)
    versions = sorted(p.name for p in (home / "lake" / NAME / "scores" / "month=2025-12").iterdir())
    mine = [r for r in rec["scored_rows"] if r["model_version"] == champion]
    assert len(mine) == 1 and len(rec["scored_rows"]) == len(versions), (versions, rec["scored_rows"])
    row = mine[0]
    assert (row["row"], row["model_version"]) == (17, champion)
    assert (
        row["input"].endswith("/telco_churn/population-2025-12.csv") and rec["model"]["version"] == champion
    )
    assert set(rec["scored"]) == {"2025-11", "2025-12"}  # the months the version scored (2025-10 failed)
    text = slipway(stack.env, "lineage", "--scored", f"{NAME}/2025-12/{customer}").stdout
    assert f"version {champion} answered probability {row['probability']:.4f}" in text, text

    # A version the registry does not hold: failed at once, saying so.
    assert _run(stack, "score__no_version", {"month": "2025-12", "version": 999}) == "failed"
    assert "has no version 999" in stack.explain_run(DAG, "score__no_version")

    # Every ingest announced its month on the asset a `landed` schedule runs on.
    found = stack.api("GET", f"/api/v2/assets?name_pattern={NAME}__landed")["assets"]
    (asset,) = [a for a in found if a["name"] == f"{NAME}__landed"]
    events = stack.api("GET", f"/api/v2/assets/events?asset_id={asset['id']}&limit=100")["asset_events"]
    assert events and all(e["extra"].get("month") for e in events), events

    # The monitor reads the scored rows as it reads served ones: the last half hour holds both months.
    monitor = f"{NAME}__monitor"
    stack.api("PATCH", f"/api/v2/dags/{monitor}", {"is_paused": False})
    # A retrain the monitor may start is not this test's subject: it would only load the machine.
    stack.api("PATCH", f"/api/v2/dags/{NAME}__train", {"is_paused": True})
    webhook = Webhook(stack.alert_port)  # a drifted population alerts like drifted traffic
    try:
        stack.api(
            "POST",
            f"/api/v2/dags/{monitor}/dagRuns",
            {"dag_run_id": "monitor__scored", "logical_date": None, "conf": {"minutes": 30}},
        )
        state = stack.wait_for(
            lambda: (
                s if (s := stack.run_state(monitor, "monitor__scored")) in ("success", "failed") else None
            ),
            600,
            "the monitor's check of the scored rows",
            every=3,
        )
    finally:
        webhook.close()
    assert state == "success", stack.explain_run(monitor, "monitor__scored")
    from include.prediction_log.monitor_checks import latest

    check = latest(log.database.url, NAME)
    assert check.served_rows >= len(population) + len(bad) - len(broken), check
    if check.status == "breach" and check.alerted:  # the months differ from the champion's training data
        assert webhook.received and webhook.received[0]["pipeline"] == NAME, check.evidence
