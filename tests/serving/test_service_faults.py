"""The service under faults, as separate processes: SIGKILL under load, the registry (an MLflow
server) stopped, the prediction log on PostgreSQL with two worker processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import pytest

from tests.support.pg import pg_admin, pg_terminate_backends
from tests.support.processes import free_port, wait_until
from tests.support.service import PIPELINE, Service, logged_rows, metric


def test_sigkill_under_load_loses_no_answered_prediction(registry, row, tmp_path):
    svc = Service(registry, tmp_path).start()
    answered: list[str] = []
    stop = threading.Event()

    def client(n: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                status, body = svc.predict({**row, "customer_id": f"K-{n}-{i}"})
            except OSError:
                return  # the server is gone: this request got no answer
            if status == 200:
                answered.append(body["request_id"])

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(6)]
    for t in threads:
        t.start()
    try:
        svc.wait(lambda: len(answered) >= 300, 60, "300 answered predictions under load")
        os.killpg(svc.proc.pid, signal.SIGKILL)  # mid-load, no chance to flush anything
        svc.proc.wait(timeout=10)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=35)
        svc.stop(signal.SIGKILL)
    logged = {r["request_id"] for r in logged_rows(svc)}
    missing = [rid for rid in answered if rid not in logged]
    assert len(answered) >= 300 and missing == [], f"{len(missing)} of {len(answered)} answered rows lost"


def test_a_stopped_registry_keeps_the_last_good_model_serving(registry, row, tmp_path):
    port = free_port()
    server_log = open(tmp_path / "mlflow.log", "wb")  # noqa: SIM115 - closed below

    def start_registry() -> subprocess.Popen:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--backend-store-uri",
                registry.tracking,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            env=registry.env,
            stdout=server_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        def healthy() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return True

        wait_until(
            healthy,
            90,
            "the MLflow server to answer /health",
            every=0.5,
            retry_on=(OSError,),
            procs={"mlflow server": proc},
            log=lambda: (tmp_path / "mlflow.log").read_text()[-3000:],
            error=RuntimeError,
        )
        return proc

    mlflow_proc = start_registry()
    svc = Service(registry, tmp_path)
    svc.env["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{port}"
    try:
        svc.start()
        assert svc.predict(row)[1]["model_version"] == 1
        os.killpg(mlflow_proc.pid, signal.SIGKILL)
        mlflow_proc.wait(timeout=10)
        ready = svc.wait(
            lambda: (r := svc.get("/ready", key=svc.key("metrics", None)))[1]["status"] == "degraded" and r,
            60,
            "degraded /ready",
        )
        assert ready[0] == 200 and any("registry unreachable" in p for p in ready[1]["problems"]), ready
        for _ in range(20):
            status, body = svc.predict(row)
            assert status == 200 and body["model_version"] == 1, body
        assert metric(svc, "slipway_model_reload_failures_total") >= 1
        mlflow_proc = start_registry()
        svc.wait(
            lambda: svc.get("/ready", key=None)[1]["status"] == "ready", 60, "ready once the registry is back"
        )
    finally:
        svc.stop()
        if mlflow_proc.poll() is None:
            os.killpg(mlflow_proc.pid, signal.SIGTERM)
            mlflow_proc.wait(timeout=20)
        server_log.close()


@pytest.mark.postgres
def test_two_workers_share_a_postgresql_log_and_sum_their_metrics(registry, row, tmp_path, pg_db):
    import psycopg2

    svc = Service(registry, tmp_path, db_url=pg_db.url, workers=2).start()
    try:
        ids = []
        for i in range(120):
            status, body = svc.predict({**row, "customer_id": f"P-{i}"})
            assert status == 200, body
            ids.append(body["request_id"])
        rid = ids[0]
        assert svc.request("POST", f"/v1/{PIPELINE}/feedback", {"request_id": rid, "label": 0})[0] == 200
        assert svc.request("POST", f"/v1/{PIPELINE}/feedback", {"request_id": rid, "label": 1})[0] == 409
        with psycopg2.connect(pg_db.url) as conn, conn.cursor() as cur:
            cur.execute("SELECT request_id FROM slipway_predictions WHERE served = 1")
            assert {r[0] for r in cur.fetchall()} == set(ids)
            cur.execute("SELECT label FROM slipway_feedback WHERE request_id = %s", (rid,))
            assert cur.fetchall() == [(0,)]
        # Two processes answered; /metrics (in whichever worker) counts both.
        served = metric(svc, 'slipway_requests_total{pipeline="telco_churn",route="predict",status="200"}')
        assert served == 120
    finally:
        svc.stop()


def _predict_with_headers(svc, row) -> tuple[int, str | None]:
    """(status, Retry-After) of one prediction."""
    req = urllib.request.Request(
        f"{svc.url}/v1/{PIPELINE}/predict",
        data=json.dumps({"inputs": row}).encode(),
        headers={
            "Authorization": f"Bearer {svc.key('predict,feedback,explain')}",
            "Content-Type": "application/json",
        },
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.headers.get("Retry-After")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Retry-After")


@pytest.mark.postgres
def test_a_log_database_outage_sheds_load_with_503_and_recovers(registry, row, tmp_path, pg_db):
    name = pg_db.name
    svc = Service(registry, tmp_path, db_url=pg_db.url).start()
    admin = pg_admin()
    try:
        assert svc.predict(row)[0] == 200
        svc.key("metrics", None)  # keys live in the same database: made before it goes away
        with admin.cursor() as cur:  # the log's database goes away (connections cut, none accepted)
            cur.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            pg_terminate_backends(cur, name)
        shed = [_predict_with_headers(svc, row) for _ in range(5)]
        # Never answered unlogged: every request while the log is down is a 503 with Retry-After.
        assert all(code == 503 and retry for code, retry in shed), shed
        ready = svc.ready()
        assert any("prediction log" in p for p in ready["problems"]), ready
        with admin.cursor() as cur:
            cur.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        svc.wait(lambda: svc.predict(row)[0] == 200, 30, "answers once the log is back")
        assert metric(svc, 'slipway_shed_total{pipeline="telco_churn",reason="log_unavailable"}') >= 1
    finally:
        with admin.cursor() as cur:
            cur.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        admin.close()
        svc.stop()
