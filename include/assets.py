"""The Airflow assets of every pipeline, in one place: what each DAG family produces and consumes.

``for_pipeline("telco_churn").candidate`` is updated by ``telco_churn__train`` when it registers a
new candidate version and schedules ``telco_churn__rollout``; ``champion`` is updated on every
promotion and rollback; ``drift`` is updated by ``telco_churn__monitor`` when served traffic drifted
or live performance dropped (its payload: the cause, the window and what breached), and
schedules ``telco_churn__train`` besides its cron; ``landed`` is updated by ``telco_churn__train``
when it has ingested a month's batch (payload: the month) and schedules ``telco_churn__score``
(``scoring.schedule: landed``, the default). The DAG files name these in
``outlets=`` and ``schedule=``; the blocks set the event payload on the same objects.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from airflow.sdk import Asset


@dataclass(frozen=True)
class PipelineAssets:
    """The assets of one pipeline, by purpose."""

    candidate: Asset
    champion: Asset
    drift: Asset
    landed: Asset


@functools.cache
def for_pipeline(pipeline: str) -> PipelineAssets:
    """The assets of ``pipeline`` (the same objects on every call)."""
    return PipelineAssets(
        candidate=Asset(name=f"{pipeline}__candidate", uri=f"slipway://{pipeline}/candidate", group="model"),
        champion=Asset(name=f"{pipeline}__champion", uri=f"slipway://{pipeline}/champion", group="model"),
        drift=Asset(name=f"{pipeline}__drift", uri=f"slipway://{pipeline}/drift", group="monitoring"),
        landed=Asset(name=f"{pipeline}__landed", uri=f"slipway://{pipeline}/landed", group="data"),
    )
