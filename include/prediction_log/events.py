"""What happened to a pipeline's runs, for Prometheus: ``slipway_events`` beside the prediction log.

Airflow writes it (the table is Airflow's own, like ``slipway_monitor``) at the moments its
notifications go out (:mod:`include.blocks.notify`): a DAG run failed, a promotion asks for approval
(open until answered, or until its run ends), a champion was restored (a canary or shadow rolled back
by ``conclude_rollout``, or the manual rollback). The service reads it on each scrape of ``/metrics``
(:func:`summary`) and exports counts and the oldest open approval's age; the alerting rules
(``include/deploy/prometheus/rules.yml``) fire on them. A failed write is the caller's to log: an
event never fails the task it reports on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from include.database import Database, database, missing_table

FAILED, APPROVAL, ROLLBACK = "failed", "approval", "rollback"
KINDS = (FAILED, APPROVAL, ROLLBACK)

TABLE = """CREATE TABLE IF NOT EXISTS slipway_events (
    pipeline TEXT NOT NULL,
    kind TEXT NOT NULL,
    dag_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    at TEXT NOT NULL,
    closed_at TEXT,
    detail TEXT NOT NULL
)"""
# "SLEV": serialises the table's creation across processes on PostgreSQL (see schema.py's keys)
_PG_LOCK_KEY = 0x534C4556


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def grant_to_owner(db: Database, cur, table: str) -> None:
    """On PostgreSQL, let the database's owner (the service's role) read ``table``, which Airflow's
    role created: the service exports it on ``/metrics``. Nothing to grant on SQLite."""
    if db.dialect != "postgresql":
        return
    cur.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()")
    (owner,) = cur.fetchone()
    cur.execute("SELECT tableowner FROM pg_tables WHERE schemaname = 'public' AND tablename = %s", (table,))
    found = cur.fetchone()
    if found and found[0] != owner:
        from psycopg2 import sql

        cur.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(sql.Identifier(table), sql.Identifier(owner)))


def _create(db: Database) -> None:
    with db.writing() as conn:
        cur = conn.cursor()
        if db.dialect == "postgresql":
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_LOCK_KEY,))
        cur.execute(TABLE)
        grant_to_owner(db, cur, "slipway_events")


def record(db_url: str | None, pipeline: str, kind: str, dag_id: str, run_id: str, detail: str = "") -> None:
    """One event. A failed run also closes the approval its run left open (nobody can answer it now)."""
    if kind not in KINDS:
        raise ValueError(f"event kind {kind!r} is not one of {KINDS}")
    db = database(db_url)
    _create(db)
    p, now = db.param, _now()
    with db.writing() as conn:
        cur = conn.cursor()
        cur.execute(
            f"INSERT INTO slipway_events (pipeline, kind, dag_id, run_id, at, closed_at, detail) "
            f"VALUES ({p}, {p}, {p}, {p}, {p}, NULL, {p})",
            (pipeline, kind, dag_id, run_id, now, detail[:2000]),
        )
        if kind == FAILED:
            cur.execute(
                f"UPDATE slipway_events SET closed_at = {p} WHERE kind = {p} AND dag_id = {p} AND run_id = {p} "
                "AND closed_at IS NULL",
                (now, APPROVAL, dag_id, run_id),
            )


def close_approval(db_url: str | None, dag_id: str, run_id: str) -> None:
    """The run's approval was answered (or timed out to its default): it no longer waits."""
    db = database(db_url)
    _create(db)
    p = db.param
    with db.writing() as conn:
        conn.cursor().execute(
            f"UPDATE slipway_events SET closed_at = {p} WHERE kind = {p} AND dag_id = {p} AND run_id = {p} "
            "AND closed_at IS NULL",
            (_now(), APPROVAL, dag_id, run_id),
        )


@dataclass(frozen=True)
class Summary:
    """Per pipeline: failed runs and rollbacks recorded so far, and how long the oldest open approval
    has waited (0 when none waits)."""

    failed_runs: dict[str, int]  # dag_id -> count
    rollbacks: int
    approval_waiting_s: float


def summary(db_url: str | None, pipelines: list[str], now: datetime | None = None) -> dict[str, Summary]:
    """Read-only: before the first event there is no table and every count is 0."""
    db = database(db_url)
    out = {name: Summary({}, 0, 0.0) for name in pipelines}
    if not pipelines:
        return out
    marks = ", ".join([db.param] * len(pipelines))
    try:
        with db.reading() as conn:
            cur = conn.cursor()
            cur.execute(
                "SELECT pipeline, kind, dag_id, COUNT(*), MIN(CASE WHEN closed_at IS NULL THEN at END) "
                f"FROM slipway_events WHERE pipeline IN ({marks}) GROUP BY pipeline, kind, dag_id",
                tuple(pipelines),
            )
            rows = cur.fetchall()
    except Exception as exc:
        if missing_table(exc, "slipway_events"):
            return out
        raise
    now = now or datetime.now(UTC)
    failed: dict[str, dict[str, int]] = {name: {} for name in pipelines}
    rollbacks = dict.fromkeys(pipelines, 0)
    waiting = dict.fromkeys(pipelines, 0.0)
    for pipeline, kind, dag_id, count, oldest_open in rows:
        if kind == FAILED:
            failed[pipeline][dag_id] = int(count)
        elif kind == ROLLBACK:
            rollbacks[pipeline] += int(count)
        elif kind == APPROVAL and oldest_open:
            age = (now - datetime.fromisoformat(oldest_open)).total_seconds()
            waiting[pipeline] = max(waiting[pipeline], age)
    return {name: Summary(failed[name], rollbacks[name], waiting[name]) for name in pipelines}
