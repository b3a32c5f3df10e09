"""The feedback loop: labelled predictions from the real prediction log (SQLite and PostgreSQL) become
a batch of the next snapshot by the documented rule, and that snapshot passes the real suite."""

from __future__ import annotations

import io
import logging
import math
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pandas as pd
import pytest

from include import storage
from include.blocks.train import feedback_cutoff
from include.prediction_log.rows import PredictionRow, iso_utc
from include.prediction_log.writer import PredictionLog
from include.tasks.train.data_version import build_snapshot
from include.tasks.train.feedback import (
    FeedbackError,
    FeedbackUnavailable,
    curate,
    curate_feedback,
    read_labelled_predictions,
)
from include.tasks.train.ingest import _hash, ingest_batches
from include.tasks.train.validate import validate_snapshot

KEY = b"feedback-test-key"
PIPELINE = "telco_churn"
# The batch of 2025-02 ends at 2025-03-01: predictions after that are newer knowledge.
AFTER_FEB = datetime(2025, 3, 10, tzinfo=UTC)
CUTOFF = iso_utc(datetime(2025, 4, 1, tzinfo=UTC))


@pytest.fixture
def lake(tmp_path, telco_spec, wa_churn):
    """Two months landed and ingested: 2025-01 (rows 0-1999) and 2025-02 (rows 2000-3999)."""
    landing, lake = storage.path_to_uri(tmp_path / "landing"), storage.path_to_uri(tmp_path / "lake")
    for month, part in (("2025-01", wa_churn.iloc[:2000]), ("2025-02", wa_churn.iloc[2000:4000])):
        storage.write_bytes(
            storage.join(landing, PIPELINE, f"{month}.csv"), part.to_csv(index=False).encode()
        )
    out = ingest_batches(telco_spec, "2025-02", landing, lake, KEY)
    return SimpleNamespace(uri=lake, batch_uris=out["batch_uris"])


def _inputs(spec, rec) -> dict:
    row = {k: float(rec[k]) if not pd.isna(rec[k]) else None for k in spec.features.numeric}
    row |= {k: int(rec[k]) for k in spec.features.binary}
    return row | {k: str(rec[k]) for k in spec.features.categorical}


class Log:
    """The service's own prediction log, written the way the service writes it."""

    def __init__(self, url: str, spec) -> None:
        self.url, self.spec = url, spec
        self.log = PredictionLog(url)
        self.log.start()

    def predict(
        self,
        rec,
        at: datetime,
        *,
        served=True,
        entity=True,
        inputs=None,
        label=None,
        labelled_at=None,
        label_key="aaaaaaaaaaaa",
    ):
        rid = uuid.uuid4().hex
        key = _hash(str(rec["customer_id"]), KEY) if entity else None
        row = PredictionRow(
            rid,
            PIPELINE,
            key,
            1,
            "champion" if served else "challenger",
            served,
            _inputs(self.spec, rec) if inputs is None else inputs,
            0.4,
            0,
            1.0,
            at,
        )
        self.log.record_sync([row])
        if label is not None:
            self.log.feedback(
                rid, label, pipeline=PIPELINE, at=labelled_at or at + timedelta(days=1), key_id=label_key
            )
        return rid

    def close(self):
        self.log.close()


@pytest.fixture
def predlog(log_url, telco_spec):
    log = Log(log_url, telco_spec)
    yield log
    log.close()


def _frame(uri: str) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(storage.read_bytes(uri)))


def _flip(value: str) -> int:
    """The label that contradicts the landed target: proves the feedback row is the one trained on."""
    return 0 if value == "Yes" else 1


def test_labelled_predictions_replace_their_landed_rows_and_the_snapshot_passes_the_suite(
    lake, predlog, telco_spec, wa_churn, tmp_path, project_root
):
    customers = wa_churn.iloc[2000:2040]
    for i, (_, rec) in enumerate(customers.iterrows()):
        predlog.predict(rec, AFTER_FEB, label=_flip(rec["churn"]), label_key="b" * 12 if i < 10 else "c" * 12)

    out = curate_feedback(telco_spec, predlog.url, lake.uri, lake.batch_uris, CUTOFF)

    assert (out["labelled"], out["rows"], out["kept_stored"]) == (40, 40, False)
    assert out["by_key"] == {"b" * 12: 10, "c" * 12: 30}  # which key labelled what enters training
    assert out["uri"].endswith("/telco_churn/feedback/until=20250401T000000Z/batch.parquet")
    feedback = _frame(out["uri"])
    landed = pd.concat([_frame(u) for u in lake.batch_uris], ignore_index=True).set_index("customer_id")
    assert list(feedback.columns) == list(landed.reset_index().columns)  # the lake's exact columns
    sensitive = list(telco_spec.sensitive_attributes)
    assert dict(feedback[sensitive].dtypes) == dict(landed[sensitive].dtypes)  # typed as ingest types them
    for _, row in feedback.iterrows():
        base = landed.loc[row["customer_id"]]
        assert row["churn"] != base["churn"]  # the label came from feedback
        assert (row["female"], row["senior_citizen"], row["slipway_split"]) == (
            base["female"],
            base["senior_citizen"],
            base["slipway_split"],
        )
        assert row["batch_month"] == "2025-03"

    snap = build_snapshot(
        lake.batch_uris, storage.path_to_uri(tmp_path / "snap.parquet"), out["uri"], "customer_id"
    )
    assert (snap["rows"], snap["feedback_rows"], snap["superseded"]) == (4000, 40, 40)
    snapshot = _frame(snap["snapshot_uri"])
    assert snapshot["customer_id"].is_unique
    replaced = snapshot.set_index("customer_id").loc[feedback["customer_id"], "churn"]
    assert list(replaced) == list(feedback["churn"])
    result = validate_snapshot(
        snap["snapshot_uri"], project_root / "include" / "expectations" / "telco_churn.json", tmp_path / "gx"
    )
    assert result["success"], result["failed"]


def test_each_rule_drops_what_it_names_and_counts_it(lake, predlog, telco_spec, wa_churn):
    recs = [r for _, r in wa_churn.iloc[2000:2010].iterrows()]
    ghost = recs[0].copy()
    ghost["customer_id"] = "CUST-NEVER-LANDED"
    predlog.predict(recs[0], AFTER_FEB, entity=False, label=1)  # no entity key
    predlog.predict(recs[1], AFTER_FEB, label=1)  # older label of the same entity ...
    predlog.predict(recs[1], AFTER_FEB + timedelta(hours=1), label=0)  # ... the newest one wins
    predlog.predict(recs[2], AFTER_FEB, served=False, label=1)  # a shadow row's answer was never given
    missing = _inputs(telco_spec, recs[3])
    del missing["contract"]
    predlog.predict(recs[3], AFTER_FEB, inputs=missing, label=1)  # a current feature is missing
    wrong = _inputs(telco_spec, recs[4]) | {"partner": 3}
    predlog.predict(recs[4], AFTER_FEB, inputs=wrong, label=1)  # a binary feature out of range
    predlog.predict(ghost, AFTER_FEB, label=1)  # no landed record
    predlog.predict(recs[5], datetime(2025, 2, 20, tzinfo=UTC), label=1)  # made inside the landed month
    predlog.predict(recs[6], AFTER_FEB, label=0)  # kept

    out = curate_feedback(telco_spec, predlog.url, lake.uri, lake.batch_uris, CUTOFF)

    assert out["labelled"] == 8
    assert out["dropped"] == {
        "no_entity_key": 1,
        "older_label_of_same_entity": 1,
        "inputs_unusable": 2,
        "entity_not_landed": 1,
        "not_newer_than_landed": 1,
        "label_unusable": 0,
    }
    kept = _frame(out["uri"]).set_index("customer_id")["churn"]
    assert kept.to_dict() == {
        _hash(recs[1]["customer_id"], KEY): "No",
        _hash(recs[6]["customer_id"], KEY): "No",
    }


def test_the_cutoff_keeps_later_predictions_and_later_labels_out(predlog, telco_spec, wa_churn):
    rec = wa_churn.iloc[2000]
    cut = datetime(2025, 4, 1, tzinfo=UTC)
    early = predlog.predict(rec, AFTER_FEB, label=1, labelled_at=cut - timedelta(seconds=1))
    predlog.predict(rec, AFTER_FEB, label=1, labelled_at=cut)  # a label arriving at the cut-off is late
    predlog.predict(rec, cut + timedelta(minutes=1), label=1, labelled_at=cut - timedelta(days=1))
    unlabelled = predlog.predict(rec, AFTER_FEB)

    rows = read_labelled_predictions(predlog.url, PIPELINE, iso_utc(cut))

    assert [r[0] for r in rows] == [early]
    assert unlabelled not in {r[0] for r in rows}
    # A label that arrives later joins its own prediction, not a newer one of the same customer.
    later = read_labelled_predictions(predlog.url, PIPELINE, iso_utc(cut + timedelta(days=30)))
    assert {r[0]: r[4] for r in later}[early] == 1 and len(later) == 3


def test_the_batch_is_written_once_per_cutoff(lake, predlog, telco_spec, wa_churn, caplog):
    recs = [r for _, r in wa_churn.iloc[2000:2004].iterrows()]
    for rec in recs[:2]:
        predlog.predict(rec, AFTER_FEB, label=1)
    first = curate_feedback(telco_spec, predlog.url, lake.uri, lake.batch_uris, CUTOFF)
    stored = storage.read_bytes(first["uri"])
    # A label back-dated before the cut-off (a restored log): the next run would curate other rows.
    predlog.predict(recs[2], AFTER_FEB, label=0)

    with caplog.at_level(logging.WARNING, logger="include.tasks.train.feedback"):
        again = curate_feedback(telco_spec, predlog.url, lake.uri, lake.batch_uris, CUTOFF)

    assert (again["kept_stored"], again["rows"], again["sha256"]) == (True, 2, first["sha256"])
    assert storage.read_bytes(first["uri"]) == stored
    assert "the stored batch is kept" in caplog.text
    later = curate_feedback(
        telco_spec, predlog.url, lake.uri, lake.batch_uris, iso_utc(datetime(2025, 5, 1, tzinfo=UTC))
    )
    assert (later["rows"], later["kept_stored"]) == (3, False) and later["uri"] != first["uri"]


def test_no_prediction_log_means_no_feedback_and_creates_nothing(lake, telco_spec, tmp_path):
    path = tmp_path / "serving" / "never.db"

    out = curate_feedback(telco_spec, f"sqlite:///{path}", lake.uri, lake.batch_uris, CUTOFF)

    assert (out["uri"], out["rows"], out["labelled"]) == (None, 0, 0)
    assert not path.exists() and not path.parent.exists()
    assert not [u for u in storage.list_uris(lake.uri) if "/feedback/" in u]


def test_an_unreachable_log_fails_the_task_instead_of_training_without_feedback(lake, telco_spec):
    url = "postgresql://nobody@127.0.0.1:1/nowhere"  # nothing listens on port 1

    with pytest.raises(FeedbackUnavailable, match="start the database or fix SLIPWAY_SERVING_DB"):
        curate_feedback(telco_spec, url, lake.uri, lake.batch_uris, CUTOFF)

    assert not [u for u in storage.list_uris(lake.uri) if "/feedback/" in u]


def test_label_zero_needs_exactly_one_other_target_value(telco_spec, wa_churn):
    rec = wa_churn.iloc[0]
    key = _hash(rec["customer_id"], KEY)
    landed = pd.DataFrame(
        {
            "customer_id": [key],
            "churn": ["Yes"],
            "female": [1],
            "senior_citizen": [0],
            "slipway_split": ["train"],
            "batch_month": ["2025-01"],
        }
    )
    import orjson

    rows = [("r1", key, orjson.dumps(_inputs(telco_spec, rec)).decode(), iso_utc(AFTER_FEB), 0)]

    with pytest.raises(FeedbackError, match=r"other than 'Yes'.*have none.*positive_label"):
        curate(telco_spec, rows, landed)


@pytest.mark.parametrize(
    ("run_type", "expected"),
    [
        ("scheduled", "2025-12-01T00:00:00.000000+00:00"),
        ("backfill", "2025-12-01T00:00:00.000000+00:00"),
        ("manual", "2026-12-05T10:00:00.000000+00:00"),
        ("asset_triggered", "2026-12-05T10:00:00.000000+00:00"),
    ],
)
def test_the_cutoff_is_the_interval_end_for_schedules_and_the_trigger_time_otherwise(run_type, expected):
    context = {
        "dag_run": SimpleNamespace(run_type=run_type, run_after=datetime(2026, 12, 5, 10, tzinfo=UTC)),
        "data_interval_end": datetime(2025, 12, 1, tzinfo=UTC),
    }

    assert feedback_cutoff(context) == expected


def test_inputs_must_carry_every_feature_with_its_type(telco_spec, wa_churn):
    from include.tasks.train.feedback import _typed_inputs

    good = _inputs(telco_spec, wa_churn.iloc[0])
    assert _typed_inputs(telco_spec, good)["tenure"] == 1.0
    assert math.isnan(_typed_inputs(telco_spec, good | {"total_charges": None})["total_charges"])
    for bad in ({"tenure": "7"}, {"tenure": math.inf}, {"partner": True}, {"contract": 2}):
        assert _typed_inputs(telco_spec, good | bad) is None, bad


def test_labels_of_every_task_become_target_values(project_root):
    from include.spec import load_spec
    from include.tasks.train.feedback import _target_values

    runtime = load_spec(project_root / "include" / "pipelines" / "job_runtime.yaml")
    as_class = _target_values(runtime, None)
    assert [as_class(x) for x in (0, 3.0, 4, 1.5)] == ["VF", "L", None, None]  # index, else unusable
    salary = load_spec(project_root / "include" / "pipelines" / "salary_benchmark.yaml")
    as_number = _target_values(salary, None)
    assert [as_number(x) for x in (131.5, 0, 5000.0)] == [131.5, 0.0, None]  # outside target.range
