"""Ingest: load a landed batch, enforce the spec's schema, protect PII, write Parquet to the lake.

Lake layout: ``<lake>/<pipeline>/batches/month=<YYYY-MM>/batch.parquet``, one key per data
interval. Writing is deterministic (same batch -> same bytes) and atomic, so re-running an
interval rewrites the same key with the same content, and a batch whose content changed after
it was ingested is refused rather than silently overwriting what training already used.

Beside the batches, a small id index per month, ``<lake>/<pipeline>/_ids/month=<YYYY-MM>.parquet``,
holds what duplicate detection needs (the hashed entity ids, truncated to 128 bits, and digests of
the batch), so a new month is checked against the index rather than by re-reading every earlier
batch. The index is written before its batch: an index without a batch (a crash between the two
writes) is ignored and rewritten by the re-run, and a batch without an index (a lake from before
the index existed) gets its index rebuilt from the batch.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import re
from dataclasses import dataclass

from include import storage
from include.frames import to_parquet_bytes
from include.spec import SPLIT_COLUMN, PipelineSpec, Split

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
    from include.months import months_in

    return months_in(storage.join(landing_uri, spec.name), spec.source.batch_name)


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


def _examples(values, n: int = 5) -> list:
    return sorted({str(v) for v in values})[:n]


def _hash(value: str, key: bytes) -> str:
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()


def sensitive_values(s):
    """A sensitive attribute's column as the lake holds it: int64 when every value is a whole number
    (0/1 flags, codes), the values as they are otherwise. Ingest and the feedback's curated rows type
    it alike, so a curated row concatenates with the landed batches."""
    import pandas as pd

    num = pd.to_numeric(s, errors="coerce")
    whole = num.notna().all() and (num == num.round()).all()
    return num.astype("int64") if whole else s.astype(object)


def _target_problem(s, spec: PipelineSpec) -> str | None:
    """What is wrong with a batch's (non-blank) target under the spec's task, with counts; None if nothing."""
    import numpy as np
    import pandas as pd

    col, target = spec.target.column, spec.target
    if spec.task == "multiclass":
        text = s.astype(str)
        other = text[~text.isin(target.classes or [])].value_counts()
        if len(other):
            counts = ", ".join(f"{v!r}: {n}" for v, n in other.head(10).items())
            return (
                f"target {col!r} holds values outside target.classes {target.classes} ({counts} rows); "
                "add them to target.classes in the spec if they are real classes, or fix the export"
            )
        return None
    if spec.task == "regression":
        num = pd.to_numeric(s, errors="coerce")
        bad = s[num.isna() | ~np.isfinite(num.fillna(0))]
        if len(bad):
            return f"target {col!r} must be a number, got {_examples(bad)} in {len(bad)} rows"
        if target.range is not None:
            low, high = target.range
            out = num[(num < low) | (num > high)]
            if len(out):
                return (
                    f"target {col!r} must lie in target.range [{low:g}, {high:g}], got {len(out)} rows outside "
                    f"(e.g. {_examples(out, 3)}); fix the export, or widen target.range in the spec"
                )
    return None


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
                # Never the raw value (it is PII): the file's line numbers and the keyed hash the lake uses.
                rows = [int(i) + 1 for i in dupes.index[:3]]  # 1-based data rows, header not counted
                hashed = sorted({_hash(str(v), pii_key)[:12] for v in dupes})[:2]
                problems.append(
                    f"identifier {col!r} repeats in {len(dupes)} rows (e.g. data rows {rows}, keyed hashes "
                    f"{hashed}); each record must appear once per batch"
                )
                continue
            if spec.identifiers[col] == "hash":
                out[col] = [_hash(str(v), pii_key) for v in s]
            continue  # "drop": the column never reaches the lake
        if col in spec.features.binary:
            num = pd.to_numeric(s, errors="coerce")
            off = s[s.notna() & ~num.isin([0, 1])]  # text such as yes/no, or numbers other than 0/1
            if len(off):
                problems.append(
                    f"column {col!r} is declared binary and must be 0 or 1, got {_examples(off, 3)} in "
                    f"{len(off)} rows; declare it under features.categorical, or map it to 0/1 before "
                    "it lands"
                )
                continue
            if s.isna().any():
                problems.append(
                    f"column {col!r} is declared binary and must be 0 or 1 in every row, got blanks in "
                    f"{int(s.isna().sum())} rows; fill them with 0 or 1 in the export"
                )
                continue
            out[col] = num.astype("int64")
        elif col in spec.features.numeric:
            num = pd.to_numeric(s, errors="coerce")
            bad = s[num.isna() & s.notna()]
            if len(bad):
                problems.append(f"column {col!r} must be numeric, got {_examples(bad)} in {len(bad)} rows")
                continue
            out[col] = num.astype("float64")
        elif col in spec.sensitive_attributes:
            out[col] = sensitive_values(s)
        elif col == spec.target.column:
            if s.isna().any():
                problems.append(f"target {col!r} is blank in {int(s.isna().sum())} rows")
                continue
            problem = _target_problem(s, spec)
            if problem:
                problems.append(problem)
                continue
            out[col] = pd.to_numeric(s).astype("float64") if spec.task == "regression" else s.astype(str)
        else:  # categorical feature
            out[col] = s.astype(object)
    if problems:
        raise BatchError(
            f"batch {uri} does not match spec {spec.name}.yaml:\n  - "
            + "\n  - ".join(problems)
            + "\nFix the export in the landing zone and re-run the task; nothing was written to the lake."
        )
    if spec.entity_column is not None:
        # From the raw id, before hashing: the split does not depend on the deployment's PII key, so
        # the same data trains the same model everywhere. Three labels say nothing about the id.
        out[SPLIT_COLUMN] = assign_splits(raw[spec.entity_column], spec.split)
    out["batch_month"] = month
    return out.reset_index(drop=True)


def assign_splits(ids, split: Split) -> list[str]:
    """``train``/``validation``/``test`` per entity id, from a salted sha256 of the id alone.

    The same id always gets the same split for the same ``random_state``, whatever else is in the
    batch, so a customer never moves between splits as monthly snapshots grow.
    """
    salt = f"slipway-split:{split.random_state}:".encode()
    test_cut = split.test_size
    val_cut = split.test_size + split.validation_size
    out = []
    for value in ids:
        digest = hashlib.sha256(salt + str(value).encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2**64
        out.append("test" if u < test_cut else "validation" if u < val_cut else "train")
    return out


def id_index_uri(lake_uri: str, spec: PipelineSpec, month: str) -> str:
    """The lake key of the id index of ``month`` (what duplicate detection reads)."""
    return storage.join(lake_uri, spec.name, "_ids", f"month={month}.parquet")


@dataclass(frozen=True)
class IdIndex:
    """What duplicate detection knows about one ingested month, without reading its batch."""

    ids: frozenset[bytes]  # first 128 bits of each hashed entity id (empty without a hashed identifier)
    content_sha256: str  # the rows without batch_month: the same rows under another month match
    batch_sha256: str  # the batch object's bytes: a re-run of the month compares against this


def _build_index(df, spec: PipelineSpec, batch_sha256: str) -> IdIndex:
    import pandas as pd

    key = spec.entity_column
    ids = frozenset(bytes.fromhex(v[:32]) for v in df[key]) if key else frozenset()
    body = df.drop(columns="batch_month")
    content = hashlib.sha256("\x1f".join(body.columns).encode())
    # NaN and None hash alike, so a frame and its Parquet round trip give the same digest.
    content.update(pd.util.hash_pandas_object(body, index=False).to_numpy().tobytes())
    return IdIndex(ids, content.hexdigest(), batch_sha256)


def _index_bytes(index: IdIndex) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"id": pa.array(sorted(index.ids), pa.binary(16))}).replace_schema_metadata(
        {"content_sha256": index.content_sha256, "batch_sha256": index.batch_sha256}
    )
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="snappy")
    return buf.getvalue()


def _read_index(uri: str) -> IdIndex:
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(storage.read_bytes(uri)))
    meta = table.schema.metadata
    return IdIndex(
        frozenset(table.column("id").to_pylist()),
        meta[b"content_sha256"].decode(),
        meta[b"batch_sha256"].decode(),
    )


def _month_of(uri: str) -> str | None:
    m = re.search(r"/month=(\d{4}-\d{2})(?:/batch|)\.parquet$", uri)
    return m.group(1) if m else None


def load_id_indexes(spec: PipelineSpec, lake_uri: str) -> dict[str, IdIndex]:
    """The id index of every month that has a batch in the lake.

    An index without its batch is ignored (the batch write never happened); a batch without an
    index gets one rebuilt from the batch and written, so the next run reads the index only.
    """
    import pandas as pd

    batches = {
        m: u
        for u in storage.list_uris(storage.join(lake_uri, spec.name, "batches"))
        if u.endswith("/batch.parquet") and (m := _month_of(u))
    }
    indexed = {m for u in storage.list_uris(storage.join(lake_uri, spec.name, "_ids")) if (m := _month_of(u))}
    out: dict[str, IdIndex] = {}
    for month, uri in sorted(batches.items()):
        if month in indexed:
            out[month] = _read_index(id_index_uri(lake_uri, spec, month))
            continue
        data = storage.read_bytes(uri)
        index = _build_index(pd.read_parquet(io.BytesIO(data)), spec, hashlib.sha256(data).hexdigest())
        storage.write_bytes(id_index_uri(lake_uri, spec, month), _index_bytes(index))
        out[month] = index
    return out


def _check_not_duplicate(
    index: IdIndex, spec: PipelineSpec, lake_uri: str, month: str, uri: str, known: dict[str, IdIndex]
) -> None:
    """Refuse a batch that repeats another month's records (or its whole content)."""
    for other, prev in sorted(known.items()):
        if other == month:
            continue
        where = lake_batch_uri(lake_uri, spec, other)
        if not spec.source.recurring_entities:
            overlap = len(index.ids & prev.ids)
            if overlap:
                raise BatchError(
                    f"batch {uri} repeats {overlap} records already ingested in {where}: "
                    "the same data seems to have been delivered twice; remove the duplicate file "
                    "from the landing zone (or correct its contents) and re-run, or set "
                    "source.recurring_entities: true in the spec if the same entity legitimately "
                    "appears in every batch"
                )
        if index.content_sha256 == prev.content_sha256:
            raise BatchError(f"batch {uri} is identical to {where}: remove the duplicate file and re-run")


def ingest_month(
    spec: PipelineSpec,
    month: str,
    landing_uri: str,
    lake_uri: str,
    pii_key: bytes,
    indexes: dict[str, IdIndex] | None = None,
) -> dict:
    """Ingest the batch of one month; return its lake URI, row count and whether it was written.

    ``indexes`` are the lake's id indexes (:func:`load_id_indexes`), loaded here when not given;
    :func:`ingest_batches` loads them once for all the months it catches up, and this function
    adds the month it writes.
    """
    if not _MONTH.match(month):
        raise BatchError(f"month must be YYYY-MM, got {month!r}")
    src = landing_batch_uri(landing_uri, spec, month)
    if not storage.exists(src):
        raise BatchError(
            f"batch for {month} not found at {src}: drop the file into the landing zone and re-run"
        )
    df = conform_batch(_read(src, spec.source.format), spec, src, month, pii_key)
    data = to_parquet_bytes(df)
    digest = hashlib.sha256(data).hexdigest()
    dest = lake_batch_uri(lake_uri, spec, month)
    if indexes is None:
        indexes = load_id_indexes(spec, lake_uri)
    result = {"month": month, "uri": dest, "rows": int(len(df)), "sha256": digest}
    index = _build_index(df, spec, digest)
    if month in indexes:  # the lake holds this month's batch (an index is only kept beside its batch)
        # Compared by content, not Parquet bytes: those also carry the writer's pandas/pyarrow
        # versions, and an upgrade must not turn every earlier month into a "changed" batch.
        if indexes[month].content_sha256 == index.content_sha256:
            return {**result, "sha256": indexes[month].batch_sha256, "status": "unchanged"}
        raise BatchError(
            f"the lake already holds a different batch for {month} at {dest}, and the landed file "
            f"{src} has changed since it was ingested; models may have been trained on the old one. "
            "If the correction is intended, archive and delete the lake object, then re-run"
        )
    _check_not_duplicate(index, spec, lake_uri, month, src, indexes)
    # Index first: a crash before the batch write leaves an index without a batch, which is ignored.
    storage.write_bytes(id_index_uri(lake_uri, spec, month), _index_bytes(index))
    storage.write_bytes(dest, data)
    indexes[month] = index
    return {**result, "status": "written"}


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
    indexes = load_id_indexes(spec, lake_uri)
    results = [ingest_month(spec, m, landing_uri, lake_uri, pii_key, indexes) for m in months]
    return {
        "month": month,
        "batches": results,
        "batch_uris": [r["uri"] for r in results],
        "rows": sum(r["rows"] for r in results),
        "written": [r["month"] for r in results if r["status"] == "written"],
    }
