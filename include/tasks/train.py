"""Train: split the snapshot, fit a scikit-learn Pipeline (ColumnTransformer + the spec's estimator).

Numeric and binary columns are imputed (median); linear models also get a StandardScaler, tree
models do not (scaling changes nothing for a tree and costs float32 precision in ONNX).
Categorical columns are one-hot encoded with unknown categories ignored. Class imbalance is
handled as the spec says (``balanced``: class weights, or sample weights for estimators without
``class_weight``). Everything is seeded from ``split.random_state``.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect

from include import storage
from include.spec import PipelineSpec
from include.tasks.ingest import read_parquet, to_parquet_bytes

_LINEAR = {"logistic_regression"}


class TrainingError(ValueError):
    """Training could not run; the message names the problem and the fix."""


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


def split_frame(df, spec: PipelineSpec):
    """Deterministic (train, validation, test) split, stratified on the label when the spec says so."""
    from sklearn.model_selection import train_test_split

    y = labels(df, spec)
    sp = spec.split
    if len(set(y)) < 2:
        raise TrainingError(
            f"the snapshot has only one class of {spec.target.column!r}: check target.positive_label "
            f"({spec.target.positive_label!r}) against the data"
        )
    strat = y if sp.stratify else None
    rest, test = train_test_split(df, test_size=sp.test_size, random_state=sp.random_state, stratify=strat)
    if sp.validation_size == 0:
        return rest.reset_index(drop=True), rest.iloc[0:0], test.reset_index(drop=True)
    val_frac = sp.validation_size / (1 - sp.test_size)
    strat_rest = labels(rest, spec) if sp.stratify else None
    train, val = train_test_split(rest, test_size=val_frac, random_state=sp.random_state, stratify=strat_rest)
    return train.reset_index(drop=True), val.reset_index(drop=True), test.reset_index(drop=True)


def build_pipeline(spec: PipelineSpec):
    """An unfitted Pipeline: preprocessing + the spec's estimator with its parameters."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    module, _, cls_name = spec.estimator.import_path.rpartition(".")
    cls = getattr(importlib.import_module(module), cls_name)
    params = dict(spec.estimator.params)
    accepted = inspect.signature(cls).parameters
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise TrainingError(
            f"spec {spec.name}.yaml: estimator.params {unknown} are not parameters of {cls_name}; "
            f"valid ones include {sorted(accepted)[:12]}"
        )
    if "random_state" in accepted:
        params.setdefault("random_state", spec.split.random_state)
    if spec.class_imbalance == "balanced" and "class_weight" in accepted:
        params.setdefault("class_weight", "balanced")
    try:
        estimator = cls(**params)
    except (TypeError, ValueError) as exc:
        raise TrainingError(
            f"spec {spec.name}.yaml: estimator.params rejected by {cls_name}: {exc}"
        ) from None

    num_steps = [("impute", SimpleImputer(strategy="median"))]
    if spec.estimator.kind in _LINEAR:
        num_steps.append(("scale", StandardScaler()))
    transformers = []
    numeric = [*spec.features.numeric, *spec.features.binary]
    if numeric:
        transformers.append(("num", Pipeline(num_steps), numeric))
    if spec.features.categorical:
        transformers.append(
            ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), spec.features.categorical)
        )
    pre = ColumnTransformer(transformers, remainder="drop", verbose_feature_names_out=True)
    return Pipeline([("preprocess", pre), ("model", estimator)])


def needs_sample_weight(spec: PipelineSpec, pipeline) -> bool:
    """True when imbalance must be handled with sample weights (no ``class_weight`` parameter)."""
    return (
        spec.class_imbalance == "balanced"
        and "class_weight" not in pipeline.named_steps["model"].get_params()
    )


def save_model(pipeline) -> bytes:
    """Serialise with skops (no pickle)."""
    import skops.io as sio

    return sio.dumps(pipeline)


def load_model(data: bytes):
    """Load a skops model, trusting only scikit-learn/numpy types (refuses anything else)."""
    import skops.io as sio

    untrusted = sio.get_untrusted_types(data=data)
    foreign = [t for t in untrusted if not t.startswith(("sklearn.", "numpy.", "builtins."))]
    if foreign:
        raise TrainingError(f"refusing to load a model that contains non-scikit-learn types: {foreign}")
    return sio.loads(data, trusted=untrusted)


def train_model(spec: PipelineSpec, snapshot_uri: str, out_uri: str) -> dict:
    """Split the snapshot, fit the pipeline, write model and splits under ``out_uri``.

    Keys are fixed (``model.skops``, ``train.parquet``, ``validation.parquet``, ``test.parquet``)
    so a re-run for the same interval rewrites the same objects.
    """
    from sklearn.utils.class_weight import compute_sample_weight

    df = read_parquet(snapshot_uri)
    train, val, test = split_frame(df, spec)
    pipeline = build_pipeline(spec)
    y = labels(train, spec)
    fit_params = {}
    if needs_sample_weight(spec, pipeline):
        fit_params["model__sample_weight"] = compute_sample_weight("balanced", y)
    try:
        pipeline.fit(feature_frame(train, spec), y, **fit_params)
    except (ValueError, TypeError) as exc:
        raise TrainingError(
            f"fitting {spec.estimator.kind} failed: {exc}; check estimator.params in spec {spec.name}.yaml"
        ) from None
    model_bytes = save_model(pipeline)
    uris = {}
    for name, frame in (("train", train), ("validation", val), ("test", test)):
        uris[name] = storage.write_bytes(storage.join(out_uri, f"{name}.parquet"), to_parquet_bytes(frame))
    model_uri = storage.write_bytes(storage.join(out_uri, "model.skops"), model_bytes)
    return {
        "model_uri": model_uri,
        "model_sha256": hashlib.sha256(model_bytes).hexdigest(),
        "splits": uris,
        "rows": {"train": len(train), "validation": len(val), "test": len(test)},
        "positive_rate": round(float(y.mean()), 4),
        "estimator": spec.estimator.import_path,
        "params": {k: v for k, v in pipeline.named_steps["model"].get_params().items() if _plain(v)},
    }


def _plain(v) -> bool:
    return v is None or isinstance(v, str | int | float | bool)


def read_model(model_uri: str):
    """Load the skops model stored at ``model_uri``."""
    return load_model(storage.read_bytes(model_uri))
