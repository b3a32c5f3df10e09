"""Ingest: schema enforcement, PII protection, idempotent keys, and clear errors that lose nothing."""

from __future__ import annotations

import hashlib

import pytest

from include import storage
from include.frames import read_parquet
from include.tasks.train.ingest import (
    BatchError,
    _read,
    conform_batch,
    id_index_uri,
    ingest_batches,
    ingest_month,
    lake_batch_uri,
)

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
    landed = _land(landing, "2025-01", batch)
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
    # The split is assigned from the raw id, so it does not depend on the deployment's key.
    assert set(df["slipway_split"]) == {"train", "validation", "test"}
    other = conform_batch(_read(landed, "csv"), telco_spec, landed, "2025-01", b"another-key")
    assert other["slipway_split"].tolist() == df["slipway_split"].tolist()
    assert other["customer_id"].tolist() != df["customer_id"].tolist()
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
    assert "'partner' is declared binary and must be 0 or 1, got ['7'] in 1 rows" in msg
    assert "nothing was written to the lake" in msg


def test_binary_column_holding_yes_no_suggests_categorical(zones_with_history, telco_spec, wa_churn):
    bad = wa_churn.iloc[100:200].copy()
    bad["partner"] = bad["partner"].map({1: "Yes", 0: "No"})
    bad.iloc[0, bad.columns.get_loc("partner")] = "maybe"
    bad.iloc[1, bad.columns.get_loc("partner")] = "2"
    msg = _assert_refused(zones_with_history, telco_spec, bad, "2025-02", "does not match spec")
    assert (
        "column 'partner' is declared binary and must be 0 or 1, got ['2', 'No', 'Yes'] in 100 rows; "
        "declare it under features.categorical, or map it to 0/1 before it lands"
    ) in msg


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
    assert "set source.recurring_entities: true in the spec if the same entity legitimately appears" in msg


def _recurring(spec):
    return spec.model_copy(update={"source": spec.source.model_copy(update={"recurring_entities": True})})


def _next_snapshot(frame):
    """The same customers a month later: one more month of tenure and charges."""
    later = frame.copy()
    later["tenure"] = later["tenure"] + 1
    later["total_charges"] = later["total_charges"] + later["monthly_charges"]
    return later


def test_recurring_entities_are_refused_without_the_option(zones_with_history, telco_spec, wa_churn):
    msg = _assert_refused(
        zones_with_history, telco_spec, _next_snapshot(wa_churn.iloc[:100]), "2025-02", "repeats 100 records"
    )
    assert "source.recurring_entities: true" in msg


def test_recurring_entities_pass_with_the_option(zones_with_history, telco_spec, wa_churn):
    landing, lake = zones_with_history
    spec = _recurring(telco_spec)
    _land(landing, "2025-02", _next_snapshot(wa_churn.iloc[:100]))
    out = ingest_month(spec, "2025-02", landing, lake, KEY)
    assert out["status"] == "written" and out["rows"] == 100
    jan = read_parquet(lake_batch_uri(lake, spec, "2025-01"))
    feb = read_parquet(out["uri"])
    assert set(jan["customer_id"]) == set(feb["customer_id"])  # the same customers, pseudonymised alike


def test_recurring_entities_still_unique_within_a_batch_and_not_delivered_twice(
    zones_with_history, telco_spec, wa_churn
):
    spec = _recurring(telco_spec)
    frame = _next_snapshot(wa_churn.iloc[:100])
    _assert_refused(zones_with_history, spec, frame._append(frame.iloc[:2]), "2025-02", "repeats in 2 rows")
    # The very same snapshot again under another month is still a double delivery.
    msg = _assert_refused(zones_with_history, spec, wa_churn.iloc[:100], "2025-02", "is identical to")
    assert "month=2025-01/batch.parquet" in msg


def _count_batch_reads(monkeypatch):
    """Count reads of lake batch objects (not of the landing zone or the id index)."""
    from include import frames

    reads: list[str] = []
    real_read_bytes, real_read_parquet = storage.read_bytes, frames.read_parquet

    def read_bytes(uri):
        if uri.endswith("/batch.parquet"):
            reads.append(uri)
        return real_read_bytes(uri)

    def read_parquet_counted(uri):
        reads.append(uri)
        return real_read_parquet(uri)

    monkeypatch.setattr(storage, "read_bytes", read_bytes)
    monkeypatch.setattr(frames, "read_parquet", read_parquet_counted)
    return reads


def test_duplicate_detection_reads_the_id_index_not_earlier_batches(monkeypatch, zones, telco_spec, wa_churn):
    landing, lake = zones
    for i, month in enumerate(["2025-01", "2025-02", "2025-03"]):
        _land(landing, month, wa_churn.iloc[i * 100 : (i + 1) * 100])
    ingest_batches(telco_spec, "2025-02", landing, lake, KEY)
    assert storage.exists(id_index_uri(lake, telco_spec, "2025-01"))
    assert storage.exists(id_index_uri(lake, telco_spec, "2025-02"))

    reads = _count_batch_reads(monkeypatch)
    out = ingest_batches(telco_spec, "2025-03", landing, lake, KEY)  # a new month, and two re-runs
    assert [b["status"] for b in out["batches"]] == ["unchanged", "unchanged", "written"]
    assert reads == [], "no earlier batch is re-read: the index answers"
    # ...and the index still catches a duplicate of an earlier month.
    _land(landing, "2025-04", wa_churn.iloc[100:200])
    with pytest.raises(BatchError, match="repeats 100 records already ingested in .*month=2025-02"):
        ingest_month(telco_spec, "2025-04", landing, lake, KEY)
    assert reads == []


def test_missing_index_is_rebuilt_from_the_batch(zones_with_history, telco_spec, wa_churn):
    landing, lake = zones_with_history
    index = id_index_uri(lake, telco_spec, "2025-01")
    kept = storage.read_bytes(index)
    storage.delete(index)  # a lake written before the index existed
    _land(landing, "2025-02", wa_churn.iloc[:100])
    with pytest.raises(BatchError, match="repeats 100 records"):
        ingest_month(telco_spec, "2025-02", landing, lake, KEY)
    assert storage.read_bytes(index) == kept, "rebuilt from the batch: the same index as written at ingest"


def test_identical_batch_without_hashed_ids_is_caught_from_a_rebuilt_index(zones, wa_churn):
    # No hashed identifier: the content digest alone catches a batch delivered twice, and a digest
    # rebuilt from the Parquet (blanks read back as None) equals the one computed at ingest (NaN).
    from include.spec import PipelineSpec

    landing, lake = zones
    spec = PipelineSpec.model_validate(
        {
            "name": "tiny",
            "description": "x",
            "target": {"column": "churn", "positive_label": "Yes"},
            "features": {"numeric": ["total_charges"], "categorical": ["contract"]},
            "identifiers": {"customer_id": "drop"},
            "estimator": {"kind": "logistic_regression"},
        }
    )
    frame = wa_churn.iloc[:50].copy()
    frame.iloc[0, frame.columns.get_loc("contract")] = None
    _land(landing, "2025-01", frame, name="tiny")
    ingest_month(spec, "2025-01", landing, lake, KEY)
    storage.delete(id_index_uri(lake, spec, "2025-01"))
    _land(landing, "2025-02", frame, name="tiny")
    with pytest.raises(BatchError, match="is identical to .*month=2025-01"):
        ingest_month(spec, "2025-02", landing, lake, KEY)


def _crash_on_batch_write(monkeypatch):
    """Make the lake write of any batch object fail as if the task were killed; return the undo."""
    real_write = storage.write_bytes

    def write_bytes(uri, data):
        if uri.endswith("/batch.parquet"):
            raise OSError("killed")
        return real_write(uri, data)

    monkeypatch.setattr(storage, "write_bytes", write_bytes)
    return lambda: monkeypatch.setattr(storage, "write_bytes", real_write)


def test_crash_between_index_and_batch_writes(monkeypatch, zones, telco_spec, wa_churn):
    landing, lake = zones
    _land(landing, "2025-01", wa_churn.iloc[:100])
    undo = _crash_on_batch_write(monkeypatch)
    with pytest.raises(OSError, match="killed"):
        ingest_month(telco_spec, "2025-01", landing, lake, KEY)
    undo()
    assert storage.exists(id_index_uri(lake, telco_spec, "2025-01"))
    assert not storage.exists(lake_batch_uri(lake, telco_spec, "2025-01"))

    # The orphan index does not make January's customers "already ingested" elsewhere...
    _land(landing, "2025-02", wa_churn.iloc[:100])
    assert ingest_month(telco_spec, "2025-02", landing, lake, KEY)["status"] == "written"
    # ...and once February holds them, the re-run of January is refused as their duplicate.
    with pytest.raises(BatchError, match="repeats 100 records already ingested in .*month=2025-02"):
        ingest_month(telco_spec, "2025-01", landing, lake, KEY)


def test_rerun_after_a_crash_writes_the_batch(monkeypatch, zones, telco_spec, wa_churn):
    landing, lake = zones
    _land(landing, "2025-01", wa_churn.iloc[:100])
    undo = _crash_on_batch_write(monkeypatch)
    with pytest.raises(OSError, match="killed"):
        ingest_month(telco_spec, "2025-01", landing, lake, KEY)
    undo()
    out = ingest_month(telco_spec, "2025-01", landing, lake, KEY)
    assert out["status"] == "written" and storage.exists(out["uri"])
    assert ingest_month(telco_spec, "2025-01", landing, lake, KEY)["status"] == "unchanged"


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


def test_refusals_never_show_a_raw_identifier(zones_with_history, telco_spec, wa_churn):
    """A planted customer id repeated within and across batches: messages name counts and keyed hashes only."""
    planted = "CUST-PLANTED-0042"
    frame = wa_churn.iloc[100:160].copy()
    frame["customer_id"] = [f"CUST-NEW-{i}" for i in range(len(frame))]
    frame.iloc[0, frame.columns.get_loc("customer_id")] = planted
    frame.iloc[1, frame.columns.get_loc("customer_id")] = planted
    within = _assert_refused(zones_with_history, telco_spec, frame, "2025-02", "repeats in 1 rows")
    assert planted not in within and "PLANTED" not in within
    assert "data rows [2]" in within
    across = _assert_refused(
        zones_with_history, telco_spec, wa_churn.iloc[:5], "2025-03", "repeats 5 records"
    )
    assert not any(cid in across for cid in wa_churn.iloc[:5]["customer_id"].astype(str))


def test_a_library_upgrade_is_not_a_changed_batch(monkeypatch, zones, telco_spec, wa_churn):
    """New pandas/pyarrow write other Parquet bytes for the same rows: earlier months stay 'unchanged'."""
    import io

    from include.tasks.train import ingest

    landing, lake = zones
    _land(landing, "2025-01", wa_churn.iloc[:100])
    first = ingest_month(telco_spec, "2025-01", landing, lake, KEY)

    def other_writer(df) -> bytes:  # what another library version would write for the same frame
        buf = io.BytesIO()
        df.to_parquet(buf, index=False, engine="pyarrow", compression="gzip")
        return buf.getvalue()

    monkeypatch.setattr(ingest, "to_parquet_bytes", other_writer)
    again = ingest_month(telco_spec, "2025-01", landing, lake, KEY)
    assert again["status"] == "unchanged" and again["sha256"] == first["sha256"]
    _land(landing, "2025-01", wa_churn.iloc[1:101])  # a real change is still refused
    with pytest.raises(BatchError, match="already holds a different batch"):
        ingest_month(telco_spec, "2025-01", landing, lake, KEY)
