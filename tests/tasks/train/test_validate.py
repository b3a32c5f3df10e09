"""Unit tests for include/tasks/train/validate.py on small Parquet snapshots under tmp_path."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

from include.tasks.train.validate import DataValidationError, raise_for_failures, validate_snapshot
from tests.support.processes import ROOT

SUITE = ROOT / "include" / "expectations" / "telco_churn.json"
ADDONS = [
    "online_security",
    "online_backup",
    "device_protection",
    "tech_support",
    "streaming_tv",
    "streaming_movies",
]


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _valid_frame(n: int = 120) -> pd.DataFrame:
    """A small snapshot that satisfies every expectation, including one blank total_charges."""
    rows = []
    for i in range(n):
        internet = ["DSL", "Fiber optic", "No"][i % 3]
        phone = int(i % 5 != 0)
        tenure = 0 if i == 0 else 1 + i % 72
        monthly = 20.0 + (i % 90)
        row = {
            "customer_id": _hash(f"customer-{i}"),
            "churn": "Yes" if i % 4 == 0 else "No",
            "female": i % 2,
            "senior_citizen": int(i % 6 == 0),
            "partner": (i // 2) % 2,
            "dependents": (i // 3) % 2,
            "tenure": tenure,
            "phone_service": phone,
            "multiple_lines": ("Yes" if i % 2 else "No") if phone else "No phone service",
            "internet_service": internet,
            "contract": ["Month-to-month", "One year", "Two year"][i % 3],
            "paperless_billing": (i // 5) % 2,
            "payment_method": [
                "Electronic check",
                "Mailed check",
                "Bank transfer (automatic)",
                "Credit card (automatic)",
            ][i % 4],
            "monthly_charges": monthly,
            # Like the real data: customers not yet billed (tenure 0) have a blank total.
            "total_charges": float("nan") if tenure == 0 else round(monthly * tenure, 2),
            "slipway_split": ["train", "train", "train", "validation", "test"][i % 5],
            "batch_month": "2025-01",
        }
        for addon in ADDONS:
            row[addon] = "No internet service" if internet == "No" else ("Yes" if i % 2 else "No")
        rows.append(row)
    return pd.DataFrame(rows)


def _write(frame: pd.DataFrame, tmp_path: Path, name: str = "snapshot.parquet") -> str:
    path = tmp_path / name
    frame.to_parquet(path, index=False)
    return path.as_uri()


def _suite_size() -> int:
    return len(json.loads(SUITE.read_text())["expectations"])


def test_passing_snapshot_writes_result_and_docs_and_does_not_raise(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything GX wrote relative to the cwd would show up here
    out = tmp_path / "out"

    result = validate_snapshot(_write(_valid_frame(), tmp_path), SUITE, out)

    assert result["success"] is True
    assert result["evaluated"] == result["successful"] == _suite_size()
    assert result["failed"] == []
    assert result["suite"] == "telco_churn"
    json.dumps(result)  # small and JSON-safe: it travels through XCom
    assert json.loads(Path(result["result_path"]).read_text())["success"] is True
    assert Path(result["docs_path"]) == out / "data_docs" / "index.html"
    assert Path(result["docs_path"]).is_file()
    assert len(list((out / "data_docs" / "validations").rglob("*.html"))) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "snapshot.parquet"]
    assert sorted(p.name for p in out.iterdir()) == ["data_docs", "validation_result.json"]
    raise_for_failures(result, "telco_churn")


def test_broken_snapshot_names_each_failed_expectation_and_column(tmp_path):
    frame = _valid_frame()
    frame.loc[1, "tenure"] = -5
    frame.loc[2, "churn"] = "Maybe"
    frame.loc[3, "contract"] = None
    frame = frame.drop(columns=["monthly_charges"])

    result = validate_snapshot(_write(frame, tmp_path), SUITE, tmp_path / "out")

    assert result["success"] is False
    assert result["successful"] == result["evaluated"] - len(result["failed"])
    failed = {(f["expectation"], f["column"]) for f in result["failed"]}
    assert {
        ("expect_column_values_to_be_between", "tenure"),
        ("expect_column_values_to_be_in_set", "churn"),
        ("expect_column_values_to_not_be_null", "contract"),
        ("expect_table_columns_to_match_set", None),
        ("expect_column_values_to_be_between", "monthly_charges"),
    } <= failed
    tenure = next(f for f in result["failed"] if f["column"] == "tenure")
    assert tenure["observed"]["unexpected_count"] == 1
    assert tenure["observed"]["partial_unexpected_list"] == [-5]
    # Failed runs still leave their evidence for the caller to log.
    assert Path(result["result_path"]).is_file() and Path(result["docs_path"]).is_file()

    with pytest.raises(DataValidationError) as err:
        raise_for_failures(result, "telco_churn")
    message = str(err.value)
    assert message.startswith(
        f"Data validation failed: {len(result['failed'])} of {result['evaluated']} expectations "
        "in suite 'telco_churn' failed:"
    )
    for expected in ("tenure", "-5", "churn", "'Maybe'", "contract", "monthly_charges", "does not exist"):
        assert expected in message
    assert "missing columns ['monthly_charges']" in message
    assert message.rstrip().endswith("re-run.")


def test_inconsistent_service_columns_fail_the_pair_check(tmp_path):
    frame = _valid_frame()
    no_internet = frame.index[frame["internet_service"] == "No"][0]
    frame.loc[no_internet, "online_backup"] = "Yes"

    result = validate_snapshot(_write(frame, tmp_path), SUITE, tmp_path / "out")

    assert [(f["expectation"], f["column"]) for f in result["failed"]] == [
        ("expect_column_pair_values_to_be_in_set", "internet_service, online_backup")
    ]


def test_raw_customer_ids_are_reported_without_their_values(tmp_path):
    frame = _valid_frame()
    frame.loc[:4, "customer_id"] = [f"CUST-{i:05d}" for i in range(5)]
    out = tmp_path / "out"

    result = validate_snapshot(_write(frame, tmp_path), SUITE, out)

    assert ("expect_column_values_to_match_regex", "customer_id") in {
        (f["expectation"], f["column"]) for f in result["failed"]
    }
    with pytest.raises(DataValidationError) as err:
        raise_for_failures(result, "telco_churn")
    assert "customer_id" in str(err.value) and "5 unexpected values" in str(err.value)
    leaked = [p for p in out.rglob("*") if p.is_file() and b"CUST-" in p.read_bytes()]
    assert "CUST-" not in json.dumps(result) + str(err.value)
    assert leaked == []


def test_rerun_replaces_the_previous_docs_site(tmp_path):
    uri = _write(_valid_frame(), tmp_path)
    out = tmp_path / "out"

    validate_snapshot(uri, SUITE, out)
    validate_snapshot(uri, SUITE, out)

    assert len(list((out / "data_docs" / "validations").rglob("*.html"))) == 1
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_missing_suite_file_names_the_file(tmp_path):
    with pytest.raises(DataValidationError, match=r"nope\.json: file not found"):
        validate_snapshot(_write(_valid_frame(5), tmp_path), tmp_path / "nope.json", tmp_path / "out")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"expectations": []}), "non-empty string 'name'"),
        (
            json.dumps({"name": "s", "expectations": [{"type": "expect_column_to_exsit", "kwargs": {}}]}),
            r"expectations\[0\] \(expect_column_to_exsit\) is invalid",
        ),
        (
            json.dumps(
                {
                    "name": "s",
                    "expectations": [
                        {
                            "type": "expect_column_values_to_be_between",
                            "kwargs": {"column": "a", "min_valu": 1},
                        },
                    ],
                }
            ),
            r"expectations\[0\].*min_valu",
        ),
    ],
)
def test_invalid_suite_file_names_the_file_and_the_problem(tmp_path, content, reason):
    suite = tmp_path / "broken_suite.json"
    suite.write_text(content)
    with pytest.raises(DataValidationError, match=rf"broken_suite\.json: .*{reason}"):
        validate_snapshot(_write(_valid_frame(5), tmp_path), suite, tmp_path / "out")


def test_raise_for_failures_message_lists_each_failure():
    result = {
        "success": False,
        "evaluated": 31,
        "successful": 29,
        "failed": [
            {
                "expectation": "expect_column_values_to_be_between",
                "column": "tenure",
                "kwargs": {"column": "tenure", "min_value": 0, "max_value": 120},
                "observed": {"unexpected_count": 3, "partial_unexpected_list": [-1, 500, 500]},
            },
            {
                "expectation": "expect_table_row_count_to_be_between",
                "column": None,
                "kwargs": {"min_value": 100},
                "observed": {"observed_value": 12},
            },
        ],
    }
    with pytest.raises(DataValidationError) as err:
        raise_for_failures(result, "telco_churn")
    assert str(err.value) == (
        "Data validation failed: 2 of 31 expectations in suite 'telco_churn' failed:\n"
        "  - expect_column_values_to_be_between(tenure, min_value=0, max_value=120): "
        "3 unexpected values, e.g. [-1, 500]\n"
        "  - expect_table_row_count_to_be_between(min_value=100): observed 12\n"
        "Fix the batch in the landing zone (or the suite in include/expectations/telco_churn.json "
        "if the data is right) and re-run."
    )
    raise_for_failures({**result, "success": True}, "telco_churn")


@pytest.mark.parametrize("rows", [587, None], ids=["first_month", "full_table"])
def test_real_suite_passes_on_the_real_data(tmp_path, rows, telco_spec):
    from include.demo.data import load_wa_churn
    from include.tasks.train.ingest import assign_splits

    frame = load_wa_churn()
    frame = frame.iloc[:rows].copy() if rows else frame
    frame["slipway_split"] = assign_splits(frame["customer_id"], telco_spec.split)  # as ingest does
    frame["customer_id"] = frame["customer_id"].map(_hash)  # as ingest does (HMAC there)
    frame["batch_month"] = "2025-01"

    result = validate_snapshot(_write(frame, tmp_path), SUITE, tmp_path / "out")

    assert result["failed"] == [] and result["success"] is True
