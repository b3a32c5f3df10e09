"""The fairness policy replay: the product's own tasks over monthly snapshots, failures marked."""

from __future__ import annotations


def test_policy_replay_marks_the_months_that_fail(tmp_path, telco_spec):
    from include.demo.fairness_policy import evaluate_policy, markdown

    strict = telco_spec.model_copy(
        update={
            "gates": telco_spec.gates.model_copy(
                update={
                    "fairness": telco_spec.gates.fairness.model_copy(
                        update={"max_equal_opportunity_difference": 0.0001}
                    )
                }
            )
        }
    )
    rows = evaluate_policy(strict, ["2025-01", "2025-02"], tmp_path)
    assert [r["month"] for r in rows] == ["2025-01", "2025-02"]
    assert rows[0]["rows"] < rows[1]["rows"]  # every batch up to the month
    for row in rows:
        eod = [r for r in row["results"] if r["metric"].startswith("equal_opportunity_difference[")]
        assert len(eod) == 2 and any(r["status"] == "failed" for r in eod)
    table = markdown(rows)
    assert table.splitlines()[0].startswith("| month | rows | threshold | ROC AUC | DP[female]")
    assert len(table.splitlines()) == 4 and "**" in table


def _with_eod(spec, limit: float):
    fairness = spec.gates.fairness.model_copy(update={"max_equal_opportunity_difference": limit})
    return spec.model_copy(update={"gates": spec.gates.model_copy(update={"fairness": fairness})})


def test_seed_table_counts_passes_over_other_splits(tmp_path, telco_spec):
    from include.demo.fairness_policy import seed_table

    strict = seed_table(_with_eod(telco_spec, 0.0001), ["2025-01"], 2, tmp_path)
    row = strict.splitlines()[2]
    assert row.startswith("| 2025-01 | 0 |") and "equal_opportunity_difference[" in row
    # Only the split's seed changes: the same months, a header naming how many seeds.
    assert strict.splitlines()[0] == "| month | passes (of 2 split seeds) | failed checks (times) |"
