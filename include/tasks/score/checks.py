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


def _text_lengths(raw, strings: np.ndarray) -> np.ndarray:
    """Characters per value (0 for a blank): Arrow's kernel on an Arrow-backed column, else len()."""
    import pandas as pd

    if isinstance(raw.dtype, pd.CategoricalDtype):
        lengths = np.fromiter(map(len, raw.cat.categories.astype(str)), dtype=np.int64)
        codes = raw.cat.codes.to_numpy()
        return np.where(codes < 0, 0, lengths[codes] if len(lengths) else 0)
    if isinstance(raw.dtype, pd.ArrowDtype):
        return raw.str.len().to_numpy(dtype="float64", na_value=0).astype(np.int64)
    return np.fromiter(map(len, strings), dtype=np.int64, count=len(strings))


def _as_text(raw) -> tuple[np.ndarray, np.ndarray]:
    """(blank mask, the values as Python strings; a blank as the text 'nan' as the service never sees it)."""
    import pandas as pd

    if isinstance(raw.dtype, pd.CategoricalDtype):
        # Dictionary-encoded (a population's low-cardinality columns): one Python string per category,
        # the rows point at them, so nothing is copied per row.
        codes = raw.cat.codes.to_numpy()
        names = np.asarray([*raw.cat.categories.astype(str), "nan"], dtype=object)
        return codes < 0, names[np.where(codes < 0, len(names) - 1, codes)]
    blank = raw.isna().to_numpy()
    if isinstance(raw.dtype, pd.ArrowDtype) and pd.api.types.is_string_dtype(raw.dtype):
        strings = raw.to_numpy(dtype=object, na_value="nan")
    else:
        strings = raw.to_numpy(dtype=object)
        if not all(v.__class__ is str for v in strings):
            strings = raw.astype(str).to_numpy(dtype=object)
    return blank, strings


def check_chunk(spec: PipelineSpec, frame) -> tuple[np.ndarray, list[str | None], dict[str, np.ndarray]]:
    """(ok mask, the first reason per row or None, the graph's inputs of the ok rows).

    ``frame`` is a pandas DataFrame of one chunk as read (text or typed columns, NumPy- or
    Arrow-backed). A column the spec needs and the chunk lacks raises ValueError naming it: the whole
    population is wrong, not a row."""
    import pandas as pd

    missing = [c for c in spec.features.all if c not in frame.columns]
    if missing:
        raise ValueError(f"the population lacks the columns {missing} that spec {spec.name}.yaml declares")
    n = len(frame)
    reasons = np.full(n, None, dtype=object)
    clean = np.ones(n, dtype=bool)

    def flag(bad: np.ndarray, why: str) -> None:
        fresh = bad & clean
        if fresh.any():
            reasons[fresh] = why
            clean[fresh] = False

    numeric: dict[str, np.ndarray] = {}
    for col in [*spec.features.numeric, *spec.features.binary]:
        raw = frame[col]
        if pd.api.types.is_numeric_dtype(raw.dtype) or pd.api.types.is_bool_dtype(raw.dtype):
            # Typed (Parquet): no text to parse; a null is a blank.
            values = raw.to_numpy(dtype="float64", na_value=np.nan)
            blank = np.isnan(values)
        else:
            text = raw.astype(object).where(raw.notna(), None)
            blank = text.isna().to_numpy() | (text.astype(str).str.strip() == "").to_numpy()
            values = pd.to_numeric(text.where(~blank), errors="coerce").to_numpy(dtype="float64")
        not_number = ~blank & np.isnan(values)
        flag(not_number, f"{col}: not a number")
        with np.errstate(invalid="ignore"):
            out_of_range = ~blank & ~not_number & (~np.isfinite(values) | (np.abs(values) > FLOAT32_MAX))
        flag(out_of_range, f"{col}: not a finite number")
        if col in spec.features.binary:
            flag(blank, f"{col}: must be 0 or 1, got a blank")
            flag(~blank & ~not_number & ~np.isin(values, (0.0, 1.0)), f"{col}: must be 0 or 1")
        numeric[col] = values
    text_cols: dict[str, np.ndarray] = {}
    for col in spec.features.categorical:
        raw = frame[col]
        blank, strings = _as_text(raw)
        flag(blank, f"{col}: must be a string, got a blank")
        flag(~blank & (_text_lengths(raw, strings) > MAX_TEXT), f"{col}: longer than {MAX_TEXT} characters")
        text_cols[col] = strings
    key = spec.entity_column
    if key is not None and key in frame.columns:
        raw = frame[key]
        blank, strings = _as_text(raw)
        lengths = _text_lengths(raw, strings)
        flag(blank | (lengths < 1) | (lengths > 200), f"{key}: not an entity key of 1 to 200 characters")
    ok = clean
    feeds = {col: values[ok].astype(np.float32).reshape(-1, 1) for col, values in numeric.items()}
    feeds |= {col: strings[ok].reshape(-1, 1) for col, strings in text_cols.items()}
    return ok, reasons.tolist(), feeds
