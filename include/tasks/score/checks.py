"""The service's row checks, column at a time: which rows of a batch population the model may score.

A scored population is checked by the same rules as a request row (see
:meth:`include.serving.schema.RequestSchema.columns`), but on whole columns of a chunk instead of one
row at a time: a numeric feature is a finite number within float32's range or blank (imputed); a
binary one is 0 or 1; a categorical one is a text of at most 200 characters; the entity key, when the
spec has one, is 1 to 200 characters. A row that breaks a rule is not scored: it goes to the rejects
with the first reason, never silently dropped.
"""

from __future__ import annotations

import numpy as np

from include.serving.schema import FLOAT32_MAX, MAX_TEXT
from include.spec import PipelineSpec


def check_chunk(spec: PipelineSpec, frame) -> tuple[np.ndarray, list[str | None], dict[str, np.ndarray]]:
    """(ok mask, the first reason per row or None, the graph's inputs of the ok rows).

    ``frame`` is a pandas DataFrame of one chunk as read (text or typed columns). A column the spec
    needs and the chunk lacks raises ValueError naming it: the whole population is wrong, not a row."""
    import pandas as pd

    missing = [c for c in spec.features.all if c not in frame.columns]
    if missing:
        raise ValueError(f"the population lacks the columns {missing} that spec {spec.name}.yaml declares")
    n = len(frame)
    reasons = np.full(n, None, dtype=object)

    def flag(bad: np.ndarray, why: str) -> None:
        fresh = bad & (reasons == None)  # noqa: E711 - element-wise on an object array
        reasons[fresh] = why

    numeric: dict[str, np.ndarray] = {}
    for col in [*spec.features.numeric, *spec.features.binary]:
        raw = frame[col]
        blank = raw.isna().to_numpy() | (raw.astype(str).str.strip() == "").to_numpy()
        values = pd.to_numeric(raw.where(~blank), errors="coerce").to_numpy(dtype="float64")
        not_number = ~blank & np.isnan(values)
        flag(not_number, f"{col}: not a number")
        with np.errstate(invalid="ignore"):
            out_of_range = ~blank & ~not_number & (~np.isfinite(values) | (np.abs(values) > FLOAT32_MAX))
        flag(out_of_range, f"{col}: not a finite number")
        if col in spec.features.binary:
            flag(blank, f"{col}: must be 0 or 1, got a blank")
            flag(~blank & ~not_number & ~np.isin(values, (0.0, 1.0)), f"{col}: must be 0 or 1")
        numeric[col] = values
    text: dict[str, np.ndarray] = {}
    for col in spec.features.categorical:
        raw = frame[col]
        blank = raw.isna().to_numpy()
        flag(blank, f"{col}: must be a string, got a blank")
        strings = raw.astype(str).to_numpy(dtype=object)
        flag(
            ~blank & (raw.astype(str).str.len() > MAX_TEXT).to_numpy(),
            f"{col}: longer than {MAX_TEXT} characters",
        )
        text[col] = strings
    key = spec.entity_column
    if key is not None and key in frame.columns:
        ids = frame[key].astype(str)
        flag(
            frame[key].isna().to_numpy() | ~ids.str.len().between(1, 200).to_numpy(),
            f"{key}: not an entity key of 1 to 200 characters",
        )
    ok = reasons == None  # noqa: E711
    feeds = {col: values[ok].astype(np.float32).reshape(-1, 1) for col, values in numeric.items()}
    feeds |= {col: strings[ok].reshape(-1, 1) for col, strings in text.items()}
    return ok.astype(bool), reasons.tolist(), feeds
