"""Infra validation: the candidate in a sandboxed instance of the service before it sees traffic.

The sandbox is ``slipway serve --pin <pipeline>=<version>``: its own process, a free loopback
port, its own temporary SQLite prediction log and API key, the same code path as production. It
is sent ``requests`` valid rows (from the version's own test split) and a set of malformed ones;
every answer, error code and the p99 latency become checks of the ``infra_validation`` gate.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from include.settings import PROJECT_ROOT
from include.tasks.gates import check

GATE = "infra_validation"


_PROMISE = {
    "binary": "probability in [0, 1] and decision 0/1",
    "multiclass": "a declared class and every class's probability, summing to 1",
    "regression": "a finite prediction and decision",
}


def well_formed(spec, body: dict) -> bool:
    """Whether a 200 answer holds what the task promises: a probability in [0, 1] and a 0/1 decision;
    a declared class and a probability per class summing to 1; a finite prediction and decision."""

    def number(x) -> bool:
        return isinstance(x, float | int) and not isinstance(x, bool) and math.isfinite(x)

    if spec.task == "multiclass":
        probs = body.get("probabilities")
        classes = list(spec.target.classes or [])
        return (
            body.get("class") in classes
            and isinstance(probs, dict)
            and sorted(probs) == sorted(classes)
            and all(number(v) and 0 <= v <= 1 for v in probs.values())
            and abs(sum(probs.values()) - 1) < 1e-3
        )
    if spec.task == "regression":
        return number(body.get("prediction")) and number(body.get("decision"))
    p = body.get("probability")
    return isinstance(p, float | int) and number(p) and 0 <= p <= 1 and body.get("decision") in (0, 1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Sandbox:
    """One ``slipway serve`` process pinned to a version; stopped on exit, its files removed."""

    def __init__(self, pipeline: str, version: int, start_timeout_s: float = 120.0):
        self.pipeline, self.version = pipeline, version
        self.tmp = tempfile.TemporaryDirectory(prefix="slipway-sandbox-")
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db_url = f"sqlite:///{Path(self.tmp.name) / 'serving.db'}"
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen | None = None
        self.key = ""
        self.ops_key = ""

    def __enter__(self) -> Sandbox:
        from include.serving.keys import KeyStore

        store = KeyStore(self.db_url)
        store.start()
        _, self.key = store.create(["predict"], self.pipeline, "infra validation sandbox")
        _, self.ops_key = store.create(["metrics"], None, "infra validation sandbox: /ready's versions")
        env = {**os.environ, "SLIPWAY_SERVING_DB": self.db_url, "SLIPWAY_ACCESS_LOG": "0"}
        self.out = open(Path(self.tmp.name) / "serve.log", "wb")  # noqa: SIM115 - closed in __exit__
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "include.cli",
                "serve",
                "--port",
                str(self.port),
                "--pipelines",
                self.pipeline,
                "--pin",
                f"{self.pipeline}={self.version}",
                "--refresh-s",
                "3600",
            ],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=self.out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the sandbox service exited ({self.proc.returncode}):\n{self.log()}")
            status, body = self.call("GET", "/ready", key=self.ops_key)
            if (
                status == 200
                and body.get("pipelines", {}).get(self.pipeline, {}).get("champion") == self.version
            ):
                return self
            time.sleep(0.3)
        raise RuntimeError(
            f"the sandbox did not serve version {self.version} within {self.start_timeout_s:.0f} s:\n{self.log()}"
        )

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.out.close()
        self.tmp.cleanup()

    def log(self) -> str:
        path = Path(self.tmp.name) / "serve.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def call(
        self, method: str, path: str, body: object = None, key: str | None = "", raw: bytes | None = None
    ):
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        headers = {"Content-Type": "application/json"}
        key = self.key if key == "" else key
        if key:
            headers["Authorization"] = f"Bearer {key}"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                status, text = resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            status, text = exc.code, exc.read().decode()
        except OSError:
            return 0, {}
        try:
            return status, json.loads(text)
        except ValueError:
            return status, {"raw": text[:200]}


def to_request_rows(frame, spec) -> list[dict]:
    """The spec's features of each row of ``frame`` as a request body (NaN as null, as a client sends)."""
    return [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in rec.items()}
        for rec in frame[spec.features.all].to_dict("records")
    ]


def request_rows(spec, snapshot_uri: str, n: int) -> list[dict]:
    """``n`` rows of the version's test split as request bodies (NaN as null, as a client sends)."""
    import io

    import pandas as pd

    from include import storage
    from include.spec import SPLIT_COLUMN

    frame = pd.read_parquet(io.BytesIO(storage.read_bytes(snapshot_uri)))
    if SPLIT_COLUMN in frame:
        frame = frame[frame[SPLIT_COLUMN] == "test"]
    rows = to_request_rows(frame.head(n), spec)
    if not rows:
        raise ValueError(f"{snapshot_uri} has no test rows to send to the sandbox; re-run training")
    return [rows[i % len(rows)] for i in range(n)]


def malformed_cases(spec, row: dict) -> list[tuple[str, dict | None, bytes | None, set[int], bool]]:
    """(name, body, raw bytes, accepted statuses, with key) of requests the service must refuse cleanly."""
    numeric = spec.features.numeric[0] if spec.features.numeric else spec.features.all[0]
    missing = {k: v for k, v in row.items() if k != numeric}
    cases = [
        ("missing_field", {"inputs": missing}, None, {422}, True),
        ("extra_field", {"inputs": {**row, "not_a_feature": 1}}, None, {422}, True),
        ("wrong_type", {"inputs": {**row, numeric: "not a number"}}, None, {422}, True),
        ("not_json", None, b"{inputs: nope", {400}, True),
        (
            "nan_literal",
            None,
            json.dumps({"inputs": row}).replace(f'"{numeric}": ', f'"{numeric}": NaN, "x": ', 1).encode(),
            {400, 422},
            True,
        ),
        ("too_many_rows", {"instances": [row] * 1001}, None, {413}, True),
        ("no_key", {"inputs": row}, None, {401}, False),
    ]
    if spec.features.categorical:
        cat = spec.features.categorical[0]
        cases.append(("unknown_category", {"inputs": {**row, cat: "never-seen-value"}}, None, {200}, True))
    return cases


def validate(spec, version: int, snapshot_uri: str) -> dict:
    """Run the sandbox and return ``{"results": [gate checks], "evidence": {...}}``."""
    import numpy as np

    cfg = spec.rollout.infra
    rows = request_rows(spec, snapshot_uri, cfg.requests)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    wrong_version = bad_answers = 0
    cases_out = {}
    with Sandbox(spec.name, version) as box:
        for row in rows[: min(20, len(rows))]:  # warm-up: first calls load the session's code paths
            box.call("POST", f"/v1/{spec.name}/predict", {"inputs": row})
        for row in rows:
            t0 = time.perf_counter()
            status, body = box.call("POST", f"/v1/{spec.name}/predict", {"inputs": row})
            latencies.append((time.perf_counter() - t0) * 1000)
            statuses[status] = statuses.get(status, 0) + 1
            if status == 200:
                if body.get("model_version") != version:
                    wrong_version += 1
                if not well_formed(spec, body):
                    bad_answers += 1
        batch_status, batch = box.call(
            "POST", f"/v1/{spec.name}/predict", {"instances": [rows[i % len(rows)] for i in range(100)]}
        )
        for name, body, raw, accepted, with_key in malformed_cases(spec, rows[0]):
            status, answer = box.call(
                "POST", f"/v1/{spec.name}/predict", body, key="" if with_key else None, raw=raw
            )
            cases_out[name] = {
                "status": status,
                "expected": sorted(accepted),
                "error": str(answer.get("error", ""))[:200],
            }
        ready_status, ready = box.call("GET", "/ready", key=box.ops_key)
    ok = statuses.get(200, 0)
    results = [
        check(
            GATE,
            "valid_requests_answered",
            ok / len(rows),
            1.0,
            ">=",
            note=f"{ok} of {len(rows)} got 200; statuses {statuses}",
        ),
        check(GATE, "answers_from_other_version", wrong_version, 0, "<="),
        check(GATE, "invalid_answers", bad_answers, 0, "<=", note=_PROMISE[spec.task]),
        check(
            GATE,
            "batch_of_100_answered",
            1.0 if batch_status == 200 and len(batch.get("predictions", [])) == 100 else 0.0,
            1.0,
            ">=",
        ),
        check(
            GATE,
            "p99_latency_ms",
            float(np.percentile(latencies, 99)),
            cfg.max_p99_latency_ms,
            "<=",
            note=f"{len(latencies)} sequential single-row requests over loopback HTTP, log commit included",
        ),
    ]
    refused_right = sum(c["status"] in c["expected"] for c in cases_out.values())
    results.append(
        check(
            GATE,
            "malformed_requests_refused_cleanly",
            refused_right,
            len(cases_out),
            ">=",
            note="; ".join(f"{k}: {v['status']} (want {v['expected']})" for k, v in cases_out.items()),
        )
    )
    evidence = {
        "version": version,
        "requests": len(rows),
        "statuses": statuses,
        "p50_ms": float(np.percentile(latencies, 50)),
        "p99_ms": float(np.percentile(latencies, 99)),
        "malformed": cases_out,
        "ready": ready if ready_status else {},
    }
    return {"results": results, "evidence": evidence}
