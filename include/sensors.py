"""Waiting for data: a deferrable sensor for a pipeline's batch of the data interval.

The sensor checks once; if the batch is not there it hands the wait to the triggerer
(:class:`BatchArrivedTrigger`), freeing its worker slot until the file lands.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseSensorOperator
from airflow.sdk.exceptions import AirflowFailException
from airflow.triggers.base import BaseTrigger, TriggerEvent


def interval_month(context) -> str:
    """YYYY-MM of the run's data interval start (logical date or run_after as fallbacks)."""
    for key in ("data_interval_start", "logical_date"):
        value = context.get(key)
        if value is not None:
            return value.strftime("%Y-%m")
    return context["dag_run"].run_after.strftime("%Y-%m")


class BatchArrivedTrigger(BaseTrigger):
    """Fires when an object exists at ``uri`` (``file://`` or ``s3://``)."""

    def __init__(self, uri: str, poll_interval: float = 60.0):
        super().__init__()
        self.uri = uri
        self.poll_interval = poll_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("include.sensors.BatchArrivedTrigger", {"uri": self.uri, "poll_interval": self.poll_interval})

    async def run(self):
        from include import storage

        while True:
            if await asyncio.to_thread(storage.exists, self.uri):
                yield TriggerEvent({"status": "found", "uri": self.uri})
                return
            await asyncio.sleep(self.poll_interval)


class BatchSensor(BaseSensorOperator):
    """Wait for the landed batch of the run's data interval; deferrable by default."""

    ui_color = "#e8f4fd"

    def __init__(
        self,
        *,
        pipeline: str,
        deferrable: bool = True,
        poke_interval: float = 60,
        timeout: float = timedelta(days=7).total_seconds(),
        **kwargs,
    ):
        super().__init__(poke_interval=poke_interval, timeout=timeout, **kwargs)
        self.pipeline = pipeline
        self.deferrable = deferrable

    def _uri(self, context) -> str:
        from include.settings import get_settings
        from include.spec import load_pipeline
        from include.tasks.ingest import landing_batch_uri

        return landing_batch_uri(
            get_settings().landing_uri, load_pipeline(self.pipeline), interval_month(context)
        )

    def poke(self, context) -> bool:
        from include import storage

        return storage.exists(self._uri(context))

    def execute(self, context) -> dict:
        from include.lineage import track

        with track(self.pipeline, context) as record:
            uri = self._uri(context)
            if self.poke(context):
                return record({"uri": uri, "month": interval_month(context)})
            if not self.deferrable:
                super().execute(context)
                return record({"uri": uri, "month": interval_month(context)})
            self.log.info("Batch not landed yet at %s; deferring until it does", uri)
            self.defer(
                trigger=BatchArrivedTrigger(uri=uri, poll_interval=float(self.poke_interval)),
                method_name="execute_complete",
                timeout=timedelta(seconds=self.timeout) if self.timeout else None,
            )
        raise AssertionError("unreachable")  # pragma: no cover

    def execute_complete(self, context, event: dict | None = None) -> dict:
        from include.lineage import track

        with track(self.pipeline, context) as record:
            if not event or event.get("status") != "found":
                raise AirflowFailException(f"waiting for the batch ended without it: {event}")
            return record({"uri": event["uri"], "month": interval_month(context)})
