"""One DAG run in this process (``slipway run``, ``make demo``), recorded like a scheduler's run.

``dag.test()`` runs the tasks in-process. Two things it does not do the way a scheduler run
does, and that the Airflow UI shows: each task's log goes to the task-log file the UI reads
(``<base_log_folder>/dag_id=…/run_id=…/task_id=…/attempt=N.log``, JSON lines as a worker's
supervisor writes them), and the run's start date is the wall clock, not the logical date (the
run's duration would otherwise span months and squash every real run in the duration chart).
"""

from __future__ import annotations

import contextlib
import os
import sys
from datetime import UTC, datetime
from pathlib import Path


def _say(msg: str) -> None:
    print(f"[slipway] {msg}", flush=True)


@contextlib.contextmanager
def output_to(path: Path):
    """Send this process's stdout/stderr (file descriptors, so Airflow's loggers too) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "ab") as fh:
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def task_log_path(ti) -> Path:
    """The task-log file the Airflow UI reads for this try (created, with Airflow's permissions)."""
    from airflow.sdk.log import init_log_file
    from airflow.utils.helpers import log_filename_template_renderer

    return init_log_file(log_filename_template_renderer()(ti=ti))


class _TaskLogs:
    """Wrap ``dag.test``'s in-process task runner: each try logs to its own file, as on a worker."""

    def __init__(self, started: datetime, echo: bool):
        self.started = started
        self.echo = echo
        self.paths: dict[str, Path] = {}
        self._fixed_runs: set[str] = set()

    def _fix_start_date(self, ti) -> None:
        if ti.run_id in self._fixed_runs:
            return
        from airflow.models.dagrun import DagRun
        from airflow.utils.session import create_session
        from sqlalchemy import update

        with create_session() as session:
            session.execute(
                update(DagRun)
                .where(DagRun.dag_id == ti.dag_id, DagRun.run_id == ti.run_id)
                .values(start_date=self.started)
            )
        self._fixed_runs.add(ti.run_id)

    def wrap(self, run_task):
        from airflow.sdk.log import configure_logging

        def run_task_logged(*, ti, task, run_triggerer: bool = False):
            self._fix_start_date(ti)
            path = task_log_path(ti)
            self.paths[ti.task_id] = path
            sys.stdout.flush()
            sys.stderr.flush()
            with open(path, "ab") as fh, output_to(path):
                # What a worker's task process does: structured JSON lines, secrets masked.
                configure_logging(json_output=True, output=fh, cache_logger_on_first_use=False)
                try:
                    return run_task(ti=ti, task=task, run_triggerer=run_triggerer)
                finally:
                    fh.flush()
                    # The original stdout: sys.stdout may still be a redirection into the (closing) task log.
                    configure_logging(
                        json_output=False, output=sys.__stdout__, cache_logger_on_first_use=False
                    )
                    if self.echo:
                        print(f"--- {ti.task_id} (try {ti.try_number}): {path}\n{render(path)}", flush=True)

        return run_task_logged


def use_airflow_env() -> None:
    """Embedded defaults for Airflow unless the environment already says otherwise."""
    from include.settings import airflow_environment

    env = airflow_environment()
    os.environ.update(env)
    # Airflow spawns `airflow` subprocesses from PATH: the project's interpreter must come first.
    bindir = os.path.dirname(sys.executable)
    if not os.environ.get("PATH", "").startswith(bindir):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    if env["PYTHONPATH"] not in sys.path:
        sys.path[:0] = [p for p in env["PYTHONPATH"].split(os.pathsep) if p]


def migrate_airflow_db(quiet: bool = True) -> None:
    """Create or upgrade the Airflow metadata database."""
    import subprocess

    use_airflow_env()
    proc = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], capture_output=quiet, text=True, env=os.environ
    )
    if proc.returncode != 0:
        raise SystemExit(f"airflow db migrate failed:\n{(proc.stderr or '')[-3000:]}")


def logical_date_for(month: str | None) -> datetime:
    """A monthly data interval [month, next month) is run at its end; no month: now."""
    if not month:
        return datetime.now(UTC)
    year, mon = (int(x) for x in month.split("-"))
    y2, m2 = (year + 1, 1) if mon == 12 else (year, mon + 1)
    return datetime(y2, m2, 1, tzinfo=UTC)


def render(path: Path, last: int | None = None) -> str:
    """A task log (or its last lines) rendered for a terminal: level, event, error."""
    import json

    out = []
    lines = path.read_text(errors="replace").splitlines()
    for raw in lines[-last:] if last else lines:
        try:
            rec = json.loads(raw)
        except ValueError:
            out.append(raw)
            continue
        line = f"{rec.get('level', '')[:5]:5} {rec.get('event', '')}"
        for exc in rec.get("error_detail") or []:
            frames = exc.get("frames") or []
            where = f" at {frames[-1]['filename']}:{frames[-1]['lineno']}" if frames else ""
            line += f"\n      {exc.get('exc_type')}: {exc.get('exc_value')}{where}"
        out.append(line)
    return "\n".join(out)


def run_dag(dag_id: str, month: str | None = None, quiet: bool = True, conf: dict | None = None):
    """Run one DAG run with ``dag.test()`` for the data interval starting at ``month`` (and the trigger
    form's ``conf``); return the DagRun.

    Task logs go where the Airflow UI reads them. With ``quiet``, the run's own loop (which
    task starts and ends) goes to ``<state>/logs/<dag_id>.log`` and a failed task's log tail is
    printed; without, the loop is printed and each task's log after the task.
    """
    use_airflow_env()
    import logging

    from include.settings import PROJECT_ROOT, get_settings

    logging.getLogger("airflow").setLevel(logging.WARNING)
    import airflow.sdk.definitions.dag as sdk_dag
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags"))
    if dag_id not in bag.dags:
        errors = "\n".join(f"{k}: {v}" for k, v in bag.import_errors.items())
        raise SystemExit(
            f"DAG {dag_id!r} not found in dags/." + (f"\nImport errors:\n{errors}" if errors else "")
        )
    dag = bag.dags[dag_id]
    logs = _TaskLogs(started=datetime.now(UTC), echo=not quiet)
    original = sdk_dag._run_task
    sdk_dag._run_task = logs.wrap(original)
    loop_log = get_settings().home / "logs" / f"{dag_id}.log"
    try:
        if quiet:
            _say("task logs: in the Airflow UI (make up-embedded), and under " + _base_log_folder())
            with output_to(loop_log):
                dr = dag.test(logical_date=logical_date_for(month), run_conf=conf)
        else:
            dr = dag.test(logical_date=logical_date_for(month), run_conf=conf)
    finally:
        sdk_dag._run_task = original
        # dag.test leaves the root handler writing to the last task's (now closed) log file, and a
        # second configure_logging does not replace it: point it back at the console.
        for handler in logging.getLogger().handlers:
            if type(handler) is logging.StreamHandler and handler.lock is not None:
                with handler.lock:  # not setStream(): it flushes the old, closed stream first
                    handler.stream = sys.__stdout__
    if quiet and str(dr.state) != "success":
        for ti in dr.get_task_instances(state=["failed"]):
            path = logs.paths.get(ti.task_id)
            if path is not None:
                print(f"\n[slipway] task {ti.task_id} failed; its log ({path}) ends:", file=sys.stderr)
                print(render(path, last=60), file=sys.stderr)
    return dr


def _base_log_folder() -> str:
    from airflow.configuration import conf

    return conf.get("logging", "base_log_folder")
