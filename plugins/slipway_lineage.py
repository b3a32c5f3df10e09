"""Airflow plugin: closes each DAG run's MLflow parent run with the DAG run's final state.

When a task recorded the run's one-line outcome (a monitor's breach and what it triggered, a
rollout's skip and why), it becomes the DAG run's note in the Airflow UI, unless a person wrote one.

It also ends any task run a killed try left open under it (matching Airflow's task instance), and
reopens the parent run when a cleared DAG run starts again.

Task-level lineage (one nested MLflow run per task instance) is recorded by the tasks themselves
(see ``include/lineage.py``); this listener completes the picture at the DAG-run level. It runs in
the scheduler, so it must never raise and never hold the scheduler up: the MLflow call runs in a
daemon thread that the scheduler waits on for at most ``CLOSE_TIMEOUT_S`` seconds; the thread goes on
trying after that (``RETRY_WAITS_S``) while the scheduler works. With MLflow down for longer the
parent run stays open (logged) until ``slipway sweep`` (or a re-run) closes it; the scheduler loses
a few seconds, not minutes of MLflow's HTTP retries.
"""

from __future__ import annotations

import logging
import threading
import time

from airflow.listeners import hookimpl
from airflow.plugins_manager import AirflowPlugin

log = logging.getLogger(__name__)


def _pipeline(dag_id: str) -> str | None:
    return dag_id.split("__", 1)[0] if "__" in dag_id else None


CLOSE_TIMEOUT_S = 5.0


#: Waits between tries when MLflow fails or is slow (the scheduler waits for none of them).
RETRY_WAITS_S = (5.0, 15.0, 45.0)


def _close_now(pipeline: str, dag_id: str, run_id: str, state: str) -> None:
    from include.lineage import close_parent, reopen_parent_of

    for attempt in range(len(RETRY_WAITS_S) + 1):
        try:
            if state == "running":
                reopen_parent_of(pipeline, dag_id, run_id)
                return
            outcome = close_parent(pipeline, dag_id, run_id, state, _task_states(dag_id, run_id))
            break
        except Exception:  # the scheduler must keep going; lineage can be completed later
            if attempt == len(RETRY_WAITS_S):
                log.exception(
                    "could not update the MLflow parent run of %s/%s after %d tries; `slipway sweep` "
                    "closes it later",
                    dag_id,
                    run_id,
                    attempt + 1,
                )
                return
            log.warning("MLflow failed on the parent run of %s/%s; retrying", dag_id, run_id, exc_info=True)
            time.sleep(RETRY_WAITS_S[attempt])
    if outcome:
        _note(dag_id, run_id, outcome)


def _note(dag_id: str, run_id: str, text: str) -> None:
    """The DAG run's outcome as its note in the Airflow UI, unless it has one (a person's stays).

    A session of its own, one row of ``dag_run_note``: never the scheduler's ORM objects."""
    try:
        from airflow.models.dagrun import DagRun, DagRunNote
        from airflow.utils.session import create_session
        from sqlalchemy import select

        with create_session() as session:
            key = session.scalar(select(DagRun.id).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
            if key is None or session.get(DagRunNote, key) is not None:
                return
            note = DagRunNote(content=text[:1000])
            note.dag_run_id = key
            session.add(note)
    except Exception:  # a note is a courtesy: the scheduler goes on without it
        log.warning("could not write the outcome of %s/%s as its note", dag_id, run_id, exc_info=True)


def _task_states(dag_id: str, run_id: str) -> dict[str, tuple[str, int]]:
    """Airflow's (state, try_number) of each task of the DAG run, read as plain values.

    A session of its own and scalar columns only: touching the scheduler's ORM objects from here
    would detach them from its session and crash its loop.
    """
    try:
        from airflow.models.taskinstance import TaskInstance as TI
        from airflow.utils.session import create_session
        from sqlalchemy import select

        with create_session() as session:
            rows = session.execute(
                select(TI.task_id, TI.state, TI.try_number).where(TI.dag_id == dag_id, TI.run_id == run_id)
            ).all()
        return {task: (str(getattr(st, "value", st) or "none"), int(tries or 0)) for task, st, tries in rows}
    except Exception:  # no metadata database here: close by what MLflow knows
        log.warning("task states of %s/%s not readable; closing lineage from MLflow alone", dag_id, run_id)
        return {}


def _close(dag_run, state: str, timeout: float | None = None) -> bool:
    """Close (or, for ``running``, reopen) the parent run in a daemon thread; True if done in time."""
    pipeline = _pipeline(dag_run.dag_id)
    if pipeline is None:
        return True
    worker = threading.Thread(
        target=_close_now,
        args=(pipeline, str(dag_run.dag_id), str(dag_run.run_id), state),
        name=f"slipway-lineage-{dag_run.run_id}",
        daemon=True,
    )
    worker.start()
    worker.join(CLOSE_TIMEOUT_S if timeout is None else timeout)
    if worker.is_alive():
        log.warning(
            "MLflow did not answer within %.0f s: the parent run of %s/%s stays open for now",
            CLOSE_TIMEOUT_S if timeout is None else timeout,
            dag_run.dag_id,
            dag_run.run_id,
        )
        return False
    return True


class _DagRunListener:
    @hookimpl
    def on_dag_run_running(self, dag_run, msg: str):
        # Only a cleared run has a parent run to reopen; a fresh run costs the scheduler nothing here.
        if getattr(dag_run, "clear_number", 0):
            _close(dag_run, "running")

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
