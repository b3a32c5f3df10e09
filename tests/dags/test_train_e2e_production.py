"""End to end in production mode: Airflow metadata and the MLflow backend on the machine's
PostgreSQL, the landing zone, lake, DVC remote and MLflow artifacts on S3 (moto's standalone
server on loopback, started and stopped by the test session). Same code, other environment."""

from __future__ import annotations

import uuid

import pytest

from tests.support.pg import create_databases, drop_databases
from tests.support.processes import clean_env, lineage, mlflow_client, slipway, task_runs

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

PG = "postgresql+psycopg2://postgres@127.0.0.1:5432"


@pytest.fixture(scope="module")
def databases():
    suffix = uuid.uuid4().hex[:8]
    names = {"airflow": f"slipway_e2e_{suffix}_airflow", "mlflow": f"slipway_e2e_{suffix}_mlflow"}
    create_databases(*names.values())  # CI starts PostgreSQL: unreachable fails here, loudly
    yield names
    drop_databases(*names.values())


@pytest.fixture(scope="module")
def production(tmp_path_factory, databases, moto_s3):
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=moto_s3,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    for bucket in ("landing", "lake", "dvc", "mlflow"):
        s3.create_bucket(Bucket=bucket)
    home = tmp_path_factory.mktemp("prod-local")  # only the DVC workspace and Airflow logs stay local
    env = clean_env(
        SLIPWAY_HOME=str(home),
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"{PG}/{databases['airflow']}",
        MLFLOW_TRACKING_URI=f"{PG}/{databases['mlflow']}",
        SLIPWAY_MLFLOW_ARTIFACT_URI="s3://mlflow/artifacts",
        SLIPWAY_LANDING_URI="s3://landing/slipway",
        SLIPWAY_LAKE_URI="s3://lake/slipway",
        SLIPWAY_DVC_REMOTE_URI="s3://dvc/slipway",
        AWS_ENDPOINT_URL=moto_s3,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    slipway(env, "seed")
    slipway(env, "run", "telco_churn", "--month", "2025-12")
    return {"env": env, "s3": s3, "home": home, "tracking": env["MLFLOW_TRACKING_URI"], "dbs": databases}


def _keys(s3, bucket):
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))


def test_everything_landed_in_postgres_and_s3(production):
    s3 = production["s3"]
    lake = _keys(s3, "lake")
    assert "slipway/telco_churn/batches/month=2025-12/batch.parquet" in lake
    assert "slipway/telco_churn/snapshots/month=2025-12/snapshot.parquet" in lake
    assert any(k.startswith("slipway/files/md5/") for k in _keys(s3, "dvc"))
    assert any(k.endswith("model.skops") for k in _keys(s3, "mlflow"))
    # Nothing of the lake or the DVC remote was written locally.
    assert not (production["home"] / "lake").exists()
    assert not (production["home"] / "dvc-remote").exists()
    assert not (production["home"] / "mlflow").exists()


def test_lineage_and_runs_in_the_postgres_backed_mlflow(production):
    rec = lineage(production["env"], "telco_churn@candidate")
    assert rec["model"]["version"] == 1 and rec["dag_run"]["state"] == "success"
    assert rec["data_version"]["uri"].startswith("s3://dvc/slipway/files/md5/")
    client = mlflow_client(production["tracking"])
    runs = task_runs(client, "telco_churn", "telco_churn__train")
    assert len(runs) == 15 and all(r.info.status == "FINISHED" for r in runs)


def test_airflow_metadata_is_in_postgres(production):
    import psycopg2

    conn = psycopg2.connect(host="127.0.0.1", user="postgres", dbname=production["dbs"]["airflow"])
    with conn, conn.cursor() as cur:
        cur.execute("SELECT state FROM dag_run WHERE dag_id = 'telco_churn__train'")
        assert [r[0] for r in cur.fetchall()] == ["success"]
        cur.execute(
            "SELECT count(*) FROM task_instance WHERE dag_id = 'telco_churn__train' AND state = 'success'"
        )
        assert cur.fetchone()[0] == 15
    conn.close()
