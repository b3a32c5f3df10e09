"""``make up``: the embedded stack for interactive use, in the foreground (Ctrl-C stops it).

Airflow ``standalone`` (api-server with the UI, scheduler, dag-processor, triggerer; SQLite and the
LocalExecutor) on http://127.0.0.1:8080, and the MLflow UI on http://127.0.0.1:5000 over the same
store the pipelines write to. Both listen on loopback only. Airflow's login is generated on first
start (user ``admin``; the password is printed and kept in ``<state>/airflow/simple_auth_manager_passwords.json.generated``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time


def main() -> None:
    """Start Airflow standalone and the MLflow UI; stop both on Ctrl-C."""
    from include.cli import _say, _use_airflow_env, migrate_airflow_db
    from include.settings import get_settings

    _use_airflow_env()
    s = get_settings()
    port = os.environ.get("SLIPWAY_AIRFLOW_PORT", "8080")
    os.environ.setdefault("AIRFLOW__API__PORT", port)
    os.environ.setdefault("AIRFLOW__API__HOST", "127.0.0.1")
    # Tasks report back to the API server: it must be where the api-server listens.
    os.environ.setdefault("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", f"http://127.0.0.1:{port}/execution/")
    migrate_airflow_db()
    bindir = os.path.dirname(sys.executable)
    procs = [
        subprocess.Popen([os.path.join(bindir, "airflow"), "standalone"], env=os.environ),
        subprocess.Popen(
            [
                os.path.join(bindir, "mlflow"),
                "server",
                "--backend-store-uri",
                s.mlflow_tracking_uri,
                "--default-artifact-root",
                s.mlflow_artifact_uri,
                "--host",
                "127.0.0.1",
                "--port",
                os.environ.get("SLIPWAY_MLFLOW_PORT", "5000"),
            ],
            env=os.environ,
        ),
    ]

    def _stop(signum, frame):  # SIGTERM (e.g. from a supervisor) stops the children too
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGHUP, _stop)
    _say(f"Airflow UI http://127.0.0.1:{port}  (login printed by 'standalone' below)")
    _say(f"MLflow UI  http://127.0.0.1:{os.environ.get('SLIPWAY_MLFLOW_PORT', '5000')}")
    try:
        while all(p.poll() is None for p in procs):
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
