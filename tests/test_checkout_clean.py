"""Nothing the suite writes is tracked in the checkout. (That it writes only to temporary folders is
checked after the last test of every worker: ``pytest_sessionfinish`` in ``tests/conftest.py``.)"""

from __future__ import annotations


def test_no_mlflow_artifacts_are_tracked(project_root):
    import subprocess

    tracked = subprocess.run(
        ["git", "-C", str(project_root), "ls-files", "mlruns", "mlartifacts"], capture_output=True, text=True
    ).stdout.split()
    assert tracked == []
