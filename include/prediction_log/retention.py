"""The one owner of deletion from the prediction log: the retention purge and the erasure of an entity.

On PostgreSQL (production) the log's tables belong to the service's role and Airflow's role may only
read them (and add batch-scored rows): it deletes through ``slipway_purge`` and ``slipway_forget``,
``SECURITY DEFINER`` functions the service creates with the schema
(:mod:`include.prediction_log.schema`). Each deletes only what it names, refuses a purge cut-off
within the last day, and records its counts in ``slipway_erasures``. On SQLite (the embedded,
single-user stack) the same deletes run here, in one transaction.

Timestamps are the log's ISO-8601 UTC text (:func:`include.prediction_log.rows.iso_utc`), compared as
text like every read of the log. An entity is named by its keyed hash only (what the log stores);
its raw id never reaches this module.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from include.database import Database, database, missing_table
from include.prediction_log.rows import iso_utc
from include.prediction_log.schema import create_schema
from include.times import as_utc

COUNTS = ("predictions", "failures", "batch_predictions", "feedback")
_HASH = re.compile(r"^[0-9a-f]{64}$")


class RetentionError(ValueError):
    """A purge or forget was asked for something it must refuse; the message says what and why."""


def _check_pipeline(pipeline: str) -> None:
    if not pipeline or not isinstance(pipeline, str):
        raise RetentionError("name the pipeline whose rows are purged or forgotten")


def cutoffs(now: datetime, log_days: int | None, feedback_days: int | None) -> tuple[str | None, str | None]:
    """The purge's cut-offs as the log's text: rows made (labels received) before them go; None keeps all."""
    at = as_utc(now, "the purge's now")
    return (
        None if log_days is None else iso_utc(at - timedelta(days=log_days)),
        None if feedback_days is None else iso_utc(at - timedelta(days=feedback_days)),
    )


def purge(
    db_url: str | None, pipeline: str, now: datetime, log_days: int | None, feedback_days: int | None
) -> dict[str, int]:
    """Delete ``pipeline``'s log rows made more than ``log_days`` before ``now`` (served, batch-scored,
    failures) and its labels received more than ``feedback_days`` before; None keeps them forever.
    Returns the counts per table, also recorded as one ``purge`` row in ``slipway_erasures``."""
    _check_pipeline(pipeline)
    for what, days in (("prediction_log_days", log_days), ("feedback_days", feedback_days)):
        if days is not None and (isinstance(days, bool) or not isinstance(days, int) or days < 1):
            raise RetentionError(
                f"retention.{what} must be a whole number of days >= 1 or null, got {days!r}"
            )
    log_before, feedback_before = cutoffs(now, log_days, feedback_days)
    db = database(db_url)
    if db.dialect == "postgresql":
        return _call(db, "SELECT slipway_purge(%s, %s, %s)", (pipeline, log_before, feedback_before))
    return _sqlite(db, pipeline, "purge", log_before, feedback_before, None)


def forget(db_url: str | None, pipeline: str, entity_key_hash: str) -> dict[str, int]:
    """Delete every log row of one entity of ``pipeline`` (its served and batch-scored rows, the failures
    of its requests, the labels of its rows) and remember its keyed hash in ``slipway_forgotten`` so
    ingest keeps it out of future snapshots. Returns the counts; a second call finds nothing (zeros)."""
    _check_pipeline(pipeline)
    if not isinstance(entity_key_hash, str) or not _HASH.match(entity_key_hash):
        raise RetentionError(
            "forget takes the entity's keyed hash (64 hex digits, as the log stores it), never a raw id: "
            "hash the id with the pipeline's PII key first (`slipway forget` does)"
        )
    db = database(db_url)
    if db.dialect == "postgresql":
        return _call(db, "SELECT slipway_forget(%s, %s)", (pipeline, entity_key_hash))
    return _sqlite(db, pipeline, "forget", None, None, entity_key_hash)


def _call(db: Database, sql: str, params: tuple) -> dict[str, int]:
    conn = db.connect(timeout_s=30)
    try:
        with conn.cursor() as cur:
            try:
                cur.execute(sql, params)
            except Exception as exc:
                if getattr(exc, "pgcode", None) == "42883":  # undefined_function: a log before schema 5
                    raise RetentionError(
                        f"the prediction log in {db.redacted()} has no retention functions (schema version 5): "
                        "start this release's inference service once (it migrates the log), then retry"
                    ) from exc
                raise
            (text,) = cur.fetchone()
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    finally:
        conn.close()
    counts = json.loads(text)
    return {k: int(counts[k]) for k in COUNTS}


def _sqlite(
    db: Database,
    pipeline: str,
    kind: str,
    log_before: str | None,
    feedback_before: str | None,
    key: str | None,
) -> dict[str, int]:
    conn = db.connect(timeout_s=30)
    try:
        create_schema(db, conn)  # the embedded log may not exist yet, or be of an older version
    finally:
        conn.close()
    counts = dict.fromkeys(COUNTS, 0)
    stamp = iso_utc(datetime.now(UTC))
    with db.writing() as conn:
        cur = conn.cursor()
        if kind == "purge":
            if log_before is not None:
                for table, name in (
                    ("slipway_predictions", "predictions"),
                    ("slipway_failures", "failures"),
                    ("slipway_batch_predictions", "batch_predictions"),
                ):
                    cur.execute(
                        f"DELETE FROM {table} WHERE pipeline = ? AND created_at < ?", (pipeline, log_before)
                    )
                    counts[name] = cur.rowcount
            if feedback_before is not None:
                cur.execute(
                    "DELETE FROM slipway_feedback WHERE pipeline = ? AND received_at < ?",
                    (pipeline, feedback_before),
                )
                counts["feedback"] = cur.rowcount
        else:
            # The labels of the entity's rows first (found through those rows), then the failures of its
            # served requests, then the rows themselves.
            cur.execute(
                "DELETE FROM slipway_feedback WHERE pipeline = ? AND request_id IN ("
                "SELECT request_id FROM slipway_predictions WHERE pipeline = ? AND entity_key = ? "
                "UNION SELECT request_id FROM slipway_batch_predictions WHERE pipeline = ? AND entity_key = ?)",
                (pipeline, pipeline, key, pipeline, key),
            )
            counts["feedback"] = cur.rowcount
            cur.execute(
                "DELETE FROM slipway_failures WHERE pipeline = ? AND request_id IN ("
                "SELECT request_id FROM slipway_predictions WHERE pipeline = ? AND entity_key = ?)",
                (pipeline, pipeline, key),
            )
            counts["failures"] = cur.rowcount
            cur.execute(
                "DELETE FROM slipway_predictions WHERE pipeline = ? AND entity_key = ?", (pipeline, key)
            )
            counts["predictions"] = cur.rowcount
            cur.execute(
                "DELETE FROM slipway_batch_predictions WHERE pipeline = ? AND entity_key = ?", (pipeline, key)
            )
            counts["batch_predictions"] = cur.rowcount
            cur.execute(
                "INSERT INTO slipway_forgotten (pipeline, entity_key, at) VALUES (?, ?, ?) "
                "ON CONFLICT (pipeline, entity_key) DO NOTHING",
                (pipeline, key, stamp),
            )
        cur.execute(
            "INSERT INTO slipway_erasures (pipeline, kind, at, counts) VALUES (?, ?, ?, ?)",
            (pipeline, kind, stamp, json.dumps(counts, sort_keys=True)),
        )
    return counts


def forgotten_keys(db_url: str | None, pipeline: str) -> frozenset[str]:
    """The keyed hashes of ``pipeline``'s forgotten entities, which no future snapshot may hold. No log
    (or one from before erasure) means none; a log that cannot be reached raises, so an outage never
    builds a snapshot as if nothing had been forgotten."""
    db = database(db_url)
    if db.dialect == "sqlite":
        path = db.url.split("sqlite:///", 1)[1]
        from pathlib import Path

        if not Path(path).is_file():
            return frozenset()
    try:
        with db.reading() as conn:
            cur: Any = conn.cursor()
            cur.execute(f"SELECT entity_key FROM slipway_forgotten WHERE pipeline = {db.param}", (pipeline,))
            return frozenset(r[0] for r in cur.fetchall())
    except Exception as exc:
        if missing_table(exc, "slipway_forgotten"):
            return frozenset()
        raise
