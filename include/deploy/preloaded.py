"""``python -m include.deploy.preloaded <airflow command>``: an Airflow command with the task libraries imported.

Airflow runs a task in a process forked from the component that executes it: under the
LocalExecutor, from the scheduler (its executor's worker processes are forked from it, and each
task's process from a worker); under Celery, from ``airflow celery worker`` (its pool's processes).
A fork inherits every module its parent imported. Started plainly, those parents hold Airflow and
little else, so every task imported MLflow, scikit-learn, Great Expectations, SHAP... again:
~1-3 s of CPU per task before its first line ran, paid by every task of a run, four at a time on
the gates (measured with ``python -m benchmarks.scheduler``; README, "Speed").

Imported here once, before Airflow starts its workers: a task begins with them in memory (copy
on write; Airflow freezes the collector before it forks, so the pages stay shared). The cost is
the parent's memory (~600 MiB resident instead of ~250) and ~6 s more at its start. A library
that fails to import is reported and skipped: the task that needs it fails with the real error.
"""

from __future__ import annotations

import importlib
import sys
import time

#: Libraries Slipway's tasks import. Not Slipway's own modules (``include``): a fork would run them as
#: they were when the component started, while each task parses its DAG file anew and its lineage
#: records the checkout's commit; a change to ``include/`` must reach the next task without a restart.
TASK_MODULES = (
    "numpy",
    "pandas",
    "pyarrow.parquet",
    "sklearn.linear_model",
    "sklearn.ensemble",
    "sklearn.model_selection",
    "mlflow",
    "mlflow.onnx",
    "great_expectations",
    "shap",
    "fairlearn.metrics",
    "skl2onnx",
    "onnx",
    "onnxruntime",
    "evidently",
)


def preload(modules: tuple[str, ...] = TASK_MODULES) -> tuple[float, list[str]]:
    """Import ``modules``; (seconds taken, the ones that failed with their error)."""
    started = time.perf_counter()
    failed = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - a task that needs it reports the real error
            failed.append(
                f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            )
    return time.perf_counter() - started, failed


def main() -> None:
    took, failed = preload()
    print(
        f"[slipway] task libraries imported in {took:.1f} s before `airflow {' '.join(sys.argv[1:])}`"
        + (f"; not imported: {'; '.join(failed)}" if failed else ""),
        file=sys.stderr,
        flush=True,
    )
    from airflow.__main__ import main as airflow_main

    sys.argv = ["airflow", *sys.argv[1:]]
    airflow_main()


if __name__ == "__main__":
    main()
