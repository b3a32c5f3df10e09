"""Deliberately broken "challenger" models, built from a real ONNX graph, for staged-rollout tests.

Each builder is a pure function over ONNX bytes (a converted scikit-learn model: one ``[N, 1]``
input per feature column, outputs ``label`` and ``probabilities``) and returns new ONNX bytes
whose ``probabilities`` output went wrong in one known way, so a test can prove that a canary
guardrail notices:

* :func:`with_errors` - NaN probabilities for the rows where one float feature is below a value
  (an error-rate guardrail); every other row is unchanged bit for bit.
* :func:`with_latency` - the same outputs bit for bit, each run slower by about ``extra_ms`` of
  CPU time (a latency guardrail).
* :func:`shifted` - the positive-class probability moved by ``delta`` (a distribution guardrail).

The new nodes are appended after the graph's own: the original ``probabilities`` tensor is
renamed, and a new node produces the graph output under the old name. Only operators whose
meaning has not changed since ai.onnx opset 9 are used, so the graph keeps its opset imports
(a model without a default-domain import gets one). :func:`tiny_model` trains and converts a
small real model to build from.
"""

from __future__ import annotations

import itertools
import statistics
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

PROBABILITIES = "probabilities"
# Where (9) is the newest operator used; Max/Min broadcast since 8.
MIN_OPSET = 9
# Default-domain version imported into a graph that has none (it then uses no ai.onnx operator).
ADDED_OPSET = 13
_FLOATS = (TensorProto.FLOAT, TensorProto.DOUBLE)


# -- graph surgery ------------------------------------------------------------------------------


def _load(onnx_bytes: bytes) -> onnx.ModelProto:
    model = onnx.load_from_string(onnx_bytes)
    imports = {o.domain: o.version for o in model.opset_import}
    version = imports.get("", imports.get("ai.onnx"))
    if version is None:
        model.opset_import.append(helper.make_opsetid("", ADDED_OPSET))
        model.ir_version = max(model.ir_version, helper.find_min_ir_version_for(list(model.opset_import)))
    elif version < MIN_OPSET:
        raise ValueError(f"the graph imports ai.onnx opset {version}; these builders need >= {MIN_OPSET}")
    return model


def _dump(model: onnx.ModelProto) -> bytes:
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def _all_names(graph: onnx.GraphProto) -> set[str]:
    names = {t.name for t in (*graph.input, *graph.output, *graph.value_info, *graph.initializer)}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
        names.add(node.name)
        for attr in node.attribute:
            for sub in (attr.g, *attr.graphs) if attr.type in (attr.GRAPH, attr.GRAPHS) else ():
                names |= _all_names(sub)
    return names


class _Namer:
    """Fresh tensor / node names that clash with nothing already in the graph."""

    def __init__(self, graph: onnx.GraphProto, prefix: str):
        self._taken = _all_names(graph)
        self._prefix = prefix
        self._count = itertools.count()

    def __call__(self, stem: str) -> str:
        while (name := f"{self._prefix}_{stem}_{next(self._count)}") in self._taken:
            pass
        self._taken.add(name)
        return name


def _rename_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Every node (subgraphs included, as outer-scope references) reading ``old`` reads ``new``."""
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for attr in node.attribute:
            for sub in (attr.g, *attr.graphs) if attr.type in (attr.GRAPH, attr.GRAPHS) else ():
                _rename_uses(sub, old, new)


def _detach_output(model: onnx.ModelProto, namer: _Namer, output: str = PROBABILITIES) -> tuple[str, int]:
    """Rename the tensor behind graph output ``output``; return (its new name, its element type).

    Afterwards nothing in the graph produces ``output``: the caller appends the node that does,
    reading the original value under the returned name.
    """
    graph = model.graph
    outs = [o for o in graph.output if o.name == output]
    if not outs:
        raise ValueError(f"the graph has no output {output!r} (outputs: {[o.name for o in graph.output]})")
    elem_type = outs[0].type.tensor_type.elem_type
    if elem_type not in _FLOATS:
        raise ValueError(f"output {output!r} is {TensorProto.DataType.Name(elem_type)}, not a float tensor")
    producers = [n for n in graph.node if output in n.output]
    if not producers:
        raise ValueError(f"output {output!r} is not computed by a node (a graph input or an initializer)")
    original = namer(f"{output}_original")
    node = producers[0]
    node.output[list(node.output).index(output)] = original
    _rename_uses(graph, output, original)
    for vi in graph.value_info:
        if vi.name == output:
            vi.name = original
    return original, elem_type


def _np_type(elem_type: int) -> np.dtype:
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))


def _const(graph: onnx.GraphProto, name: str, value, elem_type: int) -> str:
    graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=_np_type(elem_type)), name))
    return name


def _float_input(graph: onnx.GraphProto, feature: str) -> int:
    inputs = {i.name: i for i in graph.input}
    if feature not in inputs:
        raise ValueError(f"the graph has no input {feature!r} (inputs: {sorted(inputs)})")
    elem_type = inputs[feature].type.tensor_type.elem_type
    if elem_type not in _FLOATS:
        raise ValueError(f"input {feature!r} is {TensorProto.DataType.Name(elem_type)}, not a float tensor")
    return elem_type


# -- the faults ---------------------------------------------------------------------------------


def with_errors(onnx_bytes: bytes, feature: str, below: float) -> bytes:
    """NaN in both ``probabilities`` columns for the rows whose float input ``feature`` < ``below``.

    ``probabilities = Where(Less(feature, below), NaN, original)``: the ``[N, 1]`` condition
    broadcasts over ``[N, 2]``, so every other row is the original value, bit for bit (a NaN
    feature is not < ``below``: that row is unchanged too). ``label`` is left as it was.
    """
    model = _load(onnx_bytes)
    graph = model.graph
    feature_type = _float_input(graph, feature)
    name = _Namer(graph, "fault_errors")
    original, prob_type = _detach_output(model, name)
    limit = _const(graph, name("below"), below, feature_type)
    nan = _const(graph, name("nan"), np.nan, prob_type)
    failing = name("failing")
    graph.node.extend(
        [
            helper.make_node("Less", [feature, limit], [failing], name=name("less")),
            helper.make_node("Where", [failing, nan, original], [PROBABILITIES], name=name("where")),
        ]
    )
    return _dump(model)


def shifted(onnx_bytes: bytes, delta: float) -> bytes:
    """``p1 = clip(p1 + delta, 0, 1)`` and ``p0 = 1 - p1``: a model whose score distribution moved.

    Computed in the output's own type (float32 for skl2onnx classifiers); ``label`` is left as it
    was, so it no longer agrees with ``p1 >= 0.5`` everywhere (no guardrail should rely on it).
    """
    model = _load(onnx_bytes)
    graph = model.graph
    name = _Namer(graph, "fault_shift")
    original, prob_type = _detach_output(model, name)
    col = _const(graph, name("column"), [1], TensorProto.INT64)
    step = _const(graph, name("delta"), delta, prob_type)
    zero = _const(graph, name("zero"), 0.0, prob_type)
    one = _const(graph, name("one"), 1.0, prob_type)
    p1, moved, floored, p1_new, p0_new = (name(s) for s in ("p1", "moved", "floored", "p1_new", "p0_new"))
    graph.node.extend(
        [
            helper.make_node("Gather", [original, col], [p1], axis=1, name=name("gather")),  # [N, 1]
            helper.make_node("Add", [p1, step], [moved], name=name("add")),
            # Max/Min rather than Clip: Clip takes its bounds as attributes before opset 11.
            helper.make_node("Max", [moved, zero], [floored], name=name("max")),
            helper.make_node("Min", [floored, one], [p1_new], name=name("min")),
            helper.make_node("Sub", [one, p1_new], [p0_new], name=name("sub")),
            helper.make_node("Concat", [p0_new, p1_new], [PROBABILITIES], axis=1, name=name("concat")),
        ]
    )
    return _dump(model)


def _chain_size(extra_ms: float) -> int:
    """Side of the square matrices: one MatMul costs ~0.01 ms at 64, ~0.06 at 128, ~0.45 at 256."""
    return 64 if extra_ms < 1 else 128 if extra_ms < 10 else 256 if extra_ms < 200 else 512


def _add_chain(graph: onnx.GraphProto, name: _Namer, source: str, size: int, links: int) -> str:
    """``links`` MatMuls of a [size, size] float matrix that depends on ``source``'s row count.

    The start matrix is ``W * min(N, 1)`` (W uniform in [-1, 1]), then each link multiplies by a
    permutation matrix: every product is one entry times 1.0 plus zeros, so the values stay those
    of W (no overflow, no denormals that would slow the arithmetic down). ``N``, a dynamic
    dimension, is known only at run time, so onnxruntime cannot constant-fold the chain, and
    consecutive links have different inputs, so common-subexpression elimination merges none.
    Returns the name of a [1, 1] float sum of the last matrix (or of the start one for 0 links).
    """
    rng = np.random.default_rng(size)
    start = _const(graph, name("start"), rng.uniform(-1.0, 1.0, (size, size)), TensorProto.FLOAT)
    perm = _const(graph, name("perm"), np.eye(size)[rng.permutation(size)], TensorProto.FLOAT)
    rows_index = _const(graph, name("rows_index"), [0], TensorProto.INT64)
    one = _const(graph, name("one"), 1.0, TensorProto.FLOAT)
    shape, rows, rows_f, gate, current = (name(s) for s in ("shape", "rows", "rows_f", "gate", "m"))
    nodes = [
        helper.make_node("Shape", [source], [shape], name=name("shape")),
        helper.make_node("Gather", [shape, rows_index], [rows], axis=0, name=name("rows")),
        helper.make_node("Cast", [rows], [rows_f], to=TensorProto.FLOAT, name=name("cast")),
        helper.make_node("Min", [rows_f, one], [gate], name=name("gate")),
        helper.make_node("Mul", [start, gate], [current], name=name("start")),
    ]
    for _ in range(links):
        nxt = name("m")
        nodes.append(helper.make_node("MatMul", [current, perm], [nxt], name=name("matmul")))
        current = nxt
    total = name("total")
    nodes.append(helper.make_node("ReduceSum", [current], [total], keepdims=1, name=name("sum")))
    graph.node.extend(nodes)
    return total


def _session(model_bytes: bytes):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


def _chain_ms(size: int, links: int, runs: int = 15) -> float:
    """Median CPU time (ms, the calling thread: intra_op_num_threads=1 runs there) of a one-row run
    of a graph holding only the chain."""
    graph = helper.make_graph(
        [], "latency_probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1])], []
    )
    total = _add_chain(graph, _Namer(graph, "probe"), "x", size, links)
    graph.output.append(helper.make_tensor_value_info(total, TensorProto.FLOAT, [1, 1]))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ADDED_OPSET)])
    session = _session(model.SerializeToString())
    feed = {"x": np.zeros((1, 1), np.float32)}
    for _ in range(3):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.thread_time()
        session.run(None, feed)
        times.append(time.thread_time() - start)
    return statistics.median(times) * 1000.0


def calibrate(extra_ms: float, max_links: int = 20_000) -> tuple[int, int]:
    """(matrix side, number of MatMuls) whose chain costs ~``extra_ms`` of CPU time on this machine.

    Times chains of growing length (single row, one thread) until the chain takes at least a
    quarter of the target, derives the cost of one MatMul, then checks the resulting chain once
    and rescales it if it is off by more than 20%.
    """
    if not extra_ms > 0:
        raise ValueError(f"extra_ms must be > 0, got {extra_ms}")
    size = _chain_size(extra_ms)
    base = _chain_ms(size, 0)
    links = 4
    while True:
        spent = _chain_ms(size, links) - base
        if spent >= extra_ms / 4 or links >= max_links:
            break
        links *= 4
    per_link = max(spent, 1e-6) / links
    links = int(min(max_links, max(1, round(extra_ms / per_link))))
    spent = _chain_ms(size, links) - base
    if spent > 0 and abs(spent - extra_ms) > 0.2 * extra_ms:
        links = int(min(max_links, max(1, round(links * extra_ms / spent))))
    return size, links


def with_latency(onnx_bytes: bytes, extra_ms: float, *, chain: tuple[int, int] | None = None) -> bytes:
    """The same outputs bit for bit; each run costs about ``extra_ms`` more CPU time (any small N).

    A chain of MatMuls (see :func:`_add_chain`; sized by :func:`calibrate` with onnxruntime on this
    machine, one intra-op thread, unless ``chain=(side, links)`` is given) reduces to a [1, 1]
    sum ``s``, and ``probabilities = Where(Less(s, -inf), 0, original)``. Nothing compares less
    than -inf, NaN included, so the condition is false whatever ``s`` is and ``Where`` copies
    ``original``; onnxruntime cannot know that and must compute ``s`` first. ``label`` is left
    as it was (and does not wait for the chain).
    """
    size, links = chain if chain is not None else calibrate(extra_ms)
    model = _load(onnx_bytes)
    graph = model.graph
    name = _Namer(graph, "fault_latency")
    original, prob_type = _detach_output(model, name)
    total = _add_chain(graph, name, graph.input[0].name, size, links)
    minus_inf = _const(graph, name("minus_inf"), -np.inf, TensorProto.FLOAT)
    zero = _const(graph, name("zero"), 0.0, prob_type)
    never = name("never")
    graph.node.extend(
        [
            helper.make_node("Less", [total, minus_inf], [never], name=name("less")),
            helper.make_node("Where", [never, zero, original], [PROBABILITIES], name=name("where")),
        ]
    )
    return _dump(model)


# -- a real model to break ----------------------------------------------------------------------

NUMERIC = ["age", "income"]
CATEGORICAL = ["plan"]


def tiny_data(n: int = 400, seed: int = 0):
    """Synthetic rows (a DataFrame with ``age``, ``income``, ``plan``) and a 0/1 target."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "age": rng.normal(40, 12, n).astype(np.float32),
            "income": rng.lognormal(10, 0.5, n).astype(np.float32),
            "plan": rng.choice(["basic", "plus", "pro"], n),
        }
    )
    score = (frame["age"] - 40) / 12 + (frame["plan"] == "pro") - 0.3 + rng.normal(0, 1, n)
    return frame, (score > 0).astype(np.int64).to_numpy()


def tiny_model() -> tuple[bytes, list[str]]:
    """A small real model: (ONNX bytes, feature names in input order).

    Pipeline(ColumnTransformer(StandardScaler on ``age``, ``income``; OneHotEncoder(ignore) on
    ``plan``), LogisticRegression), fitted on :func:`tiny_data` and converted like the product
    does: one [None, 1] input per column (float / string), ``zipmap=False``.
    """
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    frame, target = tiny_data()
    clf = LogisticRegression()
    pipe = Pipeline(
        [
            (
                "pre",
                ColumnTransformer(
                    [
                        ("num", StandardScaler(), NUMERIC),
                        ("cat", OneHotEncoder(handle_unknown="ignore"), CATEGORICAL),
                    ]
                ),
            ),
            ("clf", clf),
        ]
    ).fit(frame, target)
    initial_types = [(c, FloatTensorType([None, 1])) for c in NUMERIC] + [
        (c, StringTensorType([None, 1])) for c in CATEGORICAL
    ]
    onx = convert_sklearn(
        pipe,
        initial_types=initial_types,
        options={id(clf): {"zipmap": False}},
        target_opset={"": 18, "ai.onnx.ml": 3},
        name="tiny",
    )
    return onx.SerializeToString(), [*NUMERIC, *CATEGORICAL]


def feeds(frame) -> dict[str, np.ndarray]:
    """onnxruntime inputs for rows of :func:`tiny_data`: one [N, 1] array per column."""
    out = {c: frame[c].to_numpy(np.float32).reshape(-1, 1) for c in NUMERIC}
    out.update({c: frame[c].astype(str).to_numpy(object).reshape(-1, 1) for c in CATEGORICAL})
    return out
