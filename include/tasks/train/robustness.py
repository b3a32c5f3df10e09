"""Robustness: how often small, realistic changes to numeric inputs flip the decision.

Each perturbation in the spec (``tenure`` +/- 1 month, ``monthly_charges`` +/- 5 %, ...) is applied
one feature at a time, in both directions, to every test row; a row *flips* when any of these
changes moves its prediction across the decision threshold (binary), changes its decided class
(multiclass), or moves its predicted number by more than ``gates.robustness.tolerance``
(regression). The gate bounds the share of rows that flip.

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


def _moved(spec: PipelineSpec, base, now):
    """Rows whose decision changed (a class, or 0/1), or whose prediction moved past the tolerance."""
    import numpy as np

    if spec.task != "regression":
        return now != base
    tol = spec.gates.robustness.tolerance
    if tol is None:  # a spec file cannot get here (the spec requires a tolerance for a regression)
        raise ValueError(
            f"spec {spec.name}.yaml: gates.robustness.tolerance is required for a regression: how far a "
            "prediction may move (absolute, in target units, or relative)"
        )
    allowed = tol.delta if tol.kind == "absolute" else tol.delta * np.abs(base)
    return np.abs(now - base) > allowed


def flip_rates(model, spec: PipelineSpec, X, rule: dict) -> dict:
    """Overall and per-feature flip rates under the spec's perturbations.

    A classifier's row flips when its decision under ``rule`` changes; a regression's when its
    prediction moves by more than ``gates.robustness.tolerance``."""
    import numpy as np

    from include.problem import decide, scores

    def outcome(frame):
        s = scores(model, frame, spec)
        return s if spec.task == "regression" else decide(spec, s, rule)

    base = outcome(X)
    any_flip = np.zeros(len(X), dtype=bool)
    per_feature = {}
    for feature, p in spec.gates.robustness.perturbations.items():
        flips = np.zeros(len(X), dtype=bool)
        for sign in (-1, 1):
            flips |= _moved(spec, base, outcome(perturbed(X, feature, p.kind, p.delta, sign)))
        per_feature[feature] = float(flips.mean()) if len(X) else 0.0
        any_flip |= flips
    return {
        "flip_rate": float(any_flip.mean()) if len(X) else 0.0,
        "per_feature": per_feature,
        "rows": len(X),
    }


def check_robustness(spec: PipelineSpec, model_uri: str, test_uri: str, rule: dict) -> dict:
    """Flip rates on the test split under the decision rule (``threshold`` kept for a binary task)."""
    X = feature_frame(read_parquet(test_uri), spec)
    out = {**flip_rates(read_model(model_uri), spec, X, rule), "rule": rule}
    if spec.task == "binary":
        out["threshold"] = rule["threshold"]
    if spec.task == "regression" and spec.gates.robustness.tolerance is not None:
        out["tolerance"] = spec.gates.robustness.tolerance.model_dump()
    return out


def robustness_gate(result: dict, gate: RobustnessGate, evidence_uri: str | None = None) -> list[dict]:
    """The flip rate must stay under the spec's ceiling; not applicable without perturbations (with the reason)."""
    if not gate.perturbations:
        reason = gate.not_applicable_because or "no perturbations declared in the spec"
        return [not_applicable("robustness", "flip_rate", reason, evidence_uri)]
    return [check("robustness", "flip_rate", result["flip_rate"], gate.max_flip_rate, "<=", evidence_uri)]
