"""What a task kind means for a fitted model: its scores, its decision rule, and the decisions it takes.

One owner for every stage (evaluation, gates, serving checks, rollout, monitoring):

* **binary**: the score is the probability of the positive class (1-D); the decision is 1 when the
  score reaches the rule's ``threshold``.
* **multiclass**: the scores are the probabilities of ``target.classes`` in the spec's order
  (n x k); the decision is the class index with the highest expected value under the rule's
  ``value_matrix`` (``value_matrix[truth][decision]``), the most probable class without one.
* **regression**: the score is the predicted number (1-D); the decision is the prediction plus the
  rule's ``offset`` (the cost-optimal shift when over- and under-prediction cost differently).

A rule is a small JSON-able dict: it travels through XCom, the registry tag ``slipway.decision``
and the service exactly as written here. Labels are :func:`include.frames.labels`: 0/1, the class
index, or the number.
"""

from __future__ import annotations

import json
from typing import Any

from include.spec import PipelineSpec

DECISION_TAG = "slipway.decision"


def scores(model, X, spec: PipelineSpec):
    """The model's scores for ``X`` under the spec's task (see the module docstring)."""
    import numpy as np

    if spec.task == "regression":
        return np.asarray(model.predict(X), dtype="float64").reshape(-1)
    proba = np.asarray(model.predict_proba(X), dtype="float64")
    if spec.task == "binary":
        return proba[:, 1]
    k = len(spec.target.classes or [])
    classes = [int(c) for c in model.classes_]
    if classes == list(range(k)):
        return proba
    out = np.zeros((proba.shape[0], k))  # a class the model never saw has probability 0
    out[:, classes] = proba
    return out


def value_matrix(spec: PipelineSpec):
    """``business.value_matrix`` as a k x k array in the order of ``target.classes`` (None without one)."""
    import numpy as np

    named = spec.business.value_matrix
    if not named:
        return None
    classes = list(spec.target.classes or [])
    m = np.zeros((len(classes), len(classes)))
    for truth, row in named.items():
        for decided, value in row.items():
            m[classes.index(truth), classes.index(decided)] = value
    return m


def default_rule(spec: PipelineSpec) -> dict:
    """The rule before any tuning: threshold 0.5, the value matrix as declared, no offset."""
    if spec.task == "binary":
        return {"threshold": 0.5}
    if spec.task == "multiclass":
        m = value_matrix(spec)
        return {"value_matrix": m.tolist() if m is not None else None}
    return {"offset": 0.0}


def decide(spec: PipelineSpec, s, rule: dict):
    """Decisions for scores ``s`` under ``rule``: 0/1, a class index, or an amount."""
    return decide_task(spec.task, s, rule)


def decide_task(task: str, s, rule: dict):
    """The one decision rule of every task, spec-free (a loaded version knows its task and rule):
    binary 1 at or above the threshold; multiclass the class of highest expected value under
    ``value_matrix`` (the most probable without one); regression the prediction plus ``offset``."""
    import numpy as np

    if task == "binary":
        return (np.asarray(s) >= float(rule["threshold"])).astype("int64")
    if task == "multiclass":
        p = np.asarray(s, dtype="float64")
        m = rule.get("value_matrix")
        expected = p if m is None else p @ np.asarray(m, dtype="float64")
        return expected.argmax(axis=1).astype("int64")
    return np.asarray(s, dtype="float64") + float(rule.get("offset", 0.0))


def describe_rule(spec: PipelineSpec, rule: dict, unit: str = "") -> str:
    """The rule for a person: ``threshold 0.34``, ``the class of highest expected value``, ``+2.10``."""
    if spec.task == "binary":
        return f"threshold {float(rule['threshold']):.2f}"
    if spec.task == "multiclass":
        if rule.get("value_matrix") is None:
            return "the most probable class"
        return "the class of highest expected value (business.value_matrix)"
    offset = float(rule.get("offset", 0.0))
    if offset == 0:
        return "the prediction as it is"
    return f"the prediction {offset:+.4g}{(' ' + unit) if unit else ''} (cost-optimal shift)"


def rule_json(rule: dict) -> str:
    """The rule as the registry keeps it (tag ``slipway.decision``)."""
    return json.dumps(rule, sort_keys=True, separators=(",", ":"))


def rule_from_tags(spec: PipelineSpec, tags: dict[str, Any]) -> dict:
    """The rule a registered version was blessed with (versions from before ``slipway.decision``
    existed are binary and carry ``slipway.decision_threshold``)."""
    raw = tags.get(DECISION_TAG)
    if raw:
        return json.loads(raw)
    if spec.task == "binary":
        return {"threshold": float(tags.get("slipway.decision_threshold", 0.5))}
    return default_rule(spec)
