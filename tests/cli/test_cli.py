"""The `slipway` command as an operator uses it, in a subprocess."""

from __future__ import annotations

from tests.support.processes import clean_env, free_port, slipway


def test_status_says_mlflow_is_unreachable_instead_of_no_versions(tmp_path):
    closed = free_port()  # nothing listens there
    env = clean_env(SLIPWAY_HOME=str(tmp_path), MLFLOW_TRACKING_URI=f"http://127.0.0.1:{closed}")
    out = slipway(env, "status", timeout=120).stdout
    assert "is unreachable" in out and "unknown, not empty" in out
    assert "no registered versions yet" not in out
    assert (
        f"landing_zone  file://{tmp_path}/landing" in out and f"lake          file://{tmp_path}/lake" in out
    )


def test_status_on_an_empty_store_says_no_versions(tmp_path):
    out = slipway(clean_env(SLIPWAY_HOME=str(tmp_path)), "status", timeout=120).stdout
    assert "telco_churn: dags telco_churn__train" in out and "no registered versions yet" in out
    assert "unreachable" not in out
