"""One way to write a time for a person: ``2026-12-06 14:02 UTC``.

Logs, the Models view, approval texts, alerts and the CLI write times this way; records (tags, JSON,
the prediction log) keep full ISO 8601 with the offset.
"""

from __future__ import annotations

from datetime import UTC, datetime


def utc_minute(value: str | datetime | int | float | None) -> str:
    """``value`` (an ISO 8601 string, a datetime, or epoch milliseconds) to the minute in UTC; text
    that is not a time comes back as it was, and None as an empty string."""
    if value is None or value == "":
        return ""
    when: datetime
    if isinstance(value, datetime):
        when = value
    elif isinstance(value, int | float):
        when = datetime.fromtimestamp(value / 1000, UTC)
    else:
        try:
            when = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
        except ValueError:
            return str(value)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def as_utc(value: datetime, what: str = "the time") -> datetime:
    """``value`` as a plain ``datetime`` in UTC. Airflow's context hands out pendulum DateTimes, whose
    arithmetic drops a standard-library ``UTC`` tzinfo (``pendulum.now().astimezone(UTC) - timedelta``
    is naive); a plain datetime keeps it. A naive value is refused: its zone is unknown."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got {value!r}")
    return datetime.fromtimestamp(value.timestamp(), UTC)
