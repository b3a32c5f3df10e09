"""Fairness: known disparities give known numbers, the gate names what failed, the task writes its evidence."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from include import storage
from include.frames import read_parquet, to_parquet_bytes
from include.spec import FairnessGate
from include.tasks.gates import FAILED, NOT_APPLICABLE, PASSED, GateFailed, raise_for_gate, status_of
from include.tasks.train.fairness import FairnessInputError, assess_fairness, fairness_gate, fairness_report

# Eight people, four per group, two positives and two negatives in each group.
GROUP = np.array([0, 0, 0, 0, 1, 1, 1, 1])
Y_TRUE = np.array([1, 1, 0, 0, 1, 1, 0, 0])
RULE = {"threshold": 0.5}  # the binary decision rule evaluate_model returns


def _report(y_pred, y_true=Y_TRUE, group=GROUP, name="female"):
    return fairness_report(y_true, np.asarray(y_pred), pd.DataFrame({name: group}))


def test_equal_decisions_pass_the_gate():
    # Each group: one true positive, one false positive -> identical rates everywhere.
    rep = _report([1, 0, 1, 0, 1, 0, 1, 0])["attributes"]["female"]
    assert rep["demographic_parity_difference"] == 0.0
    assert rep["disparate_impact_ratio"] == 1.0
    assert rep["equal_opportunity_difference"] == 0.0
    assert rep["equalized_odds_difference"] == 0.0
    assert rep["predictive_parity_difference"] == 0.0
    assert rep["notes"] == {}
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
    assert all(r["status"] == PASSED for r in results)
    raise_for_gate(results)
    # With a predictive parity bound the gate has a fifth check per attribute.
    gated = fairness_gate({"attributes": {"female": rep}}, FairnessGate(max_predictive_parity_difference=0.1))
    assert gated[-1]["metric"] == "predictive_parity_difference[female]"
    assert gated[-1]["status"] == PASSED and gated[-1]["value"] == 0.0


def _counts(n, positives, true_pos, false_pos):
    """Labels and decisions of one group: ``positives`` of ``n`` are 1; TP and FP as given."""
    y_true = np.array([1] * positives + [0] * (n - positives))
    y_pred = np.array(
        [1] * true_pos + [0] * (positives - true_pos) + [1] * false_pos + [0] * (n - positives - false_pos)
    )
    return y_true, y_pred


def test_precision_gap_fails_only_the_predictive_parity_check():
    # The unseen-data incident: base rates 20% vs 40%, the same recall (0.7) and nearly the same
    # false positive rate, so parity, impact, equal opportunity and equalized odds all pass, but of
    # the customers flagged in group "a" only 45% are real positives, against 70% in group "b".
    ya, pa = _counts(100, 20, 14, 17)  # precision 14/31 = 0.4516, selection 0.31
    yb, pb = _counts(100, 40, 28, 12)  # precision 28/40 = 0.70, selection 0.40
    report = _report(np.r_[pa, pb], np.r_[ya, yb], np.array(["a"] * 100 + ["b"] * 100), name="segment")
    rep = report["attributes"]["segment"]
    assert rep["by_group"]["a"]["precision"] == pytest.approx(14 / 31, abs=1e-6)
    assert rep["by_group"]["b"]["precision"] == 0.7
    assert rep["predictive_parity_difference"] == pytest.approx(0.7 - 14 / 31, abs=1e-6)

    # Reported always; not gated unless the spec sets a bound.
    default = fairness_gate(report, FairnessGate())
    assert len(default) == 4 and all(r["status"] == PASSED for r in default)

    results = fairness_gate(report, FairnessGate(max_predictive_parity_difference=0.2))
    failed = [r for r in results if r["status"] == FAILED]
    assert [r["metric"] for r in failed] == ["predictive_parity_difference[segment]"]
    assert failed[0]["threshold"] == 0.2 and failed[0]["comparison"] == "<="
    with pytest.raises(
        GateFailed, match=r"predictive_parity_difference\[segment\] = 0\.2484, required <= 0\.2"
    ):
        raise_for_gate(results)


def test_selecting_only_one_group_fails_parity_and_impact():
    report = _report(GROUP)  # everyone in group 1 selected, nobody in group 0
    rep = report["attributes"]["female"]
    assert rep["demographic_parity_difference"] == 1.0
    assert rep["disparate_impact_ratio"] == 0.0
    results = {r["metric"]: r for r in fairness_gate(report, FairnessGate())}
    assert results["demographic_parity_difference[female]"]["status"] == FAILED
    assert results["disparate_impact_ratio[female]"]["status"] == FAILED
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
    assert eod["status"] == FAILED and "no positive labels" in eod["note"]
    assert "no positive labels" in rep["notes"]["equal_opportunity_difference"]
    with pytest.raises(GateFailed, match=r"equal_opportunity_difference\[female\] = n/a"):
        raise_for_gate(list(results.values()))


def test_group_without_positive_predictions_has_undefined_precision():
    # Group 0 gets no positive decision: its precision is 0/0, not the 0 scikit-learn would report,
    # so the precision gap cannot be measured and a predictive parity bound cannot pass.
    report = _report([0, 0, 0, 0, 1, 0, 1, 0])
    rep = report["attributes"]["female"]
    assert rep["by_group"]["0"]["precision"] is None and rep["by_group"]["1"]["precision"] == 0.5
    assert rep["predictive_parity_difference"] is None
    assert "received no positive prediction" in rep["notes"]["predictive_parity_difference"]
    json.dumps(report, allow_nan=False)
    results = {
        r["metric"]: r for r in fairness_gate(report, FairnessGate(max_predictive_parity_difference=0.5))
    }
    ppd = results["predictive_parity_difference[female]"]
    assert ppd["status"] == FAILED and ppd["value"] is None
    assert "['0']" in ppd["note"] and "precision is undefined" in ppd["note"]


def test_single_group_cannot_pass():
    report = _report([1, 0, 1, 0, 1, 0, 1, 0], group=np.array(["x"] * 8))
    results = fairness_gate(report, FairnessGate(max_predictive_parity_difference=0.2))
    assert len(results) == 5 and all(r["status"] == FAILED for r in results)
    assert all("nothing to compare" in r["note"] for r in results)


def test_rows_that_do_not_line_up_are_an_input_error():
    with pytest.raises(FairnessInputError, match=r"same number of rows"):
        fairness_report(Y_TRUE, Y_TRUE[:-1], pd.DataFrame({"female": GROUP}))
    assert issubclass(FairnessInputError, ValueError)  # existing ValueError handlers still catch it


def test_no_sensitive_attributes_is_not_applicable_not_an_empty_pass():
    results = fairness_gate({"attributes": {}}, FairnessGate(), "file:///e/fairness.json")
    assert len(results) == 1
    (r,) = results
    assert r["status"] == NOT_APPLICABLE and r["gate"] == "fairness" and r["metric"] == "sensitive_attributes"
    assert "no sensitive_attributes" in r["note"] and r["evidence_uri"] == "file:///e/fairness.json"
    assert status_of(results) == NOT_APPLICABLE
    raise_for_gate(results)  # nothing failed
    because = "an anonymous B2B product: customers are companies, no personal attributes exist"
    (r,) = fairness_gate({"attributes": {}}, FairnessGate(not_applicable_because=because))
    assert r["note"] == because


@pytest.fixture
def trained(telco_trained):
    return telco_trained


def test_assess_fairness_end_to_end(tmp_path, telco_spec, trained):
    out = assess_fairness(
        telco_spec, trained["model_uri"], trained["splits"]["test"], RULE, tmp_path / "fair"
    )
    attrs = telco_spec.sensitive_attributes
    assert sorted(out["report"]["attributes"]) == sorted(attrs)
    per_attr = 4 + (telco_spec.gates.fairness.max_predictive_parity_difference is not None)
    assert len(out["gates"]) == per_attr * len(attrs)
    assert all(r["status"] in (PASSED, FAILED) for r in out["gates"])
    for rep in out["report"]["attributes"].values():
        precisions = [g["precision"] for g in rep["by_group"].values()]
        assert rep["predictive_parity_difference"] == pytest.approx(
            max(precisions) - min(precisions), abs=2e-6
        )
    assert {r["gate"] for r in out["gates"]} == {"fairness"}
    assert all(r["evidence_uri"].endswith("/fair/fairness.json") for r in out["gates"])
    assert out["mitigation"] is None
    for name in ["fairness.json", *(f"fairness_{a}.png" for a in attrs)]:
        path = tmp_path / "fair" / name
        assert str(path) in out["artifacts"] and path.stat().st_size > 0
    assert (tmp_path / "fair" / "fairness_female.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "fair" / "fairness.json").read_text()) == out["report"]
    by_group = out["report"]["attributes"]["senior_citizen"]["by_group"]
    n_test = len(read_parquet(trained["splits"]["test"]))
    assert set(by_group) == {"0", "1"} and sum(g["count"] for g in by_group.values()) == n_test


def test_threshold_optimizer_records_before_and_after(tmp_path, telco_spec, trained):
    gates = telco_spec.gates.model_copy(
        update={
            "fairness": telco_spec.gates.fairness.model_copy(update={"mitigation": "threshold_optimizer"})
        }
    )
    spec = telco_spec.model_copy(update={"gates": gates})
    with pytest.raises(FairnessInputError, match="pass train_uri"):
        assess_fairness(spec, trained["model_uri"], trained["splits"]["test"], RULE, tmp_path / "x")
    out = assess_fairness(
        spec,
        trained["model_uri"],
        trained["splits"]["test"],
        RULE,
        tmp_path / "fair",
        train_uri=trained["splits"]["train"],
    )
    mit = out["mitigation"]
    assert mit["method"] == "threshold_optimizer" and mit["constraints"] == "equalized_odds"
    assert set(mit["before"]) == set(mit["after"]) == {"female", "senior_citizen"}
    assert mit["before"] == {
        a: {k: v for k, v in r.items() if k not in ("by_group", "notes")}
        for a, r in out["report"]["attributes"].items()
    }
    assert "predictive_parity_difference" in mit["after"]["senior_citizen"]
    assert 0 <= mit["accuracy_before"] <= 1 and 0 <= mit["accuracy_after"] <= 1
    # The record says what the gate would decide on the mitigated decisions, in the status vocabulary.
    after = {"attributes": {a: {**m, "notes": {}} for a, m in mit["after"].items()}}
    assert mit["gate_status_after"] == status_of(fairness_gate(after, spec.gates.fairness))
    assert mit["gate_status_after"] in (PASSED, FAILED)
    # The gate judges the unmitigated candidate: same results as without mitigation.
    plain = assess_fairness(telco_spec, trained["model_uri"], trained["splits"]["test"], RULE, tmp_path / "p")
    assert [r["value"] for r in out["gates"]] == [r["value"] for r in plain["gates"]]
    assert str(tmp_path / "fair" / "fairness_mitigation.json") in out["artifacts"]


def test_missing_sensitive_column_is_named(tmp_path, telco_spec, trained):
    test = read_parquet(trained["splits"]["test"]).drop(columns=["senior_citizen"])
    uri = storage.write_bytes(storage.path_to_uri(tmp_path / "t.parquet"), to_parquet_bytes(test))
    with pytest.raises(
        FairnessInputError, match=r"lacks sensitive attribute column\(s\) \['senior_citizen'\]"
    ):
        assess_fairness(telco_spec, trained["model_uri"], uri, RULE, tmp_path / "fair")


def test_a_group_with_one_class_in_train_is_an_input_error(tmp_path, telco_spec, trained):
    train = read_parquet(trained["splits"]["train"])
    seniors = train["senior_citizen"] == 1
    train.loc[seniors, telco_spec.target.column] = "No"  # no senior churner left to fit a threshold on
    uri = storage.write_bytes(storage.path_to_uri(tmp_path / "train.parquet"), to_parquet_bytes(train))
    gates = telco_spec.gates.model_copy(
        update={
            "fairness": telco_spec.gates.fairness.model_copy(update={"mitigation": "threshold_optimizer"})
        }
    )
    spec = telco_spec.model_copy(update={"gates": gates})
    with pytest.raises(FairnessInputError, match=r"one class only in \[.*senior_citizen=1"):
        assess_fairness(
            spec, trained["model_uri"], trained["splits"]["test"], RULE, tmp_path / "fair", train_uri=uri
        )


def test_spec_without_sensitive_attributes_is_not_applicable(tmp_path, telco_spec, trained):
    because = "no personal attributes are collected for this product"
    fairness = telco_spec.gates.fairness.model_copy(update={"not_applicable_because": because})
    spec = telco_spec.model_copy(
        update={
            "sensitive_attributes": [],
            "gates": telco_spec.gates.model_copy(update={"fairness": fairness}),
        }
    )
    out = assess_fairness(spec, trained["model_uri"], trained["splits"]["test"], RULE, tmp_path / "fair")
    assert out["report"] == {"task": "binary", "attributes": {}}
    assert [(r["status"], r["metric"], r["note"]) for r in out["gates"]] == [
        (NOT_APPLICABLE, "sensitive_attributes", because)
    ]
    assert out["gates"][0]["evidence_uri"].endswith("/fair/fairness.json")
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
        RULE,
        tmp_path / "fair",
        train_uri=trained["splits"]["train"],
    )
    mit = out["mitigation"]
    assert mit["method"] == "exponentiated_gradient"
    assert set(mit["after"]["female"]) == set(mit["before"]["female"])
    assert mit["accuracy_before"] != mit["accuracy_after"] or mit["after"] != mit["before"]
