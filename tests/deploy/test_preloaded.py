"""The scheduler (and the Celery worker) start with the task libraries imported."""

from __future__ import annotations

import subprocess
import sys

from include.deploy.embedded import airflow_components
from tests.support.processes import ROOT


def test_every_task_library_named_imports_and_a_missing_one_is_reported_not_fatal():
    code = (
        "from include.deploy.preloaded import TASK_MODULES, preload\n"
        "took, failed = preload(TASK_MODULES + ('slipway_no_such_module',))\n"
        "print(failed)\n"
        "assert len(failed) == 1 and failed[0].startswith('slipway_no_such_module: ModuleNotFoundError'), failed\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_embedded_scheduler_and_the_production_worker_start_preloaded():
    assert airflow_components()["scheduler"][1:4] == ["-m", "include.deploy.preloaded", "scheduler"]
    assert "include.deploy.preloaded" not in " ".join(airflow_components()["api-server"])
