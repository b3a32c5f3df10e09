"""Which month a DAG run processes: one rule for scheduled and manual runs.

A run processes the month in which its data interval **starts**: the scheduled run of October
(data interval 2026-10-01 -> 2026-11-01, started on 1 November) processes 2026-10. A manual run
may name its month with the ``month`` parameter of the trigger form (``YYYY-MM``), which wins;
without it, a manual run's data interval is the period that ends at its logical date, so a run
triggered with logical date 2026-01-01 processes 2025-12. A run started by an asset event that
names a month (the monitor's drift event names the newest month that has landed) processes it.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
MONTH_PATTERN = MONTH.pattern


def run_month(context) -> str:
    """``YYYY-MM`` the run processes (the ``month`` parameter, else its data interval's start)."""
    params = context.get("params") or {}
    chosen = params.get("month") if hasattr(params, "get") else None
    if chosen:
        if not MONTH.match(str(chosen)):
            raise ValueError(f"the month parameter must be YYYY-MM (e.g. 2025-10), got {chosen!r}")
        return str(chosen)
    # A run started by an asset event that names a month (a drift-triggered retrain: the newest
    # month that has landed) processes that month; the newest such event wins.
    events = context.get("triggering_asset_events") or {}
    named = sorted(
        (e for evs in events.values() for e in (evs or []) if (getattr(e, "extra", None) or {}).get("month")),
        key=lambda e: e.timestamp,
    )
    if named:
        month = str(named[-1].extra["month"])
        if not MONTH.match(month):
            raise ValueError(f"the triggering asset event names month {month!r}, not YYYY-MM")
        return month
    for key in ("data_interval_start", "logical_date"):
        value = context.get(key)
        if value is not None:
            return value.strftime("%Y-%m")
    return context["dag_run"].run_after.strftime("%Y-%m")


def month_end(month: str) -> datetime:
    """The first instant after ``month`` (UTC)."""
    year, mon = (int(x) for x in month.split("-"))
    return datetime(year + mon // 12, mon % 12 + 1, 1, tzinfo=UTC)


def months_in(folder_uri: str, pattern: str) -> list[str]:
    """Months that have a file named ``pattern`` (with ``{month}``) directly in ``folder_uri``, sorted."""
    from include import storage

    prefix, suffix = pattern.split("{month}")
    months = []
    for uri in storage.list_uris(folder_uri):
        name = uri.rsplit("/", 1)[-1]
        if name.startswith(prefix) and name.endswith(suffix) and len(name) > len(prefix) + len(suffix):
            month = name[len(prefix) : len(name) - len(suffix)]
            if MONTH.match(month):
                months.append(month)
    return sorted(months)
