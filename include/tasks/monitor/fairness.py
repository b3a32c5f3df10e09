"""Fairness on live labelled traffic (bias drift): the training gate's metrics on what the champion
decided in production, once the labels arrived.

The rows are those of the performance window (:func:`include.tasks.monitor.performance.read_labelled`:
answered by the champion, labelled, old enough for labels to have arrived). Serving never receives
the sensitive attributes (they are not model inputs), so each row is joined by its hashed entity
key to the attributes the landed batches in the lake carry
(``<lake>/<pipeline>/batches/month=*/batch.parquet``, the newest month's value winning). Rows whose
entity the lake does not know are counted and reported, not guessed.

The metrics are the training gate's, computed by the same code
(:func:`include.tasks.train.fairness.fairness_report`, fairlearn's ``MetricFrame``) per task:
binary compares the logged 0/1 decisions, multiclass the decided class indices, regression the
logged prediction against the label. Each gap is judged against the gate's bound
(``gates.fairness``), or, with ``monitoring.fairness.margin``, against the version's own training
gap plus the margin when that is tighter. A gap the window cannot measure (a group without
positives) is ``not_applicable`` with the reason: too little live evidence is not a breach, and
never a pass.
"""

from __future__ import annotations

import math

import numpy as np

from include.tasks.gates import FAILED, check, not_applicable

GATE = "fairness"


def read_sensitive(lake_uri: str, spec):
    """The lake's sensitive attributes per hashed entity key (a DataFrame indexed by the key), from
    every landed month; an entity in several months keeps its newest values."""
    import io

    import pandas as pd

    from include import storage

    key, cols = spec.entity_column, list(spec.sensitive_attributes)
    frames = []
    for uri in sorted(storage.list_uris(storage.join(lake_uri, spec.name, "batches"))):
        if not uri.endswith("/batch.parquet"):
            continue
        frames.append(pd.read_parquet(io.BytesIO(storage.read_bytes(uri)), columns=[key, *cols]))
    if not frames:
        return pd.DataFrame(columns=cols, index=pd.Index([], name=key))
    frame = pd.concat(frames, ignore_index=True)  # months in key order: the last one is the newest
    return frame.drop_duplicates(subset=key, keep="last").set_index(key)


def training_values(blessing: dict | None) -> dict[str, float]:
    """The version's training fairness values (``metric[attr]`` -> value) from its blessing."""
    out: dict[str, float] = {}
    for r in (blessing or {}).get("results", []):
        if r.get("gate") == "fairness" and r.get("value") is not None:
            out[r["metric"]] = float(r["value"])
    return out


def _bound(
    threshold: float, comparison: str, trained: float | None, margin: float | None
) -> tuple[float, str]:
    """The tighter of the gate's bound and (with a margin) the training value moved by the margin."""
    if margin is None or trained is None:
        return threshold, "the training gate's bound"
    if comparison == "<=":
        own = round(trained + margin, 6)
        return (
            (own, f"training {trained:g} + margin {margin:g}")
            if own < threshold
            else (threshold, "the gate's bound")
        )
    own = round(trained - margin, 6)
    return (
        (own, f"training {trained:g} - margin {margin:g}")
        if own > threshold
        else (threshold, "the gate's bound")
    )


def live_fairness(spec, labelled, sensitive, trained: dict[str, float]) -> dict:
    """The live fairness report and its checks.

    ``labelled``: a :class:`~include.tasks.monitor.performance.Labelled` with ``entity_key``;
    ``sensitive``: :func:`read_sensitive`'s frame; ``trained``: :func:`training_values`. Returns
    ``{"results", "report", "rows", "matched", "unmatched"}``."""
    import pandas as pd

    from include.tasks.train.fairness import _limits, fairness_report

    cfg, gate = spec.monitoring.fairness, spec.gates.fairness
    n = len(labelled.label)
    out: dict = {"results": [], "report": None, "rows": n, "matched": 0, "unmatched": 0}
    metric = "fairness"
    if not cfg.enabled:
        out["results"] = [not_applicable(GATE, metric, "monitoring.fairness.enabled is false")]
        return out
    if not spec.sensitive_attributes:
        out["results"] = [
            not_applicable(
                GATE, metric, f"spec {spec.name}.yaml lists no sensitive_attributes: no groups to compare"
            )
        ]
        return out
    if spec.entity_column is None:
        out["results"] = [
            not_applicable(
                GATE,
                metric,
                f"spec {spec.name}.yaml has no entity identifier: served rows cannot be joined to the "
                "sensitive attributes the lake holds",
            )
        ]
        return out
    keys = list(labelled.entity_key or [None] * n)
    known = np.array([k is not None and k in sensitive.index for k in keys], dtype=bool)
    out["matched"], out["unmatched"] = int(known.sum()), int(n - known.sum())
    window = f"labelled predictions made {labelled.since} to {labelled.until}"
    if out["matched"] < cfg.min_rows:
        out["results"] = [
            not_applicable(
                GATE,
                metric,
                f"{out['matched']} {window} with a known group ({out['unmatched']} without a matching "
                f"entity in the lake); live fairness is judged from {cfg.min_rows}",
            )
        ]
        return out
    groups = sensitive.loc[
        [k for k, ok in zip(keys, known, strict=True) if ok], list(spec.sensitive_attributes)
    ]
    groups = pd.DataFrame(groups.to_numpy(), columns=list(spec.sensitive_attributes))
    y_true = labelled.label[known]
    if spec.task == "regression":
        y_pred = labelled.probability[known]  # the logged prediction, as the gate compares it
    else:
        y_pred = (labelled.decision if labelled.decision is not None else labelled.probability)[known]
    report = fairness_report(
        y_true,
        y_pred,
        groups,
        spec.task,
        list(spec.target.classes or []) or None,
        min_group_rows=cfg.min_group_rows,
    )
    out["report"] = report
    results = []
    for attr, rep in report["attributes"].items():
        for name, (threshold, comparison, field) in _limits(spec.task, gate).items():
            label = f"{name}[{attr}]"
            value = rep[name]
            if threshold is None:
                results.append(
                    not_applicable(
                        GATE, label, f"gates.fairness.{field} is not set: no bound to judge the live gap by"
                    )
                )
                continue
            if value is None or math.isnan(value):
                why = rep["notes"].get(name) or "the window cannot measure it"
                results.append(not_applicable(GATE, label, f"not measurable on the {window}: {why}"))
                continue
            bound, source = _bound(threshold, comparison, trained.get(label), cfg.margin)
            counts = ", ".join(f"{g}: {r['count']}" for g, r in rep["by_group"].items())
            note = (
                (
                    f"live {value:g} vs training {trained[label]:g}"
                    if label in trained
                    else f"live {value:g}, no training value"
                )
                + f"; bound from {source}; rows per group {counts}; {out['unmatched']} of {n} rows without a known group"
            )
            results.append(check(GATE, label, value, bound, comparison, note=note))
    out["results"] = results
    return out


def breached(results: list[dict]) -> list[dict]:
    return [r for r in results if r["status"] == FAILED]
