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
