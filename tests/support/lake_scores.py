"""A small scored month in a lake folder, laid out as ``<pipeline>__score`` publishes it (scores,
rejects, manifest), built by hand for erasure and retention tests."""

from __future__ import annotations

import json
from pathlib import Path


def write_scored_month(lake: Path, pipeline: str, month: str, version: int, keys: list[str | None]) -> Path:
    """``scores.parquet`` (two row groups, as two chunks), ``rejects.parquet`` and ``manifest.json`` of
    ``keys`` (hashed entity keys; None for a row without one) under the month's folder; returns it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from include.tasks.score.population import file_sha256

    folder = lake / pipeline / "scores" / f"month={month}" / f"version={version}"
    folder.mkdir(parents=True, exist_ok=True)
    n = len(keys)
    table = pa.table(
        {
            "row": pa.array(range(n), pa.int64()),
            "entity_key": pa.array(keys, pa.string()),
            "month": pa.array([month] * n, pa.string()),
            "model_version": pa.array([version] * n, pa.int32()),
            "data_version": pa.array(["d" * 64] * n, pa.string()),
            "probability": pa.array([i / n for i in range(n)], pa.float64()),
            "decision": pa.array([i % 2 for i in range(n)], pa.int8()),
        }
    )
    half = max(1, n // 2)
    with pq.ParquetWriter(folder / "scores.parquet", table.schema, compression="snappy") as writer:
        writer.write_table(table.slice(0, half))
        writer.write_table(table.slice(half))
    rejects = pa.table(
        {
            "row": pa.array([n], pa.int64()),
            "entity_key": pa.array([keys[0]], pa.string()),
            "reason": pa.array(["tenure: not a number"], pa.string()),
        }
    )
    pq.write_table(rejects, folder / "rejects.parquet", compression="snappy")
    manifest = {
        "pipeline": pipeline,
        "month": month,
        "model_version": version,
        "rows": n + 1,
        "scored": n,
        "rejected": 1,
        "scores_sha256": file_sha256(folder / "scores.parquet"),
        "rejects_sha256": file_sha256(folder / "rejects.parquet"),
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return folder
