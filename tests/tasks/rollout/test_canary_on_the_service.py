"""A canary on the real service: a broken challenger (failing rows, slow graph) is rolled back by
its guardrails and the version served afterwards is checked; a sound one passes; the rollback
DAG restores the previous champion.

The phases are driven tick by tick (:class:`include.tasks.rollout.phases.Phase`, what the rollout DAG's
deferrable operator runs) while a client thread sends traffic to ``slipway serve`` over HTTP.
"""

from __future__ import annotations

import shutil
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from include import registry as pr
from include.tasks.gates import GateFailed
from tests.support.faults import with_errors, with_latency
from tests.support.service import PIPELINE


def _register_variant(registry, tmp_path: Path, transform) -> int:
    """A new version whose model.onnx is ``transform(v1's bytes)``, registered with its own digest."""
    import hashlib

    client = registry.client()
    v1 = client.get_model_version(PIPELINE, "1")
    src = Path(client.get_model_version_download_uri(PIPELINE, "1").removeprefix("file://"))
    # Under the registry's artifact root: the service reads artifacts from nowhere else.
    folder = registry.base / "artifacts" / "variants" / f"variant-{time.monotonic_ns()}"
    shutil.copytree(src, folder)
    model = folder / "model.onnx"
    data = transform(model.read_bytes())
    model.write_bytes(data)
    tags = {**v1.tags, "slipway.onnx_sha256": hashlib.sha256(data).hexdigest()}
    tags = {k: v for k, v in tags.items() if not k.startswith(pr.HISTORY_TAGS)}
    return int(client.create_model_version(PIPELINE, folder.as_uri(), run_id=v1.run_id, tags=tags).version)


class Traffic(threading.Thread):
    """Sends single-row requests from distinct customers until stopped; records every answer."""

    def __init__(self, service, row: dict):
        super().__init__(daemon=True)
        self.service, self.row = service, row
        self.stop = threading.Event()
        self.answers: list[tuple[float, int, dict]] = []

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            i += 1
            # Half the customers are young contracts (tenure < 30): the rows a faulty graph breaks.
            row = {**self.row, "customer_id": f"C-{i}", "tenure": float(5 + (i * 7) % 60)}
            status, body = self.service.predict(row)
            self.answers.append((time.time(), status, body if isinstance(body, dict) else {}))


@pytest.fixture
def rollout_env(service, registry, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry.tracking)
    monkeypatch.setenv("SLIPWAY_SERVING_URL", service.url)
    monkeypatch.setenv("SLIPWAY_SERVING_METRICS_KEY", registry.metrics_key)
    monkeypatch.setenv("SLIPWAY_SERVING_DB", service.db_url)
    client = registry.client()
    assert pr.aliases(client, PIPELINE).get("champion") == 1
    yield client
    pr.end_challenger(client, PIPELINE, pr.aliases(client, PIPELINE).get("challenger", -1), "test cleanup")


def _spec(min_requests: int = 200):
    from include.spec import load_pipeline

    spec = load_pipeline(PIPELINE)
    r = spec.rollout
    canary = r.canary.model_copy(
        update={
            "steps": [r.canary.steps[0].model_copy(update={"weight": 0.5, "min_requests": min_requests})],
            # A loaded 2-core machine (other tests run beside these): a 40 ms model-latency budget; the
            # slow graph adds 60 ms to every row.
            "guardrails": r.canary.guardrails.model_copy(
                update={"min_requests_per_check": 30, "min_rows_for_psi": 100, "max_p99_latency_ms": 40.0}
            ),
        }
    )
    shadow = r.shadow.model_copy(
        update={"min_requests": min_requests, "max_duration_minutes": 3, "max_p99_latency_ms": 40.0}
    )
    return spec.model_copy(
        update={
            "rollout": r.model_copy(update={"canary": canary, "shadow": shadow, "check_interval_seconds": 1})
        }
    )


def _drive(phase, traffic: Traffic, timeout_s: float = 180):
    """Tick the phase every second while traffic flows; return (outcome | GateFailed, rollback time)."""
    from include.tasks.rollout.phases import Phase

    assert isinstance(phase, Phase)
    state = phase.start(0, datetime.now(UTC))
    traffic.start()
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            time.sleep(1.0)
            try:
                state, outcome = phase.tick(state, datetime.now(UTC))
            except GateFailed as exc:
                return exc, time.time()
            if outcome is not None:
                return outcome, None
        raise AssertionError(f"the phase neither passed nor rolled back in {timeout_s} s: {state}")
    finally:
        time.sleep(1.0)  # a little traffic after the verdict: who answers it is checked below
        traffic.stop.set()
        traffic.join(30)


@pytest.mark.parametrize(
    ("fault", "transform", "breach"),
    [
        ("failing rows", lambda b: with_errors(b, "tenure", 30.0), "error_rate"),
        ("slow graph", lambda b: with_latency(b, 60.0), "p99_latency_ms"),
    ],
)
def test_a_broken_canary_is_rolled_back_and_the_champion_serves_again(
    service, registry, row, rollout_env, tmp_path, fault, transform, breach
):
    from include.tasks.rollout.phases import Phase

    bad = _register_variant(registry, tmp_path, transform)
    selected = {"version": bad, "champion": 1, "threshold": 0.5}
    traffic = Traffic(service, row)
    verdict, rolled_back_at = _drive(
        Phase(PIPELINE, "canary", _spec(), selected, {"dag_run": "test"}, service.db_url), traffic
    )

    assert isinstance(verdict, GateFailed), f"{fault}: the canary passed: {verdict}"
    assert breach in str(verdict)
    aliases = pr.aliases(rollout_env, PIPELINE)
    assert aliases["champion"] == 1 and "challenger" not in aliases, aliases
    assert pr.traffic(rollout_env, PIPELINE)["mode"] == "none"
    ready = service.ready()["pipelines"][PIPELINE]
    assert ready["champion"] == 1 and ready["challenger"] is None
    # Checked, not assumed: recorded on the version, and every answer after the verdict is v1's.
    served = rollout_env.get_model_version(PIPELINE, str(bad)).tags["slipway.rollout.served_after_rollback"]
    assert '"rows_served_by_old_version_after": 0' in served
    after = [b for t, s, b in traffic.answers if t > rolled_back_at]
    assert after and {b.get("model_version") for b in after} == {1}
    # The customers never saw the fault: failing rows fell back to the champion, no 5xx.
    statuses = {s for _, s, _ in traffic.answers}
    assert statuses == {200}, statuses
    assert any(b.get("variant") == "challenger" for _, _, b in traffic.answers)  # the canary did route
    events = [e for e in pr.history(rollout_env, PIPELINE) if e["version"] == bad]
    assert [e["event"] for e in events] == ["canary_started", "rolled_back"]
    assert breach in events[-1]["reason"]


def test_a_sound_canary_passes_its_window(service, registry, row, rollout_env, tmp_path):
    from include.tasks.rollout.phases import Phase

    copy = _register_variant(registry, tmp_path, lambda b: b)
    selected = {"version": copy, "champion": 1, "threshold": 0.5}
    verdict, _ = _drive(
        Phase(PIPELINE, "canary", _spec(), selected, {"dag_run": "test"}, service.db_url),
        Traffic(service, row),
    )
    assert isinstance(verdict, dict), verdict
    by_metric = {r["metric"]: r for r in verdict["results"]}
    assert by_metric["requests"]["status"] == "passed" and by_metric["requests"]["value"] >= 200
    assert by_metric["error_rate"]["value"] == 0 and by_metric["score_psi"]["status"] == "passed"
    assert by_metric["brier_worse_pvalue"]["status"] == "not_applicable"  # no labels were sent
    assert pr.aliases(rollout_env, PIPELINE)["challenger"] == copy  # still in rollout: approval decides
    assert rollout_env.get_model_version(PIPELINE, str(copy)).tags["slipway.blessing.canary"] == "passed"


def test_the_rollback_dag_restores_previous_and_checks_what_is_served(
    service, registry, rollout_env, tmp_path
):
    """``telco_churn__rollback`` (dag.test in a subprocess, as `slipway run` does): ``previous``
    becomes the champion again, the service serves it, the history says who and why."""
    import subprocess
    import sys

    from tests.support.processes import ROOT

    newer = _register_variant(registry, tmp_path, lambda b: b)
    pr.set_challenger(rollout_env, PIPELINE, newer, "canary", 0.1)
    pr.promote(rollout_env, PIPELINE, newer, 1, reason="test promotion")
    service.wait(
        lambda: service.ready()["pipelines"][PIPELINE]["champion"] == newer,
        30,
        "newer serving",
    )
    env = {**registry.env, "SLIPWAY_SERVING_URL": service.url, "SLIPWAY_SERVING_DB": service.db_url}
    code = (
        "from include.deploy.dag_run import run_dag; "
        "dr = run_dag('telco_churn__rollback'); raise SystemExit(0 if str(dr.state) == 'success' else 1)"
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        aliases = pr.aliases(rollout_env, PIPELINE)
        assert aliases["champion"] == 1 and "previous" not in aliases, aliases
        assert service.ready()["pipelines"][PIPELINE]["champion"] == 1  # checked by the DAG too
        restored = [e for e in pr.history(rollout_env, PIPELINE) if e["event"] == "restored"][-1]
        assert restored["version"] == 1 and restored["from_version"] == newer
        assert "manual rollback" in restored["reason"] and restored["dag_run"].startswith(
            "telco_churn__rollback/"
        )
    finally:
        if pr.aliases(rollout_env, PIPELINE).get("champion") != 1:  # leave v1 serving for the other tests
            rollout_env.set_registered_model_alias(PIPELINE, "champion", "1")
