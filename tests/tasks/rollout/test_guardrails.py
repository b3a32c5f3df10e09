"""Shadow and canary guardrails (include/tasks/rollout/guardrails.py): the statistics, the checks each
window yields, and the window read back from a real SQLite prediction log.

Every random input comes from ``np.random.default_rng(seed)`` with the seed written at the call,
so each test sees the same numbers on every run.
"""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from scipy import stats

from include.prediction_log.rows import FailureRow, PredictionRow
from include.prediction_log.writer import PredictionLog
from include.spec import Rollout
from include.tasks.gates import FAILED, NOT_APPLICABLE, PASSED
from include.tasks.rollout import guardrails as g


@pytest.fixture(scope="module")
def rollout():
    # The spec model's defaults (the production guardrails), not a pipeline's demo-sized windows.
    return Rollout()


@pytest.fixture(scope="module")
def shadow_cfg(rollout):
    return rollout.shadow


@pytest.fixture(scope="module")
def guard(rollout):
    # PSI judged from 100 rows a side, so the hand-built windows of ~300 rows exercise it.
    return rollout.canary.guardrails.model_copy(update={"min_rows_for_psi": 100})


def by_metric(results: list[dict]) -> dict[str, dict]:
    metrics = [r["metric"] for r in results]
    assert len(metrics) == len(set(metrics)), f"a metric was checked twice: {metrics}"
    return {r["metric"]: r for r in results}


def make_arm(
    version: int,
    probability: np.ndarray,
    *,
    ids: list[str] | None = None,
    decision: np.ndarray | None = None,
    latency_ms: np.ndarray | None = None,
    label: np.ndarray | None = None,
    failures: int = 0,
    prefix: str = "r",
) -> g.Arm:
    n = len(probability)
    return g.Arm(
        version=version,
        probability=np.asarray(probability, dtype=float),
        decision=(probability >= 0.5).astype(int) if decision is None else np.asarray(decision, dtype=int),
        latency_ms=np.full(n, 1.0) if latency_ms is None else np.asarray(latency_ms, dtype=float),
        label=np.full(n, np.nan) if label is None else np.asarray(label, dtype=float),
        request_id=[f"{prefix}{i}" for i in range(n)] if ids is None else list(ids),
        failures=failures,
    )


def window(champion: g.Arm, challenger: g.Arm) -> g.Window:
    return g.Window(
        "2030-01-01T00:00:00.000000+00:00", "2030-01-01T01:00:00.000000+00:00", champion, challenger
    )


def scores(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).beta(2, 5, n)


# -- psi --------------------------------------------------------------------------------------------


def test_psi_of_identical_samples_is_zero():
    ref = scores(2000, seed=1)
    assert g.psi(ref, ref.copy()) == pytest.approx(0.0, abs=1e-9)


def test_psi_of_two_draws_from_the_same_distribution_is_small():
    assert g.psi(scores(2000, seed=2), scores(2000, seed=3)) < 0.05


def test_psi_of_a_shifted_distribution_exceeds_the_guardrail():
    ref = scores(2000, seed=4)
    shifted = np.clip(scores(2000, seed=5) + 0.2, 0, 1)
    assert g.psi(ref, shifted) > 0.2
    assert g.psi(ref, shifted) > 10 * g.psi(ref, scores(2000, seed=5))


def test_psi_does_not_depend_on_row_order():
    ref, cur = scores(1000, seed=6), np.clip(scores(1000, seed=7) + 0.1, 0, 1)
    assert g.psi(ref, cur) == pytest.approx(g.psi(ref[::-1], cur[::-1]))


def test_psi_of_a_constant_reference_is_finite():
    ref = np.full(200, 0.3)
    same = g.psi(ref, np.full(200, 0.3))
    below = g.psi(ref, np.full(200, 0.1))
    assert math.isfinite(same) and math.isfinite(below)
    assert same == pytest.approx(0.0, abs=1e-9)
    assert below > 0.2  # every current score on the other side of the constant


def test_psi_sees_a_shift_above_a_constant_reference():
    assert g.psi(np.full(200, 0.3), np.full(200, 0.9)) > 0.2


def test_psi_sees_a_shift_between_discrete_scores():
    # A model with three distinct scores, a third each; then a third of the customers move 0.5 -> 0.9.
    ref = np.repeat([0.1, 0.5, 0.9], 100)
    cur = np.repeat([0.1, 0.9, 0.9], 100)
    assert g.psi(ref, cur) > 0.2


# -- row_loss ---------------------------------------------------------------------------------------

P = np.array([0.9, 0.2, 0.6, 0.4])
Y = np.array([1.0, 0.0, 0.0, 1.0])


def test_row_loss_brier():
    np.testing.assert_allclose(g.row_loss("brier", P, Y), [0.01, 0.04, 0.36, 0.36])


def test_row_loss_log_loss():
    expected = [-math.log(0.9), -math.log(0.8), -math.log(0.4), -math.log(0.4)]
    np.testing.assert_allclose(g.row_loss("log_loss", P, Y), expected)


def test_row_loss_log_loss_is_finite_at_certain_wrong_answers():
    loss = g.row_loss("log_loss", np.array([0.0, 1.0]), np.array([1.0, 0.0]))
    assert np.all(np.isfinite(loss)) and np.all(loss > 10)


def test_row_loss_error_rate_uses_the_threshold():
    np.testing.assert_array_equal(g.row_loss("error_rate", P, Y), [0, 0, 1, 1])
    # At threshold 0.7, 0.6 is a 0 (right for label 0) and 0.4 stays a 0 (wrong for label 1).
    np.testing.assert_array_equal(g.row_loss("error_rate", P, Y, threshold=0.7), [0, 0, 0, 1])
    # A probability equal to the threshold is a positive decision.
    np.testing.assert_array_equal(g.row_loss("error_rate", np.array([0.5]), np.array([1.0])), [0])


def test_row_loss_unknown_metric_raises():
    with pytest.raises(ValueError, match="auc"):
        g.row_loss("auc", P, Y)


# -- worse_test -------------------------------------------------------------------------------------


def test_worse_test_flags_a_clearly_worse_challenger():
    rng = np.random.default_rng(11)  # seed 11
    champion = rng.normal(0.2, 0.1, 500)
    challenger = rng.normal(0.3, 0.1, 500)
    diff, p = g.worse_test(challenger, champion, margin=0.02)
    assert diff == pytest.approx(challenger.mean() - champion.mean())
    assert 0.07 < diff < 0.13
    assert p < 0.01


def test_worse_test_with_equal_losses_is_far_from_a_breach():
    champion = np.random.default_rng(12).normal(0.2, 0.1, 500)  # seed 12
    diff, p = g.worse_test(champion.copy(), champion, margin=0.02)
    assert diff == 0.0
    assert p > 0.5
    # Same distribution, different customers (seeds 13 and 14).
    a = np.random.default_rng(13).normal(0.2, 0.1, 500)
    b = np.random.default_rng(14).normal(0.2, 0.1, 500)
    assert g.worse_test(a, b, margin=0.02)[1] > 0.5


def test_worse_test_within_the_margin_is_not_a_breach():
    champion = np.random.default_rng(15).normal(0.2, 0.1, 500)  # seed 15
    challenger = champion + 0.015  # worse, by less than the 0.02 margin
    diff, p = g.worse_test(challenger, champion, margin=0.02)
    assert diff == pytest.approx(0.015)
    assert p > 0.5
    # The same difference is significant without the margin: the margin is what keeps it a pass.
    assert g.worse_test(challenger, champion, margin=0.0)[1] < 0.05


def test_worse_test_is_welchs_one_sided_test_with_the_margin():
    rng = np.random.default_rng(17)  # seed 17
    challenger, champion = rng.normal(0.25, 0.15, 300), rng.normal(0.2, 0.05, 500)
    margin = 0.02
    va, vb = challenger.var(ddof=1) / 300, champion.var(ddof=1) / 500
    t = (challenger.mean() - margin - champion.mean()) / math.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va**2 / 299 + vb**2 / 499)  # Welch-Satterthwaite: unequal variances
    _, p = g.worse_test(challenger, champion, margin)
    assert p == pytest.approx(stats.t.sf(t, dof), rel=1e-9)


def test_worse_test_is_one_sided():
    champion = np.random.default_rng(16).normal(0.3, 0.1, 500)  # seed 16
    _, p = g.worse_test(champion - 0.1, champion, margin=0.0)  # a clearly better challenger
    assert p > 0.99


@pytest.mark.filterwarnings("ignore:Precision loss occurred:RuntimeWarning")
def test_worse_test_with_zero_variance():
    # Every challenger row wrong, every champion row right: certain breach, not a NaN read as a pass.
    _, p = g.worse_test(np.ones(300), np.zeros(300), margin=0.02)
    assert p < 0.01
    # Both arms identical constants: nothing to reject.
    assert g.worse_test(np.zeros(300), np.zeros(300), margin=0.02)[1] == 1.0


# -- shadow_checks ----------------------------------------------------------------------------------


def shadow_pair(n: int = 600, seed: int = 21) -> tuple[g.Arm, g.Arm]:
    """Champion and an identical challenger, the challenger's rows in another order."""
    prob = scores(n, seed)
    champion = make_arm(3, prob, latency_ms=np.full(n, 1.5))
    order = np.random.default_rng(seed + 1).permutation(n)
    challenger = make_arm(4, prob[order], ids=[f"r{i}" for i in order], latency_ms=np.full(n, 2.0))
    return champion, challenger


def test_shadow_identical_arms_pass_every_check(shadow_cfg):
    champion, challenger = shadow_pair()
    results = by_metric(g.shadow_checks(shadow_cfg, window(champion, challenger), final=True))
    assert set(results) == {
        "requests",
        "error_rate",
        "decision_disagreement",
        "mean_abs_delta",
        "p99_latency_ms",
    }
    assert {r["status"] for r in results.values()} == {PASSED}
    # Paired by request id, not by position: the shuffled challenger agrees everywhere.
    assert results["decision_disagreement"]["value"] == 0
    assert results["mean_abs_delta"]["value"] == 0
    assert results["requests"]["value"] == 600
    assert results["p99_latency_ms"]["value"] == pytest.approx(2.0)
    assert g.breached(list(results.values())) == []


def test_shadow_disagreeing_challenger_fails(shadow_cfg):
    champion, challenger = shadow_pair()
    n = challenger.rows
    flip = np.zeros(n, dtype=bool)
    flip[np.random.default_rng(23).choice(n, size=int(0.3 * n), replace=False)] = True  # seed 23
    challenger.decision = np.where(flip, 1 - challenger.decision, challenger.decision)
    results = g.shadow_checks(shadow_cfg, window(champion, challenger), final=True)
    checks = by_metric(results)
    assert checks["decision_disagreement"]["status"] == FAILED
    assert checks["decision_disagreement"]["value"] == pytest.approx(0.3)
    assert checks["mean_abs_delta"]["status"] == PASSED  # same probabilities, only decisions differ
    assert [r["metric"] for r in g.breached(results)] == ["decision_disagreement"]


def test_shadow_probability_delta_fails(shadow_cfg):
    champion, challenger = shadow_pair()
    challenger.probability = np.clip(challenger.probability + 0.1, 0, 1)
    checks = by_metric(g.shadow_checks(shadow_cfg, window(champion, challenger), final=True))
    assert checks["mean_abs_delta"]["status"] == FAILED
    assert checks["mean_abs_delta"]["value"] > shadow_cfg.max_mean_abs_delta


def test_shadow_failures_fail_the_error_rate(shadow_cfg):
    assert shadow_cfg.max_error_rate == 0
    champion, challenger = shadow_pair()
    challenger.failures = 3
    results = g.shadow_checks(shadow_cfg, window(champion, challenger), final=False)
    checks = by_metric(results)
    assert checks["error_rate"]["status"] == FAILED
    assert checks["error_rate"]["value"] == pytest.approx(3 / 603, abs=1e-6)
    assert [r["metric"] for r in g.breached(results)] == ["error_rate"]


def test_shadow_p99_latency_breach(shadow_cfg):
    champion, challenger = shadow_pair()
    challenger.latency_ms = np.where(np.arange(challenger.rows) % 20 == 0, 50.0, 1.0)  # 5% slow
    checks = by_metric(g.shadow_checks(shadow_cfg, window(champion, challenger), final=False))
    assert checks["p99_latency_ms"]["status"] == FAILED
    assert checks["p99_latency_ms"]["value"] == pytest.approx(50.0)


def test_shadow_before_the_end_has_no_requests_check(shadow_cfg):
    champion, challenger = shadow_pair(n=20)
    checks = by_metric(g.shadow_checks(shadow_cfg, window(champion, challenger), final=False))
    assert "requests" not in checks
    assert {r["status"] for r in checks.values()} == {PASSED}


def test_shadow_final_with_too_few_requests_fails(shadow_cfg):
    champion, challenger = shadow_pair(n=20)
    challenger.failures = 0
    results = g.shadow_checks(shadow_cfg, window(champion, challenger), final=True)
    checks = by_metric(results)
    assert checks["requests"]["status"] == FAILED
    assert checks["requests"]["value"] == 20
    assert checks["requests"]["threshold"] == shadow_cfg.min_requests
    assert [r["metric"] for r in g.breached(results)] == ["requests"]


def test_shadow_final_with_no_pairs_fails_it_compared_nothing(shadow_cfg):
    champion = make_arm(3, scores(600, seed=24), prefix="a")
    challenger = make_arm(4, scores(600, seed=25), prefix="b")  # no shared request id
    results = g.shadow_checks(shadow_cfg, window(champion, challenger), final=True)
    checks = by_metric(results)
    assert checks["paired_requests"]["status"] == FAILED and checks["paired_requests"]["note"]
    assert "decision_disagreement" not in checks and "mean_abs_delta" not in checks
    assert checks["p99_latency_ms"]["status"] == PASSED  # the challenger's own latency is still judged
    assert [r["metric"] for r in g.breached(results)] == ["paired_requests"]


def test_shadow_empty_window_not_final_judges_nothing(shadow_cfg):
    assert g.shadow_checks(shadow_cfg, window(g.Arm(3), g.Arm(4)), final=False) == []


# -- canary_checks ----------------------------------------------------------------------------------


def canary_pair(
    n_ch: int = 300, n_cp: int = 300, seed: int = 31, *, labelled: int = 0, challenger_noise: float = 0.0
) -> tuple[g.Arm, g.Arm]:
    """Two arms of different customers, both from the same score distribution. The first ``labelled``
    rows of each get labels drawn from the champion-calibrated truth; ``challenger_noise`` > 0 makes
    the challenger's probabilities that much less calibrated."""
    rng = np.random.default_rng(seed)

    def arm(version: int, n: int, prefix: str, noise: float) -> g.Arm:
        truth = rng.beta(2, 5, n)
        label = np.full(n, np.nan)
        label[:labelled] = (rng.random(labelled) < truth[:labelled]).astype(float)
        prob = np.clip(truth + noise * rng.choice([-1.0, 1.0], n), 0, 1) if noise else truth
        return make_arm(version, prob, label=label, prefix=prefix)

    return arm(3, n_cp, "cp", 0.0), arm(4, n_ch, "ch", challenger_noise)


def test_canary_below_min_requests_judges_nothing(guard):
    n = guard.min_requests_per_check - 10
    champion, challenger = canary_pair(n, n)
    # Everything about this challenger is bad, yet nothing may be judged (or passed) yet.
    challenger.failures = 5
    challenger.latency_ms = np.full(challenger.rows, 100.0)
    challenger.probability = np.clip(challenger.probability + 0.5, 0, 1)
    results = g.canary_checks(guard, window(champion, challenger), final=False, min_requests=500)
    assert results == []
    assert g.breached(results) == []


def test_canary_healthy_step_passes_every_rate_check(guard):
    champion, challenger = canary_pair()
    results = g.canary_checks(guard, window(champion, challenger), final=False, min_requests=500)
    checks = by_metric(results)
    assert set(checks) == {"error_rate", "p99_latency_ms", "score_psi"}
    assert {r["status"] for r in results} == {PASSED}
    assert checks["error_rate"]["value"] == 0


def test_canary_error_rate_breach(guard):
    champion, challenger = canary_pair()
    challenger.failures = 10  # 10 of 310 routed, over the 1% guardrail
    results = g.canary_checks(guard, window(champion, challenger), final=False, min_requests=500)
    checks = by_metric(results)
    assert checks["error_rate"]["status"] == FAILED
    assert checks["error_rate"]["value"] == pytest.approx(10 / 310, abs=1e-6)
    assert [r["metric"] for r in g.breached(results)] == ["error_rate"]
    challenger.failures = 1  # 1 of 301: within the guardrail
    checks = by_metric(g.canary_checks(guard, window(champion, challenger), final=False, min_requests=500))
    assert checks["error_rate"]["status"] == PASSED


def test_canary_p99_latency_breach(guard):
    champion, challenger = canary_pair()
    challenger.latency_ms = np.where(np.arange(challenger.rows) % 20 == 0, 20.0, 1.0)  # 5% at 20 ms
    results = g.canary_checks(guard, window(champion, challenger), final=False, min_requests=500)
    checks = by_metric(results)
    assert checks["p99_latency_ms"]["status"] == FAILED
    assert checks["p99_latency_ms"]["value"] == pytest.approx(20.0)
    assert [r["metric"] for r in g.breached(results)] == ["p99_latency_ms"]


def test_canary_psi_breach(guard):
    champion, challenger = canary_pair()
    challenger.probability = np.clip(challenger.probability + 0.2, 0, 1)
    results = g.canary_checks(guard, window(champion, challenger), final=False, min_requests=500)
    checks = by_metric(results)
    assert checks["score_psi"]["status"] == FAILED
    assert checks["score_psi"]["value"] > guard.max_score_psi
    assert [r["metric"] for r in g.breached(results)] == ["score_psi"]


def test_canary_psi_needs_enough_champion_rows_too(guard):
    champion, challenger = canary_pair(n_ch=300, n_cp=guard.min_rows_for_psi - 1)
    running = by_metric(g.canary_checks(guard, window(champion, challenger), final=False, min_requests=300))
    assert "score_psi" not in running
    final = by_metric(g.canary_checks(guard, window(champion, challenger), final=True, min_requests=300))
    assert final["score_psi"]["status"] == NOT_APPLICABLE
    assert f"{champion.rows} champion" in final["score_psi"]["note"]


def test_canary_final_with_too_few_requests_fails(guard):
    champion, challenger = canary_pair(n_ch=120, n_cp=1000)
    results = g.canary_checks(guard, window(champion, challenger), final=True, min_requests=500)
    checks = by_metric(results)
    assert checks["requests"]["status"] == FAILED
    assert checks["requests"]["value"] == 120
    assert [r["metric"] for r in g.breached(results)] == ["requests"]


def test_canary_too_few_labels_is_not_applicable_with_the_counts(guard):
    few = guard.min_labelled_per_variant - 50
    champion, challenger = canary_pair(600, 600, labelled=few, challenger_noise=0.4)
    metric = f"{guard.loss('binary')}_worse_pvalue"
    running = by_metric(g.canary_checks(guard, window(champion, challenger), final=False, min_requests=500))
    assert metric not in running
    results = g.canary_checks(guard, window(champion, challenger), final=True, min_requests=500)
    checks = by_metric(results)
    assert checks[metric]["status"] == NOT_APPLICABLE
    assert checks[metric]["value"] is None
    assert f"{few} challenger and {few} champion" in checks[metric]["note"]
    assert str(guard.min_labelled_per_variant) in checks[metric]["note"]
    assert metric not in {r["metric"] for r in g.breached(results)}


def test_canary_labels_counted_per_variant(guard):
    # Plenty of labels on the champion, too few on the challenger: still not applicable.
    champion, _ = canary_pair(600, 600, labelled=400)
    _, challenger = canary_pair(600, 600, labelled=guard.min_labelled_per_variant - 1)
    metric = f"{guard.loss('binary')}_worse_pvalue"
    checks = by_metric(g.canary_checks(guard, window(champion, challenger), final=True, min_requests=500))
    assert checks[metric]["status"] == NOT_APPLICABLE
    assert f"{guard.min_labelled_per_variant - 1} challenger and 400 champion" in checks[metric]["note"]


def with_entities(arm: g.Arm, entities: list) -> g.Arm:
    arm.entity = list(entities)
    return arm


def test_canary_repeated_rows_of_one_entity_count_once(guard):
    # 40 customers, each calling 10 times (sticky routing: same variant, score and label each time).
    # As 400 independent rows this challenger would look decisively worse; as 40 customers it is
    # below min_labelled_per_variant, so the test may not judge it.
    champion, challenger = canary_pair(600, 600, seed=36, labelled=400, challenger_noise=0.3)
    repeat = lambda x: np.repeat(x[:40], 10)  # noqa: E731
    challenger.probability = np.concatenate([repeat(challenger.probability), challenger.probability[400:]])
    challenger.label = np.concatenate([repeat(challenger.label), challenger.label[400:]])
    challenger.decision = (challenger.probability >= 0.5).astype(int)
    metric = f"{guard.loss('binary')}_worse_pvalue"
    rowwise = by_metric(g.canary_checks(guard, window(champion, challenger), final=True, min_requests=500))
    assert rowwise[metric]["status"] == FAILED  # without entity keys: every row its own observation
    with_entities(challenger, [f"c{i // 10}" for i in range(400)] + [None] * 200)
    checks = by_metric(g.canary_checks(guard, window(champion, challenger), final=True, min_requests=500))
    assert checks[metric]["status"] == NOT_APPLICABLE
    assert "40 challenger and 400 champion entities" in checks[metric]["note"]
    assert "400 vs 400 rows" in checks[metric]["note"]


def test_entity_losses_average_each_entitys_rows():
    arm = make_arm(4, np.array([0.9, 0.9, 0.2, 0.6]), label=np.array([0.0, 0.0, 0.0, np.nan]))
    with_entities(arm, ["a", "a", None, "b"])
    losses, rows = g.entity_losses(arm, "brier", 0.5)
    assert rows == 3  # the unlabelled row of "b" is not an observation
    assert sorted(losses.tolist()) == pytest.approx([0.04, 0.81])


def test_canary_interim_looks_need_stronger_evidence_than_the_final_look(guard):
    # A challenger worse by a little more than the margin: significant at 95% but not at 99.9%.
    metric = f"{guard.loss('binary')}_worse_pvalue"
    for seed in range(40, 80):
        champion, challenger = canary_pair(600, 600, seed=seed, labelled=400, challenger_noise=0.2)
        final = by_metric(g.canary_checks(guard, window(champion, challenger), final=True, min_requests=500))
        if 1 - guard.interim_confidence < final[metric]["value"] < 1 - guard.confidence:
            break
    else:
        pytest.fail("no seed gave a p-value between the interim and final boundaries")
    assert final[metric]["status"] == FAILED
    assert "final look" in final[metric]["note"]
    interim = by_metric(g.canary_checks(guard, window(champion, challenger), final=False, min_requests=500))
    assert interim[metric]["status"] == PASSED
    assert interim[metric]["threshold"] == pytest.approx(1 - guard.interim_confidence)
    assert "interim look" in interim[metric]["note"]


def test_interim_confidence_below_the_final_confidence_is_refused(guard):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="raise interim_confidence"):
        type(guard).model_validate({**guard.model_dump(), "interim_confidence": 0.9})


def test_equal_quality_rarely_rolls_back_over_many_looks(guard):
    # 200 canaries of a challenger exactly as good as the champion, with no margin (the hardest case
    # for a false rollback), each looked at 15 times as its labels accumulate: the share rolled back
    # stays near 1 - confidence, while testing at 95% on every look rolls back far more of them.
    exact = guard.model_copy(update={"max_metric_degradation": 0.0})
    metric = f"{guard.loss('binary')}_worse_pvalue"
    looks = np.linspace(guard.min_labelled_per_variant, 400, 15).astype(int)
    strict = naive = 0
    for seed in range(200):
        champion, challenger = canary_pair(400, 400, seed=1000 + seed, labelled=400)
        for k, n in enumerate(looks):
            part = [
                make_arm(a.version, a.probability[:n], label=a.label[:n], prefix=a.request_id[0][:2])
                for a in (champion, challenger)
            ]
            res = by_metric(g.canary_checks(exact, window(*part), final=k == len(looks) - 1, min_requests=1))
            if res[metric]["status"] == FAILED:
                strict += 1
                break
        for n in looks:
            losses = [
                g.row_loss(guard.loss("binary"), a.probability[:n], a.label[:n])
                for a in (challenger, champion)
            ]
            if g.worse_test(*losses, 0.0)[1] < 1 - guard.confidence:
                naive += 1
                break
    print(f"rolled back: {strict} of 200 with the interim boundary, {naive} of 200 looking at 95% each time")
    assert strict <= 0.09 * 200, strict
    assert naive >= 1.8 * strict, (naive, strict)


def test_canary_worse_challenger_fails_the_metric(guard):
    champion, challenger = canary_pair(600, 600, seed=32, labelled=400, challenger_noise=0.3)
    metric = f"{guard.loss('binary')}_worse_pvalue"
    results = g.canary_checks(guard, window(champion, challenger), final=False, min_requests=500)
    checks = by_metric(results)
    assert checks[metric]["status"] == FAILED  # clearly worse: stopped at an interim look already
    assert checks[metric]["value"] < 1 - guard.interim_confidence
    assert checks[metric]["threshold"] == pytest.approx(1 - guard.interim_confidence)
    assert "400 vs 400 labelled entities" in checks[metric]["note"]
    assert metric in {r["metric"] for r in g.breached(results)}


def test_canary_equal_quality_passes_the_metric(guard):
    champion, challenger = canary_pair(600, 600, seed=33, labelled=400)
    metric = f"{guard.loss('binary')}_worse_pvalue"
    results = g.canary_checks(guard, window(champion, challenger), final=True, min_requests=500)
    checks = by_metric(results)
    assert checks[metric]["status"] == PASSED
    assert checks[metric]["value"] >= 1 - guard.confidence
    assert {r["status"] for r in results} == {PASSED}


@pytest.mark.parametrize("metric", ["log_loss", "error_rate"])
def test_canary_other_metrics_flag_a_worse_challenger(guard, metric):
    variant = guard.model_copy(update={"metric": metric})
    champion, challenger = canary_pair(600, 600, seed=34, labelled=400, challenger_noise=0.45)
    checks = by_metric(g.canary_checks(variant, window(champion, challenger), final=False, min_requests=500))
    assert checks[f"{metric}_worse_pvalue"]["status"] == FAILED


def test_breached_returns_exactly_the_failed_checks(guard):
    champion, challenger = canary_pair(600, 120, seed=35, labelled=100)
    challenger.failures = 30
    challenger.latency_ms = np.where(np.arange(challenger.rows) % 10 == 0, 30.0, 1.0)
    results = g.canary_checks(guard, window(champion, challenger), final=True, min_requests=1000)
    statuses = {r["metric"]: r["status"] for r in results}
    assert statuses == {
        "requests": FAILED,
        "error_rate": FAILED,
        "p99_latency_ms": FAILED,
        "score_psi": PASSED,
        f"{guard.loss('binary')}_worse_pvalue": NOT_APPLICABLE,
    }
    breaches = g.breached(results)
    assert breaches == [r for r in results if r["status"] == FAILED]
    assert {r["metric"] for r in breaches} == {"requests", "error_rate", "p99_latency_ms"}


# -- read_window on a real prediction log -----------------------------------------------------------

PIPELINE = "telco_churn"
T0 = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
SINCE = T0.isoformat(timespec="microseconds")
UNTIL = (T0 + timedelta(minutes=10)).isoformat(timespec="microseconds")


def row(rid, variant, version, served, prob, at, *, pipeline=PIPELINE, latency=1.0) -> PredictionRow:
    return PredictionRow(
        request_id=rid,
        pipeline=pipeline,
        entity_key=f"e-{rid}",
        model_version=version,
        variant=variant,
        served=served,
        inputs={"x": 1},
        probability=prob,
        decision=int(prob >= 0.5),
        latency_ms=latency,
        created_at=at,
    )


def failure(rid, variant, version, served, at, *, pipeline=PIPELINE) -> FailureRow:
    return FailureRow(rid, pipeline, version, variant, served, "ValueError: boom", at)


def record_failures(plog: PredictionLog, failures: list[FailureRow]) -> None:
    """``record`` is async only for failures (``record_sync`` takes no failures): run it on a fresh loop."""
    asyncio.run(plog.record([], failures))


@pytest.fixture(scope="module")
def log_url(tmp_path_factory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('predlog')}/log.db"
    plog = PredictionLog(url)
    plog.start()
    try:
        s = timedelta(seconds=1)
        plog.record_sync(
            [
                # Shadow: each request served by champion v3 and mirrored to challenger v4.
                row("s1", "champion", 3, True, 0.10, T0 + 1 * s, latency=1.1),
                row("s1", "challenger", 4, False, 0.15, T0 + 1 * s, latency=2.1),
                row("s2", "champion", 3, True, 0.60, T0 + 2 * s, latency=1.2),
                row("s2", "challenger", 4, False, 0.55, T0 + 2 * s, latency=2.2),
                row("s3", "champion", 3, True, 0.30, T0 + 3 * s, latency=1.3),
                row("s3", "challenger", 4, False, 0.70, T0 + 3 * s, latency=2.3),
                # Canary: entities routed to the challenger, served.
                row("c1", "challenger", 4, True, 0.80, T0 + 4 * s, latency=3.1),
                row("c2", "challenger", 4, True, 0.20, T0 + 5 * s, latency=3.2),
                # Out of the window: just before since, exactly at until (excluded).
                row("early", "champion", 3, True, 0.5, T0 - timedelta(microseconds=1)),
                row("early", "challenger", 4, False, 0.5, T0 - timedelta(microseconds=1)),
                row("late", "champion", 3, True, 0.5, T0 + timedelta(minutes=10)),
                row("late", "challenger", 4, True, 0.5, T0 + timedelta(minutes=10)),
                # Other versions and pipelines, and an unserved champion row.
                row("v2", "champion", 2, True, 0.5, T0 + 6 * s),
                row("v5", "challenger", 5, False, 0.5, T0 + 6 * s),
                row("v5c", "challenger", 5, True, 0.5, T0 + 6 * s),
                row("unserved", "champion", 3, False, 0.5, T0 + 7 * s),
                row("other", "champion", 3, True, 0.5, T0 + 8 * s, pipeline="other_pipeline"),
                row("other", "challenger", 4, False, 0.5, T0 + 8 * s, pipeline="other_pipeline"),
            ]
        )
        record_failures(
            plog,
            [
                # In the window: two shadow failures, three served (canary) failures of v4.
                failure("fs1", "challenger", 4, False, T0 + 10 * s),
                failure("fs2", "challenger", 4, False, T0 + 11 * s),
                failure("fc1", "challenger", 4, True, T0 + 12 * s),
                failure("fc2", "challenger", 4, True, T0 + 13 * s),
                failure("fc3", "challenger", 4, True, T0 + 14 * s),
                # Not counted: outside the window, another version, the champion, another pipeline.
                failure("fx1", "challenger", 4, False, T0 - s),
                failure("fx2", "challenger", 4, True, T0 + timedelta(minutes=10)),
                failure("fx3", "challenger", 5, False, T0 + 15 * s),
                failure("fx4", "champion", 3, True, T0 + 16 * s),
                failure("fx5", "challenger", 4, False, T0 + 17 * s, pipeline="other_pipeline"),
            ],
        )
        assert plog.feedback("s1", 1) == "recorded"
        assert plog.feedback("s3", 0) == "recorded"
        assert plog.feedback("c1", 1) == "recorded"
        assert plog.feedback("late", 1) == "recorded"
    finally:
        plog.close()
    return url


def test_read_window_shadow_reads_the_unserved_challenger_rows(log_url):
    win = g.read_window(log_url, PIPELINE, 3, 4, SINCE, UNTIL, shadow=True)
    assert (win.since, win.until) == (SINCE, UNTIL)
    assert win.champion.version == 3 and win.challenger.version == 4
    assert win.champion.request_id == ["s1", "s2", "s3"]
    assert win.challenger.request_id == ["s1", "s2", "s3"]
    assert win.challenger.entity == ["e-s1", "e-s2", "e-s3"]  # the hashed key, for one loss per entity
    np.testing.assert_allclose(win.champion.probability, [0.10, 0.60, 0.30])
    np.testing.assert_allclose(win.challenger.probability, [0.15, 0.55, 0.70])
    np.testing.assert_array_equal(win.challenger.decision, [0, 1, 1])
    np.testing.assert_allclose(win.challenger.latency_ms, [2.1, 2.2, 2.3])
    assert win.champion.failures == 0
    assert win.challenger.failures == 2
    assert win.challenger.routed == 5
    # Labels joined by request id: both arms of a shadow pair share the label; NaN where none yet.
    np.testing.assert_array_equal(win.champion.label, [1.0, np.nan, 0.0])
    np.testing.assert_array_equal(win.challenger.label, [1.0, np.nan, 0.0])
    assert win.summary()["challenger"] == {"version": 4, "rows": 3, "failures": 2}


def test_read_window_canary_reads_the_served_rows(log_url):
    win = g.read_window(log_url, PIPELINE, 3, 4, SINCE, UNTIL, shadow=False)
    assert win.champion.request_id == ["s1", "s2", "s3"]
    assert win.challenger.request_id == ["c1", "c2"]
    np.testing.assert_allclose(win.challenger.probability, [0.80, 0.20])
    np.testing.assert_array_equal(win.challenger.decision, [1, 0])
    np.testing.assert_allclose(win.challenger.latency_ms, [3.1, 3.2])
    np.testing.assert_array_equal(win.challenger.label, [1.0, np.nan])
    assert win.challenger.failures == 3
    assert win.challenger.routed == 5


def test_read_window_respects_since_and_until(log_url):
    # A window that starts after s1 and ends at s3 (exclusive): only s2.
    since = (T0 + timedelta(seconds=2)).isoformat(timespec="microseconds")
    until = (T0 + timedelta(seconds=3)).isoformat(timespec="microseconds")
    win = g.read_window(log_url, PIPELINE, 3, 4, since, until, shadow=True)
    assert win.champion.request_id == ["s2"] and win.challenger.request_id == ["s2"]
    assert win.challenger.failures == 0
    # Widened to include the boundary rows: "early" and "late" (and their failures) come in.
    wide = g.read_window(
        log_url,
        PIPELINE,
        3,
        4,
        (T0 - timedelta(seconds=5)).isoformat(timespec="microseconds"),
        (T0 + timedelta(minutes=11)).isoformat(timespec="microseconds"),
        shadow=False,
    )
    assert wide.champion.request_id == ["early", "s1", "s2", "s3", "late"]
    assert wide.challenger.request_id == ["c1", "c2", "late"]
    np.testing.assert_array_equal(wide.challenger.label, [1.0, np.nan, 1.0])
    assert wide.challenger.failures == 4


def test_read_window_selects_the_versions(log_url):
    win = g.read_window(log_url, PIPELINE, 2, 5, SINCE, UNTIL, shadow=True)
    assert win.champion.request_id == ["v2"]
    assert win.challenger.request_id == ["v5"]
    assert win.challenger.failures == 1
    served = g.read_window(log_url, PIPELINE, 2, 5, SINCE, UNTIL, shadow=False)
    assert served.challenger.request_id == ["v5c"]
    assert served.challenger.failures == 0


def test_read_window_of_an_empty_window_is_empty(log_url):
    win = g.read_window(log_url, "no_such_pipeline", 3, 4, SINCE, UNTIL, shadow=True)
    assert win.champion.rows == win.challenger.rows == win.challenger.routed == 0
    # decisions are numbers of every task: 0/1, a class index, a regression's amount
    assert win.champion.probability.dtype == float and win.champion.decision.dtype == float


def test_psi_default_sample_size_keeps_sampling_noise_below_the_guardrail(rollout):
    """Two samples of one score distribution at the default minimum size: no false rollback in 200
    draws (at 50 rows a side, most draws would breach: that is why the minimum exists)."""
    g_default = rollout.canary.guardrails
    rng = np.random.default_rng(7)
    n = g_default.min_rows_for_psi
    noise = [g.psi(rng.beta(2, 5, n), rng.beta(2, 5, n)) for _ in range(200)]
    assert max(noise) < g_default.max_score_psi
    small = [g.psi(rng.beta(2, 5, 50), rng.beta(2, 5, 50)) for _ in range(200)]
    assert np.mean(np.array(small) > g_default.max_score_psi) > 0.5


def test_counts_read_as_integers_and_measures_keep_their_decimals():
    from include.tasks.gates import describe

    def line(metric, value):
        r = {"status": "passed", "gate": "canary", "metric": metric, "value": value}
        return describe({**r, "comparison": ">=", "threshold": 60})

    assert line("requests", 71.0) == "canary: requests = 71, required >= 60"
    assert line("challenger_rows", 351) == "canary: challenger_rows = 351, required >= 60"
    assert line("error_rate", 0.0) == "canary: error_rate = 0.0000, required >= 60"
    assert line("score_psi", 0.0702) == "canary: score_psi = 0.0702, required >= 60"


def test_a_pass_worse_than_the_margin_but_not_significantly_says_so(guard):
    """A challenger whose estimate is past the margin, on too few labels to be sure, passes (the
    evidence does not prove it worse), but the approver reads that it is not a clean pass."""
    from include.tasks.gates import describe

    metric = f"{guard.loss('binary')}_worse_pvalue"
    champion, challenger = canary_pair(260, 260, seed=31, labelled=210, challenger_noise=0.15)
    unsure = by_metric(g.canary_checks(guard, window(champion, challenger), final=True, min_requests=200))
    assert unsure[metric]["status"] == PASSED and unsure[metric]["value"] > 0.05
    assert "worse than the margin" in unsure[metric]["warning"] and "not significantly" in describe(
        unsure[metric]
    )
    champion, challenger = canary_pair(260, 260, seed=34, labelled=210)  # as calibrated: a clean pass
    clean = by_metric(g.canary_checks(guard, window(champion, challenger), final=True, min_requests=200))
    assert clean[metric]["status"] == PASSED and "warning" not in clean[metric]
