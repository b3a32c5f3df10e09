"""``make up-embedded``: the embedded stack for interactive use, in the foreground (Ctrl-C stops it).

Airflow's components as separate processes (api-server with the UI, scheduler, dag-processor,
triggerer; SQLite and the LocalExecutor) on http://127.0.0.1:8080, and the MLflow UI on
http://127.0.0.1:5000 over the same store the pipelines write to. Every listener is on loopback:
the scheduler and triggerer run without their task-log servers (which Airflow binds to all
interfaces), since the api-server reads the task logs from the local log folder. The executor gets
two workers per core. Airflow's logins are ``admin`` and ``approver`` (who answers promotions: the
user who triggers a rollout may not approve it); their passwords are generated on first start,
printed, and kept in ``<state>/airflow/simple_auth_manager_passwords.json.generated``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def _components(bindir: str) -> dict[str, list[str]]:
    airflow = os.path.join(bindir, "airflow")
    # The LocalExecutor forks each task from the scheduler: started with the task libraries imported,
    # a task begins with them in memory (include/deploy/preloaded.py).
    preloaded = [os.path.join(bindir, "python"), "-m", "include.deploy.preloaded"]
    return {
        "api-server": [airflow, "api-server"],
        "scheduler": [*preloaded, "scheduler", "--skip-serve-logs"],
        "dag-processor": [airflow, "dag-processor"],
        "triggerer": [airflow, "triggerer", "--skip-serve-logs"],
    }


def stop(procs: dict[str, subprocess.Popen]) -> None:
    for proc in procs.values():
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for name, proc in procs.items():
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            print(f"[slipway] {name} did not stop in 30 s; killing it", flush=True)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def configure(port: str, mlflow_port: str | None = None) -> None:
    """The embedded stack's environment: Airflow on ``port`` (loopback), tasks reporting back to it."""
    from include.deploy.dag_run import use_airflow_env

    use_airflow_env()
    os.environ.setdefault("AIRFLOW__API__PORT", port)
    os.environ.setdefault("AIRFLOW__API__HOST", "127.0.0.1")
    # Tasks report back to the API server: it must be where the api-server listens.
    os.environ.setdefault("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", f"http://127.0.0.1:{port}/execution/")
    os.environ.setdefault("AIRFLOW__CORE__PARALLELISM", str(2 * (os.cpu_count() or 1)))
    os.environ.setdefault("AIRFLOW__API__WORKERS", "1")
    # An admin, and an approver for promotions (four eyes: whoever triggers a rollout may not approve it).
    os.environ.setdefault("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "admin:admin,approver:user")
    if mlflow_port:
        os.environ.setdefault("SLIPWAY_MLFLOW_UI_URL", f"http://127.0.0.1:{mlflow_port}")  # links in DAG docs


def launch(commands: dict[str, list[str]], logs: Path) -> dict[str, subprocess.Popen]:
    """Start each command in a session of its own (a Ctrl-C reaches this process only, which then
    stops them in order), its output appended to ``<logs>/<name>.log``."""
    logs.mkdir(parents=True, exist_ok=True)
    procs: dict[str, subprocess.Popen] = {}
    try:
        for name, cmd in commands.items():
            out = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
            procs[name] = subprocess.Popen(
                cmd, env=os.environ, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
    except BaseException:
        stop(procs)
        raise
    return procs


def airflow_components() -> dict[str, list[str]]:
    return _components(os.path.dirname(sys.executable))


def main() -> None:
    """Start Airflow's components and the MLflow UI; stop them all on Ctrl-C or SIGTERM."""
    from include.deploy.dag_run import _say, migrate_airflow_db
    from include.settings import get_settings

    port = os.environ.get("SLIPWAY_AIRFLOW_PORT", "8080")
    mlflow_port = os.environ.get("SLIPWAY_MLFLOW_PORT", "5000")
    configure(port, mlflow_port)
    s = get_settings()
    migrate_airflow_db()
    bindir = os.path.dirname(sys.executable)
    logs = s.home / "logs" / "stack"
    commands = _components(bindir)
    commands["mlflow"] = [
        os.path.join(bindir, "mlflow"),
        "server",
        "--backend-store-uri",
        s.mlflow_tracking_uri,
        "--default-artifact-root",
        s.mlflow_artifact_uri,
        "--host",
        "127.0.0.1",
        "--port",
        mlflow_port,
        "--workers",
        "1",  # one machine, one user: MLflow's default of 4 workers would crowd the tasks' cores
    ]
    procs: dict[str, subprocess.Popen] = {}

    def _on_signal(signum, frame):  # Ctrl-C, SIGTERM (a supervisor), SIGHUP (a closed terminal)
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    try:
        procs = launch(commands, logs)
        _say(f"component logs in {logs}")
        wait_for_api(port, procs)
        home = Path(os.environ["AIRFLOW_HOME"])
        _say(f"Airflow UI http://127.0.0.1:{port}  user admin, password {password(home)}")
        _say(f"           user approver (answers promotions), password {password(home, 'approver')}")
        _say(f"MLflow UI  http://127.0.0.1:{mlflow_port}")
        _say(_paused_line(port, password(home)))
        _say("Ctrl-C stops everything")
        while all(p.poll() is None for p in procs.values()):
            time.sleep(1)
        dead = [n for n, p in procs.items() if p.poll() is not None]
        _say(f"{', '.join(dead)} stopped (see {logs}); stopping the rest")
    except KeyboardInterrupt:
        _say("stopping")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not cut the orderly stop short
        stop(procs)
    _say("stopped")


def wait_for_api(port: str, procs: dict[str, subprocess.Popen], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=5):
                return
        except OSError:
            if any(p.poll() is not None for p in procs.values()):
                return
            time.sleep(1)


def _paused_line(port: str, admin_password: str) -> str:
    """What is scheduled, as the API says (a new DAG starts paused; the demo unpauses its pipeline's)."""
    base = f"http://127.0.0.1:{port}"
    hint = "unpause a DAG on its page (or PATCH is_paused=false) to schedule it"
    try:
        req = urllib.request.Request(
            f"{base}/auth/token",
            json.dumps({"username": "admin", "password": admin_password}).encode(),
            {"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            token = json.loads(resp.read())["access_token"]
        req = urllib.request.Request(
            f"{base}/api/v2/dags?paused=false&limit=100", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            active = sorted(d["dag_id"] for d in json.loads(resp.read())["dags"])
    except (OSError, ValueError, KeyError):
        return f"DAGs start paused: {hint}"
    if not active:
        return f"every DAG is paused: {hint}"
    return f"scheduled (unpaused): {', '.join(active)}; the others are paused: {hint}"


def password(airflow_home: Path, user: str = "admin") -> str:
    path = airflow_home / "simple_auth_manager_passwords.json.generated"
    try:
        return json.loads(path.read_text())[user]
    except (OSError, ValueError, KeyError):
        return f"(see {path})"


if __name__ == "__main__":
    main()
