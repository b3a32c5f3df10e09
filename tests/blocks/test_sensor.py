"""The batch sensor defers while the batch is missing, and its trigger fires when the file lands."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from include import storage
from include.blocks.sensors import BatchArrivedTrigger, BatchSensor


def test_trigger_fires_when_the_object_appears(tmp_path):
    uri = storage.path_to_uri(tmp_path / "telco_churn" / "2025-03.csv")

    async def scenario():
        gen = BatchArrivedTrigger(uri=uri, poll_interval=0.05).run()
        first = asyncio.ensure_future(gen.__anext__())
        await asyncio.sleep(0.2)
        assert not first.done()  # still waiting: nothing landed
        storage.write_bytes(uri, b"a,b\n1,2\n")
        return await asyncio.wait_for(first, timeout=5)

    event = asyncio.run(scenario())
    assert event.payload == {"status": "found", "uri": uri}
    classpath, kwargs = BatchArrivedTrigger(uri=uri, poll_interval=3).serialize()
    assert classpath == "include.blocks.sensors.BatchArrivedTrigger" and kwargs == {
        "uri": uri,
        "poll_interval": 3,
    }


def _context(month_start: datetime, run_id: str = "scheduled__x"):
    ti = SimpleNamespace(
        dag_id="telco_churn__train",
        run_id=run_id,
        task_id="wait_for_batch",
        try_number=1,
        map_index=-1,
    )
    end = datetime(month_start.year + month_start.month // 12, month_start.month % 12 + 1, 1, tzinfo=UTC)
    dag_run = SimpleNamespace(data_interval_start=month_start, data_interval_end=end, run_type="scheduled")
    return {"ti": ti, "dag_run": dag_run, "data_interval_start": month_start, "data_interval_end": end}


def _this_month() -> datetime:
    now = datetime.now(UTC)
    return datetime(now.year, now.month, 1, tzinfo=UTC)


def test_sensor_defers_then_completes_in_the_same_lineage_run(isolated_home):
    from airflow.sdk.exceptions import TaskDeferred

    from include.settings import get_settings
    from include.tracking import configure_mlflow

    month = _this_month()
    ctx = _context(month)
    sensor = BatchSensor(task_id="wait_for_batch", pipeline="telco_churn", poke_interval=5)
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(ctx)
    trigger = deferred.value.trigger
    assert isinstance(trigger, BatchArrivedTrigger) and trigger.uri.endswith(
        f"/telco_churn/{month:%Y-%m}.csv"
    )
    # It waits until the deadline: 7 days (the spec's source.deadline_days) after the month ends.
    expected = ctx["data_interval_end"] + timedelta(days=7) - datetime.now(UTC)
    assert abs(expected - deferred.value.timeout) < timedelta(seconds=30)
    assert trigger.uri.startswith(get_settings().landing_uri)

    client = configure_mlflow().MlflowClient()
    exp = client.get_experiment_by_name("telco_churn")
    [run] = client.search_runs([exp.experiment_id], "tags.`slipway.task_id` = 'wait_for_batch'")
    assert run.info.status == "SCHEDULED" and run.data.tags["slipway.state"] == "deferred"

    storage.write_bytes(trigger.uri, b"x\n")
    out = sensor.execute_complete(ctx, {"status": "found", "uri": trigger.uri})
    assert out == {"uri": trigger.uri, "month": f"{month:%Y-%m}"}
    [run] = client.search_runs([exp.experiment_id], "tags.`slipway.task_id` = 'wait_for_batch'")
    assert run.info.status == "FINISHED" and run.data.tags["slipway.state"] == "success"


def _sensor_runs(run_id: str):
    from include.tracking import configure_mlflow

    client = configure_mlflow().MlflowClient()
    exp = client.get_experiment_by_name("telco_churn")
    return client.search_runs(
        [exp.experiment_id], f"tags.`slipway.run_id` = '{run_id}' and tags.`slipway.level` = 'task'"
    )


def test_a_past_month_without_its_batch_is_skipped_at_once(isolated_home):
    from airflow.sdk.exceptions import AirflowSkipException

    ctx = _context(datetime(2025, 3, 1, tzinfo=UTC), run_id="manual__past")
    sensor = BatchSensor(task_id="wait_for_batch", pipeline="telco_churn")
    with pytest.raises(
        AirflowSkipException,
        match=r"no batch for 2025-03: nothing landed at .*2025-03\.csv by its deadline 2025-04-08",
    ):
        sensor.execute(ctx)
    [run] = _sensor_runs("manual__past")
    assert run.info.status == "FINISHED" and run.data.tags["slipway.state"] == "skipped"
    assert "no batch for 2025-03" in run.data.tags["slipway.reason"]


def test_the_deadline_passing_while_deferred_skips_the_run(isolated_home):
    from airflow.sdk.exceptions import AirflowSkipException, TaskDeferred

    ctx = _context(_this_month(), run_id="scheduled__waiting")
    sensor = BatchSensor(task_id="wait_for_batch", pipeline="telco_churn")
    with pytest.raises(TaskDeferred):
        sensor.execute(ctx)
    # What the triggerer hands back when the deferral's timeout (the deadline) passes.
    with pytest.raises(AirflowSkipException, match="no batch for"):
        sensor.resume_execution("__fail__", {"error": "Trigger timeout"}, ctx)
    [run] = _sensor_runs("scheduled__waiting")
    assert run.info.status == "FINISHED" and run.data.tags["slipway.state"] == "skipped"


def test_one_month_rule_for_scheduled_and_manual_runs():
    from include.months import month_end, run_month

    october = datetime(2026, 10, 1, tzinfo=UTC)
    scheduled = {"data_interval_start": october, "params": {"month": None}}
    assert run_month(scheduled) == "2026-10"  # the month the data interval starts in
    manual = {"data_interval_start": datetime(2025, 12, 1, tzinfo=UTC), "params": {"month": "2025-10"}}
    assert run_month(manual) == "2025-10"  # the trigger form's month wins
    with pytest.raises(ValueError, match="YYYY-MM"):
        run_month({"data_interval_start": october, "params": {"month": "2025-13"}})
    assert month_end("2025-12") == datetime(2026, 1, 1, tzinfo=UTC)


def test_a_named_past_month_is_judged_by_its_own_deadline(isolated_home):
    from airflow.sdk.exceptions import AirflowSkipException

    ctx = {**_context(_this_month(), run_id="manual__named"), "params": {"month": "2024-02"}}
    with pytest.raises(AirflowSkipException, match="no batch for 2024-02: .* by its deadline 2024-03-08"):
        BatchSensor(task_id="wait_for_batch", pipeline="telco_churn").execute(ctx)
