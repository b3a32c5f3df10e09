"""Blocks of the batch-scoring family (``dags/score.py``): a population scored, published, delivered.

``score_population`` (which month and version, the scoring itself in
:mod:`include.tasks.score.population`, the files published to the lake, the rows recorded in the
prediction log, the version tagged) → ``deliver_scores`` (each ``scoring.deliver`` table, through its
Airflow connection; skipped when there is none).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from include.blocks.adapter import Step, block, data_ref

log = logging.getLogger("slipway")

#: Version tag per scored month: ``slipway.scored.<YYYY-MM>`` = JSON of what was scored and written
SCORED_TAG = "slipway.scored."


def _month(step: Step) -> str:
    """The month to score: the trigger form's, the landed batch's (asset event), the data interval's;
    a manual run without one scores the newest month whose population has landed."""
    from include.months import months_in, run_month
    from include.tasks.score.population import PopulationError
    from include.uri import join

    ctx = step.context
    params = ctx.get("params") or {}
    manual = str(getattr(ctx.get("dag_run"), "run_type", "")) in ("manual", "DagRunType.MANUAL")
    if params.get("month") or not manual or ctx.get("triggering_asset_events"):
        return run_month(ctx)
    landed = months_in(join(step.settings.landing_uri, step.pipeline), _pattern(step))
    if not landed:
        raise PopulationError(
            f"no population of {step.pipeline} has landed ({_pattern(step)} in "
            f"{join(step.settings.landing_uri, step.pipeline)}): land one, or name the month in the trigger form"
        )
    return landed[-1]


def _pattern(step: Step) -> str:
    return step.spec.scoring.population or step.spec.source.batch_name


@block
def score_population(step: Step) -> dict:
    """Score the month's population with the champion (or the trigger's version); publish the scores,
    the rejects and the manifest to the lake; record the scored rows in the prediction log."""
    from include import storage
    from include.model_files import ModelRefused
    from include.prediction_log.batch import BatchRecorder
    from include.registry import aliases, load_version
    from include.settings import pii_key
    from include.tasks.score.population import (
        MANIFEST_FILE,
        PopulationError,
        manifest,
        population_format,
        score_population,
        scores_folder,
    )
    from include.tracking import mlflow_client
    from include.uri import join

    name, spec, cfg = step.pipeline, step.spec, step.spec.scoring
    month = _month(step)
    params = step.context.get("params") or {}
    client = mlflow_client()
    version = params.get("version") or aliases(client, name).get("champion")
    if version is None:  # not a failure: nothing is in production yet
        from airflow.sdk.exceptions import AirflowSkipException

        raise AirflowSkipException(
            f"{name} has no champion yet, so there is nothing to score {month} with: promote a version "
            "(the rollout does), or name a registered version in the trigger form"
        )
    version = int(version)
    source_uri = join(step.settings.landing_uri, name, _pattern(step).format(month=month))
    folder = scores_folder(step.settings.lake_uri, name, month, version)
    ti = step.context["ti"]
    with tempfile.TemporaryDirectory(prefix="slipway-score-") as tmp:
        from mlflow.exceptions import MlflowException

        try:
            model = load_version(client, name, version, Path(tmp) / "model")
        except ModelRefused as exc:
            raise PopulationError(f"version {version} of {name} cannot score: {exc}") from exc
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise  # the registry is unreachable: retried
            raise PopulationError(
                f"{name} has no version {version} in the registry: name a registered version, or leave the "
                "version empty to score with the champion"
            ) from exc
        try:
            source = storage.local_copy(source_uri, Path(tmp))
        except FileNotFoundError:
            raise PopulationError(
                f"no population for {month}: nothing at {source_uri}; land the file there (scoring.population "
                "in the spec names it) and re-run"
            ) from None
        out = Path(tmp) / "out"
        out.mkdir()
        fmt = population_format(source_uri, spec.source.format)
        with BatchRecorder(None, name, version, month, f"{ti.dag_id}/{ti.run_id}") as recorder:
            result = score_population(
                spec,
                model,
                source,
                fmt,
                out,
                month,
                pii_key(step.settings),
                cfg.chunk_rows,
                source_uri,
                recorder.add if cfg.log_share > 0 else None,
                cfg.log_share,
            )
            files = {"scores": join(folder, "scores.parquet"), "rejects": join(folder, "rejects.parquet")}
            # The rejects first: when the run fails on them, they are what the operator reads.
            storage.write_file(files["rejects"], result.rejects_path)
            reasons = "; ".join(f"{why}: {n}" for why, n in list(result.reasons.items())[:8])
            if result.reject_share > cfg.max_reject_share:
                raise PopulationError(
                    f"{result.rejected} of {result.rows} rows of {source_uri} ({result.reject_share:.2%}) fail the "
                    f"service's checks, above scoring.max_reject_share {cfg.max_reject_share:.2%}: {reasons}. "
                    f"Each row and its reason: {files['rejects']}. Fix the export and re-run; nothing was "
                    "published or recorded"
                )
            storage.write_file(files["scores"], result.scores_path)
            body = manifest(spec, model, month, source_uri, result, files)
            # The manifest last: a folder with a manifest is complete.
            storage.write_bytes(join(folder, MANIFEST_FILE), body)
            logged = recorder.commit() if cfg.log_share > 0 else 0
    summary = json.loads(body)
    record = {
        "uri": files["scores"],
        "sha256": summary["scores_sha256"],
        "rows": result.rows,
        "scored": result.scored,
        "rejected": result.rejected,
        "data_version": result.data_version,
        "input": source_uri,
        "dag_run": f"{ti.dag_id}/{ti.run_id}",
    }
    client.set_model_version_tag(
        name, str(version), f"{SCORED_TAG}{month}", json.dumps(record, sort_keys=True)
    )
    step.mlflow.log_metrics(
        {
            "score.rows": result.rows,
            "score.scored": result.scored,
            "score.rejected": result.rejected,
            "score.logged": logged,
            "score.seconds": result.seconds,
        }
    )
    step.mlflow.set_tags(
        {
            "slipway.month": month,
            "slipway.score.version": str(version),
            "slipway.score.input": source_uri,
            "slipway.score.data_version": result.data_version,
        }
    )
    log.info(
        "%s %s: %d rows of %s (sha256 %s), %d scored by version %d, %d rejected%s; %d recorded in the "
        "prediction log; stages %s",
        name,
        month,
        result.rows,
        source_uri,
        result.data_version[:12],
        result.scored,
        version,
        result.rejected,
        f" ({reasons})" if reasons else "",
        logged,
        ", ".join(f"{k} {v:.1f} s" for k, v in sorted(result.timings.items())),
    )
    step.set_outcome(
        f"{month}: {result.scored} rows scored by version {version}, {result.rejected} rejected; {files['scores']}"
    )
    return {
        "month": month,
        "version": version,
        "scores_uri": files["scores"],
        "rejects_uri": files["rejects"],
        "rows": result.rows,
        "scored": result.scored,
        "rejected": result.rejected,
        "keyed": spec.entity_column is not None,
        "outputs": [
            data_ref(f"scores-{month}-v{version}", files["scores"], summary["scores_sha256"], "lake"),
            data_ref(f"rejects-{month}-v{version}", files["rejects"], summary["rejects_sha256"], "lake"),
        ],
    }


@block
def deliver_scores(step: Step, scored: dict) -> dict:
    """Upsert the month's scores into each ``scoring.deliver`` table through its Airflow connection."""
    from airflow.sdk.exceptions import AirflowSkipException

    targets = step.spec.scoring.deliver
    if not targets:
        raise AirflowSkipException("no scoring.deliver targets in the spec: the scores are in the lake only")
    from airflow.sdk import BaseHook

    from include import storage
    from include.tasks.score.deliver import DeliveryError, deliver_postgres

    delivered = []
    with tempfile.TemporaryDirectory(prefix="slipway-deliver-") as tmp:
        path = storage.local_copy(scored["scores_uri"], Path(tmp))
        for target in targets:
            conn = BaseHook.get_connection(target.connection)
            if conn.conn_type not in ("postgres", "postgresql"):
                raise DeliveryError(
                    f"the connection {target.connection!r} has type {conn.conn_type!r}; scoring.deliver writes "
                    "to postgres connections (for another store, add a custom step that reads the scores file: "
                    "see the README)"
                )
            from airflow.providers.postgres.hooks.postgres import PostgresHook

            db = PostgresHook(postgres_conn_id=target.connection).get_conn()
            try:
                out = deliver_postgres(db, target.table, path, scored["month"], scored["keyed"])
            finally:
                db.close()
            log.info(
                "%s %s (version %s): %d rows upserted into %s through %r, %d stale rows of the month removed",
                step.pipeline,
                scored["month"],
                scored["version"],
                out["rows"],
                target.table,
                target.connection,
                out["removed"],
            )
            delivered.append({**out, "connection": target.connection})
    step.mlflow.log_metric("deliver.rows", sum(d["rows"] for d in delivered))
    return {"delivered": delivered}
