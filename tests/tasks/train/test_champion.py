"""Champion lookup fails closed: only "does not exist" means no champion; its skops is verified."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from include import storage
from include.frames import feature_frame, read_parquet
from include.model_files import ModelIntegrityError, read_model_bytes
from include.tasks.train.champion import SKLEARN_SHA256_TAG, RegistryUnavailable, load_champion
from include.tasks.train.fit import TrainingError
from tests.support.processes import free_port

NAME = "telco_churn"


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory):
    """An initialised SQLite MLflow database, copied per test (its migrations take seconds)."""
    import mlflow

    db = tmp_path_factory.mktemp("mlflow") / "template.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def registry(tmp_path, empty_store):
    """A throwaway SQLite MLflow store with its artifacts under tmp_path (never ./mlruns)."""
    import shutil

    import mlflow

    shutil.copyfile(empty_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("unit-champion", artifact_location=storage.path_to_uri(tmp_path / "art"))
    return uri, client, exp


def _register(tmp_path, registry, skops: bytes, tags: dict, alias: str) -> tuple[str, str]:
    """One model version whose run holds ``sklearn/model.skops``; returns (version, artifact path)."""
    _, client, exp = registry
    run = client.create_run(exp)
    src = tmp_path / f"upload-{run.info.run_id}" / "model.skops"
    src.parent.mkdir()
    src.write_bytes(skops)
    client.log_artifact(run.info.run_id, str(src), "sklearn")
    client.set_terminated(run.info.run_id)
    if not client.search_registered_models(f"name = '{NAME}'"):
        client.create_registered_model(NAME)
    mv = client.create_model_version(
        NAME, f"{run.info.artifact_uri}/sklearn", run_id=run.info.run_id, tags=tags
    )
    client.set_registered_model_alias(NAME, alias, mv.version)
    stored = storage._local_path(run.info.artifact_uri) / "sklearn" / "model.skops"
    return mv.version, str(stored)


def test_no_registered_model_means_no_champion(registry):
    uri, _, _ = registry
    assert load_champion(NAME, tracking_uri=uri) is None


def test_verified_champion_loads_and_a_missing_alias_means_none(
    tmp_path, registry, telco_spec, telco_trained
):
    uri, _, _ = registry
    skops = read_model_bytes(telco_trained["model_uri"])
    tags = {SKLEARN_SHA256_TAG: telco_trained["model_sha256"], "slipway.decision_threshold": "0.31"}
    version, _ = _register(tmp_path, registry, skops, tags, "candidate")
    # The model exists but nobody holds "champion" (the SQL store says INVALID_PARAMETER_VALUE here).
    assert load_champion(NAME, tracking_uri=uri) is None
    cand = load_champion(NAME, "candidate", tracking_uri=uri)
    assert cand["version"] == int(version) and cand["threshold"] == 0.31
    assert cand["sha256"] == telco_trained["model_sha256"]
    X = feature_frame(read_parquet(telco_trained["splits"]["test"]), telco_spec)
    from include.model_files import read_model

    assert np.array_equal(
        cand["model"].predict_proba(X), read_model(telco_trained["model_uri"]).predict_proba(X)
    )


@pytest.fixture
def other_model(tmp_path, telco_spec, wa_churn):
    """A second valid model, different bytes."""
    from include.tasks.train.fit import train_model
    from tests.support.snapshots import make_snapshot

    snap = make_snapshot(wa_churn.iloc[2000:2800], telco_spec, tmp_path / "other.parquet")
    return read_model_bytes(
        train_model(telco_spec, snap, storage.path_to_uri(tmp_path / "other"))["model_uri"]
    )


def test_champion_skops_must_match_its_tag(tmp_path, registry, telco_trained, other_model):
    uri, _, _ = registry
    skops = read_model_bytes(telco_trained["model_uri"])
    good = telco_trained["model_sha256"]

    _register(tmp_path, registry, skops, {}, "champion")
    with pytest.raises(ModelIntegrityError, match=rf"no valid '{SKLEARN_SHA256_TAG}' tag"):
        load_champion(NAME, tracking_uri=uri)

    wrong = hashlib.sha256(other_model).hexdigest()
    _register(tmp_path, registry, skops, {SKLEARN_SHA256_TAG: wrong}, "champion")
    with pytest.raises(ModelIntegrityError) as err:
        load_champion(NAME, tracking_uri=uri)
    assert good in str(err.value) and wrong in str(err.value) and "@champion" in str(err.value)

    # Tagged correctly at registration, then the artifact is swapped for another valid model.
    _, stored = _register(tmp_path, registry, skops, {SKLEARN_SHA256_TAG: good}, "champion")
    assert load_champion(NAME, tracking_uri=uri)["sha256"] == good
    with open(stored, "wb") as fh:
        fh.write(other_model)
    with pytest.raises(ModelIntegrityError, match="changed after registration"):
        load_champion(NAME, tracking_uri=uri)


@pytest.fixture
def quick_http(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")


def test_unreachable_registry_raises_and_is_never_no_champion(quick_http):
    port = free_port()  # closed again once found: nothing listens there
    started = time.monotonic()
    with pytest.raises(RegistryUnavailable) as err:
        load_champion(NAME, tracking_uri=f"http://127.0.0.1:{port}")
    assert time.monotonic() - started < 10
    msg = str(err.value)
    assert "could not be reached" in msg and "will be retried" in msg and f"{NAME}@champion" in msg
    # Not a deterministic failure: Airflow must retry it rather than fail the run for good.
    assert not isinstance(err.value, ValueError | TrainingError)


@pytest.fixture(scope="module")
def stub_server():
    """An HTTP server answering every request with the status and body set on it."""
    reply = {"status": 500, "body": b"{}", "type": "application/json"}

    class Handler(BaseHTTPRequestHandler):
        def _answer(self):
            self.send_response(reply["status"])
            self.send_header("Content-Type", reply["type"])
            self.send_header("Content-Length", str(len(reply["body"])))
            self.end_headers()
            self.wfile.write(reply["body"])

        do_GET = do_POST = _answer

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", reply
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("status", "body", "none"),
    [
        (404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "not found"}, True),
        (403, {"error_code": "PERMISSION_DENIED", "message": "no"}, False),
        (500, {"error_code": "INTERNAL_ERROR", "message": "boom"}, False),
        (404, "<html>no such page</html>", False),  # a wrong URL is not "no champion"
    ],
)
def test_rest_store_only_does_not_exist_means_no_champion(quick_http, stub_server, status, body, none):
    url, reply = stub_server
    reply["status"] = status
    if isinstance(body, dict):
        reply["body"], reply["type"] = json.dumps(body).encode(), "application/json"
    else:
        reply["body"], reply["type"] = body.encode(), "text/html"
    if none:
        assert load_champion(NAME, tracking_uri=url) is None
    else:
        with pytest.raises(RegistryUnavailable, match="will be retried"):
            load_champion(NAME, tracking_uri=url)
