"""
### Retirement: `<pipeline>__retire`, one DAG per valid spec

Every day (the spec's `retirement.schedule`) `retire_versions` judges every registered version of
the pipeline against the spec's `retirement` policy and archives the ones due: **superseded**
(`keep_newest` newer versions exist), **not served** for `not_served_days`, or **below the live
performance floor** in its last `below_floor_checks` monitor checks as champion.

Archiving removes the version's aliases, tags it `slipway.retired` with the reason and records a
`retired` event in its history. Nothing is deleted: artifacts, model card, blessing, lineage and
logged predictions stay queryable (`slipway lineage <pipeline>/<version>`, `slipway history`).

Never retired: `champion`, `previous`, `challenger`, `candidate`, and a version whose rollout is
under way. The task log lists each version with why it was retired or kept.

Beside it, `purge_expired` applies the spec's `retention` periods: prediction-log rows and feedback
labels older than theirs are deleted (through the log's own functions on PostgreSQL), and scored
months older than `scores_days` leave the lake (delivered tables are not touched). Its counts are on
its MLflow run and in its task log; a period left empty keeps everything.
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import DAG, CronDataIntervalTimetable

from include.blocks import retire as b
from include.blocks.notify import dag_callbacks
from include.spec import PipelineSpec, discover


def retire_dag(spec: PipelineSpec) -> DAG:
    """``<pipeline>__retire``: policy-based archiving of model versions, evidence kept."""
    name = spec.name
    with DAG(
        dag_id=spec.dag_id("retire"),
        description=f"Archive {name} versions the retirement policy no longer needs",
        schedule=CronDataIntervalTimetable(spec.retirement.schedule, timezone="UTC"),
        start_date=datetime.combine(spec.schedule.start_date, datetime.min.time(), tzinfo=UTC),
        catchup=False,
        max_active_runs=1,
        default_args=spec.default_args(),
        **dag_callbacks(name),
        tags=["slipway", "retire", *spec.tags],
        doc_md=f"### {name}: retirement\n\n{spec.description}\n" + __doc__,
    ) as dag:
        b.retire_versions(name)()
        b.purge_expired(name)()
    return dag


for _spec in discover()[0]:
    globals()[_spec.dag_id("retire")] = retire_dag(_spec)
