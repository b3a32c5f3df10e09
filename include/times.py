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
