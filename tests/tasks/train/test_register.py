"""Register: only a blessed candidate; ONNX as the deployable artifact, skops beside it, alias last."""

from __future__ import annotations

from pathlib import Path

import pytest

from include.model_files import read_model, read_model_bytes
from include.tasks.blessing import make_blessing, required_gates
from include.tasks.gates import GateFailed, check
from include.tasks.train.register import register_candidate


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

    from include.tasks.train.onnx_export import convert
    from include.tracking import configure_mlflow

    configure_mlflow()
    mlflow.set_experiment("unit-register")
    onnx_bytes = convert(telco_spec, read_model(trained["model_uri"]))
    skops_bytes = read_model_bytes(trained["model_uri"])
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
    # The version page shows what the model takes and gives, and says what it is.
    sig = mlflow.models.get_model_info(mv.source).signature
    assert sig.inputs.input_names() == telco_spec.features.all
    assert (
        dict(zip(sig.inputs.input_names(), [t.name for t in sig.inputs.input_types()], strict=True))[
            "contract"
        ]
        == "string"
    )
    assert sig.outputs.input_names() == ["label", "probabilities"]
    assert "trained on" in mv.description and "Registered by" in mv.description


def test_registration_is_idempotent_and_the_alias_only_moves_forward(isolated_home, telco_spec, trained):
    """Retry / re-run of an interval reuses its version; a backfill registers but leaves the alias alone."""
    import mlflow

    from include.tasks.train.onnx_export import convert
    from include.tracking import configure_mlflow

    configure_mlflow()
    mlflow.set_experiment("unit-register-idempotent")
    onnx_bytes = convert(telco_spec, read_model(trained["model_uri"]))
    skops_bytes = read_model_bytes(trained["model_uri"])
    dec = {"slipway.data_version": "d" * 32, "slipway.month": "2025-12"}
    nov = {"slipway.data_version": "e" * 32, "slipway.month": "2025-11"}

    def register(tags):
        with mlflow.start_run():
            return register_candidate(telco_spec, onnx_bytes, skops_bytes, tags, _blessing(telco_spec))

    first = register(dec)
    again = register(dec)  # a retry, or the same interval run again: same data, same model
    backfill = register(nov)  # an older interval, registered after the newer one
    client = mlflow.MlflowClient()
    assert (first["registration"], first["version"], first["alias_moved"]) == ("new", 1, True)
    assert (again["registration"], again["version"], again["alias_moved"]) == ("reused", 1, True)
    assert (backfill["registration"], backfill["version"], backfill["alias_moved"]) == ("new", 2, False)
    assert "stays on version 1" in backfill["message"]
    assert len(client.search_model_versions("name = 'telco_churn'")) == 2
    assert int(client.get_model_version_by_alias("telco_churn", "candidate").version) == 1
    import hashlib

    mv = client.get_model_version("telco_churn", "1")
    assert mv.tags["slipway.sklearn_sha256"] == hashlib.sha256(skops_bytes).hexdigest()
