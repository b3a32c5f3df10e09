"""The Models view shows each pipeline's own headline metric: ROC AUC, macro F1 or RMSE."""

from __future__ import annotations

import pytest

from include.models_view import GATES, render


def _pipeline(name: str, task: str, headline: str) -> dict:
    version = {
        "version": 1,
        "aliases": ["champion"],
        "blessing": "passed",
        "gates": dict.fromkeys(GATES, "passed"),
        "month": "2025-12",
        "data_version": "abc",
        "task": task,
        "headline": headline,
        "retired": None,
        "has_card": False,
        "approval": "",
    }
    return {
        "name": name,
        "versions": [version],
        "aliases": {"champion": 1},
        "traffic": {"mode": "none", "version": None},
        "monitor": None,
        "events": [],
        "pending_approvals": [],
    }


@pytest.mark.parametrize(
    ("task", "title", "value"),
    [("binary", "ROC AUC", "0.846"), ("multiclass", "macro F1", "0.634"), ("regression", "RMSE", "33.465")],
)
def test_each_task_shows_its_own_metric(task, title, value):
    page = render({"pipelines": [_pipeline("p", task, value + "1")], "error": None}, None)
    assert f"<th>{title}</th>" in page and f"<td>{value}</td>" in page


def test_each_version_lists_the_months_a_batch_run_scored_with_it():
    from include.models_view import _scored

    tags = {
        "slipway.scored.2025-11": '{"scored": 7000, "rejected": 43, "uri": "file:///lake/a"}',
        "slipway.scored.2025-12": '{"scored": 7043, "rejected": 0, "uri": "file:///lake/b"}',
        "slipway.scored.2026-01": "not json",
        "slipway.month": "2025-10",
    }
    scored = _scored(tags)
    assert [s["month"] for s in scored] == ["2025-12", "2025-11"]
    p = _pipeline("telco_churn", "binary", "0.85")
    p["versions"][0]["scored"] = scored
    page = render({"pipelines": [p], "error": None}, None)
    assert "2025-12 (7043 rows)" in page and "2025-11 (7000 rows, 43 rejected)" in page
    assert "title='file:///lake/b'" in page
