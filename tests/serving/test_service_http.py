"""The inference service as a process over HTTP: contracts, refusals, routing, reloads, the log.

A 500 anywhere here is a failure: every refusal is a 4xx that names the field and the fix.
"""

from __future__ import annotations

import json
import threading

import pytest

from tests.support.service import PIPELINE, Service, logged_rows, metric


def test_one_row_is_scored_logged_and_answered(service, row):
    status, body = service.predict(row)
    assert status == 200, body
    assert set(body) == {
        "pipeline",
        "request_id",
        "probability",
        "decision",
        "threshold",
        "model_version",
        "variant",
    }
    assert 0.0 <= body["probability"] <= 1.0 and body["decision"] == int(
        body["probability"] >= body["threshold"]
    )
    assert body["model_version"] == 1 and body["variant"] == "champion"
    [logged] = logged_rows(service, "request_id = ?", (body["request_id"],))
    assert (
        logged["served"] == 1
        and logged["model_version"] == 1
        and logged["probability"] == body["probability"]
    )
    # The entity key is stored hashed (the spec marks customer_id as PII), never raw.
    assert logged["entity_key"] and row["customer_id"] not in json.dumps(logged)
    assert json.loads(logged["inputs"])["tenure"] == row["tenure"]


def test_a_batch_is_scored_row_by_row_with_one_request_id_each(service, row):
    rows = [dict(row, customer_id=f"C-{i}", tenure=float(i)) for i in range(100)]
    status, body = service.predict(rows=rows)
    assert status == 200, body
    ids = [p["request_id"] for p in body["predictions"]]
    assert len(set(ids)) == 100
    assert len(logged_rows(service, f"request_id IN ({','.join('?' * 100)})", tuple(ids))) == 100
    # Tenure moves the probability: the rows were scored as sent, not one row copied.
    assert len({round(p["probability"], 6) for p in body["predictions"]}) > 10


BAD = [
    (
        "missing field",
        lambda r: {k: v for k, v in r.items() if k != "tenure"},
        422,
        "missing fields ['tenure']",
    ),
    ("unknown field", lambda r: {**r, "shoe_size": 42}, 422, "unknown fields ['shoe_size']"),
    ("text for a number", lambda r: {**r, "tenure": "12"}, 422, "inputs.tenure: must be a number"),
    (
        "bool for a number",
        lambda r: {**r, "monthly_charges": True},
        422,
        "inputs.monthly_charges: must be a number",
    ),
    ("binary out of range", lambda r: {**r, "partner": 2}, 422, "inputs.partner: must be 0 or 1"),
    ("number for a category", lambda r: {**r, "contract": 1}, 422, "inputs.contract: must be a string"),
    ("huge number", lambda r: {**r, "tenure": 1e300}, 422, "inputs.tenure: must be a finite number"),
    ("null category", lambda r: {**r, "contract": None}, 422, "inputs.contract: must be a string"),
]


@pytest.mark.parametrize("name,mutate,status,needle", BAD, ids=[b[0] for b in BAD])
def test_bad_rows_get_a_4xx_naming_the_field(service, row, name, mutate, status, needle):
    got, body = service.predict(mutate(dict(row)))
    assert got == status, body
    assert any(needle in p for p in body["problems"]), body


@pytest.mark.parametrize(
    "raw,status,needle",
    [
        (b'{"inputs": {"tenure": NaN}}', 400, "NaN and Infinity are not JSON"),
        (b'{"inputs": {"tenure": Infinity}}', 400, "NaN and Infinity are not JSON"),
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 422, "must be a JSON object"),
        (b'{"inputs": {}, "instances": []}', 422, "exactly one of 'inputs'"),
        (b'{"instances": []}', 422, "non-empty list"),
        (b'{"inputs": [1]}', 422, "must be an object"),
    ],
)
def test_malformed_bodies_get_a_4xx_that_says_what_to_send(service, raw, status, needle):
    got, body = service.request("POST", f"/v1/{PIPELINE}/predict", raw=raw)
    assert got == status, body
    assert needle in body["error"] + " ".join(body.get("problems", [])), body


def test_oversized_bodies_and_batches_are_refused_with_413(service, row):
    status, body = service.predict(rows=[row] * 1001)
    assert status == 413 and "at most 1000" in body["error"], body
    status, body = service.request(
        "POST", f"/v1/{PIPELINE}/predict", raw=b'{"inputs": "' + b"x" * 1_100_000 + b'"}'
    )
    assert status == 413 and "exceeds" in body["error"], body


def test_an_unknown_category_is_served_and_counted(service, row):
    before = metric(service, 'slipway_unknown_category_total{field="contract"')
    status, body = service.predict({**row, "contract": "Three year"})
    assert status == 200, body
    assert metric(service, 'slipway_unknown_category_total{field="contract"') == before + 1


def test_keys_and_scopes(service, row):
    path = f"/v1/{PIPELINE}/predict"
    assert service.request("POST", path, {"inputs": row}, key=None)[0] == 401
    assert service.request("POST", path, {"inputs": row}, key="slw_000000000000_" + "x" * 43)[0] == 401
    assert service.request("POST", path, {"inputs": row}, key=service.key("feedback"))[0] == 403
    assert (
        service.request("POST", path, {"inputs": row}, key=service.key("predict", "another_pipeline"))[0]
        == 403
    )
    assert service.request("POST", path, {"inputs": row}, key=service.key("predict"))[0] == 200
    # A valid key next to another one is not accepted: which was meant is a guess.
    other = {"X-API-Key": "slw_000000000000_" + "y" * 43}
    assert service.request("POST", path, {"inputs": row}, key=service.key("predict"), headers=other)[0] == 401
    assert service.get("/metrics", key=None)[0] == 401
    assert service.get("/metrics", key=service.key("predict", None))[0] == 403
    assert service.get("/health", key=None)[0] == 200
    # The key never reaches the service's log.
    assert service.key("predict") not in service.log()


def test_openapi_names_the_real_fields_and_types(service):
    status, doc = service.get(f"/v1/{PIPELINE}/openapi.json")
    assert status == 200
    props = doc["components"]["schemas"]["Row"]["properties"]
    assert props["tenure"]["type"] == ["number", "null"]
    assert props["partner"]["enum"] == [0, 1, False, True]
    assert props["contract"]["type"] == "string" and "Month-to-month" in props["contract"]["description"]
    assert f"/v1/{PIPELINE}/predict" in doc["paths"] and f"/v1/{PIPELINE}/feedback" in doc["paths"]
    assert service.get(f"/v1/{PIPELINE}/openapi.json", key=None)[0] == 401


def test_what_the_openapi_document_allows_the_service_takes_and_what_it_forbids_is_a_422(service, row):
    """The document and the checks agree (a fuzzer on the document found where they did not)."""
    import jsonschema

    doc = service.get(f"/v1/{PIPELINE}/openapi.json")[1]
    schema = {**doc["components"]["schemas"]["Row"], "$defs": doc["components"]["schemas"]}
    validator = jsonschema.Draft202012Validator(schema)
    entity = next(n for n, p in schema["properties"].items() if "entity key" in p.get("description", ""))
    allowed = [
        {**row, "partner": True},
        {**row, "partner": 0},
        {**row, entity: None},
        {**row, "tenure": None},
    ]
    forbidden = [{**row, "partner": "1"}, {**row, "partner": 2}, {**row, entity: ""}, {**row, entity: {}}]
    forbidden += [{**row, "contract": None}, {**row, "tenure": "12"}]
    for case in allowed:
        assert validator.is_valid(case), case
        assert service.predict(case)[0] == 200, case
    for case in forbidden:
        assert not validator.is_valid(case), case
        assert service.predict(case)[0] == 422, case


def test_openapi_needs_a_key_for_its_pipeline_and_a_404_names_no_other_pipeline(service):
    path = f"/v1/{PIPELINE}/openapi.json"
    assert service.get(path, key=service.key("feedback"))[0] == 200  # any route's scope for the pipeline
    assert service.get(path, key=service.key("metrics", None))[0] == 403  # the metrics key reads no fields
    assert service.get(path, key=service.key("predict", "credit_default"))[0] == 403  # another pipeline's
    # An unknown pipeline: 401 without a key (nothing learnt), 404 that lists no served pipeline with one.
    assert service.get("/v1/no_such_pipeline/openapi.json", key=None)[0] == 401
    status, body = service.get("/v1/no_such_pipeline/openapi.json", key=service.key("predict", None))
    assert status == 404 and PIPELINE not in json.dumps(body)


def test_feedback_is_idempotent_conflicts_are_409_unknown_ids_404(service, row):
    _, body = service.predict(row)
    rid, path = body["request_id"], f"/v1/{PIPELINE}/feedback"
    assert service.request("POST", path, {"request_id": rid, "label": 1}) == (
        200,
        {"request_id": rid, "status": "recorded"},
    )
    assert service.request("POST", path, {"request_id": rid, "label": 1})[1]["status"] == "unchanged"
    status, body = service.request("POST", path, {"request_id": rid, "label": 0})
    assert status == 409, body
    assert service.request("POST", path, {"request_id": "f" * 32, "label": 1})[0] == 404
    assert service.request("POST", path, {"request_id": rid, "label": 2})[0] == 422
    assert (
        service.request("POST", path, {"request_id": rid, "label": 1}, key=service.key("predict"))[0] == 403
    )


class _Load:
    """Requests in a background thread until stopped; every status and body kept."""

    def __init__(self, service, row):
        self.service, self.row = service, row
        self.results: list[tuple[int, dict]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        i = 0
        while not self._stop.is_set():
            i += 1
            self.results.append(self.service.predict({**self.row, "customer_id": f"L-{i}"}))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=30)


def test_alias_switch_is_picked_up_without_a_failed_request(service, registry, row):
    v2 = registry.register_copy(1)
    try:
        with _Load(service, row) as load:
            service.wait(lambda: len(load.results) > 20, 30, "traffic before the switch")
            registry.set_alias("champion", v2)
            service.wait(
                lambda: load.results and load.results[-1][1].get("model_version") == v2, 30, "the switch"
            )
            n = len(load.results)
            service.wait(lambda: len(load.results) > n + 20, 30, "traffic after the switch")
        assert {s for s, _ in load.results} == {200}
        versions = [b["model_version"] for _, b in load.results]
        assert versions[0] == 1 and versions[-1] == v2
        # Once switched, never back: the new version serves from then on.
        assert versions.index(v2) + versions[versions.index(v2) :].count(v2) == len(versions)
    finally:
        registry.set_alias("champion", 1)
        service.wait(lambda: service.predict(row)[1].get("model_version") == 1, 30, "champion back on 1")


def test_a_corrupt_version_is_refused_and_the_last_good_one_keeps_serving(service, registry, row):
    before = metric(service, "slipway_model_reload_failures_total")
    bad = registry.register_copy(1, **{"slipway.onnx_sha256": "0" * 64})
    try:
        registry.set_alias("champion", bad)
        ready = service.wait(
            lambda: (
                (r := service.get("/ready", key=service.key("metrics", None)))
                and r[1]["status"] == "degraded"
                and r
            ),
            30,
            "degraded",
        )
        assert ready[0] == 200
        assert any(
            f"champion version {bad} not loaded" in p and "sha256" in p for p in ready[1]["problems"]
        ), ready
        status, body = service.predict(row)
        assert status == 200 and body["model_version"] == 1
        assert metric(service, "slipway_model_reload_failures_total") > before
    finally:
        registry.set_alias("champion", 1)
        service.wait(lambda: service.get("/ready", key=None)[1]["status"] == "ready", 30, "ready again")


def test_canary_split_is_sticky_by_customer_and_near_its_weight(service, registry, row):
    v2 = registry.register_copy(1)
    registry.set_alias("challenger", v2)
    registry.set_traffic("canary", 0.3, v2)
    try:
        service.wait(
            lambda: service.ready()["pipelines"][PIPELINE]["traffic"]["mode"] == "canary",
            30,
            "canary traffic",
        )
        first, second = {}, {}
        for i in range(300):
            for seen in (first, second):
                status, body = service.predict({**row, "customer_id": f"S-{i}"})
                assert status == 200, body
                seen[i] = body["variant"]
        assert first == second  # the same customer gets the same variant for the whole canary
        share = sum(v == "challenger" for v in first.values()) / 300
        assert abs(share - 0.3) < 0.1, share  # binomial sd 0.026 at n=300: 0.1 is ~4 sd
    finally:
        registry.set_traffic("none")
        registry.drop_alias("challenger")
        service.wait(
            lambda: service.ready()["pipelines"][PIPELINE]["challenger"] is None,
            30,
            "challenger gone",
        )


def test_shadow_answers_are_logged_and_never_returned(service, registry, row):
    v2 = registry.register_copy(1)
    registry.set_alias("challenger", v2)
    registry.set_traffic("shadow", 0.0, v2)
    try:
        service.wait(
            lambda: service.ready()["pipelines"][PIPELINE]["traffic"]["mode"] == "shadow",
            30,
            "shadow traffic",
        )
        ids = []
        for i in range(30):
            status, body = service.predict({**row, "customer_id": f"H-{i}"})
            assert status == 200 and body["variant"] == "champion" and body["model_version"] == 1, body
            ids.append(body["request_id"])
        marks = ",".join("?" * len(ids))
        shadow = service.wait(
            lambda: (
                len(r := logged_rows(service, f"served = 0 AND request_id IN ({marks})", tuple(ids))) == 30
                and r
            ),
            30,
            "30 shadow rows",
        )
        assert {r["variant"] for r in shadow} == {"challenger"} and {r["model_version"] for r in shadow} == {
            v2
        }
        served = logged_rows(service, f"served = 1 AND request_id IN ({marks})", tuple(ids))
        assert len(served) == 30 and {r["variant"] for r in served} == {"champion"}
    finally:
        registry.set_traffic("none")
        registry.drop_alias("challenger")
        service.wait(
            lambda: service.ready()["pipelines"][PIPELINE]["challenger"] is None,
            30,
            "challenger gone",
        )


def test_no_500_was_answered(service):
    assert metric(service, 'slipway_requests_total{pipeline="telco_churn",route="predict",status="500"}') == 0
    assert "Traceback" not in service.log(), service.log()


def test_explain_returns_contributions_per_original_column(service, row):
    path = f"/v1/{PIPELINE}/explain"
    status, body = service.request("POST", path, {"inputs": row})
    assert status == 200, body
    features = {c["feature"] for c in body["contributions"]}
    from include.spec import load_pipeline

    assert features == set(load_pipeline(PIPELINE).features.all)
    total = sum(c["shap"] for c in body["contributions"])
    assert abs(body["base_value"] + total - body["output_value"]) < 1e-4
    _, scored = service.predict(row)
    assert abs(body["sklearn_probability"] - scored["probability"]) < 1e-4  # the same model as the graph
    ranked = [abs(c["shap"]) for c in body["contributions"]]
    assert ranked == sorted(ranked, reverse=True)
    assert service.request("POST", path, {"inputs": row}, key=service.key("predict"))[0] == 403
    assert service.request("POST", path, {"instances": [row, row]})[0] == 422


def test_ready_tells_anonymous_callers_the_status_only(service):
    status, body = service.get("/ready", key=None)
    assert (status, body) == (200, {"status": "ready"})  # what a load balancer needs, nothing more
    assert service.get("/ready", key=service.key("predict"))[1] == {"status": "ready"}
    detailed = service.ready()  # the metrics key: versions, traffic, problems
    assert detailed["pipelines"][PIPELINE]["champion"] == 1 and detailed["problems"] == []


def test_a_wrong_method_gets_405_naming_the_allowed_ones(service):
    status, headers, _ = service.exchange("GET", f"/v1/{PIPELINE}/predict")
    assert (status, headers.get("allow")) == (405, "POST")
    status, headers, _ = service.exchange("POST", "/health")
    assert (status, headers.get("allow")) == (405, "GET")


def test_a_flood_of_random_keys_gets_429_and_valid_keys_still_work(service, row):
    import secrets as pysecrets
    import time

    valid = service.key("predict")
    assert service.predict(row, key=valid)[0] == 200  # known, and cached
    statuses = [
        service.predict(row, key=f"slw_{pysecrets.token_hex(6)}_{pysecrets.token_urlsafe(32)}")[0]
        for _ in range(40)
    ]
    assert statuses.count(429) >= 15 and set(statuses) <= {401, 429}, statuses  # a burst of 20, then 5/s
    assert service.predict(row, key=valid)[0] == 200  # the known key never waited for the flood
    time.sleep(4.5)  # this address's budget refills for the tests after this one


def test_every_row_and_label_records_the_key_it_came_with(service, row):
    predict_key, feedback_key = service.key("predict"), service.key("feedback")
    status, body = service.predict(row, key=predict_key)
    assert status == 200, body
    status, _ = service.request(
        "POST", f"/v1/{PIPELINE}/feedback", {"request_id": body["request_id"], "label": 1}, key=feedback_key
    )
    assert status == 200
    [logged] = logged_rows(service, "request_id = ?", (body["request_id"],))
    assert logged["key_id"] == predict_key.split("_")[1]
    import sqlite3

    path = service.db_url.split("sqlite:///", 1)[1]
    with sqlite3.connect(path) as conn:
        (label_key,) = conn.execute(
            "SELECT key_id FROM slipway_feedback WHERE request_id = ?", (body["request_id"],)
        ).fetchone()
    assert label_key == feedback_key.split("_")[1]


def test_a_key_may_send_only_so_many_labels_an_hour(registry, row, tmp_path):
    import shutil

    from include.settings import get_settings

    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    spec = (get_settings().pipelines_dir / f"{PIPELINE}.yaml").read_text()
    (pipelines / f"{PIPELINE}.yaml").write_text(spec + "\nfeedback:\n  max_labels_per_key_per_hour: 3\n")
    svc = Service(registry, tmp_path)
    svc.env["SLIPWAY_PIPELINES_DIR"] = str(pipelines)
    svc.start()
    try:
        ids = [svc.predict(row)[1]["request_id"] for _ in range(5)]
        path = f"/v1/{PIPELINE}/feedback"
        first = svc.request("POST", path, [{"request_id": i, "label": 1} for i in ids[:3]])
        assert first[0] == 200, first
        status, body = svc.request("POST", path, {"request_id": ids[3], "label": 0})
        assert status == 429 and "max_labels_per_key_per_hour" in body["error"], body
        assert len(logged_rows(svc, "1=1")) == 5
    finally:
        svc.stop()
        shutil.rmtree(pipelines, ignore_errors=True)
