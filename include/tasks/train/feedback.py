"""The feedback loop: labelled predictions from the service's log become a batch of the next snapshot.

``curate_feedback`` reads the predictions the service answered that received a ground-truth label
before the run's cut-off, curates them by the rule in docs/operating.md ("The feedback loop"), and
writes what is left as one Parquet batch with the lake batches' exact columns and types, at
``<lake>/<pipeline>/feedback/until=<cut-off>/batch.parquet``. ``build_snapshot``
(:mod:`include.tasks.train.data_version`) then lets each feedback row replace its entity's landed
row, and the snapshot goes through the same Great Expectations suite as any batch.

The rule, in the order :func:`curate` applies it: served rows only, made and labelled before the
cut-off; one row per entity key (its newest); the label mapped to the target's values; every
current feature present with a value of its type; the entity has a landed record (its sensitive
attributes and split come from it); the prediction was made after that record's month. Every
exclusion is counted. The batch is written once per cut-off: a re-run that curates different rows
keeps the stored batch and says so.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from include import storage
from include.database import database
from include.months import month_end
from include.prediction_log import reads
from include.spec import SPLIT_COLUMN, PipelineSpec, post_ingest_schema

logger = logging.getLogger(__name__)

#: Exclusion reasons, in the order the rule applies them.
REASONS = (
    "no_entity_key",
    "older_label_of_same_entity",
    "inputs_unusable",
    "entity_not_landed",
    "not_newer_than_landed",
    "label_unusable",
)


class FeedbackError(ValueError):
    """Feedback cannot be curated into a batch (a retry cannot fix it); the message names the fix."""


class FeedbackUnavailable(RuntimeError):
    """The prediction log cannot be read now; the task is retried, never run without feedback."""


@dataclass
class Curated:
    """A curation's outcome: the batch's rows (or None) and how many labelled rows each rule dropped."""

    frame: Any  # pandas.DataFrame with post_ingest_schema's columns, or None when empty
    labelled: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    by_key: dict[str, int] = field(default_factory=dict)  # rows in the batch per API key that labelled them

    @property
    def rows(self) -> int:
        return 0 if self.frame is None else len(self.frame)


def cutoff_token(cutoff: str) -> str:
    """The cut-off as a key segment: ``2026-12-01T00:00:00.000000+00:00`` -> ``20261201T000000Z``."""
    at = datetime.fromisoformat(cutoff)
    return at.strftime("%Y%m%dT%H%M%SZ") if not at.microsecond else at.strftime("%Y%m%dT%H%M%S.%fZ")


def feedback_batch_uri(lake_uri: str, pipeline: str, cutoff: str) -> str:
    """The lake key of the feedback batch curated up to ``cutoff``."""
    return storage.join(lake_uri, pipeline, "feedback", f"until={cutoff_token(cutoff)}", "batch.parquet")


def read_labelled_predictions(db_url: str | None, pipeline: str, cutoff: str) -> list[tuple]:
    """``(request_id, entity_key, inputs JSON, created_at, label, the label's key id)`` of the answered,
    labelled rows made and labelled before ``cutoff`` (ISO UTC, as :func:`include.prediction_log.rows.iso_utc`).

    No prediction log yet means no feedback; a log that cannot be reached raises
    :class:`FeedbackUnavailable`, so an outage never trains as "no feedback".
    """
    try:
        return reads.labelled_predictions(db_url, pipeline, cutoff)
    except Exception as exc:
        text = str(exc)
        raise FeedbackUnavailable(
            f"cannot read feedback from the prediction log in {database(db_url).redacted()} "
            f"({type(exc).__name__}: {text.strip().splitlines()[0] if text.strip() else ''}); start the "
            "database or fix SLIPWAY_SERVING_DB, then retry the task"
        ) from exc


def _negative_label(spec: PipelineSpec, landed) -> str:
    positive = str(spec.target.positive_label)
    others = sorted(set(landed[spec.target.column].astype(str)) - {positive})
    if len(others) != 1:
        raise FeedbackError(
            f"feedback label 0 must map to the one target value other than {positive!r}, but the landed "
            f"batches of {spec.name} have {others or 'none'}; fix target.positive_label in the spec or "
            "the batches' target column"
        )
    return others[0]


def _target_values(spec: PipelineSpec, landed):
    """label (as the log stores it) -> the target value a landed batch would hold, or None when the label
    cannot be one (a class index outside target.classes, a number outside target.range)."""
    if spec.task == "multiclass":
        classes = list(spec.target.classes or [])

        def as_class(label) -> str | None:
            i = int(label)
            return classes[i] if float(label) == i and 0 <= i < len(classes) else None

        return as_class
    if spec.task == "regression":
        bounds = spec.target.range

        def as_number(label) -> float | None:
            value = float(label)
            if not math.isfinite(value) or (bounds is not None and not bounds[0] <= value <= bounds[1]):
                return None
            return value

        return as_number
    negative, positive = _negative_label(spec, landed), str(spec.target.positive_label)
    return lambda label: positive if int(label) == 1 else negative


def _typed_inputs(spec: PipelineSpec, inputs: dict) -> dict | None:
    """The row's features as ingest types them, or None if one is missing or not of its type."""
    out: dict = {}
    for col in spec.features.binary:
        value = inputs.get(col)
        if isinstance(value, bool) or value not in (0, 1):
            return None
        out[col] = int(value)
    for col in spec.features.numeric:
        if col not in inputs:
            return None
        value = inputs[col]
        if value is None:
            out[col] = math.nan
        elif isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return None
        else:
            out[col] = float(value)
    for col in spec.features.categorical:
        if col not in inputs or not (inputs[col] is None or isinstance(inputs[col], str)):
            return None
        out[col] = inputs[col]
    return out


def curate(spec: PipelineSpec, rows: list[tuple], landed) -> Curated:
    """Apply the curation rule to ``rows`` (:func:`read_labelled_predictions`) against the landed
    batches' frame ``landed`` (entity, target, split, sensitive attributes, ``batch_month``)."""
    import orjson
    import pandas as pd

    from include.tasks.train.ingest import sensitive_values

    out = Curated(frame=None, labelled=len(rows))
    key = spec.entity_column
    if not rows:
        return out
    if key is None:
        # Without an entity there is no split or sensitive attribute to give the row: not used.
        out.dropped["no_entity_key"] = len(rows)
        return out
    target_value = _target_values(spec, landed)

    newest: dict[str, tuple] = {}
    for row in rows:  # ordered by created_at: a later row of the same entity replaces the earlier
        entity = row[1]
        if not entity:
            out.dropped["no_entity_key"] += 1
            continue
        if entity in newest:
            out.dropped["older_label_of_same_entity"] += 1
        newest[entity] = row

    latest = landed.sort_values("batch_month", kind="stable").drop_duplicates(key, keep="last").set_index(key)
    records = []
    for entity, (_rid, _key, inputs, created_at, label, label_key) in newest.items():
        try:
            features = _typed_inputs(spec, orjson.loads(inputs))
        except orjson.JSONDecodeError:
            features = None
        if features is None:
            out.dropped["inputs_unusable"] += 1
            continue
        if entity not in latest.index:
            out.dropped["entity_not_landed"] += 1
            continue
        base = latest.loc[entity]
        if datetime.fromisoformat(created_at) < month_end(str(base["batch_month"])):
            out.dropped["not_newer_than_landed"] += 1
            continue
        value = target_value(label)
        if value is None:
            out.dropped["label_unusable"] += 1
            continue
        record = {key: entity, spec.target.column: value, **features}
        for col in spec.sensitive_attributes:
            record[col] = base[col]
        record[SPLIT_COLUMN] = base[SPLIT_COLUMN]
        record["batch_month"] = created_at[:7]
        records.append(record)
        who = label_key or "unknown"  # labels recorded before keys were (schema version 1)
        out.by_key[who] = out.by_key.get(who, 0) + 1
    if not records:
        return out
    schema = post_ingest_schema(spec)
    frame = pd.DataFrame.from_records(records)[list(schema)]
    for col, kind in schema.items():
        if kind == "float64":
            frame[col] = frame[col].astype("float64")
        elif kind == "int64":
            frame[col] = frame[col].astype("int64")
        elif col in spec.sensitive_attributes:
            frame[col] = sensitive_values(frame[col])
        else:
            frame[col] = frame[col].astype(object)
    out.frame = frame.sort_values(key, kind="stable").reset_index(drop=True)
    return out


def read_landed(spec: PipelineSpec, batch_uris: list[str]):
    """The columns of the lake batches the rule needs, one frame."""
    import pandas as pd

    cols = [spec.entity_column, spec.target.column, SPLIT_COLUMN, *spec.sensitive_attributes, "batch_month"]
    frames = [
        pd.read_parquet(io.BytesIO(storage.read_bytes(uri)), columns=[c for c in cols if c])
        for uri in batch_uris
    ]
    return pd.concat(frames, ignore_index=True)


def curate_feedback(
    spec: PipelineSpec, db_url: str | None, lake_uri: str, batch_uris: list[str], cutoff: str
) -> dict:
    """Curate the labelled predictions up to ``cutoff`` into the feedback batch (written once).

    Returns ``{"uri", "rows", "sha256", "labelled", "dropped", "kept_stored", "cutoff"}``; ``uri`` is
    None when no row survived the rule and nothing was stored for this cut-off.
    """
    from include.frames import to_parquet_bytes

    uri = feedback_batch_uri(lake_uri, spec.name, cutoff)
    rows = read_labelled_predictions(db_url, spec.name, cutoff)
    landed = read_landed(spec, batch_uris) if rows and spec.entity_column else None
    curated = curate(spec, rows, landed)
    result = {
        "uri": None,
        "rows": curated.rows,
        "sha256": None,
        "labelled": curated.labelled,
        "dropped": curated.dropped,
        "by_key": curated.by_key,
        "kept_stored": False,
        "cutoff": cutoff,
    }
    data = to_parquet_bytes(curated.frame) if curated.frame is not None else None
    stored = storage.read_bytes(uri) if storage.exists(uri) else None
    if stored is not None:
        if data != stored:
            import pandas as pd

            logger.warning(
                "the feedback batch %s was written by an earlier run with other rows than curated now "
                "(%d): the stored batch is kept, so the data version stays reproducible. Delete it to "
                "curate again.",
                uri,
                curated.rows,
            )
            result["kept_stored"] = True
            result["rows"] = len(pd.read_parquet(io.BytesIO(stored)))
        data = stored
    if data is None:
        return result
    if stored is None:
        storage.write_bytes(uri, data)
    return {**result, "uri": uri, "sha256": hashlib.sha256(data).hexdigest()}


__all__ = [
    "REASONS",
    "Curated",
    "FeedbackError",
    "FeedbackUnavailable",
    "curate",
    "curate_feedback",
    "cutoff_token",
    "feedback_batch_uri",
    "read_labelled_predictions",
]
