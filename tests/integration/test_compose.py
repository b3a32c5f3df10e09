"""The production topology file: complete, secrets only from the environment, wired to Slipway's settings."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yaml").read_text())


def test_services_of_the_production_topology():
    services = set(_compose()["services"])
    assert {
        "postgres",
        "redis",
        "minio",
        "mlflow",
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "airflow-worker",
    } <= services


def test_no_secret_has_a_default_value():
    text = (ROOT / "docker-compose.yaml").read_text()
    for name in ("POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "SLIPWAY_PII_KEY", "MLFLOW_ADMIN_PASSWORD"):
        uses = re.findall(r"\$\{" + name + r"([^}]*)\}", text)
        assert uses, name
        assert all(u == "" or u.startswith(":?") for u in uses), f"{name} must not have a default: {uses}"


def test_airflow_runs_celery_on_postgres_and_slipway_on_s3():
    env = _compose()["services"]["airflow-worker"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
    for key in ("SLIPWAY_LAKE_URI", "SLIPWAY_LANDING_URI", "SLIPWAY_DVC_REMOTE_URI"):
        assert env[key].startswith("s3://")
    assert env["MLFLOW_TRACKING_URI"].startswith("http://mlflow")
    mlflow = _compose()["services"]["mlflow"]["command"]
    assert "basic-auth" in mlflow  # authentication on the tracking server


def test_celery_provider_installed_for_the_executor():
    import airflow.providers.celery  # noqa: F401


def test_mlflow_auth_config_written_from_environment(tmp_path, monkeypatch):
    from include.deploy import mlflow_auth_config

    path = tmp_path / "auth.ini"
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(path))
    monkeypatch.setenv("POSTGRES_PASSWORD", "from-the-secret-store")
    mlflow_auth_config.main()
    cfg = configparser.ConfigParser()
    cfg.read(path)
    assert cfg["mlflow"]["default_permission"] == "NO_PERMISSIONS"
    assert cfg["mlflow"]["database_uri"].endswith("@postgres:5432/mlflow_auth")
    assert oct(path.stat().st_mode)[-3:] == "600"
