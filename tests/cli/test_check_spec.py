"""`slipway check-spec`: the suite is cross-checked against the columns and types ingest really writes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from include import storage
from include.cli.commands import main
from include.frames import read_parquet
from include.spec import PipelineSpec, load_spec, post_ingest_schema
from include.tasks.train.ingest import ingest_month
from include.tasks.train.suite_check import check_suite_columns, type_accepts
from tests.support.processes import ROOT

TELCO = ROOT / "include" / "pipelines" / "telco_churn.yaml"
TELCO_SUITE = ROOT / "include" / "expectations" / "telco_churn.json"
CREDIT = ROOT / "tests" / "fixtures" / "pipelines" / "credit_default.yaml"
CREDIT_SUITE = ROOT / "tests" / "fixtures" / "expectations" / "credit_default.json"


def _observed_types(df) -> dict[str, str]:
    """Type names of a lake frame as a suite sees them: the dtype, or ``str`` for an object column of text."""
    out = {}
    for col in df.columns:
        s = df[col]
        if s.dtype == object:
            values = s.dropna()
            assert values.map(lambda v: isinstance(v, str)).all(), col
            out[col] = "str"
        else:
            out[col] = s.dtype.name
    return out


def _ingest(tmp_path, spec: PipelineSpec, frame) -> dict[str, str]:
    landing, lake = storage.path_to_uri(tmp_path / "landing"), storage.path_to_uri(tmp_path / "lake")
    storage.write_bytes(storage.join(landing, spec.name, "2025-01.csv"), frame.to_csv(index=False).encode())
    out = ingest_month(spec, "2025-01", landing, lake, b"k")
    return _observed_types(read_parquet(out["uri"]))


def test_post_ingest_schema_is_what_ingest_writes_for_telco(tmp_path, telco_spec, wa_churn):
    observed = _ingest(tmp_path, telco_spec, wa_churn.iloc[:60])
    schema = post_ingest_schema(telco_spec)
    assert list(observed) == list(schema)  # same columns, same order
    for col, kind in schema.items():
        assert observed[col] in kind.split("|"), col


def test_post_ingest_schema_with_dropped_ids_and_text_sensitive_attributes(tmp_path, wa_churn):
    spec = PipelineSpec.model_validate(
        {
            "name": "tiny",
            "description": "x",
            "target": {"column": "churn", "positive_label": "Yes"},
            "features": {"numeric": ["tenure"], "binary": ["partner"], "categorical": ["contract"]},
            "identifiers": {"customer_id": "drop"},
            "sensitive_attributes": ["sex", "senior_citizen"],
            "estimator": {"kind": "logistic_regression"},
        }
    )
    frame = wa_churn.iloc[:40].copy()
    frame["sex"] = frame["female"].map({1: "F", 0: "M"})
    frame["senior_citizen"] = frame["senior_citizen"].astype("float").astype(object)
    frame.iloc[0, frame.columns.get_loc("senior_citizen")] = None  # a blank: no longer all whole numbers
    observed = _ingest(tmp_path, spec, frame)
    schema = post_ingest_schema(spec)
    assert "customer_id" not in observed and "customer_id" not in schema
    assert list(observed) == list(schema)
    assert observed["sex"] == "str" and observed["senior_citizen"] == "str"
    assert schema["sex"] == schema["senior_citizen"] == "int64|str"
    assert observed["partner"] == "int64" and observed["tenure"] == "float64"


def test_shipped_and_fixture_suites_agree_with_their_specs():
    assert check_suite_columns(load_spec(TELCO), TELCO_SUITE) == []
    assert check_suite_columns(load_spec(CREDIT), CREDIT_SUITE) == []


def _crafted_suite(tmp_path: Path) -> Path:
    suite = json.loads(CREDIT_SUITE.read_text())
    suite["expectations"] += [
        {"type": "expect_column_values_to_be_unique", "kwargs": {"column": "account_id"}},
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "Balance"}},
        {"type": "expect_column_values_to_be_of_type", "kwargs": {"column": "income", "type_": "int64"}},
        {"type": "expect_column_values_to_be_of_type", "kwargs": {"column": "student", "type_": "str"}},
        {"type": "expect_column_values_to_be_of_type", "kwargs": {"column": "balance", "type_": "float"}},
        {
            "type": "expect_column_values_to_be_in_type_list",
            "kwargs": {"column": "default", "type_list": ["int", "float"]},
        },
        {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "student", "value_set": [0, 1]}},
    ]
    suite["expectations"][1]["kwargs"]["column_set"] = [
        "account_id",
        "default",
        "balance",
        "income",
        "student",
    ]
    path = tmp_path / "credit_default.json"
    path.write_text(json.dumps(suite))
    return path


def test_crafted_suite_mismatches_are_each_named(tmp_path):
    problems = check_suite_columns(load_spec(CREDIT), _crafted_suite(tmp_path))
    text = "\n".join(problems)
    assert all(p.startswith("suite credit_default.json: expectations[") for p in problems)
    # The dropped identifier, named as such (twice: in the column set and in its own expectation).
    assert text.count("'account_id', an identifier ingest drops (identifiers.account_id: drop") == 2
    assert "set identifiers.account_id: hash" in text
    assert "names column 'Balance', which ingest never writes" in text
    assert "has exact_match true but omits ['batch_month']" in text
    assert "expects 'income' of type 'int64', but ingest writes it as float64" in text
    assert "expects 'default' to be one of ['int', 'float'], but ingest writes it as str" in text
    assert "expects numbers [0, 1] in 'student', but ingest writes it as text (str)" in text
    assert len(problems) == 7  # the right types ('str', 'float') are not reported


def test_a_raw_identifier_hashed_by_ingest_is_fine_but_a_wrong_type_is_not(tmp_path, telco_spec):
    suite = json.loads(TELCO_SUITE.read_text())
    suite["expectations"].append(
        {"type": "expect_column_values_to_be_of_type", "kwargs": {"column": "customer_id", "type_": "int64"}}
    )
    path = tmp_path / "telco_churn.json"
    path.write_text(json.dumps(suite))
    [problem] = check_suite_columns(telco_spec, path)
    assert "expects 'customer_id' of type 'int64', but ingest writes it as str" in problem


def test_missing_or_broken_suite(tmp_path, telco_spec):
    [missing] = check_suite_columns(telco_spec, tmp_path / "nope.json")
    assert "not found at" in missing and "expectation_suite" in missing
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    [broken] = check_suite_columns(telco_spec, bad)
    assert "not readable as JSON" in broken


@pytest.mark.parametrize(
    ("expected", "actual", "ok"),
    [
        ("float64", "float64", True),
        ("float", "float64", True),
        ("int", "int64", True),
        ("int64", "float64", False),
        ("str", "str", True),
        ("object", "str", True),
        ("string", "str", False),  # GX: not a numpy or native type name
        ("int64", "int64|str", True),
        ("float64", "int64|str", False),
    ],
)
def test_type_names_follow_great_expectations(expected, actual, ok):
    # Checked against GX 1.24's pandas validation of a real ingested snapshot.
    assert type_accepts(expected, actual) is ok


def test_cli_check_spec_ok(capsys):
    main(["check-spec", str(TELCO), str(CREDIT)])
    out = capsys.readouterr().out
    assert f"{TELCO}: ok (telco_churn" in out and f"{CREDIT}: ok (credit_default" in out
    assert "telco_churn.json agrees with the columns ingest writes" in out


def test_cli_check_spec_prints_each_mismatch_and_exits_1(tmp_path, capsys):
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "expectations").mkdir()
    spec_file = tmp_path / "pipelines" / "credit_default.yaml"
    shutil.copy(CREDIT, spec_file)
    shutil.copy(_crafted_suite(tmp_path), tmp_path / "expectations" / "credit_default.json")
    with pytest.raises(SystemExit) as exit_:
        main(["check-spec", str(spec_file)])
    assert exit_.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 7
    assert any("an identifier ingest drops" in line for line in err)


def test_cli_check_spec_reports_spec_errors(tmp_path, capsys):
    bad = tmp_path / "telco_churn.yaml"
    bad.write_text(TELCO.read_text().replace('cron: "0 0 1 * *"', 'cron: "0 0 32 * *"'))
    with pytest.raises(SystemExit):
        main(["check-spec", str(bad)])
    assert (
        "spec telco_churn.yaml: schedule.cron is not a cron expression Airflow accepts"
        in capsys.readouterr().err
    )
