"""Retention and erasure in the lake and the delivery tables (the prediction log's side is
:mod:`include.prediction_log.retention`).

Scored months live at ``<lake>/<pipeline>/scores/month=M/version=N/`` (``scores.parquet``,
``rejects.parquet``, ``manifest.json``; see :mod:`include.tasks.score.population`).
:func:`purge_scores` deletes the months whose end is older than the pipeline's ``scores_days``;
:func:`erase_scored` takes one entity's rows out of every scored file (rewritten whole, atomically,
the manifest noting ``erased_rows`` and the new digests); :func:`erase_delivered` deletes its rows from
a delivery table. Only keyed hashes come here, never a raw id. No Airflow import.
"""

from __future__ import annotations

import json
import re
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from include import storage
from include.tasks.score.population import MANIFEST_FILE, REJECTS_FILE, SCORES_FILE, file_sha256
from include.times import as_utc
from include.uri import join

_MONTH_DIR = re.compile(r"/month=(\d{4})-(\d{2})/")


def _scores_root(lake_uri: str, pipeline: str) -> str:
    return join(lake_uri, pipeline, "scores")


def _month_end(year: int, month: int) -> datetime:
    return datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)


def purge_scores(lake_uri: str, pipeline: str, now: datetime, days: int | None) -> dict:
    """Delete every scored file of the months that ended more than ``days`` before ``now`` (None keeps
    all). Each folder's manifest goes first: a folder without one is incomplete to every reader, so a
    purge cut short never leaves what looks like a whole month. Returns ``{"months", "files"}``."""
    if days is None:
        return {"months": [], "files": 0}
    cutoff = as_utc(now, "the purge's now") - timedelta(days=days)
    folders: dict[str, list[str]] = {}
    for uri in storage.list_uris(_scores_root(lake_uri, pipeline)):
        m = _MONTH_DIR.search(uri)
        if m and _month_end(int(m.group(1)), int(m.group(2))) <= cutoff:
            folders.setdefault(f"{m.group(1)}-{m.group(2)}", []).append(uri)
    files = 0
    for uris in folders.values():
        for uri in sorted(uris, key=lambda u: not u.endswith("/" + MANIFEST_FILE)):
            storage.delete(uri)
            files += 1
    return {"months": sorted(folders), "files": files}


def _rewrite_without(uri: str, entity_key: str, tmp: Path) -> tuple[int, str | None]:
    """Rewrite the Parquet file at ``uri`` without ``entity_key``'s rows, row group by row group (the
    chunks it was written in), same schema and compression; returns (rows removed, new sha256)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        path = storage.local_copy(uri, tmp)
    except FileNotFoundError:
        return 0, None
    pf = pq.ParquetFile(path)
    if "entity_key" not in pf.schema_arrow.names:
        return 0, None
    hits = pq.read_table(path, columns=["entity_key"], filters=[("entity_key", "==", entity_key)]).num_rows
    if not hits:
        return 0, None
    meta = pf.metadata.row_group(0).column(0) if pf.metadata.num_row_groups else None
    compression = meta.compression.lower() if meta is not None else "snappy"
    dictionary = [c for c in ("month", "data_version", "class") if c in pf.schema_arrow.names]
    out = tmp / f"erased-{path.name}"
    with pq.ParquetWriter(out, pf.schema_arrow, compression=compression, use_dictionary=dictionary) as writer:
        for i in range(pf.num_row_groups):
            group = pf.read_row_group(i)
            keep = pc.fill_null(pc.not_equal(group.column("entity_key"), entity_key), True)
            writer.write_table(group.filter(keep))
    storage.write_file(uri, out)
    return hits, file_sha256(out)


def erase_scored(lake_uri: str, pipeline: str, entity_key: str) -> dict:
    """Take ``entity_key``'s (hashed) rows out of every ``scores.parquet`` and ``rejects.parquet`` of the
    pipeline; each changed folder's manifest gets ``erased_rows`` (cumulative) and the new digests, and is
    written last. Returns ``{"files", "rows"}``; a second call finds nothing."""
    files = rows = 0
    for uri in storage.list_uris(_scores_root(lake_uri, pipeline)):
        if not uri.endswith("/" + MANIFEST_FILE):
            continue
        folder = uri.rsplit("/", 1)[0]
        info = json.loads(storage.read_bytes(uri))
        changed = 0
        with tempfile.TemporaryDirectory(prefix="slipway-erase-") as tmp:
            for name, digest in ((SCORES_FILE, "scores_sha256"), (REJECTS_FILE, "rejects_sha256")):
                removed, sha = _rewrite_without(join(folder, name), entity_key, Path(tmp))
                if removed:
                    info[digest] = sha
                    changed += removed
                    files += 1
        if changed:
            info["erased_rows"] = int(info.get("erased_rows", 0)) + changed
            storage.write_bytes(uri, json.dumps(info, indent=2, sort_keys=True).encode())
            rows += changed
    return {"files": files, "rows": rows}


def erase_delivered(conn: Any, table: str, entity_key: str) -> int:
    """Delete ``entity_key``'s rows from the delivery ``table`` on the DB-API connection ``conn`` and
    commit; a table not created yet holds none."""
    from include.tasks.score.deliver import _ident

    cur = conn.cursor()
    try:
        schema, _, name = table.rpartition(".")
        cur.execute(
            "SELECT 1 FROM information_schema.columns WHERE table_name = %s AND column_name = 'entity_key' "
            "AND table_schema = COALESCE(NULLIF(%s, ''), current_schema())",
            (name, schema),
        )
        if cur.fetchone() is None:
            conn.rollback()
            return 0
        cur.execute(f"DELETE FROM {_ident(table)} WHERE entity_key = %s", (entity_key,))
        deleted = cur.rowcount
        conn.commit()
        return int(deleted)
    except BaseException:
        conn.rollback()
        raise
    finally:
        cur.close()
