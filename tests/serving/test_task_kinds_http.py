"""The service answers every task kind over HTTP: a class and its probabilities, a number and its
decision; feedback labels per task; the OpenAPI document per pipeline; the prediction log holds them."""

from __future__ import annotations

import json
import sqlite3

import pytest

from tests.support.processes import slipway
from tests.support.service import Registry, Service

pytestmark = pytest.mark.service

PIPELINES = ("job_runtime", "salary_benchmark")


class _Service(Service):
    """``slipway serve`` for the two task-kind pipelines."""

    def start(self):
        self.args = ("--pipelines", ",".join(PIPELINES))
        return super().start()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("kinds")
    registry = Registry(base)
    for pipeline in PIPELINES:
        slipway(registry.env, "seed", pipeline)
        slipway(registry.env, "run", pipeline, "--month", "2025-12")
        registry.client().set_registered_model_alias(pipeline, "champion", "1")
    service = _Service(registry, base)
    try:
        yield service.start()
    finally:
        service.stop()


def _key(service, pipeline: str) -> str:
    return service.key("predict,feedback,explain", pipeline)


def _post(service, pipeline: str, route: str, body):
    return service.request("POST", f"/v1/{pipeline}/{route}", body, key=_key(service, pipeline))


JOB = {
    "job_id": "JOB-99999",
    "protocol": "E",
    "compounds": 997,
    "input_fields": 137,
    "iterations": 20,
    "num_pending": 0,
    "hour": 14.0,
    "day": "Tue",
}
WORKER = {
    "worker_id": "W-1",
    "year": 2008,
    "age": 45,
    "maritl": "2. Married",
    "education": "4. College Grad",
    "jobclass": "2. Information",
    "health": "2. >=Very Good",
    "health_ins": "1. Yes",
}


def _rows(service) -> list[dict]:
    path = service.db_url.split("sqlite:///", 1)[1]
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        return [
            dict(r)
            for r in conn.execute(
                "SELECT p.*, f.label FROM slipway_predictions p "
                "LEFT JOIN slipway_feedback f ON f.request_id = p.request_id"
            )
        ]


def test_a_multiclass_answer_is_a_class_with_every_probability_logged_and_labelled(served):
    status, body = _post(served, "job_runtime", "predict", {"inputs": JOB})
    assert status == 200, body
    probs = body["probabilities"]
    assert set(probs) == {"VF", "F", "M", "L"} and sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
    assert body["class"] in probs and "probability" not in body
    status, out = _post(served, "job_runtime", "feedback", {"request_id": body["request_id"], "label": "M"})
    assert status == 200 and out["status"] == "recorded", out
    # a label outside the classes names them
    status, err = _post(served, "job_runtime", "feedback", {"request_id": body["request_id"], "label": 1})
    assert status == 422 and "['VF', 'F', 'M', 'L']" in err["error"]
    row = next(r for r in _rows(served) if r["request_id"] == body["request_id"])
    classes = ["VF", "F", "M", "L"]
    assert json.loads(row["scores"]) == pytest.approx([probs[c] for c in classes], abs=1e-6)
    assert classes[int(row["decision"])] == body["class"]
    assert row["probability"] == pytest.approx(probs[body["class"]], abs=1e-6)
    assert row["label"] == classes.index("M")


def test_a_regression_answer_is_a_number_and_its_cost_optimal_decision(served):
    status, body = _post(
        served, "salary_benchmark", "predict", {"instances": [WORKER, {**WORKER, "age": 25}]}
    )
    assert status == 200, body
    older, younger = body["predictions"]
    assert (
        40 < older["prediction"] < 250 and older["decision"] > older["prediction"]
    )  # under-pricing costs 3x
    assert older["decision"] - older["prediction"] == pytest.approx(
        younger["decision"] - younger["prediction"]
    )
    # the version's 90% prediction interval: its test residuals' 5% and 95% quantiles around the estimate
    band = older["interval"]
    assert band["coverage"] == 0.9 and band["low"] < older["prediction"] < band["high"]
    assert band["high"] - band["low"] == pytest.approx(
        younger["interval"]["high"] - younger["interval"]["low"]
    )
    status, out = _post(
        served, "salary_benchmark", "feedback", {"request_id": older["request_id"], "label": 131.5}
    )
    assert status == 200 and out["status"] == "recorded", out
    status, err = _post(
        served, "salary_benchmark", "feedback", {"request_id": younger["request_id"], "label": "high"}
    )
    assert status == 422 and "must be a number" in err["error"]
    status, err = _post(
        served, "salary_benchmark", "feedback", {"request_id": younger["request_id"], "label": 5000}
    )
    assert status == 422 and "outside the target's range [0, 1000]" in err["error"]
    row = next(r for r in _rows(served) if r["request_id"] == older["request_id"])
    assert row["probability"] == pytest.approx(older["prediction"]) and row["decision"] == pytest.approx(
        older["decision"]
    )
    assert row["label"] == 131.5 and row["scores"] is None


def test_each_pipeline_documents_its_own_answer_and_label(served):
    for pipeline, field, label in (
        ("job_runtime", "class", {"type": "string", "enum": ["VF", "F", "M", "L"]}),
        ("salary_benchmark", "prediction", {"type": "number", "minimum": 0.0, "maximum": 1000.0}),
    ):
        status, doc = served.request("GET", f"/v1/{pipeline}/openapi.json", key=_key(served, pipeline))
        assert status == 200, doc
        assert field in doc["components"]["schemas"]["Prediction"]["properties"]
        feedback = doc["paths"][f"/v1/{pipeline}/feedback"]["post"]["requestBody"]["content"]
        assert feedback["application/json"]["schema"]["properties"]["label"] == label


def test_explain_names_the_class_it_explains_or_the_number(served):
    status, out = _post(served, "job_runtime", "explain", {"inputs": JOB})
    assert status == 200, out
    assert out["explained_class"] in {"VF", "F", "M", "L"} and 0 < out["sklearn_probability"] <= 1
    assert {c["feature"] for c in out["contributions"]} == {
        "protocol",
        "compounds",
        "input_fields",
        "iterations",
        "num_pending",
        "hour",
        "day",
    }
    status, out = _post(served, "salary_benchmark", "explain", {"inputs": WORKER})
    assert status == 200, out
    _, answer = _post(served, "salary_benchmark", "predict", {"inputs": WORKER})
    assert out["output"] == "prediction" and out["sklearn_prediction"] == pytest.approx(
        answer["prediction"], rel=1e-4
    )
    # the contributions add up to the prediction from the base value (SHAP's additivity)
    assert out["output_value"] == pytest.approx(out["sklearn_prediction"], rel=1e-3)
