"""The explainability gate: SHAP importance of the candidate on the test split, its plots, and the
rank checks of forbidden features plus one proxy check per sensitive attribute.

The background is a sample of the train split and the explained rows a sample of the test split,
both of at most ``gates.explainability.sample_size`` rows drawn with ``split.random_state``
(see :mod:`include.attributions` for the explainer and :mod:`include.tasks.train.proxy_probe` for the
proxy check).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from include.attributions import ExplainError, aggregate_importance, explain_pipeline
from include.frames import feature_frame, read_parquet
from include.model_files import read_model
from include.problem import scores
from include.spec import ExplainabilityGate, PipelineSpec
from include.tasks.gates import check, not_applicable
from include.tasks.train.proxy_probe import proxy_probe

IMPORTANCE_FILE = "shap_importance.json"
SUMMARY_PLOT = "shap_summary.png"
IMPORTANCE_PLOT = "shap_importance.png"
_LOCAL_TOP = 5


def _plain(value):
    import math

    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _local(explained: dict, sample, proba) -> list[dict]:
    """Up to five rows (two highest-risk, the median, two lowest-risk) with their top contributions per original column."""
    import numpy as np

    order = np.argsort(-proba, kind="stable")
    picks = list(dict.fromkeys([*order[:2], order[len(order) // 2], *order[-2:]]))[:5]
    columns = list(dict.fromkeys(col for _, col in explained["features"]))
    out = []
    for i in picks:
        per_col: dict[str, float] = dict.fromkeys(columns, 0.0)
        for (_, col), v in zip(explained["features"], explained["values"][i], strict=True):
            per_col[col] += float(v)
        top = sorted(per_col.items(), key=lambda kv: (-abs(kv[1]), kv[0]))[:_LOCAL_TOP]
        base = float(explained["base_values"][i])
        out.append(
            {
                "row": int(sample.index[i]),
                "base_value": round(base, 6),
                "output_value": round(base + float(explained["values"][i].sum()), 6),
                "prediction": round(float(proba[i]), 6),
                "top_contributions": [
                    {"feature": col, "value": _plain(sample.iloc[i][col]), "shap": round(v, 6)}
                    for col, v in top
                ],
            }
        )
    return out


def _plots(explained: dict, global_importance: dict, out: Path, seed: int = 0) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")  # tasks run headless; never open a window
    import matplotlib.pyplot as plt
    import numpy as np
    import shap

    summary, bars = out / SUMMARY_PLOT, out / IMPORTANCE_PLOT
    explanation = shap.Explanation(
        values=explained["values"],
        base_values=explained["base_values"],
        data=explained["data"],
        feature_names=[name for name, _ in explained["features"]],
    )
    plt.figure()
    # shap 0.51's beeswarm jitters the dots with numpy's global RNG and takes no rng argument:
    # seed it for the plot only (same bytes on a re-run) and hand the caller's state back.
    rng_state = np.random.get_state()
    np.random.seed(seed)
    try:
        shap.plots.beeswarm(explanation, max_display=15, show=False)
        fig = plt.gcf()
        fig.tight_layout()
        fig.savefig(summary, dpi=100)
    finally:
        np.random.set_state(rng_state)
        plt.close("all")

    items = list(global_importance.items())[:20][::-1]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(items) + 1.5))
    try:
        ax.barh([k for k, _ in items], [v for _, v in items], color="#1f77b4")
        unit = {"log_odds": "log-odds", "probability": "probability", "prediction": "target units"}.get(
            explained["output"], "output"
        )
        summed = " and classes" if explained.get("values_by_class") is not None else ""
        ax.set_xlabel(f"mean |SHAP value| ({unit}), one-hot columns{summed} summed")
        ax.set_title("Global importance per input column")
        fig.tight_layout()
        fig.savefig(bars, dpi=100)
    finally:
        plt.close(fig)
    return [summary, bars]


def _sample(df, n: int, seed: int):
    return df.sample(n=min(n, len(df)), random_state=seed) if len(df) > n else df


def explain_model(
    spec: PipelineSpec, model_uri: str, train_uri: str, test_uri: str, out_dir: str | Path
) -> dict:
    """SHAP explanation of the model at ``model_uri`` and its proxy probe; writes the JSON and two plots.

    ``train_uri``/``test_uri`` are the splits written by ``train_model`` (with the sensitive columns,
    which ingest keeps). Returns ``{explainer, global_importance, top_k, proxy, artifacts, local,
    seconds}``: importance per original column sorted by decreasing mean |SHAP|, the
    ``gates.explainability.top_k`` most important columns, the proxy probe over those columns on the
    full train and test splits (see :func:`proxy_probe`), the paths written, and local explanations
    of up to five test rows. ``out_dir/shap_importance.json`` holds the same, the probe under
    ``proxy_probe``.
    """
    started = time.perf_counter()
    cfg, seed = spec.gates.explainability, spec.split.random_state
    model = read_model(model_uri)
    train, test = read_parquet(train_uri), read_parquet(test_uri)
    if not len(train) or not len(test):
        raise ExplainError(
            f"explain {spec.name}: the train split has {len(train)} rows and the test split {len(test)}; "
            "both are needed (background and explained rows); re-run train_model on a larger snapshot"
        )
    background = feature_frame(_sample(train, cfg.sample_size, seed), spec)
    sample = feature_frame(_sample(test, cfg.sample_size, seed), spec)

    explained = explain_pipeline(model, background, sample, seed=seed)
    sample = sample.iloc[: len(explained["values"])]
    transformed, global_importance = aggregate_importance(explained["values"], explained["features"])
    by_class = explained.get("values_by_class")
    class_importance = None
    if by_class is not None:  # multiclass: importance per class, and globally their sum (shap's bar)
        classes = list(spec.target.classes or [])
        class_importance = {
            c: aggregate_importance(by_class[:, :, i], explained["features"])[1]
            for i, c in enumerate(classes)
        }
        summed: dict[str, float] = {}
        for per in class_importance.values():
            for col, v in per.items():
                summed[col] = summed.get(col, 0.0) + v
        global_importance = {
            k: round(v, 6) for k, v in sorted(summed.items(), key=lambda kv: (-kv[1], kv[0]))
        }
    s = scores(model, sample, spec)
    local = _local(explained, sample, s.max(axis=1) if s.ndim == 2 else s)
    top_k = list(global_importance)[: cfg.top_k]
    proxy = proxy_probe(spec, train, test, top_k)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "explainer": explained["explainer"],
        "estimator": type(model.named_steps["model"]).__name__,
        "feature_perturbation": explained["feature_perturbation"],
        "output": explained["output"],
        "sample_size": len(sample),
        "background_size": explained["background_size"],
        "global_importance": global_importance,
        "transformed_importance": transformed,
        "class_importance": class_importance,
        "top_k": top_k,
        "proxy_probe": proxy,
        "local": local,
    }
    json_path = out / IMPORTANCE_FILE
    json_path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    artifacts = [json_path, *_plots(explained, global_importance, out, seed)]
    return {
        "explainer": explained["explainer"],
        "global_importance": global_importance,
        "top_k": top_k,
        "proxy": proxy,
        "class_importance": class_importance,
        "artifacts": [str(p) for p in artifacts],
        "local": local,
        "seconds": round(time.perf_counter() - started, 3),
    }


def explainability_gate(
    importance: dict[str, float],
    gate: ExplainabilityGate,
    proxy: dict | None,
    evidence_uri: str | None = None,
) -> list[dict]:
    """Rank checks for forbidden model inputs, and one proxy check per sensitive attribute.

    * ``rank[<feature>]`` for each forbidden feature that is a model input (a key of
      ``importance``): ``value`` = its 1-based position in the original-column importance
      (decreasing mean |SHAP|), ``threshold = top_k + 1`` with ``>=``, so it passes exactly when the
      feature is not among the ``top_k`` most important. A model input with zero importance ranks
      after every other (``max(len(importance), top_k) + 1``). Forbidden names that are not model
      inputs have nothing to rank and get no entry (spec validation rejects them).
    * ``proxy_roc_auc[<attr>]`` for each attribute of ``proxy`` (:func:`proxy_probe`): the probe's
      held-out ROC AUC must be ``<= max_proxy_roc_auc``; an AUC that could not be measured fails.

    With neither, one ``not_applicable`` entry (metric ``checks``) with the spec's
    ``not_applicable_because`` or a default reason. A disabled gate gives an empty list. ``proxy``
    is required (explain_model's ``proxy``): anything else raises :class:`ExplainError`.
    """
    if not gate.enabled:
        return []
    if not isinstance(proxy, dict) or "attributes" not in proxy:
        # Without the probe the gate would silently drop every proxy check.
        raise ExplainError(
            f"explainability_gate needs the proxy probe result (explain_model's 'proxy'), got {proxy!r}"
        )
    ranking = [f for f, v in sorted(importance.items(), key=lambda kv: (-kv[1], kv[0])) if v > 0]
    unranked = max(len(importance), gate.top_k) + 1
    results = []
    for feature in gate.forbidden_features:
        if feature not in importance:
            continue
        if feature in ranking:
            rank = ranking.index(feature) + 1
            note = (
                f"forbidden feature {feature!r} is among the top {gate.top_k} by mean |SHAP|"
                if rank <= gate.top_k
                else None
            )
        else:
            rank, note = unranked, f"{feature!r} has zero SHAP importance"
        results.append(
            check("explainability", f"rank[{feature}]", rank, gate.top_k + 1, ">=", evidence_uri, note=note)
        )
    features = proxy.get("features", [])
    for attr, entry in proxy["attributes"].items():
        value = entry.get("roc_auc")
        if value is None:
            note = entry.get("note") or f"the proxy probe could not measure {attr!r}"
        else:
            note = (
                f"the top-{len(features)} features {features} predict {attr!r} with ROC AUC {value:.3f} "
                f"on {proxy.get('test_rows')} held-out rows ({entry.get('probe')} probe; 0.5 = no information)"
            )
            if value > gate.max_proxy_roc_auc:
                note += (
                    ": they act as a proxy for it; drop or transform the proxy features, or revisit the bound"
                )
        results.append(
            check(
                "explainability",
                f"proxy_roc_auc[{attr}]",
                value,
                gate.max_proxy_roc_auc,
                "<=",
                evidence_uri,
                note=note,
            )
        )
    if not results:
        reason = gate.not_applicable_because or (
            "no forbidden feature is a model input and the spec lists no sensitive_attributes to probe "
            "for: nothing to check"
        )
        results.append(not_applicable("explainability", "checks", reason, evidence_uri))
    return results
