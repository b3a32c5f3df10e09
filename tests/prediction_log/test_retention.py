"""Retention and erasure in the prediction log: the purge deletes exactly what is older than its periods,
forget removes one entity's rows and nothing else and stores no raw id, and on PostgreSQL Airflow's role
deletes only through the two functions, which refuse a cut-off within the last day."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from include.database import database
from include.prediction_log import retention
from include.prediction_log.rows import iso_utc
from include.prediction_log.schema import create_schema
from include.tasks.score.population import entity_hasher

NOW = datetime.now(UTC)
KEY = b"k" * 32
RAW = "CUST-7788-QX"  # an entity id as a population holds it
HASHED = entity_hasher(KEY)(RAW)
OTHER = entity_hasher(KEY)("CUST-0001-AA")


def _create(url: str, readers: list[str] | None = None) -> None:
    db = database(url)
    conn = db.connect()
    try:
        create_schema(db, conn, readers)
    finally:
        conn.close()


def _fill(url: str) -> None:
    """Rows of two ages (400+ and 10 days) for two entities, served and batch-scored, with failures
    and labels; and a row of another pipeline."""
    db = database(url)
    p = db.param
    old, recent = iso_utc(NOW - timedelta(days=420)), iso_utc(NOW - timedelta(days=10))
    pred = (
        "INSERT INTO slipway_predictions (request_id, variant, pipeline, entity_key, model_version, served, inputs, "
        f"probability, decision, latency_ms, created_at) VALUES ({', '.join([p] * 11)})"
    )
    batch = (
        "INSERT INTO slipway_batch_predictions (request_id, pipeline, entity_key, model_version, month, inputs, "
        f"probability, decision, created_at, dag_run) VALUES ({', '.join([p] * 10)})"
    )
    fail = (
        "INSERT INTO slipway_failures (request_id, variant, pipeline, model_version, served, reason, created_at) "
        f"VALUES ({', '.join([p] * 7)})"
    )
    fb = (
        f"INSERT INTO slipway_feedback (request_id, pipeline, label, received_at) VALUES ({p}, {p}, {p}, {p})"
    )
    with db.writing() as conn:
        cur = conn.cursor()
        for who, ent in (("a", HASHED), ("b", OTHER)):
            for age, at in (("old", old), ("new", recent)):
                rid = f"{who}-{age}"
                cur.execute(pred, (rid, "champion", "telco_churn", ent, 3, 1, "{}", 0.5, 1.0, 1.0, at))
                cur.execute(fail, (rid, "challenger", "telco_churn", 4, 0, "ValueError", at))
                cur.execute(fb, (rid, "telco_churn", 1.0, at))
                brid = f"telco_churn/2025-01/v3/{ent}" if age == "old" else f"telco_churn/2025-12/v3/{ent}"
                cur.execute(batch, (brid, "telco_churn", ent, 3, "2025-12", "{}", 0.4, 0.0, at, "d/r"))
                cur.execute(fb, (brid, "telco_churn", 0.0, at))
        cur.execute(pred, ("z-old", "champion", "other_pipe", HASHED, 1, 1, "{}", 0.5, 1.0, 1.0, old))


def _ids(url: str, table: str) -> set[str]:
    with database(url).reading() as conn:
        cur = conn.cursor()
        cur.execute(f"SELECT request_id FROM {table}")
        return {r[0] for r in cur.fetchall()}


def _erasures(url: str) -> list[tuple]:
    with database(url).reading() as conn:
        cur = conn.cursor()
        cur.execute("SELECT pipeline, kind, counts FROM slipway_erasures ORDER BY at")
        return [(a, b, json.loads(c)) for a, b, c in cur.fetchall()]


def _all_text(url: str) -> dict[str, str]:
    """Every table's rows as text, per table (what a search for an id would read)."""
    db = database(url)
    with db.reading() as conn:
        cur = conn.cursor()
        if db.dialect == "sqlite":
            cur.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        else:
            cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        tables = [r[0] for r in cur.fetchall()]
        out = {}
        for t in tables:
            cur.execute(f"SELECT * FROM {t}")
            out[t] = repr(cur.fetchall())
        return out


def test_purge_deletes_exactly_the_rows_older_than_the_periods(log_url):
    _create(log_url)
    _fill(log_url)
    counts = retention.purge(log_url, "telco_churn", NOW, 400, 400)
    assert counts == {"predictions": 2, "failures": 2, "batch_predictions": 2, "feedback": 4}
    assert _ids(log_url, "slipway_predictions") == {"a-new", "b-new", "z-old"}  # another pipeline's kept
    assert _ids(log_url, "slipway_failures") == {"a-new", "b-new"}
    assert _ids(log_url, "slipway_batch_predictions") == {
        f"telco_churn/2025-12/v3/{HASHED}",
        f"telco_churn/2025-12/v3/{OTHER}",
    }
    assert len(_ids(log_url, "slipway_feedback")) == 4
    assert _erasures(log_url) == [("telco_churn", "purge", counts)]
    # Null keeps forever: the log's period null keeps every row, the labels still go by theirs.
    again = retention.purge(log_url, "telco_churn", NOW, None, 5)
    assert again == {"predictions": 0, "failures": 0, "batch_predictions": 0, "feedback": 4}
    assert _ids(log_url, "slipway_predictions") == {"a-new", "b-new", "z-old"}
    assert len(_erasures(log_url)) == 2


def test_forget_removes_one_entity_and_stores_no_raw_id(log_url):
    _create(log_url)
    _fill(log_url)
    counts = retention.forget(log_url, "telco_churn", HASHED)
    assert counts == {"predictions": 2, "failures": 2, "batch_predictions": 2, "feedback": 4}
    assert _ids(log_url, "slipway_predictions") == {"b-old", "b-new", "z-old"}  # other pipeline: its own
    assert _ids(log_url, "slipway_failures") == {"b-old", "b-new"}
    assert _ids(log_url, "slipway_batch_predictions") == {
        f"telco_churn/2025-01/v3/{OTHER}",
        f"telco_churn/2025-12/v3/{OTHER}",
    }
    assert len(_ids(log_url, "slipway_feedback")) == 4
    assert retention.forgotten_keys(log_url, "telco_churn") == {HASHED}
    assert retention.forgotten_keys(log_url, "other_pipe") == frozenset()
    text = _all_text(log_url)
    assert not any(RAW in t for t in text.values())
    where = {t for t, rows in text.items() if HASHED in rows}
    # Its hash stays only where it keeps the entity out of snapshots (and another pipeline's own row).
    assert where == {"slipway_forgotten", "slipway_predictions"}
    with database(log_url).reading() as conn:
        cur = conn.cursor()
        cur.execute(
            f"SELECT request_id FROM slipway_predictions WHERE entity_key = {database(log_url).param}",
            (HASHED,),
        )
        assert cur.fetchall() == [("z-old",)]
    # A second forget of the same entity is harmless: nothing left, the hash recorded once.
    assert retention.forget(log_url, "telco_churn", HASHED) == dict.fromkeys(retention.COUNTS, 0)
    assert [e[1] for e in _erasures(log_url)] == ["forget", "forget"]
    with database(log_url).reading() as conn:
        cur = conn.cursor()
        cur.execute("SELECT COUNT(*) FROM slipway_forgotten")
        assert cur.fetchone() == (1,)


def test_forget_refuses_a_raw_id_and_a_missing_pipeline_and_changes_nothing(log_url):
    _create(log_url)
    _fill(log_url)
    before = _all_text(log_url)
    with pytest.raises(retention.RetentionError, match="keyed hash"):
        retention.forget(log_url, "telco_churn", RAW)
    with pytest.raises(retention.RetentionError, match="name the pipeline"):
        retention.forget(log_url, "", HASHED)
    with pytest.raises(retention.RetentionError, match="prediction_log_days"):
        retention.purge(log_url, "telco_churn", NOW, 0, 400)
    assert _all_text(log_url) == before


# --------------------------------------------------------------------------- PostgreSQL roles
@pytest.fixture
def roles(pg_db):
    """The service's role (owns the log) and Airflow's (a reader) and a third with no grant, on ``pg_db``."""
    import psycopg2

    from tests.support.pg import pg_admin

    tag = uuid.uuid4().hex[:8]
    names = {k: f"slipway_ret_{k}_{tag}" for k in ("serving", "airflow", "stranger")}
    admin = pg_admin()
    cur = admin.cursor()
    for name in names.values():
        cur.execute(f'CREATE ROLE "{name}" LOGIN')
        cur.execute(f'GRANT CONNECT ON DATABASE "{pg_db.name}" TO "{name}"')
    db_admin = psycopg2.connect(pg_db.url)
    db_admin.autocommit = True
    db_admin.cursor().execute(f'GRANT CREATE, USAGE ON SCHEMA public TO "{names["serving"]}"')
    url = {k: f"postgresql://{n}@127.0.0.1:5432/{pg_db.name}" for k, n in names.items()}
    try:
        yield names, url
    finally:
        dcur = db_admin.cursor()
        for name in names.values():
            dcur.execute(f'DROP OWNED BY "{name}" CASCADE')
        db_admin.close()
        for name in names.values():
            cur.execute(f'REVOKE ALL ON DATABASE "{pg_db.name}" FROM "{name}"')
            cur.execute(f'DROP ROLE IF EXISTS "{name}"')
        admin.close()


@pytest.mark.postgres
def test_airflow_deletes_only_through_the_functions_which_refuse_a_recent_cutoff(roles):
    import psycopg2

    names, url = roles
    _create(url["serving"], [names["airflow"]])
    _create(url["serving"], [names["airflow"]])  # the service starts again: nothing changes
    _fill(url["serving"])
    airflow = psycopg2.connect(url["airflow"])
    cur = airflow.cursor()
    for forbidden in (
        "DELETE FROM slipway_predictions",
        "DELETE FROM slipway_feedback",
        "DELETE FROM slipway_forgotten",
        "INSERT INTO slipway_erasures VALUES ('p', 'purge', 'x', '{}')",
    ):
        with pytest.raises(psycopg2.Error, match="permission denied"):
            cur.execute(forbidden)
        airflow.rollback()
    cur.execute("SELECT COUNT(*) FROM slipway_erasures")  # it may read the record
    airflow.rollback()
    # A cut-off within the last day (or not a timestamp) is refused by the function itself.
    for before in (
        iso_utc(NOW - timedelta(hours=1)),
        iso_utc(NOW + timedelta(days=3650)),
        "zzz",
        "2025-01-01",
    ):
        with pytest.raises(psycopg2.Error, match="no later than"):
            cur.execute("SELECT slipway_purge(%s, %s, %s)", ("telco_churn", before, None))
        airflow.rollback()
    with pytest.raises(psycopg2.Error, match="no later than"):
        cur.execute("SELECT slipway_purge(%s, %s, %s)", ("telco_churn", None, iso_utc(NOW)))
    airflow.rollback()
    airflow.close()
    assert len(_ids(url["serving"], "slipway_predictions")) == 5  # nothing deleted so far
    # Through the functions, as Airflow's role: the purge and the forget.
    assert retention.purge(url["airflow"], "telco_churn", NOW, 400, 400)["predictions"] == 2
    assert retention.forget(url["airflow"], "telco_churn", OTHER) == {
        "predictions": 1,
        "failures": 1,
        "batch_predictions": 1,
        "feedback": 2,
    }
    assert _ids(url["serving"], "slipway_predictions") == {"a-new", "z-old"}
    assert retention.forgotten_keys(url["airflow"], "telco_churn") == {OTHER}
    assert [e[1] for e in _erasures(url["airflow"])] == ["purge", "forget"]
    # PUBLIC (any other role) cannot execute them.
    stranger = psycopg2.connect(url["stranger"])
    scur = stranger.cursor()
    for call, args in (
        ("SELECT slipway_purge(%s, %s, %s)", ("telco_churn", "2020-01-01T00:00:00.000000+00:00", None)),
        ("SELECT slipway_forget(%s, %s)", ("telco_churn", HASHED)),
    ):
        with pytest.raises(psycopg2.Error, match="permission denied"):
            scur.execute(call, args)
        stranger.rollback()
    stranger.close()
    # The functions belong to the service's role, with a fixed search_path.
    with database(url["serving"]).reading() as conn:
        c = conn.cursor()
        c.execute(
            "SELECT p.proname, r.rolname, p.prosecdef, p.proconfig FROM pg_proc p JOIN pg_roles r "
            "ON r.oid = p.proowner WHERE p.proname IN ('slipway_purge', 'slipway_forget') ORDER BY 1"
        )
        got = c.fetchall()
    assert got == [
        (f, names["serving"], True, ["search_path=public, pg_temp"])
        for f in ("slipway_forget", "slipway_purge")
    ]


def test_the_keyed_hash_is_the_one_ingest_gives():
    import hmac

    assert HASHED == hmac.new(KEY, RAW.encode(), hashlib.sha256).hexdigest()
