"""`make up` as a user runs it: every listener on loopback, a working login, an orderly stop."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.dags.e2e import ROOT, clean_env

pytestmark = pytest.mark.e2e


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _listening(pids: set[int]) -> list[str]:
    """Local addresses that processes in ``pids`` listen on (from /proc, no extra tool)."""
    inodes = {}
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes[link[8:-1]] = pid
        except OSError:
            continue
    out = []
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        with open(table) as fh:
            for line in fh.readlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and cols[9] in inodes:  # 0A: LISTEN
                    out.append(cols[1][:width])
    return out


def _descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        for child in os.listdir("/proc"):
            if child.isdigit():
                try:
                    with open(f"/proc/{child}/stat") as fh:
                        if int(fh.read().rsplit(")", 1)[1].split()[1]) == parent:
                            found.add(int(child))
                            todo.append(int(child))
                except OSError:
                    continue
    return found


LOOPBACK = {"0100007F", "00000000000000000000000001000000"}  # 127.0.0.1 and ::1, as /proc writes them


def test_make_up_listens_on_loopback_only_and_stops_cleanly(tmp_path):
    port, mlflow_port = _free_port(), _free_port()
    env = clean_env(SLIPWAY_HOME=str(tmp_path), SLIPWAY_AIRFLOW_PORT=str(port), SLIPWAY_MLFLOW_PORT=str(mlflow_port))
    proc = subprocess.Popen(
        [sys.executable, "-m", "include.deploy.embedded"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
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
        children = _descendants(proc.pid)
        addresses = _listening(children)
        assert addresses, "nothing listens"
        assert set(addresses) <= LOOPBACK, addresses
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=120)
    out = "".join(lines) + rest
    assert proc.returncode == 0, out[-3000:]
    assert "[slipway] stopped" in out and "Traceback" not in out
    assert not [p for p in children if os.path.exists(f"/proc/{p}") and open(f"/proc/{p}/stat").read().split()[2] != "Z"]
