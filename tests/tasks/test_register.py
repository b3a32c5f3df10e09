"""Register: only a blessed candidate; ONNX as the deployable artifact, skops beside it, alias last."""

from __future__ import annotations

from pathlib import Path

import pytest

from include import storage
from include.tasks.blessing import make_blessing, required_gates
from include.tasks.gates import GateFailed, check
from include.tasks.register import register_candidate
from include.tasks.train import read_model


@pytest.fixture
def trained(telco_trained):
    return telco_trained


def _blessing(spec, passed=True):
    results = [check(g, "m", 1.0, 0.0, ">=") for g in required_gates(spec)]
    if not passed:
        results.append(check("fairness", "demographic_parity_difference[female]", 0.4, 0.2, "<="))
    return make_blessing(spec, results)


def test_register_blessed_candidate(isolated_home, tmp_path, telco_spec, trained):
    import mlflow

    from include.lineage import configure_mlflow
    from include.tasks.onnx_export import convert

    configure_mlflow()
    mlflow.set_experiment("unit-register")
    onnx_bytes = convert(telco_spec, read_model(trained["model_uri"]))
    skops_bytes = storage.read_bytes(trained["model_uri"])
    card = tmp_path / "card"
    card.mkdir()
    (card / "model_card.md").write_text("# card")
    with mlflow.start_run():
        first = register_candidate(
            telco_spec, onnx_bytes, skops_bytes, {"slipway.x": "1"}, _blessing(telco_spec), card
        )
    with mlflow.start_run():
        with pytest.raises(GateFailed, match="blessing failed"):
            register_candidate(
                telco_spec, onnx_bytes, skops_bytes, {"slipway.x": "2"}, _blessing(telco_spec, False)
            )
    client = mlflow.MlflowClient()
    assert first["version"] == 1
    mv = client.get_model_version_by_alias("telco_churn", "candidate")
    assert int(mv.version) == 1 and mv.tags["slipway.x"] == "1"
    assert mv.tags["slipway.blessing"] == "passed" and mv.tags["slipway.blessing.fairness"] == "passed"
    assert (
        len(client.search_model_versions("name = 'telco_churn'")) == 1
    )  # the unblessed one never registered
    local = Path(mlflow.artifacts.download_artifacts(run_id=mv.run_id))
    files = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
    assert "sklearn/model.skops" in files and "blessing.json" in files and "model_card/model_card.md" in files
    assert not {f for f in files if f.endswith((".pkl", ".pickle"))}
    flavour = Path(mlflow.artifacts.download_artifacts(mv.source))
    assert "onnx" in (flavour / "MLmodel").read_text()
