"""ONNX export: the whole fitted Pipeline as one ONNX graph, optimised, checked against scikit-learn.

One graph holds preprocessing and the estimator, with one named input per feature column, so
serving needs onnxruntime and nothing else. Parity is measured on every row of the test split
(max |p_onnx - p_sklearn| and label agreement at the version's decision threshold, the one its
decisions are made at, not 0.5) and single-row latency is recorded; the ``onnx`` gate turns those
numbers into blessing entries. Quantisation is an optimisation, on record in the report and the
result, not a gate check.

Input types: numeric and binary columns are ``tensor(float)``, categoricals ``tensor(string)``.
Double inputs were tried first and do not run: onnxruntime 1.32 has no double kernel for
``ai.onnx.ml.Imputer`` ("Could not find an implementation for Imputer(1)") and rejects the double
``probabilities`` skl2onnx declares for ``TreeEnsembleClassifier``. Float loses nothing for trees:
scikit-learn itself casts tree inputs to float32 and skl2onnx adjusts each threshold so that
``(float)x <= t`` decides the same branch; ``build_pipeline`` puts no scaler before trees, so
the values reaching a tree are the ones scikit-learn sees. Linear models lose ~1e-7.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include import storage
from include.model_files import onnx_inputs, onnx_session, predict_proba_onnx
from include.spec import OnnxGate, PipelineSpec
from include.tasks.gates import check

if TYPE_CHECKING:
    pass

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
# 0.5). A reference probability that equal to the decision threshold is a tie, not a label flip.
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


def _register_lightgbm() -> None:
    """skl2onnx converts LightGBM's scikit-learn estimator with onnxmltools' converter, once it is
    registered (the documented way: ``update_registered_converter``)."""
    from lightgbm import LGBMClassifier
    from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import calculate_linear_classifier_output_shapes

    update_registered_converter(
        LGBMClassifier,
        "LightGbmLGBMClassifier",
        calculate_linear_classifier_output_shapes,
        convert_lightgbm,
        options={"nocl": [True, False], "zipmap": [True, False, "columns"]},
    )


def convert(spec: PipelineSpec, model) -> bytes:
    """The whole fitted Pipeline (preprocessing + estimator) as ONNX bytes, one input per feature column."""
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
            options={id(_estimator(model)): {"zipmap": False}},
            target_opset=TARGET_OPSET,
            # skl2onnx names the graph with a random uuid: a fixed name keeps equal models equal bytes.
            name=spec.name,
        )
    except Exception as exc:  # skl2onnx raises anything from RuntimeError to TypeError
        raise ConversionError(
            f"skl2onnx {skl2onnx_version} cannot convert {what}: {_root_cause(exc)}; "
            "choose an estimator skl2onnx supports (see ESTIMATORS in include/spec.py) or turn off "
            "gates.onnx in the spec and accept no ONNX artifact"
        ) from exc
    # skl2onnx lists the opset imports in an order that varies from one process to the next (seen
    # under CPU load: the same model gave two graphs differing only there): sort them, so equal
    # models stay equal bytes.
    imports = sorted(onx.opset_import, key=lambda o: (o.domain, o.version))
    del onx.opset_import[:]
    onx.opset_import.extend(imports)
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


def _parity(p_onnx, p_ref, threshold: float) -> dict:
    """Max |dp| and label agreement at ``threshold``; a row whose reference probability *is* the
    threshold (to float32 resolution) is a tie that rounding sends either way, counted apart rather
    than as a flip."""
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


def _within(parity: dict, gate: OnnxGate) -> bool:
    return (
        parity["max_abs_diff"] <= gate.max_abs_diff and parity["label_agreement"] >= gate.min_label_agreement
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
    onnx_bytes: bytes, spec: PipelineSpec, X, y_proba_ref, gate: OnnxGate, *, threshold: float
) -> dict:
    """Dynamic int8 quantisation, only for graphs with MatMul/Gemm; kept only if faster and still in
    parity (label agreement at the decision ``threshold``).

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
    base_session = onnx_session(onnx_bytes)
    parity = _parity(predict_proba_onnx(q_session, spec, X), y_proba_ref, threshold)
    rows = _single_rows(spec, X, 200)
    base = latency(lambda r: base_session.run(None, r), rows, 200)
    quant = latency(lambda r: q_session.run(None, r), rows, 200)
    out.update(
        max_abs_diff=parity["max_abs_diff"],
        label_agreement=parity["label_agreement"],
        latency_ms={"float": base, "quantised": quant},
    )
    in_parity, faster = _within(parity, gate), quant["p50"] < base["p50"]
    if in_parity and faster:
        out.update(kept=True, model_bytes=q_bytes)
        out["reason"] = f"int8 graph is faster (p50 {quant['p50']} ms vs {base['p50']} ms) and within parity"
    elif not in_parity:
        out["reason"] = (
            f"int8 graph leaves parity (max |dp| {parity['max_abs_diff']:.3g} vs allowed {gate.max_abs_diff}, "
            f"label agreement {parity['label_agreement']:.4f} vs required {gate.min_label_agreement}); "
            "float graph kept"
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
    threshold: float,
    onnx_calls: int = 300,
    onnx_rounds: int = 3,
    sklearn_calls: int = 100,
) -> dict:
    """Convert, optimise, measure parity on the full test split and single-row latency; write the evidence.

    ``threshold`` is the version's decision threshold (``evaluate_model``'s ``threshold``): label
    agreement compares scikit-learn and ONNX decisions at it. Writes ``model.onnx`` (the deployable
    graph) and ``onnx_report.json`` under ``out_dir``. When the model does not convert, returns
    ``{"converted": False, "error": ..., "estimator": ...}`` (and writes the report) so the gate
    fails with the reason instead of the task crashing.
    """
    import onnx

    from include.frames import feature_frame, read_parquet
    from include.model_files import read_model

    threshold = _check_threshold(threshold)
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
        failed = {"converted": False, "error": str(exc), "estimator": type(_estimator(model)).__name__}
        _write(base, "onnx_report.json", json.dumps({**failed, "versions": versions}, indent=2).encode())
        return failed

    p_sklearn = model.predict_proba(X)[:, 1]
    quant = quantise_if_useful(optimised, spec, X, p_sklearn, spec.gates.onnx, threshold=threshold)
    deployable = optimise(quant.pop("model_bytes")) if quant["kept"] else optimised
    session = onnx_session(deployable)
    parity = _parity(predict_proba_onnx(session, spec, X), p_sklearn, threshold)

    rows = _single_rows(spec, X, onnx_calls)
    onnx_latency = latency(lambda r: session.run(None, r), rows, onnx_calls, onnx_rounds)
    frames = [X.iloc[[i]] for i in range(min(sklearn_calls, len(X)))]
    sklearn_latency = latency(model.predict_proba, frames, sklearn_calls)

    conv_model = onnx.load_from_string(converted)
    opset = {(o.domain or "ai.onnx"): int(o.version) for o in conv_model.opset_import}
    n_before, n_after = len(conv_model.graph.node), len(onnx.load_from_string(deployable).graph.node)
    type_names = {v.name: v.type for v in session.get_inputs()}
    inputs = [{"name": name, "type": type_names[name]} for name in spec.features.all]
    onnx_uri = _write(base, "model.onnx", deployable)
    result = {
        "converted": True,
        "onnx_path": onnx_uri if remote else str(Path(out_dir) / "model.onnx"),
        "model_sha256": hashlib.sha256(deployable).hexdigest(),
        "max_abs_diff": parity["max_abs_diff"],
        "label_agreement": parity["label_agreement"],
        "label_agreement_raw": parity["label_agreement_raw"],
        "label_ties": parity["label_ties"],
        "label_threshold": parity["label_threshold"],
        "rows": parity["rows"],
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
    report = {
        **result,
        "estimator": _describe(model),
        "target_opset": {(k or "ai.onnx"): v for k, v in TARGET_OPSET.items()},
        "tie_tolerance": TIE_TOLERANCE,
        "timing": (
            f"single-row calls on different test rows; onnxruntime session.run on prebuilt (1, 1) inputs "
            f"with intra_op_num_threads=1; scikit-learn predict_proba on a prebuilt one-row DataFrame; "
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


def onnx_gate(result: dict, gate: OnnxGate, evidence_uri: str | None = None) -> list[dict]:
    """Blessing entries: converted, parity (max |dp|, label agreement at the decision threshold), p99
    single-row latency. All fail when the model did not convert. Quantisation is not a check: it is
    on record in ``result["quantisation"]`` and the ONNX report."""
    if not result.get("converted", True):
        missing = "not measured: the model did not convert to ONNX"
        return [
            check(
                "onnx", "converted", 0, 1, ">=", evidence_uri, note=result.get("error", "conversion failed")
            ),
            check("onnx", "max_abs_diff", None, gate.max_abs_diff, "<=", evidence_uri, note=missing),
            check(
                "onnx", "label_agreement", None, gate.min_label_agreement, ">=", evidence_uri, note=missing
            ),
            check("onnx", "p99_latency_ms", None, gate.max_p99_latency_ms, "<=", evidence_uri, note=missing),
        ]
    rows, ties, threshold = result.get("rows"), result.get("label_ties", 0), result["label_threshold"]
    return [
        check("onnx", "converted", 1, 1, ">=", evidence_uri),
        # check() rounds values to 6 decimals (1.7e-7 shows as 0.0): the exact figure goes in the note.
        check(
            "onnx",
            "max_abs_diff",
            result["max_abs_diff"],
            gate.max_abs_diff,
            "<=",
            evidence_uri,
            note=f"max |p_onnx - p_sklearn| = {result['max_abs_diff']:.3g} over {rows} test rows",
        ),
        check(
            "onnx",
            "label_agreement",
            result["label_agreement"],
            gate.min_label_agreement,
            ">=",
            evidence_uri,
            note=(
                f"labels at the decision threshold {threshold:g} over {rows} test rows; {ties} exact ties "
                f"at {threshold:g} not counted as flips"
            ),
        ),
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
