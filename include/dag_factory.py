"""DAGs generated from pipeline specs: a spec + an expectation suite is a new pipeline, no Python.

``dags/pipelines.py`` calls :func:`generate` once; it builds ``<pipeline>__train`` for every valid
spec in ``include/pipelines/``. An invalid spec must not take the other pipelines down with it, yet
must be visible in the Airflow UI as an import error. Airflow records an import error for a file
when one of the DAGs it defines fails validation, while still loading that file's other DAGs; so an
invalid spec is represented by a DAG whose ``validate()`` raises the spec error. It is never run or
stored: Airflow rejects it at parse time and shows the message under "Import errors".
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import DAG, CronDataIntervalTimetable

from include.blocks import DEFAULT_ARGS, training_chain
from include.spec import PipelineSpec, SpecError, discover

TRAIN_DOC = """\
### {name}: training

{description}

Waits for the month's batch in the landing zone, ingests it (PII hashed), versions the training
snapshot with DVC, validates it with the Great Expectations suite `{suite}`, trains
`{estimator}`, evaluates it on a held-out split and registers the model version `{name}` with the
alias `candidate` only when every step passed. Each task leaves a nested MLflow run in experiment
`{name}`; `slipway lineage {name}@candidate` prints the whole trail.

Spec: `include/pipelines/{name}.yaml`.
"""


def train_dag(spec: PipelineSpec) -> DAG:
    """The ``<pipeline>__train`` DAG of a spec."""
    start = datetime.combine(spec.schedule.start_date, datetime.min.time(), tzinfo=UTC)
    with DAG(
        dag_id=spec.dag_id("train"),
        description=f"Train and register a candidate for {spec.name}",
        schedule=CronDataIntervalTimetable(spec.schedule.cron, timezone="UTC"),
        start_date=start,
        catchup=spec.schedule.catchup,
        max_active_runs=1,
        default_args={**DEFAULT_ARGS, "owner": spec.owner},
        tags=["slipway", "train", *spec.tags],
        doc_md=TRAIN_DOC.format(
            name=spec.name,
            description=spec.description,
            suite=spec.suite_file,
            estimator=spec.estimator.import_path,
        ),
    ) as dag:
        training_chain(spec.name)
    return dag


class InvalidSpecs(DAG):
    """Stands for the invalid specs of a folder: fails validation with their error messages."""

    spec_errors: dict[str, str] = {}

    def validate(self):
        raise SpecError(
            "invalid pipeline spec(s); their DAGs are not loaded until fixed:\n"
            + "\n".join(self.spec_errors.values())
        )


def generate(namespace: dict, pipelines_dir=None) -> list[str]:
    """Put one DAG per purpose per valid spec into ``namespace``; return the dag_ids."""
    specs, errors = discover(pipelines_dir)
    dag_ids = []
    for spec in specs:
        dag = train_dag(spec)
        namespace[dag.dag_id] = dag
        dag_ids.append(dag.dag_id)
    if errors:
        broken = InvalidSpecs(dag_id="slipway__invalid_specs", schedule=None)
        broken.spec_errors = errors
        namespace["slipway__invalid_specs"] = broken
    return dag_ids
