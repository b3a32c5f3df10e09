"""A model file: written, pinned by sha256, loaded safely.

A fitted scikit-learn Pipeline is written with skops (never pickle), byte for byte the same for the
same model, so its digest names it. Every reader holds a *pinned* URI (``<uri>#sha256=<hex>``) and
gets the bytes only when they hash to the pin; a skops file is loaded only when every type in it is
a skops default or on :data:`TRUSTED_SKOPS_TYPES`. An ONNX graph is loaded from the bytes that were
hashed, after its digest matches the registered one; a graph that points at external data is
refused. Used by training, the gates, registration, the service and explanations.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from include import storage

if TYPE_CHECKING:
    import pandas as pd

    from include.spec import PipelineSpec

#: The ONNX output of a classifier holding the class probabilities (n x classes, zipmap off); the
#: other output, ``label``, holds the most probable class.
PROBABILITIES = "probabilities"
#: The ONNX output of a regressor holding the prediction (n x 1 float), named by skl2onnx.
PREDICTION = "variable"


class ModelFileError(ValueError):
    """A skops model file cannot be read, or holds types outside the allow-list."""


class ModelIntegrityError(ModelFileError):
    """A model's bytes are not the ones that were pinned when it was produced."""


class ModelRefused(RuntimeError):
    """A registered version cannot be served as it is (digest, external data, graph)."""


# skops types a Slipway model may need beyond skops' own defaults. Derived by fitting every estimator in
# include/spec.py ALL_ESTIMATORS (classifiers on binary and multiclass targets, regressors on a number)
# inside build_pipeline's Pipeline (numeric-only, categorical-only and mixed features; balanced and
# unweighted; several parameter sets each) and taking the union of skops.io.get_untrusted_types
# (scikit-learn 1.9, skops 0.16): SimpleImputer keeps numpy dtypes, every tree model keeps sklearn's
# Cython Tree, HistGradientBoosting its TreePredictor (plain numpy arrays of nodes and bin
# thresholds), LightGBM its Booster. Anything else (builtins.eval, a foreign class) is refused; add a
# type here only after the same check shows a shipped estimator needs it
# (tests/test_model_files.py derives the set again).
TRUSTED_SKOPS_TYPES: frozenset[str] = frozenset(
    {
        "numpy.dtype",
        "sklearn.tree._tree.Tree",
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
        # LightGBM: the estimators, their Booster (restored from LightGBM's own text model format, no
        # code), and the OrderedDict its parameters are kept in.
        "lightgbm.sklearn.LGBMClassifier",
        "lightgbm.sklearn.LGBMRegressor",
        "lightgbm.basic.Booster",
        "collections.OrderedDict",
    }
)

_PIN = "#sha256="
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


# ------------------------------------------------------------------------------ skops
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
        raise ModelFileError(f"skops archive has members the schema never references: {sorted(unreferenced)}")
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
        raise ModelFileError(f"not a readable skops model file ({exc}); re-run train_model") from None
    foreign = sorted(set(untrusted) - TRUSTED_SKOPS_TYPES)
    if foreign:
        raise ModelFileError(
            f"refusing to load a model that contains types not on Slipway's allowlist: {foreign} "
            f"(allowed beyond skops' defaults: {sorted(TRUSTED_SKOPS_TYPES)}); the file was not "
            "produced by train_model or has been tampered with"
        )
    try:
        # Only allowlisted names ever reach trusted=; skops audits the whole tree again on load.
        with quiet_skops():
            return sio.loads(data, trusted=sorted(set(untrusted) & TRUSTED_SKOPS_TYPES))
    except UntrustedTypesFoundException as exc:
        raise ModelFileError(f"refusing to load a model with untrusted types: {exc}") from None


# ------------------------------------------------------------------------------ pins
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


# ------------------------------------------------------------------------------ ONNX
@dataclass(frozen=True)
class OnnxModel:
    """One loaded version: the session, its decision rule and the input schema read from the graph.

    ``task`` is the version's (tag ``slipway.task``): binary scores are the positive-class probability,
    multiclass the probabilities of ``classes`` in order, regression the predicted number. ``rule`` is
    the decision rule it was blessed with (see :mod:`include.problem`); ``threshold`` is a binary
    rule's threshold (NaN for the other tasks)."""

    pipeline: str
    version: int
    threshold: float
    onnx_sha256: str
    session: Any  # an onnxruntime InferenceSession
    inputs: dict[str, str]  # name -> "float" | "string"
    categories: dict[str, frozenset[str]]
    output_index: int
    task: str = "binary"
    rule: dict = field(default_factory=dict)
    classes: tuple[str, ...] = ()
    interval: tuple[float, float] | None = None  # regression: residual quantiles 5% and 95% on its test split

    def predict(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        """Scores per row (see the class docstring); ``columns`` hold one (n, 1) array per input."""
        out = np.asarray(self.session.run(None, columns)[self.output_index], dtype=np.float64)
        if self.task == "binary":
            return out[:, 1]
        if self.task == "regression":
            return out.reshape(-1)
        return out

    def logged_score(self, scores: np.ndarray) -> np.ndarray:
        """What the prediction log's ``probability`` column holds for these scores: P(positive), the
        probability of the decided class (the model's confidence), or the predicted number."""
        if self.task == "multiclass":
            return scores[np.arange(len(scores)), self.decide(scores)]
        return scores

    def decide(self, scores: np.ndarray) -> np.ndarray:
        """Decisions under the version's rule: 0/1, a class index, or an amount (see
        :func:`include.problem.decide_task`; a binary version's threshold is its registered one)."""
        from include.problem import decide_task

        rule = {**self.rule, "threshold": self.threshold} if self.task == "binary" else self.rule
        return decide_task(self.task, scores, rule)


def onnx_session(onnx_bytes: bytes, threads: int = 1):
    """An onnxruntime CPU session over ``onnx_bytes`` (``threads`` intra-op threads, warnings silenced)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # warnings such as the hardware-specific one would go to stderr
    return ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])


def _external_locations(model) -> list[str]:
    from onnx import TensorProto
    from onnx.external_data_helper import _get_all_tensors

    out = []
    for tensor in _get_all_tensors(model):
        if tensor.HasField("data_location") and tensor.data_location == TensorProto.EXTERNAL:
            entry = {e.key: e.value for e in tensor.external_data}
            out.append(entry.get("location", ""))
    return out


def refuse_external_data(model) -> None:
    """Refuse a graph with any tensor stored outside it: Slipway's graphs carry their weights inside,
    and a reference to a file is how a crafted graph reads one (the CVE-2024-27318 class)."""
    locations = _external_locations(model)
    if locations:
        raise ModelRefused(
            f"the ONNX graph references external data ({', '.join(repr(x) for x in locations[:3])}): refused; "
            "Slipway serves self-contained graphs only, so re-export the model with its weights inside the graph"
        )


def _schema(model) -> tuple[dict[str, str], dict[str, frozenset[str]]]:
    from onnx import TensorProto

    kinds = {TensorProto.FLOAT: "float", TensorProto.DOUBLE: "float", TensorProto.STRING: "string"}
    inputs = {}
    for i in model.graph.input:
        kind = kinds.get(i.type.tensor_type.elem_type)
        if kind is None:
            raise ModelRefused(f"the ONNX graph's input {i.name!r} has a type the service does not feed")
        inputs[i.name] = kind
    categories: dict[str, frozenset[str]] = {}
    for node in model.graph.node:
        if node.op_type == "OneHotEncoder" and node.input and node.input[0] in inputs:
            for attr in node.attribute:
                if attr.name == "cats_strings":
                    categories[node.input[0]] = frozenset(s.decode() for s in attr.strings)
    return inputs, categories


def load_onnx(
    pipeline: str,
    version: int,
    folder: Path,
    expected_sha256: str,
    threshold: float,
    task: str = "binary",
    rule: dict | None = None,
    classes: tuple[str, ...] = (),
    interval: tuple[float, float] | None = None,
) -> OnnxModel:
    """Check and load ``folder/model.onnx`` from the bytes that were hashed; raise :class:`ModelRefused`
    with the reason."""
    import onnx

    path = folder / "model.onnx"
    if not path.is_file():
        raise ModelRefused(f"version {version} has no model.onnx in its artifacts")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if not expected_sha256 or digest != expected_sha256:
        raise ModelRefused(
            f"version {version}'s model.onnx has sha256 {digest[:16]}…, not the registered "
            f"{(expected_sha256 or 'none')[:16]}…: the artifact was changed or corrupted after registration"
        )
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # a truncated or crafted file: refused, never a crash
        raise ModelRefused(f"version {version}'s model.onnx is not a readable ONNX graph ({exc})") from exc
    refuse_external_data(model)
    inputs, categories = _schema(model)
    try:
        session = onnx_session(data)
    except Exception as exc:
        raise ModelRefused(f"onnxruntime cannot load version {version}: {exc}") from exc
    names = [o.name for o in session.get_outputs()]
    if task == "regression":
        if PREDICTION not in names:
            raise ModelRefused(
                f"version {version} is a regression, but its graph has no output {PREDICTION!r}"
            )
        index = names.index(PREDICTION)
    else:
        index = _proba_index(session)
    if task == "multiclass":
        width = session.get_outputs()[index].shape[-1]
        if not classes or (isinstance(width, int) and width != len(classes)):
            raise ModelRefused(
                f"version {version} is multiclass, but its classes {list(classes)} do not match the graph's "
                f"{width} probabilities: re-register it"
            )
    rule = dict(rule) if rule else ({"threshold": threshold} if task == "binary" else {})
    return OnnxModel(
        pipeline,
        version,
        threshold,
        digest,
        session,
        inputs,
        categories,
        index,
        task,
        rule,
        tuple(classes),
        interval,
    )


def _numeric(spec: PipelineSpec) -> list[str]:
    return [*spec.features.numeric, *spec.features.binary]


def onnx_inputs(spec: PipelineSpec, X: pd.DataFrame) -> dict[str, np.ndarray]:
    """One named input per feature column, shape (n, 1): float32 for numeric/binary, str for categoricals."""
    import numpy as np

    feeds: dict[str, np.ndarray] = {}
    for col in _numeric(spec):
        feeds[col] = X[col].astype("float64").to_numpy().astype(np.float32).reshape(-1, 1)
    for col in spec.features.categorical:
        feeds[col] = X[col].astype(str).to_numpy(dtype=object).reshape(-1, 1)
    return feeds


def _proba_index(session) -> int:
    names = [o.name for o in session.get_outputs()]
    return names.index(PROBABILITIES) if PROBABILITIES in names else len(names) - 1


def predict_proba_onnx(session, spec: PipelineSpec, X: pd.DataFrame) -> np.ndarray:
    """Positive-class probabilities from an onnxruntime session (labels are 0/1, so column 1)."""
    import numpy as np

    out = session.run(None, onnx_inputs(spec, X))[_proba_index(session)]
    return np.asarray(out, dtype=np.float64)[:, 1]


def scores_onnx(session, spec: PipelineSpec, X: pd.DataFrame) -> np.ndarray:
    """The graph's scores for ``X`` as :func:`include.problem.scores` gives scikit-learn's: binary the
    positive-class probability (1-D), multiclass the probabilities of ``target.classes`` in order
    (n x k), regression the prediction (1-D, output :data:`PREDICTION`)."""
    import numpy as np

    names = [o.name for o in session.get_outputs()]
    if spec.task == "regression":
        if PREDICTION not in names:
            raise ValueError(
                f"the ONNX graph has no output {PREDICTION!r} (outputs: {names}): not a regressor's graph"
            )
        out = session.run([PREDICTION], onnx_inputs(spec, X))[0]
        return np.asarray(out, dtype=np.float64).reshape(-1)
    if spec.task == "binary":
        return predict_proba_onnx(session, spec, X)
    p = np.asarray(session.run(None, onnx_inputs(spec, X))[_proba_index(session)], dtype=np.float64)
    k = len(spec.target.classes or [])
    if p.ndim != 2 or p.shape[1] != k:
        raise ValueError(
            f"the ONNX graph gives {p.shape[-1] if p.ndim == 2 else 'no'} class probabilities per row, "
            f"the spec lists {k} classes: the model was not fitted on every class of target.classes"
        )
    return p
