"""Scores delivered to a PostgreSQL table: created, upserted by entity and month, a month replaced whole,
a re-run changing nothing, a table of another shape refused."""

from __future__ import annotations

from pathlib import Path

import psycopg2
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from include.tasks.score.deliver import DeliveryError, deliver_postgres

pytestmark = pytest.mark.postgres


@pytest.fixture(params=["psycopg2", "psycopg"])
def connect(request):
    """A DB-API connection by either driver: Airflow's PostgresHook hands out psycopg 3's under
    SQLAlchemy 2 when it is installed, psycopg2's otherwise."""
    if request.param == "psycopg2":
        return psycopg2.connect
    import psycopg

    return psycopg.connect


def _scores(path: Path, month: str, keys: list[str], version: int, p: float) -> Path:
    n = len(keys)
    table = pa.table(
        {
            "row": pa.array(range(n), pa.int64()),
            "entity_key": pa.array(keys, pa.string()),
            "month": pa.array([month] * n, pa.string()),
            "model_version": pa.array([version] * n, pa.int32()),
            "data_version": pa.array(["abc"] * n, pa.string()),
            "probability": pa.array([p] * n, pa.float64()),
            "decision": pa.array([1] * n, pa.int8()),
        }
    )
    pq.write_table(table, path)
    return path


def _read(url: str, sql: str) -> list[tuple]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall()


def test_a_month_is_upserted_replaced_whole_and_a_rerun_changes_nothing(pg_db, tmp_path, connect):
    keys = [f"k{i:03d}" for i in range(120)]
    first = _scores(tmp_path / "a.parquet", "2025-12", keys, 3, 0.2)
    other = _scores(tmp_path / "b.parquet", "2025-11", keys[:10], 3, 0.9)
    conn = psycopg2.connect(pg_db.url)
    with conn.cursor() as cur:
        cur.execute("CREATE SCHEMA analytics")
    conn.commit()
    for path, month in ((first, "2025-12"), (other, "2025-11"), (first, "2025-12")):
        conn = connect(pg_db.url)
        out = deliver_postgres(conn, "analytics.telco_scores", path, month, keyed=True)
        conn.close()
        assert out["table"] == "analytics.telco_scores"
    rows = _read(
        pg_db.url,
        "SELECT month, COUNT(*), MIN(probability) FROM analytics.telco_scores GROUP BY month ORDER BY month",
    )
    assert rows == [("2025-11", 10, 0.9), ("2025-12", 120, 0.2)]
    # A new champion scores 2025-12 again; two customers are gone from its population: the month is its rows.
    second = _scores(tmp_path / "c.parquet", "2025-12", keys[2:], 4, 0.7)
    conn = connect(pg_db.url)
    out = deliver_postgres(conn, "analytics.telco_scores", second, "2025-12", keyed=True)
    conn.close()
    assert (out["rows"], out["removed"]) == (118, 2)
    rows = _read(
        pg_db.url,
        "SELECT month, COUNT(*), MIN(model_version), MAX(probability) FROM analytics.telco_scores GROUP BY month ORDER BY month",
    )
    assert rows == [("2025-11", 10, 3, 0.9), ("2025-12", 118, 4, 0.7)]


def test_a_table_of_another_shape_is_refused_and_left_as_it_was(pg_db, tmp_path, connect):
    with psycopg2.connect(pg_db.url) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE telco_scores (entity_key TEXT, month TEXT, churn_risk REAL)")
        cur.execute("INSERT INTO telco_scores VALUES ('x', '2025-12', 0.5)")
    path = _scores(tmp_path / "a.parquet", "2025-12", ["a", "b"], 3, 0.2)
    conn = connect(pg_db.url)
    with pytest.raises(DeliveryError, match="telco_scores has the columns"):
        deliver_postgres(conn, "telco_scores", path, "2025-12", keyed=True)
    conn.close()
    assert _read(pg_db.url, "SELECT * FROM telco_scores") == [("x", "2025-12", 0.5)]
