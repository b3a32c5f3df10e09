"""
### Training: `<pipeline>__train`, one DAG per valid spec in `include/pipelines/`

Every month (the spec's `schedule.cron`) the DAG waits for the month's batch in the landing zone,
ingests it (identifiers hashed), versions the training snapshot with DVC, validates it with the
pipeline's Great Expectations suite and trains the spec's scikit-learn estimator. Then the gates
run side by side (champion and business value, fairness, SHAP explanations and the proxy probe,
robustness, ONNX parity and latency) and `bless_candidate` judges them all at once: it fails
with **every** failed check listed, or the model card is written and the ONNX graph is registered
as a model version with the alias `candidate` (never moved back to an older interval).

**Tasks**, in order: `wait_for_batch` (deferrable sensor) → `ingest_batch` → `curate_feedback`
(labelled predictions from the service's log) → `version_snapshot` (DVC) → `validate_snapshot` (Great Expectations) → `train_model` → `evaluate_model` (threshold,
metric floors, data validation) → side by side: `compare_champion` (champion and business
gates), `check_fairness`, `explain_model` (SHAP, forbidden features, proxy probe),
`check_robustness`, `optimise_onnx` (parity at the decision threshold, latency) →
`bless_candidate` → `write_model_card` → `register_model` (asset `<pipeline>__candidate`).
`ingest_batch` updates the asset `<pipeline>__landed` (the month), on which `<pipeline>__score`
scores the month's population with the champion.

**When it runs.** On the spec's cron (`schedule.cron`), **or** when `<pipeline>__monitor` reports
drift or a sustained performance drop (asset `<pipeline>__drift`, at most once per the monitor's
cool-down). The run's MLflow record (tag `slipway.trigger`: schedule, drift, performance, manual)
and `slipway lineage` say which, with the monitor's evidence.

**Which month a run processes.** The month in which its data interval starts: the scheduled run of
October (interval 2026-10-01 to 2026-11-01, started on 1 November) processes 2026-10. A
drift-triggered run processes the newest month whose batch has landed. To run a
month by hand, trigger the DAG and fill in **month** (`YYYY-MM`) in the trigger form, or send
`{"conf": {"month": "2025-10"}}` with the REST API; without it a manual run processes the period
that ends at its logical date (logical date 2026-01-01: December 2025). Every run's MLflow record
carries the month (`slipway.month`).

**Operating it**
- A red `bless_candidate` is a refused candidate, not an outage: its log lists each failed check
  with value and threshold, and so does the DAG run's MLflow run (tag `slipway.failure`); each
  gate task's MLflow run holds the evidence. Fix the data or the model, or revisit the threshold
  in the spec (a policy decision: say why in the spec), then re-run the month. Nothing was
  registered and no alias moved.
- To re-run a month: clear the DAG run (all its tasks), or trigger a new run with that month.
- A month whose batch has not landed waits (in the triggerer, no worker slot) until the spec's
  `source.deadline_days` after the month ends, then the run is **skipped** with "no batch for
  YYYY-MM". Up to `schedule.max_active_runs` (3) runs are active at once, so a past month can be
  run while the current one waits; registrations are serialised.
- Retries: 2, after 1 then 2 minutes (exponential backoff, capped at 5 minutes also when a
  cleared run's try numbers are high). Deterministic failures (bad batch, failed suite, bad spec, a
  model file that fails its checksum) fail at once.
- Re-running a month reuses the version it registered; `slipway lineage <pipeline>@candidate`
  prints the whole trail.
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import DAG, AssetOrTimeSchedule, CronDataIntervalTimetable, Param, TaskGroup

from include import assets
from include.blocks import train as b
from include.blocks.notify import dag_callbacks
from include.months import MONTH_PATTERN
from include.spec import PipelineSpec, discover

DOC = """\
### {name}: training

{description}

Estimator `{estimator}`, expectation suite `{suite}`, spec `include/pipelines/{name}.yaml`.
Lineage: MLflow experiment `{name}`{mlflow_link}, one run per DAG run with a nested run per task;
`slipway lineage {name}@candidate`.
"""


def _mlflow_link(name: str) -> str:
    """A link to the pipeline's registered model in MLflow when the MLflow UI's address is configured
    (by name: the experiment's id is unknown when the DAG is parsed; the Models view links it by id)."""
    from include.settings import get_settings
    from include.tracking import ui_link

    url = ui_link(get_settings().mlflow_ui_url, f"models/{name}")
    return f" ([open in MLflow]({url}))" if url else ""


def training_dag(spec: PipelineSpec) -> DAG:
    """``<pipeline>__train``: batch -> lake -> DVC -> suite -> model -> gates -> blessing -> registry."""
    name = spec.name
    a = assets.for_pipeline(name)
    with DAG(
        dag_id=spec.dag_id("train"),
        description=f"Train, gate and register a candidate for {name}",
        # The month's cron, or the monitor's drift event (a retrain on the newest landed month).
        schedule=AssetOrTimeSchedule(
            timetable=CronDataIntervalTimetable(spec.schedule.cron, timezone="UTC"), assets=[a.drift]
        ),
        start_date=datetime.combine(spec.schedule.start_date, datetime.min.time(), tzinfo=UTC),
        catchup=spec.schedule.catchup,
        max_active_runs=spec.schedule.max_active_runs,
        default_args=spec.default_args(),
        **dag_callbacks(name),
        tags=["slipway", "train", *spec.tags],
        params={
            "month": Param(
                None,
                type=["null", "string"],
                pattern=MONTH_PATTERN,
                title="Month to process (YYYY-MM)",
                description="For a manual run: the month whose batch to train up to, as YYYY-MM (e.g. "
                "2025-11; a month 01 to 12). Empty: the month in which the run's data interval starts. "
                "Anything else is refused when you press Trigger, and no run starts.",
            )
        },
        doc_md=DOC.format(
            name=name,
            description=spec.description,
            estimator=spec.estimator_path,
            suite=spec.suite_file,
            mlflow_link=_mlflow_link(name),
        )
        + __doc__,
    ) as dag:
        landed = b.wait_for_batch(name)
        ingested = b.ingest_batch(name, outlets=[a.landed])(landed.output)
        versioned = b.version_snapshot(name)(ingested, b.curate_feedback(name)(ingested))
        trained = b.train_model(name)(b.validate_snapshot(name)(versioned))
        evaluated = b.evaluate_model(name)(trained)
        # The gates side by side, one group in the graph; each takes the evaluation (and what it carries).
        with TaskGroup(
            "gates", prefix_group_id=False, tooltip="champion, fairness, explainability, robustness, ONNX"
        ):
            judged = [
                b.compare_champion(name)(evaluated),
                b.check_fairness(name)(evaluated),
                b.explain_model(name)(evaluated),
                b.check_robustness(name)(evaluated),
                b.optimise_onnx(name)(evaluated),
            ]
        blessed = b.bless_candidate(name)(evaluated, *judged)
        # One registration at a time per pipeline: the alias check-then-move is not atomic in MLflow.
        b.register_model(name, outlets=[a.candidate], max_active_tis_per_dag=1)(
            b.write_model_card(name)(blessed)
        )
    return dag


# Invalid specs are skipped here and reported by dags/spec_errors.py, so they never break this file.
for _spec in discover()[0]:
    globals()[_spec.dag_id("train")] = training_dag(_spec)
