"""Rows a batch run scored (``<pipeline>__score``), recorded in the prediction log all or nothing.

They go to ``slipway_batch_predictions``, beside the served rows: feedback labels them by request id
(``<pipeline>/<month>/v<version>/<entity key>``), the monitor checks their drift and live
performance with the served traffic, curation turns their labels into training rows, and retirement
counts a version that scores batches as in use. A rollout's windows never see them (they read
``slipway_predictions``).

On PostgreSQL the rows are inserted as they come, inside one transaction committed at the end, so a
run that fails (too many rejects, a crash) leaves nothing; a re-run inserts nothing twice (the
request ids are deterministic: ``ON CONFLICT DO NOTHING``). SQLite (the embedded default) holds the
rows until the end and writes them in one short transaction, so the service's writer is never held
up for the length of a run.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from include.database import Database, database
from include.prediction_log.rows import iso_utc
from include.prediction_log.schema import BATCH_TABLE, create_schema

_COLUMNS = (
    "request_id",
    "entity_key",
    "inputs",
    "probability",
    "decision",
    "scores",
    "pipeline",
    "model_version",
    "month",
    "created_at",
    "dag_run",
)


def _table_exists(db: Database, cur: Any) -> bool:
    if db.dialect == "postgresql":
        cur.execute("SELECT to_regclass(%s)", (BATCH_TABLE,))
        return cur.fetchone()[0] is not None
    cur.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?", (BATCH_TABLE,))
    return cur.fetchone() is not None


class BatchRecorder:
    """``with BatchRecorder(...) as rec: rec.add(rows); ...; rec.commit()``; leaving the block without
    ``commit`` records nothing. ``rows`` are ``(request_id, entity_key, inputs JSON, probability,
    decision, scores JSON or None)`` as :func:`include.tasks.score.population.score_population` gives."""

    def __init__(self, db_url: str | None, pipeline: str, version: int, month: str, dag_run: str):
        self.db = database(db_url)
        self.fixed = (pipeline, int(version), month, iso_utc(datetime.now(UTC)), dag_run)
        self.added = 0
        self._held: list[tuple] = []
        self._conn: Any = None
        self._committed = False

    def __enter__(self) -> BatchRecorder:
        self._conn = self.db.connect(timeout_s=30)
        cur = self._conn.cursor()
        try:
            present = _table_exists(self.db, cur)
        finally:
            cur.close()
        if not present:  # a log no service has opened yet (the service owns and creates it in production)
            if self.db.dialect == "postgresql":
                self._conn.rollback()
            create_schema(self.db, self._conn)
        return self

    def _sql(self) -> str:
        p = self.db.param
        return (
            f"INSERT INTO {BATCH_TABLE} ({', '.join(_COLUMNS)}) VALUES ({', '.join([p] * len(_COLUMNS))}) "
            "ON CONFLICT (request_id) DO NOTHING"
        )

    def add(self, rows: list[tuple]) -> None:
        full = [(*r, *self.fixed) for r in rows]
        self.added += len(full)
        if self.db.dialect == "sqlite":
            self._held.extend(full)
            return
        from psycopg2.extras import execute_batch

        cur = self._conn.cursor()
        try:
            execute_batch(cur, self._sql(), full, page_size=2000)
        finally:
            cur.close()

    def commit(self) -> int:
        """Make every added row visible at once; returns how many were added (re-recorded ones kept)."""
        if self.db.dialect == "sqlite":
            cur = self._conn.cursor()
            try:
                cur.execute("BEGIN IMMEDIATE")
                cur.executemany(self._sql(), self._held)
                cur.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            finally:
                cur.close()
            self._held = []
        else:
            self._conn.commit()
        self._committed = True
        return self.added

    def __exit__(self, *exc) -> None:
        try:
            if not self._committed and self.db.dialect == "postgresql":
                self._conn.rollback()
        finally:
            self._conn.close()
