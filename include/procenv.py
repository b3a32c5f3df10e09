"""The environment for a child process that must not inherit this process's configuration.

A shell that has ``SLIPWAY_HOME``, ``MLFLOW_TRACKING_URI`` or ``AIRFLOW__...`` exported (or AWS
credentials and endpoints) would point a child ``slipway`` / ``airflow`` / ``mlflow`` at the
caller's stores. :func:`clean_env` drops those settings so the child sees only what the caller
passes explicitly, and puts this interpreter's ``bin`` folder first on ``PATH`` so the child finds
the same installation's commands. Used by the benchmarks and by the tests' subprocess helpers.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

#: Variables whose names start with one of these are not passed on.
DROPPED_PREFIXES = ("AIRFLOW", "MLFLOW_", "SLIPWAY_", "AWS_", "PYTEST_")


def clean_env(**overrides: str) -> dict[str, str]:
    """``os.environ`` without Airflow/MLflow/Slipway/AWS/pytest settings, this venv's ``bin`` first
    on ``PATH``, then ``overrides`` (which may set any of those, ``PATH`` included)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(DROPPED_PREFIXES)}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.update(overrides)
    return env
