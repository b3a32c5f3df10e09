"""Robustness: how often small, realistic changes to numeric inputs flip the decision.

Each perturbation in the spec (``tenure`` +/- 1 month, ``monthly_charges`` +/- 5 %, ...) is applied
one feature at a time, in both directions, to every test row; a row *flips* when any of these
changes moves its prediction across the decision threshold. The gate bounds the flip rate.

The Adversarial Robustness Toolbox was considered and not used: its evasion attacks search
norm-bounded perturbations of a numeric array, while these models take a DataFrame with string
categoricals through a ColumnTransformer (an attack would produce invalid one-hot vectors), and
the question asked here is about plausible data changes, not a worst-case adversary.
"""

from __future__ import annotations

from include.frames import feature_frame, read_parquet
from include.model_files import read_model
from include.spec import PipelineSpec, RobustnessGate
from include.tasks.gates import check, not_applicable


def perturbed(X, feature: str, kind: str, delta: float, sign: int):
    """A copy of ``X`` with one numeric feature moved by ``sign * delta`` (absolute or relative), floored at 0."""
    out = X.copy()
    col = out[feature]
    moved = col + sign * delta if kind == "absolute" else col * (1 + sign * delta)
    out[feature] = moved.clip(lower=0) if (col.dropna() >= 0).all() else moved
    return out


def flip_rates(model, spec: PipelineSpec, X, threshold: float) -> dict:
    """Overall and per-feature flip rates under the spec's perturbations."""
    import numpy as np

    base = model.predict_proba(X)[:, 1] >= threshold
    any_flip = np.zeros(len(X), dtype=bool)
    per_feature = {}
    for feature, p in spec.gates.robustness.perturbations.items():
        flips = np.zeros(len(X), dtype=bool)
        for sign in (-1, 1):
            pred = model.predict_proba(perturbed(X, feature, p.kind, p.delta, sign))[:, 1] >= threshold
            flips |= pred != base
        per_feature[feature] = float(flips.mean()) if len(X) else 0.0
        any_flip |= flips
    return {
        "flip_rate": float(any_flip.mean()) if len(X) else 0.0,
        "per_feature": per_feature,
        "rows": len(X),
    }


def check_robustness(spec: PipelineSpec, model_uri: str, test_uri: str, threshold: float) -> dict:
    """Flip rates on the test split at the decision threshold."""
    X = feature_frame(read_parquet(test_uri), spec)
    return {**flip_rates(read_model(model_uri), spec, X, threshold), "threshold": threshold}


def robustness_gate(result: dict, gate: RobustnessGate, evidence_uri: str | None = None) -> list[dict]:
    """The flip rate must stay under the spec's ceiling; not applicable without perturbations (with the reason)."""
    if not gate.perturbations:
        reason = gate.not_applicable_because or "no perturbations declared in the spec"
        return [not_applicable("robustness", "flip_rate", reason, evidence_uri)]
    return [check("robustness", "flip_rate", result["flip_rate"], gate.max_flip_rate, "<=", evidence_uri)]
