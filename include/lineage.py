"""Automatic lineage in MLflow: a parent run per DAG run, a nested run per task instance.

Every task of a Slipway DAG runs inside :func:`track`, applied by the building blocks in
:mod:`include.blocks` (and by Slipway's operators), so pipeline authors never call it:

* the DAG run's parent run is found (or created) by its tags ``slipway.dag_id`` + ``slipway.run_id``;
* the task instance gets a nested run tagged with dag_id, run_id, task_id, try_number, map_index,
  the code version (git commit) and the data interval, and is the active MLflow run while the
  task body runs, so anything the body logs lands there;
* data read and written is recorded with ``mlflow.log_input``: a task's *reads* are the data
  refs found in its arguments (what upstream tasks returned), its *writes* the refs in its own
  return value. A data ref is ``{"name", "uri", "digest", "kind"}``, e.g. the DVC snapshot;
* the nested run ends FINISHED or FAILED (with the error message as a tag), or stays open as
  SCHEDULED while a deferrable sensor waits, and is resumed when it wakes up.

The plugin in ``plugins/slipway_lineage.py`` closes the parent run when the DAG run ends.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any

from include.database import named_lock
from include.settings import PROJECT_ROOT, get_settings
from include.tracking import configure_mlflow, experiment_id, mlflow_client

log = logging.getLogger(__name__)

TAG = "slipway."
#: A DAG run's one-line outcome, on its parent run; the listener makes it the Airflow run's note.
OUTCOME_TAG = TAG + "outcome"
DATA_REF_KEYS = {"name", "uri", "digest", "kind"}
#: Results of earlier tasks handed down a chain: read by the task that gets them, written by none.
CARRIED_KEY = "carried"


# Where a change changes what runs: a new, uncommitted spec or suite makes the code version dirty.
_CODE_PATHS = ("dags", "include", "plugins", "pyproject.toml", "uv.lock")


@functools.cache
def code_version() -> str:
    """The git commit of the code that runs (``SLIPWAY_CODE_VERSION`` wins), ``+dirty`` if modified.

    Dirty means a tracked file differs from the commit, or an untracked file sits among the code,
    specs or suites (a new pipeline that was never committed is not the commit's code).
    """
    configured = get_settings().code_version
    if configured:
        return configured
    try:
        proc = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "rev-parse", "--verify", "-q", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        sha = proc.stdout.strip() if proc.returncode == 0 else ""
        dirty = subprocess.run(
            [
                "git",
                "-C",
                str(PROJECT_ROOT),
                "status",
                "--porcelain",
                "--untracked-files=all",
                "--",
                *_CODE_PATHS,
            ],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha + ("+dirty" if dirty else "")) if sha else "unknown"


def _search_one(client, exp_id: str, filters: dict[str, str]):
    clause = " and ".join(f"tags.`{k}` = '{v}'" for k, v in filters.items())
    runs = client.search_runs(
        [exp_id], filter_string=clause, max_results=5, order_by=["attributes.start_time ASC"]
    )
    return runs[0] if runs else None


def parent_run(pipeline: str, dag_id: str, run_id: str, extra_tags: dict[str, str] | None = None):
    """The MLflow parent run of a DAG run, created on first use: once, even when the DAG run's first
    tasks start together (MLflow has no unique key: the search and the creation run under a lock of
    the DAG run, in the serving database every worker shares)."""
    mlflow = configure_mlflow()
    client = mlflow.MlflowClient()
    exp_id = experiment_id(pipeline)
    keys = {f"{TAG}dag_id": dag_id, f"{TAG}run_id": run_id, f"{TAG}level": "dag_run"}
    found = _search_one(client, exp_id, keys)
    if found is not None:
        return found
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(named_lock(f"lineage-{dag_id}-{run_id}", timeout_s=60))
        except Exception as exc:  # the serving database unreachable, or the lock held for a minute
            # Lineage must not stop a task: without the lock a rare race can make a second parent.
            log.warning("lineage lock of %s/%s unavailable (%s); going on without it", dag_id, run_id, exc)
        return _find_or_create_parent(client, exp_id, keys, pipeline, extra_tags)


def _find_or_create_parent(client, exp_id: str, keys: dict[str, str], pipeline: str, extra_tags):
    dag_id, run_id = keys[f"{TAG}dag_id"], keys[f"{TAG}run_id"]
    found = _search_one(client, exp_id, keys)
    if found is not None:
        return found
    tags = {
        **keys,
        f"{TAG}pipeline": pipeline,
        f"{TAG}code_version": code_version(),
        **_definition_tags(pipeline),
        **(extra_tags or {}),
    }
    run = client.create_run(exp_id, tags=tags, run_name=f"{dag_id} {run_id}")
    _log_definition(client, run.info.run_id, pipeline)
    return run


def _definition_files(pipeline: str) -> dict[str, Path]:
    """The spec and the expectation suite that define ``pipeline`` (those that exist)."""
    s = get_settings()
    files = {"spec": s.pipelines_dir / f"{pipeline}.yaml"}
    try:
        from include.spec import load_spec

        files["suite"] = s.expectations_dir / load_spec(files["spec"]).suite_file
    except Exception:  # an invalid spec fails its task with the reason; lineage records what exists
        files["suite"] = s.expectations_dir / f"{pipeline}.json"
    return {k: p for k, p in files.items() if p.is_file()}


def _definition_tags(pipeline: str) -> dict[str, str]:
    return {
        f"{TAG}{kind}_sha256": hashlib.sha256(path.read_bytes()).hexdigest()
        for kind, path in _definition_files(pipeline).items()
    }


def _log_definition(client, run_id: str, pipeline: str) -> None:
    """The spec and suite a DAG run used, as artifacts of its parent run (their digests are tags)."""
    for kind, path in _definition_files(pipeline).items():
        client.log_artifact(run_id, str(path), f"definition/{kind}")


def _refs(value: Any, carried: bool = True) -> list[dict]:
    """Data refs found anywhere in a task's arguments or return value (``carried=False``: not under
    ``CARRIED_KEY``, what a task hands on from earlier ones; a task never wrote that)."""
    found: list[dict] = []
    if isinstance(value, dict):
        if DATA_REF_KEYS <= set(value) and isinstance(value.get("uri"), str):
            return [{k: value[k] for k in ("name", "uri", "digest", "kind")}]
        for k, v in value.items():
            if carried or k != CARRIED_KEY:
                found.extend(_refs(v, carried))
    elif isinstance(value, list | tuple):
        for v in value:
            found.extend(_refs(v, carried))
    # Once each: a ref read directly and carried too is one read.
    return list({(r["name"], r["uri"], str(r["digest"])): r for r in found}.values())


def data_ref(name: str, uri: str, digest: str, kind: str) -> dict:
    """A reference to a versioned piece of data, recorded as lineage wherever it flows."""
    return {"name": name, "uri": uri, "digest": digest, "kind": kind}


def _log_refs(mlflow, refs: list[dict], context: str) -> None:
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    seen = set()
    for ref in refs:
        key = (ref["name"], ref["digest"])
        if key in seen:
            continue
        seen.add(key)
        try:
            with warnings.catch_warnings():
                # MLflow registers its local-artifact source twice and warns that it is ambiguous.
                warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
                source = resolve_dataset_source(ref["uri"])
        except Exception:
            from mlflow.data.http_dataset_source import HTTPDatasetSource

            source = HTTPDatasetSource(url=ref["uri"])
        # MetaDataset declares ``profile`` abstract for its subclasses; it is instantiable as it is.
        dataset = MetaDataset(source=source, name=ref["name"], digest=str(ref["digest"])[:36])  # type: ignore[abstract]
        mlflow.log_input(
            dataset, context=context, tags={"kind": ref["kind"], "full_digest": str(ref["digest"])}
        )
        log.info("%s %s: %s (%s %s)", context, ref["name"], ref["uri"], ref["kind"], str(ref["digest"])[:16])
    if refs:
        mlflow.set_tag(f"{TAG}data.{context}", json.dumps(refs)[:5000])


def _month(context) -> str:
    from include.months import run_month

    try:
        return run_month(context)
    except (KeyError, AttributeError, ValueError):
        return ""


_RUN_TYPE_CAUSE = {"scheduled": "schedule", "manual": "manual", "backfill": "backfill"}


def trigger_tags(context, run_type: str) -> dict[str, str]:
    """Why the DAG run started, for its MLflow record: ``schedule``, ``manual``, ``backfill``, or what
    the newest triggering asset event says (its ``cause``, e.g. ``drift`` or ``performance``, with
    that event's payload as evidence)."""
    events = context.get("triggering_asset_events") or {}
    flat = sorted((e for evs in events.values() for e in (evs or [])), key=lambda e: e.timestamp)
    if flat:
        newest = flat[-1]
        extra = dict(getattr(newest, "extra", None) or {})
        asset = getattr(getattr(newest, "asset", None), "name", "") or "an asset"
        return {
            f"{TAG}trigger": str(extra.get("cause") or f"asset {asset}"),
            f"{TAG}trigger.evidence": json.dumps(extra, sort_keys=True, default=str)[:5000],
        }
    return {f"{TAG}trigger": _RUN_TYPE_CAUSE.get(run_type, run_type or "unknown")}


def _context_ids(context) -> dict[str, Any]:
    ti = context["ti"]
    dag_run = context["dag_run"]
    return {
        "dag_id": ti.dag_id,
        "run_id": ti.run_id,
        "task_id": ti.task_id,
        "try_number": int(getattr(ti, "try_number", 1) or 1),
        "map_index": int(getattr(ti, "map_index", -1) if getattr(ti, "map_index", None) is not None else -1),
        "interval_start": str(getattr(dag_run, "data_interval_start", "") or ""),
        "interval_end": str(getattr(dag_run, "data_interval_end", "") or ""),
        "month": _month(context),
        # Enum members print as "DagRunType.MANUAL": record the value an operator knows ("manual").
        "run_type": str(
            getattr(getattr(dag_run, "run_type", ""), "value", getattr(dag_run, "run_type", "")) or ""
        ),
    }


@contextlib.contextmanager
def track(pipeline: str, context, inputs: Any = None):
    """Run the body inside the task instance's nested MLflow run; yields a ``record(result)`` callback."""
    from mlflow.entities import RunStatus
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

    mlflow = configure_mlflow()
    client = mlflow.MlflowClient()
    ids = _context_ids(context)
    parent = parent_run(
        pipeline,
        ids["dag_id"],
        ids["run_id"],
        {
            f"{TAG}interval_start": ids["interval_start"],
            f"{TAG}interval_end": ids["interval_end"],
            f"{TAG}run_type": ids["run_type"],
            f"{TAG}month": ids["month"],
            **trigger_tags(context, ids["run_type"]),
        },
    )
    key = {
        f"{TAG}dag_id": ids["dag_id"],
        f"{TAG}run_id": ids["run_id"],
        f"{TAG}task_id": ids["task_id"],
        f"{TAG}try_number": str(ids["try_number"]),
        f"{TAG}map_index": str(ids["map_index"]),
    }
    exp_id = parent.info.experiment_id
    if parent.info.status != "RUNNING":  # the DAG run was cleared and runs again: its record is open again
        reopen_parent(client, parent)
    close_superseded_tries(client, exp_id, ids)
    child = _search_one(client, exp_id, key)  # a resumed deferrable task reuses its run
    if child is None:
        child = client.create_run(
            exp_id,
            run_name=ids["task_id"],
            tags={
                **key,
                MLFLOW_PARENT_RUN_ID: parent.info.run_id,
                MLFLOW_RUN_NAME: ids["task_id"],
                f"{TAG}level": "task",
                f"{TAG}pipeline": pipeline,
                f"{TAG}code_version": code_version(),
                f"{TAG}interval_start": ids["interval_start"],
                f"{TAG}interval_end": ids["interval_end"],
            },
        )
    else:
        client.update_run(child.info.run_id, status="RUNNING")
    started = time.monotonic()
    result_box: dict[str, Any] = {}

    def record(result: Any) -> Any:
        result_box["result"] = result
        return result

    log.info(
        "MLflow: experiment %r, DAG-run record %s, this task's record %s",
        pipeline,
        parent.info.run_id,
        child.info.run_id,
    )
    ui = run_link(exp_id, child.info.run_id)
    if ui:
        log.info("MLflow: this task's record %s", ui)
    with mlflow.start_run(run_id=child.info.run_id):
        status, state = "FINISHED", "success"
        try:
            _log_refs(mlflow, _refs(inputs), "read")
            yield record
            _log_refs(mlflow, _refs(result_box.get("result"), carried=False), "written")
        except BaseException as exc:
            name = type(exc).__name__
            if name in {"TaskDeferred", "AirflowRescheduleException", "TaskAwaitingInput"}:
                status, state = "SCHEDULED", "deferred"  # waiting, not failed; resumed by the same try
            elif name == "DownstreamTasksSkipped":  # the task ended well and skips what follows it
                status, state = "FINISHED", "success"
            elif name == "AirflowSkipException":
                status, state = "FINISHED", "skipped"
                mlflow.set_tag(f"{TAG}reason", str(exc)[:4000])
                client.set_tag(parent.info.run_id, f"{TAG}reason", str(exc)[:4000])
            else:
                status, state = "FAILED", "failed"
                mlflow.set_tag(f"{TAG}error", f"{name}: {exc}"[:4000])
            raise
        finally:
            mlflow.log_metric("task_duration_s", round(time.monotonic() - started, 3))
            mlflow.set_tag(f"{TAG}state", state)
            mlflow.end_run(status=RunStatus.to_string(RunStatus.from_string(status)))


def run_link(experiment: str, run_id: str) -> str | None:
    """The MLflow UI's page of a run, when the UI's address is configured (``SLIPWAY_MLFLOW_UI_URL``)."""
    from include.settings import get_settings
    from include.tracking import ui_link

    return ui_link(get_settings().mlflow_ui_url, f"experiments/{experiment}/runs/{run_id}")


def find_parent(pipeline: str, dag_id: str, run_id: str):
    """The MLflow parent run of a DAG run, or None (never creates one)."""
    client = mlflow_client()
    exp = client.get_experiment_by_name(pipeline)
    if exp is None:
        return None
    return _search_one(
        client, exp.experiment_id, {f"{TAG}dag_id": dag_id, f"{TAG}run_id": run_id, f"{TAG}level": "dag_run"}
    )


_OPEN = ("RUNNING", "SCHEDULED")


def _open_runs(client, exp_id: str, filters: dict[str, str]) -> list:
    """Runs matching the tags that are still RUNNING or SCHEDULED (status filtered here: no OR in MLflow)."""
    clause = " and ".join(f"tags.`{k}` = '{v}'" for k, v in filters.items())
    return [
        r
        for r in client.search_runs([exp_id], filter_string=clause, max_results=1000)
        if r.info.status in _OPEN
    ]


def _end(client, run, status: str, state: str, why: str) -> None:
    client.set_tag(run.info.run_id, f"{TAG}state", state)
    client.set_tag(run.info.run_id, f"{TAG}error" if status == "FAILED" else f"{TAG}reason", why[:4000])
    client.set_terminated(run.info.run_id, status=status)


def close_superseded_tries(client, exp_id: str, ids: dict) -> list[str]:
    """End the still-open runs of earlier tries of this task instance (their process was killed).

    A SIGKILLed task never reaches its ``finally``: its run would stay RUNNING forever. The next try
    is the first to notice, and closes it as ``killed``. Returns the run ids it closed.
    """
    closed = []
    for run in _open_runs(
        client,
        exp_id,
        {
            f"{TAG}dag_id": ids["dag_id"],
            f"{TAG}run_id": ids["run_id"],
            f"{TAG}task_id": ids["task_id"],
            f"{TAG}map_index": str(ids["map_index"]),
            f"{TAG}level": "task",
        },
    ):
        earlier = int(run.data.tags.get(f"{TAG}try_number", 0))
        if earlier < ids["try_number"]:
            _end(
                client,
                run,
                "FAILED",
                "killed",
                f"try {earlier} ended without closing its run (its process was killed or lost); "
                f"try {ids['try_number']} took over",
            )
            closed.append(run.info.run_id)
    return closed


def reopen_parent(client, parent) -> None:
    """Mark a DAG run's ended parent run RUNNING again (a cleared run), keeping what it ended as."""
    tags = parent.data.tags
    attempt = int(tags.get(f"{TAG}attempt", "1")) + 1
    previous = f"{tags.get(f'{TAG}state', parent.info.status.lower())} (attempt {attempt - 1})"
    client.update_run(parent.info.run_id, status="RUNNING")
    client.set_tag(parent.info.run_id, f"{TAG}attempt", str(attempt))
    client.set_tag(parent.info.run_id, f"{TAG}state", "running")
    history = ", ".join(x for x in (tags.get(f"{TAG}previous_states"), previous) if x)
    client.set_tag(parent.info.run_id, f"{TAG}previous_states", history[-4000:])


def reopen_parent_of(pipeline: str, dag_id: str, run_id: str) -> bool:
    """Reopen the parent run of a DAG run that runs again (called by the listener plugin)."""
    parent = find_parent(pipeline, dag_id, run_id)
    if parent is None or parent.info.status == "RUNNING":
        return False
    reopen_parent(mlflow_client(), parent)
    return True


_TI_TO_RUN = {"success": ("FINISHED", "success"), "skipped": ("FINISHED", "skipped")}


def close_parent(
    pipeline: str, dag_id: str, run_id: str, state: str, task_states: dict[str, tuple[str, int]] | None = None
) -> str | None:
    """End the DAG run's parent run with its final state, and every task run left open under it;
    return the DAG run's one-line outcome when a task recorded one (``OUTCOME_TAG``).

    ``task_states`` maps task_id to Airflow's (state, try_number) for the DAG run (the listener
    reads them from the metadata database). A nested run still open when its DAG run ends belongs to
    a try that was killed, or to a sensor that was still deferred: it is ended to match Airflow's
    task instance (``success``/``skipped`` if Airflow says so, otherwise failed as ``killed``).
    """
    client = mlflow_client()
    parent = find_parent(pipeline, dag_id, run_id)
    if parent is None:
        return None
    task_states = task_states or {}
    for run in _open_runs(
        client,
        parent.info.experiment_id,
        {f"{TAG}dag_id": dag_id, f"{TAG}run_id": run_id, f"{TAG}level": "task"},
    ):
        task_id = run.data.tags.get(f"{TAG}task_id", "")
        try_number = int(run.data.tags.get(f"{TAG}try_number", 0))
        ti_state, ti_try = task_states.get(task_id, ("unknown", try_number))
        if ti_try == try_number and ti_state in _TI_TO_RUN:
            status, tag = _TI_TO_RUN[ti_state]
            _end(client, run, status, tag, f"closed when the DAG run ended: Airflow has the task {ti_state}")
        else:
            _end(
                client,
                run,
                "FAILED",
                "killed",
                f"try {try_number} never closed its run before the DAG run ended {state} (Airflow has the "
                f"task {ti_state}{'' if ti_try == try_number else f' at try {ti_try}'}): its process was "
                "killed or lost, or it was still waiting",
            )
    client.set_tag(parent.info.run_id, f"{TAG}state", state)
    client.set_tag(
        parent.info.run_id, "mlflow.note.content", describe_dag_run(client, parent.info.run_id, state)
    )
    client.set_terminated(parent.info.run_id, status="FINISHED" if state == "success" else "FAILED")
    return parent.data.tags.get(OUTCOME_TAG)  # set by the tasks, all ended before the DAG run


def describe_dag_run(client, parent_run_id: str, state: str) -> str:
    """The Markdown description an operator reads on the DAG run's MLflow run: what, which month, outcome."""
    tags = client.get_run(parent_run_id).data.tags
    pipeline = tags.get(f"{TAG}pipeline", "?")
    month = tags.get(f"{TAG}month") or (tags.get(f"{TAG}interval_start") or "")[:7] or "?"
    lines = [
        f"**{pipeline}**, `{tags.get(f'{TAG}dag_id', '')}` run `{tags.get(f'{TAG}run_id', '')}`: data month **{month}**, {state}."
    ]
    blessing = tags.get(f"{TAG}blessing")
    if blessing == "passed":
        version = tags.get(f"{TAG}registered_version")
        lines.append("The candidate's blessing passed" + (f"; model version {version}." if version else "."))
    elif blessing == "failed":
        lines.append(
            f"The candidate was refused: gates {tags.get(f'{TAG}blessing.failed_gates', '?')} failed."
        )
        if tags.get(f"{TAG}failure"):
            lines.append("\n```\n" + tags[f"{TAG}failure"] + "\n```")
    elif state != "success":
        lines.append("It stopped before the gates; the failed task's run says why.")
    if tags.get(f"{TAG}reason"):
        lines.append(tags[f"{TAG}reason"])
    if tags.get(OUTCOME_TAG):
        lines.insert(1, tags[OUTCOME_TAG])
    return "\n\n".join(lines)


def tracked(pipeline: str):
    """Decorator for a task callable: run it inside :func:`track` with its arguments as inputs."""

    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            from airflow.sdk import get_current_context

            with track(pipeline, get_current_context(), inputs=[args, kwargs]) as record:
                return record(fn(*args, **kwargs))

        return inner

    return wrap


def sweep_ended_runs(days: int = 14) -> list[str]:
    """Close the lineage of finished DAG runs that MLflow missed (e.g. it was down when they ended).

    Reads Airflow's metadata database for the Slipway DAG runs that ended in the last ``days`` days
    and, where the MLflow parent run is still open or a task run under it is, closes them to match
    Airflow's states. Returns ``dag_id/run_id`` of each DAG run it closed. Needs Airflow's
    configuration in the environment (``slipway sweep-lineage`` sets it).
    """
    from datetime import UTC, datetime, timedelta

    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance as TI
    from airflow.utils.session import create_session
    from sqlalchemy import select

    client = mlflow_client()
    since = datetime.now(UTC) - timedelta(days=days)
    with create_session() as session:
        ended = session.execute(
            select(DagRun.dag_id, DagRun.run_id, DagRun.state).where(
                DagRun.state.in_(["success", "failed"]), DagRun.end_date >= since
            )
        ).all()
    closed = []
    for dag_id, run_id, state in ended:
        if "__" not in dag_id:  # not a Slipway DAG
            continue
        pipeline = dag_id.split("__", 1)[0]
        parent = find_parent(pipeline, dag_id, run_id)
        if parent is None:
            continue
        open_tasks = client.search_runs(
            [parent.info.experiment_id],
            filter_string=f"tags.`{TAG}run_id` = '{run_id}' and tags.`{TAG}dag_id` = '{dag_id}' "
            f"and tags.`{TAG}level` = 'task' and attributes.status = 'RUNNING'",
            max_results=1,
        ) + client.search_runs(
            [parent.info.experiment_id],
            filter_string=f"tags.`{TAG}run_id` = '{run_id}' and tags.`{TAG}dag_id` = '{dag_id}' "
            f"and tags.`{TAG}level` = 'task' and attributes.status = 'SCHEDULED'",
            max_results=1,
        )
        if parent.info.status == "RUNNING" or open_tasks:
            with create_session() as session:
                rows = session.execute(
                    select(TI.task_id, TI.state, TI.try_number).where(
                        TI.dag_id == dag_id, TI.run_id == run_id
                    )
                ).all()
            states = {t: (str(getattr(st, "value", st) or "none"), int(n or 0)) for t, st, n in rows}
            close_parent(pipeline, dag_id, run_id, str(getattr(state, "value", state)), states)
            closed.append(f"{dag_id}/{run_id}")
    return closed
