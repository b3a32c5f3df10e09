"""Specs validate into a typed model; a bad spec names the file, the field and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from include.spec import PipelineSpec, SpecError, discover, load_spec, parse_spec, post_ingest_schema
from tests.support.processes import ROOT

SPEC = ROOT / "include" / "pipelines" / "telco_churn.yaml"
FIXTURE_SPEC = ROOT / "tests" / "fixtures" / "pipelines" / "credit_default.yaml"


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


def test_model_level_errors_do_not_echo_the_whole_spec(tmp_path):
    raw = _raw()
    raw["features"]["numeric"].append("churn")
    with pytest.raises(SpecError) as err:
        load_spec(_write(tmp_path, raw))
    msg = str(err.value)
    assert msg == "spec telco_churn.yaml: target.column 'churn' is also listed as a feature"


# --- schedule.cron: what Airflow's CronDataIntervalTimetable accepts --------------------------------


@pytest.mark.parametrize("cron", ["0 0 32 * *", "61 * * * *", "* * * *", "0 0 * * 8", "@once", "0 0 30 2 *"])
def test_cron_that_airflow_rejects_is_a_spec_error(tmp_path, cron):
    raw = _raw()
    raw["schedule"]["cron"] = cron
    with pytest.raises(SpecError) as err:
        load_spec(_write(tmp_path, raw))
    msg = str(err.value)
    assert msg.startswith("spec telco_churn.yaml: schedule.cron ")
    assert repr(cron) in msg


def test_cron_errors_say_why_and_how():
    base = _raw()
    base["schedule"]["cron"] = "0 0 32 * *"
    with pytest.raises(
        SpecError, match=r"not a cron expression Airflow accepts .*out of range.*'0 0 1 \* \*'"
    ):
        parse_spec(yaml.safe_dump(base))
    base["schedule"]["cron"] = "0 0 30 2 *"
    with pytest.raises(SpecError, match="never fires"):
        parse_spec(yaml.safe_dump(base))


@pytest.mark.parametrize(
    "cron", ["@daily", "@monthly", "@quarterly", "@midnight", "*/15 6-18 * * mon-fri", "0 0 29 2 *"]
)
def test_cron_presets_and_valid_expressions_load(tmp_path, cron):
    raw = _raw()
    raw["schedule"]["cron"] = cron
    assert load_spec(_write(tmp_path, raw)).schedule.cron == cron


# --- vacuous gates ----------------------------------------------------------------------------------

VACUOUS = {
    "fairness": lambda r: r.update(sensitive_attributes=[]),
    "explainability": lambda r: r.update(sensitive_attributes=[]),
    "robustness": lambda r: r["gates"]["robustness"].update(perturbations={}),
    "business": lambda r: (
        r["business"].update(value_of_true_positive=0, cost_of_action=0)
        or r["gates"]["business"].pop("min_value_per_1000")
    ),
}


def _quiet_others(raw: dict, gate: str) -> None:
    """Declare every other gate that the mutation made vacuous, so only ``gate`` is reported."""
    if gate in ("fairness", "explainability"):
        other = "explainability" if gate == "fairness" else "fairness"
        raw["gates"][other]["not_applicable_because"] = "no sensitive attributes in this data"


@pytest.mark.parametrize("gate", sorted(VACUOUS))
def test_enabled_gate_with_nothing_to_check_is_a_spec_error(tmp_path, gate):
    raw = _raw()
    VACUOUS[gate](raw)
    _quiet_others(raw, gate)
    with pytest.raises(SpecError) as err:
        load_spec(_write(tmp_path, raw))
    msg = str(err.value)
    assert msg.startswith(f"spec telco_churn.yaml: gates.{gate} is enabled but has nothing to check")
    assert f"gates.{gate}.enabled: false" in msg
    assert f"gates.{gate}.not_applicable_because" in msg
    assert msg.count("\n") == 0, "only the vacuous gate is reported"


@pytest.mark.parametrize("gate", sorted(VACUOUS))
def test_vacuous_gate_is_fine_when_disabled_or_declared_not_applicable(tmp_path, gate):
    raw = _raw()
    VACUOUS[gate](raw)
    _quiet_others(raw, gate)
    raw["gates"][gate]["not_applicable_because"] = "  nothing to check for this data  "
    spec = load_spec(_write(tmp_path, raw))
    assert getattr(spec.gates, gate).not_applicable_because == "nothing to check for this data"
    raw["gates"][gate].pop("not_applicable_because")
    raw["gates"][gate]["enabled"] = False
    assert not getattr(load_spec(_write(tmp_path, raw)).gates, gate).enabled


@pytest.mark.parametrize("gate", sorted(VACUOUS))
def test_not_applicable_because_on_a_gate_with_something_to_check(tmp_path, gate):
    raw = _raw()
    raw["gates"][gate]["not_applicable_because"] = "we do not care"
    with pytest.raises(SpecError) as err:
        load_spec(_write(tmp_path, raw))
    msg = str(err.value)
    assert f"gates.{gate}.not_applicable_because is set, but the gate has something to check" in msg
    assert msg.endswith("remove it")


def test_not_applicable_because_must_say_why(tmp_path):
    raw = _raw()
    raw["gates"]["robustness"].update(perturbations={}, not_applicable_because=" ")
    with pytest.raises(SpecError, match="gates.robustness.not_applicable_because must say why"):
        load_spec(_write(tmp_path, raw))


def test_explainability_needs_only_sensitive_attributes_for_the_proxy_probe(tmp_path):
    spec = load_spec(SPEC)
    assert spec.gates.explainability.forbidden_features == []
    assert spec.sensitive_attributes and spec.gates.explainability.not_applicable_because is None


def test_forbidden_feature_that_is_not_a_model_input(tmp_path):
    raw = _raw()
    raw["gates"]["explainability"]["forbidden_features"] = ["female", "tenure"]
    with pytest.raises(SpecError) as err:
        load_spec(_write(tmp_path, raw))
    msg = str(err.value)
    assert "gates.explainability.forbidden_features lists ['female'], which are not model inputs" in msg
    assert "remove them from forbidden_features" in msg and "proxy probe" in msg
    raw["gates"]["explainability"]["forbidden_features"] = ["tenure"]  # a real input: fine
    assert load_spec(_write(tmp_path, raw)).gates.explainability.forbidden_features == ["tenure"]


def test_sensitive_attribute_that_is_also_a_feature(tmp_path):
    raw = _raw()
    raw["features"]["binary"].append("senior_citizen")
    with pytest.raises(SpecError) as err:
        load_spec(_write(tmp_path, raw))
    msg = str(err.value)
    assert "sensitive_attributes ['senior_citizen'] are also listed as features" in msg
    assert "remove them from features" in msg and "or from sensitive_attributes" in msg


def test_specs_built_in_code_skip_the_spec_file_rules():
    # Unit tests build minimal specs with model_validate: the gate rules apply to spec files only.
    spec = PipelineSpec.model_validate(
        {
            "name": "tiny",
            "description": "x",
            "target": {"column": "y", "positive_label": 1},
            "features": {"numeric": ["a"]},
            "estimator": {"kind": "logistic_regression"},
        }
    )
    assert spec.gates.fairness.enabled and not spec.sensitive_attributes


def test_second_pipeline_fixture_declares_its_not_applicable_gates():
    spec = load_spec(FIXTURE_SPEC)
    g = spec.gates
    assert g.fairness.not_applicable_because and g.explainability.not_applicable_because
    assert g.business.not_applicable_because
    assert list(g.robustness.perturbations) == ["income"]


# --- positive_label: Yes ----------------------------------------------------------------------------


def _with_label(label_yaml: str) -> str:
    return SPEC.read_text().replace('positive_label: "Yes"', f"positive_label: {label_yaml}")


@pytest.mark.parametrize(
    ("word", "truth"), [("Yes", "true"), ("NO", "false"), ("on", "true"), ("Off", "false")]
)
def test_unquoted_yaml_boolean_word_as_positive_label(word, truth):
    with pytest.raises(SpecError) as err:
        parse_spec(_with_label(word), "telco_churn.yaml")
    assert str(err.value) == (
        f"spec telco_churn.yaml: target.positive_label is the unquoted YAML word {word!r}, which YAML "
        f'reads as the boolean {truth}; quote it: positive_label: "{word}"'
    )


def test_yaml_11_y_and_n_are_caught_too():
    with pytest.raises(SpecError, match="unquoted YAML word 'y', which YAML 1.1 reads as the boolean true"):
        parse_spec(_with_label("y"), "telco_churn.yaml")


@pytest.mark.parametrize(
    ("label_yaml", "value"), [('"Yes"', "Yes"), ("'No'", "No"), ("true", True), ("1", 1)]
)
def test_quoted_labels_and_real_booleans_load(label_yaml, value):
    assert parse_spec(_with_label(label_yaml), "telco_churn.yaml").target.positive_label == value


# --- source.recurring_entities and the post-ingest schema --------------------------------------------


def test_recurring_entities_option(tmp_path):
    assert load_spec(SPEC).source.recurring_entities is False
    raw = _raw()
    raw["source"]["recurring_entities"] = True
    assert load_spec(_write(tmp_path, raw)).source.recurring_entities is True


def test_post_ingest_schema_of_the_shipped_spec():
    schema = post_ingest_schema(load_spec(SPEC))
    assert list(schema)[0] == "customer_id" and list(schema)[-1] == "batch_month"
    assert schema["customer_id"] == "str"  # hashed
    assert schema["churn"] == "str"
    assert schema["tenure"] == "float64" and schema["partner"] == "int64"
    assert schema["contract"] == "str"
    assert schema["female"] == "int64|str"
    fixture = post_ingest_schema(load_spec(FIXTURE_SPEC))
    assert "account_id" not in fixture  # dropped
