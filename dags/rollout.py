"""
### Staged rollout: `<pipeline>__rollout` and `<pipeline>__rollback`, one pair per valid spec

**`<pipeline>__rollout`** runs when `<pipeline>__train` registers a new candidate (asset
`<pipeline>__candidate`), or by hand with a **version** in the trigger form. The candidate earns
production traffic in stages; the spec's `rollout` section sets every window and threshold.

1. `select_candidate`: the version must carry a passing training blessing and not be the champion.
2. `validate_infra`: the version in a sandboxed service (own process, port and log) gets valid and
   malformed requests; answers, error codes and p99 latency are checked against the spec.
3. `run_shadow`: the version becomes `challenger` in **shadow** mode: it scores a mirror of live
   traffic, its answers are logged and never returned. Decision agreement, mean |Δp|, latency
   and failures against the champion, until `shadow.min_requests` (or the window expires: too
   little evidence fails).
4. `run_canary`: traffic steps (`canary.steps`, e.g. 10% then 50% of the customers, sticky by
   customer). Every `check_interval_seconds` the guardrails are read from the prediction log:
   error rate, p99 latency, score PSI against the champion, and, once feedback labels arrived, a
   one-sided Welch t-test of the per-row loss. **Any breach rolls back at once**: all traffic to
   the champion, `challenger` removed, and the served version checked. Waiting holds no worker.
5. `summarise_evidence`: the blessing, sandbox, shadow and canary results in one Markdown body,
   with links to the runs: what the approval shows.
6. `approve_promotion`: **Required Actions** in the Airflow UI shows that evidence; Approve or
   Reject. Only the people `rollout.approval` names (users, or a role) may answer, and never the
   person who triggered this run or the training run that registered the version (four eyes).
   With no answer before `approval.timeout_hours`, the default is Reject.
7. `promote_candidate`: `champion` → the candidate, the old champion → `previous`, `challenger`
   removed; who approved and when is written to the version. Emits `<pipeline>__champion`.
8. `conclude_rollout`: a candidate that was not promoted is rolled back here. The run fails with
   the reason (breach, timeout, error); a person's rejection ends it successfully, recorded.

The first candidate of a pipeline (no champion) skips shadow and canary (`not_applicable`) but
still needs infra validation and approval.

**`<pipeline>__rollback`** (manual), one task, `restore_previous_champion`: restores `previous` as
the champion in one click, checks that the service serves it, and emits `<pipeline>__champion`.

Alias changes of one pipeline are serialised by a lock in the serving database and each checks the
aliases it expects before it moves them: two promotions never interleave. `slipway history
<pipeline>` prints which version was champion when, and why.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import DAG, Param

from include import assets
from include.blocks import rollout as b
from include.blocks.notify import PipelineNotifier, dag_callbacks
from include.spec import PipelineSpec, discover

EVIDENCE = "{{ ti.xcom_pull(task_ids='summarise_evidence')['markdown'] }}"


def rollout_dag(spec: PipelineSpec) -> DAG:
    """``<pipeline>__rollout``: sandbox -> shadow -> canary -> approval -> promotion, rollback on any breach."""
    name = spec.name
    a = assets.for_pipeline(name)
    with DAG(
        dag_id=spec.dag_id("rollout"),
        description=f"Infra validation, shadow, canary and approval of a {name} candidate",
        schedule=[a.candidate],
        start_date=datetime.combine(spec.schedule.start_date, datetime.min.time(), tzinfo=UTC),
        catchup=False,
        max_active_runs=1,  # one candidate in rollout at a time: there is one challenger slot
        default_args=spec.default_args(),
        **dag_callbacks(name),
        tags=["slipway", "rollout", *spec.tags],
        params={
            "version": Param(
                None,
                type=["null", "integer"],
                minimum=1,
                title="Version to roll out",
                description="Empty: the version the candidate asset event names, else the 'candidate' alias.",
            )
        },
        doc_md=f"### {name}: rollout\n\n{spec.description}\n" + __doc__,
    ) as dag:
        selected = b.select_candidate(name)()
        infra = b.validate_infra(name)(selected)
        shadow = b.TrafficPhase(task_id="run_shadow", pipeline=name, phase="shadow")
        canary = b.TrafficPhase(task_id="run_canary", pipeline=name, phase="canary")
        evidence = b.summarise_evidence(name)(selected, infra, shadow.output, canary.output)
        approve_promotion = b.ApprovePromotion(
            task_id="approve_promotion",
            pipeline=name,
            subject=f"Promote {name} version {{{{ ti.xcom_pull(task_ids='select_candidate')['version'] }}}}?",
            body=EVIDENCE,
            defaults="Reject",
            response_timeout=timedelta(hours=spec.rollout.approval.timeout_hours),
            notifiers=[PipelineNotifier(name, "approval")],  # the approver learns it waits, with the link
        )
        promoted = b.promote_candidate(name, outlets=[a.champion])(selected, approve_promotion.output)
        infra >> shadow >> canary
        evidence >> approve_promotion
        promoted >> b.conclude_rollout(name)()
    return dag


def rollback_dag(spec: PipelineSpec) -> DAG:
    """``<pipeline>__rollback``: ``previous`` becomes the champion again (manual trigger)."""
    name = spec.name
    with DAG(
        dag_id=spec.dag_id("rollback"),
        description=f"Restore the previous champion of {name}",
        schedule=None,
        start_date=datetime.combine(spec.schedule.start_date, datetime.min.time(), tzinfo=UTC),
        catchup=False,
        max_active_runs=1,
        default_args=spec.default_args(),
        **dag_callbacks(name),
        tags=["slipway", "rollout", *spec.tags],
        params={"reason": Param("", type="string", title="Why (recorded in the history)")},
        doc_md=f"### {name}: rollback\n\nRestores the `previous` version as the champion of {name} and "
        "checks that the service serves it. Trigger it from the UI; say why in the form.\n" + __doc__,
    ) as dag:
        b.restore_previous_champion(
            name,
            outlets=[assets.for_pipeline(name).champion],
            on_success_callback=PipelineNotifier(name, "rollback"),
        )()
    return dag


# Invalid specs are skipped here and reported by dags/spec_errors.py, so they never break this file.
for _spec in discover()[0]:
    globals()[_spec.dag_id("rollout")] = rollout_dag(_spec)
    globals()[_spec.dag_id("rollback")] = rollback_dag(_spec)
