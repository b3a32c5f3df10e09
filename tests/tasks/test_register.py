"""Register: a version named after the pipeline, skops format, tags, and the alias moved last."""

from __future__ import annotations

import pytest

from include import storage
from include.tasks.ingest import conform_batch, to_parquet_bytes
from include.tasks.register import register_candidate
from include.tasks.train import train_model


@pytest.fixture
def trained(tmp_path, telco_spec, wa_churn):
    raw = wa_churn.iloc[:600].astype(str).replace({"nan": None})
    df = conform_batch(raw, telco_spec, "mem://", "2025-01", b"k")
    snap = storage.write_bytes(storage.path_to_uri(tmp_path / "snap.parquet"), to_parquet_bytes(df))
    return train_model(telco_spec, snap, storage.path_to_uri(tmp_path / "run"))


def test_register_sets_alias_and_tags_and_stores_no_pickle(isolated_home, telco_spec, trained):
    import mlflow

    from include.lineage import configure_mlflow

    configure_mlflow()
    mlflow.set_experiment("unit-register")
    with mlflow.start_run():
        first = register_candidate(
            telco_spec, trained["model_uri"], trained["splits"]["test"], {"slipway.x": "1"}
        )
    with mlflow.start_run():
        second = register_candidate(
            telco_spec, trained["model_uri"], trained["splits"]["test"], {"slipway.x": "2"}
        )
    client = mlflow.MlflowClient()
    assert (first["version"], second["version"]) == (1, 2)
    mv = client.get_model_version_by_alias("telco_churn", "candidate")
    assert int(mv.version) == 2 and mv.tags["slipway.x"] == "2"
    # The logged model is skops, never pickle.
    local = mlflow.artifacts.download_artifacts(second["model_uri"])
    from pathlib import Path

    files = {p.name for p in Path(local).rglob("*") if p.is_file()}
    assert "model.skops" in files
    assert not {f for f in files if f.endswith((".pkl", ".pickle"))}
    mlmodel = (Path(local) / "MLmodel").read_text()
    assert "serialization_format: skops" in mlmodel
