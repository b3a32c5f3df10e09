"""The approval's "why": what started the training, and the offline comparison with the champion."""

from __future__ import annotations

import json

from include.tasks.rollout.why import offline_lines, trigger_line

DRIFT = {
    "slipway.trigger": "drift",
    "slipway.trigger.evidence": json.dumps(
        {
            "since": "2026-12-06T17:50:27+00:00",
            "until": "2026-12-06T17:51:12+00:00",
            "drifted": [{"metric": "psi[monthly_charges]", "value": 1.5012, "threshold": 0.25}],
        }
    ),
}


def test_what_started_the_training():
    line = trigger_line("telco_churn__train/asset_triggered__x", DRIFT, None)
    assert line == (
        "the training run `telco_churn__train/asset_triggered__x` was started by the monitor: drift in the "
        "served traffic of 2026-12-06 17:50 UTC to 2026-12-06 17:51 UTC: psi[monthly_charges] = 1.5012 (limit 0.25)"
    )
    assert trigger_line("t/s", {"slipway.trigger": "schedule"}, None).endswith(
        "by the schedule (a new month)"
    )
    assert trigger_line("t/m", {"slipway.trigger": "manual"}, "alice").endswith("by hand (manual, by alice)")


def test_the_offline_comparison_names_each_metric_and_its_allowed_change():
    comparison = {
        "candidate": {"roc_auc": 0.842, "pr_auc": 0.61, "brier": 0.168, "value_per_1000": 10871.27},
        "champion": {
            "roc_auc": 0.835,
            "pr_auc": 0.62,
            "brier": 0.170,
            "value_per_1000": 10327.02,
            "version": 2,
        },
    }
    results = [
        {
            "gate": "champion",
            "metric": "roc_auc_delta",
            "comparison": ">=",
            "threshold": -0.01,
            "status": "passed",
        },
        {
            "gate": "champion",
            "metric": "brier_delta",
            "comparison": "<=",
            "threshold": 0.01,
            "status": "passed",
        },
    ]
    lines = offline_lines(comparison, results, champion_now=3)
    assert lines[0] == (
        "against version 2, the champion when it was trained, on the same test split (the champion is "
        "version 3 now):"
    )
    assert "- roc_auc: 0.8420 vs 0.8350 (+0.0070), change allowed: at least -0.0100, passed" in lines
    assert "- brier: 0.1680 vs 0.1700 (-0.0020), change allowed: no more than +0.0100, passed" in lines
    assert "- value_per_1000: 10871.27 vs 10327.02 (+544.25)" in lines
    assert offline_lines({"candidate": {}, "champion": None}, [], None)[0].startswith("no champion")
