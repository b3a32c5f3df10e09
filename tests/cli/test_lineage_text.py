"""What `slipway lineage` prints about the run that made a version: its data interval, or, for a run an
asset event or a person started (no data interval), the month it was given; and the months it scored."""

from __future__ import annotations

from include.cli.reports import print_lineage


def _rec(interval, month, trigger):
    return {
        "model": {"name": "telco_churn", "version": 3, "aliases": ["champion"], "source": "models:/m-1"},
        "dag_run": {
            "dag_id": "telco_churn__train",
            "run_id": "asset_triggered__2026-12-07",
            "state": "success",
            "data_interval": interval,
            "month": month,
            "trigger": trigger,
            "trigger_evidence": None,
        },
        "tasks": [],
        "data_version": {"dvc_md5": "abc", "uri": "file:///dvc"},
        "validation": None,
        "code_version": "abc123",
        "metrics": {"roc_auc": 0.84},
        "decision_threshold": None,
        "value_per_1000": None,
        "gate_results": [],
        "gates": {},
        "blessing": {},
        "scored": {
            "2025-12": {"scored": 586, "rejected": 0, "input": "file:///l/2025-12.csv", "uri": "file:///s"}
        },
    }


def test_an_asset_triggered_run_shows_the_month_it_trained_on_not_an_empty_interval(capsys):
    print_lineage(_rec([None, None], "2025-12", "drift"))
    out = capsys.readouterr().out
    assert "interval   none: started by drift, on the month 2025-12" in out and "-> None" not in out
    assert "scored     2025-12: 586 rows (0 rejected) of file:///l/2025-12.csv -> file:///s" in out


def test_a_scheduled_run_shows_its_interval_and_month(capsys):
    print_lineage(_rec(["2025-11-01T00:00:00+00:00", "2025-12-01T00:00:00+00:00"], "2025-11", "schedule"))
    out = capsys.readouterr().out
    assert "interval   2025-11-01T00:00:00+00:00 -> 2025-12-01T00:00:00+00:00  (month 2025-11)" in out
