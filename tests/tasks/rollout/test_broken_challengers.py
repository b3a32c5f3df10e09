"""The broken challengers of tests/support/faults.py break exactly what they say, on a real model."""

from __future__ import annotations

import statistics
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tests.support import faults

EXTRA_MS = 20.0


@pytest.fixture(scope="module")
def model() -> bytes:
    return faults.tiny_model()[0]


@pytest.fixture(scope="module")
def rows():
    frame, _ = faults.tiny_data(200, seed=7)
    return frame


def _run(onnx_bytes: bytes, frame) -> tuple[np.ndarray, np.ndarray]:
    label, probabilities = faults._session(onnx_bytes).run(["label", "probabilities"], faults.feeds(frame))
    return label, probabilities


def _opsets(onnx_bytes: bytes) -> dict[str, int]:
    return {o.domain: o.version for o in onnx.load_from_string(onnx_bytes).opset_import}


def test_tiny_model_is_a_real_classifier(model, rows):
    onx = onnx.load_from_string(model)
    onnx.checker.check_model(onx, full_check=True)
    assert [i.name for i in onx.graph.input] == faults.tiny_model()[1] == ["age", "income", "plan"]
    assert [o.name for o in onx.graph.output] == ["label", "probabilities"]
    label, probs = _run(model, rows)
    assert probs.shape == (len(rows), 2) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    assert probs[:, 1].std() > 0.1  # scores spread: there is a distribution to shift
    assert set(label) == {0, 1}


# -- with_errors --------------------------------------------------------------------------------


def test_with_errors_gives_nan_exactly_for_rows_below(model, rows):
    below = 35.0
    broken = faults.with_errors(model, "age", below)
    onnx.checker.check_model(onnx.load_from_string(broken), full_check=True)
    assert _opsets(broken) == _opsets(model)
    label0, probs0 = _run(model, rows)
    label, probs = _run(broken, rows)
    failing = rows["age"].to_numpy(np.float32) < np.float32(below)
    assert 0 < failing.sum() < len(rows)  # both kinds of row are in the batch
    assert np.isnan(probs[failing]).all()  # both columns, every failing row
    assert not np.isnan(probs0[failing]).any()  # ... which the original answered
    assert np.array_equal(probs[~failing], probs0[~failing])  # bit for bit
    assert np.array_equal(label, label0)


def test_with_errors_single_rows_either_side(model, rows):
    broken = faults.with_errors(model, "income", 20_000.0)
    for value, fails in ((19_999.0, True), (20_000.0, False), (50_000.0, False)):
        one = rows.iloc[:1].assign(income=np.float32(value))
        probs = _run(broken, one)[1]
        assert np.isnan(probs).all() == fails
        if not fails:
            assert np.array_equal(probs, _run(model, one)[1])


@pytest.mark.parametrize("feature", ["plan", "no_such_column"])
def test_with_errors_needs_a_float_input(model, feature):
    with pytest.raises(ValueError, match=feature):
        faults.with_errors(model, feature, 0.0)


# -- with_latency -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slow(model) -> bytes:
    return faults.with_latency(model, EXTRA_MS)


def test_with_latency_answers_bit_for_bit(model, slow, rows):
    onnx.checker.check_model(onnx.load_from_string(slow), full_check=True)
    assert _opsets(slow) == _opsets(model)
    label0, probs0 = _run(model, rows)
    label, probs = _run(slow, rows)
    assert np.array_equal(probs, probs0) and np.array_equal(label, label0)
    # Extreme inputs cannot leak through the chain into the answer (NaN rows compare equal).
    odd = rows.iloc[:6].assign(age=np.array([np.nan, np.inf, -np.inf, 3e38, -3e38, 0.0], np.float32))
    assert np.array_equal(_run(slow, odd)[1], _run(model, odd)[1], equal_nan=True)
    assert np.array_equal(_run(slow, rows.iloc[:1])[1], probs0[:1])


def test_with_latency_chain_survives_onnxruntime_optimisation(slow, tmp_path):
    """ORT_ENABLE_ALL (constant folding, CSE, ...) keeps every MatMul of the chain."""
    added = [n for n in onnx.load_from_string(slow).graph.node if n.op_type == "MatMul"]
    assert len(added) >= 1
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    so.log_severity_level = 3
    ort.InferenceSession(slow, so, providers=["CPUExecutionProvider"])
    kept = [n for n in onnx.load(so.optimized_model_filepath).graph.node if "MatMul" in n.op_type]
    assert len(kept) == len(added)


def _median_ms(session, feed, runs: int = 20) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0


def test_with_latency_costs_extra_time(model, slow, rows):
    """Tolerant on purpose (a busy 2-core machine): at least 30% of the asked extra time."""
    feed = faults.feeds(rows.iloc[:1])
    before, after = faults._session(model), faults._session(slow)
    for session in (before, after):
        for _ in range(3):
            session.run(None, feed)
    base, slowed = _median_ms(before, feed), _median_ms(after, feed)
    print(f"single row, median of 20: original {base:.3f} ms, with_latency({EXTRA_MS}) {slowed:.3f} ms")
    assert slowed - base >= 0.3 * EXTRA_MS


def test_with_latency_explicit_chain_and_bad_input(model):
    onx = onnx.load_from_string(faults.with_latency(model, 1.0, chain=(32, 3)))
    assert sum(n.op_type == "MatMul" for n in onx.graph.node) == 3
    with pytest.raises(ValueError):
        faults.with_latency(model, 0.0)


# -- shifted ------------------------------------------------------------------------------------


@pytest.mark.parametrize("delta", [0.2, -0.3])
def test_shifted_moves_p1_and_keeps_rows_summing_to_one(model, rows, delta):
    moved = faults.shifted(model, delta)
    onnx.checker.check_model(onnx.load_from_string(moved), full_check=True)
    assert _opsets(moved) == _opsets(model)
    label0, probs0 = _run(model, rows)
    label, probs = _run(moved, rows)
    p1 = np.clip(probs0[:, 1] + np.float32(delta), np.float32(0), np.float32(1))
    assert np.array_equal(probs[:, 1], p1)
    assert np.array_equal(probs[:, 0], np.float32(1) - p1)
    assert not np.array_equal(probs, probs0)
    clipped = (probs0[:, 1] + delta < 0) | (probs0[:, 1] + delta > 1)
    assert clipped.any() and (~clipped).any()  # both branches of the clip are exercised
    np.testing.assert_allclose(probs[~clipped, 1] - probs0[~clipped, 1], delta, atol=1e-6)
    assert (probs[:, 1].mean() - probs0[:, 1].mean()) * delta > 0
    assert np.array_equal(label, label0)


def test_shifted_by_zero_keeps_p1_bit_for_bit(model, rows):
    probs0 = _run(model, rows)[1]
    probs = _run(faults.shifted(model, 0.0), rows)[1]
    assert np.array_equal(probs[:, 1], probs0[:, 1])


# -- faults compose -----------------------------------------------------------------------------


def test_faults_compose(model, rows):
    """Each builder renames the output it wraps, so one fault can be stacked on another."""
    below = 40.0
    failing = rows["age"].to_numpy(np.float32) < np.float32(below)
    both = faults.with_latency(
        faults.with_errors(faults.shifted(model, 0.1), "age", below), 1.0, chain=(32, 2)
    )
    probs = _run(both, rows)[1]
    expected = _run(faults.shifted(model, 0.1), rows)[1]
    assert np.isnan(probs[failing]).all()
    assert np.array_equal(probs[~failing], expected[~failing])
    names = [n.name for n in onnx.load_from_string(both).graph.node]
    assert len(names) == len(set(names))
