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

# Estimators a spec may name, mapped to their import paths. Each converts to ONNX with skl2onnx.
ESTIMATORS: dict[str, str] = {
    "logistic_regression": "sklearn.linear_model.LogisticRegression",
    "gradient_boosting": "sklearn.ensemble.GradientBoostingClassifier",
    "hist_gradient_boosting": "sklearn.ensemble.HistGradientBoostingClassifier",
    "lightgbm": "lightgbm.LGBMClassifier",  # LightGBM's scikit-learn API; ONNX through onnxmltools
    "random_forest": "sklearn.ensemble.RandomForestClassifier",
    "extra_trees": "sklearn.ensemble.ExtraTreesClassifier",
    "decision_tree": "sklearn.tree.DecisionTreeClassifier",
}

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
    """The label column and which of its values is the positive class."""

    column: str
    positive_label: str | int | bool


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
    """The scikit-learn estimator and its parameters."""

    kind: str
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("kind")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in ESTIMATORS:
            raise ValueError(f"must be one of {sorted(ESTIMATORS)}, got {v!r}")
        return v

    @property
    def import_path(self) -> str:
        """Dotted path of the scikit-learn class."""
        return ESTIMATORS[self.kind]


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
    """Absolute floors on held-out metrics; a candidate below any floor is not registered."""

    min_roc_auc: float = Field(0.5, ge=0, le=1)
    min_pr_auc: float = Field(0.0, ge=0, le=1)
    min_f1: float = Field(0.0, ge=0, le=1)
    max_brier: float = Field(1.0, ge=0, le=1)


ChampionMetric = Literal["roc_auc", "pr_auc", "f1", "precision", "recall"]


def _default_max_regression() -> dict[ChampionMetric, float]:
    return {"roc_auc": 0.005}


class ChampionGate(_Strict):
    """Candidate vs the current champion, both scored on the same current test set."""

    enabled: bool = True
    max_regression: dict[ChampionMetric, float] = Field(default_factory=lambda: _default_max_regression())
    max_brier_increase: float = Field(0.01, ge=0)

    @field_validator("max_regression")
    @classmethod
    def _non_negative(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: x for k, x in v.items() if x < 0 or x > 1}
        if bad:
            raise ValueError(f"allowed drops must be between 0 and 1, got {bad}")
        return v


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
    max_flip_rate: float = Field(0.05, ge=0, le=1)
    perturbations: dict[str, Perturbation] = Field(default_factory=dict)
    not_applicable_because: str | None = Field(
        default=None,
        description="Why this enabled gate has nothing to check for this pipeline; recorded as the "
        "gate's not_applicable reason. Required when the spec gives the gate nothing to check.",
    )


class OnnxGate(_Strict):
    """ONNX parity with scikit-learn on the full test set, and single-row latency."""

    enabled: bool = True
    max_abs_diff: float = Field(1e-4, gt=0)
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
    metric: Literal["brier", "log_loss", "error_rate"] = Field(
        "brier", description="Per-row loss compared once feedback labels arrive (lower is better)."
    )
    max_metric_degradation: float = Field(
        0.02, ge=0, description="Challenger mean loss minus champion's that counts as worse."
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


class Monitoring(_Strict):
    """``<pipeline>__monitor``: the served traffic watched, alerts, and drift-triggered retraining."""

    schedule: str = Field("@hourly", description="Cron of the monitor; each run checks its data interval.")
    drift: DriftCheck = Field(default_factory=DriftCheck)
    performance: PerformanceCheck = Field(default_factory=PerformanceCheck)
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


class Business(_Strict):
    """The business objective as a cost/benefit of acting on a positive prediction.

    Acting on a true positive is worth ``offer_acceptance_rate x value_of_true_positive -
    cost_of_action``; on a false positive it costs ``cost_of_action``; not acting is worth 0.
    """

    objective: str = "Expected value of acting on the model's positive predictions"
    value_of_true_positive: float = Field(0.0, ge=0)
    cost_of_action: float = Field(0.0, ge=0)
    offer_acceptance_rate: float = Field(1.0, ge=0, le=1)
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
        else:  # the target (written as text) or a categorical feature
            schema[col] = "str"
    if spec.entity_column is not None:
        schema[SPLIT_COLUMN] = "str"
    schema["batch_month"] = "str"
    return schema


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
    no_value_model = spec.business.value_of_true_positive == 0 and spec.business.cost_of_action == 0
    if no_value_model and g.business.min_value_per_1000 is None:
        out["business"] = (
            "no value model (business.value_of_true_positive and business.cost_of_action are 0) "
            "and no gates.business.min_value_per_1000",
            "declare the value model under business",
        )
    return out


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
