"""The production topology file: complete, secrets only from the environment, wired to Slipway's settings."""

from __future__ import annotations

import configparser
import json
import re

import pytest
import yaml

from tests.support.processes import ROOT


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
    for name in (
        "POSTGRES_PASSWORD",
        "MINIO_ROOT_PASSWORD",
        "SLIPWAY_PII_KEY",
        "MLFLOW_ADMIN_PASSWORD",
        "SLIPWAY_SERVING_ADMIN_KEY",
        "SLIPWAY_SERVING_METRICS_KEY",
        "GRAFANA_ADMIN_PASSWORD",
    ):
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
    monkeypatch.setenv("PG_MLFLOW_PASSWORD", "from-the%secret@store:/x")
    mlflow_auth_config.main()
    cfg = configparser.ConfigParser()
    cfg.read(path)
    assert cfg["mlflow"]["default_permission"] == "READ"
    from urllib.parse import unquote, urlsplit

    url = urlsplit(cfg["mlflow"]["database_uri"])
    assert (url.hostname, url.port, url.path, url.username) == ("postgres", 5432, "/mlflow_auth", "mlflow")
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
    "AIRFLOW_API_SECRET_KEY",
    "MLFLOW_FLASK_SERVER_SECRET_KEY",
    "SLIPWAY_SERVING_ADMIN_KEY",
    "SLIPWAY_SERVING_METRICS_KEY",
    "GRAFANA_ADMIN_PASSWORD",
    "AIRFLOW_ADMIN_PASSWORD",
    "MINIO_KMS_SECRET_KEY",
    "PG_AIRFLOW_PASSWORD",
    "PG_MLFLOW_PASSWORD",
    "PG_SERVING_PASSWORD",
    "MLFLOW_PIPELINES_PASSWORD",
    "MLFLOW_SERVING_PASSWORD",
    "REDIS_PASSWORD",
    "SLIPWAY_S3_SERVING_SECRET_KEY",
    "AIRFLOW_OPERATOR_PASSWORD",
    "AIRFLOW_APPROVER_PASSWORD",
    "AIRFLOW_VIEWER_PASSWORD",
)
_THROUGH_STDIN = ("SLIPWAY_S3_SECRET_KEY", "SLIPWAY_S3_SERVING_SECRET_KEY", "REDIS_PASSWORD")


def test_no_secret_on_a_command_line():
    for name, service in _compose()["services"].items():
        command = service.get("command") or []
        text = " ".join(command) if isinstance(command, list) else str(command)
        for secret in SECRETS:
            # Passed through stdin (`printf ... |`) is allowed; an argument is not.
            args = " ".join(p.split("|")[-1] for p in text.split("&&")) if secret in _THROUGH_STDIN else text
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
    assert resources and all(
        r.split(":::")[1].split("/")[0] in {"landing", "lake", "dvc", "mlflow"} for r in resources
    )
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
    assert (
        "ENV " in build["dockerfile_inline"]
        and "SLIPWAY_CODE_VERSION=$SLIPWAY_CODE_VERSION" in build["dockerfile_inline"]
    )
    assert re.search(r"^\s*FROM python:3\.11\.\d+-slim", build["dockerfile_inline"], re.M)


# ------------------------------------------------- the compose file and `make up`'s native topology
#: Variables of ``include.deploy.production.stack_env`` that only the native stack sets, and why.
NATIVE_ONLY = {
    # Every native listener binds 127.0.0.1 on a port that SLIPWAY_AIRFLOW_PORT can move; in compose
    # the api-server listens on its default 0.0.0.0:8080 inside its container.
    "AIRFLOW__API__HOST",
    "AIRFLOW__API__PORT",
    # One api-server worker keeps the native stack light; compose keeps Airflow's default.
    "AIRFLOW__API__WORKERS",
    # The native UI's loopback URL; in compose it is the TLS proxy's URL, a deployment choice.
    "AIRFLOW__API__BASE_URL",
    # Sized to the one machine natively; compose scales with more workers (--scale airflow-worker=N).
    "AIRFLOW__CORE__PARALLELISM",
    "AIRFLOW__CELERY__WORKER_CONCURRENCY",
}
SHARED_PREFIXES = ("AIRFLOW__", "SLIPWAY_", "MLFLOW_TRACKING", "AWS_")
#: Values that do not depend on where the stack runs: the same in both.
SAME_VALUE = (
    "AIRFLOW__CORE__EXECUTOR",
    "AIRFLOW__CORE__LOAD_EXAMPLES",
    "SLIPWAY_LANDING_URI",
    "SLIPWAY_LAKE_URI",
    "SLIPWAY_DVC_REMOTE_URI",
    "MLFLOW_TRACKING_USERNAME",
    "AWS_DEFAULT_REGION",
)


@pytest.fixture
def native(tmp_path, monkeypatch):
    import include.deploy.production as topology

    monkeypatch.setenv("SLIPWAY_HOME", str(tmp_path))
    for name in ("AIRFLOW", "MLFLOW", "S3", "SERVING", "PROMETHEUS"):
        monkeypatch.delenv(f"SLIPWAY_{name}_PORT", raising=False)
    topo = topology.topology()
    secret = {name: "x" for name in topology.SECRET_NAMES}
    return topology, topo, secret


def test_compose_has_every_native_service_and_grafana(native):
    topology, topo, secret = native
    compose = set(_compose()["services"])
    names = {s.name for s in topology.services(topo, secret)}
    # "prometheus" is in the native list only where the binary is installed; compose always has it.
    assert names - {"prometheus"} >= {"minio", "mlflow", "airflow-apiserver", "serving"}
    assert names <= compose, f"native services missing from docker-compose.yaml: {names - compose}"
    assert {"serving", "prometheus", "grafana"} <= compose


def test_compose_airflow_env_has_the_native_stack_env(native):
    topology, topo, secret = native
    native_env = topology.stack_env(topo, secret)
    compose_env = _compose()["x-airflow-env"]
    shared = {n for n in native_env if n.startswith(SHARED_PREFIXES)}
    assert NATIVE_ONLY <= shared, f"stale NATIVE_ONLY entries: {NATIVE_ONLY - shared}"
    missing = shared - NATIVE_ONLY - set(compose_env)
    assert not missing, f"x-airflow-env lacks {sorted(missing)} (stack_env sets them)"
    extra = {n for n in compose_env if n.startswith(SHARED_PREFIXES)} - set(native_env)
    assert not extra, f"x-airflow-env sets {sorted(extra)}, include.deploy.production.stack_env does not"
    for name in SAME_VALUE:
        assert compose_env[name] == native_env[name], name


def _interpolated(value: str) -> str:
    return re.sub(r"\$\{([A-Z0-9_]+):\?[^}]*\}", r"${\1}", str(value))


def test_serving_gets_what_it_reads_from_the_shared_values():
    services = _compose()["services"]
    serving, airflow_env = services["serving"], _compose()["x-airflow-env"]
    assert serving["image"] == "slipway:${SLIPWAY_CODE_VERSION}"
    assert serving["command"] == ["slipway", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]
    env = serving["environment"]
    # The same places; its own logins (test_each_component_logs_in_as_itself_with_only_its_grants).
    for name in ("SLIPWAY_PII_KEY", "MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL"):
        assert _interpolated(env[name]) == _interpolated(airflow_env[name]), name
    assert env["SLIPWAY_SERVING_DB"].startswith("postgresql://") and env["SLIPWAY_SERVING_DB"].endswith(
        "/serving"
    )
    for key in ("SLIPWAY_SERVING_ADMIN_KEY", "SLIPWAY_SERVING_METRICS_KEY"):
        assert env[key] == "${" + key + ":?set " + key + "}"
    # None of Airflow's own keys: the service does not need them.
    assert not {"AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET"} & set(env)
    assert "/health" in " ".join(serving["healthcheck"]["test"])
    assert serving["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert "mlflow" in serving["depends_on"]
    sql = (ROOT / "include" / "deploy" / "postgres-init.sh").read_text()
    assert re.search(r"^CREATE DATABASE serving OWNER serving;", sql, re.M)


def _published(service: dict) -> dict[int, int]:
    """Container port -> host port of a service's ``ports``."""
    out = {}
    for entry in service.get("ports", []):
        host, _, container = str(entry).rpartition(":")
        out[int(container)] = int(host.rpartition(":")[2])
    return out


def test_every_published_port_is_on_loopback_only():
    published = {
        name: entry for name, service in _compose()["services"].items() for entry in service.get("ports", [])
    }
    assert published, "compose publishes no port at all"
    assert all(str(entry).startswith("127.0.0.1:") for entry in published.values()), published


def test_published_ports_are_the_native_defaults(native):
    topology, topo, secret = native
    services = _compose()["services"]
    for compose_name, key in (
        ("airflow-apiserver", "airflow"),
        ("mlflow", "mlflow"),
        ("serving", "serving"),
        ("prometheus", "prometheus"),
    ):
        port = topo.ports[key]
        assert _published(services[compose_name]) == {port: port}, compose_name
    native_ports = {s.name: s.port for s in topology.services(topo, secret)}
    assert native_ports["serving"] == 8000 and native_ports["airflow-apiserver"] == 8080
    assert _published(services["grafana"]) == {3000: 3000}


# ------------------------------------------------------------------------- Prometheus and Grafana
DEPLOY = ROOT / "include" / "deploy"
SECRET_FILE = "/run/secrets/serving_metrics_key"


def _bind_targets(service: dict) -> dict[str, dict]:
    return {
        v["target"]: v for v in service.get("volumes", []) if isinstance(v, dict) and v.get("type") == "bind"
    }


def test_prometheus_scrapes_the_service_with_the_metrics_key_file(native):
    topology, topo, _ = native
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert config["global"]["scrape_interval"] == "15s"
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "slipway-serving"]
    assert [t for sc in job["static_configs"] for t in sc["targets"]] == ["serving:8000"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job["authorization"]["credentials_file"] == SECRET_FILE
    assert "credentials" not in job["authorization"]  # no inline key
    assert not {"basic_auth", "bearer_token", "bearer_token_file"} & set(job)
    assert "slw_" not in (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    # The native stack's config: the same job, scraping with a key file too.
    native_cfg = yaml.safe_load(topology.prometheus_config(topo))
    (native_job,) = native_cfg["scrape_configs"]
    assert native_job["job_name"] == job["job_name"]
    assert native_cfg["global"]["scrape_interval"] == config["global"]["scrape_interval"]
    assert set(native_job["authorization"]) == {"credentials_file"}

    compose = _compose()
    prometheus = compose["services"]["prometheus"]
    assert compose["secrets"]["serving_metrics_key"] == {"environment": "SLIPWAY_SERVING_METRICS_KEY"}
    mounted = [s if isinstance(s, str) else s.get("target", s["source"]) for s in prometheus["secrets"]]
    assert mounted == ["serving_metrics_key"]  # compose mounts it at /run/secrets/serving_metrics_key
    config_mount = _bind_targets(prometheus)["/etc/prometheus/prometheus.yml"]
    assert (
        config_mount["source"] == "./include/deploy/prometheus/prometheus.yml" and config_mount["read_only"]
    )
    assert "SLIPWAY_SERVING_METRICS_KEY" not in str(prometheus.get("environment", ""))


def test_grafana_provisioning_matches_compose():
    compose = _compose()
    grafana = compose["services"]["grafana"]
    env = grafana["environment"]
    assert env["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false" and env["GF_USERS_ALLOW_SIGN_UP"] == "false"
    mounts = _bind_targets(grafana)
    assert mounts["/etc/grafana/provisioning"]["source"] == "./include/deploy/grafana/provisioning"
    assert mounts["/var/lib/grafana/dashboards"]["source"] == "./include/deploy/grafana/dashboards"
    assert all(m["read_only"] for m in mounts.values())

    provisioning = DEPLOY / "grafana" / "provisioning"
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert (source["type"], source["uid"], source["url"], source["isDefault"]) == (
        "prometheus",
        "prometheus",
        "http://prometheus:9090",
        True,
    )
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "slipway.yml").read_text())["providers"]
    assert provider["type"] == "file" and provider["options"]["path"] == "/var/lib/grafana/dashboards"


def _defined_metrics() -> set[str]:
    """Metric names defined in the source: ``Counter|Gauge|Histogram("slipway_...")`` and the
    monitor's gauges (``f"slipway_monitor_{key}"`` over the keys of the dict beside it)."""
    names: set[str] = set()
    for path in (ROOT / "include").rglob("*.py"):
        text = path.read_text()
        names |= set(re.findall(r"\b(?:Counter|Gauge|Histogram|Summary)\(\s*\"(slipway_[a-z_]+)\"", text))
        for prefix, block in re.findall(
            r"f\"(slipway_[a-z_]+_)\{key\}\".*?for key, \w+ in \{(.*?)\}\.items\(\)", text, re.S
        ):
            names |= {prefix + key for key in re.findall(r"^\s*\"([a-z_]+)\":", block, re.M)}
    return names


def _metric_names(expr: str) -> set[str]:
    return {re.sub(r"_(total|bucket|count|sum)$", "", n) for n in re.findall(r"slipway_[a-z_]+", expr)}


def test_dashboard_queries_only_metrics_the_service_defines():
    defined = _defined_metrics()
    monitor = {
        f"slipway_monitor_{k}"
        for k in (
            "drift_breach",
            "drifted_checks",
            "performance_breach",
            "served_rows",
            "no_traffic",
            "interval_end",
        )
    }
    assert {
        "slipway_requests",
        "slipway_model_latency_seconds",
        "slipway_log_queue_depth",
    } | monitor <= defined

    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "slipway.json").read_text())
    assert (dashboard["uid"], dashboard["title"], dashboard["schemaVersion"]) == (
        "slipway",
        "Slipway: serving and monitoring",
        39,
    )
    used: set[str] = set()
    exprs = []
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "prometheus", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "prometheus", panel["title"]
            exprs.append(target["expr"])
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("datasource"):
            assert variable["datasource"]["uid"] == "prometheus"
        exprs.append(json.dumps(variable.get("query", "")))
    for expr in exprs:
        names = _metric_names(expr)
        assert names <= defined, f"{expr!r} uses metrics the service does not define: {names - defined}"
        used |= names
    assert any("histogram_quantile" in e and "slipway_model_latency_seconds_bucket" in e for e in exprs)
    expected = {
        "slipway_requests",
        "slipway_model_latency_seconds",
        "slipway_shed",
        "slipway_log_queue_depth",
        "slipway_log_rows_written",
        "slipway_log_write_failures",
        "slipway_feedback",
    } | (monitor - {"slipway_monitor_interval_end"})
    assert expected <= used, f"the dashboard does not show {expected - used}"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


# ---------------------------------------------------------------------------- deploy.env.example
def test_deploy_env_example_names_every_required_variable_without_a_value():
    text = (ROOT / "docker-compose.yaml").read_text()
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", text))
    required |= {s["environment"] for s in _compose()["secrets"].values() if "environment" in s}
    referenced = set(re.findall(r"\$\{([A-Z0-9_]+)", text)) | required
    lines = (ROOT / "deploy.env.example").read_text().splitlines()
    entries = {}
    for i, line in enumerate(lines):
        if line.strip() and not line.lstrip().startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f"not NAME=value: {line!r}"
            assert value == "", f"{name} has a value in deploy.env.example"
            assert lines[i - 1].startswith("# "), f"{name}: no comment line above it"
            entries[name.strip()] = value
    assert required <= set(entries), f"deploy.env.example lacks {sorted(required - set(entries))}"
    assert set(entries) <= referenced, f"deploy.env.example names unused {sorted(set(entries) - referenced)}"
    assert ".env" in (ROOT / ".gitignore").read_text().split()


def test_the_helm_values_use_the_compose_variables_and_hold_no_secret():
    values = yaml.safe_load((ROOT / "include" / "deploy" / "helm" / "values-slipway.yaml").read_text())
    assert values["executor"] == "CeleryExecutor"
    compose_env = set(_compose()["x-airflow-env"])
    env_names = {e["name"] for e in values["env"]}
    secret_names = {e["envName"] for e in values["secret"]}
    # The chart's pods read the same variables as the compose services.
    assert (env_names | secret_names) - compose_env == set()
    # Secrets come from Kubernetes secrets, never as values in the file.
    for name in (
        "SLIPWAY_PII_KEY",
        "MLFLOW_TRACKING_PASSWORD",
        "AWS_SECRET_ACCESS_KEY",
        "AIRFLOW__API_AUTH__JWT_SECRET",
    ):
        assert name in secret_names and name not in env_names, name
    assert values["data"]["metadataSecretName"] and values["fernetKeySecretName"]
    assert values["workers"]["resources"]["limits"]["memory"]  # what bounds one training task


def test_airflow_users_and_their_password_secrets_match_the_native_stack(native):
    from include.deploy.airflow_passwords import password_variable, users

    topology, topo, secret = native
    compose = _compose()
    api_env = compose["services"]["airflow-apiserver"]["environment"]
    entries = api_env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"]
    assert entries == topology.stack_env(topo, secret)["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"]
    roles = users(entries)
    assert set(roles.values()) == {"admin", "op", "user", "viewer"}, roles
    for name in roles:  # each login's password is a required secret, in compose and in make up
        assert str(api_env[password_variable(name)]).startswith(f"${{{password_variable(name)}:?")
        assert password_variable(name) in topology.SECRET_NAMES


def test_each_component_logs_in_as_itself_with_only_its_grants():
    """PostgreSQL, MLflow, MinIO and Redis: no component uses an administrator's login."""
    import json

    compose = _compose()
    services = compose["services"]
    airflow, serving = compose["x-airflow-env"], services["serving"]["environment"]

    def pg_user(url: str) -> str:
        return re.match(r"[a-z+0-9]+://([^:@]+):", url).group(1)

    assert pg_user(airflow["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]) == "airflow"
    assert pg_user(airflow["SLIPWAY_SERVING_DB"]) == "airflow"
    assert pg_user(serving["SLIPWAY_SERVING_DB"]) == "serving"
    assert pg_user(services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"]) == "mlflow"
    assert serving["SLIPWAY_SERVING_LOG_READERS"] == "airflow"
    init = (ROOT / "include" / "deploy" / "postgres-init.sh").read_text()
    for role in ("airflow", "mlflow", "serving"):
        assert f"CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE" in init
    assert "REVOKE ALL ON DATABASE airflow, mlflow, mlflow_auth, serving FROM PUBLIC" in init
    assert "PASSWORD :'" in init and "$PG_" not in init  # passwords through \getenv, not the shell
    # MLflow: the pipelines' user and the service's read-only user, never the admin.
    assert airflow["MLFLOW_TRACKING_USERNAME"] == "pipelines"
    assert serving["MLFLOW_TRACKING_USERNAME"] == "serving"
    assert "MLFLOW_ADMIN_PASSWORD" not in json.dumps([airflow, serving])
    # MinIO: the service reads the lake and nothing else.
    assert serving["AWS_ACCESS_KEY_ID"].startswith("${SLIPWAY_S3_SERVING_ACCESS_KEY")
    policy = json.loads((ROOT / "include" / "deploy" / "minio-serving-policy.json").read_text())
    actions = {a for st in policy["Statement"] for a in st["Action"]}
    resources = {r for st in policy["Statement"] for r in st["Resource"]}
    assert actions == {"s3:GetBucketLocation", "s3:ListBucket", "s3:GetObject"}
    assert resources == {"arn:aws:s3:::lake", "arn:aws:s3:::lake/*"}
    assert "slipway-serving-read" in " ".join(services["minio-buckets"]["command"])
    # Redis: a password, given to the server on its standard input and to Celery in its URL.
    assert "requirepass" in " ".join(services["redis"]["command"])
    assert airflow["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://:${REDIS_PASSWORD")


def test_mlflow_read_only_users_may_read_and_search_only(tmp_path):
    import importlib

    from include.deploy import mlflow_auth_config
    from include.deploy.mlflow_read_only import is_read, read_only_users

    path = tmp_path / "auth.ini"
    mlflow_auth_config.write_config(str(path), "postgresql+psycopg2://mlflow@postgres/mlflow_auth")
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(path)
    module, _, name = cfg["mlflow"]["authorization_function"].partition(":")
    assert callable(getattr(importlib.import_module(module), name))
    assert read_only_users() == {"serving"}
    assert is_read("GET", "/api/2.0/mlflow/registered-models/get")
    assert is_read("POST", "/api/2.0/mlflow/runs/search")
    for path in ("/api/2.0/mlflow/registered-models/create", "/api/2.0/mlflow/model-versions/set-tag"):
        assert not is_read("POST", path)
    assert not is_read("DELETE", "/api/2.0/mlflow/registered-models/delete")
    assert not is_read("PATCH", "/api/2.0/mlflow/registered-models/update")
