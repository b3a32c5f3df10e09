"""Ingest: schema enforcement, PII protection, idempotent keys, and clear errors that lose nothing."""

from __future__ import annotations

import hashlib

import pytest

from include import storage
from include.tasks.ingest import BatchError, ingest_batches, ingest_month, lake_batch_uri, read_parquet

KEY = b"unit-test-key"


@pytest.fixture
def zones(tmp_path):
    return storage.path_to_uri(tmp_path / "landing"), storage.path_to_uri(tmp_path / "lake")


def _land(landing, month, frame, name="telco_churn"):
    uri = storage.join(landing, name, f"{month}.csv")
    storage.write_bytes(uri, frame.to_csv(index=False).encode())
    return uri


def _lake_state(lake):
    return {u: hashlib.sha256(storage.read_bytes(u)).hexdigest() for u in storage.list_uris(lake)}


def test_ingest_writes_typed_parquet_with_hashed_ids(zones, telco_spec, wa_churn):
    landing, lake = zones
    batch = wa_churn.iloc[:300]
    _land(landing, "2025-01", batch)
    out = ingest_month(telco_spec, "2025-01", landing, lake, KEY)
    assert out["status"] == "written"
    assert out["uri"] == lake_batch_uri(lake, telco_spec, "2025-01")
    assert "/telco_churn/batches/month=2025-01/batch.parquet" in out["uri"]
    df = read_parquet(out["uri"])
    assert len(df) == 300
    assert df["tenure"].dtype == "float64" and df["partner"].dtype == "int64"
    assert df["batch_month"].unique().tolist() == ["2025-01"]
    # PII: the raw identifier never reaches the lake, only its keyed hash.
    raw = storage.read_bytes(out["uri"])
    assert b"CUST-00001" not in raw
    assert df["customer_id"].str.fullmatch(r"[0-9a-f]{64}").all()
    assert df["customer_id"].is_unique
    # The real blemish survives as a missing value, not as a crash.
    blanks = wa_churn.iloc[:300]["total_charges"].isna().sum()
    assert df["total_charges"].isna().sum() == blanks


def test_rerun_writes_same_key_same_bytes(zones, telco_spec, wa_churn):
    landing, lake = zones
    _land(landing, "2025-01", wa_churn.iloc[:200])
    first = ingest_month(telco_spec, "2025-01", landing, lake, KEY)
    before = storage.read_bytes(first["uri"])
    second = ingest_month(telco_spec, "2025-01", landing, lake, KEY)
    assert second["status"] == "unchanged"
    assert second["uri"] == first["uri"] and second["sha256"] == first["sha256"]
    assert storage.read_bytes(second["uri"]) == before


def test_catch_up_ingests_earlier_landed_batches(zones, telco_spec, wa_churn):
    landing, lake = zones
    for i, month in enumerate(["2025-01", "2025-02", "2025-03"]):
        _land(landing, month, wa_churn.iloc[i * 100 : (i + 1) * 100])
    out = ingest_batches(telco_spec, "2025-02", landing, lake, KEY)
    assert [b["month"] for b in out["batches"]] == ["2025-01", "2025-02"]  # never a future month
    assert out["rows"] == 200


def _assert_refused(zones, telco_spec, frame, month, match):
    landing, lake = zones
    before = _lake_state(lake)
    _land(landing, month, frame)
    with pytest.raises(BatchError, match=match) as err:
        ingest_month(telco_spec, month, landing, lake, KEY)
    assert _lake_state(lake) == before, "a refused batch must not change what the lake holds"
    return str(err.value)


@pytest.fixture
def zones_with_history(zones, telco_spec, wa_churn):
    landing, _ = zones
    _land(landing, "2025-01", wa_churn.iloc[:100])
    ingest_month(telco_spec, "2025-01", landing, zones[1], KEY)
    return zones


def test_missing_column(zones_with_history, telco_spec, wa_churn):
    msg = _assert_refused(
        zones_with_history,
        telco_spec,
        wa_churn.iloc[100:200].drop(columns=["tenure"]),
        "2025-02",
        "lacks required",
    )
    assert "['tenure']" in msg and "fix the export" in msg


def test_wrong_types(zones_with_history, telco_spec, wa_churn):
    bad = wa_churn.iloc[100:200].copy()
    bad["monthly_charges"] = bad["monthly_charges"].astype(object)
    bad.iloc[3, bad.columns.get_loc("monthly_charges")] = "twenty"
    bad["partner"] = bad["partner"].astype(object)
    bad.iloc[5, bad.columns.get_loc("partner")] = 7
    msg = _assert_refused(zones_with_history, telco_spec, bad, "2025-02", "does not match spec")
    assert "'monthly_charges' must be numeric, got ['twenty']" in msg
    assert "'partner' must be 0 or 1" in msg
    assert "nothing was written to the lake" in msg


def test_empty_batch(zones_with_history, telco_spec, wa_churn):
    _assert_refused(zones_with_history, telco_spec, wa_churn.iloc[0:0], "2025-02", "is empty")


def test_header_only_and_zero_byte_batches(zones_with_history, telco_spec):
    landing, lake = zones_with_history
    storage.write_bytes(storage.join(landing, "telco_churn", "2025-02.csv"), b"")
    with pytest.raises(BatchError, match="is empty"):
        ingest_month(telco_spec, "2025-02", landing, lake, KEY)


def test_duplicate_batch_delivered_under_another_month(zones_with_history, telco_spec, wa_churn):
    msg = _assert_refused(
        zones_with_history, telco_spec, wa_churn.iloc[:100], "2025-02", "repeats 100 records"
    )
    assert "delivered twice" in msg


def test_duplicate_rows_inside_a_batch(zones_with_history, telco_spec, wa_churn):
    frame = wa_churn.iloc[100:200]
    doubled = frame._append(frame.iloc[:3])
    _assert_refused(zones_with_history, telco_spec, doubled, "2025-02", "repeats in 3 rows")


def test_changed_batch_after_ingest_is_refused(zones_with_history, telco_spec, wa_churn):
    altered = wa_churn.iloc[:100].copy()
    altered["tenure"] = altered["tenure"] + 1
    msg = _assert_refused(
        zones_with_history, telco_spec, altered, "2025-01", "already holds a different batch"
    )
    assert "archive and delete" in msg


def test_missing_batch_names_where_to_drop_it(zones, telco_spec):
    landing, lake = zones
    with pytest.raises(BatchError, match="not found at .*2025-05.csv: drop the file"):
        ingest_batches(telco_spec, "2025-05", landing, lake, KEY)
