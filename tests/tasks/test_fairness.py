"""Fairness: known disparities give known numbers, the gate names what failed, the task writes its evidence."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from include import storage
from include.spec import FairnessGate
from include.tasks.fairness import assess_fairness, fairness_gate, fairness_report
from include.tasks.gates import GateFailed, raise_for_gate
from include.tasks.ingest import read_parquet, to_parquet_bytes

# Eight people, four per group, two positives and two negatives in each group.
GROUP = np.array([0, 0, 0, 0, 1, 1, 1, 1])
Y_TRUE = np.array([1, 1, 0, 0, 1, 1, 0, 0])


def _report(y_pred, y_true=Y_TRUE, group=GROUP, name="female"):
    return fairness_report(y_true, np.asarray(y_pred), pd.DataFrame({name: group}))


def test_equal_decisions_pass_the_gate():
    # Each group: one true positive, one false positive -> identical rates everywhere.
    rep = _report([1, 0, 1, 0, 1, 0, 1, 0])["attributes"]["female"]
    assert rep["demographic_parity_difference"] == 0.0
    assert rep["disparate_impact_ratio"] == 1.0
    assert rep["equal_opportunity_difference"] == 0.0
    assert rep["equalized_odds_difference"] == 0.0
    assert rep["by_group"]["0"] == {
        "count": 4,
        "selection_rate": 0.5,
        "recall": 0.5,
        "precision": 0.5,
        "false_positive_rate": 0.5,
    }
    results = fairness_gate({"attributes": {"female": rep}}, FairnessGate())
    assert [r["metric"] for r in results] == [
        "demographic_parity_difference[female]",
        "disparate_impact_ratio[female]",
        "equal_opportunity_difference[female]",
        "equalized_odds_difference[female]",
    ]
    assert all(r["passed"] for r in results)
    raise_for_gate(results)


def test_selecting_only_one_group_fails_parity_and_impact():
    report = _report(GROUP)  # everyone in group 1 selected, nobody in group 0
    rep = report["attributes"]["female"]
    assert rep["demographic_parity_difference"] == 1.0
    assert rep["disparate_impact_ratio"] == 0.0
    results = {r["metric"]: r for r in fairness_gate(report, FairnessGate())}
    assert not results["demographic_parity_difference[female]"]["passed"]
    assert not results["disparate_impact_ratio[female]"]["passed"]
    assert results["disparate_impact_ratio[female]"]["comparison"] == ">="
    with pytest.raises(GateFailed) as exc:
        raise_for_gate(list(results.values()))
    msg = str(exc.value)
    assert "fairness: demographic_parity_difference[female] = 1.0000, required <= 0.2" in msg
    assert "fairness: disparate_impact_ratio[female] = 0.0000, required >= 0.6" in msg


def test_equal_opportunity_difference_hand_computed():
    # Group "a": 4 positives, 3 caught (TPR 0.75), FPR 0. Group "b": 2 positives, 1 caught
    # (TPR 0.5), FPR 1/2. Selection rates 3/5 vs 2/4.
    group = np.array(["a"] * 5 + ["b"] * 4)
    y_true = np.array([1, 1, 1, 1, 0, 1, 1, 0, 0])
    y_pred = np.array([1, 1, 1, 0, 0, 1, 0, 1, 0])
    rep = _report(y_pred, y_true, group, name="region")["attributes"]["region"]
    assert rep["equal_opportunity_difference"] == pytest.approx(0.25)
    assert rep["equalized_odds_difference"] == pytest.approx(0.5)  # max(0.25, FPR gap 0.5)
    assert rep["demographic_parity_difference"] == pytest.approx(0.1)
    assert rep["disparate_impact_ratio"] == pytest.approx(0.5 / 0.6, abs=1e-6)
    assert rep["by_group"]["b"]["precision"] == 0.5
    json.dumps(rep, allow_nan=False)


def test_group_without_positives_is_undefined_and_fails_with_a_reason():
    y_true = np.array([0, 0, 0, 0, 1, 1, 0, 0])  # group 0 has no positive labels
    report = _report([0, 1, 0, 0, 1, 0, 1, 0], y_true)
    rep = report["attributes"]["female"]
    assert rep["by_group"]["0"]["recall"] is None
    assert rep["equal_opportunity_difference"] is None and rep["equalized_odds_difference"] is None
    assert rep["demographic_parity_difference"] == 0.25  # still defined
    json.dumps(report, allow_nan=False)
    results = {r["metric"]: r for r in fairness_gate(report, FairnessGate())}
    eod = results["equal_opportunity_difference[female]"]
    assert not eod["passed"] and "no positive labels" in eod["note"]
    with pytest.raises(GateFailed, match=r"equal_opportunity_difference\[female\] = n/a"):
        raise_for_gate(list(results.values()))


def test_single_group_cannot_pass():
    report = _report([1, 0, 1, 0, 1, 0, 1, 0], group=np.array(["x"] * 8))
    results = fairness_gate(report, FairnessGate())
    assert len(results) == 4 and not any(r["passed"] for r in results)
    assert "nothing to compare" in results[0]["note"]


@pytest.fixture
def trained(telco_trained):
    return telco_trained


def test_assess_fairness_end_to_end(tmp_path, telco_spec, trained):
    out = assess_fairness(telco_spec, trained["model_uri"], trained["splits"]["test"], 0.5, tmp_path / "fair")
    attrs = telco_spec.sensitive_attributes
    assert sorted(out["report"]["attributes"]) == sorted(attrs)
    assert len(out["gates"]) == 4 * len(attrs)
    assert {r["gate"] for r in out["gates"]} == {"fairness"}
    assert all(r["evidence_uri"].endswith("/fair/fairness.json") for r in out["gates"])
    assert out["mitigation"] is None
    for name in ["fairness.json", *(f"fairness_{a}.png" for a in attrs)]:
        path = tmp_path / "fair" / name
        assert str(path) in out["artifacts"] and path.stat().st_size > 0
    assert (tmp_path / "fair" / "fairness_female.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "fair" / "fairness.json").read_text()) == out["report"]
    by_group = out["report"]["attributes"]["senior_citizen"]["by_group"]
    assert set(by_group) == {"0", "1"} and sum(g["count"] for g in by_group.values()) == 300


def test_threshold_optimizer_records_before_and_after(tmp_path, telco_spec, trained):
    gates = telco_spec.gates.model_copy(
        update={
            "fairness": telco_spec.gates.fairness.model_copy(update={"mitigation": "threshold_optimizer"})
        }
    )
    spec = telco_spec.model_copy(update={"gates": gates})
    with pytest.raises(ValueError, match="pass train_uri"):
        assess_fairness(spec, trained["model_uri"], trained["splits"]["test"], 0.5, tmp_path / "x")
    out = assess_fairness(
        spec,
        trained["model_uri"],
        trained["splits"]["test"],
        0.5,
        tmp_path / "fair",
        train_uri=trained["splits"]["train"],
    )
    mit = out["mitigation"]
    assert mit["method"] == "threshold_optimizer" and mit["constraints"] == "equalized_odds"
    assert set(mit["before"]) == set(mit["after"]) == {"female", "senior_citizen"}
    assert mit["before"] == {
        a: {k: v for k, v in r.items() if k != "by_group"} for a, r in out["report"]["attributes"].items()
    }
    assert 0 <= mit["accuracy_before"] <= 1 and 0 <= mit["accuracy_after"] <= 1
    # The gate judges the unmitigated candidate: same results as without mitigation.
    plain = assess_fairness(telco_spec, trained["model_uri"], trained["splits"]["test"], 0.5, tmp_path / "p")
    assert [r["value"] for r in out["gates"]] == [r["value"] for r in plain["gates"]]
    assert str(tmp_path / "fair" / "fairness_mitigation.json") in out["artifacts"]


def test_missing_sensitive_column_is_named(tmp_path, telco_spec, trained):
    test = read_parquet(trained["splits"]["test"]).drop(columns=["senior_citizen"])
    uri = storage.write_bytes(storage.path_to_uri(tmp_path / "t.parquet"), to_parquet_bytes(test))
    with pytest.raises(ValueError, match=r"lacks sensitive attribute column\(s\) \['senior_citizen'\]"):
        assess_fairness(telco_spec, trained["model_uri"], uri, 0.5, tmp_path / "fair")


def test_spec_without_sensitive_attributes_has_no_checks(tmp_path, telco_spec, trained):
    spec = telco_spec.model_copy(update={"sensitive_attributes": []})
    out = assess_fairness(spec, trained["model_uri"], trained["splits"]["test"], 0.5, tmp_path / "fair")
    assert out["report"] == {"attributes": {}} and out["gates"] == []
    assert "not assessed" in out["note"]


def test_exponentiated_gradient_records_before_and_after(tmp_path, telco_spec, trained):
    gates = telco_spec.gates.model_copy(
        update={
            "fairness": telco_spec.gates.fairness.model_copy(update={"mitigation": "exponentiated_gradient"})
        }
    )
    spec = telco_spec.model_copy(update={"gates": gates})
    out = assess_fairness(
        spec,
        trained["model_uri"],
        trained["splits"]["test"],
        0.5,
        tmp_path / "fair",
        train_uri=trained["splits"]["train"],
    )
    mit = out["mitigation"]
    assert mit["method"] == "exponentiated_gradient"
    assert set(mit["after"]["female"]) == set(mit["before"]["female"])
    assert mit["accuracy_before"] != mit["accuracy_after"] or mit["after"] != mit["before"]
