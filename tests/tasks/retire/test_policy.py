"""Retirement against a real MLflow registry (SQLite) and prediction log: the policy's versions are
archived with their reason; champion, previous, challenger, candidate and a version in rollout are
never touched; an archived version's predictions, history and tags stay queryable."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

NAME = "telco_churn"


@pytest.fixture
def registry(isolated_home):
    from include.tracking import configure_mlflow

    client = configure_mlflow().MlflowClient()
    client.create_registered_model(NAME)
    source = isolated_home / "model"
    source.mkdir()
    (source / "model.onnx").write_bytes(b"not read here")
    for _ in range(9):
        client.create_model_version(NAME, source.as_uri(), tags={"slipway.blessing": "passed"})
    return client


def _serve(db: str, version: int, at: datetime, n: int = 3) -> None:
    from include.prediction_log.rows import PredictionRow
    from include.prediction_log.writer import PredictionLog

    log = PredictionLog(db)
    log.start()
    try:
        log.record_sync(
            [
                PredictionRow(
                    uuid.uuid4().hex, NAME, None, version, "champion", True, {"tenure": 1.0}, 0.2, 0, 0.1, at
                )
                for _ in range(n)
            ]
        )
    finally:
        log.close()


def test_policy_retires_only_what_it_may_and_keeps_the_evidence(registry, isolated_home, monkeypatch):
    from include.database import database
    from include.prediction_log.monitor_checks import Check, record
    from include.prediction_log.reads import last_served
    from include.prediction_log.rows import iso_utc
    from include.registry import TAG_LAST_EVENT, aliases, history
    from include.spec import load_pipeline
    from include.tasks.retire.policy import RETIRED_TAG, archive, champion_checks, judge

    client = registry
    db = f"sqlite:///{isolated_home / 'serving' / 'serving.db'}"
    (isolated_home / "serving").mkdir()
    now = datetime.now(UTC) + timedelta(days=40)  # every version registered 40 days before "now"
    policy = load_pipeline(NAME).retirement.model_copy(
        update={"keep_newest": 5, "not_served_days": 30, "below_floor_checks": 3}
    )
    for alias, v in {"previous": 1, "champion": 2, "challenger": 5, "candidate": 6}.items():
        client.set_registered_model_alias(NAME, alias, str(v))
    # v4's rollout is under way: its shadow started a day ago.
    started = {"at": (now - timedelta(days=1)).isoformat(), "event": "shadow_started", "version": 4}
    client.set_model_version_tag(NAME, "4", TAG_LAST_EVENT, json.dumps(started))
    client.set_registered_model_alias(NAME, "pinned-by-hand", "8")  # a user's alias goes with it
    _serve(db, 3, now - timedelta(days=60))
    _serve(db, 7, now - timedelta(days=1))
    _serve(db, 9, now - timedelta(days=2))
    for h in range(3):  # v9 was champion for three checks, every one below the floor
        end = now - timedelta(days=3, hours=h)
        record(
            db,
            Check(
                NAME,
                iso_utc(end - timedelta(hours=1)),
                iso_utc(end),
                9,
                500,
                "breach",
                False,
                True,
                None,
                False,
                {},
            ),
        )

    monkeypatch.setenv("SLIPWAY_SERVING_DB", db)  # the alias lock lives beside the log
    verdicts = judge(
        policy,
        client.search_model_versions(f"name = '{NAME}'"),
        aliases(client, NAME),
        last_served(db, NAME),
        champion_checks(db, NAME, policy.below_floor_checks),
        now,
    )
    due = {v.version: v.reason for v in verdicts if v.retire}
    assert set(due) == {3, 8, 9}, {v.version: v.reason for v in verdicts}
    assert due[3].startswith("superseded: 6 newer versions")
    assert due[8].startswith("not served for 30 days (never served")
    assert due[9].startswith("below the live performance floor in its last 3 checks")
    why = {v.version: v.reason for v in verdicts}
    assert why[1] == "protected: it is the previous" and why[2] == "protected: it is the champion"
    assert why[5].endswith("challenger") and why[6].endswith("candidate")
    assert why[4].startswith("protected: its rollout is under way (shadow_started")
    assert why[7] == "kept: no retirement rule applies"
    for v, reason in due.items():
        archive(client, NAME, v, reason, now, dag_run="telco_churn__retire/test")

    after = aliases(client, NAME)
    assert after == {
        "previous": 1,
        "champion": 2,
        "challenger": 5,
        "candidate": 6,
    }  # the user's alias on 8 is gone
    for v in (3, 8, 9):
        tag = json.loads(client.get_model_version(NAME, str(v)).tags[RETIRED_TAG])
        assert tag["reason"] == due[v] and tag["dag_run"] == "telco_churn__retire/test"
    assert json.loads(client.get_model_version(NAME, "8").tags[RETIRED_TAG])["aliases_removed"] == [
        "pinned-by-hand"
    ]
    assert {e["version"] for e in history(client, NAME) if e["event"] == "retired"} == {3, 8, 9}
    # Nothing deleted: the versions, their artifacts' source and their predictions are all still there.
    assert len(client.search_model_versions(f"name = '{NAME}'")) == 9
    conn = database(db).connect()
    assert conn.execute("SELECT COUNT(*) FROM slipway_predictions WHERE model_version = 3").fetchone() == (3,)
    conn.close()
    # A second pass retires nothing more.
    again = judge(
        policy,
        client.search_model_versions(f"name = '{NAME}'"),
        aliases(client, NAME),
        last_served(db, NAME),
        champion_checks(db, NAME, policy.below_floor_checks),
        now,
    )
    assert not [v for v in again if v.retire] and {v.version for v in again}.isdisjoint({3, 8, 9})


def test_a_version_that_became_protected_is_not_archived(registry):
    from include.registry import PromotionConflict
    from include.tasks.retire.policy import RETIRED_TAG, archive

    registry.set_registered_model_alias(NAME, "champion", "7")  # promoted after it was judged
    with pytest.raises(PromotionConflict, match="now holds"):
        archive(registry, NAME, 7, "superseded", datetime.now(UTC))
    assert RETIRED_TAG not in registry.get_model_version(NAME, "7").tags
    assert {a: int(v) for a, v in registry.get_registered_model(NAME).aliases.items()} == {"champion": 7}
