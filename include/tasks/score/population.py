"""Score a population file chunk by chunk with one registered version: bounded memory, deterministic bytes.

The population (CSV or Parquet, local or S3) is read ``chunk_rows`` rows at a time. Each chunk is
checked by the service's rules (:func:`include.tasks.score.checks.check_chunk`); the rows that pass
are scored by the version's ONNX graph (the artifact the service loads, digest-checked) and decided
by its rule; the others go to the rejects with their first reason. Two Parquet files are written
locally, one row group per chunk, and published by the caller:

``scores.parquet``
    ``row`` (0-based row of the input), ``entity_key`` (the spec's entity id, hashed with the PII key
    exactly as ingest and the service hash it; null without one), ``month``, ``model_version``,
    ``data_version`` (the input file's sha256), then per task: binary ``probability`` and ``decision`` (0/1 at the version's threshold); multiclass
    ``class`` (the decided class), ``probability`` (its probability) and ``probability_<class>`` for
    every class; regression ``prediction``, ``decision`` (the amount after the rule's offset) and, when
    the version has one, the 90% interval ``low`` and ``high``.
``rejects.parquet``
    ``row``, ``entity_key`` (hashed; null when the key itself was the problem), ``reason``. Never a
    raw input value: a population holds personal data.

A scored row's request id, the key feedback labels it by once it is in the prediction log, is
``<pipeline>/<month>/v<version>/<entity_key>`` (``.../row<row>`` without an entity key): see
:func:`request_id`. Same input, version, month and chunk size: the same bytes (no timestamps anywhere
in the files).
"""

from __future__ import annotations

import hashlib
import json
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from include.model_files import OnnxModel
from include.spec import PipelineSpec
from include.tasks.score.checks import check_chunk

SCORES_FILE = "scores.parquet"
REJECTS_FILE = "rejects.parquet"
MANIFEST_FILE = "manifest.json"


class PopulationError(ValueError):
    """A population cannot be scored as a whole (unreadable, a column missing, too many rejects);
    the message names the file, the problem and the fix."""


def scores_folder(lake_uri: str, pipeline: str, month: str, version: int) -> str:
    """``<lake>/<pipeline>/scores/month=M/version=N``: one folder per month and scoring version."""
    from include.uri import join

    return join(lake_uri, pipeline, "scores", f"month={month}", f"version={int(version)}")


def file_sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def population_format(uri: str, default: str) -> str:
    """``parquet`` or ``csv`` from the file's suffix, else the spec's source format."""
    low = uri.lower()
    return "parquet" if low.endswith((".parquet", ".pq")) else "csv" if low.endswith(".csv") else default


def read_chunks(
    path: Path,
    fmt: str,
    columns: list[str],
    chunk_rows: int,
    uri: str = "",
    arrow: bool = True,
    dictionary: tuple[str, ...] = (),
) -> Iterator:
    """The population's ``columns`` as pandas DataFrames of at most ``chunk_rows`` rows (CSV: blocks
    of about that many bytes per row seen so far), in file order. CSV columns are read as text (a blank
    is missing, as ingest reads it); Parquet keeps its types. ``arrow``: Arrow-backed columns (what the
    checks are fastest on), else NumPy-backed ones; the ``dictionary`` columns (the categorical
    features: few distinct values) as pandas categoricals, one string per distinct value."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    where = uri or str(path)
    if fmt == "parquet":
        try:
            pf = pq.ParquetFile(path, read_dictionary=[c for c in dictionary if c in columns])
        except (pa.ArrowInvalid, OSError) as exc:
            raise PopulationError(f"population {where} is not a readable Parquet file ({exc})") from None
        _require(columns, pf.schema_arrow.names, where)
        for batch in pf.iter_batches(batch_size=chunk_rows, columns=columns):
            yield batch.to_pandas(types_mapper=_arrow_dtype if arrow else None)
        return
    import csv

    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        header = next(csv.reader(fh), [])
    _require(columns, header, where)
    # Block size: about chunk_rows lines of this file (its first 64 KiB tell the width of a line).
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
    width = max(1, len(head) // max(1, head.count(b"\n")))
    try:
        reader = pcsv.open_csv(
            path,
            read_options=pcsv.ReadOptions(block_size=max(1 << 16, min(1 << 28, width * chunk_rows))),
            convert_options=pcsv.ConvertOptions(
                include_columns=columns,
                column_types={
                    c: pa.dictionary(pa.int32(), pa.string()) if c in dictionary else pa.string()
                    for c in columns
                },
                strings_can_be_null=True,
            ),
        )
        for batch in reader:
            yield batch.to_pandas(types_mapper=_arrow_dtype if arrow else None)
    except pa.ArrowInvalid as exc:
        raise PopulationError(f"population {where} is not readable as CSV ({exc}); re-export it") from None


def _arrow_dtype(arrow_type):
    """Arrow-backed pandas columns (the checks' null and length tests run in Arrow's kernels); a
    dictionary column stays a pandas categorical."""
    import pandas as pd
    import pyarrow as pa

    return None if pa.types.is_dictionary(arrow_type) else pd.ArrowDtype(arrow_type)


def _require(columns: list[str], present: list[str], where: str) -> None:
    missing = [c for c in columns if c not in set(present)]
    if missing:
        raise PopulationError(
            f"population {where} lacks the columns {missing} the spec declares; fix the export (a renamed "
            "column must be renamed back, or the spec changed and the model retrained)"
        )


@dataclass
class Scored:
    """What one population's scoring produced (the files are local until the caller publishes them)."""

    rows: int
    scored: int
    rejected: int
    reasons: dict[str, int]
    seconds: float
    scores_path: Path
    rejects_path: Path
    data_version: str
    logged: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def reject_share(self) -> float:
        return self.rejected / self.rows if self.rows else 0.0


def _schema(model: OnnxModel, keyed: bool):
    import pyarrow as pa

    fields = [
        pa.field("row", pa.int64(), nullable=False),
        pa.field("entity_key", pa.string()),
        pa.field("month", pa.string(), nullable=False),
        pa.field("model_version", pa.int32(), nullable=False),
        pa.field("data_version", pa.string(), nullable=False),
    ]
    if model.task == "binary":
        fields += [pa.field("probability", pa.float64()), pa.field("decision", pa.int8())]
    elif model.task == "multiclass":
        fields += [pa.field("class", pa.string()), pa.field("probability", pa.float64())]
        fields += [pa.field(f"probability_{c}", pa.float64()) for c in model.classes]
    else:
        fields += [pa.field("prediction", pa.float64()), pa.field("decision", pa.float64())]
        if model.interval is not None:
            fields += [pa.field("low", pa.float64()), pa.field("high", pa.float64())]
    return pa.schema(fields)


REJECTS_SCHEMA_FIELDS = (("row", "int64"), ("entity_key", "string"), ("reason", "string"))


def _task_columns(model: OnnxModel, scores: np.ndarray, decisions: np.ndarray) -> dict:
    if model.task == "binary":
        return {"probability": scores, "decision": decisions.astype(np.int8)}
    if model.task == "multiclass":
        classes = np.asarray(model.classes, dtype=object)
        cols = {"class": classes[decisions], "probability": model.logged_score(scores)}
        cols |= {f"probability_{c}": scores[:, i] for i, c in enumerate(model.classes)}
        return cols
    cols = {"prediction": scores, "decision": decisions}
    if model.interval is not None:
        cols |= {"low": scores + model.interval[0], "high": scores + model.interval[1]}
    return cols


def entity_hasher(key: bytes) -> Callable[[str], str]:
    """``text -> HMAC-SHA256(key, text)`` in hex, the keyed hash ingest and the service give an entity
    id (RFC 2104 written out with two pre-keyed SHA-256 states: a copy per value is about three times
    faster than ``hmac.digest`` here, which re-keys on every call)."""
    block = 64  # SHA-256's block size
    if len(key) > block:
        key = hashlib.sha256(key).digest()
    key = key.ljust(block, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))

    def digest(text: str) -> str:
        i = inner.copy()
        i.update(text.encode())
        o = outer.copy()
        o.update(i.digest())
        return o.hexdigest()

    return digest


def request_id(pipeline: str, month: str, version: int, key: str) -> str:
    """A scored row's request id: ``<pipeline>/<month>/v<version>/<hashed entity or row number>``.
    Deterministic, so a re-run of the same month and version records the same ids (nothing logged
    twice), and feedback can label a scored row by it as it labels a served one."""
    return f"{pipeline}/{month}/v{int(version)}/{key}"


def scored_chunks(
    spec: PipelineSpec, model: OnnxModel, chunks: Iterator, timings: defaultdict[str, float] | None = None
):
    """``(chunk, ok mask, reasons, scores, decisions)`` per chunk, in order. onnxruntime scores a chunk
    in a second thread (it releases the GIL) while this one checks the next and the caller hashes and
    writes the previous: on two cores the graph's time mostly hides behind the rest."""
    from concurrent.futures import ThreadPoolExecutor

    timings = timings if timings is not None else defaultdict(float)
    width = (len(model.classes),) if model.task == "multiclass" else ()

    def run(feeds):
        scores = model.predict(feeds)
        return scores, model.decide(scores)

    def done(pending):
        chunk, ok, why, future = pending
        t = time.perf_counter()
        scores, decisions = (
            future.result() if future else (np.zeros((0, *width)), np.zeros(0, dtype=np.int64))
        )
        timings["score_wait"] += time.perf_counter() - t
        return chunk, ok, why, scores, decisions

    with ThreadPoolExecutor(1, thread_name_prefix="slipway-score") as pool:
        pending = None
        for chunk in chunks:
            t = time.perf_counter()
            ok, why, feeds = check_chunk(spec, chunk)
            timings["check"] += time.perf_counter() - t
            future = pool.submit(run, feeds) if ok.any() else None
            if pending is not None:
                yield done(pending)
            pending = (chunk, ok, why, future)
        if pending is not None:
            yield done(pending)


def score_population(
    spec: PipelineSpec,
    model: OnnxModel,
    source: Path,
    fmt: str,
    out_dir: Path,
    month: str,
    pii_key: bytes,
    chunk_rows: int,
    source_uri: str = "",
    log_rows: Callable[[list[tuple]], None] | None = None,
    log_share: float = 1.0,
) -> Scored:
    """Score ``source`` with ``model`` into ``out_dir``/scores.parquet and rejects.parquet.

    ``log_rows``, when given, receives per chunk the rows to record in the prediction log (a
    ``log_share`` of the scored rows, chosen by request id so a re-run picks the same ones):
    ``(request_id, entity_key, inputs JSON, probability, decision, scores JSON or None)``."""
    import orjson
    import pyarrow as pa
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    timings: defaultdict[str, float] = defaultdict(float)
    key = spec.entity_column
    columns = [*spec.features.all, *([key] if key else [])]
    data_version = file_sha256(source)
    schema = _schema(model, key is not None)
    rejects_schema = pa.schema([pa.field(n, getattr(pa, t)()) for n, t in REJECTS_SCHEMA_FIELDS])
    scores_path, rejects_path = out_dir / SCORES_FILE, out_dir / REJECTS_FILE
    entity_hash = entity_hasher(pii_key)
    cutoff = int(min(max(log_share, 0.0), 1.0) * 2**32)
    offset = scored = 0
    reasons: Counter[str] = Counter()
    logged = 0
    with (
        # Dictionary pages only where values repeat; hashed keys are unique and incompressible.
        pq.ParquetWriter(
            scores_path, schema, compression="snappy", use_dictionary=["month", "data_version", "class"]
        ) as writer,
        pq.ParquetWriter(rejects_path, rejects_schema, compression="snappy") as rejects,
    ):
        chunks = read_chunks(
            source, fmt, columns, chunk_rows, source_uri, dictionary=tuple(spec.features.categorical)
        )
        for chunk, ok, why, scores, decisions in scored_chunks(spec, model, chunks, timings):
            t = time.perf_counter()
            n = len(chunk)
            hashed: list[str | None]
            if key is not None:
                hashed = [
                    None if v is None or v != v or not 0 < len(str(v)) <= 200 else entity_hash(str(v))
                    for v in chunk[key].to_numpy(dtype=object, na_value=None)
                ]
            else:
                hashed = [None] * n
            rows = np.arange(offset, offset + n, dtype=np.int64)
            idx = np.flatnonzero(ok)
            timings["hash"] += time.perf_counter() - t
            t = time.perf_counter()
            table = {
                "row": rows[idx],
                "entity_key": [hashed[i] for i in idx],
                "month": [month] * len(idx),
                "model_version": np.full(len(idx), model.version, dtype=np.int32),
                "data_version": [data_version] * len(idx),
                **_task_columns(model, scores, decisions),
            }
            writer.write_table(pa.Table.from_pydict(table, schema=schema))
            bad = np.flatnonzero(~ok)
            if len(bad):
                rejects.write_table(
                    pa.Table.from_pydict(
                        {
                            "row": rows[bad],
                            "entity_key": [hashed[i] for i in bad],
                            "reason": [why[i] for i in bad],
                        },
                        schema=rejects_schema,
                    )
                )
                reasons.update(why[i] for i in bad)
            timings["write"] += time.perf_counter() - t
            if log_rows is not None and len(idx):
                t = time.perf_counter()
                ids = [request_id(spec.name, month, model.version, hashed[i] or f"row{rows[i]}") for i in idx]
                pick = [j for j, rid in enumerate(ids) if zlib.crc32(rid.encode()) < cutoff]
                if pick:
                    logged += len(pick)
                    log_rows(
                        _log_tuples(spec, model, chunk, idx, pick, ids, hashed, scores, decisions, orjson)
                    )
                timings["log"] += time.perf_counter() - t
            offset += n
            scored += len(idx)
    return Scored(
        rows=offset,
        scored=scored,
        rejected=offset - scored,
        reasons=dict(reasons.most_common()),
        seconds=time.perf_counter() - t0,
        scores_path=scores_path,
        rejects_path=rejects_path,
        data_version=data_version,
        logged=logged,
        timings=dict(timings),
    )


def _log_tuples(spec, model, chunk, idx, pick, ids, hashed, scores, decisions, orjson) -> list[tuple]:
    """The prediction log's rows of the picked scored rows: the inputs as the service logs them (a
    blank number as null), the logged score, the decision, a multiclass row's probabilities."""
    import pandas as pd

    rows = chunk.iloc[idx[pick]]
    inputs: dict[str, list] = {}
    for col in [*spec.features.numeric, *spec.features.binary]:
        values = pd.to_numeric(rows[col], errors="coerce").to_numpy(dtype="float64")
        inputs[col] = [None if v != v else float(v) for v in values]
    for col in spec.features.categorical:
        inputs[col] = rows[col].astype(str).tolist()
    logged = model.logged_score(scores)
    out = []
    for k, j in enumerate(pick):
        i = idx[j]
        row = {col: inputs[col][k] for col in spec.features.all}
        probs = orjson.dumps([float(x) for x in scores[j]]).decode() if model.task == "multiclass" else None
        out.append(
            (ids[j], hashed[i], orjson.dumps(row).decode(), float(logged[j]), float(decisions[j]), probs)
        )
    return out


def manifest(
    spec: PipelineSpec, model: OnnxModel, month: str, source_uri: str, result: Scored, files: dict[str, str]
) -> bytes:
    """The folder's ``manifest.json``: what was scored with what, and the files' digests (no times, so
    a re-run writes the same bytes)."""
    body = {
        "pipeline": spec.name,
        "task": model.task,
        "month": month,
        "model_version": model.version,
        "onnx_sha256": model.onnx_sha256,
        "input": source_uri,
        "data_version": result.data_version,
        "rows": result.rows,
        "scored": result.scored,
        "rejected": result.rejected,
        "reasons": result.reasons,
        "files": files,
        "scores_sha256": file_sha256(result.scores_path),
        "rejects_sha256": file_sha256(result.rejects_path),
    }
    return json.dumps(body, indent=2, sort_keys=True).encode()


def find_scored(lake_uri: str, pipeline: str, month: str, entity_key: str) -> list[dict]:
    """Every scored row of ``entity_key`` (hashed) in ``month``, one per version that scored the month,
    with the folder's manifest (input, its sha256, the graph's digest): what ``slipway lineage --scored``
    prints."""
    import tempfile

    import pyarrow.parquet as pq

    from include import storage
    from include.uri import join

    found = []
    month_uri = join(lake_uri, pipeline, "scores", f"month={month}")
    for uri in storage.list_uris(month_uri):
        if not uri.endswith("/" + MANIFEST_FILE):
            continue
        folder = uri.rsplit("/", 1)[0]
        info = json.loads(storage.read_bytes(uri))
        with tempfile.TemporaryDirectory(prefix="slipway-lineage-") as tmp:
            path = storage.local_copy(join(folder, SCORES_FILE), Path(tmp))
            rows = pq.read_table(path, filters=[("entity_key", "==", entity_key)]).to_pylist()
        for row in rows:
            found.append(
                {
                    **row,
                    "request_id": request_id(pipeline, month, row["model_version"], entity_key),
                    "scores_uri": join(folder, SCORES_FILE),
                    "input": info.get("input"),
                    "onnx_sha256": info.get("onnx_sha256"),
                    "scores_sha256": info.get("scores_sha256"),
                }
            )
    return sorted(found, key=lambda r: r["model_version"])
