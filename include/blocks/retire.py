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
