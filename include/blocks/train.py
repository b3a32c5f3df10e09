"""Blocks of the training family: from a landed batch to a registered, blessed candidate.

Each block is an :mod:`include.tasks` function behind :func:`include.blocks.adapter.block`;
``dags/train.py`` wires them. The gates after evaluation run side by side and do not fail on a
bad result: each measures, records its results (``blessing/<gate>.json`` and the tag
``slipway.gate.<gate>`` on its MLflow run) and hands them on. ``bless_candidate`` then judges them
all at once and fails with every failed check listed, so an author sees every reason a candidate
was refused in one run. Only a complete, passing blessing reaches ``register_model``.

Each block takes only its direct upstream, so the DAG's graph is the chain an operator reads (batch,
snapshot, suite, model, evaluation, the gates, blessing, card, registry): what a later block needs
from earlier ones travels under ``carried`` in the results (never counted as data a block wrote).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from include import assets
from include.blocks.adapter import Step, block, data_ref
from include.blocks.sensors import BatchSensor, interval_month
from include.lineage import CARRIED_KEY

log = logging.getLogger(__name__)

CARRIED = CARRIED_KEY  # results of earlier blocks a later one reads, handed down the chain


def _own(result: dict) -> dict:
    """A block's result without what it carried for others."""
    return {k: v for k, v in result.items() if k != CARRIED}


def wait_for_batch(pipeline: str, **kwargs) -> BatchSensor:
    """Deferrable sensor: wait until the interval's batch is in the landing zone."""
    return BatchSensor(task_id=kwargs.pop("task_id", "wait_for_batch"), pipeline=pipeline, **kwargs)


@block
def ingest_batch(step: Step, landed: dict | None = None) -> dict:
    """Check the batch against the spec, hash PII, write Parquet to the lake (earlier landed months too)."""
    from include.settings import pii_key
    from include.tasks.train.ingest import ingest_batches

    s = step.settings
    out = ingest_batches(step.spec, interval_month(step.context), s.landing_uri, s.lake_uri, pii_key(s))
    step.mlflow.log_metric("rows", out["rows"])
    step.mlflow.set_tag("slipway.batches_written", ",".join(out["written"]) or "none")
    refs = [data_ref(f"batch-{b['month']}", b["uri"], b["sha256"], "lake") for b in out["batches"]]
    log.info(
        "month %s: %d rows in %d monthly batches; written now: %s",
        out["month"],
        out["rows"],
        len(out["batches"]),
        ", ".join(out["written"]) or "none (all unchanged)",
    )
    landed_asset = assets.for_pipeline(step.pipeline).landed
    if landed_asset in (getattr(step.context["ti"].task, "outlets", None) or []):
        # <pipeline>__score runs on it (scoring.schedule: landed): the month's population is in.
        step.context["outlet_events"][landed_asset].extra = {"month": out["month"]}
    return {"month": out["month"], "batch_uris": out["batch_uris"], "rows": out["rows"], "outputs": refs}


def feedback_cutoff(context) -> str:
    """Labels received before this moment feed the run: a scheduled or backfill run's data interval
    end (a backfill never learns from later labels), else the moment the run was triggered."""
    from include.prediction_log.rows import iso_utc

    dag_run = context["dag_run"]
    run_type = str(getattr(getattr(dag_run, "run_type", None), "value", getattr(dag_run, "run_type", "")))
    end = context.get("data_interval_end")
    if run_type in {"scheduled", "backfill"} and end is not None:
        return iso_utc(end, "the data interval's end")
    return iso_utc(dag_run.run_after, "the run's run_after")


@block
def curate_feedback(step: Step, ingested: dict) -> dict:
    """Labelled predictions from the service's log, curated by the documented rule into a feedback batch."""
    from include.tasks.train.feedback import curate_feedback as curate

    cutoff = feedback_cutoff(step.context)
    out = curate(step.spec, None, step.settings.lake_uri, ingested["batch_uris"], cutoff)
    dropped = {k: v for k, v in out["dropped"].items() if v}
    step.mlflow.log_metrics(
        {"feedback.labelled": out["labelled"], "feedback.rows": out["rows"]}
        | {f"feedback.dropped.{k}": v for k, v in out["dropped"].items()}
    )
    step.mlflow.set_tag("slipway.feedback.cutoff", cutoff)
    # Which API keys labelled the rows that enter training: every label is traceable to its sender.
    by_key = ", ".join(f"{k}: {n}" for k, n in sorted(out["by_key"].items(), key=lambda kv: (-kv[1], kv[0])))
    step.mlflow.set_tag("slipway.feedback.keys", by_key[:4900] or "none")
    if out["uri"]:
        step.mlflow.set_tag("slipway.feedback_uri", out["uri"])
    log.info(
        "feedback up to %s: %d labelled prediction(s), %d row(s) in the batch%s%s",
        cutoff,
        out["labelled"],
        out["rows"],
        f" {out['uri']}" if out["uri"] else " (no batch: nothing to add to the snapshot)",
        "".join(f"\n  dropped {n}: {reason.replace('_', ' ')}" for reason, n in dropped.items()),
    )
    parent = step.parent_run_id
    if parent:  # the DAG run's record says what the labels added, without opening this task
        summary = (
            f"{out['rows']} row(s) from {out['labelled']} labelled prediction(s) up to {cutoff}"
            + (f"; labelled by key {by_key}" if by_key else "")
        )[:4900]
        step.mlflow.MlflowClient().set_tag(parent, "slipway.feedback", summary)
    refs = [data_ref("feedback", out["uri"], out["sha256"], "lake")] if out["uri"] else []
    return {
        "feedback_uri": out["uri"],
        "rows": out["rows"],
        "labelled": out["labelled"],
        "cutoff": cutoff,
        "outputs": refs,
    }


@block
def version_snapshot(step: Step, ingested: dict, feedback: dict | None = None) -> dict:
    """Snapshot = every batch up to the interval plus the feedback batch, added to DVC and pushed; its md5 is the data version."""
    from include.prediction_log.retention import forgotten_keys
    from include.tasks.train.data_version import build_snapshot
    from include.tasks.train.data_version import version_snapshot as dvc_version
    from include.tasks.train.feedback import cutoff_token
    from include.uri import join

    s, month = step.settings, ingested["month"]
    feedback_uri = feedback.get("feedback_uri") if feedback else None
    folder = join(s.lake_uri, step.pipeline, "snapshots", f"month={month}")
    if feedback and feedback_uri:  # runs of one month with different feedback never share a key
        folder = join(folder, f"until={cutoff_token(feedback['cutoff'])}")
    snap_uri = join(folder, "snapshot.parquet")
    # Entities erased with `slipway forget` never enter a snapshot again (their keyed hashes are in the log).
    forgotten = forgotten_keys(None, step.pipeline) if step.spec.entity_column else frozenset()
    snap = build_snapshot(ingested["batch_uris"], snap_uri, feedback_uri, step.spec.entity_column, forgotten)
    ver = dvc_version(snap_uri, step.pipeline, s.dvc_workdir, s.dvc_remote_uri, s.s3_endpoint_url)
    step.mlflow.log_params(
        {
            "data_version": ver["data_version"],
            "snapshot_rows": snap["rows"],
            "feedback_rows": snap["feedback_rows"],
            "feedback_superseded": snap["superseded"],
        }
    )
    step.mlflow.log_metric("snapshot.forgotten_rows", snap["forgotten_rows"])
    step.mlflow.set_tag("slipway.data_version", ver["data_version"])
    log.info(
        "snapshot of %d rows (%d from feedback, replacing %d landed; %d of forgotten entities left out) is "
        "data version %s (DVC: %s)",
        snap["rows"],
        snap["feedback_rows"],
        snap["superseded"],
        snap["forgotten_rows"],
        ver["data_version"],
        ver["dvc_uri"],
    )
    return {
        "month": month,
        "snapshot_uri": snap_uri,
        "rows": snap["rows"],
        "data_version": ver["data_version"],
        "dvc_uri": ver["dvc_uri"],
        "outputs": [data_ref("training_snapshot", ver["dvc_uri"], ver["data_version"], "dvc")],
    }


@block
def validate_snapshot(step: Step, versioned: dict) -> dict:
    """Great Expectations suite on the snapshot; result JSON and Data Docs to MLflow; a failed suite stops here."""
    from include.tasks.train.validate import raise_for_failures
    from include.tasks.train.validate import validate_snapshot as run_suite

    mlflow = step.mlflow
    suite = step.settings.expectations_dir / step.spec.suite_file
    with tempfile.TemporaryDirectory(prefix="slipway-gx-") as tmp:
        result = run_suite(versioned["snapshot_uri"], suite, tmp)
        mlflow.log_artifact(result["result_path"], "validation")
        mlflow.log_artifacts(str(Path(result["docs_path"]).parent), "validation/data_docs")
    mlflow.log_metrics(
        {"expectations_evaluated": result["evaluated"], "expectations_failed": len(result["failed"])}
    )
    mlflow.set_tag("slipway.validation", "passed" if result["success"] else "failed")
    mlflow.log_dict({"failed": result["failed"]}, "validation/failed_expectations.json")
    log.info(
        "suite %s: %d of %d expectations met", result["suite"], result["successful"], result["evaluated"]
    )
    raise_for_failures(result, step.spec.name)
    return {
        "success": result["success"],
        "evaluated": result["evaluated"],
        "successful": result["successful"],
        "suite": result["suite"],
        "run_id": step.run_id,
        CARRIED: {"versioned": versioned},
    }


@block
def train_model(step: Step, validated: dict) -> dict:
    """Seeded fit of the spec's Pipeline; model (skops, no pickle, digest-pinned URI) and splits in the lake."""
    import hashlib

    from include import storage
    from include.tasks.train.fit import TrainingError
    from include.tasks.train.fit import train_model as fit

    spec, versioned = step.spec, validated[CARRIED]["versioned"]
    # Runs of the same month share the snapshot key: train on exactly the data version on record.
    md5 = hashlib.md5(storage.read_bytes(versioned["snapshot_uri"])).hexdigest()
    if md5 != versioned["data_version"]:
        raise TrainingError(
            f"snapshot {versioned['snapshot_uri']} has md5 {md5}, not the data version "
            f"{versioned['data_version']} this run versioned: another run of the month rewrote it; "
            "re-run version_snapshot and the tasks after it"
        )
    out = fit(spec, versioned["snapshot_uri"], step.lake(versioned["month"]))
    step.mlflow.log_params({f"model.{k}": v for k, v in out["params"].items()})
    step.mlflow.log_params(
        {
            "estimator": out["estimator"],
            "class_imbalance": spec.class_imbalance,
            "split_method": out.get("split_method", "random"),
        }
    )
    step.mlflow.log_metrics(
        {f"rows_{k}": v for k, v in out["rows"].items()}
        | {f"target.{k}": v for k, v in out["target_summary"].items()}
    )
    step.mlflow.set_tag("slipway.model_sha256", out["model_sha256"])
    step.mlflow.set_tag("slipway.task", spec.task)
    log.info(
        "fitted %s (%s) on %s rows (target: %s); model %s",
        out["estimator"],
        spec.task,
        ", ".join(f"{k} {v}" for k, v in out["rows"].items()),
        ", ".join(f"{k} {v}" for k, v in out["target_summary"].items()),
        out["model_uri"],
    )
    return {
        "month": versioned["month"],
        "model_uri": out["model_uri"],
        "model_sha256": out["model_sha256"],
        "splits": out["splits"],
        "rows": out["rows"],
        "positive_rate": out["positive_rate"],
        "target_summary": out["target_summary"],
        "data_version": versioned["data_version"],
        "outputs": [data_ref("model", out["model_uri"], out["model_sha256"], "model")],
        CARRIED: {"versioned": versioned, "validated": _own(validated)},
    }


def _gates(step: Step, records: dict[str, dict], results: dict[str, list[dict]], **extra) -> dict:
    """What a gate task hands on: its results per gate, its records; logged and tagged on its run.

    A failed gate does not fail the task: ``bless_candidate`` judges every gate at once. The task
    log and the MLflow tag say which checks failed, for whoever opens this task first.
    """
    from include.tasks.gates import describe, failures, status_of

    for gate, own in results.items():
        step.mlflow.log_dict({"gate": gate, "results": own}, f"blessing/{gate}.json")
        state = status_of(own)
        step.mlflow.set_tag(f"slipway.gate.{gate}", state)
        for r in own:
            (log.warning if r in failures(own) else log.info)("gate %s", describe(r))
    return {"gates": results, "records": records, **extra}


def _disabled(gate: str) -> dict:
    return {"gates": {}, "records": {}, "disabled": [gate]}


@block
def evaluate_model(step: Step, trained: dict) -> dict:
    """Decision rule for expected value on validation data (a threshold, a value matrix, a cost-optimal
    shift); the task's held-out metrics against the spec's floors."""
    from include.tasks.blessing import validation_result
    from include.tasks.train.evaluate import evaluate_model as score
    from include.tasks.train.evaluate import evaluation_gate

    spec, mlflow, validated = step.spec, step.mlflow, trained[CARRIED]["validated"]
    out = score(spec, trained["model_uri"], trained["splits"]["test"], trained["splits"]["validation"])
    from include.problem import describe_rule

    mlflow.log_metrics({f"test_{k}": v for k, v in out["metrics"].items()})
    mlflow.log_metrics({"value_per_1000": out["value_per_1000"]})
    if spec.task == "binary":
        mlflow.log_metric("decision_threshold", out["threshold"])
    if spec.task == "regression":
        mlflow.log_metric("decision_offset", out["rule"]["offset"])
    mlflow.log_dict(
        {"curve": out["value_curve"], "chosen": out["rule"], "reason": out["rule_reason"]},
        "business/value_curve.json",
    )
    log.info("decision: %s (%s)", describe_rule(spec, out["rule"], spec.business.unit), out["rule_reason"])
    oot = out.get("out_of_time")
    if oot:
        mlflow.log_dict(oot, "evaluation/out_of_time.json")
        mlflow.log_metrics({f"oot_{k}": v for k, v in (oot.get("metrics") or {}).items()})
    mlflow.log_dict(out["metrics"], "blessing/evaluation_metrics.json")
    return _gates(
        step,
        {
            "evaluation": {
                "metrics": out["metrics"],
                "metrics_at_0_5": out.get("metrics_at_0_5"),
                "out_of_time": oot,
            }
        },
        {
            "data_validation": [validation_result(validated, f"runs:/{validated['run_id']}/validation")],
            "evaluation": evaluation_gate(
                out["metrics"], spec.gates.evaluation, step.evidence("blessing"), spec=spec
            ),
        },
        threshold=out.get("threshold"),
        decision=out["rule"],
        value_per_1000=out["value_per_1000"],
        metrics=out["metrics"],
        evaluation_run_id=step.run_id,
        **{CARRIED: {**trained[CARRIED], "trained": _own(trained)}},
    )


@block
def compare_champion(step: Step, evaluated: dict) -> dict:
    """Candidate vs the champion on the candidate's test split: maximum regressions and the business value."""
    trained = evaluated[CARRIED]["trained"]
    from include.tasks.business import business_gate
    from include.tasks.train.champion import compare_with_champion, load_champion

    spec, gates = step.spec, step.spec.gates
    if not (gates.champion.enabled or gates.business.enabled):
        return {**_disabled("champion"), "disabled": ["champion", "business"]}
    evidence = step.evidence("champion/comparison.json")
    # An unreachable registry raises here and the task is retried: never "no champion".
    champion = load_champion(spec.name)
    cmp = compare_with_champion(
        spec, trained["model_uri"], trained["splits"]["test"], evaluated["decision"], champion, evidence
    )
    step.mlflow.log_dict({k: v for k, v in cmp.items() if k != "gates"}, "champion/comparison.json")
    champ = cmp["champion"]
    business = {
        "threshold": evaluated.get("threshold"),
        "decision": evaluated["decision"],
        "value_per_1000": cmp["candidate"]["value_per_1000"],
        "champion_version": champ["version"] if champ else None,
        "champion_threshold": champ.get("threshold") if champ else None,
        "champion_decision": champ["rule"] if champ else None,
        "champion_value_per_1000": champ["value_per_1000"] if champ else None,
    }
    step.mlflow.log_metrics({"value_per_1000": business["value_per_1000"]})
    results, records = {}, {}
    if gates.champion.enabled:
        results["champion"], records["champion"] = cmp["gates"], cmp
    if gates.business.enabled:
        results["business"] = business_gate(
            business["value_per_1000"], business["champion_value_per_1000"], gates.business, evidence
        )
        records["business"] = business
    return _gates(step, records, results)


@block
def check_fairness(step: Step, evaluated: dict) -> dict:
    """fairlearn metrics over each sensitive attribute at the decision threshold; per-group rates and plots."""
    trained = evaluated[CARRIED]["trained"]
    from include.tasks.gates import with_evidence
    from include.tasks.train.fairness import assess_fairness

    spec = step.spec
    if not spec.gates.fairness.enabled:
        return _disabled("fairness")
    with tempfile.TemporaryDirectory(prefix="slipway-fair-") as tmp:
        out = assess_fairness(
            spec,
            trained["model_uri"],
            trained["splits"]["test"],
            evaluated["decision"],
            tmp,
            train_uri=trained["splits"]["train"],
        )
        step.mlflow.log_artifacts(tmp, "fairness")
    results = with_evidence(out["gates"], step.evidence("fairness/fairness.json"))
    return _gates(
        step, {"fairness": {**out["report"], "mitigation": out.get("mitigation")}}, {"fairness": results}
    )


@block
def explain_model(step: Step, evaluated: dict) -> dict:
    """SHAP explanations (global and local), forbidden features and the sensitive-attribute proxy probe."""
    trained = evaluated[CARRIED]["trained"]
    from include.tasks.train.explain import explain_model as explain
    from include.tasks.train.explain import explainability_gate

    spec = step.spec
    if not spec.gates.explainability.enabled:
        return _disabled("explainability")
    with tempfile.TemporaryDirectory(prefix="slipway-shap-") as tmp:
        out = explain(spec, trained["model_uri"], trained["splits"]["train"], trained["splits"]["test"], tmp)
        step.mlflow.log_artifacts(tmp, "explain")
        published = step.publish(tmp, step.lake(trained["month"], "explain"))
    results = explainability_gate(
        out["global_importance"],
        spec.gates.explainability,
        out.get("proxy"),
        step.evidence("explain/shap_importance.json"),
    )
    record = {
        "explainer": out["explainer"],
        "top_k": out["top_k"],
        "global_importance": out["global_importance"],
        "proxy": out.get("proxy"),
        "plots": {k: v for k, v in published.items() if k.endswith(".png")},
    }
    return _gates(step, {"explainability": record}, {"explainability": results})


@block
def check_robustness(step: Step, evaluated: dict) -> dict:
    """Decision flip rate under the spec's realistic perturbations, per feature and overall."""
    trained = evaluated[CARRIED]["trained"]
    from include.tasks.train.robustness import check_robustness as flips
    from include.tasks.train.robustness import robustness_gate

    spec = step.spec
    if not spec.gates.robustness.enabled:
        return _disabled("robustness")
    out = flips(spec, trained["model_uri"], trained["splits"]["test"], evaluated["decision"])
    step.mlflow.log_dict(out, "robustness/flip_rates.json")
    step.mlflow.log_metric("flip_rate", out["flip_rate"])
    results = robustness_gate(out, spec.gates.robustness, step.evidence("robustness/flip_rates.json"))
    return _gates(step, {"robustness": out}, {"robustness": results})


@block
def optimise_onnx(step: Step, evaluated: dict) -> dict:
    """Whole pipeline to ONNX, onnxruntime graph optimisations; parity at the decision threshold; p99 latency."""
    trained = evaluated[CARRIED]["trained"]
    from include.tasks.train.onnx_export import export_and_check, onnx_gate

    spec = step.spec
    with tempfile.TemporaryDirectory(prefix="slipway-onnx-") as tmp:
        out = export_and_check(
            spec, trained["model_uri"], trained["splits"]["test"], tmp, rule=evaluated["decision"]
        )
        step.mlflow.log_artifacts(tmp, "onnx")
        # Only the graph goes to the lake: the report holds this run's latency measurements.
        published = step.publish(tmp, step.lake(trained["month"], "onnx"), only=("model.onnx",))
    onnx_uri = published.get("model.onnx")
    if out.get("converted", True):
        measured = {
            "onnx_max_abs_diff": out.get("max_abs_diff"),
            "onnx_max_rel_diff": out.get("max_rel_diff"),
            "onnx_label_agreement": out.get("label_agreement"),
            "onnx_p99_ms": out["latency_ms"]["onnx"]["p99"],
        }
        step.mlflow.log_metrics({k: v for k, v in measured.items() if v is not None})
    refs = [data_ref("onnx_model", onnx_uri, out["model_sha256"], "model")] if onnx_uri else []
    extra = {"onnx_uri": onnx_uri, "onnx_sha256": out.get("model_sha256"), "outputs": refs}
    record = {k: v for k, v in out.items() if k != "onnx_path"}
    if not spec.gates.onnx.enabled:
        return {**_disabled("onnx"), "records": {"onnx": record}, **extra}
    results = onnx_gate(out, spec.gates.onnx, step.evidence("onnx/onnx_report.json"))
    return _gates(step, {"onnx": record}, {"onnx": results}, **extra)


@block
def bless_candidate(
    step: Step,
    evaluated: dict,
    compared: dict,
    fair: dict,
    explained: dict,
    robust: dict,
    optimised: dict,
) -> dict:
    """Judge every gate at once: the blessing is complete and passing, or the run fails naming every failed check.

    The blessing goes to this task's run and to the DAG run's parent run (tag
    ``slipway.blessing``), so the verdict is on record even when no version is registered.
    """
    from include.tasks.blessing import make_blessing, raise_unless_blessed
    from include.tasks.gates import GateFailed

    results: list[dict] = []
    records: dict = {}
    extra: dict = {}
    for part in (evaluated, compared, fair, explained, robust, optimised):
        for own in part["gates"].values():
            results.extend(own)
        records.update(part["records"])
        extra.update({k: v for k, v in part.items() if k not in {"gates", "records", "disabled", "outputs"}})
    extra[CARRIED] = evaluated[CARRIED]  # what the card and the registration read, from upstream
    blessing = make_blessing(step.spec, results)
    mlflow = step.mlflow
    mlflow.log_dict(blessing, "blessing.json")
    mlflow.set_tag("slipway.blessing", blessing["state"])
    parent = step.parent_run_id
    try:
        raise_unless_blessed(blessing)
        failure = None
    except GateFailed as exc:
        failure = exc
    if parent:  # the DAG run's record tells the outcome without opening blessing.json
        client = mlflow.MlflowClient()
        client.log_dict(parent, blessing, "blessing.json")
        client.set_tag(parent, "slipway.blessing", blessing["state"])
        failed_gates = sorted({r["gate"] for r in blessing["failed"]} | set(blessing["missing"]))
        client.set_tag(parent, "slipway.blessing.failed_gates", ",".join(failed_gates) or "none")
        if failure is not None:
            client.set_tag(parent, "slipway.failure", str(failure)[:4000])
        metrics = {f"test_{k}": v for k, v in (extra.get("metrics") or {}).items() if k != "rows"}
        metrics |= {
            _metric_name(f"gate.{r['gate']}.{r['metric']}"): r["value"]
            for r in results
            if r["value"] is not None
        }
        for key, value in metrics.items():
            client.log_metric(parent, key, float(value))
    if failure is not None:
        raise failure
    log.info(
        "blessed: %d checks, every gate passed or not applicable (%s)",
        len(results),
        ", ".join(f"{g} {state}" for g, state in blessing["by_gate"].items()),
    )
    return {**extra, "blessing": blessing, "records": records}


def _metric_name(name: str) -> str:
    """An MLflow metric name (letters, digits, _ - . / and spaces) for a gate check's metric."""
    import re

    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", name).strip("_")


@block
def write_model_card(step: Step, blessed: dict) -> dict:
    """Model card (Markdown + HTML): intended use and limits from the spec, everything else from the records."""
    from include import storage
    from include.lineage import code_version
    from include.tasks.train.model_card import write_model_card as write

    spec, rec = step.spec, blessed["records"]
    trained, versioned, validated = (blessed[CARRIED][k] for k in ("trained", "versioned", "validated"))
    card = {
        "dag_id": step.context["ti"].dag_id,
        "run_id": step.context["ti"].run_id,
        "code_version": code_version(),
        "data_version": versioned["data_version"],
        "dvc_uri": versioned["dvc_uri"],
        "rows": trained.get("rows", {}),
        "positive_rate": trained.get("positive_rate"),
        "target_summary": trained.get("target_summary"),
        "task": spec.task,
        "validation": f"{validated['evaluated']} expectations, all passed",
        "metrics": blessed.get("metrics", {}),
        "business": rec.get(
            "business",
            {
                "threshold": blessed.get("threshold"),
                "decision": blessed.get("decision"),
                "value_per_1000": blessed.get("value_per_1000"),
            },
        ),
        "fairness": rec.get("fairness", {}),
        "explain": rec.get("explainability", {}),
        "robustness": rec.get("robustness", {}),
        "onnx": rec.get("onnx", {}),
        "blessing": blessed["blessing"],
    }
    with tempfile.TemporaryDirectory(prefix="slipway-card-") as tmp:
        images = []
        for name, uri in (card["explain"].get("plots") or {}).items():
            img = Path(tmp) / "img" / Path(name).name
            img.parent.mkdir(exist_ok=True)
            img.write_bytes(storage.read_bytes(uri))
            images.append(str(img))
        if images:
            card["shap_plot"] = Path(sorted(images)[0]).name
        out_dir = Path(tmp) / "card"
        write(spec, card, out_dir, images=images)
        # The card names this run and its latencies: it lives in MLflow, not in the lake.
        step.mlflow.log_artifacts(str(out_dir), "model_card")
    return {**blessed, "model_card": f"runs:/{step.run_id}/model_card"}


def _triggered_by(dag_run) -> str:
    """The Airflow user who triggered the run; ``local:<login>`` for ``slipway run`` (``dag.test``, which
    names no Airflow user); empty for a schedule or an asset event."""
    who = getattr(dag_run, "triggering_user_name", None) or ""
    if who == "dag_test":
        import getpass

        return f"local:{getpass.getuser()}"
    return who


@block
def register_model(step: Step, carded: dict) -> dict:
    """Register the blessed ONNX graph as a version (reused on a re-run) and move ``candidate`` forward only."""
    import json

    from include import assets, storage
    from include.lineage import code_version
    from include.model_files import read_model_bytes, verify_sha256
    from include.problem import DECISION_TAG, rule_json
    from include.tasks.metrics import prediction_interval
    from include.tasks.train.register import register_candidate
    from include.tracking import trusted_artifact_uri

    ti = step.context["ti"]
    dag_run = step.context["dag_run"]
    trained, versioned, validated = (carded[CARRIED][k] for k in ("trained", "versioned", "validated"))
    onnx_uri = carded.get("onnx_uri")
    if not onnx_uri:
        from include.tasks.gates import GateFailed

        raise GateFailed("no ONNX model to register: optimise_onnx did not produce one", [])
    tags = {
        "slipway.pipeline": step.pipeline,
        "slipway.dag_id": ti.dag_id,
        "slipway.run_id": ti.run_id,
        # Who triggered the training (empty: a schedule or an asset event); four eyes at approval.
        "slipway.registered_by": _triggered_by(dag_run),
        "slipway.interval_start": str(getattr(dag_run, "data_interval_start", "") or ""),
        "slipway.interval_end": str(getattr(dag_run, "data_interval_end", "") or ""),
        "slipway.month": trained["month"],
        "slipway.data_version": versioned["data_version"],
        "slipway.dvc_uri": versioned["dvc_uri"],
        "slipway.snapshot_uri": versioned["snapshot_uri"],
        "slipway.code_version": code_version(),
        "slipway.validation": "passed" if validated["success"] else "failed",
        "slipway.validation_run_id": validated["run_id"],
        "slipway.evaluation_run_id": carded.get("evaluation_run_id", ""),
        "slipway.task": step.spec.task,
        DECISION_TAG: rule_json(carded["decision"]),
        **(
            {"slipway.classes": json.dumps(step.spec.target.classes)}
            if step.spec.task == "multiclass"
            else {}
        ),
        **(
            {"slipway.prediction_interval": json.dumps(interval)}
            if (interval := prediction_interval(carded["metrics"]))
            else {}
        ),
        **({"slipway.decision_threshold": str(carded["threshold"])} if step.spec.task == "binary" else {}),
        "slipway.value_per_1000": f"{carded.get('value_per_1000', 0.0):.2f}",
        **{
            f"slipway.metric.{k}": f"{v:.6f}"
            for k, v in carded["metrics"].items()
            if k != "rows" and isinstance(v, int | float)
        },
    }
    onnx_bytes = storage.read_bytes(onnx_uri)
    # The graph registered (and served) is the one optimise_onnx measured, not a later rewrite of the key.
    verify_sha256(onnx_bytes, carded["onnx_sha256"], onnx_uri, "re-run optimise_onnx and the tasks after it")
    with tempfile.TemporaryDirectory(prefix="slipway-reg-") as tmp:
        card_dir = None
        if carded.get("model_card"):
            card_dir = step.mlflow.artifacts.download_artifacts(
                trusted_artifact_uri(carded["model_card"]), dst_path=tmp
            )
        out = register_candidate(
            step.spec,
            onnx_bytes,
            read_model_bytes(trained["model_uri"]),
            tags,
            carded["blessing"],
            card_dir,
        )
    parent = step.parent_run_id
    if parent:
        step.mlflow.MlflowClient().set_tag(parent, "slipway.registered_version", str(out["version"]))
    step.mlflow.set_tags(
        {
            "slipway.blessing": "passed",
            "slipway.registered_version": str(out["version"]),
            "slipway.registration": out["registration"],
            "slipway.alias_moved": str(out["alias_moved"]).lower(),
        }
    )
    step.set_outcome(out["message"] + ("" if out["alias_moved"] else ": no new candidate, no rollout"))
    if not out["alias_moved"]:
        # No new candidate: the asset is not emitted (a skipped task emits none), so no rollout starts
        # for a version that is older than the candidate, or reused from an earlier run of this month.
        from airflow.sdk.exceptions import AirflowSkipException

        raise AirflowSkipException(
            f"version {out['version']} registered ({out['registration']}), but 'candidate' did not move "
            f"to it ({out['message']}): no rollout is started"
        )
    candidate = assets.for_pipeline(step.pipeline).candidate
    step.context["outlet_events"][candidate].extra = {
        "model": step.pipeline,
        "version": out["version"],
        "data_version": versioned["data_version"],
        "alias_moved": out["alias_moved"],
    }
    return {k: v for k, v in out.items() if k != "message"}
