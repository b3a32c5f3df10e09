"""Train: deterministic splits, the spec's estimator inside one Pipeline, imbalance handled, skops only."""

from __future__ import annotations

import numpy as np
import pytest

from include import storage
from include.tasks.ingest import read_parquet, to_parquet_bytes
from include.tasks.train import (
    TrainingError,
    build_pipeline,
    load_model,
    needs_sample_weight,
    split_frame,
    train_model,
)
from tests.conftest import make_snapshot


@pytest.fixture
def snapshot_uri(tmp_path, telco_spec, wa_churn):
    return make_snapshot(wa_churn.iloc[:1200], telco_spec, tmp_path / "snap.parquet")


def _spec(telco_spec, **estimator):
    return telco_spec.model_copy(update={"estimator": telco_spec.estimator.model_copy(update=estimator)})


def test_split_is_deterministic_and_stratified(snapshot_uri, telco_spec):
    df = read_parquet(snapshot_uri)
    a = split_frame(df, telco_spec)
    b = split_frame(df, telco_spec)
    for x, y in zip(a, b, strict=True):
        assert x["customer_id"].tolist() == y["customer_id"].tolist()
    train, val, test = a
    assert len(train) + len(val) + len(test) == len(df)
    assert not set(train["customer_id"]) & set(test["customer_id"])
    rates = [(part["churn"] == "Yes").mean() for part in a]
    assert max(rates) - min(rates) < 0.02


def test_train_writes_model_and_splits_and_is_seeded(tmp_path, snapshot_uri, telco_spec):
    out1 = train_model(telco_spec, snapshot_uri, storage.path_to_uri(tmp_path / "run1"))
    out2 = train_model(telco_spec, snapshot_uri, storage.path_to_uri(tmp_path / "run2"))
    assert out1["rows"]["test"] == 240 and out1["params"]["class_weight"] == "balanced"
    m1 = load_model(storage.read_bytes(out1["model_uri"]))
    m2 = load_model(storage.read_bytes(out2["model_uri"]))
    test = read_parquet(out1["splits"]["test"])
    from include.tasks.train import feature_frame

    X = feature_frame(test, telco_spec)
    np.testing.assert_array_equal(m1.predict_proba(X), m2.predict_proba(X))
    assert out1["model_uri"].endswith("/run1/model.skops")
    assert not storage.read_bytes(out1["model_uri"]).startswith(b"\x80")  # not a pickle stream


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


class Foreign:
    """Stands for code someone slipped into a model file."""

    def __init__(self):
        self.x = 1


def test_model_with_foreign_types_is_refused():
    import skops.io as sio

    data = sio.dumps({"payload": Foreign()})
    with pytest.raises(TrainingError, match="non-scikit-learn types"):
        load_model(data)
