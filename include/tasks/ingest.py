"""Ingest: load a landed batch, enforce the spec's schema, protect PII, write Parquet to the lake.

Lake layout: ``<lake>/<pipeline>/batches/month=<YYYY-MM>/batch.parquet``, one key per data
interval. Writing is deterministic (same batch -> same bytes) and atomic, so re-running an
interval rewrites the same key with the same content, and a batch whose content changed after
it was ingested is refused rather than silently overwriting what training already used.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import re

from include import storage
from include.spec import PipelineSpec

_MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


class BatchError(ValueError):
    """A batch is unusable; the message names the batch, the problem and the fix."""


def landing_batch_uri(landing_uri: str, spec: PipelineSpec, month: str) -> str:
    """Where the batch of ``month`` lands."""
    return storage.join(landing_uri, spec.name, spec.source.batch_name.format(month=month))


def lake_batch_uri(lake_uri: str, spec: PipelineSpec, month: str) -> str:
    """The lake key of the ingested batch of ``month``."""
    return storage.join(lake_uri, spec.name, "batches", f"month={month}", "batch.parquet")


def landed_months(landing_uri: str, spec: PipelineSpec) -> list[str]:
    """Months that have a batch in the landing zone, sorted."""
    prefix, suffix = spec.source.batch_name.split("{month}")
    months = []
    for uri in storage.list_uris(storage.join(landing_uri, spec.name)):
        name = uri.rsplit("/", 1)[-1]
        if name.startswith(prefix) and name.endswith(suffix):
            month = name[len(prefix) : len(name) - len(suffix)]
            if _MONTH.match(month):
                months.append(month)
    return sorted(months)


def _read(uri: str, fmt: str):
    import pandas as pd

    data = storage.read_bytes(uri)
    if fmt == "parquet":
        return pd.read_parquet(io.BytesIO(data)).astype("string").astype(object)
    if not data.strip():
        return pd.DataFrame()
    try:
        # Everything as text first: types are enforced column by column below with clear errors.
        return pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, na_values=[""])
    except pd.errors.ParserError as exc:
        raise BatchError(
            f"batch {uri}: not readable as CSV ({exc}); re-export it as comma-separated text"
        ) from None


def _examples(values) -> list:
    return sorted({str(v) for v in values})[:5]


def _hash(value: str, key: bytes) -> str:
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()


def conform_batch(raw, spec: PipelineSpec, uri: str, month: str, pii_key: bytes):
    """Check and type one raw batch (all-text DataFrame) against the spec; return the lake frame."""
    import pandas as pd

    if raw.shape[0] == 0:
        raise BatchError(
            f"batch {uri} is empty (no rows): the upstream export produced nothing; "
            "replace it with a complete export and re-run the task"
        )
    missing = [c for c in spec.required_columns if c not in raw.columns]
    if missing:
        raise BatchError(
            f"batch {uri} lacks required columns {missing} (spec {spec.name}.yaml declares them); "
            "fix the export, or change the spec if the columns were renamed on purpose"
        )
    out = pd.DataFrame(index=raw.index)
    problems: list[str] = []
    for col in spec.required_columns:
        s = raw[col]
        if col in spec.identifiers:
            if s.isna().any():
                problems.append(f"identifier {col!r} is blank in {int(s.isna().sum())} rows")
                continue
            dupes = s[s.duplicated()]
            if len(dupes):
                problems.append(
                    f"identifier {col!r} repeats in {len(dupes)} rows (e.g. {_examples(dupes)[:2]}); "
                    "each record must appear once per batch"
                )
                continue
            if spec.identifiers[col] == "hash":
                out[col] = [_hash(str(v), pii_key) for v in s]
            continue  # "drop": the column never reaches the lake
        if col in spec.features.numeric or col in spec.features.binary:
            num = pd.to_numeric(s, errors="coerce")
            bad = s[num.isna() & s.notna()]
            if len(bad):
                problems.append(f"column {col!r} must be numeric, got {_examples(bad)} in {len(bad)} rows")
                continue
            if col in spec.features.binary:
                off = num[num.notna() & ~num.isin([0, 1])]
                if len(off) or num.isna().any():
                    problems.append(
                        f"column {col!r} must be 0 or 1 in every row, got "
                        f"{_examples(off) if len(off) else 'blanks'}"
                    )
                    continue
                out[col] = num.astype("int64")
            else:
                out[col] = num.astype("float64")
        elif col in spec.sensitive_attributes:
            num = pd.to_numeric(s, errors="coerce")
            is_int = num.notna().all() and (num == num.round()).all()
            out[col] = num.astype("int64") if is_int else s.astype(object)
        elif col == spec.target.column:
            if s.isna().any():
                problems.append(f"target {col!r} is blank in {int(s.isna().sum())} rows")
                continue
            out[col] = s.astype(str)
        else:  # categorical feature
            out[col] = s.astype(object)
    if problems:
        raise BatchError(
            f"batch {uri} does not match spec {spec.name}.yaml:\n  - "
            + "\n  - ".join(problems)
            + "\nFix the export in the landing zone and re-run the task; nothing was written to the lake."
        )
    out["batch_month"] = month
    return out.reset_index(drop=True)


def to_parquet_bytes(df) -> bytes:
    """Deterministic Parquet bytes (same frame -> same bytes)."""
    buf = io.BytesIO()
    df.to_parquet(buf, index=False, engine="pyarrow", compression="snappy")
    return buf.getvalue()


def read_parquet(uri: str):
    """A lake object as a DataFrame."""
    import pandas as pd

    return pd.read_parquet(io.BytesIO(storage.read_bytes(uri)))


def _check_not_duplicate(df, spec: PipelineSpec, lake_uri: str, month: str, uri: str) -> None:
    hashed = [c for c, action in spec.identifiers.items() if action == "hash"]
    for other in storage.list_uris(storage.join(lake_uri, spec.name, "batches")):
        if f"/month={month}/" in other or not other.endswith(".parquet"):
            continue
        prev = read_parquet(other)
        if hashed:
            key = hashed[0]
            overlap = set(df[key]) & set(prev[key])
            if overlap:
                raise BatchError(
                    f"batch {uri} repeats {len(overlap)} records already ingested in {other}: "
                    "the same data seems to have been delivered twice; remove the duplicate file "
                    "from the landing zone (or correct its contents) and re-run"
                )
        elif df.drop(columns="batch_month").equals(prev.drop(columns="batch_month")):
            raise BatchError(f"batch {uri} is identical to {other}: remove the duplicate file and re-run")


def ingest_month(spec: PipelineSpec, month: str, landing_uri: str, lake_uri: str, pii_key: bytes) -> dict:
    """Ingest the batch of one month; return its lake URI, row count and whether it was written."""
    if not _MONTH.match(month):
        raise BatchError(f"month must be YYYY-MM, got {month!r}")
    src = landing_batch_uri(landing_uri, spec, month)
    if not storage.exists(src):
        raise BatchError(
            f"batch for {month} not found at {src}: drop the file into the landing zone and re-run"
        )
    df = conform_batch(_read(src, spec.source.format), spec, src, month, pii_key)
    _check_not_duplicate(df, spec, lake_uri, month, src)
    data = to_parquet_bytes(df)
    digest = hashlib.sha256(data).hexdigest()
    dest = lake_batch_uri(lake_uri, spec, month)
    status = "written"
    if storage.exists(dest):
        if hashlib.sha256(storage.read_bytes(dest)).hexdigest() == digest:
            status = "unchanged"
        else:
            raise BatchError(
                f"the lake already holds a different batch for {month} at {dest}, and the landed file "
                f"{src} has changed since it was ingested; models may have been trained on the old one. "
                "If the correction is intended, archive and delete the lake object, then re-run"
            )
    if status == "written":
        storage.write_bytes(dest, data)
    return {"month": month, "uri": dest, "rows": int(len(df)), "sha256": digest, "status": status}


def ingest_batches(spec: PipelineSpec, month: str, landing_uri: str, lake_uri: str, pii_key: bytes) -> dict:
    """Ingest the interval's batch and any earlier landed batch not yet in the lake.

    Returns the lake URIs of every batch up to ``month`` (the training snapshot's inputs).
    """
    months = [m for m in landed_months(landing_uri, spec) if m <= month]
    if month not in months:
        src = landing_batch_uri(landing_uri, spec, month)
        raise BatchError(
            f"batch for {month} not found at {src}: drop the file into the landing zone and re-run"
        )
    results = [ingest_month(spec, m, landing_uri, lake_uri, pii_key) for m in months]
    return {
        "month": month,
        "batches": results,
        "batch_uris": [r["uri"] for r in results],
        "rows": sum(r["rows"] for r in results),
        "written": [r["month"] for r in results if r["status"] == "written"],
    }
