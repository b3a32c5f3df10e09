"""Building blocks: the Airflow tasks of a Slipway pipeline, for generated and hand-written DAGs.

Each factory takes a pipeline name and returns a TaskFlow task. The task body reads the spec,
calls the pure function in :mod:`include.tasks`, records what it produced in MLflow and
returns a small dict (URIs, versions, metrics) for XCom. Every body runs inside
:func:`include.lineage.track`, so lineage needs no code from the author. Expected failures
(a bad batch, a failed suite, a failed gate) raise ``AirflowFailException``: retrying would
not change the outcome, and the message is what the operator reads in the UI.

Heavy libraries are imported inside task bodies only: importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import tempfile
from datetime import timedelta
from pathlib import Path

from airflow.sdk import Asset, task

from include.lineage import data_ref, tracked
from include.sensors import BatchSensor, interval_month

DEFAULT_ARGS = {
    "retries": 2,
    "retry_delay": timedelta(minutes=1),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=10),
}


def candidate_asset(pipeline: str) -> Asset:
    """The asset updated when a pipeline registers a new candidate model version."""
    return Asset(name=f"{pipeline}__candidate", uri=f"slipway://{pipeline}/candidate", group="model")


@contextlib.contextmanager
def expected_failures():
    """Turn the product's known, deterministic failures into a non-retried task failure."""
    from airflow.sdk.exceptions import AirflowFailException

    from include.spec import SpecError
    from include.tasks.gates import GateFailed
    from include.tasks.ingest import BatchError
    from include.tasks.train import TrainingError
    from include.tasks.validate import DataValidationError

    try:
        yield
    except (SpecError, BatchError, DataValidationError, GateFailed, TrainingError) as exc:
        raise AirflowFailException(str(exc)) from exc


def _ctx():
    from airflow.sdk import get_current_context

    return get_current_context()


def _run_prefix(pipeline: str, month: str) -> str:
    from include import storage
    from include.settings import get_settings

    return storage.join(get_settings().lake_uri, pipeline, "runs", f"month={month}")


def wait_for_batch(pipeline: str, **kwargs) -> BatchSensor:
    """Deferrable sensor: wait until the interval's batch is in the landing zone."""
    return BatchSensor(task_id=kwargs.pop("task_id", "wait_for_batch"), pipeline=pipeline, **kwargs)


def ingest_batch(pipeline: str, **task_kwargs):
    """Task: ingest the interval's batch (and earlier landed ones missing from the lake)."""

    @task(task_id=task_kwargs.pop("task_id", "ingest_batch"), **task_kwargs)
    @tracked(pipeline)
    def ingest_batch(landed: dict | None = None) -> dict:
        """Check the batch against the spec, hash PII, write Parquet to the lake."""
        import mlflow

        from include.settings import get_settings, pii_key
        from include.spec import load_pipeline
        from include.tasks.ingest import ingest_batches

        s = get_settings()
        with expected_failures():
            spec = load_pipeline(pipeline)
            out = ingest_batches(spec, interval_month(_ctx()), s.landing_uri, s.lake_uri, pii_key(s))
        mlflow.log_metric("rows", out["rows"])
        mlflow.set_tag("slipway.batches_written", ",".join(out["written"]) or "none")
        refs = [data_ref(f"batch-{b['month']}", b["uri"], b["sha256"], "lake") for b in out["batches"]]
        return {"month": out["month"], "batch_uris": out["batch_uris"], "rows": out["rows"], "outputs": refs}

    return ingest_batch


def version_snapshot(pipeline: str, **task_kwargs):
    """Task: build the training snapshot, add it to DVC and push it to the DVC remote."""

    @task(task_id=task_kwargs.pop("task_id", "version_snapshot"), **task_kwargs)
    @tracked(pipeline)
    def version_snapshot(ingested: dict) -> dict:
        """Snapshot = every batch up to the interval; its DVC md5 is the data version."""
        import mlflow

        from include import storage
        from include.settings import get_settings
        from include.tasks.version import build_snapshot
        from include.tasks.version import version_snapshot as dvc_version

        s = get_settings()
        month = ingested["month"]
        snap_uri = storage.join(s.lake_uri, pipeline, "snapshots", f"month={month}", "snapshot.parquet")
        snap = build_snapshot(ingested["batch_uris"], snap_uri)
        ver = dvc_version(snap_uri, pipeline, s.dvc_workdir, s.dvc_remote_uri, s.s3_endpoint_url)
        mlflow.log_params({"data_version": ver["data_version"], "snapshot_rows": snap["rows"]})
        mlflow.set_tag("slipway.data_version", ver["data_version"])
        return {
            "month": month,
            "snapshot_uri": snap_uri,
            "rows": snap["rows"],
            "data_version": ver["data_version"],
            "dvc_uri": ver["dvc_uri"],
            "outputs": [data_ref("training_snapshot", ver["dvc_uri"], ver["data_version"], "dvc")],
        }

    return version_snapshot


def validate_snapshot(pipeline: str, **task_kwargs):
    """Task: run the pipeline's Great Expectations suite on the snapshot."""

    @task(task_id=task_kwargs.pop("task_id", "validate_snapshot"), **task_kwargs)
    @tracked(pipeline)
    def validate_snapshot(versioned: dict) -> dict:
        """Result JSON and Data Docs go to MLflow; a failed suite stops the pipeline here."""
        import mlflow

        from include.settings import get_settings
        from include.spec import load_pipeline
        from include.tasks.validate import raise_for_failures
        from include.tasks.validate import validate_snapshot as run_suite

        with expected_failures():
            spec = load_pipeline(pipeline)
            suite = get_settings().expectations_dir / spec.suite_file
            with tempfile.TemporaryDirectory(prefix="slipway-gx-") as tmp:
                result = run_suite(versioned["snapshot_uri"], suite, tmp)
                mlflow.log_artifact(result["result_path"], "validation")
                mlflow.log_artifacts(str(Path(result["docs_path"]).parent), "validation/data_docs")
            mlflow.log_metrics(
                {"expectations_evaluated": result["evaluated"], "expectations_failed": len(result["failed"])}
            )
            mlflow.set_tag("slipway.validation", "passed" if result["success"] else "failed")
            mlflow.log_dict({"failed": result["failed"]}, "validation/failed_expectations.json")
            raise_for_failures(result, spec.name)
        return {
            "success": result["success"],
            "evaluated": result["evaluated"],
            "successful": result["successful"],
            "suite": result["suite"],
            "run_id": mlflow.active_run().info.run_id,
        }

    return validate_snapshot


def train_model(pipeline: str, **task_kwargs):
    """Task: fit the spec's scikit-learn Pipeline on the training split."""

    @task(task_id=task_kwargs.pop("task_id", "train_model"), **task_kwargs)
    @tracked(pipeline)
    def train_model(versioned: dict, validated: dict | None = None) -> dict:
        """Seeded fit; model (skops, no pickle) and splits written under the interval's run prefix."""
        import mlflow

        from include.spec import load_pipeline
        from include.tasks.train import train_model as fit

        with expected_failures():
            spec = load_pipeline(pipeline)
            out = fit(spec, versioned["snapshot_uri"], _run_prefix(pipeline, versioned["month"]))
        mlflow.log_params({f"model.{k}": v for k, v in out["params"].items()})
        mlflow.log_params({"estimator": out["estimator"], "class_imbalance": spec.class_imbalance})
        mlflow.log_metrics(
            {f"rows_{k}": v for k, v in out["rows"].items()} | {"positive_rate": out["positive_rate"]}
        )
        return {
            "month": versioned["month"],
            "model_uri": out["model_uri"],
            "splits": out["splits"],
            "rows": out["rows"],
            "positive_rate": out["positive_rate"],
            "data_version": versioned["data_version"],
            "outputs": [data_ref("model", out["model_uri"], out["model_sha256"], "model")],
        }

    return train_model


def _publish(local_dir: str | Path, prefix_uri: str) -> dict[str, str]:
    """Copy a folder's files to the lake (by reference for later tasks); return {file name: URI}."""
    from include import storage

    out = {}
    for path in sorted(Path(local_dir).rglob("*")):
        if path.is_file():
            rel = path.relative_to(local_dir).as_posix()
            out[rel] = storage.write_bytes(storage.join(prefix_uri, rel), path.read_bytes())
    return out


def _gate(spec, gate: str, previous: dict, own: list[dict], records: dict | None = None, **carry) -> dict:
    """Add a gate's results to the blessing carried along the chain; on failure record it and stop.

    The failed blessing goes to this task's MLflow run and to the DAG run's parent run (tag
    ``slipway.blessing = failed``), so the reason is on record even though no version exists.
    """
    import mlflow

    from include.tasks.blessing import make_blessing
    from include.tasks.gates import check, raise_for_gate

    run = mlflow.active_run()
    if not own:  # nothing to check (e.g. no sensitive attributes): on record, and complete
        own = [
            check(gate, "checks_applicable", 0, 0, ">=", note="nothing in the spec for this gate to check")
        ]
    mlflow.log_dict({"gate": gate, "results": own}, f"blessing/{gate}.json")
    passed = all(r["passed"] for r in own)
    mlflow.set_tag(f"slipway.gate.{gate}", "passed" if passed else "failed")
    results = [*previous.get("blessing", []), *own]
    if not passed:
        blessing = make_blessing(spec, results)
        mlflow.log_dict(blessing, "blessing.json")
        parent = run.data.tags.get("mlflow.parentRunId")
        if parent:
            client = mlflow.MlflowClient()
            client.log_dict(parent, blessing, "blessing.json")
            client.set_tag(parent, "slipway.blessing", "failed")
            client.set_tag(parent, "slipway.blessing.failed_gate", gate)
        raise_for_gate(own)
    return {
        **{k: v for k, v in previous.items() if k not in {"blessing", "records"}},
        **carry,
        "blessing": results,
        "records": {**previous.get("records", {}), **({gate: records} if records is not None else {})},
    }


def _evidence(path: str) -> str:
    import mlflow

    return f"runs:/{mlflow.active_run().info.run_id}/{path}"


def evaluate_model(pipeline: str, **task_kwargs):
    """Task: held-out metrics, the business decision threshold, and the evaluation gate."""

    @task(task_id=task_kwargs.pop("task_id", "evaluate_model"), **task_kwargs)
    @tracked(pipeline)
    def evaluate_model(trained: dict, validated: dict) -> dict:
        """Threshold chosen for expected value on validation data; test metrics gated by the spec's floors."""
        import mlflow

        from include.spec import load_pipeline
        from include.tasks.blessing import validation_result
        from include.tasks.evaluate import evaluate_model as score
        from include.tasks.evaluate import evaluation_gate

        with expected_failures():
            spec = load_pipeline(pipeline)
            out = score(
                spec, trained["model_uri"], trained["splits"]["test"], trained["splits"]["validation"]
            )
            mlflow.log_metrics({f"test_{k}": v for k, v in out["metrics"].items()})
            mlflow.log_metrics(
                {"decision_threshold": out["threshold"], "value_per_1000": out["value_per_1000"]}
            )
            mlflow.log_dict(
                {"curve": out["value_curve"], "chosen": out["threshold"]}, "business/value_curve.json"
            )
            gate = evaluation_gate(
                out["metrics"], spec.gates.evaluation, _evidence("blessing/evaluation.json")
            )
            start = {"blessing": [validation_result(validated, f"runs:/{validated['run_id']}/validation")]}
            return _gate(
                spec,
                "evaluation",
                start,
                gate,
                records={"metrics": out["metrics"], "metrics_at_0_5": out["metrics_at_0_5"]},
                threshold=out["threshold"],
                value_per_1000=out["value_per_1000"],
                metrics=out["metrics"],
                evaluation_run_id=mlflow.active_run().info.run_id,
            )

    return evaluate_model


def compare_champion(pipeline: str, **task_kwargs):
    """Task: candidate vs the current champion on the same test set (champion and business gates)."""

    @task(task_id=task_kwargs.pop("task_id", "compare_champion"), **task_kwargs)
    @tracked(pipeline)
    def compare_champion(trained: dict, evaluated: dict) -> dict:
        """Maximum regressions against the champion; expected value floor and maximum drop."""
        import mlflow

        from include.spec import load_pipeline
        from include.tasks.business import business_gate
        from include.tasks.champion import compare_with_champion, load_champion

        with expected_failures():
            spec = load_pipeline(pipeline)
            champion = (
                load_champion(spec.name)
                if spec.gates.champion.enabled or spec.gates.business.enabled
                else None
            )
            cmp = compare_with_champion(
                spec,
                trained["model_uri"],
                trained["splits"]["test"],
                evaluated["threshold"],
                champion,
                _evidence("champion/comparison.json"),
            )
            mlflow.log_dict({k: v for k, v in cmp.items() if k != "gates"}, "champion/comparison.json")
            champ_value = cmp["champion"]["value_per_1000"] if cmp["champion"] else None
            business = {
                "threshold": evaluated["threshold"],
                "value_per_1000": cmp["candidate"]["value_per_1000"],
                "champion_version": cmp["champion"]["version"] if cmp["champion"] else None,
                "champion_threshold": cmp["champion"]["threshold"] if cmp["champion"] else None,
                "champion_value_per_1000": champ_value,
            }
            mlflow.log_metrics({"value_per_1000": business["value_per_1000"]})
            step = evaluated
            if spec.gates.champion.enabled:
                step = _gate(spec, "champion", step, cmp["gates"], records=cmp)
            if spec.gates.business.enabled:
                own = business_gate(
                    business["value_per_1000"],
                    champ_value,
                    spec.gates.business,
                    _evidence("champion/comparison.json"),
                )
                step = _gate(spec, "business", step, own, records=business)
            return step

    return compare_champion


def check_fairness(pipeline: str, **task_kwargs):
    """Task: fairlearn metrics over each sensitive attribute, gated by the spec."""

    @task(task_id=task_kwargs.pop("task_id", "check_fairness"), **task_kwargs)
    @tracked(pipeline)
    def check_fairness(trained: dict, previous: dict) -> dict:
        """Demographic parity, disparate impact, equal opportunity, equalized odds; per-group rates."""
        import mlflow

        from include.spec import load_pipeline
        from include.tasks.fairness import assess_fairness

        with expected_failures():
            spec = load_pipeline(pipeline)
            if not spec.gates.fairness.enabled:
                return previous
            with tempfile.TemporaryDirectory(prefix="slipway-fair-") as tmp:
                out = assess_fairness(
                    spec,
                    trained["model_uri"],
                    trained["splits"]["test"],
                    previous["threshold"],
                    tmp,
                    train_uri=trained["splits"]["train"],
                )
                mlflow.log_artifacts(tmp, "fairness")
            gates = [{**g, "evidence_uri": _evidence("fairness/fairness.json")} for g in out["gates"]]
            return _gate(
                spec,
                "fairness",
                previous,
                gates,
                records={**out["report"], "mitigation": out.get("mitigation")},
            )

    return check_fairness


def explain_model(pipeline: str, **task_kwargs):
    """Task: SHAP explanations (global and local) and the forbidden-features gate."""

    @task(task_id=task_kwargs.pop("task_id", "explain_model"), **task_kwargs)
    @tracked(pipeline)
    def explain_model(trained: dict, previous: dict) -> dict:
        """Mean |SHAP| per feature on a bounded sample; none of the forbidden features in the top-k."""
        import mlflow

        from include.spec import load_pipeline
        from include.tasks.explain import explain_model as explain
        from include.tasks.explain import explainability_gate

        with expected_failures():
            spec = load_pipeline(pipeline)
            if not spec.gates.explainability.enabled:
                return previous
            prefix = storage_join(_run_prefix(pipeline, _month(trained)), "explain")
            with tempfile.TemporaryDirectory(prefix="slipway-shap-") as tmp:
                out = explain(
                    spec, trained["model_uri"], trained["splits"]["train"], trained["splits"]["test"], tmp
                )
                mlflow.log_artifacts(tmp, "explain")
                published = _publish(tmp, prefix)
            gates = explainability_gate(
                out["global_importance"], spec.gates.explainability, _evidence("explain/shap_importance.json")
            )
            record = {
                "explainer": out["explainer"],
                "top_k": out["top_k"],
                "global_importance": out["global_importance"],
                "plots": {k: v for k, v in published.items() if k.endswith(".png")},
            }
            return _gate(spec, "explainability", previous, gates, records=record)

    return explain_model


def check_robustness(pipeline: str, **task_kwargs):
    """Task: decision flip rate under the spec's realistic perturbations."""

    @task(task_id=task_kwargs.pop("task_id", "check_robustness"), **task_kwargs)
    @tracked(pipeline)
    def check_robustness(trained: dict, previous: dict) -> dict:
        """Flip rate at the decision threshold, per feature and overall."""
        import mlflow

        from include.spec import load_pipeline
        from include.tasks.robustness import check_robustness as flips
        from include.tasks.robustness import robustness_gate

        with expected_failures():
            spec = load_pipeline(pipeline)
            if not spec.gates.robustness.enabled:
                return previous
            out = flips(spec, trained["model_uri"], trained["splits"]["test"], previous["threshold"])
            mlflow.log_dict(out, "robustness/flip_rates.json")
            mlflow.log_metric("flip_rate", out["flip_rate"])
            gates = robustness_gate(out, spec.gates.robustness, _evidence("robustness/flip_rates.json"))
            return _gate(spec, "robustness", previous, gates, records=out)

    return check_robustness


def optimise_onnx(pipeline: str, **task_kwargs):
    """Task: convert the whole pipeline to ONNX, optimise it, check parity and latency."""

    @task(task_id=task_kwargs.pop("task_id", "optimise_onnx"), **task_kwargs)
    @tracked(pipeline)
    def optimise_onnx(trained: dict, previous: dict) -> dict:
        """skl2onnx + onnxruntime graph optimisations; parity on the full test set; p99 single-row latency."""
        import mlflow

        from include.spec import load_pipeline
        from include.tasks.onnx_export import export_and_check, onnx_gate

        with expected_failures():
            spec = load_pipeline(pipeline)
            prefix = storage_join(_run_prefix(pipeline, _month(trained)), "onnx")
            with tempfile.TemporaryDirectory(prefix="slipway-onnx-") as tmp:
                out = export_and_check(spec, trained["model_uri"], trained["splits"]["test"], tmp)
                mlflow.log_artifacts(tmp, "onnx")
                published = _publish(tmp, prefix)
            onnx_uri = published.get("model.onnx")
            if out.get("converted", True):
                mlflow.log_metrics(
                    {
                        "onnx_max_abs_diff": out["max_abs_diff"],
                        "onnx_label_agreement": out["label_agreement"],
                        "onnx_p99_ms": out["latency_ms"]["onnx"]["p99"],
                    }
                )
            gates = onnx_gate(out, spec.gates.onnx, _evidence("onnx/onnx_report.json"))
            if not spec.gates.onnx.enabled:
                gates = []
            record = {k: v for k, v in out.items() if k != "onnx_path"}
            step = _gate(spec, "onnx", previous, gates, records=record) if gates else previous
            refs = [data_ref("onnx_model", onnx_uri, out["model_sha256"], "model")] if onnx_uri else []
            return {**step, "onnx_uri": onnx_uri, "outputs": refs}

    return optimise_onnx


def write_model_card(pipeline: str, **task_kwargs):
    """Task: the model card (Markdown + HTML) from the spec and every record of this run."""

    @task(task_id=task_kwargs.pop("task_id", "write_model_card"), **task_kwargs)
    @tracked(pipeline)
    def write_model_card(trained: dict, versioned: dict, validated: dict, previous: dict) -> dict:
        """Intended use and limits from the spec; data, metrics, fairness, SHAP, ONNX, blessing from the records."""
        import mlflow

        from include import storage
        from include.lineage import code_version
        from include.spec import load_pipeline
        from include.tasks.blessing import make_blessing
        from include.tasks.model_card import write_model_card as write

        spec = load_pipeline(pipeline)
        rec = previous.get("records", {})
        ctx = _ctx()
        card = {
            "dag_id": ctx["ti"].dag_id,
            "run_id": ctx["ti"].run_id,
            "code_version": code_version(),
            "data_version": versioned["data_version"],
            "dvc_uri": versioned["dvc_uri"],
            "rows": trained.get("rows", {}),
            "positive_rate": trained.get("positive_rate"),
            "validation": f"{validated['evaluated']} expectations, all passed",
            "metrics": previous.get("metrics", {}),
            "business": rec.get(
                "business",
                {"threshold": previous.get("threshold"), "value_per_1000": previous.get("value_per_1000")},
            ),
            "fairness": rec.get("fairness", {}),
            "explain": rec.get("explainability", {}),
            "robustness": rec.get("robustness", {}),
            "onnx": rec.get("onnx", {}),
            "blessing": make_blessing(spec, previous.get("blessing", [])),
        }
        prefix = storage_join(_run_prefix(pipeline, _month(trained)), "model_card")
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
            mlflow.log_artifacts(str(out_dir), "model_card")
            published = _publish(out_dir, prefix)
        return {**previous, "model_card": published}

    return write_model_card


def register_model(pipeline: str, **task_kwargs):
    """Task: register the blessed model version and point the ``candidate`` alias at it."""

    @task(
        task_id=task_kwargs.pop("task_id", "register_model"),
        outlets=[candidate_asset(pipeline)],
        **task_kwargs,
    )
    @tracked(pipeline)
    def register_model(trained: dict, versioned: dict, validated: dict, carded: dict) -> dict:
        """Only a complete, passing blessing gets a version an alias; the ONNX graph is the deployable artifact."""
        import mlflow

        from include import storage
        from include.lineage import code_version
        from include.spec import load_pipeline
        from include.tasks.blessing import make_blessing
        from include.tasks.register import register_candidate

        ctx = _ctx()
        with expected_failures():
            spec = load_pipeline(pipeline)
            blessing = make_blessing(spec, carded["blessing"])
            tags = {
                "slipway.pipeline": pipeline,
                "slipway.dag_id": ctx["ti"].dag_id,
                "slipway.run_id": ctx["ti"].run_id,
                "slipway.data_version": versioned["data_version"],
                "slipway.dvc_uri": versioned["dvc_uri"],
                "slipway.snapshot_uri": versioned["snapshot_uri"],
                "slipway.code_version": code_version(),
                "slipway.validation": "passed" if validated["success"] else "failed",
                "slipway.validation_run_id": validated["run_id"],
                "slipway.evaluation_run_id": carded.get("evaluation_run_id", ""),
                "slipway.decision_threshold": str(carded["threshold"]),
                "slipway.value_per_1000": f"{carded.get('value_per_1000', 0.0):.2f}",
                **{f"slipway.metric.{k}": f"{v:.6f}" for k, v in carded["metrics"].items() if k != "rows"},
            }
            with tempfile.TemporaryDirectory(prefix="slipway-reg-") as tmp:
                card_dir = None
                if carded.get("model_card"):
                    card_dir = Path(tmp) / "card"
                    for name, uri in carded["model_card"].items():
                        (card_dir / name).parent.mkdir(parents=True, exist_ok=True)
                        (card_dir / name).write_bytes(storage.read_bytes(uri))
                onnx_bytes = storage.read_bytes(carded["onnx_uri"]) if carded.get("onnx_uri") else None
                if onnx_bytes is None:
                    from include.tasks.gates import GateFailed

                    raise GateFailed("no ONNX model to register: the onnx gate did not produce one", [])
                out = register_candidate(
                    spec, onnx_bytes, storage.read_bytes(trained["model_uri"]), tags, blessing, card_dir
                )
            mlflow.set_tag("slipway.blessing", "passed")
        ctx["outlet_events"][candidate_asset(pipeline)].extra = {
            "model": pipeline,
            "version": out["version"],
            "data_version": versioned["data_version"],
        }
        return out

    return register_model


def _month(trained: dict) -> str:
    return trained["month"]


def storage_join(base: str, *parts: str) -> str:
    """``include.storage.join`` without importing it at module level."""
    from include import storage

    return storage.join(base, *parts)


def training_chain(pipeline: str) -> dict:
    """Wire the training tasks of ``pipeline`` inside the current DAG; return them by name."""
    landed = wait_for_batch(pipeline)
    ingested = ingest_batch(pipeline)(landed.output)
    versioned = version_snapshot(pipeline)(ingested)
    validated = validate_snapshot(pipeline)(versioned)
    trained = train_model(pipeline)(versioned, validated)
    evaluated = evaluate_model(pipeline)(trained, validated)
    compared = compare_champion(pipeline)(trained, evaluated)
    fair = check_fairness(pipeline)(trained, compared)
    explained = explain_model(pipeline)(trained, fair)
    robust = check_robustness(pipeline)(trained, explained)
    optimised = optimise_onnx(pipeline)(trained, robust)
    carded = write_model_card(pipeline)(trained, versioned, validated, optimised)
    registered = register_model(pipeline)(trained, versioned, validated, carded)
    return {
        "wait_for_batch": landed,
        "ingest_batch": ingested,
        "version_snapshot": versioned,
        "validate_snapshot": validated,
        "train_model": trained,
        "evaluate_model": evaluated,
        "compare_champion": compared,
        "check_fairness": fair,
        "explain_model": explained,
        "check_robustness": robust,
        "optimise_onnx": optimised,
        "write_model_card": carded,
        "register_model": registered,
    }


def custom_task(pipeline: str, fn, **task_kwargs):
    """Task: a plain Python function of the upstream results, with Slipway's lineage around it.

    ``fn`` receives the upstream tasks' return values (small dicts of URIs and versions) and
    returns a small JSON-serialisable dict; include data refs (:func:`include.lineage.data_ref`)
    in it to have what it wrote recorded as lineage.
    """
    return task(task_id=task_kwargs.pop("task_id", fn.__name__), **task_kwargs)(tracked(pipeline)(fn))
