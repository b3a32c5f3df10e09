"""The batch sensor defers while the batch is missing, and its trigger fires when the file lands."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from include import storage
from include.sensors import BatchArrivedTrigger, BatchSensor


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
    assert classpath == "include.sensors.BatchArrivedTrigger" and kwargs == {"uri": uri, "poll_interval": 3}


def _context(month_start: datetime):
    ti = SimpleNamespace(
        dag_id="telco_churn__train",
        run_id="scheduled__x",
        task_id="wait_for_batch",
        try_number=1,
        map_index=-1,
    )
    dag_run = SimpleNamespace(data_interval_start=month_start, data_interval_end=None, run_type="scheduled")
    return {"ti": ti, "dag_run": dag_run, "data_interval_start": month_start}


def test_sensor_defers_then_completes_in_the_same_lineage_run(isolated_home):
    from airflow.sdk.exceptions import TaskDeferred

    from include.lineage import configure_mlflow
    from include.settings import get_settings

    ctx = _context(datetime(2025, 3, 1, tzinfo=UTC))
    sensor = BatchSensor(task_id="wait_for_batch", pipeline="telco_churn", poke_interval=5)
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(ctx)
    trigger = deferred.value.trigger
    assert isinstance(trigger, BatchArrivedTrigger) and trigger.uri.endswith("/telco_churn/2025-03.csv")
    assert trigger.uri.startswith(get_settings().landing_uri)

    client = configure_mlflow().MlflowClient()
    exp = client.get_experiment_by_name("telco_churn")
    [run] = client.search_runs([exp.experiment_id], "tags.`slipway.task_id` = 'wait_for_batch'")
    assert run.info.status == "SCHEDULED" and run.data.tags["slipway.state"] == "deferred"

    storage.write_bytes(trigger.uri, b"x\n")
    out = sensor.execute_complete(ctx, {"status": "found", "uri": trigger.uri})
    assert out == {"uri": trigger.uri, "month": "2025-03"}
    [run] = client.search_runs([exp.experiment_id], "tags.`slipway.task_id` = 'wait_for_batch'")
    assert run.info.status == "FINISHED" and run.data.tags["slipway.state"] == "success"
