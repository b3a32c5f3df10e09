"""ONNX export: the whole fitted Pipeline as one ONNX graph, optimised, checked against scikit-learn.

One graph holds preprocessing and the estimator, with one named input per feature column, so
serving needs onnxruntime and nothing else. Parity is measured on every row of the test split and
single-row latency is recorded; the ``onnx`` gate turns those numbers into blessing entries.
Quantisation is an optimisation, on record in the report and the result, not a gate check.

What the graph gives and how parity is measured, by the spec's task (scores as
:func:`include.problem.scores` defines them, decisions as :func:`include.problem.decide` takes them
under the version's rule):

* **binary**: outputs ``label`` and ``probabilities`` (n x 2, zipmap off;
  :data:`include.model_files.PROBABILITIES`). ``max_abs_diff`` = max |p_onnx - p_sklearn| of the
  positive class; ``label_agreement`` = the share of rows decided alike at the version's decision
  threshold (the one its decisions are made at, not 0.5).
* **multiclass**: the same two outputs, ``probabilities`` n x k in the order of ``target.classes``
  (the model is fitted on the class indices 0..k-1). ``max_abs_diff`` over every class's
  probability; ``label_agreement`` = the share of rows given the same class under the rule (the
  class of highest expected value under the value matrix, or the most probable class).
* **regression**: one output, ``variable`` (n x 1 float: skl2onnx's name for a regressor's
  prediction, :data:`include.model_files.PREDICTION`). ``max_rel_diff`` = max |y_onnx - y_sklearn|
  / max(1, |y_sklearn|) is gated (absolute for small targets, relative for large ones);
  ``max_abs_diff`` is reported; a number has no label, so ``label_agreement`` is None (a decision
  is the prediction plus the rule's offset: the same shift on both sides).

Input types: numeric and binary columns are ``tensor(float)``, categoricals ``tensor(string)``.
Double inputs were tried first and do not run: onnxruntime 1.32 has no double kernel for
``ai.onnx.ml.Imputer`` ("Could not find an implementation for Imputer(1)") and rejects the double
``probabilities`` skl2onnx declares for ``TreeEnsembleClassifier``; the same holds for the double
``variable`` it declares for ``TreeEnsembleRegressor`` (ai.onnx.ml 3 has a float output only; tried
with skl2onnx's ``CastTransformer`` to double before the estimator). Float loses nothing for
scikit-learn's own trees (decision tree, random forest, extra trees, gradient boosting; classifiers
and regressors alike): scikit-learn itself casts tree inputs to float32 and skl2onnx adjusts each
threshold so that ``(float)x <= t`` decides the same branch; ``build_pipeline`` puts no scaler
before trees, so the values reaching a tree are the ones scikit-learn sees. Linear models lose
~1e-7. A tree ensemble's leaf values are summed in float32: a relative error of at most ~7e-6 up to
500 trees on the ISLR Wage and ggplot2 diamonds tables, well inside the 1e-4 gate.

HistGradientBoosting and LightGBM are the exception: they bin and compare features in float64, so
a value that float32 cannot tell from a split threshold can take the other branch. Their thresholds
lie halfway between distinct training values, so features with up to ~7 significant digits (ages,
years, counts, prices, hours: Wage, diamonds, hpc_data) keep parity; a feature such as a Unix
timestamp in seconds (float32 resolves 128 s at 1.7e9) loses it on whole ranges of rows, and the
parity gate then fails naming ``max_rel_diff`` (a classifier: ``max_abs_diff``/``label_agreement``).
Scale such a feature down (days since an origin) or pick one of scikit-learn's own trees.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from include import storage
from include.model_files import PREDICTION, PROBABILITIES, onnx_inputs, onnx_session, scores_onnx
from include.problem import decide, default_rule, describe_rule, scores
from include.spec import OnnxGate, PipelineSpec
from include.tasks.gates import check

# Requested opsets. skl2onnx lowers each domain to the highest version the graph actually uses
# (the record keeps both). 18 / ml 3 are supported by every onnxruntime since 1.14, so the
# artifact is not tied to this machine's newer runtime.
TARGET_OPSET = {"": 18, "ai.onnx.ml": 3}
OPTIMISATION_LEVEL = "ORT_ENABLE_ALL"
# Layout transforms for the machine's SIMD width: onnxruntime warns that a model saved with
# them "should only be used in the same environment", and the artifact is served elsewhere.
DISABLED_OPTIMISERS = ["NchwcTransformer"]
QUANTISABLE = {"MatMul", "Gemm"}
# A forest of 100 fully grown trees gives exactly 0.5 when the votes split evenly (or 0.62 when 62
# of them vote yes); onnxruntime's float32 sum gives 0.4999998 (seen on 6 of 1,409 test rows at
# 0.5). A reference probability that equal to the decision threshold is a tie, not a label flip;
# for several classes, two best classes whose expected values are that close (in units of the
# value matrix's largest |value|, at least 1) are a tie (a 45/45/10 vote among three classes).
TIE_TOLERANCE = 1e-6
# Standard operators that only move or reshape tensors around the ai.onnx.ml ones.
_PLUMBING = {"Concat", "Reshape", "Identity", "Cast", "Squeeze", "Unsqueeze", "Flatten", "Shape"}


class ConversionError(RuntimeError):
    """The fitted model cannot be expressed as an ONNX graph that onnxruntime runs."""


def _estimator(model):
    return model.steps[-1][1] if hasattr(model, "steps") else model


def _describe(model) -> str:
    if hasattr(model, "steps"):
        steps = ", ".join(f"{name}={type(step).__name__}" for name, step in model.steps)
        return f"{type(_estimator(model)).__name__} (Pipeline: {steps})"
    return type(model).__name__


def _root_cause(exc: BaseException, limit: int = 300) -> str:
    """First line of the exception and of its innermost cause (skl2onnx dumps whole attribute tables)."""

    def first(e: BaseException) -> str:
        text = (str(e).strip().splitlines() or [""])[0]
        text = text if len(text) <= limit else text[: limit - 3] + "..."
        return f"{type(e).__name__}: {text}"

    inner, seen = exc, {id(exc)}
    while (nxt := inner.__cause__ or inner.__context__) is not None and id(nxt) not in seen:
        inner = nxt
        seen.add(id(nxt))
    return first(exc) if inner is exc else f"{first(exc)} (caused by {first(inner)})"


def _int_missing_directions() -> None:
    """skl2onnx 1.20 hands a HistGradientBoosting tree's leaves to ``TreeEnsemble*`` with a Python
    ``bool`` as their missing-value direction, and onnx 1.23 refuses a bool in an int attribute
    ("Expected an int, got a boolean"), so no HistGradientBoosting model converts. The direction is
    an int in ONNX (0 or 1): this passes it as one. Wraps the module's own ``add_node`` once;
    nothing else about the conversion changes (parity is checked on every export)."""
    import skl2onnx.common.tree_ensemble as te

    if getattr(te.add_node, "_slipway_int_missing", False):
        return
    original = te.add_node

    def add_node(*args, nodes_missing_value_tracks_true=0, **kwargs):
        return original(*args, nodes_missing_value_tracks_true=int(nodes_missing_value_tracks_true), **kwargs)

    add_node._slipway_int_missing = True  # type: ignore[attr-defined]
    te.add_node = add_node


def _inverse_link(onx, model) -> None:
    """skl2onnx 1.20 converts a HistGradientBoostingRegressor's raw score and leaves out its inverse
    link: with ``loss: poisson`` or ``gamma`` (a log link) the graph gave log(prediction) (seen:
    max relative difference 0.97 on the Wage table). Appends the ``Exp`` to the ``variable`` output;
    any other link than identity or log is refused. LightGBM's converter applies its own."""
    est = _estimator(model)
    link = getattr(getattr(est, "_loss", None), "link", None)
    if type(est).__name__ != "HistGradientBoostingRegressor" or link is None:
        return
    kind = type(link).__name__
    if kind == "IdentityLink":
        return
    producers = [n for n in onx.graph.node if PREDICTION in n.output]
    if kind != "LogLink" or len(producers) != 1:
        raise ConversionError(
            f"HistGradientBoostingRegressor(loss={est.loss!r}) predicts through a {kind} that Slipway "
            "cannot add to skl2onnx's graph; use loss squared_error, absolute_error, quantile, poisson or gamma"
        )
    if producers[0].op_type == "Exp":  # a converter that applies the link itself
        return
    from onnx import helper

    raw = f"{PREDICTION}_raw_score"
    producers[0].output[list(producers[0].output).index(PREDICTION)] = raw
    onx.graph.node.append(helper.make_node("Exp", [raw], [PREDICTION], name="slipway_inverse_log_link"))


def _register_lightgbm() -> None:
    """skl2onnx converts LightGBM's scikit-learn estimators with onnxmltools' converter, once they are
    registered (the documented way: ``update_registered_converter``). ``convert_lightgbm`` reads the
    booster's objective: binary and multiclass become a ``TreeEnsembleClassifier`` (label and
    probabilities), regression (and huber, quantile, poisson, ...) a ``TreeEnsembleRegressor`` with
    one output, shaped by skl2onnx's regressor shape calculator (float, n x 1, named ``variable``)."""
    from lightgbm import LGBMClassifier, LGBMRegressor
    from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )

    update_registered_converter(
        LGBMClassifier,
        "LightGbmLGBMClassifier",
        calculate_linear_classifier_output_shapes,
        convert_lightgbm,
        options={"nocl": [True, False], "zipmap": [True, False, "columns"]},
    )
    update_registered_converter(
        LGBMRegressor,
        "LightGbmLGBMRegressor",
        calculate_linear_regressor_output_shapes,
        convert_lightgbm,
    )


def convert(spec: PipelineSpec, model) -> bytes:
    """The whole fitted Pipeline (preprocessing + estimator) as ONNX bytes, one input per feature column.

    A classifier's graph outputs ``label`` and ``probabilities`` (zipmap off), a regressor's the
    prediction ``variable`` (see the module docstring)."""
    from skl2onnx import __version__ as skl2onnx_version
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    _int_missing_directions()
    if spec.estimator.kind == "lightgbm":
        _register_lightgbm()

    initial_types = [
        (c, FloatTensorType([None, 1])) for c in [*spec.features.numeric, *spec.features.binary]
    ] + [(c, StringTensorType([None, 1])) for c in spec.features.categorical]
    what = _describe(model)
    try:
        onx = convert_sklearn(
            model,
            initial_types=initial_types,
            # Probabilities as a tensor, not a ZipMap sequence; a regressor has no such option.
            options=None if spec.task == "regression" else {id(_estimator(model)): {"zipmap": False}},
            target_opset=TARGET_OPSET,
            # skl2onnx names the graph with a random uuid: a fixed name keeps equal models equal bytes.
            name=spec.name,
        )
    except Exception as exc:  # skl2onnx raises anything from RuntimeError to TypeError
        raise ConversionError(
            f"skl2onnx {skl2onnx_version} cannot convert {what}: {_root_cause(exc)}; "
            "choose an estimator skl2onnx supports (see ESTIMATORS_BY_TASK in include/spec.py) or turn off "
            "gates.onnx in the spec and accept no ONNX artifact"
        ) from exc
    if spec.task == "regression":
        _inverse_link(onx, model)
    # skl2onnx lists the opset imports in an order that varies from one process to the next (seen
    # under CPU load: the same model gave two graphs differing only there): sort them, so equal
    # models stay equal bytes.
    imports = sorted(onx.opset_import, key=lambda o: (o.domain, o.version))
    del onx.opset_import[:]
    onx.opset_import.extend(imports)
    outputs = [o.name for o in onx.graph.output]
    expected = PREDICTION if spec.task == "regression" else PROBABILITIES
    if expected not in outputs:
        raise ConversionError(
            f"skl2onnx {skl2onnx_version} converted {what} to a graph with outputs {outputs}, without the "
            f"{expected!r} output a {spec.task} model is served from"
        )
    data = onx.SerializeToString()
    try:
        onnx_session(data)
    except Exception as exc:
        raise ConversionError(
            f"skl2onnx {skl2onnx_version} converted {what}, but onnxruntime cannot load the graph: "
            f"{_root_cause(exc)}"
        ) from exc
    return data


def optimise(onnx_bytes: bytes) -> bytes:
    """The graph after onnxruntime's offline optimisations (ORT_ENABLE_ALL), checked to load again."""
    import tempfile

    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="slipway-ort-") as tmp:
        target = Path(tmp) / "optimised.onnx"
        so = ort.SessionOptions()
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPTIMISATION_LEVEL)
        so.optimized_model_filepath = str(target)
        so.log_severity_level = 3
        ort.InferenceSession(
            onnx_bytes, so, providers=["CPUExecutionProvider"], disabled_optimizers=DISABLED_OPTIMISERS
        )
        data = target.read_bytes()
    try:
        onnx_session(data)
    except Exception as exc:
        raise ConversionError(f"the optimised graph no longer loads: {_root_cause(exc)}") from exc
    return data


def latency(fn, rows: list, repeats: int, rounds: int = 1) -> dict:
    """Single-call latency in ms: ``repeats`` timed calls of ``fn(row)`` cycling through ``rows``.

    The first ``min(len(rows), 20)`` calls warm caches and are not timed. With ``rounds`` > 1 the
    timed calls are repeated that many times and the round with the lowest p99 is reported (the
    best of N, as ``timeit`` advises): other processes on the host only ever add time, so one
    preempted call on a busy worker does not decide the model's p99. Every round's p99 is kept in
    ``p99_rounds``.
    """
    import time

    import numpy as np

    if not rows or repeats < 1 or rounds < 1:
        raise ValueError("latency needs at least one row, one repeat and one round")
    warmup = min(len(rows), 20)
    for row in rows[:warmup]:
        fn(row)
    clock = time.perf_counter_ns
    timed = []  # ms per call, one array per round
    for _ in range(rounds):
        times = np.empty(repeats)
        for i in range(repeats):
            row = rows[i % len(rows)]
            t0 = clock()
            fn(row)
            times[i] = clock() - t0
        timed.append(times / 1e6)
    p99s = [round(float(np.percentile(ms, 99)), 4) for ms in timed]
    ms = timed[p99s.index(min(p99s))]
    out: dict[str, Any] = {
        "p50": round(float(np.percentile(ms, 50)), 4),
        "p99": min(p99s),
        "mean": round(float(ms.mean()), 4),
        "calls": repeats,
        "warmup_calls": warmup,
    }
    if rounds > 1:
        out["rounds"] = rounds
        out["p99_rounds"] = p99s
    return out


def _check_threshold(threshold: float) -> float:
    """The decision threshold as a float in [0, 1], or a ValueError naming what to pass."""
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0 <= value <= 1:  # also refuses NaN
        raise ValueError(
            f"threshold must be the version's decision threshold, a probability between 0 and 1, got "
            f"{threshold!r}: pass the threshold evaluate_model chose"
        )
    return value


def check_rule(spec: PipelineSpec, rule: dict | None) -> dict:
    """The version's decision rule for the spec's task (see :mod:`include.problem`), checked; None is
    :func:`include.problem.default_rule`. Raises ValueError naming what to pass."""
    import math

    import numpy as np

    if rule is None:
        return default_rule(spec)
    if not isinstance(rule, dict):
        raise ValueError(
            f"rule must be the version's decision rule, a dict (evaluate_model's 'rule'), got {rule!r}"
        )
    if spec.task == "binary":
        if "threshold" not in rule:
            raise ValueError(
                f"a binary rule is {{'threshold': t}}, got {rule!r}: pass the rule evaluate_model chose"
            )
        return {**rule, "threshold": _check_threshold(rule["threshold"])}
    if spec.task == "multiclass":
        m = rule.get("value_matrix")
        if m is not None:
            k = len(spec.target.classes or [])
            try:
                arr = np.asarray(m, dtype="float64")
            except (TypeError, ValueError):
                arr = np.full((0, 0), np.nan)
            if arr.shape != (k, k) or not np.isfinite(arr).all():
                raise ValueError(
                    f"a multiclass rule's value_matrix must be {k} x {k} finite numbers (target.classes "
                    f"{spec.target.classes}), got {m!r}"
                )
        return {**rule, "value_matrix": m}
    try:
        offset = float(rule.get("offset", 0.0))
    except (TypeError, ValueError):
        offset = float("nan")
    if not math.isfinite(offset):
        raise ValueError(f"a regression rule is {{'offset': x}} with x a finite number, got {rule!r}")
    return {**rule, "offset": offset}


def _parity(p_onnx, p_ref, threshold: float) -> dict:
    """Binary: max |dp| and label agreement at ``threshold``; a row whose reference probability *is*
    the threshold (to float32 resolution) is a tie that rounding sends either way, counted apart
    rather than as a flip."""
    import numpy as np

    threshold = _check_threshold(threshold)
    differ = (p_onnx >= threshold) != (p_ref >= threshold)
    ties = np.abs(p_ref - threshold) <= TIE_TOLERANCE
    return {
        "max_abs_diff": float(np.max(np.abs(p_onnx - p_ref))),
        "label_agreement": float(1 - np.mean(differ & ~ties)),
        "label_agreement_raw": float(1 - np.mean(differ)),
        "label_ties": int(ties.sum()),
        "label_threshold": threshold,
        "rows": int(len(p_ref)),
    }


def _parity_multiclass(p_onnx, p_ref, spec: PipelineSpec, rule: dict) -> dict:
    """Multiclass: max |dp| over every class, and class agreement of the decisions under ``rule``; a
    row whose two best classes are tied in the reference (expected values within
    :data:`TIE_TOLERANCE`) is counted apart rather than as a flip."""
    import numpy as np

    p_onnx, p_ref = np.asarray(p_onnx, dtype="float64"), np.asarray(p_ref, dtype="float64")
    if p_onnx.shape != p_ref.shape:
        raise ValueError(f"ONNX probabilities are {p_onnx.shape}, scikit-learn's {p_ref.shape}")
    m = rule.get("value_matrix")
    expected = p_ref if m is None else p_ref @ np.asarray(m, dtype="float64")
    scale = 1.0 if m is None else max(1.0, float(np.max(np.abs(np.asarray(m, dtype="float64")))))
    best_two = np.sort(expected, axis=1)[:, -2:]
    ties = (best_two[:, 1] - best_two[:, 0]) <= TIE_TOLERANCE * scale
    differ = decide(spec, p_onnx, rule) != decide(spec, p_ref, rule)
    return {
        "max_abs_diff": float(np.max(np.abs(p_onnx - p_ref))),
        "label_agreement": float(1 - np.mean(differ & ~ties)),
        "label_agreement_raw": float(1 - np.mean(differ)),
        "label_ties": int(ties.sum()),
        "label_rule": describe_rule(spec, rule),
        "rows": int(len(p_ref)),
    }


def _parity_regression(y_onnx, y_ref) -> dict:
    """Regression: max |dy| (reported) and max |dy| / max(1, |y|) (gated); no label to agree on."""
    import numpy as np

    y_onnx, y_ref = np.asarray(y_onnx, dtype="float64"), np.asarray(y_ref, dtype="float64")
    if y_onnx.shape != y_ref.shape:
        raise ValueError(f"ONNX predictions are {y_onnx.shape}, scikit-learn's {y_ref.shape}")
    diff = np.abs(y_onnx - y_ref)
    return {
        "max_abs_diff": float(np.max(diff)),
        "max_rel_diff": float(np.max(diff / np.maximum(1.0, np.abs(y_ref)))),
        "label_agreement": None,
        "rows": int(len(y_ref)),
    }


def parity(spec: PipelineSpec, s_onnx, s_ref, rule: dict) -> dict:
    """ONNX scores ``s_onnx`` against scikit-learn's ``s_ref`` (as :func:`include.problem.scores`
    gives them) under the spec's task and the version's ``rule`` (see the module docstring)."""
    if spec.task == "binary":
        return _parity(s_onnx, s_ref, rule["threshold"])
    if spec.task == "multiclass":
        return _parity_multiclass(s_onnx, s_ref, spec, rule)
    return _parity_regression(s_onnx, s_ref)


def _within(parity: dict, gate: OnnxGate, task: str = "binary") -> bool:
    if task == "regression":
        return parity["max_rel_diff"] <= gate.max_rel_diff
    return (
        parity["max_abs_diff"] <= gate.max_abs_diff and parity["label_agreement"] >= gate.min_label_agreement
    )


def _out_of_parity(parity: dict, gate: OnnxGate, task: str) -> str:
    """What the measured parity misses, for a reason text."""
    if task == "regression":
        return (
            f"max |dy| / max(1, |y|) {parity['max_rel_diff']:.3g} vs allowed {gate.max_rel_diff}, "
            f"max |dy| {parity['max_abs_diff']:.3g}"
        )
    return (
        f"max |dp| {parity['max_abs_diff']:.3g} vs allowed {gate.max_abs_diff}, "
        f"label agreement {parity['label_agreement']:.4f} vs required {gate.min_label_agreement}"
    )


def _operators(onnx_bytes: bytes) -> dict[str, list[str]]:
    import onnx

    ops: dict[str, set[str]] = {}
    for node in onnx.load_from_string(onnx_bytes).graph.node:
        ops.setdefault(node.domain or "ai.onnx", set()).add(node.op_type)
    return {domain: sorted(names) for domain, names in sorted(ops.items())}


def _single_rows(spec: PipelineSpec, X, n: int) -> list[dict]:
    feeds = onnx_inputs(spec, X)
    return [{k: v[i : i + 1] for k, v in feeds.items()} for i in range(min(n, len(X)))]


def quantise_if_useful(
    onnx_bytes: bytes, spec: PipelineSpec, X, ref_scores, gate: OnnxGate, *, rule: dict | None = None
) -> dict:
    """Dynamic int8 quantisation, only for graphs with MatMul/Gemm; kept only if faster and still in
    parity with ``ref_scores`` (scikit-learn's, :func:`include.problem.scores`) as the gate measures
    it for the spec's task, decisions under the version's ``rule`` (None: the default rule).

    Returns ``{"applies", "kept", "reason", "operators", ...}``; when kept, ``model_bytes`` holds
    the quantised graph (callers pop it before recording the dict).
    """
    import tempfile

    ops = _operators(onnx_bytes)
    standard = set(ops.get("ai.onnx", []))
    found = sorted(standard & QUANTISABLE)
    if not found:
        ml = ", ".join(ops.get("ai.onnx.ml", [])) or "none"
        if standard <= _PLUMBING:
            reason = (
                f"graph has only ai.onnx.ml operators ({ml}) besides tensor plumbing "
                f"({', '.join(sorted(standard)) or 'none'}); dynamic quantisation applies to MatMul/Gemm "
                "and would not help"
            )
        else:
            reason = (
                f"graph has no MatMul/Gemm operators (ai.onnx.ml: {ml}; standard: "
                f"{', '.join(sorted(standard))}); dynamic quantisation applies to MatMul/Gemm and would not help"
            )
        return {"applies": False, "kept": False, "reason": reason, "operators": ops}

    from onnxruntime.quantization import QuantType, quantize_dynamic

    out: dict = {"applies": True, "kept": False, "operators": ops, "quantised_operators": found}
    with tempfile.TemporaryDirectory(prefix="slipway-quant-") as tmp:
        src, dst = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(onnx_bytes)
        try:
            quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
            q_bytes = dst.read_bytes()
            q_session = onnx_session(q_bytes)
        except Exception as exc:
            return {**out, "reason": f"quantize_dynamic failed, float graph kept: {_root_cause(exc)}"}
    rule = check_rule(spec, rule)
    base_session = onnx_session(onnx_bytes)
    measured = parity(spec, scores_onnx(q_session, spec, X), ref_scores, rule)
    rows = _single_rows(spec, X, 200)
    base = latency(lambda r: base_session.run(None, r), rows, 200)
    quant = latency(lambda r: q_session.run(None, r), rows, 200)
    out.update(max_abs_diff=measured["max_abs_diff"], label_agreement=measured["label_agreement"])
    if spec.task == "regression":
        out["max_rel_diff"] = measured["max_rel_diff"]
    out["latency_ms"] = {"float": base, "quantised": quant}
    in_parity, faster = _within(measured, gate, spec.task), quant["p50"] < base["p50"]
    if in_parity and faster:
        out.update(kept=True, model_bytes=q_bytes)
        out["reason"] = f"int8 graph is faster (p50 {quant['p50']} ms vs {base['p50']} ms) and within parity"
    elif not in_parity:
        out["reason"] = (
            f"int8 graph leaves parity ({_out_of_parity(measured, gate, spec.task)}); float graph kept"
        )
    else:
        out["reason"] = (
            f"int8 graph is not faster (p50 {quant['p50']} ms vs {base['p50']} ms); float graph kept"
        )
    return out


def _versions() -> dict:
    from importlib.metadata import version

    return {pkg: version(pkg) for pkg in ("scikit-learn", "skl2onnx", "onnx", "onnxruntime", "numpy")}


def _write(base: str, name: str, data: bytes) -> str:
    uri = storage.join(base, name)
    storage.write_bytes(uri, data)
    return uri


def export_and_check(
    spec: PipelineSpec,
    model_uri: str,
    test_uri: str,
    out_dir: str | Path,
    *,
    rule: dict | None = None,
    onnx_calls: int = 300,
    onnx_rounds: int = 3,
    sklearn_calls: int = 100,
) -> dict:
    """Convert, optimise, measure parity on the full test split and single-row latency; write the evidence.

    ``rule`` is the version's decision rule (``evaluate_model``'s ``rule``; None: the task's default,
    :func:`include.problem.default_rule`): binary ``{"threshold": t}``, where label agreement
    compares scikit-learn's and ONNX's decisions; multiclass ``{"value_matrix": k x k or None}``,
    the same for the class decided; regression ``{"offset": x}``, which moves both predictions alike.
    Writes ``model.onnx`` (the deployable graph) and ``onnx_report.json`` under ``out_dir``.

    The result (XCom, the blessing record) holds, for every task: ``converted``, ``task``,
    ``model_sha256``, ``max_abs_diff``, ``label_agreement`` (None for a regression), ``rows``,
    ``latency_ms`` (``onnx``/``sklearn``), ``speedup_p50``, ``quantisation``, ``inputs``, ``opset``,
    ``optimisation`` and ``onnx_path``; binary adds ``label_agreement_raw``, ``label_ties`` and
    ``label_threshold``; multiclass ``label_agreement_raw``, ``label_ties`` and ``label_rule``;
    regression ``max_rel_diff``. When the model does not convert, returns ``{"converted": False,
    "task": ..., "error": ..., "estimator": ...}`` (and writes the report) so the gate fails with the
    reason instead of the task crashing.
    """
    import onnx

    from include.frames import feature_frame, read_parquet
    from include.model_files import read_model

    rule = check_rule(spec, rule)
    remote = "://" in str(out_dir)
    base = str(out_dir) if remote else storage.path_to_uri(out_dir)
    model = read_model(model_uri)
    test = read_parquet(test_uri)
    if len(test) == 0:
        raise ValueError(f"test split {test_uri} has no rows: parity cannot be measured; re-run train_model")
    X = feature_frame(test, spec)
    versions = _versions()
    try:
        converted = convert(spec, model)
        optimised = optimise(converted)
    except ConversionError as exc:
        failed = {
            "converted": False,
            "task": spec.task,
            "error": str(exc),
            "estimator": type(_estimator(model)).__name__,
        }
        _write(base, "onnx_report.json", json.dumps({**failed, "versions": versions}, indent=2).encode())
        return failed

    ref = scores(model, X, spec)
    quant = quantise_if_useful(optimised, spec, X, ref, spec.gates.onnx, rule=rule)
    deployable = optimise(quant.pop("model_bytes")) if quant["kept"] else optimised
    session = onnx_session(deployable)
    measured = parity(spec, scores_onnx(session, spec, X), ref, rule)

    rows = _single_rows(spec, X, onnx_calls)
    onnx_latency = latency(lambda r: session.run(None, r), rows, onnx_calls, onnx_rounds)
    frames = [X.iloc[[i]] for i in range(min(sklearn_calls, len(X)))]
    sklearn_call = model.predict if spec.task == "regression" else model.predict_proba
    sklearn_latency = latency(sklearn_call, frames, sklearn_calls)

    conv_model = onnx.load_from_string(converted)
    opset = {(o.domain or "ai.onnx"): int(o.version) for o in conv_model.opset_import}
    n_before, n_after = len(conv_model.graph.node), len(onnx.load_from_string(deployable).graph.node)
    type_names = {v.name: v.type for v in session.get_inputs()}
    inputs = [{"name": name, "type": type_names[name]} for name in spec.features.all]
    onnx_uri = _write(base, "model.onnx", deployable)
    result = {
        "converted": True,
        "task": spec.task,
        "onnx_path": onnx_uri if remote else str(Path(out_dir) / "model.onnx"),
        "model_sha256": hashlib.sha256(deployable).hexdigest(),
        **measured,
        "latency_ms": {"onnx": onnx_latency, "sklearn": sklearn_latency},
        "speedup_p50": round(sklearn_latency["p50"] / max(onnx_latency["p50"], 1e-9), 1),
        "quantisation": quant,
        "inputs": inputs,
        "opset": opset,
        "optimisation": (
            f"onnxruntime {OPTIMISATION_LEVEL} without {', '.join(DISABLED_OPTIMISERS)} "
            f"(hardware-specific layouts); nodes {n_before} -> {n_after}"
            + ("; int8 dynamic quantisation kept" if quant["kept"] else "")
        ),
    }
    call = "predict" if spec.task == "regression" else "predict_proba"
    report = {
        **result,
        "estimator": _describe(model),
        "decision_rule": rule,
        "outputs": [o.name for o in session.get_outputs()],
        "target_opset": {(k or "ai.onnx"): v for k, v in TARGET_OPSET.items()},
        "tie_tolerance": TIE_TOLERANCE,
        "timing": (
            f"single-row calls on different test rows; onnxruntime session.run on prebuilt (1, 1) inputs "
            f"with intra_op_num_threads=1; scikit-learn {call} on a prebuilt one-row DataFrame; "
            f"first {onnx_latency['warmup_calls']} calls are warm-up and not timed; onnxruntime's p99 is "
            f"the best of {onnx_rounds} rounds of {onnx_calls} calls (p99_rounds)"
        ),
        "versions": versions,
    }
    _write(base, "onnx_report.json", json.dumps(report, indent=2, default=str).encode())
    return result


def _latency_note(lat: dict) -> str:
    note = f"single-row, {lat['calls']} calls"
    if lat.get("rounds", 1) > 1:
        rounds = ", ".join(f"{p:g}" for p in lat["p99_rounds"])
        note += f"; best of {lat['rounds']} rounds (p99 {rounds} ms)"
    return note


def onnx_gate(
    result: dict, gate: OnnxGate, evidence_uri: str | None = None, *, spec: PipelineSpec | None = None
) -> list[dict]:
    """Blessing entries: converted, parity, p99 single-row latency. All fail when the model did not
    convert. Quantisation is not a check: it is on record in ``result["quantisation"]`` and the ONNX
    report.

    Parity by task (``spec.task``; without a spec, the ``task`` the result records, binary for a
    result from before tasks): a classifier's ``max_abs_diff`` (every class's probability) and
    ``label_agreement`` (decisions under the version's rule), a regression's ``max_rel_diff``
    (``max_abs_diff`` stays in the result and the note: its unit is the target's)."""
    task = spec.task if spec is not None else result.get("task", "binary")
    if not result.get("converted", True):
        missing = "not measured: the model did not convert to ONNX"
        parity_checks = (
            [check("onnx", "max_rel_diff", None, gate.max_rel_diff, "<=", evidence_uri, note=missing)]
            if task == "regression"
            else [
                check("onnx", "max_abs_diff", None, gate.max_abs_diff, "<=", evidence_uri, note=missing),
                check(
                    "onnx",
                    "label_agreement",
                    None,
                    gate.min_label_agreement,
                    ">=",
                    evidence_uri,
                    note=missing,
                ),
            ]
        )
        return [
            check(
                "onnx", "converted", 0, 1, ">=", evidence_uri, note=result.get("error", "conversion failed")
            ),
            *parity_checks,
            check("onnx", "p99_latency_ms", None, gate.max_p99_latency_ms, "<=", evidence_uri, note=missing),
        ]
    rows = result.get("rows")
    # check() rounds values to 6 decimals (1.7e-7 shows as 0.0): the exact figures go in the notes.
    if task == "regression":
        rel, absolute = result.get("max_rel_diff"), result.get("max_abs_diff")
        parity_checks = [
            check(
                "onnx",
                "max_rel_diff",
                rel,
                gate.max_rel_diff,
                "<=",
                evidence_uri,
                note=(
                    f"max |y_onnx - y_sklearn| / max(1, |y_sklearn|) = {_g(rel)}, max |y_onnx - y_sklearn| = "
                    f"{_g(absolute)} (target units) over {rows} test rows"
                ),
            )
        ]
    else:
        if task == "binary":
            threshold, ties = result["label_threshold"], result.get("label_ties", 0)
            what = f"max |p_onnx - p_sklearn| = {_g(result['max_abs_diff'])} over {rows} test rows"
            agreement = (
                f"labels at the decision threshold {threshold:g} over {rows} test rows; {ties} exact ties "
                f"at {threshold:g} not counted as flips"
            )
        else:
            ties = result.get("label_ties", 0)
            what = f"max |p_onnx - p_sklearn| over every class = {_g(result['max_abs_diff'])} over {rows} test rows"
            agreement = (
                f"classes decided by {result.get('label_rule', 'the rule')} over {rows} test rows; {ties} rows "
                "whose two best classes tie not counted as flips"
            )
        parity_checks = [
            check(
                "onnx",
                "max_abs_diff",
                result["max_abs_diff"],
                gate.max_abs_diff,
                "<=",
                evidence_uri,
                note=what,
            ),
            check(
                "onnx",
                "label_agreement",
                result["label_agreement"],
                gate.min_label_agreement,
                ">=",
                evidence_uri,
                note=agreement,
            ),
        ]
    return [
        check("onnx", "converted", 1, 1, ">=", evidence_uri),
        *parity_checks,
        check(
            "onnx",
            "p99_latency_ms",
            result["latency_ms"]["onnx"]["p99"],
            gate.max_p99_latency_ms,
            "<=",
            evidence_uri,
            note=_latency_note(result["latency_ms"]["onnx"]),
        ),
    ]


def _g(value) -> str:
    return "not measured" if value is None else f"{value:.3g}"
