"""
### Batch scoring: `<pipeline>__score`, one DAG per valid spec

Scores a month's population with the **champion** (or the version named in the trigger form) and
writes the scores to the lake, deterministically and atomically:
`<lake>/<pipeline>/scores/month=YYYY-MM/version=N/` holds `scores.parquet` (the entity key hashed
as everywhere, the prediction and the decision per task, the version, the input's sha256),
`rejects.parquet` (each row that failed the service's checks, with the reason) and `manifest.json`
(written last: a folder with a manifest is complete).

**Tasks**: `score_population` (the population read and scored in chunks of `scoring.chunk_rows`,
with the ONNX graph the service loads, digest-checked; the scored rows recorded in the prediction
log, where feedback labels them and the monitor checks their drift; the version tagged
`slipway.scored.<month>` with the file's digest and counts) → `deliver_scores` (each
`scoring.deliver` table, upserted by entity key and month through its Airflow connection; skipped
when the spec names none).

**When it runs** (`scoring.schedule`): `landed` (default) after each month the training DAG ingests
(asset `<pipeline>__landed`), a cron, or `manual`. **What**: the month's landed batch, or the file
`scoring.population` names. To score by hand, trigger with **month** (empty: the newest landed) and
optionally **version** (empty: the champion).

**Operating it**
- A red `score_population` names its reason: no champion yet, no population for the month, a column
  missing, or more rejected rows than `scoring.max_reject_share` (the rejects file is written, with
  each row's reason; nothing is published or recorded). Fix the export and clear the run.
- Re-running a month with the same version rewrites the same bytes and records nothing twice; a new
  champion scores into its own `version=N/` folder. The Models view shows which version scored which
  month; `slipway lineage --scored <pipeline>/<month>/<entity id>` traces one row.
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import DAG, CronDataIntervalTimetable, Param

from include import assets
from include.blocks import score as b
from include.blocks.notify import dag_callbacks
from include.months import MONTH_PATTERN
from include.spec import PipelineSpec, discover


def _schedule(spec: PipelineSpec):
    when = spec.scoring.schedule
    if when == "landed":
        return [assets.for_pipeline(spec.name).landed]
    if when == "manual":
        return None
    return CronDataIntervalTimetable(when, timezone="UTC")


def score_dag(spec: PipelineSpec) -> DAG:
    """``<pipeline>__score``: a population scored with the champion, published, recorded, delivered."""
    name = spec.name
    with DAG(
        dag_id=spec.dag_id("score"),
        description=f"Score {name}'s population of a month with the champion",
        schedule=_schedule(spec),
        start_date=datetime.combine(spec.schedule.start_date, datetime.min.time(), tzinfo=UTC),
        catchup=False,
        max_active_runs=1,
        default_args=spec.default_args(),
        **dag_callbacks(name),
        tags=["slipway", "score", *spec.tags],
        params={
            "month": Param(
                None,
                type=["null", "string"],
                pattern=MONTH_PATTERN,
                title="Month to score (YYYY-MM)",
                description="Empty: the month of the landed batch that started the run, or for a manual run "
                "the newest month whose population has landed.",
            ),
            "version": Param(
                None,
                type=["null", "integer"],
                minimum=1,
                title="Model version",
                description="A registered version of the pipeline to score with. Empty: the champion.",
            ),
        },
        doc_md=f"### {name}: batch scoring\n\n{spec.description}\n" + __doc__,
    ) as dag:
        b.deliver_scores(name)(b.score_population(name)())
    return dag


for _spec in discover()[0]:
    globals()[_spec.dag_id("score")] = score_dag(_spec)
