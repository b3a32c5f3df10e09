"""The monitor's newest check of a pipeline, as Prometheus reads it from the running service."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.support.service import PIPELINE


def _gauges(text: str) -> dict[str, float]:
    return {
        line.split("{")[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("slipway_monitor_") and f'pipeline="{PIPELINE}"' in line
    }


def test_metrics_show_the_newest_monitor_check(service):
    from include.prediction_log.monitor_checks import Check, record
    from include.prediction_log.rows import iso_utc

    key = service.key("metrics", None)
    status, text = service.get("/metrics", key=key)
    assert status == 200
    for hour, (rows, state, drift) in enumerate([(900, "ok", False), (1200, "breach", True)], start=10):
        end = datetime(2026, 3, 1, hour, tzinfo=UTC)
        record(
            service.db_url,
            Check(
                PIPELINE,
                iso_utc(end.replace(hour=hour - 1)),
                iso_utc(end),
                1,
                rows,
                state,
                drift,
                False,
                "drift" if drift else None,
                drift,
                {"drifted_count": 3 if drift else 0},
            ),
        )
    status, text = service.get("/metrics", key=key)
    assert status == 200
    assert _gauges(text) == {
        "slipway_monitor_interval_end": datetime(2026, 3, 1, 11, tzinfo=UTC).timestamp(),
        "slipway_monitor_served_rows": 1200.0,
        "slipway_monitor_no_traffic": 0.0,
        "slipway_monitor_drift_breach": 1.0,
        "slipway_monitor_performance_breach": 0.0,
        "slipway_monitor_drifted_checks": 3.0,
        # Checks the record did not make (an older monitor's) are not breaches
        "slipway_monitor_fairness_breach": 0.0,
        "slipway_monitor_attribution_breach": 0.0,
        "slipway_monitor_data_quality_breach": 0.0,
    }


def _samples(text: str, name: str) -> dict[str, float]:
    """``{labels: value}`` of one metric's samples."""
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            head, value = line.rsplit(" ", 1)
            out[head[len(name) :]] = float(value)
    return out


def test_metrics_the_alerting_rules_read(service, row):
    """What rules.yml's service alerts evaluate: readiness, the registry's age, the spec's latency
    budget, each predict's time, each log commit's time, and the run events as recorded."""
    assert service.predict(row)[0] == 200
    status, text = service.get("/metrics", key=service.key("metrics", None))
    assert status == 200
    assert _samples(text, "slipway_ready") == {f'{{pipeline="{PIPELINE}"}}': 1.0}
    assert _samples(text, "slipway_latency_budget_seconds") == {
        f'{{pipeline="{PIPELINE}"}}': 0.1
    }  # the spec's 100 ms
    assert 0 <= _samples(text, "slipway_registry_read_age_seconds")[""] < 30
    timed = _samples(text, "slipway_request_seconds_count")
    assert timed[f'{{pipeline="{PIPELINE}",route="predict"}}'] >= 1
    assert _samples(text, "slipway_log_commit_seconds_count")[""] >= 1
    # The run events as recorded in the service's database (other tests of the session may add some)
    from include.prediction_log.events import summary

    recorded = summary(service.db_url, [PIPELINE])[PIPELINE]
    one = f'{{pipeline="{PIPELINE}"}}'
    assert _samples(text, "slipway_dag_run_failures") == {one: sum(recorded.failed_runs.values())}
    assert _samples(text, "slipway_rollbacks") == {one: recorded.rollbacks}
    assert _samples(text, "slipway_approval_waiting_seconds") == {
        one: pytest.approx(recorded.approval_waiting_s, abs=5)
    }
    # A made-up pipeline in the path never becomes a label
    service.request("POST", "/v1/no_such_pipeline/predict", {"inputs": row})
    text = service.get("/metrics", key=service.key("metrics", None))[1]
    assert "no_such_pipeline" not in text
