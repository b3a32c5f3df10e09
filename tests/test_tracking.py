"""Artifacts are read only from MLflow's own schemes and the configured artifact root: a registry entry
that points elsewhere is refused before any connection is made."""

from __future__ import annotations

import socket
import threading

import pytest

from include.tracking import UntrustedArtifact, trusted_artifact_uri


@pytest.fixture
def root(tmp_path, monkeypatch) -> str:
    uri = (tmp_path / "artifacts").as_uri()
    monkeypatch.setenv("SLIPWAY_MLFLOW_ARTIFACT_URI", uri)
    return uri


@pytest.mark.parametrize(
    "uri", ["runs:/abc/model", "models:/m-1234", "mlflow-artifacts:/1/abc/artifacts/model"]
)
def test_mlflow_schemes_are_trusted(root, uri):
    assert trusted_artifact_uri(uri) == uri


def test_a_location_under_the_artifact_root_is_trusted(root):
    assert trusted_artifact_uri(f"{root}/1/models/m-1/artifacts") == f"{root}/1/models/m-1/artifacts"


@pytest.mark.parametrize(
    "uri",
    [
        "http://attacker.example/model",
        "https://127.0.0.1:9/model",
        "s3://someone-elses-bucket/model",
        "file:///etc",
        "{root}/../../etc",
        "{root}/a/%2e%2e/%2e%2e/x",
        "{root}-sibling/model",
        "runs:/abc/../../x",
        "",
    ],
)
def test_anything_else_is_refused(root, uri):
    with pytest.raises(UntrustedArtifact, match="outside MLflow's own schemes"):
        trusted_artifact_uri(uri.format(root=root))


def test_a_version_whose_source_points_elsewhere_is_refused_without_a_connection(root, tmp_path):
    import mlflow

    from include.model_files import ModelRefused
    from include.registry import load_version

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client.create_registered_model("p")
    client.create_model_version(
        "p", f"http://127.0.0.1:{port}/model", tags={"slipway.decision_threshold": "0.5"}
    )
    connected = threading.Event()

    def accept():
        try:
            listener.accept()
            connected.set()
        except OSError:
            pass

    waiter = threading.Thread(target=accept)
    waiter.start()
    with pytest.raises(ModelRefused, match="outside MLflow's own schemes"):
        load_version(client, "p", 1, tmp_path / "download")
    waiter.join()
    listener.close()
    assert not connected.is_set()  # the registry's credentials never went to that host


def test_experiments_are_marked_as_model_development(isolated_home):
    """MLflow opens an experiment in its GenAI mode unless told: every experiment Slipway makes or finds
    carries the model-development kind, and every link to one asks for the machine-learning view."""
    from include.tracking import EXPERIMENT_KIND, experiment_id, mlflow_client, ui_link

    client = mlflow_client()
    made = experiment_id("made_here")
    assert client.get_experiment(made).tags["mlflow.experimentKind"] == "custom_model_development"
    by_hand = client.create_experiment("made_by_hand")  # before the kind was set, or by someone else
    assert "mlflow.experimentKind" not in client.get_experiment(by_hand).tags
    assert experiment_id("made_by_hand") == by_hand
    assert (
        client.get_experiment(by_hand).tags["mlflow.experimentKind"]
        == EXPERIMENT_KIND["mlflow.experimentKind"]
    )

    assert ui_link("http://m:5000/", "experiments/3/runs/ab") == (
        "http://m:5000/#/experiments/3/runs/ab?workflowType=machine_learning"
    )
    assert ui_link("http://m:5000", "models/x/versions/2") == "http://m:5000/#/models/x/versions/2"
    assert ui_link(None, "experiments/3") is None
