"""Ground-truth labels on logged predictions: write-once, late labels welcome."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any

from include.prediction_log.errors import ConflictingLabel, UnknownRequest
from include.prediction_log.rows import iso_utc


def record_label(
    reader: Callable[[], AbstractContextManager[Any]],
    param: str,
    request_id: str,
    label: float,
    *,
    pipeline: str | None = None,
    at: datetime | None = None,
    key_id: str | None = None,
) -> str:
    """Attach the ground-truth label to a logged request (binary 0/1, a multiclass class index, a
    regression's number; the service checks it against the task): "recorded", or "unchanged" when the
    same label is already there. Labels are write-once, so a different one raises ConflictingLabel;
    late labels are accepted whatever their age. ``reader()`` lends a connection; ``param`` is its
    placeholder; ``key_id`` is the public id of the API key that sent the label. Blocking (call it from a
    thread pool)."""
    import math

    if isinstance(label, bool):
        label = int(label)
    if not isinstance(label, int | float) or not math.isfinite(label):
        raise ValueError(f"label must be a finite number, got {label!r}")
    received_at = iso_utc(at if at is not None else datetime.now(UTC), "at")
    p = param
    where, params = f"request_id = {p}", [request_id]
    if pipeline is not None:
        where += f" AND pipeline = {p}"
        params.append(pipeline)
    inserted, stored = False, None
    with reader() as conn:
        cur = conn.cursor()
        try:
            cur.execute(f"SELECT pipeline FROM slipway_predictions WHERE {where} LIMIT 1", params)
            found = cur.fetchone()
            if found is None:  # a row a batch run scored (<pipeline>__score)
                cur.execute(f"SELECT pipeline FROM slipway_batch_predictions WHERE {where} LIMIT 1", params)
                found = cur.fetchone()
            if found is not None:
                # Insert-or-keep, then read back: whichever process wins a race, everyone agrees
                # on the stored label, and a loser with a different label learns of the conflict.
                cur.execute(
                    "INSERT INTO slipway_feedback (request_id, pipeline, label, received_at, key_id) "
                    f"VALUES ({p}, {p}, {p}, {p}, {p}) ON CONFLICT (request_id) DO NOTHING",
                    (request_id, found[0], label, received_at, key_id),
                )
                inserted = cur.rowcount == 1
                cur.execute(f"SELECT label FROM slipway_feedback WHERE request_id = {p}", (request_id,))
                (stored,) = cur.fetchone()
        finally:
            cur.close()
    if found is None:
        scope = " in this pipeline" if pipeline is not None else ""
        raise UnknownRequest(
            f"no prediction with this request id was logged{scope}; send the request_id returned by "
            "the prediction response"
        )
    if inserted:
        return "recorded"
    if stored == label:
        return "unchanged"
    raise ConflictingLabel(
        f"this request already has label {_plain(stored)}; labels are write-once, so {_plain(label)} was not "
        "recorded. If the first label was wrong, correct it in the database with an audit note"
    )


def _plain(value: Any) -> Any:
    """A label as a person reads it: 1, not 1.0."""
    return int(value) if float(value).is_integer() else value


def labels_since(
    query: Callable[..., list[tuple]], param: str, pipeline: str, key_id: str, since: str
) -> int:
    """Labels ``key_id`` recorded for ``pipeline`` from ``since`` (ISO UTC) on: the feedback cap's count."""
    p = param
    sql = (
        f"SELECT COUNT(*) FROM slipway_feedback WHERE pipeline = {p} AND key_id = {p} AND received_at >= {p}"
    )
    return int(query(sql, (pipeline, key_id, since))[0][0])
