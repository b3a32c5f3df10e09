"""The lineage listener runs in the scheduler: with MLflow down it must give up quickly, not block."""

from __future__ import annotations

import importlib.util
import socket
import threading
import time
from types import SimpleNamespace

import pytest

from tests.support.processes import ROOT


def _plugin():
    spec = importlib.util.spec_from_file_location(
        "slipway_lineage_plugin", ROOT / "plugins" / "slipway_lineage.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def silent_mlflow():
    """A TCP server on loopback that accepts connections and never answers (a hung tracking server)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held, stop = [], threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(2)
    for conn in held:
        conn.close()
    server.close()


def test_closing_the_parent_run_never_blocks_the_scheduler(silent_mlflow, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", silent_mlflow)
    plugin = _plugin()
    dag_run = SimpleNamespace(dag_id="telco_churn__train", run_id="scheduled__2025-12-01")
    started = time.monotonic()
    finished = plugin._close(dag_run, "success", timeout=1.0)
    waited = time.monotonic() - started
    assert finished is False  # MLflow never answered: the listener gave up instead of waiting on it
    assert waited < 10, f"the scheduler was held for {waited:.1f} s"


def test_closing_the_parent_run_records_the_state(isolated_home, monkeypatch):
    from include.lineage import parent_run
    from include.tracking import configure_mlflow

    plugin = _plugin()
    parent = parent_run("telco_churn", "telco_churn__train", "manual__x")
    assert plugin._close(SimpleNamespace(dag_id="telco_churn__train", run_id="manual__x"), "failed") is True
    run = configure_mlflow().MlflowClient().get_run(parent.info.run_id)
    assert run.info.status == "FAILED" and run.data.tags["slipway.state"] == "failed"


def test_a_failing_mlflow_is_tried_again_and_the_outcome_becomes_the_note(isolated_home, monkeypatch):
    """MLflow fails twice (a restart, a timeout): the listener's thread tries again, closes the parent
    run, and hands the run's one-line outcome to the DAG run's note."""
    import include.lineage as lineage
    from include.lineage import OUTCOME_TAG, parent_run
    from include.tracking import configure_mlflow

    plugin = _plugin()
    monkeypatch.setattr(plugin, "RETRY_WAITS_S", (0.05, 0.05, 0.05))
    parent = parent_run("telco_churn", "telco_churn__monitor", "scheduled__x")
    client = configure_mlflow().MlflowClient()
    client.set_tag(parent.info.run_id, OUTCOME_TAG, "BREACH on 400 rows of version 2: drift in contract")
    real, calls, notes = lineage.close_parent, [], []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) <= 2:
            raise ConnectionError("MLflow did not answer")
        return real(*args, **kwargs)

    monkeypatch.setattr(lineage, "close_parent", flaky)
    monkeypatch.setattr(plugin, "_note", lambda dag_id, run_id, text: notes.append((dag_id, run_id, text)))
    assert plugin._close(SimpleNamespace(dag_id="telco_churn__monitor", run_id="scheduled__x"), "success")
    assert len(calls) == 3
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"
    assert notes == [
        ("telco_churn__monitor", "scheduled__x", "BREACH on 400 rows of version 2: drift in contract")
    ]
    # The MLflow run's description starts with the same line.
    assert "BREACH on 400 rows" in client.get_run(parent.info.run_id).data.tags["mlflow.note.content"]
