"""Airflow plugin: closes each DAG run's MLflow parent run with the DAG run's final state.

Task-level lineage (one nested MLflow run per task instance) is recorded by the tasks themselves
(see ``include/lineage.py``); this listener completes the picture at the DAG-run level. It runs in
the scheduler, so it must never raise: a tracking-store hiccup is logged, not propagated.
"""

from __future__ import annotations

import logging

from airflow.listeners import hookimpl
from airflow.plugins_manager import AirflowPlugin

log = logging.getLogger(__name__)


def _pipeline(dag_id: str) -> str | None:
    return dag_id.split("__", 1)[0] if "__" in dag_id else None


def _close(dag_run, state: str) -> None:
    pipeline = _pipeline(dag_run.dag_id)
    if pipeline is None:
        return
    try:
        from include.lineage import close_parent

        close_parent(pipeline, dag_run.dag_id, dag_run.run_id, state)
    except Exception:  # the scheduler must keep going; lineage can be completed later
        log.exception("could not close the MLflow parent run of %s/%s", dag_run.dag_id, dag_run.run_id)


class _DagRunListener:
    @hookimpl
    def on_dag_run_success(self, dag_run, msg: str):
        _close(dag_run, "success")

    @hookimpl
    def on_dag_run_failed(self, dag_run, msg: str):
        _close(dag_run, "failed")


class SlipwayLineagePlugin(AirflowPlugin):
    """Registers the DAG-run lineage listener."""

    name = "slipway_lineage"
    listeners = [_DagRunListener()]
