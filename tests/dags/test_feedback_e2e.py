"""The feedback loop through the real training DAG: labelled predictions in the service's log
(written by the service's own PredictionLog) become the feedback batch, replace their customers'
landed rows in the DVC-versioned snapshot, pass the suite, and are on the run's record."""

from __future__ import annotations

import hmac
import io
import json
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from include import storage
from tests.support.processes import TEST_PII_KEY, clean_env, mlflow_client, slipway, task_runs

pytestmark = pytest.mark.e2e

NAME = "telco_churn"
LABELLED, NO_ENTITY, SHADOW = 240, 10, 15
FLIPPED = 60  # labelled against their landed churn value: the snapshot shows which row it took


def _key(raw: str) -> str:
    return hmac.new(TEST_PII_KEY.encode(), raw.encode(), "sha256").hexdigest()


def _log_traffic(home) -> tuple[list[str], datetime]:
    """Predictions of landed 2025-12 customers made an hour ago and labelled half an hour later, as
    the service logs them; the first FLIPPED labels contradict the landed churn value."""
    from include.prediction_log.rows import PredictionRow
    from include.prediction_log.writer import PredictionLog
    from include.spec import load_pipeline

    spec = load_pipeline(NAME)
    frame = pd.read_csv(home / "landing" / NAME / "2025-12.csv")
    log = PredictionLog(f"sqlite:///{home / 'serving' / 'serving.db'}")
    log.start()
    made = datetime.now(UTC) - timedelta(hours=1)
    keys = []
    try:
        for i, rec in enumerate(frame.head(LABELLED + NO_ENTITY + SHADOW).to_dict("records")):
            inputs = {k: None if pd.isna(rec[k]) else float(rec[k]) for k in spec.features.numeric}
            inputs |= {k: int(rec[k]) for k in spec.features.binary}
            inputs |= {k: str(rec[k]) for k in spec.features.categorical}
            shadow, anonymous = i >= LABELLED + NO_ENTITY, LABELLED <= i < LABELLED + NO_ENTITY
            rid = f"req-{i:04d}"
            entity = None if anonymous else _key(rec["customer_id"])
            variant = "challenger" if shadow else "champion"
            log.record_sync(
                [PredictionRow(rid, NAME, entity, 1, variant, not shadow, inputs, 0.5, 1, 1.0, made)]
            )
            label = int((rec["churn"] == "Yes") != (i < FLIPPED))
            log.feedback(rid, label, pipeline=NAME, at=made + timedelta(minutes=30))
            if not (shadow or anonymous):
                keys.append(entity)
    finally:
        log.close()
    return keys, made


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    home = tmp_path_factory.mktemp("feedback")
    env = clean_env(SLIPWAY_HOME=str(home))
    slipway(env, "seed")
    keys, made = _log_traffic(home)
    slipway(env, "run", NAME, "--month", "2025-12")
    return {
        "home": home,
        "keys": keys,
        "made": made,
        "tracking": f"sqlite:///{home / 'mlflow' / 'mlflow.db'}",
    }


def test_labelled_predictions_replace_landed_rows_in_the_versioned_snapshot(trained):
    from include.tasks.train.data_version import fetch_version

    client = mlflow_client(trained["tracking"])
    by_task = {r.data.tags["slipway.task_id"]: r for r in task_runs(client, NAME, f"{NAME}__train")}
    curated = by_task["curate_feedback"].data
    assert curated.metrics["feedback.labelled"] == LABELLED + NO_ENTITY  # shadow answers never count
    assert curated.metrics["feedback.rows"] == LABELLED
    assert curated.metrics["feedback.dropped.no_entity_key"] == NO_ENTITY
    [written] = json.loads(curated.tags["slipway.data.written"])
    assert written["name"] == "feedback" and "/telco_churn/feedback/until=" in written["uri"]
    versioned = by_task["version_snapshot"].data.params
    assert (versioned["feedback_rows"], versioned["feedback_superseded"]) == (str(LABELLED), str(LABELLED))
    parent = client.get_run(by_task["curate_feedback"].data.tags["mlflow.parentRunId"])
    assert parent.data.tags["slipway.feedback"].startswith(
        f"{LABELLED} row(s) from {LABELLED + NO_ENTITY} labelled"
    )
    assert by_task["validate_snapshot"].data.tags["slipway.validation"] == "passed"

    # `slipway lineage` names the feedback batch the version was trained with.
    from tests.support.processes import lineage

    rec = lineage(clean_env(SLIPWAY_HOME=str(trained["home"])), f"{NAME}@candidate")
    assert rec["feedback"]["batch"] == written["uri"] and len(rec["feedback"]["sha256"]) == 64
    assert rec["feedback"]["summary"].startswith(f"{LABELLED} row(s)")
    mv = client.get_model_version_by_alias(NAME, "candidate")
    assert "/until=" in mv.tags["slipway.snapshot_uri"]
    path = fetch_version(
        mv.tags["slipway.data_version"], str(trained["home"] / "dvc-remote"), trained["home"] / "snap.parquet"
    )
    snapshot = pd.read_parquet(path)
    landed = pd.concat(
        pd.read_parquet(io.BytesIO(storage.read_bytes(u)))
        for u in storage.list_uris(storage.path_to_uri(trained["home"] / "lake" / NAME / "batches"))
    ).set_index("customer_id")
    assert len(snapshot) == len(landed) == 7043 and snapshot["customer_id"].is_unique
    fed = snapshot.set_index("customer_id").loc[trained["keys"]]
    assert (fed["batch_month"] == trained["made"].strftime("%Y-%m")).all()
    was = landed.loc[trained["keys"], "churn"]
    assert list(fed["churn"] != was) == [True] * FLIPPED + [False] * (LABELLED - FLIPPED)
    assert (fed["slipway_split"] == landed.loc[trained["keys"], "slipway_split"]).all()
