"""Tables as the lake keeps them: Parquet bytes in and out, and the feature and label columns of a spec."""

from __future__ import annotations

import io

from include import storage
from include.spec import PipelineSpec


def to_parquet_bytes(df) -> bytes:
    """Deterministic Parquet bytes (same frame -> same bytes)."""
    buf = io.BytesIO()
    df.to_parquet(buf, index=False, engine="pyarrow", compression="snappy")
    return buf.getvalue()


def read_parquet(uri: str):
    """A lake object as a DataFrame."""
    import pandas as pd

    return pd.read_parquet(io.BytesIO(storage.read_bytes(uri)))


def feature_frame(df, spec: PipelineSpec):
    """Model inputs in the spec's column order: numeric/binary as float64, categoricals as str."""
    X = df[spec.features.all].copy()
    for col in [*spec.features.numeric, *spec.features.binary]:
        X[col] = X[col].astype("float64")
    for col in spec.features.categorical:
        X[col] = X[col].astype(str)
    return X


def labels(df, spec: PipelineSpec):
    """The target as every stage compares it: 0/1 (binary: 1 where it equals ``positive_label``), the
    index in ``target.classes`` (multiclass), or the number (regression).

    A value outside ``target.classes``, or a non-numeric regression target, raises ValueError naming
    the values and their counts (ingest refuses such a batch first)."""
    import numpy as np
    import pandas as pd

    col = df[spec.target.column]
    if spec.task == "binary":
        return (col.astype(str) == str(spec.target.positive_label)).astype("int64").to_numpy()
    if spec.task == "multiclass":
        classes = list(spec.target.classes or [])
        text = col.astype(str)
        unknown = text[~text.isin(classes)].value_counts()
        if len(unknown):
            raise ValueError(
                f"{spec.target.column!r} holds {dict(unknown.head(10))}, not in target.classes {classes}"
            )
        return text.map({c: i for i, c in enumerate(classes)}).astype("int64").to_numpy()
    values = pd.to_numeric(col, errors="coerce")
    bad = col[values.isna() | ~np.isfinite(values.fillna(0))]
    if len(bad):
        raise ValueError(
            f"{spec.target.column!r} holds {len(bad)} value(s) that are not finite numbers, "
            f"e.g. {list(bad.astype(str).head(3))}"
        )
    return values.astype("float64").to_numpy()
