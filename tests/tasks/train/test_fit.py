"""Train: entity-stable splits, the spec's estimator inside one Pipeline, a pinned model and its splits."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from include import storage
from include.frames import feature_frame, labels, read_parquet, to_parquet_bytes
from include.model_files import (
    ModelIntegrityError,
    read_model,
    read_model_bytes,
)
from include.tasks.train.fit import (
    TrainingError,
    build_pipeline,
    needs_sample_weight,
    split_frame,
    train_model,
)
from tests.support.snapshots import conformed as _conform
from tests.support.snapshots import make_snapshot
from tests.support.snapshots import with_estimator as _spec


@pytest.fixture
def snapshot_uri(tmp_path, telco_spec, wa_churn):
    return make_snapshot(wa_churn.iloc[:1200], telco_spec, tmp_path / "snap.parquet")


def _split_of(parts) -> dict[str, str]:
    """customer_id -> split name; fails if one id landed in two splits."""
    out: dict[str, str] = {}
    for name, part in zip(("train", "validation", "test"), parts, strict=True):
        for cid in part["customer_id"]:
            assert out.setdefault(cid, name) == name, f"{cid} is in both {out[cid]} and {name}"
    return out


def test_entity_split_is_stable_as_the_snapshot_grows(telco_spec, wa_churn):
    january = _conform(wa_churn.iloc[:1000], telco_spec, "2025-01")
    # February brings new customers and 150 recurring ones (same id, a month more tenure).
    recurring = wa_churn.iloc[:150].assign(tenure=wa_churn.iloc[:150]["tenure"] + 1)
    february = _conform(pd.concat([wa_churn.iloc[1000:1500], recurring]), telco_spec, "2025-02")
    first = split_frame(january, telco_spec)
    second = split_frame(pd.concat([january, february], ignore_index=True), telco_spec)

    before, after = _split_of(first), _split_of(second)
    assert all(after[cid] == split for cid, split in before.items())  # nobody changes split
    train, _, test = second
    assert not set(train["customer_id"]) & set(test["customer_id"])
    # Each recurring customer's two rows sit in one split (checked by _split_of) and both are there.
    assert len(train) + len(second[1]) + len(test) == 1650
    assert 0.15 < len(test) / 1650 < 0.25 and 0.15 < len(second[1]) / 1650 < 0.25
    # Deterministic, and the salt comes from split.random_state (applied at ingest).
    assert _split_of(split_frame(january, telco_spec)) == before
    other_seed = telco_spec.model_copy(
        update={"split": telco_spec.split.model_copy(update={"random_state": 7})}
    )
    reseeded = _conform(wa_churn.iloc[:1000], other_seed, "2025-01")
    assert _split_of(split_frame(reseeded, other_seed)) != before


def test_a_snapshot_ingested_without_splits_is_refused(telco_spec, wa_churn):
    old = _conform(wa_churn.iloc[:300], telco_spec, "2025-01").drop(columns="slipway_split")
    with pytest.raises(TrainingError, match="no column 'slipway_split'.*re-ingest"):
        split_frame(old, telco_spec)


def test_random_split_without_a_hashed_identifier_is_seeded_and_stratified(snapshot_uri, telco_spec):
    spec = telco_spec.model_copy(update={"identifiers": {}})
    df = read_parquet(snapshot_uri)
    a, b = split_frame(df, spec), split_frame(df, spec)
    for x, y in zip(a, b, strict=True):
        assert x["customer_id"].tolist() == y["customer_id"].tolist()
    train, val, test = a
    assert len(train) + len(val) + len(test) == len(df) and len(test) == 240
    assert not set(train["customer_id"]) & set(test["customer_id"])
    rates = [(part["churn"] == "Yes").mean() for part in a]
    assert max(rates) - min(rates) < 0.02


def test_train_reports_the_split_method(tmp_path, snapshot_uri, telco_spec):
    out = train_model(telco_spec, snapshot_uri, storage.path_to_uri(tmp_path / "hash"))
    assert out["split_method"] == "entity_hash" and out["split_entity"] == "customer_id"
    assert sum(out["rows"].values()) == 1200
    no_ids = telco_spec.model_copy(update={"identifiers": {}})
    out = train_model(no_ids, snapshot_uri, storage.path_to_uri(tmp_path / "random"))
    assert out["split_method"] == "random" and out["split_entity"] is None
    assert out["rows"]["test"] == 240


def test_a_single_class_train_split_is_refused(tmp_path, telco_spec, wa_churn):
    df = _conform(wa_churn.iloc[:400], telco_spec, "2025-01")
    # Keep only the churners that hash outside the training split: training would see one class.
    churn = df["churn"] == "Yes"
    kept = df[~churn | (df["slipway_split"] != "train")]
    assert labels(kept, telco_spec).sum() > 0
    uri = storage.write_bytes(storage.path_to_uri(tmp_path / "s.parquet"), to_parquet_bytes(kept))
    with pytest.raises(TrainingError, match="training split has only one class"):
        train_model(telco_spec, uri, storage.path_to_uri(tmp_path / "x"))


def test_train_writes_a_pinned_model_and_splits_and_is_seeded(tmp_path, snapshot_uri, telco_spec):
    out1 = train_model(telco_spec, snapshot_uri, storage.path_to_uri(tmp_path / "run1"))
    out2 = train_model(telco_spec, snapshot_uri, storage.path_to_uri(tmp_path / "run2"))
    assert out1["params"]["class_weight"] == "balanced"
    assert out1["model_uri"].endswith(f"/run1/model.skops#sha256={out1['model_sha256']}")
    data = read_model_bytes(out1["model_uri"])
    assert hashlib.sha256(data).hexdigest() == out1["model_sha256"]
    assert not data.startswith(b"\x80")  # not a pickle stream
    m1, m2 = read_model(out1["model_uri"]), read_model(out2["model_uri"])
    X = feature_frame(read_parquet(out1["splits"]["test"]), telco_spec)
    np.testing.assert_array_equal(m1.predict_proba(X), m2.predict_proba(X))


def test_a_model_swapped_after_training_is_refused(tmp_path, snapshot_uri, telco_spec):
    out = train_model(telco_spec, snapshot_uri, storage.path_to_uri(tmp_path / "run"))
    other = train_model(
        _spec(telco_spec, kind="decision_tree", params={"max_depth": 2}),
        snapshot_uri,
        storage.path_to_uri(tmp_path / "other"),
    )
    plain_uri = out["model_uri"].split("#")[0]
    # Another valid model written at the same key between tasks.
    storage.write_bytes(plain_uri, read_model_bytes(other["model_uri"]))
    for read in (read_model, read_model_bytes):
        with pytest.raises(ModelIntegrityError) as err:
            read(out["model_uri"])
        msg = str(err.value)
        assert plain_uri in msg and out["model_sha256"] in msg and other["model_sha256"] in msg
        assert "re-run train_model" in msg
    with pytest.raises(ModelIntegrityError, match="not pinned"):
        read_model(plain_uri)
    with pytest.raises(ModelIntegrityError, match="not pinned"):
        read_model(plain_uri + "#sha256=nothex")


def test_tree_models_get_sample_weights_and_no_scaler(telco_spec):
    gb = _spec(telco_spec, kind="gradient_boosting", params={"n_estimators": 20})
    pipe = build_pipeline(gb)
    assert needs_sample_weight(gb, pipe)
    num = pipe.named_steps["preprocess"].transformers[0][1]
    assert [name for name, _ in num.steps] == ["impute"]
    lr = build_pipeline(telco_spec)
    assert [n for n, _ in lr.named_steps["preprocess"].transformers[0][1].steps] == ["impute", "scale"]
    assert not needs_sample_weight(telco_spec, lr)


def test_gradient_boosting_trains(tmp_path, snapshot_uri, telco_spec):
    gb = _spec(telco_spec, kind="gradient_boosting", params={"n_estimators": 20, "max_depth": 2})
    out = train_model(gb, snapshot_uri, storage.path_to_uri(tmp_path / "gb"))
    assert out["estimator"] == "sklearn.ensemble.GradientBoostingClassifier"
    assert out["params"]["random_state"] == 42


def test_bad_params_are_named(tmp_path, snapshot_uri, telco_spec):
    with pytest.raises(TrainingError, match=r"estimator.params \['n_trees'\] are not parameters"):
        build_pipeline(_spec(telco_spec, params={"n_trees": 5}))
    # scikit-learn checks values at fit time: the error still names the spec field.
    with pytest.raises(TrainingError, match=r"check estimator.params in spec telco_churn.yaml") as err:
        train_model(
            _spec(telco_spec, params={"C": "lots"}), snapshot_uri, storage.path_to_uri(tmp_path / "x")
        )
    assert "'C'" in str(err.value)


def test_single_class_snapshot_is_refused(tmp_path, snapshot_uri, telco_spec):
    df = read_parquet(snapshot_uri)
    only_no = storage.write_bytes(
        storage.path_to_uri(tmp_path / "no.parquet"), to_parquet_bytes(df[df["churn"] == "No"])
    )
    with pytest.raises(TrainingError, match="only one class"):
        train_model(telco_spec, only_no, storage.path_to_uri(tmp_path / "x"))
