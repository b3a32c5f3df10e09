"""Business value and threshold, champion comparison, robustness, blessing and model card."""

from __future__ import annotations

import numpy as np
import pytest

from include.model_files import read_model
from include.spec import Business, BusinessGate, RobustnessGate
from include.tasks.blessing import make_blessing, raise_unless_blessed, required_gates
from include.tasks.business import business_gate, choose_threshold, value_per_1000
from include.tasks.gates import GateFailed, check, raise_for_gate
from include.tasks.train.champion import compare_with_champion
from include.tasks.train.model_card import write_model_card
from include.tasks.train.robustness import check_robustness, perturbed, robustness_gate

CHURN = Business(value_of_true_positive=500, cost_of_action=50, offer_acceptance_rate=0.3)


def test_check_shape_and_missing_values_never_pass():
    r = check("fairness", "dpd[female]", 0.1, 0.2, "<=", "runs:/x/f.json")
    assert r == {
        "gate": "fairness",
        "metric": "dpd[female]",
        "comparison": "<=",
        "threshold": 0.2,
        "value": 0.1,
        "status": "passed",
        "evidence_uri": "runs:/x/f.json",
    }
    assert check("x", "m", None, 0, ">=")["status"] == "failed"
    assert check("x", "m", float("nan"), 0, ">=")["status"] == "failed"
    with pytest.raises(GateFailed, match="x: m = n/a, required >= 0"):
        raise_for_gate([check("x", "m", None, 0, ">=")])


def test_value_per_1000_by_hand():
    y = np.array([1, 1, 0, 0])
    p = np.array([0.9, 0.2, 0.8, 0.1])
    # Acting on rows 0 and 2: one churner kept (0.3 * 500 - 50 = 100), one offer wasted (-50).
    assert value_per_1000(y, p, 0.5, CHURN) == pytest.approx(1000 * (100 - 50) / 4)
    assert value_per_1000(y, p, 0.95, CHURN) == 0.0


def test_threshold_maximises_validation_value():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 2000)
    p = np.clip(y * 0.35 + rng.uniform(0, 0.65, 2000), 0, 1)
    chosen = choose_threshold(y, p, CHURN)
    best = max(value_per_1000(y, p, t / 100, CHURN) for t in range(1, 100))
    assert chosen["value_per_1000"] == pytest.approx(best)
    assert len(chosen["curve"]) == 99
    assert choose_threshold(y, p, Business())["threshold"] == 0.5  # no value model: the usual 0.5


def test_business_gate_against_champion():
    gate = BusinessGate(min_value_per_1000=0, max_drop_vs_champion_per_1000=100)
    assert all(r["status"] == "passed" for r in business_gate(5000, 5050, gate))
    failed = [r for r in business_gate(5000, 5200, gate) if r["status"] == "failed"]
    assert [r["metric"] for r in failed] == ["value_vs_champion_per_1000"]
    assert failed[0]["value"] == -200
    floor, vs_champion = business_gate(-1, None, gate)
    assert floor["status"] == "failed"
    assert vs_champion["metric"] == "value_vs_champion_per_1000" and vs_champion["status"] == "not_applicable"


@pytest.fixture
def trained(telco_trained):
    return telco_trained


def test_champion_comparison_same_test_set(telco_spec, trained):
    model = read_model(trained["model_uri"])
    same = compare_with_champion(
        telco_spec,
        trained["model_uri"],
        trained["splits"]["test"],
        {"threshold": 0.5},
        {"model": model, "threshold": 0.5, "version": 1},
    )
    assert same["champion"]["roc_auc"] == pytest.approx(same["candidate"]["roc_auc"])
    assert all(r["status"] == "passed" for r in same["gates"])
    assert {r["metric"] for r in same["gates"]} == {"roc_auc_delta", "pr_auc_delta", "brier_delta"}

    class Perfect:
        """A champion that is (impossibly) always right: any real candidate regresses against it."""

        def __init__(self, y):
            self.y = y

        def predict_proba(self, X):
            return np.column_stack([1 - self.y, self.y]).astype(float)

    from include.frames import labels, read_parquet

    y = labels(read_parquet(trained["splits"]["test"]), telco_spec)
    worse = compare_with_champion(
        telco_spec,
        trained["model_uri"],
        trained["splits"]["test"],
        {"threshold": 0.5},
        {"model": Perfect(y), "threshold": 0.5, "version": 7},
    )
    failed = {r["metric"] for r in worse["gates"] if r["status"] == "failed"}
    assert {"roc_auc_delta", "brier_delta"} <= failed
    none = compare_with_champion(
        telco_spec, trained["model_uri"], trained["splits"]["test"], {"threshold": 0.5}, None
    )
    # Nothing was compared: recorded as not applicable, never as a pass.
    assert none["champion"] is None and len(none["gates"]) == 1
    assert none["gates"][0]["status"] == "not_applicable" and none["gates"][0]["value"] is None
    assert none["gates"][0]["metric"] == "champion_present" and "no champion" in none["gates"][0]["note"]


def test_robustness_flip_rate(telco_spec, trained):
    res = check_robustness(telco_spec, trained["model_uri"], trained["splits"]["test"], {"threshold": 0.5})
    assert 0 <= res["flip_rate"] <= 1 and set(res["per_feature"]) == {
        "tenure",
        "monthly_charges",
        "total_charges",
    }
    assert res["flip_rate"] >= max(res["per_feature"].values())
    assert (
        robustness_gate(
            res, RobustnessGate(max_flip_rate=1.0, perturbations=telco_spec.gates.robustness.perturbations)
        )[0]["status"]
        == "passed"
    )
    tight = robustness_gate(
        {"flip_rate": 0.03},
        RobustnessGate(max_flip_rate=0.0, perturbations={"tenure": {"kind": "absolute", "delta": 1}}),
    )
    assert tight[0]["status"] == "failed"
    assert robustness_gate({"flip_rate": 0.0}, RobustnessGate())[0]["status"] == "not_applicable"


def test_perturbation_is_realistic():
    import pandas as pd

    X = pd.DataFrame({"tenure": [0.0, 10.0], "monthly_charges": [20.0, 100.0]})
    assert perturbed(X, "tenure", "absolute", 1, -1)["tenure"].tolist() == [0.0, 9.0]  # no negative tenure
    assert perturbed(X, "monthly_charges", "relative", 0.05, 1)["monthly_charges"].tolist() == pytest.approx(
        [21.0, 105.0]
    )


def test_blessing_complete_and_passed_only_with_every_gate(telco_spec):
    required = required_gates(telco_spec)
    assert required[0] == "data_validation" and "onnx" in required
    results = [check(g, "m", 1, 0, ">=") for g in required]
    b = make_blessing(telco_spec, results)
    assert b["complete"] and b["state"] == "passed"
    raise_unless_blessed(b)
    partial = make_blessing(telco_spec, results[:-1])
    assert not partial["complete"] and partial["missing"] == [required[-1]]
    with pytest.raises(GateFailed, match="blessing incomplete"):
        raise_unless_blessed(partial)
    failing = make_blessing(telco_spec, results + [check("fairness", "dpd[female]", 0.5, 0.2, "<=")])
    assert failing["complete"] and failing["state"] == "failed" and failing["by_gate"]["fairness"] == "failed"
    with pytest.raises(GateFailed, match=r"fairness: dpd\[female\] = 0\.5000, required <= 0\.2"):
        raise_unless_blessed(failing)


def test_model_card_renders_records(tmp_path, telco_spec):
    rec = {
        "metrics": {"roc_auc": 0.84},
        "business": {"threshold": 0.31, "value_per_1000": 9876.5},
        "fairness": {
            "attributes": {
                "female": {
                    "demographic_parity_difference": 0.01,
                    "by_group": {"0": {"count": 10, "selection_rate": 0.3, "recall": 0.8, "precision": 0.5}},
                }
            }
        },
        "blessing": make_blessing(telco_spec, [check("evaluation", "roc_auc", 0.84, 0.8, ">=")]),
        "data_version": "abc123",
    }
    out = write_model_card(telco_spec, rec, tmp_path)
    md = (tmp_path / "model_card.md").read_text()
    html = (tmp_path / "model_card.html").read_text()
    assert "# Model card: telco_churn" in md and "abc123" in md and "9876.5000" in md
    assert "Rank current subscribers" in md  # intended use from the spec
    assert "NOT PASSED" in md and "missing:" in md
    assert "<table>" in html and "<h1>Model card: telco_churn</h1>" in html
    assert out["html"].endswith("model_card.html")
    assert "others: numeric and binary median-imputed and standardised; categorical one-hot" in md
    from include.spec import ColumnPreprocessing

    declared = telco_spec.model_copy(update={"preprocessing": {"tenure": ColumnPreprocessing(bins=4)}})
    write_model_card(declared, rec, tmp_path / "declared")
    assert (
        "tenure: bins 4; others: numeric and binary median-imputed"
        in (tmp_path / "declared" / "model_card.md").read_text()
    )


def test_model_card_shows_data_derived_text_as_text(tmp_path, telco_spec):
    crafted = "<script>alert(1)</script> [x](javascript:alert(2)) a|b"
    rec = {
        "fairness": {"attributes": {"female": {"by_group": {crafted: {"count": 3, "selection_rate": 0.5}}}}},
        "blessing": make_blessing(telco_spec, []),
        "onnx": {"converted": False, "error": "<img src=x onerror=alert(3)>"},
    }
    write_model_card(telco_spec, rec, tmp_path)
    page = (tmp_path / "model_card.html").read_text()
    assert "<script" not in page and "<img" not in page
    assert 'href="javascript' not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;img src=x onerror=alert(3)&gt;" in page
    assert "a|b" in page  # one cell, the pipe shown as text
