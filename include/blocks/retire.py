"""Blocks of the retirement family (``dags/retire.py``): archive versions by the spec's policy."""

from __future__ import annotations

import logging

from include.blocks.adapter import Step, block

log = logging.getLogger("slipway")


@block
def retire_versions(step: Step) -> dict:
    """Judge every version against ``retirement`` (see :mod:`include.tasks.retire.policy`); archive those due."""
    from include.prediction_log.reads import last_served
    from include.registry import PromotionConflict, aliases
    from include.tasks.retire.policy import archive, champion_checks, judge
    from include.tracking import mlflow_client

    name, policy = step.pipeline, step.spec.retirement
    client = mlflow_client()
    now = step.context.get("data_interval_end") or step.context["dag_run"].run_after
    versions = client.search_model_versions(f"name = '{name}'")
    verdicts = judge(
        policy,
        versions,
        aliases(client, name),
        last_served(None, name),
        champion_checks(None, name, policy.below_floor_checks),
        now,
    )
    ti = step.context["ti"]
    retired, kept = [], []
    for v in verdicts:
        if not v.retire:
            kept.append({"version": v.version, "why": v.reason})
            continue
        try:
            archive(client, name, v.version, v.reason, now, dag_run=f"{ti.dag_id}/{ti.run_id}")
        except PromotionConflict as exc:
            kept.append({"version": v.version, "why": str(exc)})
            continue
        retired.append({"version": v.version, "reason": v.reason})
    log.info(
        "%s: %d version(s) retired, %d kept%s%s",
        name,
        len(retired),
        len(kept),
        "".join(f"\n  retired version {r['version']}: {r['reason']}" for r in retired),
        "".join(f"\n  kept version {k['version']}: {k['why']}" for k in kept),
    )
    step.mlflow.log_metrics({"retire.retired": len(retired), "retire.kept": len(kept)})
    return {"retired": retired, "kept": kept}


@block
def purge_expired(step: Step) -> dict:
    """Delete what the spec's ``retention`` periods let go: old prediction-log rows and labels (through
    :mod:`include.prediction_log.retention`), old scored months in the lake; the counts on record."""
    from include.prediction_log.retention import purge
    from include.tasks.retire.erasure import purge_scores

    name, keep = step.pipeline, step.spec.retention
    now = step.context.get("data_interval_end") or step.context["dag_run"].run_after
    counts = purge(None, name, now, keep.prediction_log_days, keep.feedback_days)
    scores = purge_scores(step.settings.lake_uri, name, now, keep.scores_days)
    periods = {
        "prediction_log_days": keep.prediction_log_days,
        "feedback_days": keep.feedback_days,
        "scores_days": keep.scores_days,
    }
    step.mlflow.log_params({f"retention.{k}": "forever" if v is None else v for k, v in periods.items()})
    step.mlflow.log_metrics(
        {f"purged.{k}": v for k, v in counts.items()}
        | {"purged.score_months": len(scores["months"]), "purged.score_files": scores["files"]}
    )
    step.mlflow.set_tag("slipway.purged.score_months", ",".join(scores["months"]) or "none")

    def kept(days: int | None) -> str:
        return "kept forever (no period)" if days is None else f"older than {days} days"

    log.info(
        "%s: purged %d served, %d batch-scored and %d failed row(s) %s; %d label(s) %s; %d scored month(s) "
        "(%d file(s)) %s%s",
        name,
        counts["predictions"],
        counts["batch_predictions"],
        counts["failures"],
        kept(keep.prediction_log_days),
        counts["feedback"],
        kept(keep.feedback_days),
        len(scores["months"]),
        scores["files"],
        kept(keep.scores_days),
        f": {', '.join(scores['months'])}" if scores["months"] else "",
    )
    return {"log": counts, "score_months": scores["months"], "score_files": scores["files"]}
