"""TrafficPhase waits between checks in the worker when the wait is short and defers when it is long
(short deferrals run into Airflow 3.3.2's stale defer-exit race: see DEFER_FROM_SECONDS)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from airflow.exceptions import TaskDeferred

from include.blocks import rollout
from include.tasks.rollout import phases


class FakePhase:
    """Passes on its ``passes_on``-th tick; asks to be woken ``interval`` seconds after each."""

    instances: list[FakePhase] = []

    def __init__(self, pipeline, phase, spec, selected, run_ref, *, interval=0.05, passes_on=3):
        self.interval, self.passes_on, self.ticks = interval, passes_on, 0
        FakePhase.instances.append(self)

    def not_applicable(self):
        return {"gate": "canary", "results": []}

    def start(self, step, now):
        return {"step": step, "checks": 0}

    def tick(self, state, now):
        self.ticks += 1
        state = {**state, "checks": state["checks"] + 1}
        return (
            (state, {"gate": "canary", "checks": state["checks"]})
            if self.ticks >= self.passes_on
            else (state, None)
        )

    def wake(self, state, now):
        return now + timedelta(seconds=self.interval)


def context():
    ti = SimpleNamespace(
        dag_id="telco_churn__rollout", run_id="r1", xcom_pull=lambda task_ids: {"first": False}
    )
    return {"ti": ti}


@pytest.fixture
def fake(monkeypatch):
    FakePhase.instances.clear()
    monkeypatch.setattr("include.spec.load_pipeline", lambda name: None)

    def make(**kw):
        monkeypatch.setattr(phases, "Phase", lambda *a: FakePhase(*a, **kw))

    return make


def operator():
    return rollout.TrafficPhase(task_id="run_canary", pipeline="telco_churn", phase="canary")


def test_short_waits_stay_in_the_worker_until_the_phase_ends(fake):
    fake(interval=0.05, passes_on=3)
    out = operator()._judge(context(), None)
    assert out == {"gate": "canary", "checks": 3}  # three checks in one call: no deferral between them
    assert FakePhase.instances[0].ticks == 3


def test_long_waits_defer_to_the_triggerer_with_the_state(fake):
    fake(interval=rollout.DEFER_FROM_SECONDS + 5, passes_on=3)
    before = datetime.now(UTC)
    with pytest.raises(TaskDeferred) as deferred:
        operator()._judge(context(), None)
    assert FakePhase.instances[0].ticks == 1
    assert deferred.value.method_name == "resume"
    assert deferred.value.kwargs == {"state": {"step": 0, "checks": 1}}
    assert deferred.value.trigger.moment >= before + timedelta(seconds=rollout.DEFER_FROM_SECONDS)
    # resumed with that state, the next check continues the count (the window is not restarted)
    with pytest.raises(TaskDeferred) as again:
        operator()._judge(context(), deferred.value.kwargs["state"])
    assert again.value.kwargs == {"state": {"step": 0, "checks": 2}}


def test_a_phase_waiting_for_rows_says_so_once_a_minute_and_every_verdict_always(
    monkeypatch, caplog, telco_spec
):
    """The shadow's "too few rows" line at most once a minute (it was one per check, 60 an hour)."""
    import logging

    window = SimpleNamespace(
        challenger=SimpleNamespace(routed=0), champion=SimpleNamespace(rows=0), summary=lambda: {}
    )
    verdicts: list[list[dict]] = []
    monkeypatch.setattr(phases.g, "read_window", lambda *a, **k: window)
    monkeypatch.setattr(phases.g, "shadow_checks", lambda *a: verdicts.pop(0) if verdicts else [])
    phase = phases.Phase("telco_churn", "shadow", telco_spec, {"version": 2, "champion": 1}, {})
    t0 = datetime(2026, 12, 6, 12, tzinfo=UTC)
    state = {
        "step": 0,
        "since": t0.isoformat(),
        "deadline": (t0 + timedelta(hours=2)).isoformat(),
        "done": [],
        "checks": 0,
    }
    caplog.set_level(logging.INFO, logger="slipway")
    for second in range(0, 180, 3):  # a check every 3 s for three minutes, no rows
        state, outcome = phase.tick(state, t0 + timedelta(seconds=second))
        assert outcome is None
    waiting = [r for r in caplog.records if "too few rows to judge yet" in r.getMessage()]
    assert len(waiting) == 3, [r.getMessage() for r in waiting]  # at 0, 60 and 120 s
    verdicts.append([{"metric": "p99_latency_ms", "value": 1.0, "status": "passed"}])
    state, _ = phase.tick(state, t0 + timedelta(seconds=181))
    assert "p99_latency_ms=1.0 (passed)" in caplog.records[-1].getMessage()
