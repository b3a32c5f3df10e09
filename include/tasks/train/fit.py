"""Train: split the snapshot, fit a scikit-learn Pipeline (ColumnTransformer + the spec's estimator).

Numeric and binary columns are imputed (median); linear models also get a StandardScaler, tree
models do not (scaling changes nothing for a tree and costs float32 precision in ONNX).
Categorical columns are one-hot encoded with unknown categories ignored. Class imbalance is
handled as the spec says (``balanced``: class weights, or sample weights for estimators without
``class_weight``). Everything is seeded from ``split.random_state``.

The model URI that ``train_model`` returns is pinned with the digest of the bytes it wrote
(``<uri>#sha256=<hex>``); every later read goes through :func:`read_model` or
:func:`read_model_bytes`, which refuse a model whose bytes are not the ones that were trained.
"""

from __future__ import annotations

import importlib
import inspect

from include import storage
from include.frames import feature_frame, labels, read_parquet, to_parquet_bytes
from include.model_files import pin, save_model, sha256_hex
from include.spec import SPLIT_COLUMN, PipelineSpec

#: Estimator kinds that get a StandardScaler by default (a tree takes none).
LINEAR = frozenset({"logistic_regression", "linear_regression", "ridge", "elastic_net"})


class TrainingError(ValueError):
    """Training could not run; the message names the problem and the fix."""


def entity_column(spec: PipelineSpec) -> str | None:
    """The column splits are keyed on (:attr:`PipelineSpec.entity_column`)."""
    return spec.entity_column


def split_frame(df, spec: PipelineSpec):
    """Deterministic (train, validation, test) split.

    With a hashed identifier in the spec (see :func:`entity_column`) rows go by the split ingest
    assigned from a stable hash of the raw entity id (column ``slipway_split``, see
    :func:`include.tasks.train.ingest.assign_splits`): every row of a customer lands in one split, in
    every snapshot and every installation, so a candidate
    is never tested on customers its champion trained on. Hashing cannot stratify: class shares
    and split sizes match ``split`` only approximately (``split.stratify`` is ignored). Without a
    hashed identifier the split is random, seeded, and stratified on the label when the spec says.
    Raises :class:`TrainingError` when the snapshot or the training split has only one class.
    """
    try:
        y = labels(df, spec)
    except ValueError as exc:
        raise TrainingError(f"{exc}; fix target in spec {spec.name}.yaml or the batches") from None
    if spec.task == "regression":
        if len(df) < 10 or float(y.std()) == 0.0:
            raise TrainingError(
                f"the snapshot's {spec.target.column!r} holds {len(set(y.tolist()))} distinct value(s) in "
                f"{len(df)} rows: nothing to learn; check target.column in spec {spec.name}.yaml"
            )
    elif len(set(y)) < 2:
        raise TrainingError(
            f"the snapshot has only one class of {spec.target.column!r}: check "
            + (
                f"target.positive_label ({spec.target.positive_label!r})"
                if spec.task == "binary"
                else f"target.classes ({spec.target.classes})"
            )
            + " against the data"
        )
    key = entity_column(spec)
    if key is None:
        train, val, test = _random_split(df, y, spec)
    else:
        if SPLIT_COLUMN not in df.columns:
            raise TrainingError(
                f"the snapshot has no column {SPLIT_COLUMN!r}, the split ingest assigns from the identifier "
                f"{key!r} of spec {spec.name}.yaml; re-ingest the batches with this version of Slipway"
            )
        where = df[SPLIT_COLUMN].astype(str).to_numpy()
        train, val, test = (
            df[where == part].reset_index(drop=True) for part in ("train", "validation", "test")
        )
    for name, part in (("training", train), ("test", test)):
        if spec.task == "regression":
            if len(part) < 2:
                raise TrainingError(
                    f"the {name} split has {len(part)} rows of {len(df)}: the snapshot is too small to "
                    f"split; add data or adjust split.test_size / split.validation_size in spec {spec.name}.yaml"
                )
            continue
        if spec.task == "multiclass" and name == "training":
            missing = sorted(set(range(len(spec.target.classes or []))) - set(labels(part, spec).tolist()))
            if missing:
                names = [spec.target.classes[i] for i in missing]  # type: ignore[index]
                raise TrainingError(
                    f"the training split has no row of class(es) {names} of {spec.target.column!r} "
                    f"({len(part)} rows of {len(df)}): the model could never predict them; add data, or "
                    f"remove them from target.classes in spec {spec.name}.yaml"
                )
        if len(set(labels(part, spec))) < 2:
            raise TrainingError(
                f"the {name} split has only one class of {spec.target.column!r} ({len(part)} rows of "
                f"{len(df)}): the snapshot is too small or too imbalanced to split; add data or adjust "
                f"split.test_size / split.validation_size in spec {spec.name}.yaml"
            )
    return train, val, test


def _random_split(df, y, spec: PipelineSpec):
    from sklearn.model_selection import train_test_split

    sp = spec.split
    stratify = sp.stratify and spec.task != "regression"  # a number has no classes to stratify on
    strat = y if stratify else None
    rest, test = train_test_split(df, test_size=sp.test_size, random_state=sp.random_state, stratify=strat)
    if sp.validation_size == 0:
        return rest.reset_index(drop=True), rest.iloc[0:0], test.reset_index(drop=True)
    val_frac = sp.validation_size / (1 - sp.test_size)
    strat_rest = labels(rest, spec) if stratify else None
    train, val = train_test_split(rest, test_size=val_frac, random_state=sp.random_state, stratify=strat_rest)
    return train.reset_index(drop=True), val.reset_index(drop=True), test.reset_index(drop=True)


def build_pipeline(spec: PipelineSpec, train=None):
    """An unfitted Pipeline: preprocessing + the spec's estimator with its parameters.

    ``train`` (the training split's feature frame) is needed only when a column groups rare
    categories: which categories are frequent is read from it."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    module, _, cls_name = spec.estimator_path.rpartition(".")
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
    if spec.estimator.kind == "lightgbm":
        # Quiet in the task log, one thread (Airflow runs tasks side by side on the same cores), and
        # the same model from the same data on every run (a re-run reuses its registered version).
        for key, value in (("verbose", -1), ("n_jobs", 1), ("deterministic", True)):
            params.setdefault(key, value)
    if spec.balanced and "class_weight" in accepted:
        params.setdefault("class_weight", "balanced")
    try:
        estimator = cls(**params)
    except (TypeError, ValueError) as exc:
        raise TrainingError(
            f"spec {spec.name}.yaml: estimator.params rejected by {cls_name}: {exc}"
        ) from None

    linear = spec.estimator.kind in LINEAR
    declared = spec.preprocessing
    num_steps = [("impute", SimpleImputer(strategy="median"))]
    if linear:
        num_steps.append(("scale", StandardScaler()))
    transformers = []
    # Columns the spec says nothing about keep the two default blocks (the same Pipeline, the same
    # bytes, as before preprocessing could be declared); each declared column gets its own block.
    numeric = [c for c in (*spec.features.numeric, *spec.features.binary) if c not in declared]
    if numeric:
        transformers.append(("num", Pipeline(num_steps), numeric))
    categorical = [c for c in spec.features.categorical if c not in declared]
    if categorical:
        transformers.append(("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), categorical))
    for col in spec.features.all:
        if col in declared:
            transformers.append((col, _column_block(spec, col, declared[col], linear, train), [col]))
    pre = ColumnTransformer(transformers, remainder="drop", verbose_feature_names_out=True)
    return Pipeline([("preprocess", pre), ("model", estimator)])


def _column_block(spec: PipelineSpec, col: str, prep, linear: bool, train):
    """One declared column's transformer (see :class:`include.spec.ColumnPreprocessing`)."""
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import (
        KBinsDiscretizer,
        OneHotEncoder,
        OrdinalEncoder,
        RobustScaler,
        StandardScaler,
    )

    if col not in spec.features.categorical:
        strategy = prep.impute or "median"
        steps: list = [
            (
                "impute",
                SimpleImputer(strategy=strategy, fill_value=prep.fill_value)
                if strategy == "constant"
                else SimpleImputer(strategy=strategy),
            )
        ]
        if prep.bins is not None:
            steps.append(
                (
                    "bins",
                    KBinsDiscretizer(
                        n_bins=prep.bins,
                        encode="onehot-dense",
                        strategy=prep.bin_strategy,
                        quantile_method="averaged_inverted_cdf",
                        subsample=None,
                    )
                    if prep.bin_strategy == "quantile"
                    else KBinsDiscretizer(n_bins=prep.bins, encode="onehot-dense", strategy="uniform"),
                )
            )
        else:
            scale = prep.scale or ("standard" if linear else "none")
            if scale == "standard":
                steps.append(("scale", StandardScaler()))
            elif scale == "robust":
                steps.append(("scale", RobustScaler()))
        return Pipeline(steps)
    if prep.encode == "ordinal":
        return OrdinalEncoder(
            categories=[list(prep.order)], handle_unknown="use_encoded_value", unknown_value=-1
        )
    if prep.min_frequency or prep.max_categories:
        return OneHotEncoder(
            categories=[_frequent(spec, col, prep, train)], handle_unknown="ignore", sparse_output=False
        )
    return OneHotEncoder(handle_unknown="ignore", sparse_output=False)


def _frequent(spec: PipelineSpec, col: str, prep, train) -> list[str]:
    """The categories of ``col`` kept as their own one-hot column; the rest (rare, and any value not
    seen in training) share the all-zero vector. Grouping is decided here from the training rows,
    not by OneHotEncoder's ``min_frequency``: its infrequent categories do not convert to ONNX."""
    if train is None:
        raise TrainingError(
            f"spec {spec.name}.yaml: preprocessing.{col} groups rare categories, which needs the "
            "training rows to count them (build_pipeline(spec, train))"
        )
    counts = train[col].dropna().astype(str).value_counts()
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    if prep.max_categories:
        kept = [k for k, _ in ranked[: prep.max_categories]]
    else:
        kept = [k for k, n in ranked if n / max(1, len(train)) >= prep.min_frequency]
    if not kept:
        raise TrainingError(
            f"spec {spec.name}.yaml: preprocessing.{col} keeps no category (none reaches min_frequency "
            f"{prep.min_frequency} of {len(train)} training rows); lower it"
        )
    return sorted(kept)


def needs_sample_weight(spec: PipelineSpec, pipeline) -> bool:
    """True when imbalance must be handled with sample weights (no ``class_weight`` parameter)."""
    return spec.balanced and "class_weight" not in pipeline.named_steps["model"].get_params()


def train_model(spec: PipelineSpec, snapshot_uri: str, out_uri: str) -> dict:
    """Split the snapshot, fit the pipeline, write model and splits under ``out_uri``.

    Keys are fixed (``model.skops``, ``train.parquet``, ``validation.parquet``, ``test.parquet``)
    so a re-run for the same interval rewrites the same objects. ``model_uri`` comes back pinned
    (``<uri>#sha256=<hex>``); ``split_method`` says whether rows were split by ``entity_hash`` of
    ``split_entity`` or at ``random`` (no hashed identifier in the spec).
    """
    from sklearn.utils.class_weight import compute_sample_weight

    df = read_parquet(snapshot_uri)
    train, val, test = split_frame(df, spec)
    pipeline = build_pipeline(spec, feature_frame(train, spec))
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
    digest = sha256_hex(model_bytes)
    model_uri = storage.write_bytes(storage.join(out_uri, "model.skops"), model_bytes)
    key = entity_column(spec)
    return {
        "model_uri": pin(model_uri, digest),
        "model_sha256": digest,
        "split_method": "random" if key is None else "entity_hash",
        "split_entity": key,
        "splits": uris,
        "rows": {"train": len(train), "validation": len(val), "test": len(test)},
        "positive_rate": round(float(y.mean()), 4) if spec.task == "binary" else None,
        "target_summary": target_summary(spec, y),
        "estimator": spec.estimator_path,
        "params": {k: v for k, v in pipeline.named_steps["model"].get_params().items() if _plain(v)},
    }


def target_summary(spec: PipelineSpec, y) -> dict:
    """The training target at a glance: the positive rate, each class's share, or the number's spread."""
    import numpy as np

    if spec.task == "binary":
        return {"positive_rate": round(float(np.mean(y)), 4)}
    if spec.task == "multiclass":
        return {
            f"share.{c}": round(float(np.mean(y == i)), 4) for i, c in enumerate(spec.target.classes or [])
        }
    return {
        "mean": round(float(np.mean(y)), 4),
        "std": round(float(np.std(y)), 4),
        "min": round(float(np.min(y)), 4),
        "max": round(float(np.max(y)), 4),
    }


def _plain(v) -> bool:
    return v is None or isinstance(v, str | int | float | bool)
