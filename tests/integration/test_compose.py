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
    monkeypatch.setenv("POSTGRES_PASSWORD", "from-the%secret@store:/x")
    mlflow_auth_config.main()
    cfg = configparser.ConfigParser()
    cfg.read(path)
    assert cfg["mlflow"]["default_permission"] == "NO_PERMISSIONS"
    from urllib.parse import unquote, urlsplit

    url = urlsplit(cfg["mlflow"]["database_uri"])
    assert (url.hostname, url.port, url.path) == ("postgres", 5432, "/mlflow_auth")
    assert unquote(url.password) == "from-the%secret@store:/x"
    assert oct(path.stat().st_mode)[-3:] == "600"


SECRETS = (
    "POSTGRES_PASSWORD",
    "MINIO_ROOT_PASSWORD",
    "MINIO_ROOT_USER",
    "SLIPWAY_PII_KEY",
    "SLIPWAY_S3_SECRET_KEY",
    "MLFLOW_ADMIN_PASSWORD",
    "AIRFLOW_FERNET_KEY",
    "AIRFLOW_JWT_SECRET",
)


def test_no_secret_on_a_command_line():
    for name, service in _compose()["services"].items():
        command = service.get("command") or []
        text = " ".join(command) if isinstance(command, list) else str(command)
        for secret in SECRETS:
            # Passed through stdin (`printf ... |`) is allowed; an argument is not.
            args = text.split("|")[-1] if secret == "SLIPWAY_S3_SECRET_KEY" else text
            assert secret not in args, f"{name}: {secret} on the command line"
        assert "://slipway:" not in text, f"{name}: a database password in a URL on the command line"


def test_workers_use_scoped_s3_credentials_not_minio_root():
    env = _compose()["services"]["airflow-worker"]["environment"]
    assert env["AWS_ACCESS_KEY_ID"].startswith("${SLIPWAY_S3_ACCESS_KEY")
    assert env["AWS_SECRET_ACCESS_KEY"].startswith("${SLIPWAY_S3_SECRET_KEY")
    mlflow_env = _compose()["services"]["mlflow"]["environment"]
    assert "MINIO_ROOT" not in str(mlflow_env)
    import json

    policy = json.loads((ROOT / "include" / "deploy" / "minio-slipway-policy.json").read_text())
    resources = {r for st in policy["Statement"] for r in st["Resource"]}
    assert resources and all(r.split(":::")[1].split("/")[0] in {"landing", "lake", "dvc", "mlflow"} for r in resources)
    assert not any("admin" in a for st in policy["Statement"] for a in st["Action"])


def test_images_are_pinned_and_the_code_version_is_built_in():
    for name, service in _compose()["services"].items():
        image = service.get("image", "")
        if image.startswith("slipway:"):
            assert image == "slipway:${SLIPWAY_CODE_VERSION}", name
            continue
        repo, _, tag = image.partition(":")
        assert tag and tag != "latest" and re.search(r"\d", tag), f"{name}: image {image!r} is not pinned"
    build = _compose()["x-slipway-image"]["build"]
    assert build["args"]["SLIPWAY_CODE_VERSION"].startswith("${SLIPWAY_CODE_VERSION:?")
    assert "ENV " in build["dockerfile_inline"] and "SLIPWAY_CODE_VERSION=$SLIPWAY_CODE_VERSION" in build[
        "dockerfile_inline"
    ]
    assert re.search(r"^\s*FROM python:3\.11\.\d+-slim", build["dockerfile_inline"], re.M)
