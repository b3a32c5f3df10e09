"""Shadow and canary guardrails of a multiclass and a regression challenger, and the monitor's live checks."""

from __future__ import annotations

import numpy as np
import pytest

from include.spec import Rollout
from include.tasks.gates import FAILED, PASSED
from include.tasks.monitor.performance import Labelled, live_value_per_1000, performance_checks
from include.tasks.rollout import guardrails as g


def _arm(version, probability, decision, *, scores=None, label=None, prefix="r"):
    n = len(probability)
    return g.Arm(
        version=version,
        probability=np.asarray(probability, dtype=float),
        decision=np.asarray(decision),
        latency_ms=np.full(n, 1.0),
        label=np.full(n, np.nan) if label is None else np.asarray(label, dtype=float),
        request_id=[f"{prefix}{i}" for i in range(n)],
        scores=None if scores is None else np.asarray(scores, dtype=float),
    )


def _window(cp, ch):
    return g.Window("2030-01-01T00:00:00+00:00", "2030-01-01T01:00:00+00:00", cp, ch)


def _by_metric(results):
    return {r["metric"]: r for r in results}


def _probs(n, k, seed, shift=0.0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, k)) + shift * np.arange(k)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def test_shadow_of_a_multiclass_challenger_compares_classes_and_every_probability():
    cfg = Rollout().shadow
    p = _probs(300, 4, 0)
    same = _arm(1, p.max(axis=1), p.argmax(axis=1), scores=p)
    ok = _by_metric(
        g.shadow_checks(
            cfg, _window(same, _arm(2, p.max(axis=1), p.argmax(axis=1), scores=p)), True, "multiclass"
        )
    )
    assert ok["decision_disagreement"]["value"] == 0 and ok["mean_abs_delta"]["value"] == 0
    other = _probs(300, 4, 1)
    bad = _by_metric(
        g.shadow_checks(
            cfg,
            _window(same, _arm(2, other.max(axis=1), other.argmax(axis=1), scores=other)),
            True,
            "multiclass",
        )
    )
    assert bad["decision_disagreement"]["status"] == FAILED and bad["decision_disagreement"]["value"] > 0.5
    assert bad["mean_abs_delta"]["value"] == pytest.approx(float(np.abs(p - other).mean()), abs=1e-6)


def test_shadow_of_a_regression_challenger_judges_the_mean_relative_change():
    cfg = Rollout().shadow
    y = np.random.default_rng(0).uniform(50, 150, 200)
    champ = _arm(1, y, y)
    close = _by_metric(g.shadow_checks(cfg, _window(champ, _arm(2, y * 1.01, y * 1.01)), True, "regression"))
    assert "decision_disagreement" not in close and close["mean_relative_delta"]["status"] == PASSED
    assert close["mean_relative_delta"]["value"] == pytest.approx(0.01, rel=1e-3)
    far = _by_metric(g.shadow_checks(cfg, _window(champ, _arm(2, y * 1.2, y * 1.2)), True, "regression"))
    assert far["mean_relative_delta"]["status"] == FAILED


def test_canary_of_a_multiclass_challenger_tests_log_loss_of_the_true_class_and_psi_per_class():
    guard = Rollout().canary.guardrails.model_copy(
        update={"min_rows_for_psi": 100, "min_labelled_per_variant": 50}
    )
    rng = np.random.default_rng(3)
    label = rng.integers(0, 3, 400)
    sharp = np.full((400, 3), 0.05)
    sharp[np.arange(400), label] = 0.9  # right and confident
    flat = np.full((400, 3), 1 / 3)  # knows nothing
    cp = _arm(1, sharp.max(axis=1), sharp.argmax(axis=1), scores=sharp, label=label, prefix="a")
    ch = _arm(2, flat.max(axis=1), flat.argmax(axis=1), scores=flat, label=label, prefix="b")
    out = _by_metric(g.canary_checks(guard, _window(cp, ch), True, 10, task="multiclass"))
    assert out["log_loss_worse_pvalue"]["status"] == FAILED
    assert out["score_psi"]["status"] == FAILED  # every class's probability moved
    losses = g.row_loss("log_loss", sharp.max(axis=1), label.astype(float), scores=sharp)
    assert losses == pytest.approx(np.full(400, -np.log(0.9)))


def test_canary_of_a_regression_challenger_bounds_squared_error_relative_to_the_champion():
    guard = Rollout().canary.guardrails.model_copy(
        update={"min_rows_for_psi": 100, "min_labelled_per_variant": 50}
    )
    rng = np.random.default_rng(4)
    truth = rng.uniform(50, 150, 400)
    good = truth + rng.normal(0, 5, 400)
    cp = _arm(1, good, good, label=truth, prefix="a")
    same = _arm(2, truth + rng.normal(0, 5, 400), truth, label=truth, prefix="b")
    assert (
        _by_metric(g.canary_checks(guard, _window(cp, same), True, 10, task="regression"))[
            "squared_error_worse_pvalue"
        ]["status"]
        == PASSED
    )
    worse = truth + rng.normal(0, 15, 400)
    out = _by_metric(
        g.canary_checks(
            guard, _window(cp, _arm(2, worse, worse, label=truth, prefix="b")), True, 10, task="regression"
        )
    )
    assert out["squared_error_worse_pvalue"]["status"] == FAILED
    assert "champion's + " in out["squared_error_worse_pvalue"]["note"]  # the margin in target units², shown


def test_a_loss_of_another_task_is_a_spec_error(project_root):
    from include.spec import SpecError, parse_spec

    text = (project_root / "include" / "pipelines" / "salary_benchmark.yaml").read_text()
    with pytest.raises(SpecError, match="metric 'brier' is not a loss of task regression"):
        parse_spec(
            text + "rollout:\n  canary:\n    guardrails:\n      metric: brier\n", "salary_benchmark.yaml"
        )


def test_the_monitor_judges_live_macro_f1_and_rmse_and_the_value_of_the_decisions(project_root):
    from include.spec import load_spec

    runtime = load_spec(project_root / "include" / "pipelines" / "job_runtime.yaml")
    cfg = runtime.monitoring.performance.model_copy(update={"min_labelled": 20})
    label = np.array([0, 1, 2, 3] * 10, dtype=float)
    right = Labelled(np.full(40, 0.9), label, "a", "b", label.copy())
    tags = {"slipway.metric.macro_f1": "0.8", "slipway.value_per_1000": "600"}
    out = _by_metric(performance_checks(cfg, runtime, right, tags))
    assert out["macro_f1"]["status"] == PASSED and out["macro_f1"]["value"] == 1.0
    assert live_value_per_1000(runtime, right, tags) == 1000.0  # every job in its queue: 1 each
    wrong = Labelled(np.full(40, 0.9), label, "a", "b", np.zeros(40))  # everything sent to VF
    out = _by_metric(performance_checks(cfg, runtime, wrong, tags))
    assert out["macro_f1"]["status"] == FAILED and out["value_per_1000"]["status"] == FAILED

    salary = load_spec(project_root / "include" / "pipelines" / "salary_benchmark.yaml")
    cfg = salary.monitoring.performance.model_copy(update={"min_labelled": 20})
    truth = np.linspace(60, 160, 40)
    close = Labelled(truth + 20, truth, "a", "b", truth + 25)
    out = _by_metric(
        performance_checks(
            cfg, salary, close, {"slipway.metric.rmse": "30", "slipway.value_per_1000": "-40000"}
        )
    )
    assert out["rmse"]["value"] == pytest.approx(20.0) and out["rmse"]["status"] == PASSED
    assert out["value_per_1000"]["value"] == pytest.approx(-25000.0)  # 25 over, at 1 a unit
    far = Labelled(truth + 40, truth, "a", "b", truth + 40)
    assert (
        _by_metric(performance_checks(cfg, salary, far, {"slipway.metric.rmse": "30"}))["rmse"]["status"]
        == FAILED
    )
