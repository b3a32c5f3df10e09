"""The MLflow tracking store and model registry this installation uses, and a pipeline's experiment."""

from __future__ import annotations

from include.settings import get_settings


def configure_mlflow():
    """Point MLflow at the configured tracking store; return the module."""
    import os

    # Progress bars are noise in task logs (they land there as stderr "errors").
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow

    mlflow.set_tracking_uri(get_settings().mlflow_tracking_uri)
    return mlflow


def mlflow_client():
    """A client of the configured tracking store and model registry."""
    return configure_mlflow().MlflowClient()


def experiment_id(pipeline: str) -> str:
    """The MLflow experiment of a pipeline (created with the configured artifact location)."""
    mlflow = configure_mlflow()
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(pipeline)
    if exp is not None:
        return exp.experiment_id
    artifact_root = get_settings().mlflow_artifact_uri
    # A tracking server chooses its own artifact store; a direct database store needs to be told.
    tracking = get_settings().mlflow_tracking_uri
    location = (
        None if tracking.startswith(("http://", "https://", "databricks")) else f"{artifact_root}/{pipeline}"
    )
    try:
        return client.create_experiment(pipeline, artifact_location=location)
    except Exception:  # created concurrently by another task: read it back
        exp = client.get_experiment_by_name(pipeline)
        if exp is None:
            raise
        return exp.experiment_id
