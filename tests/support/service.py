"""The service harness: a real registry with a trained version, and the service as a process over HTTP.

One DAG run (``slipway run``, dag.test) trains and registers telco_churn once per session; a second
version is registered from the same artifact (a different version number, same graph) so alias
switches and champion/challenger routing are observable. The service runs as ``slipway serve`` in
a subprocess on a free loopback port, with its own SQLite prediction log unless a test asks for
PostgreSQL (``pg_db``: a fresh database per test on the machine's server).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from include.serving.keys import new_presented_key
from tests.support.processes import ROOT, clean_env, free_port, slipway, wait_until

PIPELINE = "telco_churn"


class Registry:
    """The session's trained pipeline: state folder, MLflow store, versions."""

    def __init__(self, base: Path):
        self.base = base
        self.tracking = f"sqlite:///{base / 'mlflow.db'}"
        self.metrics_key = new_presented_key()  # the deployment's metrics key: the service adopts it
        self.env = clean_env(
            SLIPWAY_HOME=str(base / "state"),
            MLFLOW_TRACKING_URI=self.tracking,
            SLIPWAY_MLFLOW_ARTIFACT_URI=(base / "artifacts").as_uri(),
            SLIPWAY_SERVING_METRICS_KEY=self.metrics_key,
            # Short read deadlines, so the tests of slow clients wait seconds, not the defaults' 10 and 30.
            SLIPWAY_SERVE_HEADER_TIMEOUT_S="2",
            SLIPWAY_SERVE_BODY_TIMEOUT_S="3",
        )

    def client(self):
        import mlflow

        return mlflow.MlflowClient(tracking_uri=self.tracking)

    def register_copy(self, version: int, **tag_overrides: str) -> int:
        """A new version of the same artifact (and tags, with overrides): another version number."""
        client = self.client()
        mv = client.get_model_version(PIPELINE, str(version))
        from include.registry import HISTORY_TAGS

        own = {
            k: v for k, v in mv.tags.items() if not k.startswith(HISTORY_TAGS)
        }  # the copy's history is its own
        tags = {**own, **tag_overrides}
        # The artifact's storage location (a models:/ source would be resolved with the global URI).
        source = client.get_model_version_download_uri(PIPELINE, str(version))
        new = client.create_model_version(PIPELINE, source, run_id=mv.run_id, tags=tags)
        return int(new.version)

    def set_alias(self, alias: str, version: int) -> None:
        self.client().set_registered_model_alias(PIPELINE, alias, str(version))

    def drop_alias(self, alias: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client().delete_registered_model_alias(PIPELINE, alias)
        except MlflowException:
            pass

    def set_traffic(self, mode: str, weight: float = 0.0, version: int | None = None) -> None:
        client = self.client()
        client.set_registered_model_tag(PIPELINE, "slipway.traffic.mode", mode)
        client.set_registered_model_tag(PIPELINE, "slipway.traffic.weight", str(weight))
        client.set_registered_model_tag(PIPELINE, "slipway.traffic.version", str(version or ""))


class Service:
    """``slipway serve`` in a subprocess; HTTP helpers with an API key."""

    def __init__(
        self,
        registry: Registry,
        base: Path,
        db_url: str | None = None,
        workers: int = 1,
        args: tuple[str, ...] = (),
    ):
        self.registry = registry
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db_url = db_url or f"sqlite:///{base / 'serving.db'}"
        self.env = {**registry.env, "SLIPWAY_SERVING_DB": self.db_url}
        self.log_path = base / f"serve-{self.port}.log"
        self.workers = workers
        self.args = args  # more `slipway serve` options
        self.proc: subprocess.Popen | None = None
        self.keys: dict[str, str] = {}

    def key(self, scopes: str, pipeline: str | None = PIPELINE) -> str:
        if (scopes, pipeline) == ("metrics", None):
            return self.registry.metrics_key  # the one handed over as a secret, as Prometheus uses it
        name = f"{scopes}:{pipeline}"
        if name not in self.keys:
            args = ["keys", "create", "--scopes", scopes] + (["--pipeline", pipeline] if pipeline else [])
            self.keys[name] = slipway(self.env, *args).stdout.strip().splitlines()[0]
        return self.keys[name]

    def start(self) -> Service:
        out = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "include.cli",
                "serve",
                "--port",
                str(self.port),
                "--refresh-s",
                "0.5",
                "--workers",
                str(self.workers),
                "--pipelines",
                PIPELINE,
                *self.args,
            ],
            cwd=ROOT,
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_until(
            lambda: self.get("/ready", key=None)[0] == 200,
            120,
            "slipway serve to answer /ready with 200",
            every=0.3,
            retry_on=(OSError,),
            procs={"slipway serve": self.proc},
            log=self.log,
            error=RuntimeError,
        )
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path.exists() else ""

    def request(
        self,
        method: str,
        path: str,
        body=None,
        key: str | None = "",
        raw: bytes | None = None,
        headers: dict | None = None,
    ) -> tuple[int, dict | str]:
        if key == "":
            key = self.key("predict,feedback,explain")
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        if key:
            hdrs["Authorization"] = f"Bearer {key}"
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method, headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                status, text = resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            status, text = exc.code, exc.read().decode()
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def exchange(
        self, method: str, path: str, body: bytes | None = None, headers: dict | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """One raw request: (status, response headers with lowercase names, body bytes)."""
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def ready(self) -> dict:
        """``/ready`` as an operator sees it (with the metrics key): versions, traffic, problems."""
        return self.get("/ready", key=self.key("metrics", None))[1]

    def get(self, path: str, key: str | None = "") -> tuple[int, dict | str]:
        return self.request("GET", path, key=key)

    def predict(self, row: dict | None = None, rows: list | None = None, **kw) -> tuple[int, dict]:
        body = {"instances": rows} if rows is not None else {"inputs": row}
        return self.request("POST", f"/v1/{PIPELINE}/predict", body, **kw)

    def wait(self, predicate, timeout: float, what: str):
        return wait_until(predicate, timeout, what, every=0.2, log=self.log)


def logged_rows(service, where: str = "1=1", params: tuple = ()) -> list[dict]:
    """The prediction log's rows of a running service (its SQLite file), as dicts."""
    path = service.db_url.split("sqlite:///", 1)[1]
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(f"SELECT * FROM slipway_predictions WHERE {where}", params)]


def metric(service, name: str) -> float:
    """The sum of a Prometheus metric's samples, scraped from the service."""
    status, text = service.get("/metrics", key=service.key("metrics", None))
    assert status == 200, text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total
