"""`make up` as a user runs it: every listener on loopback, a working login, an orderly stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.support.processes import LOOPBACK, ROOT, clean_env, descendants, free_port, listening

pytestmark = pytest.mark.e2e


def test_make_up_listens_on_loopback_only_and_stops_cleanly(tmp_path):
    port, mlflow_port = free_port(), free_port()
    env = clean_env(
        SLIPWAY_HOME=str(tmp_path), SLIPWAY_AIRFLOW_PORT=str(port), SLIPWAY_MLFLOW_PORT=str(mlflow_port)
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "include.deploy.embedded"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "Ctrl-C stops everything" in line or proc.poll() is not None:
                break
        out = "".join(lines)
        assert "Ctrl-C stops everything" in out, out
        password = out.split("user admin, password ", 1)[1].split()[0]
        body = json.dumps({"username": "admin", "password": password}).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/auth/token", body, {"Content-Type": "application/json"}, method="POST"
        )
        token = json.loads(urllib.request.urlopen(req, timeout=30).read())["access_token"]
        dags = json.loads(
            urllib.request.urlopen(
                urllib.request.Request(
                    f"http://127.0.0.1:{port}/api/v2/dags", headers={"Authorization": f"Bearer {token}"}
                ),
                timeout=30,
            ).read()
        )["dags"]
        assert {d["dag_id"] for d in dags} >= {"telco_churn__train"} and all(d["is_paused"] for d in dags)
        time.sleep(5)  # the MLflow workers and the executor's workers are up by now
        children = descendants(proc.pid)
        addresses = listening(children)
        assert addresses, "nothing listens"
        assert set(addresses) <= LOOPBACK, addresses
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=120)
    out = "".join(lines) + rest
    assert proc.returncode == 0, out[-3000:]
    assert "[slipway] stopped" in out and "Traceback" not in out
    assert not [
        p
        for p in children
        if os.path.exists(f"/proc/{p}") and open(f"/proc/{p}/stat").read().split()[2] != "Z"
    ]
