"""Feature-attribution drift: does the champion still decide on the features it was trained to rely on?

A bounded, seeded sample of the interval's served rows is explained with the training gate's
explainer (:func:`include.attributions.explain_pipeline` on the version's scikit-learn Pipeline,
against a background of its training rows) and aggregated per original column as the gate does
(mean |SHAP|, one-hot columns summed; multiclass: classes summed). The live ranking is compared
with the version's training ranking (the explainability gate's ``global_importance``) by Spearman's
rank correlation over the union of both rankings' ``top_k`` features (each feature with its value in
both rankings, 0 where it has none), as in SageMaker Clarify's attribution drift. A feature that
leaves the top, or one that enters it from nowhere, pulls the correlation down; below
``min_rank_correlation`` breaches.

Feature drift (PSI) and attribution drift differ: a feature can keep its distribution while its
values stop varying where the model is sensitive, and a drifted feature the model ignores moves
no attribution.
"""

from __future__ import annotations

import math

from include.tasks.gates import check, not_applicable

GATE = "attribution"
METRIC = "rank_correlation"


def live_importance(model, background, sample, classes: list[str] | None = None) -> dict[str, float]:
    """Global importance per original column of ``model`` on ``sample``: the training gate's
    explainer and aggregation (:func:`include.attributions.aggregate_importance`)."""
    from include.attributions import aggregate_importance, explain_pipeline

    explained = explain_pipeline(model, background, sample, seed=0)
    by_class = explained.get("values_by_class")
    if by_class is None:
        return aggregate_importance(explained["values"], explained["features"])[1]
    summed: dict[str, float] = {}
    for i in range(by_class.shape[2]):
        for col, v in aggregate_importance(by_class[:, :, i], explained["features"])[1].items():
            summed[col] = summed.get(col, 0.0) + v
    return dict(sorted(summed.items(), key=lambda kv: (-kv[1], kv[0])))


def _top(importance: dict[str, float], k: int) -> list[str]:
    return [f for f, v in sorted(importance.items(), key=lambda kv: (-kv[1], kv[0])) if v > 0][:k]


def rank_correlation(
    training: dict[str, float], live: dict[str, float], top_k: int
) -> tuple[float, list[str]]:
    """Spearman's correlation of the two importances over the union of their ``top_k`` features."""
    from scipy.stats import spearmanr

    features = list(dict.fromkeys([*_top(training, top_k), *_top(live, top_k)]))
    if len(features) < 2:
        return math.nan, features
    x = [training.get(f, 0.0) for f in features]
    y = [live.get(f, 0.0) for f in features]
    if len(set(y)) < 2:  # every live attribution equal (e.g. all zero): no ranking is left at all
        return -1.0, features
    rho = float(spearmanr(x, y).statistic)
    return rho, features


def attribution_checks(
    cfg, training: dict[str, float] | None, live: dict[str, float] | None, rows: int
) -> list[dict]:
    """One gate-shaped result: the rank correlation against ``cfg.min_rank_correlation``, or
    ``not_applicable`` with the reason (disabled, too few rows, no training importance on record)."""
    if not cfg.enabled:
        return [not_applicable(GATE, METRIC, "monitoring.attribution.enabled is false")]
    if rows < cfg.min_rows:
        return [
            not_applicable(
                GATE,
                METRIC,
                f"{rows} served rows in the interval; attribution drift is judged from {cfg.min_rows}",
            )
        ]
    if not training:
        return [
            not_applicable(
                GATE,
                METRIC,
                "the version has no SHAP importance on record (its explainability gate was disabled at "
                "training): nothing to compare the live attributions with",
            )
        ]
    if live is None:
        raise ValueError("attribution_checks needs the live importance when the interval is judged")
    rho, features = rank_correlation(training, live, cfg.top_k)
    train_top, live_top = _top(training, cfg.top_k), _top(live, cfg.top_k)
    note = f"training top {cfg.top_k}: {train_top}; live top {cfg.top_k}: {live_top}"
    lost = [f for f in train_top if f not in live_top]
    if lost:
        note += f"; left the top: {lost}"
    return [check(GATE, METRIC, None if math.isnan(rho) else rho, cfg.min_rank_correlation, ">=", note=note)]


def sample_frame(sample: list[dict], spec):
    """The served rows' inputs as the model's input frame (:func:`include.frames.feature_frame`)."""
    import pandas as pd

    from include.frames import feature_frame

    return feature_frame(pd.DataFrame(sample, columns=list(spec.features.all)), spec)
