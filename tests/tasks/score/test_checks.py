"""A population's rows are checked by the service's rules, column at a time."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from include.serving.schema import RequestSchema
from include.tasks.score.checks import check_chunk


def _rows(telco_spec, wa_churn, n: int) -> list[dict]:
    frame = wa_churn.head(n)
    return [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in rec.items()}
        for rec in frame[["customer_id", *telco_spec.features.all]].to_dict("records")
    ]


def test_good_rows_pass_and_give_the_same_inputs_as_the_service(telco_spec, wa_churn):
    rows = _rows(telco_spec, wa_churn, 200)
    for r in rows:  # binary columns as a client sends them
        for col in telco_spec.features.binary:
            r[col] = 1 if r[col] in ("Yes", 1, "1") else 0
    schema = RequestSchema.from_spec(telco_spec)
    values, _, problems = schema.columns(rows)
    assert problems == []
    ok, reasons, feeds = check_chunk(telco_spec, pd.DataFrame(rows).astype(str).replace({"None": None}))
    assert ok.all() and set(reasons) == {None}
    expected = schema.arrays(values)
    for col in telco_spec.features.all:
        if expected[col].dtype == object:
            assert feeds[col].ravel().tolist() == expected[col].ravel().tolist(), col
        else:
            np.testing.assert_array_equal(feeds[col], expected[col], err_msg=col)


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("tenure", "twelve", "tenure: not a number"),
        ("monthly_charges", "1e40", "monthly_charges: not a finite number"),
        ("partner", "2", "partner: must be 0 or 1"),
        ("partner", None, "partner: must be 0 or 1, got a blank"),
        ("contract", None, "contract: must be a string, got a blank"),
        ("contract", "x" * 201, "contract: longer than 200 characters"),
        ("customer_id", "", "customer_id: not an entity key of 1 to 200 characters"),
    ],
)
def test_each_rule_rejects_its_row_with_the_reason_and_keeps_the_others(
    telco_spec, wa_churn, column, value, reason
):
    rows = _rows(telco_spec, wa_churn, 5)
    for r in rows:
        for col in telco_spec.features.binary:
            r[col] = 1 if r[col] in ("Yes", 1, "1") else 0
    frame = pd.DataFrame(rows).astype(object)
    frame.loc[2, column] = value
    ok, reasons, feeds = check_chunk(telco_spec, frame)
    assert ok.tolist() == [True, True, False, True, True]
    assert reasons[2] == reason and reasons[0] is None
    assert all(len(v) == 4 for v in feeds.values())
    # The service refuses the same row (a blank numeric is imputed by both, never refused).
    schema = RequestSchema.from_spec(telco_spec)
    bad = {**rows[2], column: (float(value) if column == "monthly_charges" else value)}
    if column == "partner" and value == "2":
        bad[column] = 2
    assert schema.columns([bad])[2], (column, value)


def test_a_blank_numeric_is_imputed_not_rejected(telco_spec, wa_churn):
    rows = _rows(telco_spec, wa_churn, 3)
    for r in rows:
        for col in telco_spec.features.binary:
            r[col] = 1 if r[col] in ("Yes", 1, "1") else 0
        r["total_charges"] = None
    ok, _, feeds = check_chunk(telco_spec, pd.DataFrame(rows))
    assert ok.all() and np.isnan(feeds["total_charges"]).all()


def test_a_missing_column_refuses_the_population(telco_spec, wa_churn):
    frame = pd.DataFrame(_rows(telco_spec, wa_churn, 3)).drop(columns=["tenure"])
    with pytest.raises(ValueError, match=r"lacks the columns \['tenure'\]"):
        check_chunk(telco_spec, frame)
