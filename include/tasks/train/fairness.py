"""Fairness: fairlearn metrics of a candidate's decisions over each sensitive attribute, and the gate.

The sensitive attributes (``spec.sensitive_attributes``) are not model features; they travel with
the data so that decisions can be compared between groups. Every metric is computed per group with
fairlearn's ``MetricFrame``; differences are between the best- and worst-off groups. What is
compared depends on the spec's ``task``:

* **binary** (decisions 0/1 at the rule's ``threshold``): the demographic parity difference (gap
  in selection rate), the disparate impact ratio (lowest / highest selection rate), the equal
  opportunity difference (gap in true positive rate), the equalized odds difference (the larger of
  the true- and false-positive-rate gaps) and the predictive parity difference (gap in precision),
  plus per-group counts and rates. Predictive parity is gated only when
  ``max_predictive_parity_difference`` is set.
* **multiclass** (decisions are class indices under the rule): the selection rate difference (for
  each class, the gap between the groups' shares of rows decided as that class; the largest gap
  over classes) and the macro recall difference (gap in recall averaged over the classes), gated by
  ``max_selection_rate_difference`` and ``max_macro_recall_difference``.
* **regression**: the MAE difference and the mean residual difference (residual = prediction -
  truth, so a group that is systematically under-predicted has a lower mean residual), in target
  units, on the model's own prediction (not the rule's offset decision), gated by
  ``max_mae_difference`` and ``max_mean_residual_difference``. A bound that is not set gives a
  ``not_applicable`` result naming the field, never a pass.

A metric that cannot be measured (a group with no positive labels, no negative labels, or no
positive prediction; a multiclass group missing a class among its true labels; an attribute with
one group in the test split) is ``None`` and fails the gate with a note that says why. A spec
without sensitive attributes gets one ``not_applicable`` result. Why both rules: docs/design.md,
"Fairness that cannot be measured fails".

Bad input (rows that do not line up, a missing sensitive column, a mitigation that cannot be
fitted on the train split or is set for a task other than binary) raises
:class:`FairnessInputError`, which is not retried.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING

from include import storage
from include.frames import feature_frame, labels, read_parquet
from include.model_files import read_model
from include.problem import decide, describe_rule, scores
from include.spec import FairnessGate, PipelineSpec
from include.tasks.gates import (  # noqa: F401 (GateFailed, raise_for_gate re-exported)
    GateFailed,
    check,
    not_applicable,
    raise_for_gate,
    status_of,
)
from include.tasks.train.fit import build_pipeline

if TYPE_CHECKING:
    import pandas as pd

SUMMARY_METRICS = (
    "demographic_parity_difference",
    "disparate_impact_ratio",
    "equal_opportunity_difference",
    "equalized_odds_difference",
    "predictive_parity_difference",
)
_GROUP_METRICS = ("count", "selection_rate", "recall", "precision", "false_positive_rate")
#: The gated metrics of a multiclass report, per attribute.
MULTICLASS_METRICS = ("selection_rate_difference", "macro_recall_difference")
#: The gated metrics of a regression report, per attribute (target units).
REGRESSION_METRICS = ("mae_difference", "mean_residual_difference")
#: The headline metrics per attribute, by task.
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "binary": SUMMARY_METRICS,
    "multiclass": MULTICLASS_METRICS,
    "regression": REGRESSION_METRICS,
}


class FairnessInputError(ValueError):
    """The data given to the fairness assessment cannot be assessed; the message names the fix.

    Deterministic: a retry on the same inputs fails the same way.
    """


def _num(x) -> float | None:
    """A JSON-safe float: NaN/inf (an undefined metric) becomes None."""
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else round(x, 6)


def _tpr(y_true, y_pred) -> float:
    # fairlearn returns 0.0 for a group without positives; NaN keeps "undefined" visible.
    import numpy as np
    from fairlearn.metrics import true_positive_rate

    return true_positive_rate(y_true, y_pred, pos_label=1) if (np.asarray(y_true) == 1).any() else math.nan


def _fpr(y_true, y_pred) -> float:
    import numpy as np
    from fairlearn.metrics import false_positive_rate

    return false_positive_rate(y_true, y_pred, pos_label=1) if (np.asarray(y_true) == 0).any() else math.nan


def _precision(y_true, y_pred) -> float:
    # scikit-learn scores "no positive prediction" as 0 (zero_division); that is undefined, not 0.
    import numpy as np
    from sklearn.metrics import precision_score

    if not (np.asarray(y_pred) == 1).any():
        return math.nan
    return precision_score(y_true, y_pred, pos_label=1)


def _groups(column):
    """The attribute as group labels; missing values form their own ``<missing>`` group."""
    if column.isna().any():
        return column.astype(str).where(column.notna(), "<missing>")
    return column


def _attribute_report(y_true, y_pred, groups) -> dict:
    import fairlearn.metrics as flm
    from fairlearn.metrics import MetricFrame, count, selection_rate

    mf = MetricFrame(
        metrics={
            "count": count,
            "selection_rate": lambda t, p: selection_rate(t, p, pos_label=1),
            "recall": _tpr,
            "precision": _precision,
            "false_positive_rate": _fpr,
        },
        y_true=y_true,
        y_pred=y_pred,
        sensitive_features=groups,
    )
    table = mf.by_group
    by_group = {
        str(g): {
            "count": int(row["count"]),
            **{m: _num(row[m]) for m in _GROUP_METRICS if m != "count"},
        }
        for g, row in table.iterrows()
    }
    comparable = len(by_group) >= 2
    all_have_pos = table["recall"].notna().all()
    all_have_neg = table["false_positive_rate"].notna().all()
    all_have_pred_pos = table["precision"].notna().all()
    kw = {"sensitive_features": groups}

    dpd = di = eod = eqodds = ppd = None
    if comparable:
        dpd = _num(flm.demographic_parity_difference(y_true, y_pred, **kw))
        # 0/0 when no group gets a positive prediction: the ratio is undefined, _num makes it None.
        di = _num(flm.demographic_parity_ratio(y_true, y_pred, **kw))
        if all_have_pos:
            eo_fn = getattr(flm, "equal_opportunity_difference", None)
            eod = _num(eo_fn(y_true, y_pred, **kw) if eo_fn else mf.difference()["recall"])
            if all_have_neg:
                eqodds = _num(flm.equalized_odds_difference(y_true, y_pred, **kw))
        if all_have_pred_pos:
            ppd = _num(table["precision"].max() - table["precision"].min())
    return {
        "demographic_parity_difference": dpd,
        "disparate_impact_ratio": di,
        "equal_opportunity_difference": eod,
        "equalized_odds_difference": eqodds,
        "predictive_parity_difference": ppd,
        "by_group": by_group,
    }


def _share_of(c: int):
    """The share of a group's rows decided as class ``c``."""

    def share(y_true, y_pred) -> float:
        import numpy as np

        y_pred = np.asarray(y_pred)
        return float((y_pred == c).mean()) if len(y_pred) else math.nan

    return share


def _macro_recall_of(k: int):
    """Recall averaged over the ``k`` classes; NaN (undefined) when a class is absent from the
    group's true labels: scikit-learn would count that class's recall as 0 (``zero_division``) and
    report a gap that does not exist."""

    def macro_recall(y_true, y_pred) -> float:
        import numpy as np
        from sklearn.metrics import recall_score

        if len(np.unique(np.asarray(y_true))) < k:
            return math.nan
        return float(recall_score(y_true, y_pred, labels=list(range(k)), average="macro", zero_division=0))

    return macro_recall


def _multiclass_attribute_report(y_true, y_pred, groups, classes: list[str]) -> dict:
    from fairlearn.metrics import MetricFrame, count

    k = len(classes)
    shares = {f"share_{i}": _share_of(i) for i in range(k)}
    mf = MetricFrame(
        metrics={"count": count, **shares, "macro_recall": _macro_recall_of(k)},
        y_true=y_true,
        y_pred=y_pred,
        sensitive_features=groups,
    )
    table = mf.by_group
    by_group = {
        str(g): {
            "count": int(row["count"]),
            "selection_rate": {c: _num(row[f"share_{i}"]) for i, c in enumerate(classes)},
            "macro_recall": _num(row["macro_recall"]),
        }
        for g, row in table.iterrows()
    }
    # Which classes each group lacks among its true labels (why its macro recall is undefined).
    missing = {
        str(g): [classes[i] for i in range(k) if i not in set(y_true[(groups == g).to_numpy()])]
        for g in table.index
    }
    srd = mrd = None
    gaps: dict[str, float | None] = dict.fromkeys(classes)
    if len(by_group) >= 2:
        diff = mf.difference()
        gaps = {c: _num(diff[f"share_{i}"]) for i, c in enumerate(classes)}
        srd = _num(max(diff[list(shares)]))
        if table["macro_recall"].notna().all():
            mrd = _num(table["macro_recall"].max() - table["macro_recall"].min())
    return {
        "selection_rate_difference": srd,
        "macro_recall_difference": mrd,
        # The gap per class: which class the groups are decided into unequally.
        "selection_rate_difference_by_class": gaps,
        "by_group": by_group,
        "missing_classes": {g: m for g, m in missing.items() if m},
    }


def _regression_attribute_report(y_true, y_pred, groups) -> dict:
    import numpy as np
    from fairlearn.metrics import MetricFrame, count
    from sklearn.metrics import mean_absolute_error

    mf = MetricFrame(
        metrics={
            "count": count,
            "mae": mean_absolute_error,
            "mean_residual": lambda t, p: float(np.mean(np.asarray(p) - np.asarray(t))),
        },
        y_true=y_true,
        y_pred=y_pred,
        sensitive_features=groups,
    )
    by_group = {
        str(g): {
            "count": int(row["count"]),
            "mae": _num(row["mae"]),
            "mean_residual": _num(row["mean_residual"]),
        }
        for g, row in mf.by_group.iterrows()
    }
    mae_d = res_d = None
    if len(by_group) >= 2:
        diff = mf.difference()
        mae_d, res_d = _num(diff["mae"]), _num(diff["mean_residual"])
    return {"mae_difference": mae_d, "mean_residual_difference": res_d, "by_group": by_group}


def fairness_report(
    y_true,
    y_pred,
    sensitive: pd.DataFrame,
    task: str = "binary",
    classes: list[str] | None = None,
    min_group_rows: int = 1,
) -> dict:
    """fairlearn disparity metrics and per-group values for each column of ``sensitive``.

    Each column of the ``sensitive`` DataFrame is one attribute (0/1 codes or string groups).
    Undefined values are ``None`` (see module docstring); ``notes`` says why, per metric. By ``task``:

    * ``binary``: ``y_true``/``y_pred`` are 0/1 arrays. Returns ``{"task", "attributes": {attr:
      {<SUMMARY_METRICS>, "by_group": {group: {count, selection_rate, recall, precision,
      false_positive_rate}}, "notes"}}}``.
    * ``multiclass``: class indices into ``classes`` (required). Each attribute holds
      ``selection_rate_difference``, ``macro_recall_difference``,
      ``selection_rate_difference_by_class`` ({class: gap}), ``by_group`` ({group: {count,
      selection_rate: {class: share decided as it}, macro_recall}}), ``missing_classes`` ({group:
      classes absent from its true labels}) and ``notes``.
    * ``regression``: numbers (the model's predictions). Each attribute holds ``mae_difference``,
      ``mean_residual_difference`` (residual = prediction - truth), ``by_group`` ({group: {count,
      mae, mean_residual}}) and ``notes``.
    """
    import numpy as np

    if task not in TASK_METRICS:
        raise FairnessInputError(f"task must be one of {list(TASK_METRICS)}, got {task!r}")
    dtype = "float64" if task == "regression" else "int64"
    y_true = np.asarray(y_true).astype(dtype)
    y_pred = np.asarray(y_pred).astype(dtype)
    if len(y_true) != len(y_pred) or len(y_true) != len(sensitive):
        raise FairnessInputError(
            f"y_true ({len(y_true)}), y_pred ({len(y_pred)}) and sensitive ({len(sensitive)}) "
            "must have the same number of rows: pass the columns of the same scored frame"
        )
    if task == "multiclass" and not classes:
        raise FairnessInputError("a multiclass fairness report needs classes: pass spec.target.classes")
    sensitive = sensitive.reset_index(drop=True)
    attributes = {}

    def report(yt, yp, groups) -> dict:
        if task == "multiclass":
            return _multiclass_attribute_report(yt, yp, groups, list(classes or []))
        if task == "regression":
            return _regression_attribute_report(yt, yp, groups)
        return _attribute_report(yt, yp, groups)

    for attr in sensitive.columns:
        groups = _groups(sensitive[attr])
        rep = report(y_true, y_pred, groups)
        counts = groups.value_counts()
        small = {str(g): int(n) for g, n in counts.items() if n < min_group_rows}
        if small:
            # Reported per group, but left out of the gaps: a group this small moves its metrics by
            # sampling noise alone (gates.fairness.min_group_rows).
            keep = (~groups.astype(str).isin(small)).to_numpy()
            gaps = report(y_true[keep], y_pred[keep], groups[keep])
            rep = {**gaps, "by_group": rep["by_group"], "excluded_groups": small}
        notes = _notes(str(attr), rep, task)
        if small:
            notes["excluded_groups"] = (
                f"groups {small} have fewer than {min_group_rows} test rows (gates.fairness.min_group_rows): "
                "reported, not counted in the gaps"
            )
        attributes[str(attr)] = {**rep, "notes": notes}
    return {"task": task, "attributes": attributes}


def _notes(attr: str, rep: dict, task: str = "binary") -> dict[str, str]:
    """Why each undefined metric of ``attr`` is undefined (shown in the gate failure)."""
    groups = rep["by_group"]
    if len(groups) < 2:
        why = (
            f"only group {sorted(groups)} of {attr!r} is in the test split, so there is nothing to "
            "compare; fairness cannot be shown: use more data or a larger split.test_size"
        )
        return dict.fromkeys(TASK_METRICS[task], why)
    if task == "regression":
        return {}
    if task == "multiclass":
        if rep["macro_recall_difference"] is not None:
            return {}
        lacking = "; ".join(
            f"{g!r} has no true {m}" for g, m in sorted(rep.get("missing_classes", {}).items())
        )
        return {
            "macro_recall_difference": (
                f"group(s) of {attr!r} lack a class among their true labels in the test split ({lacking}), "
                "so their recall of it, and their macro recall, is undefined; more labelled data per "
                "group is needed (more batches or a larger split.test_size)"
            )
        }
    out: dict[str, str] = {}
    if rep["disparate_impact_ratio"] is None:
        out["disparate_impact_ratio"] = "no group received a positive prediction, so the ratio is 0/0"
    no_pos = sorted(g for g, r in groups.items() if r["recall"] is None)
    no_neg = sorted(g for g, r in groups.items() if r["false_positive_rate"] is None)
    fix = "more labelled data per group is needed (more batches or a larger split.test_size)"
    no_pred_pos = sorted(g for g, r in groups.items() if r["precision"] is None)
    if no_pred_pos:
        out["predictive_parity_difference"] = (
            f"group(s) {no_pred_pos} of {attr!r} received no positive prediction in the test split, so "
            f"their precision is undefined; {fix}"
        )
    if no_pos:
        why = f"group(s) {no_pos} of {attr!r} have no positive labels in the test split, so their true positive rate is undefined; {fix}"
        out["equal_opportunity_difference"] = why
        out["equalized_odds_difference"] = why
    elif no_neg:
        out["equalized_odds_difference"] = (
            f"group(s) {no_neg} of {attr!r} have no negative labels in the test split, so their false positive rate is undefined; {fix}"
        )
    return out


def _limits(task: str, gate: FairnessGate) -> dict[str, tuple[float | None, str, str]]:
    """The gated metrics of ``task``: metric -> (bound, comparison, the gate field holding the bound)."""
    if task == "multiclass":
        return {
            "selection_rate_difference": (
                gate.max_selection_rate_difference,
                "<=",
                "max_selection_rate_difference",
            ),
            "macro_recall_difference": (
                gate.max_macro_recall_difference,
                "<=",
                "max_macro_recall_difference",
            ),
        }
    if task == "regression":
        return {
            "mae_difference": (gate.max_mae_difference, "<=", "max_mae_difference"),
            "mean_residual_difference": (
                gate.max_mean_residual_difference,
                "<=",
                "max_mean_residual_difference",
            ),
        }
    limits: dict[str, tuple[float | None, str, str]] = {
        "demographic_parity_difference": (
            gate.max_demographic_parity_difference,
            "<=",
            "max_demographic_parity_difference",
        ),
        "disparate_impact_ratio": (gate.min_disparate_impact_ratio, ">=", "min_disparate_impact_ratio"),
        "equal_opportunity_difference": (
            gate.max_equal_opportunity_difference,
            "<=",
            "max_equal_opportunity_difference",
        ),
        "equalized_odds_difference": (
            gate.max_equalized_odds_difference,
            "<=",
            "max_equalized_odds_difference",
        ),
    }
    if gate.max_predictive_parity_difference is not None:
        limits["predictive_parity_difference"] = (
            gate.max_predictive_parity_difference,
            "<=",
            "max_predictive_parity_difference",
        )
    return limits


def fairness_gate(report: dict, gate: FairnessGate, evidence_uri: str | None = None) -> list[dict]:
    """The checks of the report's ``task`` for every attribute (every attribute must pass); an
    undefined metric fails with a note.

    binary: four checks per attribute, five with ``max_predictive_parity_difference`` set.
    multiclass: ``selection_rate_difference`` and ``macro_recall_difference``. regression:
    ``mae_difference`` and ``mean_residual_difference``; a bound that is not set
    (``max_mae_difference`` / ``max_mean_residual_difference`` None, possible in a spec built in code
    or one that declares ``not_applicable_because``) gives a ``not_applicable`` result naming the
    field, never a pass. A report without ``task`` is binary. A report without attributes (the spec
    lists no sensitive attributes) gives one ``not_applicable`` result with the spec's reason.
    """
    if not report["attributes"]:
        reason = gate.not_applicable_because or (
            "the spec lists no sensitive_attributes, so there are no groups whose decisions could be "
            "compared; fairness was not assessed"
        )
        return [not_applicable("fairness", "sensitive_attributes", reason, evidence_uri)]
    task = report.get("task", "binary")
    limits = _limits(task, gate)
    results = []
    for attr, rep in report["attributes"].items():
        notes = rep["notes"] if "notes" in rep else _notes(attr, rep, task)
        for metric, (threshold, comparison, field) in limits.items():
            value = rep[metric]
            if threshold is None:
                measured = "could not be measured" if value is None else f"measured {value:g}"
                reason = gate.not_applicable_because or (
                    f"a regression's fairness bound is in target units and none was given, so the gap "
                    f"({measured}, see the report) was not judged; set gates.fairness.{field}"
                )
                results.append(
                    not_applicable(
                        "fairness",
                        f"{metric}[{attr}]",
                        f"gates.fairness.{field} is not set: {reason}",
                        evidence_uri,
                    )
                )
                continue
            results.append(
                check(
                    "fairness",
                    f"{metric}[{attr}]",
                    value,
                    threshold,
                    comparison,
                    evidence_uri,
                    note=notes.get(metric) if value is None else None,
                )
            )
    return results


def _summary(report: dict) -> dict:
    """The headline metrics per attribute, without the per-group table."""
    metrics = TASK_METRICS[report.get("task", "binary")]
    return {attr: {m: rep[m] for m in metrics} for attr, rep in report["attributes"].items()}


def _sensitive_frame(df, spec: PipelineSpec, split: str):
    missing = [c for c in spec.sensitive_attributes if c not in df.columns]
    if missing:
        raise FairnessInputError(
            f"the {split} split lacks sensitive attribute column(s) {missing} listed in spec "
            f"{spec.name}.yaml sensitive_attributes: ingest must carry them (check the batch export "
            "and re-run ingest and train), or remove them from sensitive_attributes"
        )
    return df[spec.sensitive_attributes].reset_index(drop=True)


def _combined(sensitive):
    """One intersectional group label per row, e.g. ``female=1|senior_citizen=0``."""
    cols = list(sensitive.columns)
    return sensitive.astype(str).apply(lambda row: "|".join(f"{c}={row[c]}" for c in cols), axis=1)


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _plot(attr: str, rep: dict, path: Path, threshold: float) -> None:
    """Grouped bars of selection rate / recall / precision per group of one attribute."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups = list(rep["by_group"])
    metrics = ("selection_rate", "recall", "precision")
    fig = Figure(figsize=(6.4, 4.0))
    FigureCanvasAgg(fig)  # Agg without pyplot: no global backend state, safe in a worker.
    ax = fig.add_subplot()
    x = np.arange(len(groups))
    width = 0.8 / len(metrics)
    for i, m in enumerate(metrics):
        vals = [rep["by_group"][g][m] for g in groups]
        ax.bar(x + (i - 1) * width, [np.nan if v is None else v for v in vals], width, label=m)
    ax.set_xticks(x, [f"{g}\n(n={rep['by_group'][g]['count']})" for g in groups])
    ax.set_ylim(0, 1.05)
    ax.set_xlabel(attr)
    ax.set_title(
        f"{attr} at threshold {threshold:g}: DPD={_fmt(rep['demographic_parity_difference'])}, "
        f"DI={_fmt(rep['disparate_impact_ratio'])}, PPD={_fmt(rep['predictive_parity_difference'])}",
        fontsize=9,
    )
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})


def _plot_multiclass(attr: str, rep: dict, path: Path, classes: list[str], decision: str) -> None:
    """Grouped bars: per group, the share of its rows decided as each class."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups = list(rep["by_group"])
    fig = Figure(figsize=(6.4, 4.0))
    FigureCanvasAgg(fig)  # Agg without pyplot: no global backend state, safe in a worker.
    ax = fig.add_subplot()
    x = np.arange(len(groups))
    width = 0.8 / max(len(classes), 1)
    for i, c in enumerate(classes):
        vals = [rep["by_group"][g]["selection_rate"][c] for g in groups]
        offset = (i - (len(classes) - 1) / 2) * width
        ax.bar(x + offset, [np.nan if v is None else v for v in vals], width, label=c)
    ax.set_xticks(x, [f"{g}\n(n={rep['by_group'][g]['count']})" for g in groups])
    ax.set_ylim(0, 1.05)
    ax.set_xlabel(attr)
    ax.set_ylabel("share of the group decided as the class")
    ax.set_title(
        f"{attr}, decided as {decision}\nselection rate gap {_fmt(rep['selection_rate_difference'])}, "
        f"macro recall gap {_fmt(rep['macro_recall_difference'])}",
        fontsize=9,
    )
    ax.legend(loc="best", fontsize=8, title="decided as", title_fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})


def _plot_regression(attr: str, rep: dict, path: Path) -> None:
    """Per group: MAE and mean residual (prediction - truth) of the model's prediction."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups = list(rep["by_group"])
    fig = Figure(figsize=(6.4, 4.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = np.arange(len(groups))
    width = 0.4
    for i, m in enumerate(("mae", "mean_residual")):
        vals = [rep["by_group"][g][m] for g in groups]
        ax.bar(x + (i - 0.5) * width, [np.nan if v is None else v for v in vals], width, label=m)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x, [f"{g}\n(n={rep['by_group'][g]['count']})" for g in groups])
    ax.set_xlabel(attr)
    ax.set_ylabel("target units")
    ax.set_title(
        f"{attr}, model prediction (residual = prediction - truth)\nMAE gap "
        f"{_fmt(rep['mae_difference'])}, mean residual gap {_fmt(rep['mean_residual_difference'])}",
        fontsize=9,
    )
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})


def _mitigate(spec: PipelineSpec, model, test, y_test, y_pred, report: dict, train_uri: str | None) -> dict:
    """Fit the spec's mitigation on the train split and compare its test decisions with the candidate's."""
    import numpy as np

    method = spec.gates.fairness.mitigation
    if train_uri is None:
        raise FairnessInputError(
            f"spec {spec.name}.yaml sets gates.fairness.mitigation: {method}, which is fitted on a "
            "labelled split: pass train_uri (the train split written by train_model), or set "
            "mitigation: none"
        )
    train = read_parquet(train_uri)
    sens_train = _sensitive_frame(train, spec, "train")
    sens_test = _sensitive_frame(test, spec, "test")
    groups_train = _combined(sens_train)
    groups_test = _combined(sens_test)
    y_train = labels(train, spec)
    one_class = sorted(g for g in set(groups_train) if len(set(y_train[groups_train.to_numpy() == g])) < 2)
    if one_class:
        raise FairnessInputError(
            f"mitigation {method} needs both classes of {spec.target.column!r} in every group of "
            f"{spec.sensitive_attributes}, but the train split has one class only in {one_class}: "
            "train on more batches, or set gates.fairness.mitigation: none"
        )
    unseen = sorted(set(groups_test) - set(groups_train))
    if unseen:
        raise FairnessInputError(
            f"mitigation {method}: test groups {unseen} never occur in the train split, so no "
            "group threshold exists for them; train on more batches, or set mitigation: none"
        )
    X_train = feature_frame(train, spec)
    X_test = feature_frame(test, spec)
    seed = spec.split.random_state

    if method == "threshold_optimizer":
        from fairlearn.postprocessing import ThresholdOptimizer

        mitigator = ThresholdOptimizer(
            estimator=model,
            constraints="equalized_odds",
            objective="balanced_accuracy_score",
            prefit=True,
            predict_method="predict_proba",
        )
        mitigator.fit(X_train, y_train, sensitive_features=groups_train)
        mitigated = mitigator.predict(X_test, sensitive_features=groups_test, random_state=seed)
    else:  # exponentiated_gradient
        from fairlearn.reductions import EqualizedOdds, ExponentiatedGradient

        estimator = build_pipeline(spec, X_train)
        # The reduction encodes its costs as sample weights on relabelled targets; a "balanced"
        # class_weight would re-weight those relabelled classes and distort the best response.
        if "class_weight" in estimator.named_steps["model"].get_params():
            estimator.set_params(model__class_weight=None)
        mitigator = ExponentiatedGradient(
            estimator, EqualizedOdds(), sample_weight_name="model__sample_weight"
        )
        mitigator.fit(X_train, y_train, sensitive_features=groups_train)
        mitigated = mitigator.predict(X_test, random_state=seed)

    mitigated = np.asarray(mitigated).astype("int64")
    after = fairness_report(y_test, mitigated, sens_test)
    return {
        "method": method,
        "constraints": "equalized_odds",
        "sensitive_feature": "|".join(spec.sensitive_attributes),
        "fitted_on": train_uri,
        "before": _summary(report),
        "after": _summary(after),
        "accuracy_before": _num((y_pred == y_test).mean()),
        "accuracy_after": _num((mitigated == y_test).mean()),
        "selection_rate_before": _num(y_pred.mean()),
        "selection_rate_after": _num(mitigated.mean()),
        # What the gate would say about the mitigated decisions: passed, failed (or not_applicable).
        "gate_status_after": status_of(fairness_gate(after, spec.gates.fairness)),
    }


def _slug(attr: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", attr)


def assess_fairness(
    spec: PipelineSpec,
    model_uri: str,
    test_uri: str,
    rule: dict,
    out_dir: str | Path,
    train_uri: str | None = None,
) -> dict:
    """Score the candidate on the test split, report fairness per sensitive attribute, gate it.

    ``rule`` is the decision rule (``evaluate_model``'s ``rule``; binary: ``{"threshold": t}``).
    Scores and decisions come from :mod:`include.problem` (``scores`` / ``decide``): binary
    compares the 0/1 decisions at the threshold, multiclass the decided class indices. A
    regression compares the model's own prediction (``scores``, equal to
    ``include.problem.predicted``), not the rule's decision (prediction + ``offset``): the gate asks
    whether the model errs more, or in one direction more, for some group, and the offset (a
    business choice of which side to err on, the same for every row) would only blur that; it
    cancels out of the mean residual gap anyway.

    Writes ``out_dir/fairness.json`` (the report; the gate results point at it), one bar chart
    ``out_dir/fairness_<attr>.png`` per attribute and, when a mitigation ran,
    ``out_dir/fairness_mitigation.json``. Returns ``{report, gates, artifacts, mitigation,
    threshold, note}`` (``threshold`` is the binary rule's, None for other tasks). The report is
    ``{"task", "attributes"}`` (see :func:`fairness_report`), and for multiclass also ``classes``
    and ``decision`` (the rule in words), for regression ``compared`` (what was compared).
    ``gates.fairness.enabled`` is not consulted: whether to run the gate is
    the DAG's decision. A spec without sensitive attributes gives an empty report, one
    ``not_applicable`` gate result (``gates.fairness.not_applicable_because``, or a default reason)
    and a ``note`` saying fairness was not assessed. Input problems raise :class:`FairnessInputError`.

    Mitigation (``gates.fairness.mitigation``, task binary only: another task with a mitigation
    raises :class:`FairnessInputError`) is evidence, not a change to the candidate: the
    gate is always computed on the unmitigated model, because the unmitigated pipeline is the
    artifact that would be registered and served (neither mitigator is a plain scikit-learn
    pipeline that converts to ONNX, and both need the sensitive attribute at prediction time,
    which serving does not receive). The record shows what a mitigation would buy and cost
    (fairness and accuracy before/after) so that a reviewer can decide to change the model.

    * ``threshold_optimizer``: fairlearn's ThresholdOptimizer with ``prefit=True`` on the trained
      pipeline and ``constraints="equalized_odds"``. Equalized odds, not demographic parity,
      because base rates differ between groups (seniors churn more): demographic parity would
      force equal offer rates and so withhold offers from at-risk groups or hand them out at
      random, while equalized odds equalises what matters here (churners in every group are as
      likely to get an offer; non-churners as unlikely) and bounds both the equal opportunity and
      equalized odds metrics the gate checks. The objective is balanced accuracy, matching the
      class-balanced training. Groups are the intersection of all sensitive attributes
      (``female=1|senior_citizen=0``): equal rates in every intersection imply equal rates in
      every marginal group, so one mitigator covers every attribute the gate checks, where the
      first attribute alone would leave the others unconstrained.
    * ``exponentiated_gradient``: fairlearn's ExponentiatedGradient (EqualizedOdds, same
      intersectional groups) around a fresh ``build_pipeline(spec)``; fairlearn hands the raw
      DataFrame to each fit, so the whole pipeline is refitted with ``model__sample_weight``.

    Both are fitted on ``train_uri`` (required when a mitigation is set); their predictions are
    randomised and seeded with ``split.random_state``.
    """
    method = spec.gates.fairness.mitigation
    if spec.task != "binary" and method != "none":
        raise FairnessInputError(
            f"spec {spec.name}.yaml sets gates.fairness.mitigation: {method}, but mitigation equalises "
            f"yes/no decisions and applies to task binary only; the spec's task is {spec.task}: set "
            "gates.fairness.mitigation: none (or remove it)"
        )
    if not isinstance(rule, dict) or (spec.task == "binary" and "threshold" not in rule):
        raise FairnessInputError(
            f"rule must be the decision rule dict that evaluate_model returns (binary: "
            f'{{"threshold": t}}), got {rule!r}: pass evaluate_model\'s "rule"'
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    test = read_parquet(test_uri)
    sensitive = _sensitive_frame(test, spec, "test")
    model = read_model(model_uri)
    s = scores(model, feature_frame(test, spec), spec)
    y_true = labels(test, spec)
    # regression: the model's prediction (see the docstring); classifiers: the rule's decisions.
    y_pred = s if spec.task == "regression" else decide(spec, s, rule)
    classes = list(spec.target.classes or [])

    report = fairness_report(
        y_true,
        y_pred,
        sensitive,
        spec.task,
        classes or None,
        min_group_rows=spec.gates.fairness.min_group_rows,
    )
    if spec.task == "multiclass":
        report["classes"] = classes
        report["decision"] = describe_rule(spec, rule)
    elif spec.task == "regression":
        report["compared"] = (
            "the model's prediction (not the decision rule's offset); residual = prediction - truth, "
            "in target units"
        )
    report_path = out / "fairness.json"
    report_path.write_text(json.dumps(report, indent=2, sort_keys=True, allow_nan=False), encoding="utf-8")
    evidence = storage.path_to_uri(report_path)
    artifacts = [str(report_path)]
    threshold = float(rule["threshold"]) if spec.task == "binary" else None
    for attr, rep in report["attributes"].items():
        png = out / f"fairness_{_slug(attr)}.png"
        if spec.task == "multiclass":
            _plot_multiclass(attr, rep, png, classes, report["decision"])
        elif spec.task == "regression":
            _plot_regression(attr, rep, png)
        else:
            _plot(attr, rep, png, float(rule["threshold"]))
        artifacts.append(str(png))

    note = None
    mitigation = None
    if not spec.sensitive_attributes:
        note = (
            f"spec {spec.name}.yaml lists no sensitive_attributes: fairness was not assessed and "
            "the fairness gate is recorded as not applicable"
        )
    elif method != "none":
        mitigation = _mitigate(spec, model, test, y_true, y_pred, report, train_uri)
        mit_path = out / "fairness_mitigation.json"
        mit_path.write_text(
            json.dumps(mitigation, indent=2, sort_keys=True, allow_nan=False), encoding="utf-8"
        )
        artifacts.append(str(mit_path))

    return {
        "report": report,
        "gates": fairness_gate(report, spec.gates.fairness, evidence),
        "artifacts": artifacts,
        "mitigation": mitigation,
        "threshold": threshold,
        "note": note,
    }
