"""Training snapshots for unit tests, written as ingest writes them."""

from __future__ import annotations

from pathlib import Path


def make_snapshot(frame, spec, path: Path) -> str:
    """A training snapshot (as ingest would write it) of ``frame`` at ``path``; returns its URI."""
    from include import storage
    from include.frames import to_parquet_bytes
    from include.tasks.train.ingest import conform_batch

    raw = frame.astype(str).replace({"nan": None})
    df = conform_batch(raw, spec, "mem://", "2025-01", b"k")
    return storage.write_bytes(storage.path_to_uri(path), to_parquet_bytes(df))


def with_estimator(spec, **estimator):
    """``spec`` with its estimator section updated (kind, params, ...)."""
    return spec.model_copy(update={"estimator": spec.estimator.model_copy(update=estimator)})


def conformed(frame, spec, month: str):
    """Raw demo rows conformed as ingest conforms a landed batch (all values as text first)."""
    from include.tasks.train.ingest import conform_batch

    return conform_batch(frame.astype(str).replace({"nan": None}), spec, "mem://", month, b"k")
