"""Business alignment: the decision threshold that maximises expected value, and its gate.

The spec's cost/benefit says what acting on a positive prediction is worth. For churn: a
retention offer costs ``cost_of_action``; a churner who receives one stays with probability
``offer_acceptance_rate`` and is then worth ``value_of_true_positive``. Per customer acted on:

* true positive:  ``offer_acceptance_rate * value_of_true_positive - cost_of_action``
* false positive: ``-cost_of_action``
* not acted on:   0

The threshold is chosen on the validation split (never on the test split that reports it), and
the value is reported per 1,000 customers next to the ML metrics.
"""

from __future__ import annotations

from include.spec import Business, BusinessGate
from include.tasks.gates import check, not_applicable


def value_per_1000(y_true, proba, threshold: float, business: Business) -> float:
    """Expected value of acting on predictions at ``threshold``, per 1,000 customers."""
    import numpy as np

    y = np.asarray(y_true).astype(int)
    act = np.asarray(proba) >= threshold
    gain = business.offer_acceptance_rate * business.value_of_true_positive - business.cost_of_action
    total = gain * np.sum(act & (y == 1)) - business.cost_of_action * np.sum(act & (y == 0))
    return float(1000.0 * total / max(len(y), 1))


def has_value_model(business: Business) -> bool:
    """False when the spec declares no costs or benefits (every threshold is then worth 0)."""
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
