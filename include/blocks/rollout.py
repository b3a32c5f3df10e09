"""Blocks of the rollout family (``dags/rollout.py``): how a candidate earns production traffic.

``select_candidate`` → ``validate_infra`` → ``run_shadow`` → ``run_canary`` → ``summarise_evidence``
→ ``approve_promotion`` (Airflow HITL) → ``promote_candidate`` → ``conclude_rollout``.

Shadow and canary are :class:`TrafficPhase` operators: each interval they read the prediction
log, judge the window with :mod:`include.tasks.rollout.guardrails` and either finish, roll back, or defer
until the next interval (the wait holds no worker slot). Any breach rolls the challenger back at
once (:func:`include.registry.end_challenger`) and the version served afterwards is
checked. ``conclude_rollout`` runs whatever happened upstream: a candidate that was not promoted
(a breach, a rejection, a timeout, a crash) is rolled back there, and the run fails with the reason
unless a person rejected it.
"""

from __future__ import annotations

import contextlib
import json
import logging
from datetime import UTC, datetime
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import BaseOperator

from include.blocks.adapter import Step, block, expected_failures
from include.lineage import track
from include.times import utc_minute
from include.tracking import mlflow_client

log = logging.getLogger("slipway")

PHASES = ("shadow", "canary")


def _run_ref(context) -> dict:
    ti = context["ti"]
    return {"dag_run": f"{ti.dag_id}/{ti.run_id}"}


def _gate_tags(client, name: str, version: int, gate: str, results: list[dict], evidence_uri: str) -> None:
    from include.tasks.gates import status_of

    client.set_model_version_tag(name, str(version), f"slipway.blessing.{gate}", status_of(results))
    client.set_model_version_tag(name, str(version), f"slipway.rollout.{gate}_uri", evidence_uri)


@block
def select_candidate(step: Step) -> dict:
    """The version to roll out (the asset event's, the trigger form's, else ``candidate``), blessed; a
    version that is not the candidate moving forward (:mod:`include.tasks.rollout.selection`) is a
    recorded skip: the event ``rollout_skipped`` with the reason, the run green."""
    from include import assets
    from include.registry import EVENT_PREFIX, aliases, record_event
    from include.tasks.gates import GateFailed
    from include.tasks.rollout.selection import refusal

    name = step.pipeline
    client = mlflow_client()
    version = (step.context["params"] or {}).get("version")
    events = step.context.get("triggering_asset_events") or {}
    # A run may be triggered by several events (those since the last run, e.g. from while the DAG
    # was paused): the newest names the candidate to roll out.
    newest = sorted(events.get(assets.for_pipeline(name).candidate, []) or [], key=lambda e: e.timestamp)
    if newest and not version:
        version = (newest[-1].extra or {}).get("version")
    current = aliases(client, name)
    version = int(version or current.get("candidate") or 0)
    if not version:
        raise GateFailed(f"{name} has no candidate to roll out: run {name}__train first", [])
    tags = dict(client.get_model_version(name, str(version)).tags)
    if tags.get("slipway.blessing") != "passed":
        raise GateFailed(
            f"version {version} of {name} has no passing blessing (slipway.blessing = "
            f"{tags.get('slipway.blessing')!r}); only a blessed candidate may be rolled out",
            [],
        )
    champion = current.get("champion")
    champion_month = (
        client.get_model_version(name, str(champion)).tags.get("slipway.month") if champion else None
    )
    why = refusal(version, tags, current, champion_month, EVENT_PREFIX)
    if why is not None:
        # Nothing new to roll out (a past month re-run, a demoted or retired version): a recorded skip.
        from airflow.sdk.exceptions import AirflowSkipException

        reason = f"{name}: {why}; nothing is rolled out"
        step.context["ti"].xcom_push(key="skipped", value={"version": version, "reason": reason})
        record_event(client, name, version, "rollout_skipped", reason=why, **_run_ref(step.context))
        log.warning("%s", reason)
        raise AirflowSkipException(reason)
    first = champion is None
    log.info(
        "rolling out %s version %d (champion: %s)%s",
        name,
        version,
        champion,
        "; the pipeline's first model: no shadow or canary, infra validation and approval only"
        if first
        else "",
    )
    step.mlflow.set_tags({"slipway.rollout.version": str(version), "slipway.rollout.champion": str(champion)})
    # On record before anything runs: retirement leaves a version alone while its rollout is open.
    record_event(client, name, version, "rollout_selected", champion=champion, **_run_ref(step.context))
    return {
        "version": version,
        "champion": champion,
        "first": first,
        "snapshot_uri": tags.get("slipway.snapshot_uri", ""),
        "threshold": float(tags.get("slipway.decision_threshold", "0.5")),
        "model_card_uri": tags.get("slipway.model_card_uri", ""),
        "month": tags.get("slipway.month", ""),
    }


@block
def validate_infra(step: Step, selected: dict) -> dict:
    """The candidate in a sandboxed service: valid and malformed requests, p99 against the budget."""
    from include.tasks.gates import GateFailed, failure_message, failures
    from include.tasks.rollout.infra_validation import GATE, validate

    out = validate(step.spec, selected["version"], selected["snapshot_uri"])
    step.mlflow.log_dict({"results": out["results"], "evidence": out["evidence"]}, "infra_validation.json")
    uri = step.evidence("infra_validation.json")
    for r in out["results"]:
        if r["value"] is not None:
            step.mlflow.log_metric(f"infra.{r['metric']}", float(r["value"]))
    _gate_tags(mlflow_client(), step.pipeline, selected["version"], GATE, out["results"], uri)
    log.info(
        "infra validation of version %d: %d requests, p99 %.1f ms, statuses %s",
        selected["version"],
        out["evidence"]["requests"],
        out["evidence"]["p99_ms"],
        out["evidence"]["statuses"],
    )
    failed = failures(out["results"])
    if failed:
        raise GateFailed(
            failure_message(
                failed,
                f"The sandbox's answers and log lines are in this task's MLflow run ({uri}); fix the model "
                "or the service, or revisit rollout.infra in the spec.",
                consequence=f"Version {selected['version']} got no traffic and no alias moved.",
            ),
            out["results"],
        )
    return {"gate": GATE, "results": out["results"], "evidence_uri": uri}


# Waits shorter than this stay in the worker (a sleep between checks); longer ones are deferred to
# the triggerer. Airflow's own advice for sensors (reschedule mode only from a minute up), and more:
# Airflow 3.3.2's scheduler can take the worker's exit on deferral as a task killed externally when
# the trigger fires before the scheduler has processed that exit (apache/airflow#67287, #72716: the
# QUEUED and RUNNING variants are not fixed in 3.3.2). A deferral of a few seconds runs into it under
# load (the exit's event took 6 s to be processed on a busy 2-core machine) and costs the canary a
# retry that restarts it; a wait of a minute or more leaves the scheduler ample time.
DEFER_FROM_SECONDS = 60.0


class TrafficPhase(BaseOperator):
    """Shadow or canary (:class:`include.tasks.rollout.phases.Phase`): set the traffic, then judge the
    prediction log every ``check_interval_seconds`` until the window is complete (pass) or a
    guardrail breaks (rollback, fail). Between checks the task is deferred (its worker slot free)
    when the wait is ``DEFER_FROM_SECONDS`` or more, and sleeps in the worker otherwise."""

    def __init__(self, *, pipeline: str, phase: str, **kwargs: Any) -> None:
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
        super().__init__(**kwargs)
        self.pipeline = pipeline
        self.phase = phase

    # Airflow calls execute() once, then resume() after each deferral, in the same try.
    def execute(self, context: Any) -> dict:
        return self._step(context, None)

    def resume(self, context: Any, event: Any = None, state: dict | None = None) -> dict:
        return self._step(context, state)

    def _step(self, context: Any, state: dict | None) -> dict:
        with track(self.pipeline, context) as record, expected_failures():
            return record(self._judge(context, state))

    def _judge(self, context: Any, state: dict | None) -> dict:
        import time

        from airflow.providers.standard.triggers.temporal import DateTimeTrigger

        from include.spec import load_pipeline
        from include.tasks.rollout.phases import Phase

        selected = context["ti"].xcom_pull(task_ids="select_candidate")
        runner = Phase(self.pipeline, self.phase, load_pipeline(self.pipeline), selected, _run_ref(context))
        if selected["first"]:
            return runner.not_applicable()
        now = datetime.now(UTC)
        if state is None:
            state = runner.start(0, now)
        while True:
            state, outcome = runner.tick(state, now)
            if outcome is not None:
                return outcome
            wake = runner.wake(state, now)
            wait = (wake - datetime.now(UTC)).total_seconds()
            if wait >= DEFER_FROM_SECONDS:
                self.defer(
                    trigger=DateTimeTrigger(moment=wake), method_name="resume", kwargs={"state": state}
                )
            time.sleep(max(0.0, wait))
            now = datetime.now(UTC)


class _NoRecord:
    """What :func:`_tracked` yields without a DAG run: results pass through, tags go nowhere."""

    def __call__(self, result):
        return result

    def tags(self, tags: dict) -> None:
        pass


@contextlib.contextmanager
def _tracked(pipeline: str, context: Any):
    """The task's MLflow run (:func:`include.lineage.track`) when the context has a DAG run (always, under
    Airflow); a bare context (an operator driven by hand) records nothing."""
    if context.get("dag_run") is None:
        yield _NoRecord()
        return
    import mlflow

    from include.lineage import track

    with track(pipeline, context) as record:
        record.tags = mlflow.set_tags  # type: ignore[attr-defined]
        yield record


class ApprovePromotion(ApprovalOperator):
    """Airflow's ApprovalOperator, asked of the people :mod:`include.tasks.rollout.approvers` allows.

    ``summarise_evidence`` worked out who may answer; they become the Required Action's assigned users,
    so Airflow itself refuses anyone else (403, in its audit log). An Approve that still arrives from
    someone the four-eyes rule or the spec excludes (an auth manager that cannot assign users, or
    ``all_admins`` mode) is refused here: recorded on the version (``slipway.approval.refusals``) and
    in XCom, and the question is asked again for the time that remains.

    The decision is recorded first (XCom ``decision``): on Reject the operator skips its downstream tasks
    by raising, so its return value never reaches XCom, and ``conclude_rollout`` must still learn who
    rejected, or that the timeout's default applied."""

    def __init__(self, *, pipeline: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pipeline = pipeline

    def _respondents(self, context: Any):
        from include.tasks.rollout.approvers import Respondents

        evidence = context["ti"].xcom_pull(task_ids="summarise_evidence") or {}
        return Respondents.from_dict(evidence.get("respondents") or {})

    def _assign(self, context: Any) -> None:
        """The Required Action's assigned users: those allowed to approve (None: Airflow's own rule)."""
        who = self._respondents(context)
        if who.allowed is not None:
            self.assigned_users = [{"id": u, "name": u} for u in who.allowed]

    def execute(self, context: Any) -> Any:
        # A nested MLflow run like every other task's: open while the question waits, closed with the answer.
        with _tracked(self.pipeline, context):
            self._assign(context)
            context["ti"].xcom_push(key="asked_at", value=datetime.now(UTC).isoformat())
            return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        with _tracked(self.pipeline, context) as record:
            user = (event.get("responded_by_user") or {}).get("name") or "the timeout's default"
            record.tags(
                {
                    "slipway.approval.chosen": ",".join(event.get("chosen_options") or []) or "none",
                    "slipway.approval.by": user if "error" not in event else "error",
                }
            )
            return record(self._complete(context, event))

    def _complete(self, context: Any, event: dict[str, Any]) -> Any:
        from include.tasks.rollout.approvers import refusal

        ti = context["ti"]
        if "error" not in event:
            user = event.get("responded_by_user") or {}
            chosen = list(event.get("chosen_options") or [])
            why = (
                refusal(self._respondents(context), user.get("id"), user.get("name"))
                if chosen == ["Approve"]
                else None
            )
            if why is not None:
                return self._refuse(context, user, str(event.get("responded_at") or ""), why)
            ti.xcom_push(
                key="decision",
                value={
                    "chosen_options": chosen,
                    "responded_by_user": {"id": user.get("id"), "name": user.get("name")} if user else None,
                    "responded_at": str(event.get("responded_at") or ""),
                },
            )
        return super().execute_complete(context, event)

    def _refuse(self, context: Any, user: dict, at: str, why: str) -> Any:
        """Record the refused approval, then ask again until the first question's deadline."""
        from datetime import timedelta

        ti = context["ti"]
        refusals = list(ti.xcom_pull(task_ids=self.task_id, key="refusals") or [])
        refusals.append({"by": user.get("name") or user.get("id"), "at": at, "reason": why})
        ti.xcom_push(key="refusals", value=refusals)
        log.warning("approval refused: %s; asking again", why)
        version = (ti.xcom_pull(task_ids="select_candidate") or {}).get("version")
        if version is not None:
            mlflow_client().set_model_version_tag(
                self.pipeline, str(version), "slipway.approval.refusals", json.dumps(refusals)[:4900]
            )
        asked = ti.xcom_pull(task_ids=self.task_id, key="asked_at")
        if self.response_timeout and asked:
            left = datetime.fromisoformat(asked) + self.response_timeout - datetime.now(UTC)
            # Past the deadline, one second: the scheduler's timeout then applies the default (Reject).
            self.response_timeout = max(left, timedelta(seconds=1))
        self._assign(context)
        return ApprovalOperator.execute(self, context)


@block
def summarise_evidence(step: Step, selected: dict, infra: dict, shadow: dict, canary: dict) -> dict:
    """The approval's evidence in Markdown: blessing, sandbox, shadow and canary, links; and who may
    approve (the spec's approvers less the four-eyes exclusions), which the approval assigns."""
    from include.tasks.gates import describe
    from include.tasks.rollout.approvers import four_eyes, respondents

    name, version = step.pipeline, selected["version"]
    tags = dict(mlflow_client().get_model_version(name, str(version)).tags or {})
    registered_by = tags.get("slipway.registered_by")
    triggered_by = getattr(step.context.get("dag_run"), "triggering_user_name", None)
    rule = step.spec.rollout.approval
    who = respondents(
        rule.approvers, rule.role, four_eyes(triggered_by, registered_by), _airflow_users(), name
    )
    lines = [
        f"**{name} version {version}** (trained on {selected.get('month') or '?'}) "
        + (
            f"to replace champion version {selected['champion']}."
            if selected["champion"]
            else "as the first champion."
        ),
        "",
        *_why(name, tags, selected.get("champion")),
        "",
        "Training blessing: **passed** (every gate the spec turns on).",
    ]
    weights = [c.weight for c in step.spec.rollout.canary.steps]
    for title, phase in (("Infra validation", infra), ("Shadow", shadow), ("Canary", canary)):
        lines += ["", f"**{title}**"]
        steps = phase.get("steps") or []
        if title == "Canary" and steps:  # each step under its traffic share: 10%, then 50%, ...
            for s in steps:
                index = int(s.get("step", 1)) - 1
                share = f"{weights[index]:.0%} of the customers" if 0 <= index < len(weights) else ""
                lines += [f"- step {index + 1}" + (f" ({share})" if share else "") + ":"]
                lines += [f"    - {r['status']}: {describe(r)}" for r in s.get("results", [])]
        else:
            lines += [f"- {r['status']}: {describe(r)}" for r in phase.get("results", [])]
    links = []
    from include.settings import get_settings

    ui = get_settings().mlflow_ui_url
    if ui:
        from include.lineage import run_link
        from include.tracking import ui_link

        links.append(f"[version {version} in MLflow]({ui_link(ui, f'models/{name}/versions/{version}')})")
        active = step.mlflow.active_run()
        if active is not None:
            links.append(
                f"[this rollout's record]({run_link(active.info.experiment_id, active.info.run_id)})"
            )
    if selected.get("model_card_uri"):
        links.append(f"model card: `{selected['model_card_uri']}`")
    lines += ["", "Approve to make it the champion; Reject (or no answer before the timeout) rolls it back."]
    lines += ["", who.describe()]
    if links:
        lines += ["", " · ".join(links)]
    markdown = "\n".join(lines)
    step.mlflow.log_text(markdown, "approval_evidence.md")
    log.info("%s", who.describe())
    return {
        "markdown": markdown,
        "evidence_uri": step.evidence("approval_evidence.md"),
        "respondents": who.as_dict(),
    }


def _why(name: str, tags: dict[str, str], champion_now: int | None) -> list[str]:
    """What started the training and the offline comparison with the champion (see rollout/why.py).
    A record that cannot be read is said, never fatal to the approval."""
    import mlflow

    from include.lineage import find_parent
    from include.tasks.rollout.why import offline_lines, trigger_line
    from include.tracking import trusted_artifact_uri

    dag_id, run_id = tags.get("slipway.dag_id", ""), tags.get("slipway.run_id", "")
    try:
        parent = find_parent(name, dag_id, run_id) if dag_id and run_id else None
        started = trigger_line(
            f"{dag_id}/{run_id}", parent.data.tags if parent else {}, tags.get("slipway.registered_by")
        )
    except Exception as exc:  # noqa: BLE001 - shown to the approver instead
        started = f"what started the training could not be read ({type(exc).__name__}: {str(exc)[:200]})"
    try:
        results = mlflow.artifacts.load_dict(trusted_artifact_uri(tags["slipway.blessing_uri"]))["results"]
        uri = next(
            (r["evidence_uri"] for r in results if r["gate"] == "champion" and r.get("evidence_uri")), None
        )
        comparison = mlflow.artifacts.load_dict(trusted_artifact_uri(uri)) if uri else None
        offline = offline_lines(comparison, results, champion_now)
    except Exception as exc:  # noqa: BLE001
        offline = [f"the offline comparison could not be read ({type(exc).__name__}: {str(exc)[:200]})"]
    return [f"**Why**: {started}.", "", f"**Offline** {offline[0]}", *offline[1:]]


def _airflow_users() -> dict[str, str] | None:
    """``{user: role}`` of Airflow's simple auth manager, or None for an auth manager that cannot list them."""
    from airflow.configuration import conf

    from include.tasks.rollout.approvers import simple_users

    if not conf.get("core", "auth_manager", fallback="").endswith("SimpleAuthManager"):
        return None
    return simple_users(conf.getlist("core", "simple_auth_manager_users", fallback=[]))


@block
def promote_candidate(step: Step, selected: dict, decision: dict) -> dict:
    """``champion`` -> the candidate (old champion -> ``previous``), with who approved it and when."""
    from include import assets
    from include.registry import promote
    from include.settings import get_settings
    from include.tasks.rollout.promotion import verify_served

    name, version = step.pipeline, selected["version"]
    by = decision.get("responded_by_user") or {}
    who = by.get("name") or by.get("id") or "unknown"
    at = str(decision.get("responded_at", ""))
    client = mlflow_client()
    summary = step.context["ti"].xcom_pull(task_ids="summarise_evidence") or {}
    approval = {
        "decision": "approved",
        "by": who,
        "at": at,
        "evidence_uri": summary.get("evidence_uri"),
        "four_eyes": sorted((summary.get("respondents") or {}).get("excluded") or {}),
    }
    client.set_model_version_tag(name, str(version), "slipway.approval", json.dumps(approval))
    client.set_model_version_tag(name, str(version), "slipway.blessing.approval", "passed")
    event = promote(
        client,
        name,
        version,
        selected["champion"],
        reason=f"approved by {who} at {utc_minute(at)}",
        by=who,
        **_run_ref(step.context),
    )
    served = verify_served(name, version, selected["champion"], get_settings().serving_url)
    log.info("promoted %s version %d to champion (approved by %s); served: %s", name, version, who, served)
    step.context["outlet_events"][assets.for_pipeline(name).champion].extra = {
        "model": name,
        "version": version,
        "event": "promoted",
        "previous": selected["champion"],
    }
    return {"event": event, "served": served}


@block(trigger_rule="all_done")
def conclude_rollout(step: Step) -> dict:
    """Roll back whatever was not promoted, record why, and fail the run unless a person rejected it."""
    from include.tasks.gates import GateFailed
    from include.tasks.rollout.promotion import approval_outcome, rollback_challenger

    context, pipeline = step.context, step.pipeline
    ti = context["ti"]
    _approval_closed(context)
    selected = ti.xcom_pull(task_ids="select_candidate")
    skipped = ti.xcom_pull(task_ids="select_candidate", key="skipped")
    if not selected and skipped:
        step.set_outcome(f"skipped: {skipped['reason']}")
        return {"outcome": "skipped", **skipped}
    if not selected:
        raise GateFailed("no candidate was selected; see select_candidate's log", [])
    promoted = ti.xcom_pull(task_ids="promote_candidate")
    if promoted:
        step.set_outcome(f"promoted: version {selected['version']} is the champion")
        return {"outcome": "promoted", "version": selected["version"]}
    decision = ti.xcom_pull(task_ids="approve_promotion", key="decision")
    log.info("approval: %s", decision or "never answered (the approval did not run or failed)")
    outcome = approval_outcome(decision)
    reason, failed = outcome["reason"], outcome["failed"]
    if outcome["decision"] != "none":
        client = mlflow_client()
        record = {k: outcome[k] for k in ("decision", "by", "at")}
        record["evidence_uri"] = (ti.xcom_pull(task_ids="summarise_evidence") or {}).get("evidence_uri")
        client.set_model_version_tag(
            pipeline, str(selected["version"]), "slipway.approval", json.dumps(record)
        )
        client.set_model_version_tag(
            pipeline, str(selected["version"]), "slipway.blessing.approval", "failed"
        )
    event = rollback_challenger(pipeline, selected, reason, _run_ref(context))
    log.warning(
        "rollout of version %d ended without promotion: %s%s",
        selected["version"],
        reason,
        "" if event else " (already rolled back)",
    )
    step.set_outcome(f"version {selected['version']} not promoted, rolled back: {reason}")
    if event:
        _rolled_back(context, pipeline, f"version {selected['version']}: {reason}")
    if failed:
        raise GateFailed(f"version {selected['version']} not promoted: {reason}", [])
    return {"outcome": "rejected", "version": selected["version"], "reason": reason}


@block
def restore_previous_champion(step: Step) -> dict:
    """One-click rollback: ``champion`` -> ``previous``; the served version is checked."""
    from include import assets
    from include.registry import restore_previous
    from include.settings import get_settings
    from include.tasks.rollout.promotion import verify_served

    conf = step.context.get("params") or {}
    reason = conf.get("reason") or "manual rollback"
    by = getattr(step.context.get("dag_run"), "triggering_user_name", None) or "unknown"
    event = restore_previous(
        mlflow_client(),
        step.pipeline,
        reason=f"{reason} (triggered by {by})",
        by=by,
        **_run_ref(step.context),
    )
    served = verify_served(
        step.pipeline, event["version"], event.get("from_version"), get_settings().serving_url
    )
    log.info(
        "restored %s version %d as champion (was %s); served: %s",
        step.pipeline,
        event["version"],
        event.get("from_version"),
        served,
    )
    step.context["outlet_events"][assets.for_pipeline(step.pipeline).champion].extra = {
        "model": step.pipeline,
        "version": event["version"],
        "event": "restored",
        "previous": event.get("from_version"),
    }
    return {"event": event, "served": served}


def _approval_closed(context: Any) -> None:
    """The run's approval no longer waits (answered, timed out, or never asked): Prometheus's
    approval-waiting alert reads ``slipway_events``."""
    from include.prediction_log import events

    run = context.get("dag_run")
    if run is None:
        return
    try:
        events.close_approval(None, run.dag_id, run.run_id)
    except Exception as exc:  # noqa: BLE001 - bookkeeping for the alert must not fail the rollout
        log.warning("could not close the approval's event: %s", str(exc).splitlines()[0][:300])


def _rolled_back(context: Any, pipeline: str, detail: str) -> None:
    from include.prediction_log import events

    run = context.get("dag_run")
    if run is None:
        return
    try:
        events.record(None, pipeline, events.ROLLBACK, run.dag_id, run.run_id, detail)
    except Exception as exc:  # noqa: BLE001 - bookkeeping for the alert must not fail the rollout
        log.warning("the rollback was not recorded for Prometheus: %s", str(exc).splitlines()[0][:300])
