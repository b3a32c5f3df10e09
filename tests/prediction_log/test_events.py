"""``slipway_events``: what Airflow records when its notifications go out, as the service reads it for
Prometheus (failed runs, rollbacks, the oldest open approval's wait)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from include.prediction_log import events
from tests.support.pg import create_databases, drop_databases, pg_admin


def test_counts_and_the_open_approval(log_url):
    assert events.summary(log_url, ["a"]) == {"a": events.Summary({}, 0, 0.0)}  # no table yet
    events.record(log_url, "a", events.FAILED, "a__train", "r1", "gate failed")
    events.record(log_url, "a", events.FAILED, "a__score", "r2")
    events.record(log_url, "a", events.FAILED, "a__train", "r3")
    events.record(log_url, "a", events.ROLLBACK, "a__rollout", "r4", "canary breach")
    events.record(log_url, "a", events.APPROVAL, "a__rollout", "r5")
    events.record(log_url, "b", events.APPROVAL, "b__rollout", "r6")
    later = datetime.now(UTC) + timedelta(hours=5)
    found = events.summary(log_url, ["a", "b", "c"], now=later)
    assert found["a"].failed_runs == {"a__train": 2, "a__score": 1}
    assert found["a"].rollbacks == 1
    assert 5 * 3600 - 60 < found["a"].approval_waiting_s <= 5 * 3600 + 1
    assert found["c"] == events.Summary({}, 0, 0.0)
    events.close_approval(log_url, "a__rollout", "r5")  # answered
    assert events.summary(log_url, ["a"], now=later)["a"].approval_waiting_s == 0.0
    # A run that fails while its approval waits: nobody can answer it any more.
    assert events.summary(log_url, ["b"], now=later)["b"].approval_waiting_s > 0
    events.record(log_url, "b", events.FAILED, "b__rollout", "r6", "the approval's task failed")
    assert events.summary(log_url, ["b"], now=later)["b"].approval_waiting_s == 0.0
    with pytest.raises(ValueError, match="not one of"):
        events.record(log_url, "a", "exploded", "a__train", "r7")


@pytest.mark.postgres
def test_the_service_role_reads_what_airflow_records():
    """On PostgreSQL the table is Airflow's (like the monitor's); the database's owner, the service,
    is granted SELECT on it, and nothing more."""
    import psycopg2

    tag = uuid.uuid4().hex[:8]
    db, owner, airflow = f"slipway_events_{tag}", f"svc_{tag}", f"af_{tag}"
    admin = pg_admin()
    cur = admin.cursor()
    cur.execute(f'CREATE ROLE "{owner}" LOGIN')
    cur.execute(f'CREATE ROLE "{airflow}" LOGIN')
    create_databases(db)
    try:
        cur.execute(f'ALTER DATABASE "{db}" OWNER TO "{owner}"')
        conn = psycopg2.connect(f"postgresql://postgres@127.0.0.1:5432/{db}")
        conn.autocommit = True
        conn.cursor().execute(f'GRANT USAGE, CREATE ON SCHEMA public TO "{airflow}"')
        conn.cursor().execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        conn.close()
        as_airflow = f"postgresql://{airflow}@127.0.0.1:5432/{db}"
        as_service = f"postgresql://{owner}@127.0.0.1:5432/{db}"
        events.record(as_airflow, "a", events.FAILED, "a__train", "r1")
        assert events.summary(as_service, ["a"])["a"].failed_runs == {"a__train": 1}
        svc = psycopg2.connect(as_service)
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            svc.cursor().execute("DELETE FROM slipway_events")
        svc.close()
    finally:
        drop_databases(db)
        cur.execute(f'DROP ROLE IF EXISTS "{owner}"')
        cur.execute(f'DROP ROLE IF EXISTS "{airflow}"')
        admin.close()
