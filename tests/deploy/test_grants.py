"""The stack's PostgreSQL roles, provisioned on the machine's server and read back from its catalogue:
each component reaches its own databases only, the service's role cannot read Airflow's or MLflow's
data, Airflow's role reads the prediction log (and adds the rows its batch runs scored) but not the API
keys, and no role is privileged."""

from __future__ import annotations

import uuid

import psycopg2
import pytest

from include.deploy import grants
from include.prediction_log.schema import LOG_TABLES
from include.prediction_log.writer import PredictionLog
from include.serving.keys import KeyStore
from tests.support.pg import pg_admin

pytestmark = [pytest.mark.postgres]

ADMIN = "postgresql://postgres@127.0.0.1:5432"


@pytest.fixture
def provisioned():
    prefix = f"slipway_grants_{uuid.uuid4().hex[:8]}"
    passwords = {s: uuid.uuid4().hex for s in grants.PASSWORD_SECRETS.values()}
    # A database from before the roles, made by the administrator: handed over to its owner.
    conn = pg_admin()
    conn.cursor().execute(f'CREATE DATABASE "{prefix}_mlflow"')
    conn.close()
    old = psycopg2.connect(f"{ADMIN}/{prefix}_mlflow")
    old.autocommit = True
    old.cursor().execute("CREATE TABLE experiments (id SERIAL PRIMARY KEY, name TEXT)")
    old.close()
    grants.provision(ADMIN, prefix, passwords)
    grants.provision(ADMIN, prefix, passwords)  # idempotent: make up runs it on every start
    url = {
        (c, p): grants.component_url(ADMIN, prefix, c, p, passwords[grants.PASSWORD_SECRETS[c]], "postgresql")
        for c, ps in grants.OWNS.items()
        for p in ps
    }
    url[("airflow", "serving")] = grants.component_url(
        ADMIN, prefix, "airflow", "serving", passwords["PG_AIRFLOW_PASSWORD"], "postgresql"
    )
    try:
        yield prefix, url
    finally:
        conn = pg_admin()
        cur = conn.cursor()
        for purpose in ("airflow", "mlflow", "mlflow_auth", "serving"):
            cur.execute(f'DROP DATABASE IF EXISTS "{prefix}_{purpose}" WITH (FORCE)')
        conn.close()
        grants.drop_roles(ADMIN, prefix)


def _cannot_connect(url: str) -> str:
    with pytest.raises(psycopg2.OperationalError) as err:
        psycopg2.connect(url).close()
    return str(err.value)


def test_each_component_reaches_its_own_databases_only(provisioned):
    prefix, url = provisioned
    conn = pg_admin()
    cur = conn.cursor()
    cur.execute(
        "SELECT rolname, rolsuper, rolcreatedb, rolcreaterole, rolbypassrls FROM pg_roles WHERE rolname LIKE %s",
        (f"{prefix}_%",),
    )
    roles = {r[0]: r[1:] for r in cur.fetchall()}
    assert set(roles) == {f"{prefix}_airflow", f"{prefix}_mlflow", f"{prefix}_serving"}
    assert all(flags == (False, False, False, False) for flags in roles.values()), roles
    cur.execute(
        "SELECT r.rolname, d.datname, has_database_privilege(r.rolname, d.datname, 'CONNECT') "
        "FROM pg_roles r CROSS JOIN pg_database d WHERE r.rolname LIKE %s AND d.datname LIKE %s",
        (f"{prefix}_%", f"{prefix}_%"),
    )
    may = {(r.removeprefix(f"{prefix}_"), d.removeprefix(f"{prefix}_")) for r, d, ok in cur.fetchall() if ok}
    assert may == {
        ("airflow", "airflow"),
        ("airflow", "serving"),
        ("mlflow", "mlflow"),
        ("mlflow", "mlflow_auth"),
        ("serving", "serving"),
    }
    conn.close()
    serving_role = url[("serving", "serving")]
    for other in ("airflow", "mlflow", "mlflow_auth"):
        assert "permission denied" in _cannot_connect(serving_role.rsplit("/", 1)[0] + f"/{prefix}_{other}")
    # The table the administrator made before belongs to MLflow's role now.
    mlflow = psycopg2.connect(url[("mlflow", "mlflow")])
    mlflow.cursor().execute("INSERT INTO experiments (name) VALUES ('x')")
    mlflow.commit()
    mlflow.close()


def test_airflow_reads_the_log_and_keeps_the_monitor_but_never_sees_the_keys(provisioned, monkeypatch):
    prefix, url = provisioned
    # The service creates its tables at start, and lets Airflow's role read the log's.
    monkeypatch.setenv("SLIPWAY_SERVING_LOG_READERS", f"{prefix}_airflow")
    log = PredictionLog(url[("serving", "serving")])
    log.start()
    log.close()
    keys = KeyStore(url[("serving", "serving")])
    keys.start()
    keys.create(["predict"], "p", "test")

    airflow = psycopg2.connect(url[("airflow", "serving")])
    cur = airflow.cursor()
    for table in LOG_TABLES:
        cur.execute(f"SELECT count(*) FROM {table}")
    cur.execute("CREATE TABLE IF NOT EXISTS slipway_monitor (id INTEGER)")  # the monitor's own table
    airflow.commit()
    # A batch run records the rows it scored, as Airflow's role, in their own table only.
    from include.prediction_log.batch import BatchRecorder

    with BatchRecorder(url[("airflow", "serving")], "p", 1, "2025-12", "p__score/r") as rec:
        rec.add([("p/2025-12/v1/k", "k", "{}", 0.5, 1.0, None)])
        rec.commit()
    for forbidden in (
        "SELECT * FROM slipway_api_keys",
        "INSERT INTO slipway_feedback (pipeline) VALUES ('x')",
        "INSERT INTO slipway_predictions (request_id) VALUES ('x')",
        "DELETE FROM slipway_predictions",
        "DELETE FROM slipway_batch_predictions",
        "UPDATE slipway_batch_predictions SET probability = 0",
        "DROP TABLE slipway_predictions",
    ):
        with pytest.raises(psycopg2.Error, match="permission denied|must be owner"):
            cur.execute(forbidden)
        airflow.rollback()
    airflow.close()
