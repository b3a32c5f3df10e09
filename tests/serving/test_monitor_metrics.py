"""The monitor's newest check of a pipeline, as Prometheus reads it from the running service."""

from __future__ import annotations

from datetime import UTC, datetime

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
    }
