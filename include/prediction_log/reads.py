"""Every read of the prediction log: the service's own lookups and the windows the DAGs judge.

Timestamps are compared as stored: fixed-width ISO-8601 text in UTC (:func:`iso_utc`), so
``[since, until)`` is a string range in both dialects.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson

from include.database import database, missing_table
from include.prediction_log.rows import COLUMNS

log = logging.getLogger(__name__)

Query = Callable[..., list[tuple]]  # query(sql, params) -> rows, on a connection the caller lends

# What a version answered: the rows it served and the rows batch runs scored with it (see
# include.prediction_log.batch). The monitor, curation and retirement read this; a rollout's windows
# read the served rows only.
ANSWERED = (
    "(SELECT request_id, pipeline, entity_key, model_version, inputs, probability, decision, created_at "
    "FROM slipway_predictions WHERE served = 1 UNION ALL "
    "SELECT request_id, pipeline, entity_key, model_version, inputs, probability, decision, created_at "
    "FROM slipway_batch_predictions)"
)


# ------------------------------------------------------------------------------ the service's lookups
def logged(query: Query, param: str, request_id: str) -> list[dict]:
    """The logged rows of a request (served first, then shadow), each with its label if any.
    Timestamps are returned as stored: ISO-8601 text in UTC."""
    p = param
    columns = ", ".join(f"p.{c}" for c in COLUMNS)
    rows = query(
        f"SELECT {columns}, f.label, f.received_at, f.key_id FROM slipway_predictions p "
        "LEFT JOIN slipway_feedback f ON f.request_id = p.request_id "
        f"WHERE p.request_id = {p} ORDER BY p.served DESC, p.variant",
        (request_id,),
    )
    if not rows:  # a batch-scored row: the same fields, as the service would have logged them
        rows = query(
            "SELECT b.request_id, 'batch', b.pipeline, b.entity_key, b.model_version, 1, b.inputs, "
            "b.probability, b.decision, 0.0, b.created_at, NULL, b.scores, f.label, f.received_at, f.key_id "
            "FROM slipway_batch_predictions b LEFT JOIN slipway_feedback f ON f.request_id = b.request_id "
            f"WHERE b.request_id = {p}",
            (request_id,),
        )
    result = []
    for row in rows:
        item = dict(zip(COLUMNS, row[: len(COLUMNS)], strict=True))
        item["served"] = bool(item["served"])
        item["inputs"] = orjson.loads(item["inputs"])
        item["label"], item["label_received_at"], item["label_key_id"] = row[len(COLUMNS) :]
        result.append(item)
    return result


def count(query: Query, param: str, pipeline: str | None = None) -> int:
    """Logged rows (served and shadow), of one pipeline or all."""
    if pipeline is None:
        return query("SELECT COUNT(*) FROM slipway_predictions")[0][0]
    return query(f"SELECT COUNT(*) FROM slipway_predictions WHERE pipeline = {param}", (pipeline,))[0][0]


def request_ids(query: Query, param: str, pipeline: str | None = None) -> set[str]:
    """Every logged request id, of one pipeline or all (tests and audits; not for large tables)."""
    if pipeline is None:
        rows = query("SELECT DISTINCT request_id FROM slipway_predictions")
    else:
        rows = query(
            f"SELECT DISTINCT request_id FROM slipway_predictions WHERE pipeline = {param}", (pipeline,)
        )
    return {r[0] for r in rows}


# ------------------------------------------------------------------------------ rollout
def rollout_window(
    db_url: str | None, pipeline: str, champion: int, challenger: int, since: str, until: str, shadow: bool
) -> tuple[list[tuple], int]:
    """The rows of a shadow or canary window and the challenger's failed rows.

    Rows are ``(request_id, variant, model_version, probability, decision, latency_ms, label or None,
    entity_key, scores JSON or None)`` in time order: the champion's served rows and the challenger's
    (``shadow``: its unserved mirror rows; otherwise the rows it served)."""
    db = database(db_url)
    p = db.param
    served_challenger = 0 if shadow else 1
    with db.reading() as conn:
        cur = conn.cursor()
        cur.execute(
            "SELECT pr.request_id, pr.variant, pr.model_version, pr.probability, pr.decision, pr.latency_ms, "
            "f.label, pr.entity_key, pr.scores FROM slipway_predictions pr LEFT JOIN slipway_feedback f "
            "ON f.request_id = pr.request_id "
            f"WHERE pr.pipeline = {p} AND pr.created_at >= {p} AND pr.created_at < {p} AND ("
            f"(pr.variant = 'champion' AND pr.model_version = {p} AND pr.served = 1) OR "
            f"(pr.variant = 'challenger' AND pr.model_version = {p} AND pr.served = {p})) "
            "ORDER BY pr.created_at",
            (pipeline, since, until, champion, challenger, served_challenger),
        )
        rows = cur.fetchall()
        cur.execute(
            f"SELECT COUNT(*) FROM slipway_failures WHERE pipeline = {p} AND created_at >= {p} AND "
            f"created_at < {p} AND variant = 'challenger' AND model_version = {p} AND served = {p}",
            (pipeline, since, until, challenger, served_challenger),
        )
        (failed,) = cur.fetchone()
        cur.close()
    return rows, int(failed)


def served_since(db_url: str | None, pipeline: str, version: int, since: str) -> int:
    """Rows ``version`` served from ``since`` on (after a rollback: must be none)."""
    db = database(db_url)
    p = db.param
    with db.reading() as conn:
        cur = conn.cursor()
        cur.execute(
            f"SELECT COUNT(*) FROM slipway_predictions WHERE pipeline = {p} AND model_version = {p} "
            f"AND served = 1 AND created_at >= {p}",
            (pipeline, version, since),
        )
        (served,) = cur.fetchone()
    return int(served)


# ------------------------------------------------------------------------------ monitoring
def served_inputs(
    db_url: str | None, pipeline: str, since: str, until: str, chunk: int = 20000
) -> Iterator[list[tuple[str, int, float]]]:
    """The interval's served rows, ``(inputs JSON, model_version, probability)``, ``chunk`` at a time
    (a server-side cursor on PostgreSQL: the interval is never held in memory at once)."""
    db = database(db_url)
    p = db.param
    with db.reading() as conn:
        if db.dialect == "postgresql":
            cur = conn.cursor(name="slipway_drift_window")
            cur.itersize = chunk
        else:
            cur = conn.cursor()
        cur.execute(
            f"SELECT inputs, model_version, probability FROM {ANSWERED} a "
            f"WHERE pipeline = {p} AND created_at >= {p} AND created_at < {p}",
            (pipeline, since, until),
        )
        while True:
            rows = cur.fetchmany(chunk)
            if not rows:
                break
            yield rows
        cur.close()


def labelled_scores(
    db_url: str | None, pipeline: str, version: int, since: str, until: str
) -> list[tuple[float, float, float, str | None]]:
    """``(probability, label, decision, entity_key)`` of the rows ``version`` answered in
    ``[since, until)`` that have a label (the hashed entity key: the live fairness check joins it to
    the lake's sensitive attributes)."""
    db = database(db_url)
    p = db.param
    with db.reading() as conn:
        cur = conn.cursor()
        cur.execute(
            f"SELECT pr.probability, f.label, pr.decision, pr.entity_key FROM {ANSWERED} pr "
            "JOIN slipway_feedback f ON f.request_id = pr.request_id "
            f"WHERE pr.pipeline = {p} AND pr.model_version = {p} "
            f"AND pr.created_at >= {p} AND pr.created_at < {p}",
            (pipeline, version, since, until),
        )
        return cur.fetchall()


# ------------------------------------------------------------------------------ training and retirement
def labelled_predictions(db_url: str | None, pipeline: str, cutoff: str) -> list[tuple]:
    """``(request_id, entity_key, inputs JSON, created_at, label, the label's key id)`` of the answered,
    labelled rows made and labelled before ``cutoff`` (ISO UTC), oldest first.

    No prediction log yet (a SQLite file that does not exist, tables not created) means none; a log
    that cannot be reached raises, so an outage is never read as "no labels"."""
    db = database(db_url)
    if db.dialect == "sqlite":
        path = db.url.split("sqlite:///", 1)[1]
        if path != ":memory:" and not Path(path).is_file():
            log.info("no prediction log at %s yet: no feedback", db.redacted())
            return []
    p = db.param
    try:
        with db.reading() as conn:
            cur = conn.cursor()
            cur.execute(
                "SELECT pr.request_id, pr.entity_key, pr.inputs, pr.created_at, f.label, f.key_id "
                f"FROM {ANSWERED} pr JOIN slipway_feedback f ON f.request_id = pr.request_id "
                f"WHERE pr.pipeline = {p} AND pr.created_at < {p} AND f.received_at < {p} "
                "ORDER BY pr.created_at, pr.request_id",
                (pipeline, cutoff, cutoff),
            )
            return cur.fetchall()
    except Exception as exc:
        if missing_table(exc, "slipway_"):
            log.info("the prediction log in %s has no tables yet: no feedback", db.redacted())
            return []
        raise


def last_served(db_url: str | None, pipeline: str) -> dict[int, str]:
    """Per version, the time of its newest served or batch-scored prediction (ISO-8601 UTC); none before
    any is logged."""
    db = database(db_url)
    p = db.param
    with db.reading() as conn:
        cur = conn.cursor()
        try:
            cur.execute(
                f"SELECT model_version, MAX(created_at) FROM {ANSWERED} a "
                f"WHERE pipeline = {p} GROUP BY model_version",
                (pipeline,),
            )
        except Exception as exc:  # no prediction log yet: nothing was ever served
            if missing_table(exc, "slipway_"):
                return {}
            raise
        return {int(v): str(at) for v, at in cur.fetchall()}
