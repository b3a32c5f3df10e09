"""``make up`` / ``make down``: the production topology of ``docker-compose.yaml``, natively on localhost.

The same services under the same names, with the same variables, on the machine's PostgreSQL and
Redis, and moto's S3 server in MinIO's place:

==========================  ===========================================================  ======
service (compose name)      what runs                                                    port
==========================  ===========================================================  ======
postgres, redis             the machine's (``SLIPWAY_STACK_PG``, ``SLIPWAY_STACK_REDIS``)  5432, 6379
minio (+ minio-buckets)     ``moto_server`` on loopback; buckets landing, lake, dvc, mlflow  9000
mlflow (+ mlflow-users)     ``mlflow server --app-name basic-auth``: PostgreSQL backend,   5000
                            artifacts proxied to ``s3://mlflow/artifacts``; users
                            ``pipelines`` and ``serving`` beside ``admin``
airflow-init                ``airflow db migrate`` (once, before the others)
airflow-apiserver           UI and REST API, login required (users admin, operator,       8080
                            approver, viewer)
airflow-scheduler, -dag-processor, -triggerer, -worker (``airflow celery worker``)
serving                     ``slipway serve``: prediction log on PostgreSQL               8000
prometheus                  scrapes the service's ``/metrics`` with its metrics key;      9090
                            evaluates ``include/deploy/prometheus/rules.yml``
alertmanager                Debian's ``prometheus-alertmanager``: each pipeline's alerts  9093
                            to its alert connection's webhook (:mod:`include.deploy.alerting`)
==========================  ===========================================================  ======

Least privilege, as in compose: each component logs in as itself. PostgreSQL: a role per component
(``<prefix>_airflow``, ``_mlflow``, ``_serving``; :mod:`include.deploy.grants`), none privileged, each
reaching its own databases only (Airflow's may read the prediction log's tables, not the API keys).
MLflow: Airflow's tasks are ``pipelines`` and the service is ``serving`` (read only), not the admin.
Redis: Celery logs in as the ACL user ``<prefix>_celery`` with a password (the machine's default
user is the machine's business; compose sets ``requirepass``). S3: the service has keys of its own,
which compose's MinIO restricts to reading the lake; moto, which stands in for MinIO here, checks no
policy (its ``/moto-api/`` could switch any check off), so that restriction is compose's only.

Grafana runs in the compose stack only (no Debian package); its dashboard reads the same metrics.

Secrets are generated on the first ``make up`` into ``<state>/stack/secrets.env`` (mode 0600) and
handed to the services through their environment, never on a command line: the Airflow users' and
MLflow's passwords, the database roles' and Redis's, Airflow's Fernet, API and JWT keys, the PII key,
the service's admin and metrics keys. Every listener is on 127.0.0.1. A supervisor process (``python -m include.deploy.production
supervise``) owns the services; ``make down`` stops it, and it stops them in reverse order.

moto keeps objects in memory: the S3 contents live as long as the stack. Databases persist, so
``make up`` after ``make down`` starts from empty buckets with the earlier runs still on record;
``python -m include.deploy.production reset`` drops the stack's databases for a clean start.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from include.deploy.airflow_passwords import USERS as AIRFLOW_USERS
from include.deploy.private import write_private
from include.settings import PROJECT_ROOT

BUCKETS = ("landing", "lake", "dvc", "mlflow")
# The alerting rules Prometheus evaluates, here and in compose
RULES = PROJECT_ROOT / "include" / "deploy" / "prometheus" / "rules.yml"
SECRET_NAMES = (
    "AIRFLOW_ADMIN_PASSWORD",
    "AIRFLOW_OPERATOR_PASSWORD",
    "AIRFLOW_APPROVER_PASSWORD",
    "AIRFLOW_VIEWER_PASSWORD",
    "MLFLOW_ADMIN_PASSWORD",
    "AIRFLOW_FERNET_KEY",
    "AIRFLOW_API_SECRET_KEY",
    "AIRFLOW_JWT_SECRET",
    "MLFLOW_FLASK_SERVER_SECRET_KEY",
    "SLIPWAY_PII_KEY",
    "SLIPWAY_S3_ACCESS_KEY",
    "SLIPWAY_S3_SECRET_KEY",
    "SLIPWAY_SERVING_ADMIN_KEY",
    "SLIPWAY_SERVING_METRICS_KEY",
    "PG_AIRFLOW_PASSWORD",
    "PG_MLFLOW_PASSWORD",
    "PG_SERVING_PASSWORD",
    "MLFLOW_PIPELINES_PASSWORD",
    "MLFLOW_SERVING_PASSWORD",
    "REDIS_CELERY_PASSWORD",
    "SLIPWAY_S3_SERVING_ACCESS_KEY",
    "SLIPWAY_S3_SERVING_SECRET_KEY",
)


def _say(msg: str) -> None:
    print(f"[slipway] {msg}", flush=True)


@dataclass(frozen=True)
class Service:
    """One process of the topology, named as its service in docker-compose.yaml."""

    name: str
    command: list[str]
    port: int | None = None
    health: str | None = None  # a URL answering 2xx/401 once the service is up
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Topology:
    """Where everything is: ports, databases, folders; read from the environment."""

    home: Path
    pg: str
    redis: str
    db_prefix: str
    ports: dict[str, int]

    @property
    def folder(self) -> Path:
        return self.home / "stack"

    @property
    def logs(self) -> Path:
        return self.folder / "logs"

    @property
    def pidfile(self) -> Path:
        return self.folder / "supervisor.pid"

    @property
    def secrets_file(self) -> Path:
        return self.folder / "secrets.env"

    def database(self, purpose: str) -> str:
        return f"{self.db_prefix}_{purpose}"

    def role_url(
        self, component: str, purpose: str, secret: dict[str, str], driver: str = "postgresql"
    ) -> str:
        """A component's own login (include/deploy/grants.py) to one of the stack's databases."""
        from include.deploy.grants import PASSWORD_SECRETS, component_url

        password = secret[PASSWORD_SECRETS[component]]
        return component_url(self.pg, self.db_prefix, component, purpose, password, driver)

    def redis_url(self, secret: dict[str, str]) -> str:
        """Celery's login to Redis: an ACL user of its own with a password (not the default user)."""
        from urllib.parse import quote, urlsplit

        parts = urlsplit(self.redis)
        auth = f"{quote(self.redis_user)}:{quote(secret['REDIS_CELERY_PASSWORD'], safe='')}"
        return f"{parts.scheme}://{auth}@{parts.hostname}:{parts.port or 6379}{parts.path}"

    @property
    def redis_user(self) -> str:
        return f"{self.db_prefix}_celery"

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"


def topology() -> Topology:
    """The stack's settings from the environment (defaults: the machine's services, standard ports)."""
    from include.settings import get_settings

    env = os.environ
    ports = {
        "airflow": int(env.get("SLIPWAY_AIRFLOW_PORT", "8080")),
        "mlflow": int(env.get("SLIPWAY_MLFLOW_PORT", "5000")),
        "s3": int(env.get("SLIPWAY_S3_PORT", "9000")),
        "serving": int(env.get("SLIPWAY_SERVING_PORT", "8000")),
        "prometheus": int(env.get("SLIPWAY_PROMETHEUS_PORT", "9090")),
        "alertmanager": int(env.get("SLIPWAY_ALERTMANAGER_PORT", "9093")),
    }
    prefix = env.get("SLIPWAY_STACK_DB_PREFIX", "slipway_stack")
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,40}", prefix):
        raise SystemExit(
            f"SLIPWAY_STACK_DB_PREFIX={prefix!r}: use lowercase letters, digits and '_' (it names databases)"
        )
    return Topology(
        home=get_settings().home,
        pg=env.get("SLIPWAY_STACK_PG", "postgresql://postgres@127.0.0.1:5432"),
        redis=env.get("SLIPWAY_STACK_REDIS", "redis://127.0.0.1:6379/0"),
        db_prefix=prefix,
        ports=ports,
    )


# ------------------------------------------------------------------------------------------ secrets
def _new_secret(name: str) -> str:
    if name == "AIRFLOW_FERNET_KEY":
        from cryptography.fernet import Fernet

        return Fernet.generate_key().decode()
    if name.startswith("SLIPWAY_SERVING_") and name.endswith("_KEY"):
        return f"slw_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"
    if name == "AIRFLOW_JWT_SECRET":  # HMAC-SHA512 wants 64 bytes (PyJWT warns below that)
        return secrets.token_urlsafe(64)
    return secrets.token_urlsafe(32)


def load_secrets(topo: Topology) -> dict[str, str]:
    """The stack's secrets, generated once (mode 0600); names missing from an older file are added."""
    path = topo.secrets_file
    values: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            name, sep, value = line.partition("=")
            if sep and not name.startswith("#"):
                values[name.strip()] = value.strip()
    missing = [n for n in SECRET_NAMES if not values.get(n)]
    if missing:
        values |= {n: _new_secret(n) for n in missing}
        write_private(
            path,
            "# Secrets of the native stack (make up); generated once. Keep this file private.\n"
            + "".join(f"{n}={values[n]}\n" for n in SECRET_NAMES),
        )
    os.chmod(path, 0o600)
    return {n: values[n] for n in SECRET_NAMES}


# ------------------------------------------------------------------------------------- environment
def stack_env(topo: Topology, secret: dict[str, str]) -> dict[str, str]:
    """What every Airflow component and task sees: the names of docker-compose.yaml's x-airflow-env."""
    airflow_home = topo.folder / "airflow"
    s3 = topo.url("s3")
    return {
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__FERNET_KEY": secret["AIRFLOW_FERNET_KEY"],
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{topo.url('airflow')}/execution/",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": topo.role_url(
            "airflow", "airflow", secret, "postgresql+psycopg2"
        ),
        "AIRFLOW__CELERY__BROKER_URL": topo.redis_url(secret),
        "AIRFLOW__CELERY__RESULT_BACKEND": topo.role_url(
            "airflow", "airflow", secret, "db+postgresql+psycopg2"
        ),
        "AIRFLOW__API__SECRET_KEY": secret["AIRFLOW_API_SECRET_KEY"],
        "AIRFLOW__API_AUTH__JWT_SECRET": secret["AIRFLOW_JWT_SECRET"],
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(topo.ports["airflow"]),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API__BASE_URL": topo.url("airflow"),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": AIRFLOW_USERS,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(airflow_home / "passwords.json"),
        "AIRFLOW__CORE__PARALLELISM": str(2 * (os.cpu_count() or 1)),
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(2 * (os.cpu_count() or 1)),
        "SLIPWAY_HOME": str(topo.home),
        "SLIPWAY_LANDING_URI": "s3://landing/slipway",
        "SLIPWAY_LAKE_URI": "s3://lake/slipway",
        "SLIPWAY_DVC_REMOTE_URI": "s3://dvc/slipway",
        "SLIPWAY_PII_KEY": secret["SLIPWAY_PII_KEY"],
        # Airflow's tasks: read the log, write the monitor's table (grants.py); never the API keys.
        "SLIPWAY_SERVING_DB": topo.role_url("airflow", "serving", secret),
        "SLIPWAY_SERVING_URL": topo.url("serving"),
        "SLIPWAY_SERVING_METRICS_KEY": secret["SLIPWAY_SERVING_METRICS_KEY"],
        "SLIPWAY_MLFLOW_UI_URL": topo.url("mlflow"),
        "MLFLOW_TRACKING_URI": topo.url("mlflow"),
        # Not MLflow's admin: a user that manages what it creates and reads the rest (mlflow_users.py).
        "MLFLOW_TRACKING_USERNAME": "pipelines",
        "MLFLOW_TRACKING_PASSWORD": secret["MLFLOW_PIPELINES_PASSWORD"],
        "AWS_ENDPOINT_URL": s3,
        "AWS_ACCESS_KEY_ID": secret["SLIPWAY_S3_ACCESS_KEY"],
        "AWS_SECRET_ACCESS_KEY": secret["SLIPWAY_S3_SECRET_KEY"],
        "AWS_DEFAULT_REGION": "us-east-1",
        "PYTHONPATH": str(PROJECT_ROOT),
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        # MLflow's messages through Python logging (the task log, at their level), not stderr ("error").
        "MLFLOW_CONFIGURE_LOGGING": "false",
    }


#: What the inference service reads of the shared environment: nothing of Airflow's keys.
SERVING_VARS = (
    "SLIPWAY_HOME",
    "SLIPWAY_PII_KEY",
    "SLIPWAY_SERVING_DB",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
    "PYTHONPATH",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR",
)
_AWS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


def services(topo: Topology, secret: dict[str, str]) -> list[Service]:
    """The long-running services in start order (``airflow-init`` and the buckets run before), each
    with the environment it needs: Airflow's components all of :func:`stack_env`, the service and
    MLflow only their own part of it (least privilege), moto and Prometheus none."""
    shared = stack_env(topo, secret)
    bindir = Path(sys.executable).parent
    airflow = str(bindir / "airflow")
    mlflow_hosts = f"127.0.0.1:{topo.ports['mlflow']},localhost:{topo.ports['mlflow']}"
    out = [
        Service(
            "minio",
            [str(bindir / "moto_server"), "-H", "127.0.0.1", "-p", str(topo.ports["s3"])],
            topo.ports["s3"],
            f"{topo.url('s3')}/moto-api/",
        ),
        Service(
            "mlflow",
            [
                str(bindir / "mlflow"),
                "server",
                "--app-name",
                "basic-auth",
                "--artifacts-destination",
                "s3://mlflow/artifacts",
                "--host",
                "127.0.0.1",
                "--port",
                str(topo.ports["mlflow"]),
                "--allowed-hosts",
                mlflow_hosts,
                "--workers",
                "1",
            ],
            topo.ports["mlflow"],
            f"{topo.url('mlflow')}/health",
            {k: shared[k] for k in _AWS}
            | {
                "MLFLOW_BACKEND_STORE_URI": topo.role_url("mlflow", "mlflow", secret, "postgresql+psycopg2"),
                "MLFLOW_AUTH_CONFIG_PATH": str(topo.folder / "mlflow-auth.ini"),
                "MLFLOW_READ_ONLY_USERS": "serving",
                "PYTHONPATH": str(PROJECT_ROOT),  # the auth function: include.deploy.mlflow_read_only
                "MLFLOW_AUTH_ADMIN_PASSWORD": secret["MLFLOW_ADMIN_PASSWORD"],
                "MLFLOW_FLASK_SERVER_SECRET_KEY": secret["MLFLOW_FLASK_SERVER_SECRET_KEY"],
                "MLFLOW_S3_ENDPOINT_URL": topo.url("s3"),
                # The artifacts it proxies to S3 are written with server-side encryption, as the lake is.
                "MLFLOW_S3_UPLOAD_EXTRA_ARGS": '{"ServerSideEncryption": "AES256"}',
            },
        ),
        Service(
            "airflow-apiserver",
            [airflow, "api-server"],
            topo.ports["airflow"],
            f"{topo.url('airflow')}/api/v2/monitor/health",
            shared,
        ),
        Service("airflow-scheduler", [airflow, "scheduler", "--skip-serve-logs"], env=shared),
        Service("airflow-dag-processor", [airflow, "dag-processor"], env=shared),
        Service("airflow-triggerer", [airflow, "triggerer", "--skip-serve-logs"], env=shared),
        # Its log server is skipped: the api-server reads task logs from the shared log folder.
        Service(
            "airflow-worker",
            # Its pool's processes, and each task's, are forked from it: started with the task
            # libraries imported, a task begins with them in memory (include/deploy/preloaded.py).
            [
                sys.executable,
                "-m",
                "include.deploy.preloaded",
                "celery",
                "worker",
                "--skip-serve-logs",
                "--without-gossip",
            ],
            env=shared,
        ),
        Service(
            "serving",
            [
                sys.executable,
                "-m",
                "include.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(topo.ports["serving"]),
            ],
            topo.ports["serving"],
            f"{topo.url('serving')}/health",
            {k: shared[k] for k in SERVING_VARS}
            | {k: secret[k] for k in ("SLIPWAY_SERVING_ADMIN_KEY", "SLIPWAY_SERVING_METRICS_KEY")}
            | serving_identity(topo, secret),
        ),
    ]
    prometheus = prometheus_binary()
    if prometheus:
        out.append(
            Service(
                "prometheus",
                [
                    prometheus,
                    f"--config.file={topo.folder / 'prometheus.yml'}",
                    f"--storage.tsdb.path={topo.folder / 'prometheus'}",
                    f"--web.listen-address=127.0.0.1:{topo.ports['prometheus']}",
                ],
                topo.ports["prometheus"],
                f"{topo.url('prometheus')}/-/ready",
            )
        )
    alertmanager = alertmanager_binary()
    if prometheus and alertmanager:
        out.append(
            Service(
                "alertmanager",
                [
                    alertmanager,
                    f"--config.file={topo.folder / 'alertmanager.yml'}",
                    f"--storage.path={topo.folder / 'alertmanager'}",
                    f"--web.listen-address=127.0.0.1:{topo.ports['alertmanager']}",
                    # One instance: no gossip port to open (it would listen on every interface)
                    "--cluster.listen-address=",
                ],
                topo.ports["alertmanager"],
                f"{topo.url('alertmanager')}/-/ready",
            )
        )
    return out


def serving_identity(topo: Topology, secret: dict[str, str]) -> dict[str, str]:
    """The service's own logins: its database role (its database only) and MLflow's read-only user."""
    return {
        "SLIPWAY_SERVING_DB": topo.role_url("serving", "serving", secret),
        # Airflow's role may read the log's tables, which the service creates (and owns) at start.
        "SLIPWAY_SERVING_LOG_READERS": f"{topo.db_prefix}_airflow",
        "MLFLOW_TRACKING_USERNAME": "serving",
        "MLFLOW_TRACKING_PASSWORD": secret["MLFLOW_SERVING_PASSWORD"],
        # Compose's MinIO lets these read the lake only; moto here checks no policy (see the module doc).
        "AWS_ACCESS_KEY_ID": secret["SLIPWAY_S3_SERVING_ACCESS_KEY"],
        "AWS_SECRET_ACCESS_KEY": secret["SLIPWAY_S3_SERVING_SECRET_KEY"],
    }


def prometheus_binary() -> str | None:
    from shutil import which

    return which("prometheus")


def alertmanager_binary() -> str | None:
    from shutil import which

    return which("prometheus-alertmanager") or which("alertmanager")


def prometheus_config(topo: Topology, scrape_interval: str = "15s") -> str:
    """Scrape the service's /metrics with its metrics key (read from a 0600 file, not the config),
    evaluate the alerting rules, send what fires to the stack's Alertmanager."""
    return (
        f"global:\n  scrape_interval: {scrape_interval}\n  evaluation_interval: {scrape_interval}\n"
        f"rule_files:\n  - {RULES}\n"
        "alerting:\n  alertmanagers:\n    - static_configs:\n"
        f"        - targets: ['127.0.0.1:{topo.ports['alertmanager']}']\n"
        "scrape_configs:\n"
        "  - job_name: slipway-serving\n"
        "    authorization:\n"
        f"      credentials_file: {topo.folder / 'metrics.key'}\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{topo.ports['serving']}']\n"
    )


def alertmanager_config() -> str:
    """Each pipeline's alerts to its alert connection's webhook (:mod:`include.deploy.alerting`)."""
    from include.deploy.alerting import config, pipeline_connections, webhook_url

    connections = pipeline_connections()
    return config(connections, {c: webhook_url(c) for c in set(connections.values())})


# --------------------------------------------------------------------------------------- preparing
def _reachable(url: str) -> str | None:
    """None when ``host:port`` of ``url`` accepts a connection, else the error."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=3):
            return None
    except OSError as exc:
        return str(exc)


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        # As servers bind: a connection of a stopped server in TIME_WAIT does not block the port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _purposes() -> tuple[str, ...]:
    """The stack's databases, by purpose: those the components' roles own (grants.OWNS)."""
    from include.deploy.grants import OWNS

    return tuple(p for owned in OWNS.values() for p in owned)


def _on_server(topo: Topology, statement_for) -> None:
    """Run ``statement_for(database)`` for each of the stack's databases, on the server's ``postgres``."""
    import psycopg2

    conn = psycopg2.connect(f"{topo.pg.rstrip('/')}/postgres")
    conn.autocommit = True
    try:
        cur = conn.cursor()
        for purpose in _purposes():
            statement = statement_for(cur, topo.database(purpose))
            if statement:
                cur.execute(statement)
    finally:
        conn.close()


def drop_databases(topo: Topology) -> None:
    """Drop the stack's databases and roles (``reset``; tests clean up with it)."""
    from include.deploy.grants import drop_roles

    _on_server(topo, lambda cur, name: f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    drop_roles(topo.pg, topo.db_prefix)
    _redis_acl(topo, None)


def _redis_acl(topo: Topology, secret: dict[str, str] | None) -> None:
    """Celery's Redis user: all commands but the administrative ones, with its password; None deletes it."""
    import redis

    client = redis.Redis.from_url(topo.redis)
    try:
        if secret is None:
            client.acl_deluser(topo.redis_user)
        else:
            client.execute_command(
                "ACL",
                "SETUSER",
                topo.redis_user,
                "reset",
                "on",
                f">{secret['REDIS_CELERY_PASSWORD']}",
                "~*",
                "&*",
                "+@all",
                "-@admin",
                "-flushall",
                "-flushdb",
            )
    finally:
        client.close()


def prepare(topo: Topology) -> dict[str, str]:
    """Check the machine's services and ports, create databases, secrets and config files."""
    problems = []
    if err := _reachable(topo.pg):
        problems.append(f"PostgreSQL at {topo.pg} is not reachable ({err}); start it or set SLIPWAY_STACK_PG")
    if err := _reachable(topo.redis):
        problems.append(
            f"Redis at {topo.redis} is not reachable ({err}); start it or set SLIPWAY_STACK_REDIS"
        )
    busy = [f"{name} {port}" for name, port in topo.ports.items() if not _port_free(port)]
    if busy:
        problems.append(
            f"ports in use on 127.0.0.1: {', '.join(busy)}; stop what listens there (make down?) or set "
            "SLIPWAY_<AIRFLOW|MLFLOW|S3|SERVING|PROMETHEUS|ALERTMANAGER>_PORT"
        )
    if problems:
        raise SystemExit("cannot start the stack:\n  - " + "\n  - ".join(problems))
    secret = load_secrets(topo)
    from include.deploy.grants import provision

    provision(topo.pg, topo.db_prefix, secret)
    _redis_acl(topo, secret)
    topo.logs.mkdir(parents=True, exist_ok=True)
    airflow_home = topo.folder / "airflow"
    airflow_home.mkdir(parents=True, exist_ok=True)
    from include.deploy.airflow_passwords import passwords_from, users, write_passwords

    write_passwords(str(airflow_home / "passwords.json"), passwords_from(secret, list(users(AIRFLOW_USERS))))
    write_private(topo.folder / "metrics.key", secret["SLIPWAY_SERVING_METRICS_KEY"])
    (topo.folder / "prometheus.yml").write_text(prometheus_config(topo))
    write_private(topo.folder / "alertmanager.yml", alertmanager_config())
    from include.deploy.mlflow_auth_config import write_config

    write_config(
        str(topo.folder / "mlflow-auth.ini"),
        topo.role_url("mlflow", "mlflow_auth", secret, "postgresql+psycopg2"),
    )
    return secret


# -------------------------------------------------------------------------------------- supervisor
def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5):
            return True
    except urllib.error.HTTPError as exc:
        return exc.code in (401, 403)  # up, and asking for credentials
    except OSError:
        return False


def _start(service: Service, logs: Path) -> subprocess.Popen:
    out = open(logs / f"{service.name}.log", "ab")  # noqa: SIM115 - lives as long as the process
    # The machine's environment without the stack's variables, then what the service needs.
    base = {
        k: v for k, v in os.environ.items() if not k.startswith(("SLIPWAY_", "MLFLOW_", "AWS_", "AIRFLOW"))
    }
    return subprocess.Popen(
        service.command,
        cwd=PROJECT_ROOT,
        env={**base, **service.env},
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _stop(procs: dict[str, subprocess.Popen]) -> None:
    for name, proc in reversed(list(procs.items())):
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                _say(f"{name} did not stop in 60 s; killing it")
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def _wait_healthy(service: Service, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{service.name} exited with {proc.returncode} while starting")
        if service.health is not None and _healthy(service.health):
            return
        time.sleep(1)
    raise RuntimeError(f"{service.name} did not answer {service.health} within {timeout:.0f} s")


def _create_buckets(env: dict[str, str]) -> None:
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    for bucket in BUCKETS:
        if bucket not in existing:
            s3.create_bucket(Bucket=bucket)


def supervise() -> None:
    """Start the services in order, keep them running; SIGTERM stops them in reverse order."""
    topo = topology()
    secret = load_secrets(topo)
    env = {**os.environ, **stack_env(topo, secret)}
    procs: dict[str, subprocess.Popen] = {}
    stopping = False

    def _on_signal(signum, frame):
        nonlocal stopping
        stopping = True
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    code = 0
    try:
        for service in services(topo, secret):
            if service.name == "mlflow":  # the buckets exist before anything writes to them
                _create_buckets(env)
            if service.name == "airflow-apiserver":  # airflow-init: the schema before any component
                _say("airflow-init: airflow db migrate")
                with open(topo.logs / "airflow-init.log", "ab") as out:
                    subprocess.run(
                        [str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
                        cwd=PROJECT_ROOT,
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        check=True,
                    )
            _say(f"starting {service.name}")
            procs[service.name] = _start(service, topo.logs)
            if service.health:
                _wait_healthy(service, procs[service.name])
            if service.name == "mlflow":  # the pipelines' and the service's own users, not the admin
                from include.deploy.mlflow_users import ensure_users

                ensure_users(topo.url("mlflow"), secret["MLFLOW_ADMIN_PASSWORD"], secret)
        _say("all services up")
        (topo.folder / "ready").write_text(json.dumps(sorted(procs)))
        while True:
            dead = [n for n, p in procs.items() if p.poll() is not None]
            if dead:
                _say(f"{', '.join(dead)} exited (see {topo.logs}); stopping the rest")
                code = 1
                break
            time.sleep(1)
    except KeyboardInterrupt:
        _say("stopping")
    except Exception as exc:  # a service that did not start: stop the others, say which
        _say(f"start failed: {exc}")
        code = 1
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        _stop(procs)
        (topo.folder / "ready").unlink(missing_ok=True)
        topo.pidfile.unlink(missing_ok=True)
        _say("stopped")
    sys.exit(code)


# ---------------------------------------------------------------------------------------- commands
def _running(topo: Topology) -> int | None:
    try:
        pid = int(topo.pidfile.read_text())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def up(timeout: float = 600) -> None:
    """Start the stack in the background and return once every service answers."""
    topo = topology()
    if pid := _running(topo):
        _say(f"the stack is already running (supervisor pid {pid}); make down stops it")
        return
    prepare(topo)
    (topo.folder / "ready").unlink(missing_ok=True)
    log = open(topo.logs / "supervisor.log", "ab")  # noqa: SIM115 - handed to the supervisor
    proc = subprocess.Popen(
        [sys.executable, "-m", "include.deploy.production", "supervise"],
        cwd=PROJECT_ROOT,
        env=os.environ,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    topo.pidfile.write_text(str(proc.pid))
    _say(f"starting the stack (logs in {topo.logs})")
    deadline = time.monotonic() + timeout
    while not (topo.folder / "ready").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = (topo.logs / "supervisor.log").read_text()[-3000:]
            if proc.poll() is None:
                down()
            raise SystemExit(f"the stack did not start:\n{tail}\nsee the service logs in {topo.logs}")
        time.sleep(1)
    _say(
        f"Airflow UI   {topo.url('airflow')}  users admin, operator, approver, viewer; passwords "
        f"AIRFLOW_<USER>_PASSWORD in {topo.secrets_file}"
    )
    _say(f"MLflow       {topo.url('mlflow')}  user admin, password MLFLOW_ADMIN_PASSWORD (same file)")
    _say(f"service      {topo.url('serving')}  admin key SLIPWAY_SERVING_ADMIN_KEY (same file)")
    if prometheus_binary():
        _say(f"Prometheus   {topo.url('prometheus')}  alerting rules {RULES.relative_to(PROJECT_ROOT)}")
    else:
        _say("Prometheus   not installed here (apt-get install prometheus); the compose stack has it")
    if prometheus_binary() and alertmanager_binary():
        from include.deploy.alerting import pipeline_connections, routes_summary, webhook_url

        connections = pipeline_connections()
        urls = {c: webhook_url(c) for c in set(connections.values())}
        _say(f"Alertmanager {topo.url('alertmanager')}")
        for line in routes_summary(connections, urls):
            _say(f"             {line}")
    else:
        _say(
            "Alertmanager not installed here (apt-get install prometheus-alertmanager); the compose stack has it"
        )
    _say(f"S3 (moto)    {topo.url('s3')}  buckets {', '.join(BUCKETS)}")
    _say(
        'shell: eval "$(python -m include.deploy.production env)" to point slipway and the AWS/MLflow CLIs at it'
    )
    _say("make down stops it")


def down(timeout: float = 180) -> None:
    """Stop the supervisor, which stops every service."""
    topo = topology()
    pid = _running(topo)
    if pid is None:
        _say("the stack is not running")
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            break
        try:  # reap it when this process started it (tests); otherwise it is not our child
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.5)
    else:
        raise SystemExit(f"the supervisor (pid {pid}) did not stop in {timeout:.0f} s; see {topo.logs}")
    topo.pidfile.unlink(missing_ok=True)
    _say("stopped")


def print_env() -> None:
    """Shell exports pointing ``slipway``, ``mlflow`` and ``aws`` at the running stack."""
    import shlex

    topo = topology()
    secret = load_secrets(topo)
    env = stack_env(topo, secret)
    # The shell manages the service's API keys (slipway keys): the service's database role.
    env["SLIPWAY_SERVING_DB"] = serving_identity(topo, secret)["SLIPWAY_SERVING_DB"]
    for name in sorted(env):
        if name.startswith(
            ("SLIPWAY_", "MLFLOW_", "AWS_", "AIRFLOW_HOME", "AIRFLOW__DATABASE", "AIRFLOW__CORE__F")
        ):
            print(f"export {name}={shlex.quote(env[name])}")


def main(argv: list[str] | None = None) -> None:
    command = (argv if argv is not None else sys.argv[1:] or ["up"])[0]
    actions = {"up": up, "down": down, "supervise": supervise, "env": print_env}
    if command == "reset":
        down()
        drop_databases(topology())
        _say("databases dropped")
        return
    if command not in actions:
        raise SystemExit(f"usage: python -m include.deploy.production [{'|'.join([*actions, 'reset'])}]")
    actions[command]()


if __name__ == "__main__":
    main()
