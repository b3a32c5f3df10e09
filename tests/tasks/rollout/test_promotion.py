"""Aliases, traffic and history in a real MLflow registry (SQLite store): promotion, rollback,
restore, conflicts, and two promotions racing."""

from __future__ import annotations

import re
import threading

import pytest

from include import registry as pr
from include.tasks.rollout.promotion import approval_outcome


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One MLflow store for the module (creating its tables takes ~10 s); each test its own model."""
    import mlflow

    base = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{base / 'mlflow.db'}"
    c = mlflow.MlflowClient(uri)
    exp = c.create_experiment("t", artifact_location=(base / "art").as_uri())
    return uri, c, c.create_run(exp)


@pytest.fixture
def client(store, name, tmp_path, monkeypatch):
    import mlflow

    uri, c, run = store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("SLIPWAY_SERVING_DB", f"sqlite:///{tmp_path / 'serving.db'}")
    mlflow.set_tracking_uri(uri)
    c.create_registered_model(name)
    for _ in range(4):
        c.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    return c


@pytest.fixture
def name(request) -> str:
    """A registered model of this test's own in the module's store."""
    return "m_" + re.sub(r"[^a-z0-9]", "_", request.node.name.lower())[:40]


def test_promotion_moves_champion_keeps_previous_and_clears_the_challenger(client, name):
    pr.promote(client, name, 1, None, reason="first model")
    assert pr.aliases(client, name) == {"champion": 1}
    pr.set_challenger(client, name, 2, "canary", 0.1)
    assert pr.aliases(client, name) == {"champion": 1, "challenger": 2}
    assert pr.traffic(client, name) == {"mode": "canary", "weight": 0.1, "version": 2}
    pr.promote(client, name, 2, 1, reason="approved by ops", by="ops")
    assert pr.aliases(client, name) == {"champion": 2, "previous": 1}
    assert pr.traffic(client, name)["mode"] == "none"

    pr.restore_previous(client, name, reason="bad numbers")
    assert pr.aliases(client, name) == {"champion": 1}
    with pytest.raises(pr.PromotionConflict, match="no 'previous'"):
        pr.restore_previous(client, name, reason="again")

    events = pr.history(client, name)
    assert [(e["event"], e["version"]) for e in events] == [
        ("promoted", 1),
        ("canary_started", 2),
        ("promoted", 2),
        ("demoted", 1),
        ("restored", 1),
        ("rolled_back_from_champion", 2),
    ]
    spans = pr.champion_timeline(events)
    assert [(s["version"], s["why"]) for s in spans] == [
        (1, "first model"),
        (2, "approved by ops"),
        (1, "bad numbers"),
    ]
    assert spans[0]["until"] == spans[1]["since"] and spans[-1]["until"] is None
    # Events are files of the version's run, not tags: a version's tags do not grow with its history.
    v1 = client.get_model_version(name, "1")
    assert not [k for k in v1.tags if k.startswith(pr.EVENT_PREFIX)]
    files = [f.path for f in client.list_artifacts(v1.run_id, f"events/{name}/v1")]
    assert len(files) == 3 and files[-1].endswith("-restored.json")
    assert pr.last_event(v1.tags)["event"] == "restored" and v1.tags[pr.TAG_WAS_CHAMPION]
    versions = client.search_model_versions(f"name = '{name}'")
    for n in (1, 3, 6, 10):  # the Models view's newest events, read from the versions that changed last
        assert pr.newest_events(client, versions, n) == events[-n:]


def test_events_recorded_as_tags_before_are_still_read(client, name):
    """A registry written before events moved out of tags: its history is read together with the files."""
    import json

    old = {"at": "2020-01-01T00:00:00+00:00", "event": "promoted", "version": 1, "reason": "long ago"}
    client.set_model_version_tag(name, "1", pr.EVENT_PREFIX + "20200101T000000000000Z", json.dumps(old))
    pr.record_event(client, name, 1, "demoted", reason="now")
    assert [(e["event"], e["reason"]) for e in pr.history(client, name)] == [
        ("promoted", "long ago"),
        ("demoted", "now"),
    ]
    assert pr.last_event(client.get_model_version(name, "1").tags)["event"] == "demoted"


def test_rollback_is_idempotent_and_leaves_the_champion(client, name):
    pr.promote(client, name, 1, None, reason="first")
    pr.set_challenger(client, name, 2, "shadow", 0)
    assert pr.end_challenger(client, name, 2, "error rate") is not None
    assert pr.end_challenger(client, name, 2, "error rate") is None  # already done: no second event
    assert pr.aliases(client, name) == {"champion": 1}
    assert pr.traffic(client, name)["mode"] == "none"
    assert [e["event"] for e in pr.history(client, name)].count("rolled_back") == 1


def test_a_promotion_that_finds_other_aliases_changes_nothing(client, name):
    pr.promote(client, name, 1, None, reason="first")
    pr.set_challenger(client, name, 2, "canary", 0.5)
    with pytest.raises(pr.PromotionConflict, match="'champion' is version 1, expected 3"):
        pr.promote(client, name, 2, 3, reason="stale view")
    with pytest.raises(pr.PromotionConflict, match="already the challenger"):
        pr.set_challenger(client, name, 3, "shadow", 0)
    with pytest.raises(pr.PromotionConflict, match="'challenger' is version 2, expected 3"):
        pr.promote(client, name, 3, 1, reason="not in rollout")
    assert pr.aliases(client, name) == {"champion": 1, "challenger": 2}


def test_two_concurrent_promotions_leave_a_consistent_registry(client, name, monkeypatch):
    """Both read champion 1 and try to promote; the lock and the expected-alias check let one win."""
    import mlflow

    pr.promote(client, name, 1, None, reason="first")
    pr.set_challenger(client, name, 2, "canary", 0.5)
    real_aliases = pr.aliases
    both_read = threading.Barrier(2, timeout=2)  # with the lock the second never arrives

    def slow_aliases(c, name):  # widen the race: both threads read before either moves anything
        out = real_aliases(c, name)
        try:
            both_read.wait()
        except threading.BrokenBarrierError:
            pass
        return out

    monkeypatch.setattr(pr, "aliases", slow_aliases)
    outcomes: dict[int, str] = {}

    def attempt(version: int) -> None:
        c = mlflow.MlflowClient()  # its own client (MLFLOW_TRACKING_URI points at the store)
        try:
            pr.promote(c, name, version, 1, reason=f"race {version}")
            outcomes[version] = "promoted"
        except pr.PromotionConflict as exc:
            outcomes[version] = f"refused: {exc}"

    threads = [threading.Thread(target=attempt, args=(v,)) for v in (2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    monkeypatch.setattr(pr, "aliases", real_aliases)
    assert outcomes[2] == "promoted", outcomes
    assert outcomes[3].startswith("refused"), outcomes
    assert pr.aliases(client, name) == {"champion": 2, "previous": 1}
    promoted = [e for e in pr.history(client, name) if e["event"] == "promoted"]
    assert [e["version"] for e in promoted] == [1, 2]


@pytest.mark.parametrize(
    ("decision", "outcome", "by", "failed", "needle"),
    [
        (
            {
                "chosen_options": ["Reject"],
                "responded_by_user": {"id": "ops", "name": "ops"},
                "responded_at": "T",
            },
            "rejected",
            "ops",
            False,
            "rejected by ops",
        ),
        (
            {"chosen_options": ["Reject"], "responded_by_user": None, "responded_at": "T"},
            "rejected",
            "timeout",
            True,
            "timeout",
        ),
        (
            {"chosen_options": ["Approve"], "responded_by_user": {"name": "ops"}},
            "approved",
            "ops",
            True,
            "promotion failed",
        ),
        (None, "none", None, True, "earlier task failed"),
    ],
)
def test_what_an_approval_means_for_a_candidate_that_was_not_promoted(decision, outcome, by, failed, needle):
    got = approval_outcome(decision)
    assert (got["decision"], got["by"], got["failed"]) == (outcome, by, failed)
    assert needle in got["reason"]
