"""Pipeline specs: the YAML a data engineer writes, validated into a typed model.

A spec declares where batches come from, the target, the feature columns and their types,
identifier/PII columns, sensitive attributes, the estimator, the split, the schedule and
the gate thresholds. Loading never imports heavy libraries: it runs at DAG-parse time.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

#: The kinds of problem a pipeline solves: a yes/no outcome, one of several classes, or a number.
TASKS = ("binary", "multiclass", "regression")
Task = Literal["binary", "multiclass", "regression"]

# Estimators a spec may name, by task, mapped to their import paths. Each converts to ONNX (skl2onnx;
# LightGBM through onnxmltools' converter) and loads with skops' exact trust list.
CLASSIFIERS: dict[str, str] = {
    "logistic_regression": "sklearn.linear_model.LogisticRegression",
    "gradient_boosting": "sklearn.ensemble.GradientBoostingClassifier",
    "hist_gradient_boosting": "sklearn.ensemble.HistGradientBoostingClassifier",
    "lightgbm": "lightgbm.LGBMClassifier",  # LightGBM's scikit-learn API; ONNX through onnxmltools
    "random_forest": "sklearn.ensemble.RandomForestClassifier",
    "extra_trees": "sklearn.ensemble.ExtraTreesClassifier",
    "decision_tree": "sklearn.tree.DecisionTreeClassifier",
}
REGRESSORS: dict[str, str] = {
    "linear_regression": "sklearn.linear_model.LinearRegression",
    "ridge": "sklearn.linear_model.Ridge",
    "elastic_net": "sklearn.linear_model.ElasticNet",
    "gradient_boosting": "sklearn.ensemble.GradientBoostingRegressor",
    "hist_gradient_boosting": "sklearn.ensemble.HistGradientBoostingRegressor",
    "lightgbm": "lightgbm.LGBMRegressor",
    "random_forest": "sklearn.ensemble.RandomForestRegressor",
    "extra_trees": "sklearn.ensemble.ExtraTreesRegressor",
    "decision_tree": "sklearn.tree.DecisionTreeRegressor",
}
ESTIMATORS_BY_TASK: dict[str, dict[str, str]] = {
    "binary": CLASSIFIERS,
    "multiclass": CLASSIFIERS,
    "regression": REGRESSORS,
}
#: Every estimator kind a spec may name under some task.
ESTIMATOR_KINDS: tuple[str, ...] = tuple(sorted(set(CLASSIFIERS) | set(REGRESSORS)))
#: Every estimator class Slipway may fit, as ``(task family, kind, import path)``.
ALL_ESTIMATORS: tuple[tuple[str, str, str], ...] = tuple(
    [("classification", k, v) for k, v in sorted(CLASSIFIERS.items())]
    + [("regression", k, v) for k, v in sorted(REGRESSORS.items())]
)

_NAME = re.compile(r"^[a-z][a-z0-9_]{1,62}$")

# Airflow's cron presets (airflow.utils.dates.cron_presets, repeated in the Task SDK's timetables):
# CronDataIntervalTimetable maps these before handing the expression to croniter.
_CRON_PRESETS: dict[str, str] = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@quarterly": "0 0 1 */3 *",
    "@yearly": "0 0 1 1 *",
}


class SpecError(ValueError):
    """A spec is invalid; the message names the file, the field and what was expected."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(_Strict):
    """Where a pipeline's batches land and how they are named."""

    format: Literal["csv", "parquet"] = "csv"
    batch_name: str = Field(
        default="{month}.csv",
        description="File name of one batch inside the landing zone's <pipeline>/ folder; "
        "{month} is the data interval's month as YYYY-MM.",
    )

    recurring_entities: bool = Field(
        default=False,
        description="An entity id may appear once in every batch, e.g. monthly customer snapshots; "
        "within one batch it must still be unique. When false, an id already ingested in another "
        "month refuses the batch as a duplicate delivery.",
    )

    deadline_days: int = Field(
        default=7,
        ge=0,
        le=366,
        description="Days after its month ends by which a batch must have landed. Until then the "
        "month's run waits in the triggerer (no worker slot); past it the run is skipped with "
        "'no batch for YYYY-MM', so a missing month never blocks the others.",
    )

    @field_validator("batch_name")
    @classmethod
    def _has_month(cls, v: str) -> str:
        if "{month}" not in v or "/" in v:
            raise ValueError("must be a file name containing {month}, e.g. '{month}.csv'")
        return v


class Target(_Strict):
    """The label column and, by task: the positive label (binary), the class list (multiclass), or the
    plausible range of the number (regression, optional)."""

    column: str
    positive_label: str | int | bool | None = Field(
        None, description="binary: the value of the column that means 'yes' (required)."
    )
    classes: list[str] | None = Field(
        None,
        description="multiclass: every class the column may hold (required, at least 3); a batch "
        "holding another value is refused with counts.",
    )
    range: tuple[float, float] | None = Field(
        None,
        description="regression: [low, high], the values the target may take; a batch outside it is "
        "refused. Without it any finite number is accepted.",
    )

    @field_validator("classes", mode="before")
    @classmethod
    def _classes_as_text(cls, v: Any) -> Any:
        # Classes are compared as the batch's text: 1 (a YAML number) is the label "1".
        if isinstance(v, list):
            return [str(c).lower() if isinstance(c, bool) else str(c) for c in v]
        return v

    @field_validator("classes")
    @classmethod
    def _classes(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        dupes = sorted({c for c in v if v.count(c) > 1})
        if dupes:
            raise ValueError(f"classes are listed twice: {dupes}")
        if any(not c.strip() for c in v):
            raise ValueError("a class must be a non-empty text")
        return v

    @field_validator("range")
    @classmethod
    def _range(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not v[0] < v[1]:
            raise ValueError(f"must be [low, high] with low < high, got {list(v)}")
        return v


class Features(_Strict):
    """Model inputs by type: numeric (float), binary (0/1) and categorical (strings)."""

    numeric: list[str] = Field(default_factory=list)
    binary: list[str] = Field(default_factory=list)
    categorical: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _not_empty(self) -> Features:
        if not (self.numeric or self.binary or self.categorical):
            raise ValueError("must list at least one feature under numeric, binary or categorical")
        return self

    @property
    def all(self) -> list[str]:
        """Every feature column, in a fixed order (numeric, binary, categorical)."""
        return [*self.numeric, *self.binary, *self.categorical]


class ColumnPreprocessing(_Strict):
    """How one feature column is prepared for the estimator (every choice converts to ONNX).

    Numeric and binary columns: ``impute`` (median by default), ``scale`` (``standard`` for linear
    estimators and ``none`` for trees by default, or ``robust``), or ``bins`` (quantile or uniform
    bins, one-hot encoded, instead of a scale). Categorical columns: ``encode`` one-hot (default)
    with rare categories grouped (``min_frequency``: a share of the training rows, or
    ``max_categories``: keep the most frequent) into the vector of an unseen category, or
    ``ordinal`` with the declared ``order`` (a value outside it is -1)."""

    impute: Literal["median", "mean", "most_frequent", "constant"] | None = None
    fill_value: float = 0.0
    scale: Literal["standard", "robust", "none"] | None = None
    bins: int | None = Field(None, ge=2, le=100)
    bin_strategy: Literal["quantile", "uniform"] = "quantile"
    encode: Literal["onehot", "ordinal"] | None = None
    order: list[str] | None = None
    min_frequency: float | None = Field(None, gt=0, lt=1)
    max_categories: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _coherent(self) -> ColumnPreprocessing:
        if self.bins is not None and self.scale not in (None, "none"):
            raise ValueError("bins and scale exclude each other: bins replace a scale (one-hot bins)")
        if self.encode == "ordinal" and not self.order:
            raise ValueError("encode: ordinal needs order: [the categories, lowest first]")
        if self.order is not None and self.encode != "ordinal":
            raise ValueError("order applies to encode: ordinal only")
        if self.encode == "ordinal" and (self.min_frequency or self.max_categories):
            raise ValueError("min_frequency and max_categories group one-hot categories; not for ordinal")
        if self.min_frequency and self.max_categories:
            raise ValueError("give min_frequency or max_categories, not both")
        return self

    @property
    def numeric_options(self) -> bool:
        return self.scale is not None or self.bins is not None or self.impute is not None

    @property
    def categorical_options(self) -> bool:
        return self.encode is not None or bool(self.min_frequency) or bool(self.max_categories)


class Estimator(_Strict):
    """The estimator and its parameters; which class ``kind`` means depends on the task."""

    kind: str
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("kind")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in ESTIMATOR_KINDS:
            raise ValueError(f"must be one of {list(ESTIMATOR_KINDS)}, got {v!r}")
        return v


class Split(_Strict):
    """Held-out test split (and validation split used to tune the decision threshold)."""

    test_size: float = Field(0.2, gt=0, lt=0.5)
    validation_size: float = Field(0.2, ge=0, lt=0.5)
    random_state: int = 42
    stratify: bool = True


def _check_cron(v: str) -> str:
    """``v`` if Airflow's cron timetables accept it, else a ValueError naming the fix."""
    # Validated as Airflow's CronDataIntervalTimetable does (airflow/timetables/_cron.py,
    # CronMixin.validate): presets mapped to their expressions, then croniter(expression).
    # croniter is imported here, not at module level: specs load at DAG-parse time.
    from croniter import CroniterBadCronError, CroniterBadDateError, croniter

    expression = _CRON_PRESETS.get(v, v)
    if len(expression.split()) != 5 and not expression.startswith("@"):
        # Stricter than croniter, which also takes 6-7 fields (seconds, years): data intervals
        # of a batch pipeline are minutes at the finest, and Airflow cannot describe those.
        raise ValueError(f"must be a 5-field cron expression such as '0 0 1 * *', got {v!r}")
    try:
        schedule = croniter(expression, start_time=datetime(2000, 1, 1))
    except (CroniterBadCronError, CroniterBadDateError) as exc:
        raise ValueError(
            f"is not a cron expression Airflow accepts ({exc}), got {v!r}; use five fields "
            "(minute 0-59, hour 0-23, day of month 1-31, month 1-12, day of week 0-6), "
            "e.g. '0 0 1 * *', or a preset such as '@daily'"
        ) from None
    try:
        schedule.get_next(datetime)
    except CroniterBadDateError:
        raise ValueError(
            f"never fires (no date matches it), got {v!r}; check the day-of-month and month fields"
        ) from None
    return v


class Schedule(_Strict):
    """When the training DAG runs; each run trains on batches up to its data interval."""

    cron: str = "0 0 1 * *"
    start_date: date = date(2025, 1, 1)
    catchup: bool = False
    max_active_runs: int = Field(
        default=3,
        ge=1,
        le=16,
        description="DAG runs of the pipeline that may be active at once, so an operator can run a past "
        "month while the current one waits for its batch. Safe: every task reads and writes its own "
        "month's keys, and registrations are serialised (one register_model at a time per pipeline).",
    )

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        return _check_cron(v)


class Retries(_Strict):
    """Retries of a failed task in every DAG of the pipeline (Slipway's deterministic errors, such as a
    bad batch or a failed gate, are never retried). The delay doubles on each try, up to the cap,
    which also holds when a cleared run's try numbers are high."""

    count: int = Field(2, ge=0, le=10)
    delay_seconds: float = Field(60, ge=1, le=3600, description="Wait before the first retry.")
    max_delay_seconds: float = Field(300, ge=1, le=86400, description="Cap on the doubled wait.")

    @model_validator(mode="after")
    def _cap(self) -> Retries:
        if self.max_delay_seconds < self.delay_seconds:
            raise ValueError(
                f"max_delay_seconds ({self.max_delay_seconds}) must be at least delay_seconds ({self.delay_seconds})"
            )
        return self

    def default_args(self) -> dict[str, Any]:
        """As Airflow's task arguments (the backoff is computed from the try number)."""
        return {
            "retries": self.count,
            "retry_delay": timedelta(seconds=self.delay_seconds),
            "retry_exponential_backoff": 2.0,
            "max_retry_delay": timedelta(seconds=self.max_delay_seconds),
        }


class _SkippableGate(_Strict):
    """A gate the spec may declare not applicable (``not_applicable_because``) when it has nothing to check."""

    @field_validator("not_applicable_because", check_fields=False)
    @classmethod
    def _reason_says_something(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("must say why the gate has nothing to check, got an empty text")
        return v.strip() if v is not None else None


class EvaluationGate(_Strict):
    """Absolute floors and ceilings on held-out metrics, by task; a candidate past any is not registered.

    binary: ROC AUC, PR AUC, F1 at the decision threshold, Brier score. multiclass: log loss, macro
    F1, balanced accuracy (at least chance, 1/classes, when not set), the lowest per-class recall.
    regression: MAE, RMSE (target units), R² (at least 0, better than predicting the mean, when not
    set). Naming another task's metric is a spec error."""

    min_roc_auc: float = Field(0.5, ge=0, le=1)
    min_pr_auc: float = Field(0.0, ge=0, le=1)
    min_f1: float = Field(0.0, ge=0, le=1)
    max_brier: float = Field(1.0, ge=0, le=1)
    max_log_loss: float | None = Field(None, gt=0)
    min_macro_f1: float | None = Field(None, ge=0, le=1)
    min_balanced_accuracy: float | None = Field(None, ge=0, le=1)
    min_class_recall: float | None = Field(None, ge=0, le=1)
    max_mae: float | None = Field(None, gt=0)
    max_rmse: float | None = Field(None, gt=0)
    min_r2: float | None = Field(None, le=1)


#: Metrics a champion comparison may bound, by task, and whether higher is better.
CHAMPION_METRICS: dict[str, dict[str, bool]] = {
    "binary": {"roc_auc": True, "pr_auc": True, "f1": True, "precision": True, "recall": True},
    "multiclass": {"log_loss": False, "macro_f1": True, "balanced_accuracy": True},
    "regression": {"mae": False, "rmse": False, "r2": True},
}
DEFAULT_MAX_REGRESSION: dict[str, dict[str, float]] = {
    "binary": {"roc_auc": 0.005},
    "multiclass": {"macro_f1": 0.01},
    "regression": {"rmse": 0.02},
}
ChampionMetric = Literal[
    "roc_auc",
    "pr_auc",
    "f1",
    "precision",
    "recall",
    "log_loss",
    "macro_f1",
    "balanced_accuracy",
    "mae",
    "rmse",
    "r2",
]


class ChampionGate(_Strict):
    """Candidate vs the current champion, both scored on the same current test set.

    ``max_regression`` bounds how much worse the candidate may be per metric: an absolute drop for
    scores in [0, 1] (ROC AUC, F1, R², ...) and log loss, a relative increase (0.02 = 2%) for MAE and
    RMSE, whose units are the target's. Defaults by task: ROC AUC 0.005, macro F1 0.01, RMSE 2%."""

    enabled: bool = True
    max_regression: dict[ChampionMetric, float] | None = None
    max_brier_increase: float = Field(0.01, ge=0)

    @field_validator("max_regression")
    @classmethod
    def _non_negative(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        bad = {k: x for k, x in (v or {}).items() if x < 0 or x > 1}
        if bad:
            raise ValueError(f"allowed drops must be between 0 and 1, got {bad}")
        return v

    def bounds(self, task: str) -> dict[str, float]:
        """The allowed regression per metric for ``task``."""
        chosen: dict[str, float] = (
            {str(k): v for k, v in self.max_regression.items()}
            if self.max_regression is not None
            else DEFAULT_MAX_REGRESSION[task]
        )
        return dict(chosen)


class BusinessGate(_SkippableGate):
    """Expected value per 1,000 customers: floor, and maximum drop relative to the champion."""

    enabled: bool = True
    min_value_per_1000: float | None = None
    max_drop_vs_champion_per_1000: float = Field(0.0, ge=0)
    not_applicable_because: str | None = Field(
        default=None,
        description="Why this enabled gate has nothing to check for this pipeline; recorded as the "
        "gate's not_applicable reason. Required when the spec gives the gate nothing to check.",
    )


class FairnessGate(_SkippableGate):
    """fairlearn metrics over each sensitive attribute; the worst attribute must pass."""

    enabled: bool = True
    max_demographic_parity_difference: float = Field(0.2, ge=0, le=1)
    min_disparate_impact_ratio: float = Field(0.6, ge=0, le=1)
    max_equal_opportunity_difference: float = Field(0.2, ge=0, le=1)
    max_equalized_odds_difference: float = Field(0.25, ge=0, le=1)
    max_predictive_parity_difference: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Largest allowed difference in precision (positive predictive value) between "
        "groups; reported always, gated when set.",
    )
    mitigation: Literal["none", "threshold_optimizer", "exponentiated_gradient"] = "none"
    min_group_rows: int = Field(
        1,
        ge=1,
        description="Groups with fewer test rows are reported but left out of the gaps: their metrics "
        "move by sampling noise alone (a group of 6 moves its MAE or recall by a wide margin).",
    )
    # multiclass
    max_selection_rate_difference: float = Field(
        0.2,
        ge=0,
        le=1,
        description="multiclass: for each class, the gap between the groups' shares of rows decided as that "
        "class; the largest gap over classes must stay below this.",
    )
    max_macro_recall_difference: float = Field(
        0.2, ge=0, le=1, description="multiclass: the gap between the groups' macro-averaged recall."
    )
    # regression
    max_mae_difference: float | None = Field(
        None,
        gt=0,
        description="regression: the gap between the groups' mean absolute error, in target units "
        "(required when the gate checks a regression).",
    )
    max_mean_residual_difference: float | None = Field(
        None,
        gt=0,
        description="regression: the gap between the groups' mean residual (prediction - truth), in target "
        "units: one group systematically under-predicted against another (required for a regression).",
    )
    not_applicable_because: str | None = Field(
        default=None,
        description="Why this enabled gate has nothing to check for this pipeline; recorded as the "
        "gate's not_applicable reason. Required when the spec gives the gate nothing to check.",
    )


class ExplainabilityGate(_SkippableGate):
    """SHAP global importance (no forbidden feature among the top-k) and a proxy probe (the top-k
    features must not predict a sensitive attribute)."""

    enabled: bool = True
    top_k: int = Field(5, ge=1, le=100)
    forbidden_features: list[str] = Field(default_factory=list)
    sample_size: int = Field(300, ge=20, le=5000)
    max_proxy_roc_auc: float = Field(
        0.8,
        ge=0.5,
        le=1,
        description="Proxy probe: the largest ROC AUC with which the model's top-k features may "
        "predict a sensitive attribute (0.5 = no information).",
    )
    not_applicable_because: str | None = Field(
        default=None,
        description="Why this enabled gate has nothing to check for this pipeline; recorded as the "
        "gate's not_applicable reason. Required when the spec gives the gate nothing to check.",
    )


class Perturbation(_Strict):
    """A realistic change of one numeric feature: ``absolute`` (+/- delta) or ``relative`` (+/- delta x value)."""

    kind: Literal["absolute", "relative"]
    delta: float = Field(gt=0)


class RobustnessGate(_SkippableGate):
    """Prediction flip rate under small realistic perturbations of numeric features."""

    enabled: bool = True
    max_flip_rate: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Largest share of rows whose decision (class) changes; for a regression, whose "
        "prediction moves by more than ``tolerance``.",
    )
    perturbations: dict[str, Perturbation] = Field(default_factory=dict)
    tolerance: Perturbation | None = Field(
        None,
        description="regression (required): how far a prediction may move under a perturbation before the "
        "row counts as moved: absolute (target units) or relative (a share of the prediction).",
    )
    not_applicable_because: str | None = Field(
        default=None,
        description="Why this enabled gate has nothing to check for this pipeline; recorded as the "
        "gate's not_applicable reason. Required when the spec gives the gate nothing to check.",
    )


class OnnxGate(_Strict):
    """ONNX parity with scikit-learn on the full test set, and single-row latency."""

    enabled: bool = True
    max_abs_diff: float = Field(
        1e-4,
        gt=0,
        description="Largest |ONNX - scikit-learn| probability; for a regression, see max_rel_diff.",
    )
    max_rel_diff: float = Field(
        1e-4,
        gt=0,
        description="regression: largest |ONNX - scikit-learn| / max(1, |scikit-learn|) per prediction "
        "(absolute for small targets, relative for large ones).",
    )
    min_label_agreement: float = Field(0.999, ge=0, le=1)
    max_p99_latency_ms: float = Field(5.0, gt=0)


class Gates(_Strict):
    """Gate thresholds; each gate records its result in the candidate's blessing."""

    evaluation: EvaluationGate = Field(default_factory=EvaluationGate)
    champion: ChampionGate = Field(default_factory=ChampionGate)
    business: BusinessGate = Field(default_factory=BusinessGate)
    fairness: FairnessGate = Field(default_factory=FairnessGate)
    explainability: ExplainabilityGate = Field(default_factory=ExplainabilityGate)
    robustness: RobustnessGate = Field(default_factory=RobustnessGate)
    onnx: OnnxGate = Field(default_factory=OnnxGate)

    def enabled(self) -> list[str]:
        """Names of the gates that are on (evaluation always is)."""
        return ["evaluation"] + [
            name
            for name in ("champion", "business", "fairness", "explainability", "robustness", "onnx")
            if getattr(self, name).enabled
        ]


class Window(_Strict):
    """How much traffic a rollout phase needs, and how long it may wait for it."""

    min_requests: int = Field(
        500, ge=1, description="Challenger-scored requests the phase needs before it can pass."
    )
    max_duration_minutes: float = Field(
        60, gt=0, description="If the phase has not seen min_requests by then, it fails: too little evidence."
    )


class InfraValidation(_Strict):
    """The candidate in a sandboxed service (own process, port and log) before any traffic."""

    requests: int = Field(200, ge=10, le=10000, description="Valid single-row requests sent to the sandbox.")
    max_p99_latency_ms: float = Field(
        50.0, gt=0, description="p99 of those requests over loopback HTTP, log commit included."
    )


class Shadow(Window):
    """The candidate as challenger in shadow mode: scores a mirror of the traffic, never answers."""

    max_decision_disagreement: float = Field(
        0.10, ge=0, le=1, description="Share of requests whose decision differs from the champion's."
    )
    max_mean_abs_delta: float = Field(
        0.05, ge=0, le=1, description="Mean |challenger probability - champion probability| per request."
    )
    max_mean_relative_delta: float = Field(
        0.05,
        ge=0,
        description="regression: mean |challenger - champion| / max(1, |champion|) of the predictions.",
    )
    max_p99_latency_ms: float = Field(5.0, gt=0, description="p99 of the challenger's model latency.")
    max_error_rate: float = Field(
        0.0, ge=0, le=1, description="Challenger failures per mirrored request (scored or failed)."
    )


class CanaryStep(Window):
    """One traffic step: ``weight`` of the entities go to the challenger until the window is done."""

    weight: float = Field(gt=0, le=1)


class Guardrails(_Strict):
    """Checked on every interval of every canary step, on the step's traffic so far."""

    max_error_rate: float = Field(0.01, ge=0, le=1, description="Challenger failures per routed request.")
    max_p99_latency_ms: float = Field(5.0, gt=0, description="p99 of the challenger's model latency.")
    max_score_psi: float = Field(
        0.2, ge=0, description="PSI of the challenger's scores against the champion's in the same step."
    )
    min_requests_per_check: int = Field(
        50, ge=1, description="Rows per variant a check needs before the rates above are judged."
    )
    min_rows_for_psi: int = Field(
        400,
        ge=50,
        description="Rows per variant before the PSI is judged: with 10 bins and n rows per side, two "
        "samples of one distribution already differ by a PSI of about 18/n (0.36 at n=50, 0.045 at 400).",
    )
    metric: Literal["brier", "log_loss", "error_rate", "squared_error", "absolute_error"] | None = Field(
        None,
        description="Per-row loss compared once feedback labels arrive (lower is better): brier (the "
        "default), log_loss or error_rate for a binary model; log_loss (the default) or error_rate for a "
        "multiclass one; squared_error (the default) or absolute_error for a regression.",
    )
    max_metric_degradation: float = Field(
        0.02,
        ge=0,
        description="Challenger mean loss minus champion's that counts as worse; for a regression, a share "
        "of the champion's mean loss (0.02 = 2% worse).",
    )
    confidence: float = Field(
        0.95, gt=0.5, lt=1, description="One-sided Welch t-test confidence at each step's final look."
    )
    interim_confidence: float = Field(
        0.999,
        gt=0.5,
        lt=1,
        description="Confidence of the looks before a step ends (every check_interval_seconds): "
        "stricter, so that looking often does not multiply false rollbacks (Haybittle-Peto).",
    )
    min_labelled_per_variant: int = Field(
        200,
        ge=10,
        description="Labelled entities (customers) per variant the test needs, an entity's repeated "
        "requests counted once; fewer: not applicable yet.",
    )

    def loss(self, task: str) -> str:
        """The canary's loss for ``task``: the spec's, or the task's default."""
        return (
            self.metric or {"binary": "brier", "multiclass": "log_loss", "regression": "squared_error"}[task]
        )

    @model_validator(mode="after")
    def _interim_at_least_final(self):
        if self.interim_confidence < self.confidence:
            raise ValueError(
                f"interim_confidence {self.interim_confidence} is below confidence {self.confidence}: "
                "interim looks must be at least as strict as the final one; raise interim_confidence"
            )
        return self


def _default_steps() -> list[CanaryStep]:
    return [CanaryStep(weight=0.1), CanaryStep(weight=0.5)]


class Canary(_Strict):
    steps: list[CanaryStep] = Field(default_factory=_default_steps, min_length=1)
    guardrails: Guardrails = Field(default_factory=Guardrails)

    @field_validator("steps")
    @classmethod
    def _increasing(cls, v: list[CanaryStep]) -> list[CanaryStep]:
        weights = [s.weight for s in v]
        if weights != sorted(set(weights)):
            raise ValueError(f"canary step weights must increase strictly, got {weights}")
        return v


class Approval(_Strict):
    """Who may approve a promotion. Four eyes always: whoever triggered the rollout run or the training
    run that registered the version may not approve it, whatever the lists below say."""

    timeout_hours: float = Field(
        24, gt=0, description="After this the default applies: reject, and the candidate is rolled back."
    )
    approvers: list[str] = Field(
        default_factory=list,
        description="Airflow user names that may approve (the Required Action's assigned users). "
        "Empty, with no role: anyone Airflow lets answer a Required Action.",
    )
    role: Literal["user", "op", "admin"] | None = Field(
        None,
        description="Users with this Airflow role or a higher one may approve, besides the approvers "
        "named. Needs Airflow's simple auth manager, whose user list says each user's role; with another "
        "auth manager (SSO), name the approvers.",
    )

    @field_validator("approvers")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        bad = [n for n in v if not n.strip() or n != n.strip()]
        if bad:
            raise ValueError(f"approver names must be non-empty with no surrounding spaces, got {bad}")
        if len(set(v)) != len(v):
            raise ValueError(f"approvers are named twice: {sorted({n for n in v if v.count(n) > 1})}")
        return v


class Rollout(_Strict):
    """How a candidate earns production traffic (``<pipeline>__rollout``)."""

    check_interval_seconds: float = Field(
        60, ge=1, le=3600, description="How often shadow and canary read the prediction log."
    )
    infra: InfraValidation = Field(default_factory=InfraValidation)
    shadow: Shadow = Field(default_factory=Shadow)
    canary: Canary = Field(default_factory=Canary)
    approval: Approval = Field(default_factory=Approval)


class DriftCheck(_Strict):
    """Data and prediction drift of an interval's traffic against the champion's training snapshot.

    PSI per feature on the reference's bins (numeric: deciles; categorical: one bin per category,
    plus unseen and missing). With n rows, two samples of one distribution differ by a PSI of about
    (bins - 1) / n: below ``min_rows`` the interval is not judged."""

    max_feature_psi: float = Field(0.25, gt=0, description="A feature whose PSI exceeds this has drifted.")
    max_prediction_psi: float = Field(
        0.25, gt=0, description="The champion's scores against its scores on the held-out test split."
    )
    min_rows: int = Field(500, ge=100, description="Served rows an interval needs before drift is judged.")
    report_sample_rows: int = Field(
        5000,
        ge=200,
        le=200000,
        description="Rows (of the interval and of the reference) in the Evidently report stored with the run.",
    )


class PerformanceCheck(_Strict):
    """Live performance and the business KPI from feedback labels. Labels arrive late: the check looks
    at predictions made between ``label_delay_hours + window_hours`` and ``label_delay_hours`` ago,
    whose labels had time to arrive."""

    label_delay_hours: float = Field(24, ge=0, le=24 * 90)
    window_hours: float = Field(24, gt=0, le=24 * 90)
    min_labelled: int = Field(
        200, ge=20, description="Labelled predictions the window needs; fewer: not judged."
    )
    max_roc_auc_drop: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Live ROC AUC below the version's test ROC AUC by more than this breaches.",
    )
    max_macro_f1_drop: float = Field(
        0.05,
        ge=0,
        le=1,
        description="multiclass: live macro F1 below the version's test macro F1 by more than this breaches.",
    )
    max_rmse_increase: float = Field(
        0.1,
        ge=0,
        description="regression: live RMSE above the version's test RMSE by more than this share of it "
        "(0.1 = 10% worse) breaches.",
    )
    max_kpi_drop: float = Field(
        0.25,
        ge=0,
        description="Live value per 1,000 predictions below the version's test value by more than this "
        "fraction of it breaches.",
    )
    sustained_checks: int = Field(
        3,
        ge=1,
        le=168,
        description="Consecutive breaching checks before a performance drop triggers retraining.",
    )


class _MonitorCheck(_Strict):
    """What a monitor check shares: whether it runs, how many rows it needs, what a breach does."""

    enabled: bool = True
    trigger: Literal["alert", "retrain"] = Field(
        "alert",
        description="What a breach does: alert (recorded and alerted, no retrain) or retrain (also "
        "triggers retraining like drift, under the same cool-down).",
    )


class LiveFairnessCheck(_MonitorCheck):
    """Fairness on the live labelled window (bias drift): the training gate's fairlearn metrics on the
    labelled rows of the performance window, joined to the lake's sensitive attributes by hashed
    entity key. A gap breaches when it is outside the training gate's bound (``gates.fairness``), or,
    with ``margin`` set, when it is worse than the version's own training gap by more than ``margin``."""

    min_rows: int = Field(
        200, ge=20, description="Labelled rows with a known group the window needs; fewer: not judged."
    )
    min_group_rows: int = Field(
        30,
        ge=1,
        description="Groups with fewer labelled rows are reported but left out of the gaps (noise).",
    )
    margin: float | None = Field(
        None,
        ge=0,
        description="Also breach when a live gap is worse than the version's training gap by more than "
        "this (the tighter of the two bounds applies). Empty: the gate's bound only.",
    )


class AttributionCheck(_MonitorCheck):
    """Feature-attribution drift: SHAP global importance of a sample of the interval's served rows
    (the training gate's explainer, on the version's scikit-learn model) against the version's
    training importance, as Spearman rank correlation over the union of both top-k features."""

    min_rows: int = Field(200, ge=20, description="Served rows an interval needs; fewer: not judged.")
    sample_rows: int = Field(
        300, ge=20, le=5000, description="Served rows explained (a seeded uniform sample of the interval)."
    )
    top_k: int = Field(5, ge=2, le=50, description="Top features of each ranking compared.")
    min_rank_correlation: float = Field(
        0.5, ge=-1, le=1, description="Spearman correlation of the two rankings below this breaches."
    )


class DataQualityCheck(_MonitorCheck):
    """Data quality of the served inputs per interval, against the version's training profile: null
    rate per feature, numeric values outside the expectation suite's (or else the training) range,
    categorical values the training rows never had."""

    min_rows: int = Field(100, ge=10, description="Served rows an interval needs; fewer: not judged.")
    max_null_rate_increase: float = Field(
        0.05, ge=0, le=1, description="A feature's null rate above its training null rate by more than this."
    )
    max_out_of_range_share: float = Field(
        0.01, ge=0, le=1, description="Share of a numeric feature's values outside its allowed range."
    )
    max_unseen_share: float = Field(
        0.01, ge=0, le=1, description="Share of a categorical feature's values its training rows never had."
    )


class Monitoring(_Strict):
    """``<pipeline>__monitor``: the served traffic watched, alerts, and drift-triggered retraining."""

    schedule: str = Field("@hourly", description="Cron of the monitor; each run checks its data interval.")
    drift: DriftCheck = Field(default_factory=DriftCheck)
    performance: PerformanceCheck = Field(default_factory=PerformanceCheck)
    fairness: LiveFairnessCheck = Field(default_factory=LiveFairnessCheck)
    attribution: AttributionCheck = Field(default_factory=AttributionCheck)
    data_quality: DataQualityCheck = Field(default_factory=DataQualityCheck)
    cooldown_hours: float = Field(
        24,
        ge=0,
        le=24 * 90,
        description="After a breach triggers retraining (or an alert), further breaches within this time "
        "are recorded but trigger nothing: one drift episode, one retrain.",
    )
    alert_connection: str = Field(
        "slipway_alerts",
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Airflow connection of the alerts: type http (a webhook, JSON POST) or smtp (the "
        "e-mail goes to the connection's extra 'to'). Without it alerts are logged as warnings.",
    )

    @field_validator("schedule")
    @classmethod
    def _cron(cls, v: str) -> str:
        return _check_cron(v)


class Feedback(_Strict):
    """Ground-truth labels sent to the service (``POST /v1/<pipeline>/feedback``): they enter the next
    training snapshot, so each API key may send only so many."""

    max_labels_per_key_per_hour: int = Field(
        50_000,
        ge=1,
        le=10_000_000,
        description="Labels one API key may record for this pipeline in any hour; beyond, 429. A leaked "
        "feedback key can then add at most this many labels an hour, each recorded with its key id.",
    )


class Retirement(_Strict):
    """``<pipeline>__retire``: which versions are archived (aliases removed, tagged retired with the
    reason; artifacts, model card, lineage and logged predictions kept). Never ``champion``,
    ``previous``, ``challenger``, ``candidate``, nor a version whose rollout is under way."""

    schedule: str = Field("@daily", description="Cron of the retirement DAG.")
    not_served_days: float = Field(
        90,
        gt=0,
        description="Retire a version that served no prediction for this many days (or never, since registered).",
    )
    keep_newest: int = Field(
        5, ge=1, description="Retire a version once this many newer versions of the pipeline are registered."
    )
    below_floor_checks: int = Field(
        6,
        ge=1,
        description="Retire a version whose last this-many monitor checks as champion were all performance "
        "breaches (it has since been replaced: a champion is never retired).",
    )

    @field_validator("schedule")
    @classmethod
    def _cron(cls, v: str) -> str:
        return _check_cron(v)


class Retention(_Strict):
    """How long the pipeline keeps what it logged and scored; the retirement DAG's daily
    ``purge_expired`` deletes what is older (counts on its MLflow run). Empty (null): kept forever.
    The defaults, 400 days, hold a year of monthly comparisons (this month against the same month
    last year) plus a month's margin for late labels and re-runs."""

    prediction_log_days: int | None = Field(
        400,
        ge=1,
        description="Days the prediction log keeps served and batch-scored rows and the rows a model "
        "could not score (by when they were made). Null: kept forever.",
    )
    feedback_days: int | None = Field(
        400,
        ge=1,
        description="Days the prediction log keeps feedback labels (by when they were received). Null: "
        "kept forever.",
    )
    scores_days: int | None = Field(
        400,
        ge=1,
        description="Days the lake keeps a scored month's files (<lake>/<pipeline>/scores/month=M/), "
        "counted from the end of the month. Only the lake's files: the rows delivered to "
        "scoring.deliver tables are not touched by the purge (their owners keep them by their own "
        "rules). Null: kept forever.",
    )


_TABLE = re.compile(r"^([a-z_][a-z0-9_]{0,62}\.)?[a-z_][a-z0-9_]{0,62}$")


class Delivery(_Strict):
    """Where else a scored month goes: a table reached through an Airflow connection, upserted by
    entity key and month (a re-run or a new champion replaces the month's rows, others are kept)."""

    connection: str = Field(
        description="Airflow connection id, of type postgres (the scores upserted into `table`).",
        min_length=1,
        max_length=250,
    )
    table: str = Field(
        description="Table to upsert into, `name` or `schema.name` (lower case); created if missing."
    )

    @field_validator("table")
    @classmethod
    def _table(cls, v: str) -> str:
        if not _TABLE.match(v):
            raise ValueError(f"must be a lower-case table name or schema.table, got {v!r}")
        return v


class Scoring(_Strict):
    """``<pipeline>__score``: a population scored with the champion (or a named version), written to
    ``<lake>/<pipeline>/scores/month=M/version=N/`` and delivered where ``deliver`` says."""

    schedule: str = Field(
        "landed",
        description="When: `landed` (after each batch the training DAG ingests, through the asset "
        "`<pipeline>__landed`), `manual` (from the trigger form only), or a cron expression (the month "
        "in which the run's data interval starts).",
    )
    population: str | None = Field(
        None,
        description="File name in the landing zone's <pipeline>/ folder holding the month's population, "
        "with {month}, e.g. 'customers-{month}.parquet'. Default: the month's landed batch (source.batch_name).",
    )
    max_reject_share: float = Field(
        0.01,
        ge=0,
        le=1,
        description="A run whose share of rows failing the service's checks is above this fails with the "
        "reasons (the rejects file is written either way; the scores are not published).",
    )
    chunk_rows: int = Field(
        50_000, ge=1_000, le=1_000_000, description="Rows read and scored at a time (bounds the memory)."
    )
    log_share: float = Field(
        1.0,
        ge=0,
        le=1,
        description="Share of the scored rows recorded in the prediction log (chosen by request id, the "
        "same rows on a re-run): the rows feedback can label and the monitor checks for drift.",
    )
    deliver: list[Delivery] = Field(default_factory=list, description="Tables to upsert the scores into.")

    @field_validator("schedule")
    @classmethod
    def _when(cls, v: str) -> str:
        return v if v in ("landed", "manual") else _check_cron(v)

    @field_validator("population")
    @classmethod
    def _has_month(cls, v: str | None) -> str | None:
        if v is not None and ("{month}" not in v or "/" in v or v.startswith(".")):
            raise ValueError("must be a file name containing {month}, e.g. 'customers-{month}.parquet'")
        return v


class Business(_Strict):
    """The business objective: what a decision is worth, by task.

    binary: acting on a true positive is worth ``offer_acceptance_rate x value_of_true_positive -
    cost_of_action``; on a false positive it costs ``cost_of_action``; not acting is worth 0.
    multiclass: ``value_matrix[truth][decision]``, the value of deciding class *decision* when the
    truth is class *truth* (pairs not named are worth 0); the decision maximises expected value.
    regression: ``cost_per_unit_over`` and ``cost_per_unit_under``, the cost of each unit the
    prediction is above or below the truth; the decision is the prediction shifted to the cost-optimal
    quantile of the validation residuals.
    """

    objective: str = "Expected value of acting on the model's positive predictions"
    value_of_true_positive: float = Field(0.0, ge=0)
    cost_of_action: float = Field(0.0, ge=0)
    offer_acceptance_rate: float = Field(1.0, ge=0, le=1)
    value_matrix: dict[str, dict[str, float]] | None = None

    @field_validator("value_matrix", mode="before")
    @classmethod
    def _matrix_as_text(cls, v: Any) -> Any:
        # Keys are class labels as the batch's text (target.classes): 1 (a YAML number) is "1".
        if isinstance(v, dict) and all(isinstance(row, dict) for row in v.values()):
            return {str(t): {str(d): x for d, x in row.items()} for t, row in v.items()}
        return v

    cost_per_unit_over: float = Field(0.0, ge=0)
    cost_per_unit_under: float = Field(0.0, ge=0)
    unit: str = "USD"


class ModelCard(_Strict):
    """Model-card fields only a person can write; the rest comes from the records."""

    intended_use: str = ""
    users: str = ""
    limitations: str = ""
    ethical_considerations: str = ""


class PipelineSpec(_Strict):
    """One model's pipeline: everything a data engineer decides, nothing about where it runs."""

    name: str
    description: str
    owner: str = "slipway"
    tags: list[str] = Field(default_factory=list)
    source: Source = Field(default_factory=Source)
    task: Task = Field(
        "binary",
        description="binary (a yes/no outcome), multiclass (one of target.classes) or regression (a number). "
        "Every stage follows it: metrics, decision, fairness, explanations, serving, rollout, monitoring.",
    )
    target: Target
    features: Features
    identifiers: dict[str, Literal["drop", "hash"]] = Field(default_factory=dict)
    sensitive_attributes: list[str] = Field(default_factory=list)
    class_imbalance: Literal["none", "balanced"] = "balanced"
    estimator: Estimator
    preprocessing: dict[str, ColumnPreprocessing] = Field(
        default_factory=dict,
        description="Per feature column: imputation, scaling or bins, one-hot with rare categories "
        "grouped, or ordinal with a declared order. Columns not named keep the defaults.",
    )
    split: Split = Field(default_factory=Split)
    schedule: Schedule = Field(default_factory=Schedule)
    gates: Gates = Field(default_factory=Gates)
    business: Business = Field(default_factory=Business)
    model_card: ModelCard = Field(default_factory=ModelCard)
    rollout: Rollout = Field(default_factory=Rollout)
    monitoring: Monitoring = Field(default_factory=Monitoring)
    feedback: Feedback = Field(default_factory=Feedback)
    retirement: Retirement = Field(default_factory=Retirement)
    retention: Retention = Field(default_factory=Retention)
    scoring: Scoring = Field(default_factory=Scoring)
    retries: Retries = Field(default_factory=Retries)
    expectation_suite: str | None = Field(
        default=None, description="Suite file in include/expectations/; defaults to <name>.json"
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v) or "__" in v:
            raise ValueError(
                f"must be lower_snake_case (letters, digits, single underscores), 2-63 characters, got {v!r}"
            )
        return v

    @model_validator(mode="after")
    def _columns_consistent(self) -> PipelineSpec:
        feats = self.features.all
        dupes = sorted({c for c in feats if feats.count(c) > 1})
        if dupes:
            raise ValueError(f"features lists {dupes} more than once")
        if self.target.column in feats:
            raise ValueError(f"target.column {self.target.column!r} is also listed as a feature")
        leaked = sorted(set(self.identifiers) & set(feats))
        if leaked:
            raise ValueError(f"identifier columns {leaked} must not be features")
        unknown = sorted(set(self.gates.robustness.perturbations) - set(self.features.numeric))
        if unknown:
            raise ValueError(
                f"gates.robustness.perturbations names {unknown}, which are not numeric features "
                f"(numeric features: {self.features.numeric})"
            )
        for col, prep in self.preprocessing.items():
            if col not in feats:
                raise ValueError(f"preprocessing names {col!r}, which is not a feature (features: {feats})")
            if col in self.features.categorical and prep.numeric_options:
                raise ValueError(
                    f"preprocessing.{col}: {col!r} is categorical; impute, scale and bins are for numeric "
                    "and binary columns (use encode, order, min_frequency or max_categories)"
                )
            if col not in self.features.categorical and prep.categorical_options:
                raise ValueError(
                    f"preprocessing.{col}: {col!r} is numeric or binary; encode, order, min_frequency and "
                    "max_categories are for categorical columns (use impute, scale or bins)"
                )
        return self

    @model_validator(mode="after")
    def _task_consistent(self) -> PipelineSpec:
        problems = _task_problems(self)
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @model_validator(mode="after")
    def _authored_rules(self, info: ValidationInfo) -> PipelineSpec:
        # Rules about what a spec *file* may say (see parse_spec). A spec built in code with
        # model_validate (a unit test's minimal spec, a re-validated copy) skips them.
        if (info.context or {}).get("spec_file"):
            problems = _authoring_problems(self)
            if problems:
                raise ValueError("\n".join(problems))
        return self

    @property
    def entity_column(self) -> str | None:
        """The column that identifies an entity (splits and duplicate checks key on it): the first
        identifier with action ``hash``, or None."""
        return next((col for col, action in self.identifiers.items() if action == "hash"), None)

    @property
    def estimator_path(self) -> str:
        """Dotted path of the estimator class: ``estimator.kind`` read under the spec's task."""
        return ESTIMATORS_BY_TASK[self.task][self.estimator.kind]

    @property
    def balanced(self) -> bool:
        """Whether classes are re-weighted in training (never for a regression)."""
        return self.task != "regression" and self.class_imbalance == "balanced"

    @property
    def suite_file(self) -> str:
        """File name of the expectation suite."""
        return self.expectation_suite or f"{self.name}.json"

    @property
    def required_columns(self) -> list[str]:
        """Columns every batch must carry."""
        cols = [*self.identifiers, self.target.column, *self.features.all, *self.sensitive_attributes]
        return list(dict.fromkeys(cols))

    def dag_id(self, purpose: str) -> str:
        """``<pipeline>__<purpose>``."""
        return f"{self.name}__{purpose}"

    def default_args(self) -> dict[str, Any]:
        """The ``default_args`` of the pipeline's DAGs: owner and retries (capped exponential backoff)."""
        return {"owner": self.owner, **self.retries.default_args()}


# Type names as a Great Expectations suite spells them for a pandas batch (type_ of
# expect_column_values_to_be_of_type): the numpy dtype of a typed column, ``str`` for text held in
# an object column. ``int64|str``: int64 when every value of the batch is a whole number, else str.
SENSITIVE_TYPE = "int64|str"


#: The lake column holding each row's split (train/validation/test), assigned at ingest from the
#: raw entity id, so every installation splits the same data the same way whatever its PII key.
SPLIT_COLUMN = "slipway_split"


def post_ingest_schema(spec: PipelineSpec) -> dict[str, str]:
    """The columns ingest writes to the lake, in order, and their types (see ``conform_batch``).

    Dropped identifiers are absent; hashed identifiers are hex strings; numeric features are
    float64 and binary ones int64; categorical features and the target are str; sensitive
    attributes are int64 when every value is a whole number, else str; with an entity identifier,
    ``slipway_split`` (train/validation/test) follows; ``batch_month`` (YYYY-MM) is added last.
    """
    schema: dict[str, str] = {}
    # Same precedence as conform_batch: identifier, numeric/binary feature, sensitive attribute,
    # target, categorical feature.
    for col in spec.required_columns:
        if col in spec.identifiers:
            if spec.identifiers[col] == "hash":
                schema[col] = "str"
        elif col in spec.features.numeric:
            schema[col] = "float64"
        elif col in spec.features.binary:
            schema[col] = "int64"
        elif col in spec.sensitive_attributes:
            schema[col] = SENSITIVE_TYPE
        elif col == spec.target.column and spec.task == "regression":
            schema[col] = "float64"
        else:  # the target of a classifier (written as text) or a categorical feature
            schema[col] = "str"
    if spec.entity_column is not None:
        schema[SPLIT_COLUMN] = "str"
    schema["batch_month"] = "str"
    return schema


# Fields that mean something for some tasks only: (section, field) -> the tasks it belongs to.
_TASK_FIELDS: dict[tuple[str, str], tuple[str, ...]] = {
    **{("target", f): t for f, t in (("positive_label", ("binary",)), ("classes", ("multiclass",)))},
    ("target", "range"): ("regression",),
    **{("gates.evaluation", f): ("binary",) for f in ("min_roc_auc", "min_pr_auc", "min_f1", "max_brier")},
    **{
        ("gates.evaluation", f): ("multiclass",)
        for f in ("max_log_loss", "min_macro_f1", "min_balanced_accuracy", "min_class_recall")
    },
    **{("gates.evaluation", f): ("regression",) for f in ("max_mae", "max_rmse", "min_r2")},
    ("gates.champion", "max_brier_increase"): ("binary",),
    **{
        ("gates.fairness", f): ("binary",)
        for f in (
            "max_demographic_parity_difference",
            "min_disparate_impact_ratio",
            "max_equal_opportunity_difference",
            "max_equalized_odds_difference",
            "max_predictive_parity_difference",
            "mitigation",
        )
    },
    **{
        ("gates.fairness", f): ("multiclass",)
        for f in ("max_selection_rate_difference", "max_macro_recall_difference")
    },
    **{
        ("gates.fairness", f): ("regression",) for f in ("max_mae_difference", "max_mean_residual_difference")
    },
    ("gates.robustness", "tolerance"): ("regression",),
    ("gates.onnx", "max_abs_diff"): ("binary", "multiclass"),
    ("gates.onnx", "min_label_agreement"): ("binary", "multiclass"),
    ("gates.onnx", "max_rel_diff"): ("regression",),
    **{
        ("business", f): ("binary",)
        for f in ("value_of_true_positive", "cost_of_action", "offer_acceptance_rate")
    },
    ("business", "value_matrix"): ("multiclass",),
    **{("business", f): ("regression",) for f in ("cost_per_unit_over", "cost_per_unit_under")},
    ("", "class_imbalance"): ("binary", "multiclass"),
    ("rollout.shadow", "max_decision_disagreement"): ("binary", "multiclass"),
    ("rollout.shadow", "max_mean_abs_delta"): ("binary", "multiclass"),
    ("rollout.shadow", "max_mean_relative_delta"): ("regression",),
    ("monitoring.performance", "max_roc_auc_drop"): ("binary",),
    ("monitoring.performance", "max_macro_f1_drop"): ("multiclass",),
    ("monitoring.performance", "max_rmse_increase"): ("regression",),
}

# The canary losses each task can compute.
_TASK_LOSSES = {
    "binary": ("brier", "log_loss", "error_rate"),
    "multiclass": ("log_loss", "error_rate"),
    "regression": ("squared_error", "absolute_error"),
}


def _section(spec: PipelineSpec, path: str) -> Any:
    node: Any = spec
    for part in filter(None, path.split(".")):
        node = getattr(node, part)
    return node


def _default(model: BaseModel, name: str) -> Any:
    field = type(model).model_fields[name]
    return field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]


def _task_problems(spec: PipelineSpec) -> list[str]:
    """Where the spec contradicts its ``task``; each line is ``<field path> <problem>; <fix>``."""
    task, target = spec.task, spec.target
    problems: list[str] = []
    for (path, name), tasks in _TASK_FIELDS.items():
        section = _section(spec, path)
        # Set to something other than its default (a spec dumped and validated again sets every field).
        if (
            task not in tasks
            and name in section.model_fields_set
            and getattr(section, name) != _default(section, name)
        ):
            where = f"{path}.{name}" if path else name
            problems.append(
                f"{where} applies to task {' or '.join(tasks)}, not to task {task}; remove it, or set "
                f"task: {tasks[0]} if that is the problem"
            )
    if task == "binary" and target.positive_label is None:
        problems.append(
            "target.positive_label is required for task binary: the value of "
            f"{target.column!r} that means yes (or set task: multiclass with target.classes, or "
            "task: regression for a number)"
        )
    if task == "multiclass":
        if not target.classes:
            problems.append(
                f"target.classes is required for task multiclass: list every value {target.column!r} may hold"
            )
        elif len(target.classes) < 3:
            problems.append(
                f"target.classes lists {len(target.classes)} classes; a multiclass task needs at least 3 "
                "(for two, set task: binary with target.positive_label)"
            )
    allowed = ESTIMATORS_BY_TASK[task]
    kind = spec.estimator.kind
    if kind not in allowed:
        other = next(t for t in TASKS if kind in ESTIMATORS_BY_TASK[t])
        problems.append(
            f"estimator.kind {kind!r} is a {'regressor' if other == 'regression' else 'classifier'} "
            f"(task {other}), but the spec's task is {task}; pick one of {sorted(allowed)}, or set "
            f"task: {other} if the target is {'a number' if other == 'regression' else 'a class'}"
        )
    loss = spec.rollout.canary.guardrails.metric
    if loss is not None and loss not in _TASK_LOSSES[task]:
        problems.append(
            f"rollout.canary.guardrails.metric {loss!r} is not a loss of task {task}; use one of "
            f"{list(_TASK_LOSSES[task])}"
        )
    bounds = spec.gates.champion.max_regression or {}
    foreign = sorted(set(bounds) - set(CHAMPION_METRICS[task]))
    if foreign:
        problems.append(
            f"gates.champion.max_regression names {foreign}, which task {task} does not measure; "
            f"use {sorted(CHAMPION_METRICS[task])}"
        )
    matrix = spec.business.value_matrix
    if matrix is not None and target.classes:
        named = set(matrix) | {d for row in matrix.values() for d in row}
        unknown = sorted(named - set(target.classes))
        if unknown:
            problems.append(
                f"business.value_matrix names {unknown}, which are not in target.classes "
                f"{target.classes}; rows are the true class, columns the decided class"
            )
    return problems


def _vacuous_gates(spec: PipelineSpec) -> dict[str, tuple[str, str]]:
    """Gates with nothing to check under this spec: name -> (why, what would give it something)."""
    g = spec.gates
    out: dict[str, tuple[str, str]] = {}
    if not spec.sensitive_attributes:
        out["fairness"] = ("the spec lists no sensitive_attributes", "list them under sensitive_attributes")
    if not g.explainability.forbidden_features and not spec.sensitive_attributes:
        out["explainability"] = (
            "no gates.explainability.forbidden_features, and no sensitive_attributes for the proxy probe",
            "list sensitive_attributes or forbidden_features",
        )
    if not g.robustness.perturbations:
        out["robustness"] = (
            "no gates.robustness.perturbations",
            "declare perturbations of numeric features under gates.robustness.perturbations",
        )
    if spec.task == "regression" and spec.sensitive_attributes:
        missing = [
            f
            for f in ("max_mae_difference", "max_mean_residual_difference")
            if getattr(g.fairness, f) is None
        ]
        if missing:
            out["fairness"] = (
                f"a regression's fairness bounds are in target units and the spec sets no {' or '.join(missing)}",
                f"set gates.fairness.{' and gates.fairness.'.join(missing)} (the gap between groups "
                "you accept, in target units)",
            )
    if spec.task == "regression" and g.robustness.perturbations and g.robustness.tolerance is None:
        out["robustness"] = (
            "a regression's prediction always moves a little; no gates.robustness.tolerance says how far "
            "is too far",
            "set gates.robustness.tolerance: {kind: relative, delta: 0.05} (or absolute, in target units)",
        )
    if not has_value_model(spec) and g.business.min_value_per_1000 is None:
        out["business"] = (
            f"no value model ({_VALUE_FIELDS[spec.task]}) and no gates.business.min_value_per_1000",
            "declare the value model under business",
        )
    return out


_VALUE_FIELDS = {
    "binary": "business.value_of_true_positive and business.cost_of_action are 0",
    "multiclass": "no business.value_matrix",
    "regression": "business.cost_per_unit_over and business.cost_per_unit_under are 0",
}


def has_value_model(spec: PipelineSpec) -> bool:
    """False when the spec declares no costs or benefits for its task (every decision is then worth 0)."""
    b = spec.business
    if spec.task == "multiclass":
        return any(v for row in (b.value_matrix or {}).values() for v in row.values())
    if spec.task == "regression":
        return b.cost_per_unit_over > 0 or b.cost_per_unit_under > 0
    return b.value_of_true_positive > 0 or b.cost_of_action > 0


def _authoring_problems(spec: PipelineSpec) -> list[str]:
    """What a spec file must not say; each line is ``<field path> <problem>; <fix>``."""
    problems: list[str] = []
    vacuous = _vacuous_gates(spec)
    for name in ("business", "fairness", "explainability", "robustness"):
        gate = getattr(spec.gates, name)
        if name in vacuous and gate.enabled and gate.not_applicable_because is None:
            why, add = vacuous[name]
            problems.append(
                f"gates.{name} is enabled but has nothing to check: {why}; {add}, or set "
                f"gates.{name}.enabled: false, or keep it and record why with "
                f'gates.{name}.not_applicable_because: "<why>"'
            )
        elif name not in vacuous and gate.not_applicable_because is not None:
            problems.append(
                f"gates.{name}.not_applicable_because is set, but the gate has something to check "
                "under this spec; remove it"
            )
    features = spec.features.all
    non_inputs = [f for f in spec.gates.explainability.forbidden_features if f not in features]
    if non_inputs:
        problems.append(
            f"gates.explainability.forbidden_features lists {non_inputs}, which are not model inputs "
            "(not under features), so their SHAP rank can never fail the gate; remove them from "
            "forbidden_features (sensitive attributes are covered by the proxy probe: list them under "
            "sensitive_attributes)"
        )
    both = [c for c in spec.sensitive_attributes if c in features]
    if both:
        problems.append(
            f"sensitive_attributes {both} are also listed as features; remove them from features "
            "(the model must not see them) or from sensitive_attributes"
        )
    ids = [c for c in spec.sensitive_attributes if c in spec.identifiers]
    if ids:
        problems.append(
            f"sensitive_attributes {ids} are identifiers, which ingest hashes or drops, so no group "
            "survives to be compared; remove them from sensitive_attributes or from identifiers"
        )
    if spec.target.column in spec.sensitive_attributes:
        problems.append(
            f"sensitive_attributes lists the target column {spec.target.column!r}; remove it from "
            "sensitive_attributes"
        )
    return problems


def _format_error(file: str, exc: ValidationError) -> str:
    lines: list[str] = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if not loc:
            # A rule over several fields: its message starts with the field path, and the input
            # is the whole spec (not worth echoing).
            lines.extend(f"spec {file}: {line}" for line in msg.splitlines())
            continue
        if err["type"] == "missing":
            msg = "is required but missing"
        elif err["type"] == "extra_forbidden":
            msg = "is not a known field (check the spelling)"
        else:
            msg = f"{msg}, got {err.get('input')!r}" if "got" not in msg else msg
        lines.append(f"spec {file}: {loc} {msg}")
    return "\n".join(lines)


# YAML 1.1 (PyYAML's dialect) reads these plain words as booleans. true/false are meant as booleans.
_YAML11_TRUE = {"y", "Y", "yes", "Yes", "YES", "on", "On", "ON"}
_YAML11_FALSE = {"n", "N", "no", "No", "NO", "off", "Off", "OFF"}


def _mapping_value(node: Any, key: str) -> Any:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key:
                return v
    return None


def _load_yaml(text: str) -> tuple[Any, Any]:
    """The document's node tree and its value, from one parse (what ``yaml.safe_load`` does inside)."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        return root, (loader.construct_document(root) if root is not None else None)
    finally:
        loader.dispose()


def _check_yaml_booleans(root: Any, file: str) -> None:
    """``positive_label: Yes`` unquoted is YAML's boolean true, never the label text ``"Yes"``."""
    node = _mapping_value(_mapping_value(root, "target"), "positive_label")
    if not isinstance(node, yaml.ScalarNode) or node.style is not None:
        return  # absent, or quoted (or a block scalar): taken as written
    word = node.value
    if word not in _YAML11_TRUE | _YAML11_FALSE:
        return
    truth = "true" if word in _YAML11_TRUE else "false"
    # PyYAML resolves yes/no/on/off as booleans; y/n it keeps as text, but YAML 1.1 (and other tools
    # reading the same file) take them as booleans too.
    reader = "YAML" if node.tag == "tag:yaml.org,2002:bool" else "YAML 1.1"
    raise SpecError(
        f"spec {file}: target.positive_label is the unquoted YAML word {word!r}, which {reader} reads "
        f'as the boolean {truth}; quote it: positive_label: "{word}"'
    )


def parse_spec(text: str, file: str = "<string>") -> PipelineSpec:
    """Validate YAML text into a :class:`PipelineSpec`, or raise :class:`SpecError`.

    Beyond the typed model, a spec file must not contain vacuous gates (an enabled gate with nothing
    to check, unless ``not_applicable_because`` says why), forbidden features that are not model
    inputs, sensitive attributes that are features, or an unquoted ``positive_label: Yes``.
    """
    try:
        root, raw = _load_yaml(text)
    except yaml.YAMLError as exc:
        raise SpecError(
            f"spec {file}: not valid YAML ({exc}); fix the syntax at the position shown"
        ) from None
    if not isinstance(raw, dict):
        raise SpecError(
            f"spec {file}: expected a mapping of fields at the top level, got {type(raw).__name__}"
        )
    _check_yaml_booleans(root, file)
    try:
        spec = PipelineSpec.model_validate(raw, context={"spec_file": True})
    except ValidationError as exc:
        raise SpecError(_format_error(file, exc)) from None
    stem = Path(file).stem
    if file != "<string>" and spec.name != stem:
        raise SpecError(f"spec {file}: name must match the file name {stem!r}, got {spec.name!r}")
    return spec


def load_spec(path: str | Path) -> PipelineSpec:
    """Read and validate one spec file."""
    p = Path(path)
    return parse_spec(p.read_text(encoding="utf-8"), file=p.name)


def spec_path(name: str, pipelines_dir: Path | None = None) -> Path:
    """Path of the spec named ``name``."""
    from include.settings import get_settings

    base = pipelines_dir or get_settings().pipelines_dir
    return base / f"{name}.yaml"


def load_pipeline(name: str) -> PipelineSpec:
    """Load the spec of pipeline ``name`` from the pipelines folder."""
    path = spec_path(name)
    if not path.is_file():
        raise SpecError(f"pipeline {name!r}: no spec at {path}; create {path.name} in {path.parent}")
    return load_spec(path)


def discover(pipelines_dir: Path | None = None) -> tuple[list[PipelineSpec], dict[str, str]]:
    """All specs in the folder: the valid ones, and an error message per invalid file."""
    from include.settings import get_settings

    base = pipelines_dir or get_settings().pipelines_dir
    specs: list[PipelineSpec] = []
    errors: dict[str, str] = {}
    for path in sorted(base.glob("*.y*ml")):
        try:
            specs.append(load_spec(path))
        except SpecError as exc:
            errors[str(path)] = str(exc)
    return specs, errors
