"""Specs validate into a typed model; a bad spec names the file, the field and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from include.spec import PipelineSpec, SpecError, discover, load_spec, parse_spec

SPEC = Path(__file__).resolve().parents[2] / "include" / "pipelines" / "telco_churn.yaml"


def _raw() -> dict:
    return yaml.safe_load(SPEC.read_text())


def _write(tmp_path: Path, raw: dict, name: str = "telco_churn") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_shipped_spec_is_valid():
    spec = load_spec(SPEC)
    assert isinstance(spec, PipelineSpec)
    assert spec.dag_id("train") == "telco_churn__train"
    assert spec.identifiers == {"customer_id": "hash"}
    assert set(spec.sensitive_attributes) == {"female", "senior_citizen"}
    assert not set(spec.sensitive_attributes) & set(spec.features.all)
    assert spec.required_columns[0] == "customer_id"


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda r: r["gates"]["evaluation"].update(min_roc_auc=3), "gates.evaluation.min_roc_auc"),
        (lambda r: r.pop("target"), "target is required but missing"),
        (lambda r: r["estimator"].update(kind="xgboost_magic"), "estimator.kind must be one of"),
        (lambda r: r.update(featurez=[]), "featurez is not a known field"),
        (lambda r: r["schedule"].update(cron="every tuesday"), "schedule.cron must be a 5-field cron"),
        (lambda r: r["features"].update(numeric=["tenure", "tenure"]), "more than once"),
        (lambda r: r["features"]["numeric"].append("churn"), "also listed as a feature"),
        (lambda r: r["identifiers"].update(customer_id="encrypt"), "identifiers.customer_id"),
        (lambda r: r["split"].update(test_size=0.9), "split.test_size"),
    ],
)
def test_bad_spec_error_names_file_field_and_expectation(tmp_path, mutate, expected):
    raw = _raw()
    mutate(raw)
    with pytest.raises(SpecError) as err:
        load_spec(_write(tmp_path, raw))
    msg = str(err.value)
    assert msg.startswith("spec telco_churn.yaml: ")
    assert expected in msg


def test_invalid_yaml_and_wrong_top_level(tmp_path):
    bad = tmp_path / "x.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="spec x.yaml: not valid YAML"):
        load_spec(bad)
    with pytest.raises(SpecError, match="expected a mapping"):
        parse_spec("- a\n- b\n", "y.yaml")


def test_name_must_match_file(tmp_path):
    with pytest.raises(SpecError, match="name must match the file name 'other'"):
        load_spec(_write(tmp_path, _raw(), name="other"))


def test_discover_separates_valid_from_invalid(tmp_path):
    _write(tmp_path, _raw())
    broken = _raw()
    broken["name"] = "broken"
    broken["estimator"]["kind"] = "nope"
    _write(tmp_path, broken, name="broken")
    specs, errors = discover(tmp_path)
    assert [s.name for s in specs] == ["telco_churn"]
    assert list(errors) == [str(tmp_path / "broken.yaml")]
    assert "estimator.kind" in errors[str(tmp_path / "broken.yaml")]
