"""Deliver a scored month to a PostgreSQL table through an Airflow connection, upserted by key and month.

The table has the scores file's columns (see :mod:`include.tasks.score.population`) and the primary
key ``(entity_key, month)`` (``(row, month)`` for a pipeline without an entity key). It is created
when missing. One transaction per delivery: the file is copied into a temporary table (``COPY``),
upserted (``INSERT ... ON CONFLICT DO UPDATE``), and the month's rows that this delivery no longer
holds (an entity rejected or gone since an earlier run) are deleted, so after a commit the month's
rows are exactly this run's and a reader never sees half a month. A re-run of the same month and
version leaves the table as it was.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

_PG_TYPES = {
    "int64": "BIGINT",
    "int32": "INTEGER",
    "int8": "SMALLINT",
    "double": "DOUBLE PRECISION",
    "string": "TEXT",
}


class DeliveryError(ValueError):
    """A delivery target does not fit the scores; the message names the table, the problem and the fix."""


def _ident(name: str) -> str:
    """A quoted identifier (``schema.table`` quoted part by part); names are checked by the spec."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in name.split("."))


def table_columns(scores_path: Path) -> list[tuple[str, str]]:
    """``(column, PostgreSQL type)`` of the scores file, in its order."""
    import pyarrow.parquet as pq

    out = []
    for f in pq.ParquetFile(scores_path).schema_arrow:
        kind = _PG_TYPES.get(str(f.type))
        if kind is None:
            raise DeliveryError(
                f"the scores column {f.name!r} has type {f.type}, which has no PostgreSQL type here"
            )
        out.append((f.name, kind))
    return out


def _existing_columns(cur: Any, table: str) -> list[str]:
    schema, _, name = table.rpartition(".")
    cur.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = %s "
        "AND table_schema = COALESCE(NULLIF(%s, ''), current_schema()) ORDER BY ordinal_position",
        (name, schema),
    )
    return [r[0] for r in cur.fetchall()]


def _copy(cur: Any, sql: str, data: bytes) -> None:
    if hasattr(cur, "copy_expert"):  # psycopg2
        cur.copy_expert(sql, io.BytesIO(data))
        return
    with cur.copy(sql) as copy:  # psycopg 3
        copy.write(data)


def deliver_postgres(conn: Any, table: str, scores_path: Path, month: str, keyed: bool) -> dict:
    """Upsert the month's scores into ``table`` on the DB-API connection ``conn`` (psycopg2 or 3) and
    commit; returns ``{"table", "rows", "removed"}``. Raises :class:`DeliveryError` when an existing
    table has other columns."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    columns = table_columns(scores_path)
    names = [c for c, _ in columns]
    key = "entity_key" if keyed else "row"
    t, cols = _ident(table), ", ".join(_ident(c) for c in names)
    cur = conn.cursor()
    try:
        existing = _existing_columns(cur, table)
        if existing and existing != names:
            raise DeliveryError(
                f"table {table} has the columns {existing}, but this pipeline's scores have {names} (the "
                "task or the classes changed?): deliver to a new table (scoring.deliver in the spec), or "
                "migrate this one"
            )
        if not existing:
            body = ", ".join(f"{_ident(c)} {kind}" for c, kind in columns)
            cur.execute(f"CREATE TABLE IF NOT EXISTS {t} ({body}, PRIMARY KEY ({_ident(key)}, month))")
        cur.execute(
            f"CREATE TEMP TABLE slipway_delivery ({', '.join(f'{_ident(c)} {k}' for c, k in columns)}) "
            "ON COMMIT DROP"
        )
        pf = pq.ParquetFile(scores_path)
        rows = 0
        for i in range(pf.num_row_groups):
            group = pf.read_row_group(i)
            rows += group.num_rows
            buf = io.BytesIO()
            pcsv.write_csv(group, buf, pcsv.WriteOptions(include_header=False))
            _copy(cur, f"COPY slipway_delivery ({cols}) FROM STDIN WITH (FORMAT csv)", buf.getvalue())
        updates = ", ".join(f"{_ident(c)} = EXCLUDED.{_ident(c)}" for c in names if c not in (key, "month"))
        # An entity twice in one population: its last row wins (as a later upsert would).
        cur.execute(
            f"INSERT INTO {t} ({cols}) SELECT DISTINCT ON ({_ident(key)}) {cols} FROM slipway_delivery "
            f"ORDER BY {_ident(key)}, row DESC ON CONFLICT ({_ident(key)}, month) DO UPDATE SET {updates}"
        )
        cur.execute(
            f"DELETE FROM {t} AS d WHERE d.month = %s AND NOT EXISTS (SELECT 1 FROM slipway_delivery s "
            f"WHERE s.{_ident(key)} = d.{_ident(key)})",
            (month,),
        )
        removed = cur.rowcount
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    finally:
        cur.close()
    return {"table": table, "rows": rows, "removed": max(removed, 0)}
