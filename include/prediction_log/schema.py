"""The prediction log's tables: their DDL, created once and safely when several processes start at once.

``slipway_predictions`` (every scored row, served or shadow), ``slipway_failures`` (rows a model could
not score), ``slipway_feedback`` (write-once labels), ``slipway_schema`` (the schema version) and
``slipway_monitor`` (one row per monitored interval). Every prediction, failure and label records the
public id of the API key it came with (``key_id``, schema version 2; a version 1 log is migrated in
place when a writer starts: the column is added, the rows before it keep ``NULL``). Schema version 3
holds every task kind: ``decision`` and ``label`` are numbers (a class index, or a regression's
amount), and ``scores`` holds a multiclass row's class probabilities (JSON); a version 2 log is
migrated in place (the column added, the two columns widened on PostgreSQL; SQLite's columns take any
number already), every row kept. Schema version 4 adds ``slipway_batch_predictions``, the rows batch
runs scored (Airflow's role may insert there and nowhere else in the log). Schema version 5 adds
retention and erasure (:mod:`include.prediction_log.retention`): ``slipway_erasures`` (one row per
purge or forget, with its counts), ``slipway_forgotten`` (the keyed hashes of forgotten entities,
which ingest keeps out of future snapshots) and, on PostgreSQL, the two ``SECURITY DEFINER``
functions through which Airflow's role deletes, since it may not DELETE itself.
"""

from __future__ import annotations

from typing import Any

from include.database import Database
from include.prediction_log.errors import LogUnavailable

SCHEMA_VERSION = 5
_SCHEMA_NAME = "prediction_log"
# Serialise schema creation across processes on PostgreSQL: concurrent CREATE TABLE IF NOT EXISTS
# can still collide on the catalogue's unique index. Any constants work; these spell "SLPW", "SLMN".
_PG_SCHEMA_LOCK_KEY = 0x534C5057
_PG_MONITOR_LOCK_KEY = 0x534C4D4E


def _statements(db: Database) -> list[str]:
    real = "REAL" if db.dialect == "sqlite" else "DOUBLE PRECISION"
    return [
        f"""CREATE TABLE IF NOT EXISTS slipway_predictions (
            request_id TEXT NOT NULL,
            variant TEXT NOT NULL,
            pipeline TEXT NOT NULL,
            entity_key TEXT,
            model_version INTEGER NOT NULL,
            served INTEGER NOT NULL,
            inputs TEXT NOT NULL,
            probability {real} NOT NULL,
            decision {real} NOT NULL,
            latency_ms {real} NOT NULL,
            created_at TEXT NOT NULL,
            key_id TEXT,
            scores TEXT,
            PRIMARY KEY (request_id, variant)
        )""",
        "CREATE INDEX IF NOT EXISTS slipway_predictions_pipeline_created "
        "ON slipway_predictions (pipeline, created_at)",
        # Rows a model could not score (the canary's error rate): written in the same commits.
        """CREATE TABLE IF NOT EXISTS slipway_failures (
            request_id TEXT NOT NULL,
            variant TEXT NOT NULL,
            pipeline TEXT NOT NULL,
            model_version INTEGER NOT NULL,
            served INTEGER NOT NULL,
            reason TEXT NOT NULL,
            created_at TEXT NOT NULL,
            key_id TEXT,
            PRIMARY KEY (request_id, variant)
        )""",
        "CREATE INDEX IF NOT EXISTS slipway_failures_pipeline_created "
        "ON slipway_failures (pipeline, created_at)",
        f"""CREATE TABLE IF NOT EXISTS slipway_feedback (
            request_id TEXT PRIMARY KEY,
            pipeline TEXT NOT NULL,
            label {real} NOT NULL,
            received_at TEXT NOT NULL,
            key_id TEXT
        )""",
        "CREATE TABLE IF NOT EXISTS slipway_schema (name TEXT PRIMARY KEY, version INTEGER NOT NULL)",
        # Rows a batch run scored (<pipeline>__score), recorded by Airflow: labelled by feedback and
        # read by the monitor like served rows, never mixed into a rollout's windows.
        f"""CREATE TABLE IF NOT EXISTS slipway_batch_predictions (
            request_id TEXT PRIMARY KEY,
            pipeline TEXT NOT NULL,
            entity_key TEXT,
            model_version INTEGER NOT NULL,
            month TEXT NOT NULL,
            inputs TEXT NOT NULL,
            probability {real} NOT NULL,
            decision {real} NOT NULL,
            scores TEXT,
            created_at TEXT NOT NULL,
            dag_run TEXT NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS slipway_batch_predictions_pipeline_created "
        "ON slipway_batch_predictions (pipeline, created_at)",
        # Forget finds an entity's rows by its keyed hash.
        "CREATE INDEX IF NOT EXISTS slipway_predictions_pipeline_entity ON slipway_predictions (pipeline, entity_key)",
        "CREATE INDEX IF NOT EXISTS slipway_batch_predictions_pipeline_entity "
        "ON slipway_batch_predictions (pipeline, entity_key)",
        "CREATE INDEX IF NOT EXISTS slipway_feedback_pipeline_received ON slipway_feedback (pipeline, received_at)",
        # One row per purge or forget: what was deleted, never whose rows (counts only).
        """CREATE TABLE IF NOT EXISTS slipway_erasures (
            pipeline TEXT NOT NULL,
            kind TEXT NOT NULL,
            at TEXT NOT NULL,
            counts TEXT NOT NULL
        )""",
        # The keyed hashes of forgotten entities (never the raw id): ingest keeps them out of snapshots.
        """CREATE TABLE IF NOT EXISTS slipway_forgotten (
            pipeline TEXT NOT NULL,
            entity_key TEXT NOT NULL,
            at TEXT NOT NULL,
            PRIMARY KEY (pipeline, entity_key)
        )""",
    ]


# The functions through which a reader role (Airflow's) deletes from the log it may not DELETE from:
# SECURITY DEFINER runs them as their owner, the service's role, with a fixed search_path so a caller
# cannot slip its own tables or operators in front of the log's. Each deletes only what it names.
_PG_FUNCTIONS = {
    "slipway_purge(text,text,text)": r"""
CREATE FUNCTION slipway_purge(pipeline text, log_before text, feedback_before text) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $fn$
#variable_conflict use_column
DECLARE
    p text := $1;
    -- The log's timestamps are fixed-width ISO-8601 UTC text: compared as text, like every read.
    floor_at text := to_char(now() AT TIME ZONE 'UTC' - interval '1 day', 'YYYY-MM-DD"T"HH24:MI:SS.US')
        || '+00:00';
    stamp text := to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US') || '+00:00';
    n_predictions bigint := 0;
    n_failures bigint := 0;
    n_batch bigint := 0;
    n_feedback bigint := 0;
    counts text;
BEGIN
    IF p IS NULL OR p = '' THEN
        RAISE EXCEPTION 'slipway_purge: name the pipeline' USING ERRCODE = '22023';
    END IF;
    -- A cut-off must be a timestamp as the log writes it, and at least a day old: whoever can call
    -- this (Airflow's role, or someone who took it over) cannot wipe the log with one call, only
    -- what is older than a day, and the erasure is on record below.
    IF (log_before IS NOT NULL AND (log_before !~ '^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}\+00:00$'
            OR log_before > floor_at))
       OR (feedback_before IS NOT NULL AND (feedback_before !~ '^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}\+00:00$'
            OR feedback_before > floor_at)) THEN
        RAISE EXCEPTION 'slipway_purge: a cut-off must be an ISO-8601 UTC timestamp (YYYY-MM-DDTHH:MM:SS.ffffff+00:00) no later than % (a day ago); got % and %',
            floor_at, log_before, feedback_before USING ERRCODE = '22023';
    END IF;
    IF log_before IS NOT NULL THEN
        DELETE FROM slipway_predictions t WHERE t.pipeline = p AND t.created_at < log_before;
        GET DIAGNOSTICS n_predictions = ROW_COUNT;
        DELETE FROM slipway_failures t WHERE t.pipeline = p AND t.created_at < log_before;
        GET DIAGNOSTICS n_failures = ROW_COUNT;
        DELETE FROM slipway_batch_predictions t WHERE t.pipeline = p AND t.created_at < log_before;
        GET DIAGNOSTICS n_batch = ROW_COUNT;
    END IF;
    IF feedback_before IS NOT NULL THEN
        DELETE FROM slipway_feedback t WHERE t.pipeline = p AND t.received_at < feedback_before;
        GET DIAGNOSTICS n_feedback = ROW_COUNT;
    END IF;
    counts := json_build_object('predictions', n_predictions, 'failures', n_failures,
        'batch_predictions', n_batch, 'feedback', n_feedback)::text;
    INSERT INTO slipway_erasures (pipeline, kind, at, counts) VALUES (p, 'purge', stamp, counts);
    RETURN counts;
END
$fn$""",
    "slipway_forget(text,text)": r"""
CREATE FUNCTION slipway_forget(pipeline text, entity_key text) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $fn$
#variable_conflict use_column
DECLARE
    p text := $1;
    k text := $2;
    stamp text := to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US') || '+00:00';
    n_predictions bigint := 0;
    n_failures bigint := 0;
    n_batch bigint := 0;
    n_feedback bigint := 0;
    counts text;
BEGIN
    IF p IS NULL OR p = '' THEN
        RAISE EXCEPTION 'slipway_forget: name the pipeline' USING ERRCODE = '22023';
    END IF;
    -- Only a keyed hash (HMAC-SHA256 in hex) is accepted: a raw id is never stored, not even here.
    IF k IS NULL OR k !~ '^[0-9a-f]{64}$' THEN
        RAISE EXCEPTION 'slipway_forget: the entity key must be its keyed hash (64 hex digits)'
            USING ERRCODE = '22023';
    END IF;
    -- The labels of the entity's rows first (they are found through those rows), then the failures of
    -- its served requests, then the rows themselves.
    DELETE FROM slipway_feedback f WHERE f.pipeline = p AND f.request_id IN (
        SELECT s.request_id FROM slipway_predictions s WHERE s.pipeline = p AND s.entity_key = k
        UNION SELECT b.request_id FROM slipway_batch_predictions b WHERE b.pipeline = p AND b.entity_key = k);
    GET DIAGNOSTICS n_feedback = ROW_COUNT;
    DELETE FROM slipway_failures f WHERE f.pipeline = p AND f.request_id IN (
        SELECT s.request_id FROM slipway_predictions s WHERE s.pipeline = p AND s.entity_key = k);
    GET DIAGNOSTICS n_failures = ROW_COUNT;
    DELETE FROM slipway_predictions s WHERE s.pipeline = p AND s.entity_key = k;
    GET DIAGNOSTICS n_predictions = ROW_COUNT;
    DELETE FROM slipway_batch_predictions b WHERE b.pipeline = p AND b.entity_key = k;
    GET DIAGNOSTICS n_batch = ROW_COUNT;
    INSERT INTO slipway_forgotten (pipeline, entity_key, at) VALUES (p, k, stamp)
        ON CONFLICT ON CONSTRAINT slipway_forgotten_pkey DO NOTHING;
    counts := json_build_object('predictions', n_predictions, 'failures', n_failures,
        'batch_predictions', n_batch, 'feedback', n_feedback)::text;
    INSERT INTO slipway_erasures (pipeline, kind, at, counts) VALUES (p, 'forget', stamp, counts);
    RETURN counts;
END
$fn$""",
}


def _create_functions(cur: Any) -> None:
    """Create the retention functions where missing, executable by no one but their owner until
    :func:`_grant_reads` grants them. Created once: a later change of their bodies is a schema version."""
    for signature, ddl in _PG_FUNCTIONS.items():
        cur.execute("SELECT to_regprocedure(%s)", (signature,))
        if cur.fetchone()[0] is None:
            cur.execute(ddl)
            cur.execute(f"REVOKE EXECUTE ON FUNCTION {signature} FROM PUBLIC")


MONITOR_TABLE = """CREATE TABLE IF NOT EXISTS slipway_monitor (
    pipeline TEXT NOT NULL,
    interval_end TEXT NOT NULL,
    interval_start TEXT NOT NULL,
    champion_version INTEGER,
    served_rows INTEGER NOT NULL,
    status TEXT NOT NULL,
    drift_breach INTEGER NOT NULL,
    performance_breach INTEGER NOT NULL,
    triggered TEXT,
    alerted INTEGER NOT NULL,
    evidence TEXT NOT NULL,
    PRIMARY KEY (pipeline, interval_end)
)"""


_KEYED_TABLES = ("slipway_predictions", "slipway_failures", "slipway_feedback")


def _add_key_id(db: Database, cur: Any, table: str) -> None:
    """``ALTER TABLE table ADD COLUMN key_id TEXT`` unless it is there (a migration cut short)."""
    _add_column(db, cur, table, "key_id", "TEXT")


def _add_column(db: Database, cur: Any, table: str, column: str, kind: str) -> None:
    """``ALTER TABLE table ADD COLUMN column kind`` unless it is there (a migration cut short)."""
    if db.dialect == "postgresql":
        cur.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {kind}")
        return
    cur.execute(f"PRAGMA table_info({table})")
    if column not in {row[1] for row in cur.fetchall()}:
        cur.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")


def rollback_quietly(db: Database, conn: Any) -> None:
    """Roll back whatever ``conn`` has open; a broken connection is left to its caller to drop."""
    try:
        if db.dialect == "sqlite":
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        else:
            conn.rollback()
    except Exception:  # the connection is broken; it is dropped by the caller
        pass


def create_schema(db: Database, conn: Any, readers: list[str] | None = None) -> None:
    """Create the log's tables if missing, on ``conn``, and check the stored schema version; on
    PostgreSQL, let the ``readers`` roles read the log's tables (``SLIPWAY_SERVING_LOG_READERS``)."""
    p = db.param
    cur = conn.cursor()
    try:
        if db.dialect == "sqlite":
            cur.execute("BEGIN IMMEDIATE")  # one creator at a time; the others wait (busy_timeout)
        else:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_SCHEMA_LOCK_KEY,))
        for sql in _statements(db):
            cur.execute(sql)
        cur.execute(
            f"INSERT INTO slipway_schema (name, version) VALUES ({p}, {p}) ON CONFLICT (name) DO NOTHING",
            (_SCHEMA_NAME, SCHEMA_VERSION),
        )
        cur.execute(f"SELECT version FROM slipway_schema WHERE name = {p}", (_SCHEMA_NAME,))
        (version,) = cur.fetchone()
        if version == 1:  # the release before key ids: add the column, keep every row
            for table in _KEYED_TABLES:
                _add_key_id(db, cur, table)
            cur.execute(f"UPDATE slipway_schema SET version = {p} WHERE name = {p}", (2, _SCHEMA_NAME))
            version = 2
        if version == 2:  # the release before task kinds: class probabilities, numeric decisions and labels
            _add_column(db, cur, "slipway_predictions", "scores", "TEXT")
            if db.dialect == "postgresql":
                cur.execute("ALTER TABLE slipway_predictions ALTER COLUMN decision TYPE DOUBLE PRECISION")
                cur.execute("ALTER TABLE slipway_feedback ALTER COLUMN label TYPE DOUBLE PRECISION")
            cur.execute(f"UPDATE slipway_schema SET version = {p} WHERE name = {p}", (3, _SCHEMA_NAME))
            version = 3
        if version == 3:  # the release before batch scoring: its table was created above
            cur.execute(f"UPDATE slipway_schema SET version = {p} WHERE name = {p}", (4, _SCHEMA_NAME))
            version = 4
        if version == 4:  # the release before retention and erasure: its tables were created above
            cur.execute(f"UPDATE slipway_schema SET version = {p} WHERE name = {p}", (5, _SCHEMA_NAME))
            version = 5
        if db.dialect == "postgresql" and version == SCHEMA_VERSION:
            _create_functions(cur)
        # A key's labels in a window: the feedback cap's count
        cur.execute(
            "CREATE INDEX IF NOT EXISTS slipway_feedback_key_received "
            "ON slipway_feedback (pipeline, key_id, received_at)"
        )
        if readers and db.dialect == "postgresql":
            _grant_reads(cur, readers)
        if db.dialect == "sqlite":
            cur.execute("COMMIT")
        else:
            conn.commit()
    except BaseException:
        rollback_quietly(db, conn)
        raise
    finally:
        cur.close()
    if version != SCHEMA_VERSION:
        raise LogUnavailable(
            f"the prediction log in {db.redacted()} has schema version {version}, this Slipway "
            f"writes version {SCHEMA_VERSION}; run the Slipway release that matches the database, or "
            "point SLIPWAY_SERVING_DB at another database"
        )


#: The log's tables a reader role may SELECT (never the API keys)
LOG_TABLES = (
    "slipway_predictions",
    "slipway_failures",
    "slipway_feedback",
    "slipway_schema",
    "slipway_batch_predictions",
    "slipway_erasures",
    "slipway_forgotten",
)
#: The functions a reader role may EXECUTE: it deletes through them only (see ``_PG_FUNCTIONS``)
RETENTION_FUNCTIONS = tuple(_PG_FUNCTIONS)
#: ... and the one it may also INSERT into: the rows its batch runs scored
BATCH_TABLE = "slipway_batch_predictions"


def _grant_reads(cur: Any, roles: list[str]) -> None:
    """Let ``roles`` (PostgreSQL roles, e.g. Airflow's) read the log's tables, record batch-scored
    rows, and purge or forget through the retention functions (never DELETE): the service owns them."""
    from psycopg2 import sql

    for role in roles:
        for table in LOG_TABLES:
            cur.execute(
                sql.SQL("GRANT SELECT ON {} TO {}").format(sql.Identifier(table), sql.Identifier(role))
            )
        cur.execute(
            sql.SQL("GRANT INSERT ON {} TO {}").format(sql.Identifier(BATCH_TABLE), sql.Identifier(role))
        )
        for signature in RETENTION_FUNCTIONS:
            cur.execute(
                sql.SQL(f"GRANT EXECUTE ON FUNCTION {signature} TO {{}}").format(sql.Identifier(role))
            )


def create_monitor_table(db: Database) -> None:
    """Create the monitor's table if missing (only writers do: a read never takes a write lock)."""
    with db.writing() as conn:
        cur = conn.cursor()
        if db.dialect == "postgresql":  # concurrent CREATE ... IF NOT EXISTS can collide in the catalogue
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_MONITOR_LOCK_KEY,))
        cur.execute(MONITOR_TABLE)
        from include.prediction_log.events import grant_to_owner

        grant_to_owner(db, cur, "slipway_monitor")  # the service exports it to Prometheus
