"""`make up`'s native production topology, for real: the train DAG triggered through the REST API and
run by a Celery worker (PostgreSQL metadata, Redis broker), MLflow over HTTP with authentication and
artifacts on S3 (moto), the service's metrics scraped by Prometheus, every listener on loopback, and
`make down` stopping everything."""

from __future__ import annotations

import base64
import json
import os
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import pytest

from tests.support.processes import LOOPBACK, ROOT, clean_env, descendants, free_port, listening, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

REDIS_DB = 11  # the stack's broker database, flushed at the end
# Planted where an operator might put a secret: an Airflow connection's password and a DAG run's
# argument (its conf). Neither, nor any of the stack's own secrets, may reach a log, a rendered
# template, an MLflow tag or param, or the service's log.
PLANTED_CONNECTION = f"planted-connection-{uuid.uuid4().hex}"
PLANTED_ARGUMENT = f"planted-argument-{uuid.uuid4().hex}"


def _topology(env: dict, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "include.deploy.production", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"topology {args} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def _http(url: str, *, method="GET", body=None, headers=None, timeout=30):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url, data, {"Content-Type": "application/json", **(headers or {})}, method=method
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw[:1] in (b"{", b"[") else raw.decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    home = tmp_path_factory.mktemp("topology")
    ports = {
        name: free_port() for name in ("AIRFLOW", "MLFLOW", "S3", "SERVING", "PROMETHEUS", "ALERTMANAGER")
    }
    env = clean_env(
        SLIPWAY_HOME=str(home),
        SLIPWAY_STACK_DB_PREFIX=f"slipway_topo_{uuid.uuid4().hex[:8]}",
        SLIPWAY_STACK_REDIS=f"redis://127.0.0.1:6379/{REDIS_DB}",
        **{f"SLIPWAY_{name}_PORT": str(port) for name, port in ports.items()},
    )
    env.pop("SLIPWAY_PII_KEY")  # the stack's own secret, from its secrets file
    try:
        up = _topology(env, "up")
        exports = _topology(env, "env").stdout
        stack_env = dict(clean_env())
        stack_env.pop("SLIPWAY_PII_KEY")
        for line in exports.splitlines():
            name, _, value = line.removeprefix("export ").partition("=")
            stack_env[name] = shlex.split(value)[0] if value else ""
        secrets = dict(
            line.split("=", 1)
            for line in (home / "stack" / "secrets.env").read_text().splitlines()
            if "=" in line
        )
        yield {
            "home": home,
            "env": env,
            "stack_env": stack_env,
            "up": up.stdout,
            "secrets": secrets,
            "url": {name.lower(): f"http://127.0.0.1:{port}" for name, port in ports.items()},
        }
    finally:
        pid = (
            (home / "stack" / "supervisor.pid").read_text()
            if (home / "stack" / "supervisor.pid").exists()
            else None
        )
        subprocess.run(
            [sys.executable, "-m", "include.deploy.production", "reset"], cwd=ROOT, env=env, timeout=300
        )
        if pid:
            assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
        import redis

        redis.Redis(db=REDIS_DB).flushdb()


def _token(stack) -> str:
    status, body = _http(
        f"{stack['url']['airflow']}/auth/token",
        method="POST",
        body={"username": "admin", "password": stack["secrets"]["AIRFLOW_ADMIN_PASSWORD"]},
    )
    assert status in (200, 201), body
    return body["access_token"]


def _api(stack, method: str, path: str, body=None):
    status, out = _http(
        f"{stack['url']['airflow']}{path}",
        method=method,
        body=body,
        headers={"Authorization": f"Bearer {_token(stack)}"},
    )
    assert status < 300, (method, path, status, out)
    return out


def test_the_secrets_are_private_and_never_printed(stack):
    path = stack["home"] / "stack" / "secrets.env"
    assert oct(path.stat().st_mode)[-3:] == "600"
    for name in (
        "AIRFLOW_ADMIN_PASSWORD",
        "MLFLOW_ADMIN_PASSWORD",
        "SLIPWAY_SERVING_ADMIN_KEY",
        "SLIPWAY_PII_KEY",
    ):
        assert stack["secrets"][name] not in stack["up"], name
    assert str(path) in stack["up"]


def test_airflow_refuses_anonymous_and_a_wrong_password(stack):
    status, _ = _http(f"{stack['url']['airflow']}/api/v2/dags")
    assert status == 401
    status, _ = _http(
        f"{stack['url']['airflow']}/auth/token",
        method="POST",
        body={"username": "admin", "password": "admin"},
    )
    assert status == 401


def test_mlflow_needs_credentials(stack):
    search = f"{stack['url']['mlflow']}/api/2.0/mlflow/experiments/search?max_results=10"
    assert _http(search)[0] == 401
    wrong = base64.b64encode(b"admin:wrong").decode()
    assert _http(search, headers={"Authorization": f"Basic {wrong}"})[0] == 401
    right = base64.b64encode(f"admin:{stack['secrets']['MLFLOW_ADMIN_PASSWORD']}".encode()).decode()
    assert _http(search, headers={"Authorization": f"Basic {right}"})[0] == 200


def test_the_train_dag_runs_on_celery_with_lineage_in_mlflow_and_artifacts_on_s3(stack, monkeypatch):
    import boto3
    import mlflow

    env = stack["stack_env"]
    seeded = subprocess.run(
        [sys.executable, "-m", "include.cli", "seed"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert seeded.returncode == 0, seeded.stderr[-3000:]
    dag = "telco_churn__train"
    wait_until(
        lambda: _api(stack, "GET", f"/api/v2/dags/{dag}"), 180, "the DAG parsed", retry_on=(AssertionError,)
    )
    _api(
        stack,
        "POST",
        "/api/v2/connections",
        {
            "connection_id": "slipway_planted",
            "conn_type": "http",
            "host": "127.0.0.1",
            "password": PLANTED_CONNECTION,
        },
    )
    _api(stack, "PATCH", f"/api/v2/dags/{dag}", {"is_paused": False})
    conf = {"month": "2025-12", "note": PLANTED_ARGUMENT}
    run = _api(stack, "POST", f"/api/v2/dags/{dag}/dagRuns", {"logical_date": None, "conf": conf})
    run_id = stack["run_id"] = run["dag_run_id"]
    state = wait_until(
        lambda: (
            (s := _api(stack, "GET", f"/api/v2/dags/{dag}/dagRuns/{run_id}")["state"])
            in ("success", "failed")
            and s
        ),
        900,
        "the training run",
        every=5,
    )
    tis = _api(stack, "GET", f"/api/v2/dags/{dag}/dagRuns/{run_id}/taskInstances")["task_instances"]
    assert state == "success", {t["task_id"]: t["state"] for t in tis}
    _api(stack, "PATCH", f"/api/v2/dags/{dag}", {"is_paused": True})
    # Run by the Celery worker: its log names the tasks it executed.
    worker_log = (stack["home"] / "stack" / "logs" / "airflow-worker.log").read_text()
    assert "celery@" in worker_log and "execute_workload" in worker_log, worker_log[-2000:]
    assert {t["task_id"] for t in tis} >= {"ingest_batch", "curate_feedback", "register_model"}

    lineage = subprocess.run(
        [sys.executable, "-m", "include.cli", "lineage", "telco_churn@candidate", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert lineage.returncode == 0, lineage.stderr[-3000:]
    rec = json.loads(lineage.stdout[lineage.stdout.index("{") :])
    assert rec["dag_run"]["run_id"] == run_id and rec["dag_run"]["state"] == "success"
    latest = {}
    for t in sorted(rec["tasks"], key=lambda t: t["try_number"]):
        latest[t["task_id"]] = t
    retried = [
        (t["task_id"], t["try_number"], t["state"], t["error"])
        for t in rec["tasks"]
        if t["state"] != "success"
    ]
    # Every task's last try succeeded; an earlier try that failed (a retry) is on record too, with its error.
    assert len(latest) == 15 and {t["state"] for t in latest.values()} == {"success"}, retried
    print(f"tries that failed and were retried: {retried}")
    assert rec["blessing"]["state"] == "passed" and rec["data_version"]["uri"].startswith("s3://dvc/slipway/")

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", stack["secrets"]["MLFLOW_ADMIN_PASSWORD"])
    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    mv = client.get_model_version_by_alias("telco_churn", "candidate")
    assert mv.source
    s3 = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="mlflow", Prefix="artifacts/").get("Contents", [])]
    assert any(k.endswith("model.onnx") for k in keys), keys[:20]
    lake = [o["Key"] for o in s3.list_objects_v2(Bucket="lake", Prefix="slipway/").get("Contents", [])]
    assert "slipway/telco_churn/batches/month=2025-12/batch.parquet" in lake
    # Every write requested server-side encryption: the lake's, DVC's pushes and MLflow's artifacts.
    dvc = [o["Key"] for o in s3.list_objects_v2(Bucket="dvc", Prefix="slipway/").get("Contents", [])]
    onnx = next(k for k in keys if k.endswith("model.onnx"))
    for bucket, key in (
        ("lake", "slipway/telco_churn/batches/month=2025-12/batch.parquet"),
        ("dvc", dvc[0]),
        ("mlflow", onnx),
    ):
        assert s3.head_object(Bucket=bucket, Key=key).get("ServerSideEncryption") == "AES256", (bucket, key)


def test_no_secret_reaches_logs_rendered_templates_mlflow_or_the_service_log(stack, monkeypatch):
    import mlflow

    secrets = [PLANTED_CONNECTION, PLANTED_ARGUMENT] + [
        stack["secrets"][name]
        for name in (
            "AIRFLOW_ADMIN_PASSWORD",
            "MLFLOW_ADMIN_PASSWORD",
            "AIRFLOW_FERNET_KEY",
            "AIRFLOW_API_SECRET_KEY",
            "AIRFLOW_JWT_SECRET",
            "SLIPWAY_PII_KEY",
            "SLIPWAY_S3_SECRET_KEY",
            "SLIPWAY_SERVING_ADMIN_KEY",
            "SLIPWAY_SERVING_METRICS_KEY",
        )
    ]
    run_id = stack.get("run_id")
    assert run_id, "the training test runs first and triggers the run this test searches"
    # Task logs, the services' logs (the inference service's included), the supervisor's: every text
    # file the stack wrote, except the secret files themselves.
    own_secret_files = {"secrets.env", "passwords.json", "metrics.key", "mlflow-auth.ini"}
    searched = 0
    for path in (stack["home"] / "stack").rglob("*"):
        if path.is_file() and path.name not in own_secret_files and "prometheus" not in path.parts:
            text = path.read_bytes().decode(errors="replace")
            searched += 1
            for secret in secrets:
                assert secret not in text, f"a secret in {path}"
    task_logs = list((stack["home"] / "stack" / "airflow" / "logs").rglob("*.log"))
    assert searched > 20 and len(task_logs) >= 15, (searched, len(task_logs))
    # Rendered templates of every task instance of the run.
    dag = "telco_churn__train"
    for ti in _api(stack, "GET", f"/api/v2/dags/{dag}/dagRuns/{run_id}/taskInstances")["task_instances"]:
        rendered = json.dumps(ti.get("rendered_fields"))
        for secret in secrets:
            assert secret not in rendered, ti["task_id"]
    # MLflow: every run's tags and params, every version's tags.
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", stack["secrets"]["MLFLOW_ADMIN_PASSWORD"])
    client = mlflow.MlflowClient(tracking_uri=stack["stack_env"]["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("telco_churn")
    runs = client.search_runs([exp.experiment_id], max_results=500)
    recorded = json.dumps([[r.data.tags, r.data.params] for r in runs])
    recorded += json.dumps([mv.tags for mv in client.search_model_versions("name = 'telco_churn'")])
    assert len(runs) >= 16
    for secret in secrets:
        assert secret not in recorded


def test_each_component_logs_in_as_itself_with_only_its_grants(stack):
    """Read back from PostgreSQL's catalogue, MLflow's permissions and Redis's ACL, after a training run."""
    import psycopg2
    import redis

    prefix = stack["env"]["SLIPWAY_STACK_DB_PREFIX"]
    admin = psycopg2.connect("postgresql://postgres@127.0.0.1:5432/postgres")
    cur = admin.cursor()
    cur.execute(
        "SELECT DISTINCT usename, datname FROM pg_stat_activity WHERE datname LIKE %s", (f"{prefix}_%",)
    )
    sessions = {(u.removeprefix(f"{prefix}_"), d.removeprefix(f"{prefix}_")) for u, d in cur.fetchall()}
    # Every component's sessions are its own role's, each on a database it may reach; none is the superuser.
    assert {("airflow", "airflow"), ("mlflow", "mlflow"), ("serving", "serving")} <= sessions, sessions
    assert sessions <= {
        ("airflow", "airflow"),
        ("airflow", "serving"),
        ("mlflow", "mlflow"),
        ("mlflow", "mlflow_auth"),
        ("serving", "serving"),
    }, sessions
    cur.execute(
        "SELECT rolname FROM pg_roles WHERE rolname LIKE %s AND (rolsuper OR rolcreatedb OR rolcreaterole)",
        (f"{prefix}_%",),
    )
    assert cur.fetchall() == []
    cur.execute(
        "SELECT has_database_privilege(%s, %s, 'CONNECT')", (f"{prefix}_serving", f"{prefix}_airflow")
    )
    assert cur.fetchone() == (False,)
    cur.execute("SELECT has_database_privilege('public', %s, 'CONNECT')", (f"{prefix}_serving",))
    assert cur.fetchone() == (False,)
    admin.close()
    serving = psycopg2.connect(f"postgresql://{prefix}_airflow@127.0.0.1:5432/{prefix}_serving")
    with pytest.raises(psycopg2.Error, match="permission denied"):
        serving.cursor().execute("SELECT * FROM slipway_api_keys")  # Airflow's role: never the keys
    serving.close()

    secrets, mlflow = stack["secrets"], stack["url"]["mlflow"]

    def as_user(user: str, password: str, path: str, body=None):
        auth = base64.b64encode(f"{user}:{password}".encode()).decode()
        return _http(
            f"{mlflow}{path}",
            method="POST" if body else "GET",
            body=body,
            headers={"Authorization": f"Basic {auth}"},
        )

    # The service reads the registry (what the pipelines' user registered) and may write nothing.
    status, found = as_user(
        "serving", secrets["MLFLOW_SERVING_PASSWORD"], "/api/2.0/mlflow/registered-models/search"
    )
    assert status == 200 and [m["name"] for m in found["registered_models"]] == ["telco_churn"], found
    status, _ = as_user(
        "serving",
        secrets["MLFLOW_SERVING_PASSWORD"],
        "/api/2.0/mlflow/registered-models/create",
        {"name": "planted"},
    )
    assert status == 403
    status, _ = as_user(
        "serving",
        secrets["MLFLOW_SERVING_PASSWORD"],
        "/api/2.0/mlflow/registered-models/set-tag",
        {"name": "telco_churn", "key": "planted", "value": "x"},
    )
    assert status == 403
    # The pipelines' user is no admin: it cannot create users.
    status, _ = as_user(
        "pipelines",
        secrets["MLFLOW_PIPELINES_PASSWORD"],
        "/api/2.0/mlflow/users/create",
        {"username": "eve", "password": "x" * 12},
    )
    assert status == 403

    # Redis: Celery's own user needs its password, and may not flush or reconfigure the server.
    user = f"{prefix}_celery"
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(db=REDIS_DB, username=user, password="wrong").ping()
    celery = redis.Redis(db=REDIS_DB, username=user, password=secrets["REDIS_CELERY_PASSWORD"])
    assert celery.ping()
    for command in (("FLUSHALL",), ("CONFIG", "SET", "dir", "/tmp"), ("ACL", "LIST")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            celery.execute_command(*command)
    celery.close()


def test_prometheus_scrapes_the_service_with_its_metrics_key(stack):
    assert _http(f"{stack['url']['serving']}/metrics")[0] == 401  # anonymous: refused

    def scraped():
        status, body = _http(f"{stack['url']['prometheus']}/api/v1/targets")
        targets = body["data"]["activeTargets"] if status == 200 else []
        return [t for t in targets if t["health"] == "up"] or None

    [target] = wait_until(scraped, 60, "Prometheus scraping the service", every=2)
    assert target["scrapeUrl"] == f"{stack['url']['serving']}/metrics"
    status, body = _http(f"{stack['url']['prometheus']}/api/v1/query?query=slipway_log_queue_depth")
    assert status == 200 and body["data"]["result"], body
    # The shipped alerting rules are loaded, and sent to the stack's Alertmanager
    status, body = _http(f"{stack['url']['prometheus']}/api/v1/rules?type=alert")
    loaded = {r["name"] for g in body["data"]["groups"] for r in g["rules"]}
    assert {"SlipwayServiceDown", "SlipwayDagRunFailed", "SlipwayApprovalWaiting"} <= loaded, loaded

    def alertmanager():
        status, body = _http(f"{stack['url']['prometheus']}/api/v1/alertmanagers")
        return status == 200 and body["data"]["activeAlertmanagers"]

    [am] = wait_until(alertmanager, 60, "Prometheus to find the stack's Alertmanager", every=2)
    assert am["url"].startswith(f"{stack['url']['alertmanager']}/")
    assert _http(f"{stack['url']['alertmanager']}/-/ready")[0] == 200


def test_every_listener_is_on_loopback_and_down_stops_everything(stack):
    pid = int((stack["home"] / "stack" / "supervisor.pid").read_text())
    children = descendants(pid)
    addresses = listening(children)
    assert len(addresses) >= 5 and set(addresses) <= LOOPBACK, addresses
    out = _topology(stack["env"], "down").stdout
    assert "stopped" in out
    time.sleep(1)
    alive = [
        p
        for p in children
        if os.path.exists(f"/proc/{p}") and open(f"/proc/{p}/stat").read().split()[2] != "Z"
    ]
    assert not alive
    assert "Traceback" not in (stack["home"] / "stack" / "logs" / "supervisor.log").read_text()
