"""Explain: SHAP values of the fitted model, global importance per original column, and the gate.

The estimator is explained on the features it actually sees (``preprocess.transform``), with a
background sample of the train split and an explained sample of the test split, both of at most
``gates.explainability.sample_size`` rows drawn with ``split.random_state``. The explainer follows
the model type:

* ``tree`` (decision trees, random forests, extra trees, gradient boosting): TreeExplainer. Shallow
  ensembles are explained *interventionally* against the background; deep ones (random forests
  grown to full depth) use the trees' own training cover (``tree_path_dependent``), because
  interventional TreeSHAP is slow on them and known to break additivity on deep trees
  (shap/shap#3267, #4042). The output is the model's raw output: log-odds for gradient
  boosting, probability for forests and trees.
* ``linear`` (logistic regression and other linear classifiers): LinearExplainer; log-odds
  (the decision function) of the positive class.
* ``permutation`` (anything else with ``predict_proba``): model-agnostic, on the positive-class
  probability, with a small masker (at most 50 background rows, 100 explained rows and
  ``2 x features + 1`` evaluations per row) because every evaluation calls the model.

The positive class is ``classes_[1]`` (label 1 of :func:`include.tasks.train.labels`) everywhere.
SHAP values of one-hot columns are mapped back to their categorical column through the fitted
ColumnTransformer and OneHotEncoder categories, so importance is reported per original column
(the sum of the mean |SHAP| of its one-hot columns) as well as per transformed column.

Keeping a sensitive attribute out of the features does not keep it out of the model: other
columns can encode it (a proxy). The *proxy probe* measures that directly. Two small seeded
classifiers, a logistic regression and a depth-3 decision tree, learn each sensitive attribute
from the model's ``top_k`` most important input columns on the train split; their ROC AUC on the
test split says how well the model's main inputs reveal the attribute (0.5: not at all, 1.0:
perfectly). The larger of the two AUCs is the value gated against ``max_proxy_roc_auc``: the
linear probe finds monotone proxies, the tree finds thresholds and interactions, and both are
scored on held-out rows. An attribute with more than two groups is scored one-vs-rest, macro
averaged: every group counts the same, so a small group that the features single out is not
hidden by the large ones (the per-group AUCs are on record). The explainability gate is the
rank checks of forbidden features that are model inputs plus one proxy check per sensitive
attribute.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from include.spec import ESTIMATORS, ExplainabilityGate, PipelineSpec
from include.tasks.gates import check, not_applicable
from include.tasks.ingest import read_parquet
from include.tasks.train import feature_frame, read_model

IMPORTANCE_FILE = "shap_importance.json"
SUMMARY_PLOT = "shap_summary.png"
IMPORTANCE_PLOT = "shap_importance.png"

# Interventional TreeSHAP costs about rows x background x tree nodes; above this (a few seconds on
# one core) or beyond this depth, trees are explained path-dependently instead.
_TREE_WORK_BUDGET = 2e9
_TREE_MAX_INTERVENTIONAL_DEPTH = 8
# The model-agnostic explainer calls the model (evaluations x background) times per explained row.
_AGNOSTIC_MAX_BACKGROUND = 50
_AGNOSTIC_MAX_ROWS = 100
_LOCAL_TOP = 5
# The proxy probe's classifiers: small enough to run in well under a second on ~5,000 rows.
_PROBE_TREE_DEPTH = 3
_PROBE_TREE_MIN_LEAF = 20
_PROBE_C = 1.0


class ExplainError(ValueError):
    """The model cannot be explained; the message names the estimator and what to do."""


def _final_estimator(estimator):
    steps = getattr(estimator, "steps", None)
    return steps[-1][1] if steps else estimator


def choose_explainer(estimator) -> str:
    """``"tree"``, ``"linear"`` or ``"permutation"`` for an estimator (or a Pipeline's last step), by type."""
    from sklearn.ensemble import (
        ExtraTreesClassifier,
        ExtraTreesRegressor,
        GradientBoostingClassifier,
        GradientBoostingRegressor,
        HistGradientBoostingClassifier,
        HistGradientBoostingRegressor,
        IsolationForest,
        RandomForestClassifier,
        RandomForestRegressor,
    )
    from sklearn.linear_model import (
        LinearRegression,
        LogisticRegression,
        LogisticRegressionCV,
        PassiveAggressiveClassifier,
        Perceptron,
        RidgeClassifier,
        RidgeClassifierCV,
        SGDClassifier,
    )
    from sklearn.svm import LinearSVC
    from sklearn.tree import BaseDecisionTree

    est = _final_estimator(estimator)
    trees = (
        BaseDecisionTree,  # DecisionTree*/ExtraTree* classifiers and regressors
        RandomForestClassifier,
        RandomForestRegressor,
        ExtraTreesClassifier,
        ExtraTreesRegressor,
        GradientBoostingClassifier,
        GradientBoostingRegressor,
        HistGradientBoostingClassifier,
        HistGradientBoostingRegressor,
        IsolationForest,
    )
    if isinstance(est, trees) or type(est).__module__.split(".")[0] in {"xgboost", "lightgbm", "catboost"}:
        return "tree"
    linear = (
        LogisticRegression,
        LogisticRegressionCV,
        SGDClassifier,
        RidgeClassifier,
        RidgeClassifierCV,
        Perceptron,
        PassiveAggressiveClassifier,
        LinearSVC,
        LinearRegression,
    )
    if isinstance(est, linear):
        return "linear"
    return "permutation"


def _name(est) -> str:
    return type(est).__name__


def _supported_hint() -> str:
    return f"use one of the spec's estimator kinds {sorted(ESTIMATORS)}"


def _dense(X):
    import numpy as np

    return np.asarray(X.toarray() if hasattr(X, "toarray") else X, dtype="float64")


def _onehot_widths(encoder) -> list[int]:
    """Output columns per input column of a fitted OneHotEncoder (dropped and infrequent categories counted)."""
    widths = [len(cats) for cats in encoder.categories_]
    drop_idx = getattr(encoder, "drop_idx_", None)
    infrequent = getattr(encoder, "infrequent_categories_", None) or [None] * len(widths)
    for i, infreq in enumerate(infrequent):
        if infreq is not None and len(infreq):
            widths[i] -= len(infreq) - 1  # infrequent categories share one column
        if drop_idx is not None and drop_idx[i] is not None:
            widths[i] -= 1
    return widths


def feature_origins(preprocess) -> list[tuple[str, str]]:
    """``(transformed_name, original_column)`` for every output column of a fitted ColumnTransformer.

    Uses the fitted transformers, not the names: a one-hot block is attributed to its input
    columns by the encoder's categories; any other transformer must keep its input names.
    A name scikit-learn produces twice gets `` [<column>]`` appended.
    """
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    names = list(preprocess.get_feature_names_out())
    inputs = list(getattr(preprocess, "feature_names_in_", []))
    origins: list[str] = []
    for block, trans, cols in preprocess.transformers_:
        if isinstance(trans, str) and trans == "drop":
            continue
        cols = [inputs[c] if isinstance(c, int) and inputs else str(c) for c in list(cols)]
        if not cols:
            continue
        last = trans.steps[-1][1] if isinstance(trans, Pipeline) else trans
        if isinstance(last, OneHotEncoder):
            for col, width in zip(cols, _onehot_widths(last), strict=True):
                origins += [col] * width
            continue
        out = cols if isinstance(trans, str) else [str(n) for n in trans.get_feature_names_out(cols)]
        unknown = [n for n in out if n not in cols]
        if unknown:
            raise ExplainError(
                f"cannot map transformed features {unknown[:3]} of block {block!r} back to the columns "
                f"{cols}: only one-hot encoders and column-preserving transformers are supported"
            )
        origins += out
    if len(origins) != len(names):
        raise ExplainError(
            f"the preprocessor outputs {len(names)} features but {len(origins)} could be traced to "
            "input columns; check the ColumnTransformer's blocks"
        )
    # scikit-learn does not keep names unique: category "type_a" of "plan" and category "a" of
    # "plan_type" are both "cat__plan_type_a". Suffix the column so no importance is overwritten.
    repeated = {n for n in names if names.count(n) > 1}
    names = [f"{n} [{col}]" if n in repeated else n for n, col in zip(names, origins, strict=True)]
    return list(zip(names, origins, strict=True))


def _positive_index(est) -> int:
    classes = getattr(est, "classes_", None)
    if classes is None:
        raise ExplainError(f"{_name(est)} is not fitted (no classes_): explain a trained model")
    if len(classes) != 2:
        raise ExplainError(
            f"{_name(est)} has {len(classes)} classes {list(classes)[:5]}; explanations are built for "
            "binary classifiers (positive class vs the rest)"
        )
    return 1


def _tree_depth_and_nodes(est) -> tuple[int | None, int]:
    """Maximum depth and total node count of a scikit-learn tree model (None depth when unknown)."""
    import numpy as np

    if hasattr(est, "tree_"):
        trees = [est]
    elif hasattr(est, "estimators_"):
        trees = list(np.ravel(est.estimators_))
    else:
        return None, 0
    if not all(hasattr(t, "tree_") for t in trees):
        return None, 0
    return max(t.tree_.max_depth for t in trees), sum(t.tree_.node_count for t in trees)


def _explain_tree(est, background, sample):
    import shap
    from shap.utils._exceptions import ExplainerError

    depth, nodes = _tree_depth_and_nodes(est)
    cheap = depth is not None and nodes * len(background) * len(sample) <= _TREE_WORK_BUDGET
    if cheap and depth <= _TREE_MAX_INTERVENTIONAL_DEPTH:
        try:
            explainer = shap.TreeExplainer(
                est, data=background, feature_perturbation="interventional", model_output="raw"
            )
            return explainer(sample), "interventional", len(background)
        except ExplainerError:
            pass  # additivity failed: fall back to the path-dependent algorithm below
    explainer = shap.TreeExplainer(est, feature_perturbation="tree_path_dependent", model_output="raw")
    return explainer(sample), "tree_path_dependent", 0


def _explain_linear(est, background, sample):
    import shap

    # An ndarray masker is silently cut to 100 rows by shap; pass the whole background explicitly.
    masker = shap.maskers.Independent(background, max_samples=len(background))
    return shap.LinearExplainer(est, masker)(sample)


def _explain_agnostic(est, background, sample, pos: int, seed: int):
    import shap

    if not hasattr(est, "predict_proba"):
        raise ExplainError(
            f"{_name(est)} is neither a tree model nor a linear model and has no predict_proba, so SHAP "
            f"cannot explain it; {_supported_hint()}, or give it predict_proba "
            "(e.g. SVC(probability=True))"
        )
    bg = background[:_AGNOSTIC_MAX_BACKGROUND]
    rows = sample[:_AGNOSTIC_MAX_ROWS]

    def positive_proba(X):
        return est.predict_proba(X)[:, pos]

    explainer = shap.Explainer(
        positive_proba,
        shap.maskers.Independent(bg, max_samples=len(bg)),
        algorithm="permutation",
        seed=seed,
    )
    return explainer(rows, max_evals=2 * rows.shape[1] + 1, silent=True), len(bg)


def _output_space(kind: str, est) -> str:
    """What one unit of the SHAP values is: the space the explainer decomposes."""
    boosted = hasattr(est, "loss") or type(est).__module__.split(".")[0] in {
        "xgboost",
        "lightgbm",
        "catboost",
    }
    if kind == "permutation" or (kind == "tree" and not boosted):
        return "probability"  # forests and trees average leaf class frequencies
    if kind == "tree" or type(est).__name__.startswith("LogisticRegression"):
        return "log_odds"
    return "decision_function"


def explain_pipeline(pipeline, background, sample, seed: int = 0) -> dict:
    """SHAP values of a fitted ``preprocess`` + ``model`` Pipeline for ``sample`` (both raw feature frames).

    Returns ``values`` (rows x transformed features, positive class), ``base_values`` (rows),
    ``data`` (the transformed rows), ``features`` (``(transformed, original)`` pairs), the explainer
    kind, its output space and the background size used. The model-agnostic explainer explains
    only the first rows of ``sample`` (see the module docstring); ``values`` says how many.
    """
    import numpy as np

    steps = getattr(pipeline, "named_steps", {})
    if "preprocess" not in steps or "model" not in steps:
        raise ExplainError(
            f"expected a Pipeline with steps 'preprocess' and 'model', got {_name(pipeline)} with steps "
            f"{list(steps)}: train it with include.tasks.train.build_pipeline"
        )
    pre, est = steps["preprocess"], steps["model"]
    pos = _positive_index(est)
    kind = choose_explainer(est)
    features = feature_origins(pre)
    bg = _dense(pre.transform(background))
    X = _dense(pre.transform(sample))
    perturbation = "interventional"
    try:
        if kind == "tree":
            expl, perturbation, bg_size = _explain_tree(est, bg, X)
        elif kind == "linear":
            expl, bg_size = _explain_linear(est, bg, X), len(bg)
        else:
            expl, bg_size = _explain_agnostic(est, bg, X, pos, seed)
    except ExplainError:
        raise
    except Exception as exc:
        # shap's own errors (unsupported model, bad output shape) surface deep in its internals.
        raise ExplainError(
            f"SHAP's {kind} explainer cannot explain {_name(est)} ({type(exc).__name__}: {exc}); "
            f"{_supported_hint()}, or switch the gate off (gates.explainability.enabled: false) "
            "only if the model is explained by other means"
        ) from exc

    values = np.asarray(expl.values, dtype="float64")
    base = np.asarray(expl.base_values, dtype="float64")
    if values.ndim == 3:  # (rows, features, classes): forests, trees, some linear models
        values, base = values[:, :, pos], base[:, pos] if base.ndim == 2 else base[pos]
    base = np.broadcast_to(base, (values.shape[0],)).astype("float64")
    if values.shape[1] != len(features):
        raise ExplainError(
            f"SHAP returned {values.shape[1]} features for {_name(est)}, the preprocessor outputs "
            f"{len(features)}; the model and its preprocessor do not match"
        )
    return {
        "explainer": kind,
        "feature_perturbation": perturbation,
        "output": _output_space(kind, est),
        "values": values,
        "base_values": base,
        "data": X[: len(values)],
        "features": features,
        "background_size": int(bg_size),
    }


def aggregate_importance(values, features: list[tuple[str, str]]) -> tuple[dict, dict]:
    """Mean |SHAP| per transformed column, and per original column (sum over its one-hot columns).

    Both dictionaries are sorted by decreasing importance (ties by name).
    """
    import numpy as np

    mean_abs = np.abs(values).mean(axis=0) if len(values) else np.zeros(len(features))
    transformed: dict[str, float] = {}
    original: dict[str, float] = {}
    for (name, col), v in zip(features, mean_abs, strict=True):
        transformed[name] = float(v)
        original[col] = original.get(col, 0.0) + float(v)

    def ranked(d: dict) -> dict:
        return {k: round(v, 6) for k, v in sorted(d.items(), key=lambda kv: (-kv[1], kv[0]))}

    return ranked(transformed), ranked(original)


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
        unit = {"log_odds": "log-odds", "probability": "probability"}.get(explained["output"], "output")
        ax.set_xlabel(f"mean |SHAP value| ({unit}), one-hot columns summed")
        ax.set_title("Global importance per input column")
        fig.tight_layout()
        fig.savefig(bars, dpi=100)
    finally:
        plt.close(fig)
    return [summary, bars]


def _attribute_groups(column):
    """Group labels of a sensitive attribute as strings; missing values form a ``<missing>`` group."""
    return column.astype(str).where(column.notna(), "<missing>").to_numpy()


def _probe_preprocessor(spec: PipelineSpec, columns: list[str]):
    """The model's kind of preprocessing, for ``columns`` only: median-imputed and standardised
    numeric/binary columns, one-hot categoricals (unknown categories ignored)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric = [c for c in columns if c in spec.features.numeric or c in spec.features.binary]
    categorical = [c for c in columns if c in spec.features.categorical]
    blocks = []
    if numeric:
        blocks.append(
            (
                "num",
                Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]),
                numeric,
            )
        )
    if categorical:
        blocks.append(("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), categorical))
    return ColumnTransformer(blocks, remainder="drop")


def _macro_ovr_auc(y_test, classes, proba) -> tuple[float, dict[str, float]]:
    """One-vs-rest ROC AUC per group present in ``y_test`` and their mean (equal to the plain AUC
    for two groups). A group the probe never saw in training scores 0 for every row."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    column = {c: i for i, c in enumerate(classes)}
    per_group = {}
    for group in sorted(set(y_test)):
        score = proba[:, column[group]] if group in column else np.zeros(len(y_test))
        per_group[group] = float(roc_auc_score(y_test == group, score))
    return float(np.mean(list(per_group.values()))), per_group


def proxy_probe(spec: PipelineSpec, train, test, features: list[str]) -> dict:
    """How well ``features`` (the model's top-k input columns) predict each sensitive attribute.

    ``train``/``test`` are the train and test splits with the sensitive columns. For each
    attribute, a logistic regression and a depth-3 decision tree (seeded with
    ``split.random_state``) are fitted on the train split over ``features`` and scored on the
    test split. Returns ``{features, probes, train_rows, test_rows, roc_auc: {attr: value},
    attributes: {attr: {roc_auc, method, by_probe, by_group, groups, note}}}``; ``roc_auc`` is the
    larger AUC of the two probes, ``None`` with a ``note`` when it cannot be measured (one group
    only in either split). Raises :class:`ExplainError` when a sensitive column is missing.
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.tree import DecisionTreeClassifier

    seed = spec.split.random_state
    missing = {
        name: [c for c in spec.sensitive_attributes if c not in frame.columns]
        for name, frame in (("train", train), ("test", test))
    }
    for name, cols in missing.items():
        if cols:
            raise ExplainError(
                f"the {name} split lacks sensitive attribute column(s) {cols} listed in spec "
                f"{spec.name}.yaml sensitive_attributes, so the proxy probe cannot run: ingest must "
                "carry them (check the batch export and re-run ingest and train), or remove them "
                "from sensitive_attributes"
            )
    unknown = [c for c in features if c not in spec.features.all]
    if unknown or not features:
        raise ExplainError(
            f"the proxy probe needs model input columns of spec {spec.name}.yaml, got {features}: "
            "pass the top-k columns of the model's SHAP importance"
        )
    out = {
        "features": list(features),
        "probes": {
            "logistic_regression": f"LogisticRegression(C={_PROBE_C}), standardised numerics",
            "decision_tree": (
                f"DecisionTreeClassifier(max_depth={_PROBE_TREE_DEPTH}, "
                f"min_samples_leaf={_PROBE_TREE_MIN_LEAF}, random_state={seed})"
            ),
        },
        "fitted_on": "train split",
        "scored_on": "test split",
        "train_rows": len(train),
        "test_rows": len(test),
        "roc_auc": {},
        "attributes": {},
    }
    if not spec.sensitive_attributes:
        return out
    pre = _probe_preprocessor(spec, list(features))
    X_train = pre.fit_transform(feature_frame(train, spec)[features])
    X_test = pre.transform(feature_frame(test, spec)[features])
    for attr in spec.sensitive_attributes:
        y_train, y_test = _attribute_groups(train[attr]), _attribute_groups(test[attr])
        groups = sorted(set(y_train) | set(y_test))
        entry: dict = {
            "method": "binary" if len(groups) == 2 else "one_vs_rest_macro",
            "groups": {
                g: {"train": int((y_train == g).sum()), "test": int((y_test == g).sum())} for g in groups
            },
            "roc_auc": None,
            "by_probe": {},
            "by_group": {},
        }
        lone = [name for name, y in (("train", y_train), ("test", y_test)) if len(set(y)) < 2]
        if lone:
            entry["note"] = (
                f"the {' and '.join(lone)} split(s) hold one group of {attr!r} only "
                f"({sorted(set(y_train)) if 'train' in lone else sorted(set(y_test))}), so no probe can "
                "be fitted or scored: use more data or a larger split.test_size"
            )
        else:
            probes = {
                "logistic_regression": LogisticRegression(C=_PROBE_C, max_iter=2000),
                "decision_tree": DecisionTreeClassifier(
                    max_depth=_PROBE_TREE_DEPTH, min_samples_leaf=_PROBE_TREE_MIN_LEAF, random_state=seed
                ),
            }
            for name, probe in probes.items():
                with warnings.catch_warnings():
                    # An unconverged probe still gives a valid (if slightly low) held-out AUC.
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    probe.fit(X_train, y_train)
                auc, per_group = _macro_ovr_auc(y_test, list(probe.classes_), probe.predict_proba(X_test))
                entry["by_probe"][name] = round(auc, 6)
                entry["by_group"][name] = {g: round(v, 6) for g, v in per_group.items()}
            best = max(entry["by_probe"], key=lambda k: (entry["by_probe"][k], k))
            entry["roc_auc"] = entry["by_probe"][best]
            entry["probe"] = best
        out["attributes"][attr] = entry
        out["roc_auc"][attr] = entry["roc_auc"]
    return out


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
    proba = model.predict_proba(sample)[:, 1]
    local = _local(explained, sample, proba)
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
        "artifacts": [str(p) for p in artifacts],
        "local": local,
        "seconds": round(time.perf_counter() - started, 3),
    }


def explainability_gate(
    importance: dict[str, float], gate: ExplainabilityGate, proxy: dict, evidence_uri: str | None = None
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
