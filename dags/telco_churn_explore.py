"""
### telco_churn: explore (an example of a hand-written DAG)

Most pipelines need no Python: a spec and an expectation suite generate their DAGs. When a data
engineer needs more, a DAG can be composed from the same building blocks (`include.blocks.train`) plus
plain Python functions, and keeps Slipway's lineage: every task below gets its nested MLflow run.

This one reuses ingestion, DVC versioning and validation, then runs a custom profiling step.
Manual runs only.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import dag

from include.blocks import train
from include.blocks.adapter import DEFAULT_ARGS, custom_task
from include.custom_steps import profile_churn_by_contract

PIPELINE = "telco_churn"


@dag(
    dag_id=f"{PIPELINE}__explore",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    default_args={**DEFAULT_ARGS, "owner": "data-engineering"},
    tags=["slipway", "example"],
    doc_md=__doc__,
)
def telco_churn_explore():
    landed = train.wait_for_batch(PIPELINE)
    ingested = train.ingest_batch(PIPELINE)(landed.output)
    versioned = train.version_snapshot(PIPELINE)(ingested)
    validated = train.validate_snapshot(PIPELINE)(versioned)
    profile = custom_task(PIPELINE, profile_churn_by_contract)(versioned)
    validated >> profile


telco_churn_explore()
