"""The suite writes only to temporary folders: nothing appears in the checkout (no ./mlruns)."""

from __future__ import annotations


def test_the_suite_leaves_no_files_in_the_checkout(stray_files_at_start, stray_files):
    new = sorted(stray_files() - stray_files_at_start)
    assert new == [], f"the test suite left files in the checkout: {new[:10]}"


def test_no_mlflow_artifacts_are_tracked(project_root):
    import subprocess

    tracked = subprocess.run(
        ["git", "-C", str(project_root), "ls-files", "mlruns", "mlartifacts"], capture_output=True, text=True
    ).stdout.split()
    assert tracked == []
