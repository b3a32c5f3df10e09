"""The monitor's record: one row per pipeline and monitored interval, in ``slipway_monitor``.

``<pipeline>__monitor`` writes it; the cool-down and the "sustained" rule read the earlier rows;
the service exports the newest row per pipeline as Prometheus gauges; retirement reads a version's
checks as champion. A re-run of an interval replaces its own row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from include.database import database, missing_table
from include.prediction_log.schema import create_monitor_table

NO_TRAFFIC = "no_traffic"
OK = "ok"
BREACH = "breach"


@dataclass(frozen=True)
class Check:
    """One interval's result, as recorded."""

    pipeline: str
    interval_start: str
    interval_end: str
    champion_version: int | None
    served_rows: int
    status: str
    drift_breach: bool
    performance_breach: bool
    triggered: str | None  # "drift" | "performance" | None
    alerted: bool
    evidence: dict


_COLUMNS = (
    "pipeline, interval_start, interval_end, champion_version, served_rows, status, drift_breach, "
    "performance_breach, triggered, alerted, evidence"
)


def _select(db_url: str | None, sql: str, params: tuple) -> list[tuple]:
    """Rows of a read of ``slipway_monitor`` (``{p}`` in ``sql`` is the dialect's placeholder); none
    before the first interval is recorded, when the table does not exist yet."""
    db = database(db_url)
    try:
        with db.reading() as conn:
            cur = conn.cursor()
            cur.execute(sql.format(p=db.param), params)
            return cur.fetchall()
    except Exception as exc:
        if missing_table(exc, "slipway_monitor"):
            return []
        raise


def earlier(db_url: str | None, pipeline: str, before: str, limit: int = 200) -> list[Check]:
    """The pipeline's recorded checks of intervals ending before ``before``, newest first."""
    rows = _select(
        db_url,
        f"SELECT {_COLUMNS} FROM slipway_monitor WHERE pipeline = {{p}} AND interval_end < {{p}} "
        f"ORDER BY interval_end DESC LIMIT {int(limit)}",
        (pipeline, before),
    )
    return [
        Check(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6]), bool(r[7]), r[8], bool(r[9]), json.loads(r[10]))
        for r in rows
    ]


def record(db_url: str | None, result: Check) -> None:
    """Write (or, for a re-run of the interval, replace) the interval's row, in one transaction."""
    db = database(db_url)
    create_monitor_table(db)
    p = db.param
    with db.writing() as conn:
        cur = conn.cursor()
        cur.execute(
            f"DELETE FROM slipway_monitor WHERE pipeline = {p} AND interval_end = {p}",
            (result.pipeline, result.interval_end),
        )
        cur.execute(
            "INSERT INTO slipway_monitor (pipeline, interval_end, interval_start, champion_version, served_rows, "
            "status, drift_breach, performance_breach, triggered, alerted, evidence) VALUES "
            f"({', '.join([p] * 11)})",
            (
                result.pipeline,
                result.interval_end,
                result.interval_start,
                result.champion_version,
                result.served_rows,
                result.status,
                int(result.drift_breach),
                int(result.performance_breach),
                result.triggered,
                int(result.alerted),
                json.dumps(result.evidence, sort_keys=True, default=str),
            ),
        )


def latest(db_url: str | None, pipeline: str) -> Check | None:
    found = earlier(db_url, pipeline, "9999", limit=1)
    return found[0] if found else None


def latest_summary(db_url: str | None, pipelines: list[str]) -> dict[str, dict]:
    """The newest check of each pipeline as numbers (for Prometheus), read-only: before the first
    monitor run there is no table and the answer is empty."""
    out: dict[str, dict] = {}
    for name in pipelines:
        check = latest(db_url, name)
        if check is not None:
            out[name] = {
                "interval_end": datetime.fromisoformat(check.interval_end).timestamp(),
                "served_rows": check.served_rows,
                "no_traffic": int(check.status == NO_TRAFFIC),
                "drift_breach": int(check.drift_breach),
                "performance_breach": int(check.performance_breach),
                "drifted_checks": check.evidence.get("drifted_count", 0),
                # The checks beside drift and performance record their state in the evidence; an
                # interval recorded before they existed (or without them) counts as no breach.
                **{
                    f"{c}_breach": int(
                        (check.evidence.get("checks") or {}).get(c, {}).get("status") == BREACH
                    )
                    for c in ("fairness", "attribution", "data_quality")
                },
            }
    return out
