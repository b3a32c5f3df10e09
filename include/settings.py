"""Where things live: every location Slipway uses, read from the environment in this one module.

With no configuration everything sits under one project-local state folder (``.slipway/``):
the lake, the landing zone, the DVC workspace and remote, MLflow (SQLite + local artifacts)
and Airflow (SQLite + LocalExecutor). Environment variables move each piece to production
services (PostgreSQL, an MLflow tracking server, ``s3://`` via boto3).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from include.uri import path_to_uri

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Settings:
    """Resolved locations; build with :func:`get_settings`."""

    home: Path
    landing_uri: str
    lake_uri: str
    dvc_remote_uri: str
    dvc_workdir: Path
    mlflow_tracking_uri: str
    mlflow_artifact_uri: str
    s3_endpoint_url: str | None
    pipelines_dir: Path
    expectations_dir: Path
    code_version: str | None
    mlflow_ui_url: str | None
    serving_url: str | None  # the inference service (behind its load balancer), for /ready checks


def get_settings() -> Settings:
    """Read the environment now (cheap; not cached so tests and the CLI can switch stacks)."""
    env = os.environ
    home = Path(env.get("SLIPWAY_HOME", PROJECT_ROOT / ".slipway")).resolve()
    mlflow_dir = home / "mlflow"
    return Settings(
        home=home,
        landing_uri=env.get("SLIPWAY_LANDING_URI", path_to_uri(home / "landing")).rstrip("/"),
        lake_uri=env.get("SLIPWAY_LAKE_URI", path_to_uri(home / "lake")).rstrip("/"),
        dvc_remote_uri=env.get("SLIPWAY_DVC_REMOTE_URI", str(home / "dvc-remote")).rstrip("/"),
        dvc_workdir=Path(env.get("SLIPWAY_DVC_WORKDIR", home / "dvc")).resolve(),
        mlflow_tracking_uri=env.get("MLFLOW_TRACKING_URI", f"sqlite:///{mlflow_dir / 'mlflow.db'}"),
        mlflow_artifact_uri=env.get("SLIPWAY_MLFLOW_ARTIFACT_URI", path_to_uri(mlflow_dir / "artifacts")),
        s3_endpoint_url=env.get("AWS_ENDPOINT_URL") or env.get("SLIPWAY_S3_ENDPOINT_URL") or None,
        pipelines_dir=Path(
            env.get("SLIPWAY_PIPELINES_DIR", PROJECT_ROOT / "include" / "pipelines")
        ).resolve(),
        expectations_dir=Path(
            env.get("SLIPWAY_EXPECTATIONS_DIR", PROJECT_ROOT / "include" / "expectations")
        ).resolve(),
        code_version=env.get("SLIPWAY_CODE_VERSION") or None,
        mlflow_ui_url=env.get("SLIPWAY_MLFLOW_UI_URL")
        or (
            env.get("MLFLOW_TRACKING_URI") if env.get("MLFLOW_TRACKING_URI", "").startswith("http") else None
        ),
        serving_url=(env.get("SLIPWAY_SERVING_URL") or "").rstrip("/") or None,
    )


def airflow_environment(settings: Settings | None = None) -> dict[str, str]:
    """Airflow settings for the embedded stack; a variable already set in the environment wins.

    SQLite metadata DB and the LocalExecutor under ``<home>/airflow``, DAGs from ``dags/``,
    plugins from ``plugins/``, no example DAGs.
    """
    s = settings or get_settings()
    airflow_home = Path(os.environ.get("AIRFLOW_HOME", s.home / "airflow"))
    defaults = {
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow_home / 'airflow.db'}",
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "60",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(airflow_home / "logs"),
        # Airflow's own default is 16 random bytes: PyJWT warns (InsecureKeyLengthWarning) on every
        # token. 64 bytes, generated once and kept private, shared by every component of the stack.
        "AIRFLOW__API_AUTH__JWT_SECRET": os.environ.get("AIRFLOW__API_AUTH__JWT_SECRET")
        or _generated_once(s.home / "secrets" / "airflow-jwt.key", 64, "Airflow's JWT secret"),
        "MLFLOW_TRACKING_URI": s.mlflow_tracking_uri,
        # MLflow's messages through Python logging (Airflow's task log, at their own level), not its
        # own stderr handler, which Airflow records at level "error".
        "MLFLOW_CONFIGURE_LOGGING": "false",
        "PYTHONPATH": os.pathsep.join(p for p in [str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")] if p),
    }
    return {k: os.environ.get(k, v) for k, v in defaults.items()}


def serving_metrics_key() -> str | None:
    """The service's metrics key (``SLIPWAY_SERVING_METRICS_KEY``): what Prometheus scrapes ``/metrics``
    with and what Slipway's own tasks read ``/ready``'s versions with. None when it is not set."""
    return os.environ.get("SLIPWAY_SERVING_METRICS_KEY") or None


def pii_key(settings: Settings | None = None) -> bytes:
    """Key for hashing identifiers (HMAC-SHA256), so hashed IDs cannot be reversed by a dictionary.

    Production sets ``SLIPWAY_PII_KEY`` from a secret store (every worker needs the same key).
    The embedded default generates one key, once, into ``<home>/secrets/pii.key`` (mode 0600).
    """
    value = os.environ.get("SLIPWAY_PII_KEY")
    if value:
        return value.encode()
    s = settings or get_settings()
    return _generated_once(s.home / "secrets" / "pii.key", 32, "the PII key").encode()


def _generated_once(path: Path, nbytes: int, what: str) -> str:
    """A random hex secret of ``nbytes`` kept in ``path`` (mode 0600), generated on first use."""
    if not path.exists():
        import secrets
        import tempfile

        path.parent.mkdir(parents=True, exist_ok=True)
        # Written whole, then linked into place: a concurrent first run never reads a half-written
        # (or empty) key, and the first link wins.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(nbytes))
            os.chmod(tmp, 0o600)
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
        finally:
            os.unlink(tmp)
    key = path.read_text().strip()
    if not key:
        raise RuntimeError(f"{what} file {path} is empty: delete it to have a new one generated")
    return key
