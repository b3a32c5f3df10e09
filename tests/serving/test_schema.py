"""The request schema a pipeline's spec gives the service: which fields a row holds, and which one is
the entity key."""

from __future__ import annotations

from include.serving.schema import RequestSchema
from include.spec import load_spec
from tests.support.processes import ROOT

CREDIT = ROOT / "tests" / "fixtures" / "pipelines" / "credit_default.yaml"


def test_a_dropped_identifier_is_accepted_but_never_the_entity_key():
    schema = RequestSchema.from_spec(load_spec(CREDIT))  # identifiers: {account_id: drop}
    row = {"account_id": "ACC-0001", "balance": 812.5, "income": 40210.0, "student": "No"}
    values, keys, problems = schema.columns([row])
    assert problems == [] and keys == [None]  # nothing of the raw id reaches the prediction log
    assert schema.entity is None and "ACC-0001" not in repr(values)
    assert "account_id" in schema.openapi(None)["components"]["schemas"]["Row"]["properties"]


def test_a_hashed_identifier_is_the_entity_key(telco_spec):
    schema = RequestSchema.from_spec(telco_spec)  # identifiers: {customer_id: hash}
    assert schema.entity == "customer_id" and schema.dropped == ()
