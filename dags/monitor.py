"""
### Monitoring: `<pipeline>__monitor`, one DAG per valid spec

Every hour (the spec's `monitoring.schedule`) the DAG checks the traffic the inference service
served in its data interval, as the prediction log recorded it:

1. `check_drift`: each feature of the served requests, and the champion's scores, against the
   champion's reference (its training snapshot, and its scores on the held-out test split): a
   population stability index per feature on the reference's bins. An Evidently drift report of
   a sample of the interval is stored with the task's MLflow run and linked from the model version
   (`slipway.monitor.report_uri`). Too few rows (`drift.min_rows`): not judged.
2. `check_performance`: live ROC AUC and business value per 1,000 predictions from feedback labels,
   on predictions old enough for their labels to have arrived (`performance.label_delay_hours`),
   against the version's test results.
3. `check_fairness`: **bias drift**. The labelled rows of the same window, joined by hashed entity
   key to the sensitive attributes in the lake's landed batches, get the training fairness gate's
   fairlearn gaps per attribute (by task), against the gate's bounds (or the training gap plus
   `fairness.margin`). Rows with no matching entity are counted and reported.
4. `check_attributions`: a sample of the interval's served rows explained with the training
   gate's SHAP explainer; its ranking of the inputs against the training ranking (Spearman over
   the top `attribution.top_k`); below `attribution.min_rank_correlation` breaches.
5. `check_data_quality`: per feature, the null rate (vs training plus a tolerance), the share of
   numeric values outside the expectation suite's (or training) range, and of categories the
   training rows never had.
   Each of 3-5 reports **not judged** with the reason when there is nothing to check (disabled, no
   sensitive attributes, too few rows, no training ranking on record): never a pass.
6. `judge_interval`: records the interval (table `slipway_monitor` in the prediction log's
   database; the service exports it to Prometheus) and decides: a **drift** breach, a breach of a
   check set to `trigger: retrain`, or a performance drop over `performance.sustained_checks`
   consecutive checks, triggers retraining unless it was already triggered within
   `cooldown_hours` (one episode, one retrain). Any breach alerts (the alert names it). Broken
   inputs (a data-quality breach) hold the retrain: a model trained on them would learn them.
7. `send_alert`: through the Airflow connection `monitoring.alert_connection` (type http: a JSON
   POST to a webhook; type smtp: an e-mail to the extra's `to`). Without that connection the alert
   is a **warning in this task's log**, never dropped. Skipped when there is nothing to say.
8. `trigger_retraining`: emits the asset `<pipeline>__drift` with the evidence (cause, window,
   drifted features, the newest landed month); `<pipeline>__train` runs on it besides its cron,
   and its MLflow record and `slipway lineage` show the cause. Skipped unless triggered.

An interval without traffic reports **no traffic**: it neither fails nor alerts. To check the last
N minutes now, trigger the DAG with **minutes** in the trigger form.

**Operating it**: a red task is an outage of the check (prediction log or MLflow unreachable), not
a drift; it is retried. Drift shows as a success with `send_alert` and `trigger_retraining` run.
Read the evidence in the `judge_interval` log, the MLflow run (tags `slipway.monitor.*`; each
check's `monitor/<check>.json`) or the Evidently report.
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import DAG, CronDataIntervalTimetable, Param

from include import assets
from include.blocks import monitor as b
from include.blocks.notify import dag_callbacks
from include.spec import PipelineSpec, discover


def monitor_dag(spec: PipelineSpec) -> DAG:
    """``<pipeline>__monitor``: drift and live performance of each interval; alert; drift asset."""
    name = spec.name
    with DAG(
        dag_id=spec.dag_id("monitor"),
        description=f"Drift, live performance, fairness, attributions and data quality of {name}'s served traffic",
        schedule=CronDataIntervalTimetable(spec.monitoring.schedule, timezone="UTC"),
        start_date=datetime.combine(spec.schedule.start_date, datetime.min.time(), tzinfo=UTC),
        catchup=False,
        max_active_runs=1,  # intervals judged in order: the cool-down reads the earlier ones
        default_args=spec.default_args(),
        **dag_callbacks(name),
        tags=["slipway", "monitor", *spec.tags],
        params={
            "minutes": Param(
                None,
                type=["null", "number"],
                exclusiveMinimum=0,
                maximum=60 * 24 * 7,
                title="Minutes to check (manual runs)",
                description="Check the traffic of the last N minutes before the trigger instead of the run's "
                "data interval. Empty: the data interval (the hour before the run).",
            )
        },
        doc_md=f"### {name}: monitoring\n\n{spec.description}\n" + __doc__,
    ) as dag:
        judged = b.judge_interval(name)(
            b.check_drift(name)(),
            b.check_performance(name)(),
            b.check_fairness(name)(),
            b.check_attributions(name)(),
            b.check_data_quality(name)(),
        )
        b.send_alert(name)(judged)
        b.trigger_retraining(name, outlets=[assets.for_pipeline(name).drift])(judged)
    return dag


for _spec in discover()[0]:
    globals()[_spec.dag_id("monitor")] = monitor_dag(_spec)
