"""Waiting for data: a deferrable sensor for a pipeline's batch of the data interval.

The sensor checks once; if the batch is not there it hands the wait to the triggerer
(:class:`BatchArrivedTrigger`), freeing its worker slot until the file lands.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import BaseSensorOperator
from airflow.sdk.exceptions import (
    AirflowFailException,
    AirflowSensorTimeout,
    AirflowSkipException,
    TaskDeferralTimeout,
)
from airflow.triggers.base import BaseTrigger, TriggerEvent

from include.months import month_end, run_month


def interval_month(context) -> str:
    """The month the run processes (see :mod:`include.months`)."""
    return run_month(context)


class BatchArrivedTrigger(BaseTrigger):
    """Fires when an object exists at ``uri`` (``file://`` or ``s3://``)."""

    def __init__(self, uri: str, poll_interval: float = 60.0):
        super().__init__()
        self.uri = uri
        self.poll_interval = poll_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "include.blocks.sensors.BatchArrivedTrigger",
            {"uri": self.uri, "poll_interval": self.poll_interval},
        )

    async def run(self):
        from include import storage

        while True:
            if await asyncio.to_thread(storage.exists, self.uri):
                yield TriggerEvent({"status": "found", "uri": self.uri})
                return
            await asyncio.sleep(self.poll_interval)


class BatchSensor(BaseSensorOperator):
    """Wait for the landed batch of the run's data interval, until the spec's deadline; deferrable.

    The deadline is ``source.deadline_days`` after the interval ends. Before it, the sensor waits in
    the triggerer (no worker slot); at or after it, the run is skipped with "no batch for YYYY-MM",
    so a month whose batch never comes neither fails nor holds the pipeline up. A past month whose
    batch is missing is therefore skipped at once.
    """

    ui_color = "#e8f4fd"

    def __init__(self, *, pipeline: str, deferrable: bool = True, poke_interval: float = 60, **kwargs):
        # The timeout is the deadline's, computed per run; this one only bounds a non-deferrable wait.
        kwargs.setdefault("timeout", timedelta(days=400).total_seconds())
        super().__init__(poke_interval=poke_interval, **kwargs)
        self.pipeline = pipeline
        self.deferrable = deferrable

    def _spec(self):
        from include.spec import load_pipeline

        return load_pipeline(self.pipeline)

    def _uri(self, context) -> str:
        from include.settings import get_settings
        from include.tasks.train.ingest import landing_batch_uri

        return landing_batch_uri(get_settings().landing_uri, self._spec(), interval_month(context))

    def deadline(self, context) -> datetime:
        """When the month's batch must have landed: the month's end plus ``source.deadline_days``."""
        return month_end(interval_month(context)) + timedelta(days=self._spec().source.deadline_days)

    def _skip(self, context, uri: str) -> AirflowSkipException:
        month = interval_month(context)
        return AirflowSkipException(
            f"no batch for {month}: nothing landed at {uri} by its deadline "
            f"{self.deadline(context):%Y-%m-%d %H:%M} UTC (source.deadline_days after the month ended); "
            f"this run is skipped and trains nothing. If the batch arrives later, land it and clear "
            f"this DAG run to train on {month}."
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
            remaining = (self.deadline(context) - datetime.now(UTC)).total_seconds()
            if remaining <= 0:
                raise self._skip(context, uri)
            if not self.deferrable:
                self.timeout = remaining
                self.soft_fail = True
                super().execute(context)
                return record({"uri": uri, "month": interval_month(context)})
            self.log.info(
                "The %s batch has not landed at %s: this run waits (deferred, holding no worker) until it "
                "lands or until %s UTC, then is skipped (source.deadline_days). Land the file there to "
                "train on %s now.",
                interval_month(context),
                uri,
                f"{self.deadline(context):%Y-%m-%d %H:%M}",
                interval_month(context),
            )
            self.defer(
                trigger=BatchArrivedTrigger(uri=uri, poll_interval=float(self.poke_interval)),
                method_name="execute_complete",
                timeout=timedelta(seconds=remaining),
            )
        raise AssertionError("unreachable")  # pragma: no cover

    def resume_execution(self, next_method: str, next_kwargs: dict | None, context):
        """The deadline passed while deferred: skip the run (with its reason) instead of failing it."""
        from include.lineage import track

        try:
            return super().resume_execution(next_method, next_kwargs, context)
        except (AirflowSensorTimeout, TaskDeferralTimeout):
            with track(self.pipeline, context):
                raise self._skip(context, self._uri(context)) from None

    def execute_complete(self, context, event: dict | None = None) -> dict:
        from include.lineage import track

        with track(self.pipeline, context) as record:
            if not event or event.get("status") != "found":
                raise AirflowFailException(f"waiting for the batch ended without it: {event}")
            return record({"uri": event["uri"], "month": interval_month(context)})
