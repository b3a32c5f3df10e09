"""SHAP attributions of a fitted Pipeline: which explainer fits the model, and the values mapped back
to the original columns. Used by the training's explainability gate and the service's ``/explain``.

The estimator is explained on the features it actually sees (``preprocess.transform``). The
explainer follows the model type:

* ``tree`` (decision trees, random forests, extra trees, gradient boosting, histogram gradient
  boosting, LightGBM): TreeExplainer. Shallow
  ensembles are explained *interventionally* against the background; deep ones (random forests
  grown to full depth) use the trees' own training cover (``tree_path_dependent``), because
  interventional TreeSHAP is slow on them and known to break additivity on deep trees
  (shap/shap#3267, #4042). The output is the model's raw output: log-odds for (histogram)
  gradient boosting, probability for forests and trees.
* ``linear`` (logistic regression and other linear classifiers): LinearExplainer; log-odds
  (the decision function) of the positive class.
* ``permutation`` (anything else with ``predict_proba``): model-agnostic, on the positive-class
  probability, with a small masker (at most 50 background rows, 100 explained rows and
  ``2 x features + 1`` evaluations per row) because every evaluation calls the model.

A binary model is explained for its positive class (``classes_[1]``, label 1 of
:func:`include.frames.labels`); a multiclass model for every class (``values_by_class``, and per row
the class of highest output); a regressor for its predicted number.
SHAP values of one-hot columns are mapped back to their categorical column through the fitted
ColumnTransformer and OneHotEncoder categories, so importance is reported per original column
(the sum of the mean |SHAP| of its one-hot columns) as well as per transformed column.
"""

from __future__ import annotations

from include.spec import ESTIMATOR_KINDS

# Interventional TreeSHAP costs about rows x background x tree nodes; above this (a few seconds on
# one core) or beyond this depth, trees are explained path-dependently instead.
_TREE_WORK_BUDGET = 2e9
_TREE_MAX_INTERVENTIONAL_DEPTH = 8
# The model-agnostic explainer calls the model (evaluations x background) times per explained row.
_AGNOSTIC_MAX_BACKGROUND = 50
_AGNOSTIC_MAX_ROWS = 100


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
    return f"use one of the spec's estimator kinds {list(ESTIMATOR_KINDS)}"


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
    columns by the encoder's categories, one-hot bins by their count; any other transformer must
    keep its input names.
    A name scikit-learn produces twice gets `` [<column>]`` appended.
    """
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import KBinsDiscretizer, OneHotEncoder

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
        if isinstance(last, KBinsDiscretizer) and last.encode != "ordinal":  # one column per bin
            for col, width in zip(cols, last.n_bins_, strict=True):
                origins += [col] * int(width)
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


def _class_count(est) -> int:
    """0 for a regressor, else the number of classes (a fitted classifier has ``classes_``)."""
    from sklearn.base import is_classifier

    if not is_classifier(est):
        return 0
    classes = getattr(est, "classes_", None)
    if classes is None:
        raise ExplainError(f"{_name(est)} is not fitted (no classes_): explain a trained model")
    return len(classes)


def _tree_depth_and_nodes(est) -> tuple[int | None, int]:
    """Maximum depth and total node count of a scikit-learn tree model (None depth when unknown)."""
    import numpy as np

    if hasattr(est, "tree_"):
        trees = [est]
    elif hasattr(est, "estimators_"):
        trees = list(np.ravel(est.estimators_))
    elif hasattr(est, "_predictors"):  # HistGradientBoosting: TreePredictors of node records
        nodes = [p.nodes for it in est._predictors for p in it]
        return (max(int(n["depth"].max()) for n in nodes), sum(len(n) for n in nodes)) if nodes else (None, 0)
    elif type(est).__module__.startswith("lightgbm") and hasattr(est, "booster_"):
        table = est.booster_.trees_to_dataframe()  # one row per node, with its depth (root: 1)
        return (int(table["node_depth"].max()) - 1, len(table)) if len(table) else (None, 0)
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


def _explain_agnostic(est, background, sample, classes: int, seed: int):
    import shap

    if classes and not hasattr(est, "predict_proba"):
        raise ExplainError(
            f"{_name(est)} is neither a tree model nor a linear model and has no predict_proba, so SHAP "
            f"cannot explain it; {_supported_hint()}, or give it predict_proba "
            "(e.g. SVC(probability=True))"
        )
    bg = background[:_AGNOSTIC_MAX_BACKGROUND]
    rows = sample[:_AGNOSTIC_MAX_ROWS]

    def output(X):
        if classes == 0:
            return est.predict(X)  # a regressor: the predicted number
        proba = est.predict_proba(X)
        return proba[:, 1] if classes == 2 else proba

    explainer = shap.Explainer(
        output,
        shap.maskers.Independent(bg, max_samples=len(bg)),
        algorithm="permutation",
        seed=seed,
    )
    return explainer(rows, max_evals=2 * rows.shape[1] + 1, silent=True), len(bg)


def _output_space(kind: str, est) -> str:
    """What one unit of the SHAP values is: the space the explainer decomposes."""
    from sklearn.base import is_classifier

    if not is_classifier(est):
        return "prediction"  # a regressor: units of the target
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
            f"{list(steps)}: train it with include.tasks.train.fit.build_pipeline"
        )
    pre, est = steps["preprocess"], steps["model"]
    classes = _class_count(est)
    kind = choose_explainer(est)
    features = feature_origins(pre)
    bg = _dense(pre.transform(background))
    X = _dense(pre.transform(sample))
    perturbation = "interventional"
    try:
        try:
            if kind == "tree":
                expl, perturbation, bg_size = _explain_tree(est, bg, X)
            elif kind == "linear":
                expl, bg_size = _explain_linear(est, bg, X), len(bg)
            else:
                expl, bg_size = _explain_agnostic(est, bg, X, classes, seed)
        except Exception:
            if classes <= 2 or kind == "permutation":
                raise
            # shap's TreeExplainer explains some multiclass ensembles only for two classes (scikit-learn's
            # gradient boosting): explain the class probabilities model-agnostically instead.
            kind, perturbation = "permutation", "interventional"
            expl, bg_size = _explain_agnostic(est, bg, X, classes, seed)
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
    by_class = None
    if values.ndim == 3 and classes > 2:  # multiclass: (rows, features, classes) kept per class
        by_class = values
        base_by_class = np.broadcast_to(base, (values.shape[0], values.shape[2]))
        picked = (values.sum(axis=1) + base_by_class).argmax(axis=1)  # each row's top class
        rows = np.arange(values.shape[0])
        values, base = values[rows, :, picked], base_by_class[rows, picked]
    elif values.ndim == 3:  # (rows, features, classes) of a binary model: the positive class
        values, base = values[:, :, 1], base[:, 1] if base.ndim == 2 else base[1]
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
        # multiclass: SHAP values of every class (rows x features x classes); ``values`` holds each
        # row's highest-output class
        "values_by_class": by_class,
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
