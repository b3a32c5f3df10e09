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

import contextlib
import hashlib
import importlib
import inspect
import re
import warnings

from include import storage
from include.spec import SPLIT_COLUMN, PipelineSpec
from include.tasks.ingest import read_parquet, to_parquet_bytes

_LINEAR = {"logistic_regression"}


# skops types a Slipway model may need beyond skops' own defaults. Derived by fitting every kind in
# include/spec.py ESTIMATORS inside build_pipeline's Pipeline (numeric-only, categorical-only and
# mixed features; balanced and unweighted; several parameter sets each) and taking the union of
# skops.io.get_untrusted_types (scikit-learn 1.9, skops 0.16): SimpleImputer keeps numpy dtypes,
# every tree model keeps sklearn's Cython Tree. Anything else (builtins.eval, a foreign class) is
# refused; add a type here only after the same check shows a shipped estimator needs it.
TRUSTED_SKOPS_TYPES: frozenset[str] = frozenset({"numpy.dtype", "sklearn.tree._tree.Tree"})

_PIN = "#sha256="
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class TrainingError(ValueError):
    """Training could not run; the message names the problem and the fix."""


class ModelIntegrityError(TrainingError):
    """A model's bytes are not the ones recorded when it was trained (or nothing was recorded)."""


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


def entity_column(spec: PipelineSpec) -> str | None:
    """The column splits are keyed on (:attr:`PipelineSpec.entity_column`)."""
    return spec.entity_column


def split_frame(df, spec: PipelineSpec):
    """Deterministic (train, validation, test) split.

    With a hashed identifier in the spec (see :func:`entity_column`) rows go by the split ingest
    assigned from a stable hash of the raw entity id (column ``slipway_split``, see
    :func:`include.tasks.ingest.assign_splits`): every row of a customer lands in one split, in
    every snapshot and every installation, so a candidate
    is never tested on customers its champion trained on. Hashing cannot stratify: class shares
    and split sizes match ``split`` only approximately (``split.stratify`` is ignored). Without a
    hashed identifier the split is random, seeded, and stratified on the label when the spec says.
    Raises :class:`TrainingError` when the snapshot or the training split has only one class.
    """
    y = labels(df, spec)
    if len(set(y)) < 2:
        raise TrainingError(
            f"the snapshot has only one class of {spec.target.column!r}: check target.positive_label "
            f"({spec.target.positive_label!r}) against the data"
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
    """Serialise with skops (no pickle), byte-deterministic (see :func:`canonical_skops`)."""
    with quiet_skops():
        import skops.io as sio  # importing it runs the scan once, too

        data = sio.dumps(pipeline)
    return canonical_skops(data)


@contextlib.contextmanager
def quiet_skops():
    """Silence what skops trips over while it scans every loaded module for an object's home.

    In an Airflow worker that scan touches Airflow's deprecated-import shims, and each touch warns:
    about 1,160 lines of noise per model dump in the task log, none of them about the task.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def canonical_skops(data: bytes) -> bytes:
    """The same skops archive with every run-dependent byte made canonical.

    skops names array members and memo ids after ``id()`` of the objects (memory addresses) and
    stamps members with the current time, so the same model serialises differently in every
    process. Renumbering ids and members in order of first appearance (shared objects keep one
    id, so references survive) and fixing timestamps and member order makes equal models equal
    bytes: the model digest then identifies the model, and a re-run of an interval reuses the
    version it registered.
    """
    import io
    import json
    import zipfile

    src = zipfile.ZipFile(io.BytesIO(data))
    schema = json.loads(src.read("schema.json"))
    ids: dict[int, int] = {}
    files: dict[str, str] = {}

    def walk(node):
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                if key == "__id__" and isinstance(value, int):
                    out[key] = ids.setdefault(value, len(ids) + 1)
                elif key == "file" and isinstance(value, str) and value in src.namelist():
                    suffix = value[value.rfind(".") :] if "." in value else ""
                    out[key] = files.setdefault(value, f"{len(files) + 1:06d}{suffix}")
                else:
                    out[key] = walk(value)
            return out
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    canonical = walk(schema)
    unreferenced = set(src.namelist()) - set(files) - {"schema.json"}
    if unreferenced:
        raise TrainingError(f"skops archive has members the schema never references: {sorted(unreferenced)}")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as dst:

        def put(name: str, payload: bytes, compress_type: int) -> None:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = compress_type
            info.external_attr = 0o644 << 16
            dst.writestr(info, payload)

        for old, new in sorted(files.items(), key=lambda kv: kv[1]):
            put(new, src.read(old), src.getinfo(old).compress_type)
        put(
            "schema.json",
            json.dumps(canonical, indent=2).encode(),
            src.getinfo("schema.json").compress_type,
        )
    return buf.getvalue()


def load_model(data: bytes):
    """Load a skops model whose types are all skops defaults or on :data:`TRUSTED_SKOPS_TYPES`.

    Anything else is refused before any object in the file is constructed, so a crafted file
    cannot run code (skops' reduce nodes call whatever type they name).
    """
    with quiet_skops():
        import skops.io as sio
        from skops.io.exceptions import UntrustedTypesFoundException

    try:
        with quiet_skops():
            untrusted = sio.get_untrusted_types(data=data)
    except Exception as exc:  # a truncated zip, a missing schema, a newer skops protocol...
        raise TrainingError(f"not a readable skops model file ({exc}); re-run train_model") from None
    foreign = sorted(set(untrusted) - TRUSTED_SKOPS_TYPES)
    if foreign:
        raise TrainingError(
            f"refusing to load a model that contains types not on Slipway's allowlist: {foreign} "
            f"(allowed beyond skops' defaults: {sorted(TRUSTED_SKOPS_TYPES)}); the file was not "
            "produced by train_model or has been tampered with"
        )
    try:
        # Only allowlisted names ever reach trusted=; skops audits the whole tree again on load.
        with quiet_skops():
            return sio.loads(data, trusted=sorted(set(untrusted) & TRUSTED_SKOPS_TYPES))
    except UntrustedTypesFoundException as exc:
        raise TrainingError(f"refusing to load a model with untrusted types: {exc}") from None


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def pin(uri: str, digest: str) -> str:
    """``uri`` pinned to the sha256 of its content: ``<uri>#sha256=<hex>``."""
    return f"{uri}{_PIN}{digest}"


def unpin(model_uri: str) -> tuple[str, str | None]:
    """``(plain uri, sha256 or None)`` of a possibly pinned model URI."""
    base, sep, digest = model_uri.partition(_PIN)
    return base, (digest if sep else None)


def verify_sha256(data: bytes, expected: str, source: str, fix: str) -> None:
    """Raise :class:`ModelIntegrityError` unless ``data`` hashes to ``expected``."""
    actual = sha256_hex(data)
    if actual != expected:
        raise ModelIntegrityError(
            f"model {source} has sha256 {actual}, but {expected} was recorded when it was produced: "
            f"the file was replaced or corrupted since; {fix}"
        )


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
        "positive_rate": round(float(y.mean()), 4),
        "estimator": spec.estimator.import_path,
        "params": {k: v for k, v in pipeline.named_steps["model"].get_params().items() if _plain(v)},
    }


def _plain(v) -> bool:
    return v is None or isinstance(v, str | int | float | bool)


def read_model_bytes(model_uri: str) -> bytes:
    """The bytes of the model at a pinned ``model_uri``, checked against its sha256 pin."""
    uri, expected = unpin(model_uri)
    if expected is None or not SHA256_HEX.match(expected):
        raise ModelIntegrityError(
            f"model URI {model_uri} is not pinned to a digest ('{_PIN}<64 hex digits>'), so the model "
            "cannot be proven to be the one trained; pass the model_uri that train_model returned, "
            "or re-run train_model"
        )
    data = storage.read_bytes(uri)
    verify_sha256(data, expected, uri, "re-run train_model to train and pin a new model")
    return data


def read_model(model_uri: str):
    """Load the skops model at a pinned ``model_uri`` (digest and types checked)."""
    return load_model(read_model_bytes(model_uri))
