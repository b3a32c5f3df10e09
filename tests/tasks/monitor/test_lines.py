"""What an operator reads about a monitor interval: the DAG run's note and the Models view's line."""

from __future__ import annotations

from include.blocks.monitor import outcome_line
from include.models_view import _monitor_line
from include.times import utc_minute

EV = {
    "since": "2026-12-06T10:00:00+00:00",
    "until": "2026-12-06T11:00:00+00:00",
    "champion": 2,
    "rows": 2279,
    "drifted": [{"metric": "psi[monthly_charges]", "value": 1.5012, "threshold": 0.25}],
    "drifted_count": 1,
    "performance": [],
}


def _judged(**over):
    return {"status": "breach", "trigger": None, "month": None, "held_by": None, "evidence": EV} | over


def test_the_run_note_names_the_drifted_feature_and_what_was_done():
    line = outcome_line(_judged(trigger="drift", month="2025-12"))
    assert line == (
        "BREACH on 2279 rows of version 2: drift in monthly_charges (PSI 1.50). retraining triggered on 2025-12"
    )
    held = outcome_line(_judged(held_by="2026-12-06T09:00:00+00:00"))
    assert (
        "held back by the cool-down (already triggered for the interval ending 2026-12-06 09:00 UTC)" in held
    )
    assert outcome_line(_judged(status="ok")).startswith("ok: 2279 served rows of version 2")
    assert outcome_line(_judged(status="no_traffic")).startswith("no traffic between")


def _monitor(**over):
    return {
        "status": "breach",
        "interval": [EV["since"], EV["until"]],
        "served_rows": 2279,
        "drift_breach": True,
        "performance_breach": False,
        "drifted_checks": 1,
        "drifted": ["monthly_charges"],
        "performance": [],
        "report": {
            "drifted": ["monthly_charges", "contract"],
            "measure": "Evidently: PSI > 0.25 per column, 2000 sampled rows",
        },
        "held_by": None,
        "triggered": "drift",
        "version": 2,
        "champion_now": 2,
    } | over


def test_the_models_view_names_features_both_measures_and_the_cool_down():
    line = _monitor_line(_monitor())
    assert "BREACH: drift in monthly_charges" in line
    assert "the Evidently report (Evidently: PSI &gt; 0.25 per column, 2000 sampled rows) finds" in line
    assert "monthly_charges, contract drifted" in line
    assert "2026-12-06 10:00 UTC to 2026-12-06 11:00 UTC; retraining triggered (drift)" in line
    held = _monitor_line(_monitor(triggered=None, held_by="2026-12-06T09:00:00+00:00"))
    assert (
        "retraining held back by the cool-down (already triggered for the interval ending 2026-12-06 09:00 UTC)"
        in held
    )


def test_a_breach_of_an_earlier_champion_is_not_shown_against_the_new_one():
    line = _monitor_line(_monitor(champion_now=3))
    assert line.startswith("no check of version 3 yet; the last check (2026-12-06 10:00 UTC to")
    assert "watched version 2, champion before it: BREACH" in line


def test_one_time_format():
    assert utc_minute("2026-12-06T14:02:59.123+01:00") == "2026-12-06 13:02 UTC"
    assert utc_minute("2026-12-06 14:02:00") == "2026-12-06 14:02 UTC"  # naive: UTC
    assert utc_minute(1796565720000) == "2026-12-06 14:02 UTC"
    assert utc_minute("soon") == "soon" and utc_minute(None) == ""
