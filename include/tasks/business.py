"""Business alignment: the decision that maximises expected value, by task, and its gate.

The spec's ``business`` section says what a decision is worth (see :class:`include.spec.Business`):

* binary: for churn, a retention offer costs ``cost_of_action``; a churner who receives one stays
  with probability ``offer_acceptance_rate`` and is then worth ``value_of_true_positive``. Per
  customer acted on: true positive ``rate x value - cost``, false positive ``-cost``; not acted on 0.
  The threshold with the highest value on the validation split is chosen.
* multiclass: deciding class *j* when the truth is *i* is worth ``value_matrix[i][j]``. The decision
  maximises expected value over the predicted probabilities (nothing to tune: the matrix is the rule).
* regression: each unit of over-prediction costs ``cost_per_unit_over``, each unit of
  under-prediction ``cost_per_unit_under``. The expected cost is lowest at the
  ``under / (under + over)`` quantile of the outcome, so the decision is the prediction shifted by
  that quantile of the validation residuals. Value is the negative cost.

Rules are chosen on the validation split (never on the test split that reports them), and the value
is reported per 1,000 rows next to the ML metrics.
"""

from __future__ import annotations

from include.spec import Business, BusinessGate, PipelineSpec
from include.tasks.gates import check, not_applicable


def value_per_1000(y_true, proba, threshold: float, business: Business) -> float:
    """Binary: expected value of acting on predictions at ``threshold``, per 1,000 customers."""
    import numpy as np

    y = np.asarray(y_true).astype(int)
    act = np.asarray(proba) >= threshold
    gain = business.offer_acceptance_rate * business.value_of_true_positive - business.cost_of_action
    total = gain * np.sum(act & (y == 1)) - business.cost_of_action * np.sum(act & (y == 0))
    return float(1000.0 * total / max(len(y), 1))


def decision_value_per_1000(spec: PipelineSpec, y_true, s, rule: dict) -> float:
    """Expected value per 1,000 rows of the decisions ``rule`` takes on scores ``s``, for any task."""
    import numpy as np

    from include.problem import decide, value_matrix

    if spec.task == "binary":
        return value_per_1000(y_true, s, float(rule["threshold"]), spec.business)
    y = np.asarray(y_true)
    if not len(y):
        return 0.0
    decided = decide(spec, s, rule)
    if spec.task == "multiclass":
        m = value_matrix(spec)
        if m is None:
            return 0.0
        return float(1000.0 * m[y.astype(int), decided].mean())
    b = spec.business
    error = decided - y.astype("float64")
    cost = b.cost_per_unit_over * np.clip(error, 0, None) + b.cost_per_unit_under * np.clip(-error, 0, None)
    return float(-1000.0 * cost.mean())


def has_value_model(business: Business) -> bool:
    """Binary: False when the spec declares no costs or benefits (every threshold is then worth 0)."""
    return business.value_of_true_positive > 0 or business.cost_of_action > 0


def choose_threshold(y_val, proba_val, business: Business) -> dict:
    """The threshold (grid 0.01..0.99) with the highest expected value on validation data.

    Ties go to the threshold closest to 0.5; without a value model the threshold is 0.5.
    """
    import numpy as np

    grid = [round(float(t), 2) for t in np.linspace(0.01, 0.99, 99)]
    if not has_value_model(business) or len(y_val) == 0:
        return {"threshold": 0.5, "value_per_1000": 0.0, "curve": [], "reason": "no cost/benefit in the spec"}
    curve = [(t, value_per_1000(y_val, proba_val, t, business)) for t in grid]
    best = max(v for _, v in curve)
    threshold = min((t for t, v in curve if v == best), key=lambda t: abs(t - 0.5))
    return {
        "threshold": threshold,
        "value_per_1000": best,
        "curve": [{"threshold": t, "value_per_1000": round(v, 2)} for t, v in curve],
        "reason": "maximises expected value on the validation split",
    }


def choose_rule(spec: PipelineSpec, y_val, s_val) -> dict:
    """The decision rule, chosen on the validation split: ``{rule, value_per_1000, curve, reason}``."""
    import numpy as np

    from include.problem import default_rule
    from include.spec import has_value_model as declares_value

    if spec.task == "binary":
        chosen = choose_threshold(y_val, s_val, spec.business)
        return {**chosen, "rule": {"threshold": chosen["threshold"]}}
    rule = default_rule(spec)
    if not declares_value(spec):
        return {"rule": rule, "value_per_1000": 0.0, "curve": [], "reason": "no cost/benefit in the spec"}
    if spec.task == "multiclass" or not len(y_val):
        reason = (
            "the class of highest expected value under business.value_matrix"
            if spec.task == "multiclass"
            else "no validation split: the prediction as it is"
        )
        value = decision_value_per_1000(spec, y_val, s_val, rule) if len(y_val) else 0.0
        return {"rule": rule, "value_per_1000": value, "curve": [], "reason": reason}
    b = spec.business
    q = b.cost_per_unit_under / (b.cost_per_unit_under + b.cost_per_unit_over)
    residual = np.asarray(y_val, dtype="float64") - np.asarray(s_val, dtype="float64")
    rule = {"offset": round(float(np.quantile(residual, q)), 6)}
    curve = []
    for level in (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95):
        offset = float(np.quantile(residual, level))
        v = decision_value_per_1000(spec, y_val, s_val, {"offset": offset})
        curve.append({"quantile": level, "offset": round(offset, 4), "value_per_1000": round(v, 2)})
    return {
        "rule": rule,
        "value_per_1000": decision_value_per_1000(spec, y_val, s_val, rule),
        "curve": curve,
        "reason": f"the {q:.0%} quantile of the validation residuals: lowest expected cost of over- and "
        "under-prediction",
    }


def business_gate(
    candidate_value: float, champion_value: float | None, gate: BusinessGate, evidence_uri: str | None = None
) -> list[dict]:
    """Floor on value per 1,000 customers, and the largest drop allowed against the champion."""
    if gate.not_applicable_because:  # the spec says why (e.g. no value model for this use case)
        return [not_applicable("business", "value_per_1000", gate.not_applicable_because, evidence_uri)]
    results = []
    if gate.min_value_per_1000 is not None:
        results.append(
            check("business", "value_per_1000", candidate_value, gate.min_value_per_1000, ">=", evidence_uri)
        )
    if champion_value is None:
        results.append(
            not_applicable(
                "business",
                "value_vs_champion_per_1000",
                "no champion yet: nothing to compare against",
                evidence_uri,
            )
        )
    else:
        results.append(
            check(
                "business",
                "value_vs_champion_per_1000",
                candidate_value - champion_value,
                -gate.max_drop_vs_champion_per_1000,
                ">=",
                evidence_uri,
            )
        )
    return results
