"""The proxy probe: how well the model's main inputs reveal a sensitive attribute.

Keeping a sensitive attribute out of the features does not keep it out of the model: other
columns can encode it (a proxy). The *proxy probe* measures that directly. Two small seeded
classifiers, a logistic regression and a depth-3 decision tree, learn each sensitive attribute
from the model's ``top_k`` most important input columns on the train split; their ROC AUC on the
test split says how well the model's main inputs reveal the attribute (0.5: not at all, 1.0:
perfectly). The larger of the two AUCs is the value gated against ``max_proxy_roc_auc``: the
linear probe finds monotone proxies, the tree finds thresholds and interactions, and both are
scored on held-out rows. An attribute with more than two groups is scored one-vs-rest, macro
averaged: every group counts the same, so a small group that the features single out is not
hidden by the large ones (the per-group AUCs are on record).
"""

from __future__ import annotations

from typing import Any

from include.attributions import ExplainError
from include.frames import feature_frame
from include.spec import PipelineSpec

# The proxy probe's classifiers: small enough to run in well under a second on ~5,000 rows.
_PROBE_TREE_DEPTH = 3
_PROBE_TREE_MIN_LEAF = 20
_PROBE_C = 1.0


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
    out: dict[str, Any] = {
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
