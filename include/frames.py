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
    """0/1 labels: 1 where the target equals the spec's positive label."""
    return (df[spec.target.column].astype(str) == str(spec.target.positive_label)).astype("int64").to_numpy()
