"""``send_alert``: a breach reaches the spec's connection (a real webhook on localhost); with no
connection it is a warning in the task log, never dropped; a connection of another type fails."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from include.blocks.adapter import Step
from include.blocks.monitor import send_alert

JUDGED = {
    "status": "breach",
    "alert": True,
    "trigger": "drift",
    "held_by": None,
    "month": "2025-12",
    "evidence": {
        "champion": 3,
        "rows": 1200,
        "since": "2026-03-01T08:00:00.000000+00:00",
        "until": "2026-03-01T09:00:00.000000+00:00",
        "drifted": [{"metric": "psi[monthly_charges]", "value": 0.61, "threshold": 0.25}],
        "drifted_count": 1,
    },
}


class _Hook(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook():
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    server.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def run(isolated_home):
    import mlflow

    with mlflow.start_run() as active:
        yield active
    mlflow.end_run()


def _send(monkeypatch, conn: dict | None):
    monkeypatch.delenv("AIRFLOW_CONN_SLIPWAY_ALERTS", raising=False)
    if conn is not None:
        monkeypatch.setenv("AIRFLOW_CONN_SLIPWAY_ALERTS", json.dumps(conn))
    return send_alert.__wrapped_block__(Step("telco_churn", {}), JUDGED)


def _tags(run) -> dict:
    import mlflow

    return mlflow.get_run(run.info.run_id).data.tags


def test_without_a_connection_the_alert_is_a_warning_with_the_whole_text(monkeypatch, run, caplog):
    with caplog.at_level(logging.WARNING, logger="slipway"):
        out = _send(monkeypatch, None)

    assert out["channel"] == "log"
    [record] = [r for r in caplog.records if r.levelno == logging.WARNING]
    text = record.getMessage()
    assert "no Airflow connection 'slipway_alerts'" in text and "add one of type http or smtp" in text
    assert "psi[monthly_charges] = 0.61 (limit 0.25)" in text
    assert "Retraining was triggered (month 2025-12)" in text
    assert _tags(run)["slipway.alert"] == "logged"


def test_an_http_connection_posts_the_alert_to_the_webhook(monkeypatch, run, webhook):
    port = webhook.server_address[1]
    out = _send(monkeypatch, {"conn_type": "http", "host": "127.0.0.1", "port": port, "schema": "http"})

    assert out["channel"] == "http"
    [alert] = webhook.received
    assert alert["pipeline"] == "telco_churn" and alert["trigger"] == "drift"
    assert "psi[monthly_charges] = 0.61" in alert["text"]
    assert _tags(run)["slipway.alert"] == "http"


def test_a_connection_of_another_type_fails_naming_the_fix(monkeypatch, run):
    with pytest.raises(ValueError, match="use http \\(a webhook\\) or smtp"):
        _send(monkeypatch, {"conn_type": "postgres", "host": "127.0.0.1"})
