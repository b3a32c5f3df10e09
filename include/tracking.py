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


class UntrustedArtifact(ValueError):
    """An artifact URI outside MLflow's own schemes and the configured artifact root: never read."""


#: Resolved by MLflow itself: through the tracking server (which holds the credentials) or its store.
_MLFLOW_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/")


def trusted_artifact_uri(uri: str) -> str:
    """``uri`` when reading it sends no credential elsewhere: MLflow's own schemes (``runs:/``,
    ``models:/``, ``mlflow-artifacts:/``) or a location under the configured artifact root
    (``SLIPWAY_MLFLOW_ARTIFACT_URI``). A model version's source and a tag are written by whoever may
    write to the registry; MLflow's HTTP artifact client would send the tracking credentials to any
    host they name. Raises :class:`UntrustedArtifact` naming the URI and the fix."""
    from urllib.parse import unquote

    text = str(uri or "")
    if text.startswith(_MLFLOW_SCHEMES) and ".." not in unquote(text).split("/"):
        return text
    root = get_settings().mlflow_artifact_uri.rstrip("/") + "/"
    if text.startswith(root) and ".." not in unquote(text[len(root) :]).replace("\\", "/").split("/"):
        return text
    raise UntrustedArtifact(
        f"artifact {text[:200]!r} is outside MLflow's own schemes and the artifact root {root}: not read "
        "(a registry entry may point anywhere, and MLflow would send its credentials there); register "
        "the version from a run's artifacts, or set SLIPWAY_MLFLOW_ARTIFACT_URI to where artifacts live"
    )


#: The MLflow UI opens an experiment as model development (runs, metrics, models), not in its GenAI
#: mode (traces, evaluations), when the experiment carries this kind (and the link asks for it).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def experiment_id(pipeline: str) -> str:
    """The MLflow experiment of a pipeline (created with the configured artifact location, marked as
    model development)."""
    mlflow = configure_mlflow()
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(pipeline)
    if exp is not None:
        if not all(exp.tags.get(k) == v for k, v in EXPERIMENT_KIND.items()):
            for key, value in EXPERIMENT_KIND.items():  # made before the kind was set, or by hand
                client.set_experiment_tag(exp.experiment_id, key, value)
        return exp.experiment_id
    artifact_root = get_settings().mlflow_artifact_uri
    # A tracking server chooses its own artifact store; a direct database store needs to be told.
    tracking = get_settings().mlflow_tracking_uri
    location = (
        None if tracking.startswith(("http://", "https://", "databricks")) else f"{artifact_root}/{pipeline}"
    )
    try:
        return client.create_experiment(pipeline, artifact_location=location, tags=EXPERIMENT_KIND)
    except Exception:  # created concurrently by another task: read it back
        exp = client.get_experiment_by_name(pipeline)
        if exp is None:
            raise
        return exp.experiment_id


def ui_link(ui: str | None, page: str) -> str | None:
    """The MLflow UI's address of ``page`` (``experiments/3``, ``models/x/versions/2``), None without a UI.

    Experiment pages carry ``workflowType=machine_learning``: the UI otherwise opens an experiment in
    the mode last used in that browser, GenAI by default."""
    if not ui:
        return None
    page = page.strip("/")
    query = "?workflowType=machine_learning" if page.startswith("experiments") else ""
    return f"{ui.rstrip('/')}/#/{page}{query}"
