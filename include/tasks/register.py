"""Register: log the fitted pipeline to MLflow (skops, no pickle) and point an alias at its version."""

from __future__ import annotations

from include.spec import PipelineSpec
from include.tasks.ingest import read_parquet
from include.tasks.train import feature_frame, read_model


def pip_requirements() -> list[str]:
    """Exact versions of what loading the model needs (saves MLflow 7-10 s of inference)."""
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in ("scikit-learn", "skops", "pandas", "numpy")]


def register_candidate(
    spec: PipelineSpec, model_uri: str, example_uri: str, tags: dict[str, str], alias: str = "candidate"
) -> dict:
    """Log the model in the active MLflow run, register a version named after the pipeline, set ``alias``.

    Callers invoke this only after every earlier gate passed; the alias is the last thing set,
    so a failure before it leaves every alias where it was.
    """
    import mlflow
    import skops.io as sio
    from mlflow.models import infer_signature

    from include import storage

    model = read_model(model_uri)
    example = feature_frame(read_parquet(example_uri).head(20), spec)
    signature = infer_signature(example, model.predict_proba(example)[:, 1])
    info = mlflow.sklearn.log_model(
        model,
        name="model",
        serialization_format="skops",
        skops_trusted_types=sio.get_untrusted_types(data=storage.read_bytes(model_uri)),
        signature=signature,
        pip_requirements=pip_requirements(),
    )
    client = mlflow.MlflowClient()
    try:
        client.get_registered_model(spec.name)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(
            spec.name, description=spec.description, tags={"slipway.pipeline": spec.name}
        )
    mv = mlflow.register_model(info.model_uri, spec.name, tags={k: str(v) for k, v in tags.items()})
    client.set_registered_model_alias(spec.name, alias, mv.version)
    return {"name": spec.name, "version": int(mv.version), "alias": alias, "model_uri": info.model_uri}
