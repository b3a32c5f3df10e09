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
import json
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
    from include.tasks.evaluate import GateFailed
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
            "model_uri": out["model_uri"],
            "splits": out["splits"],
            "data_version": versioned["data_version"],
            "outputs": [data_ref("model", out["model_uri"], out["model_sha256"], "model")],
        }

    return train_model


def evaluate_model(pipeline: str, **task_kwargs):
    """Task: held-out metrics and the evaluation gate."""

    @task(task_id=task_kwargs.pop("task_id", "evaluate_model"), **task_kwargs)
    @tracked(pipeline)
    def evaluate_model(trained: dict) -> dict:
        """ROC AUC, PR AUC, F1, precision, recall, Brier on the test split, gated by the spec's floors."""
        import mlflow

        from include.spec import load_pipeline
        from include.tasks.evaluate import evaluate_model as score
        from include.tasks.evaluate import evaluation_gate, raise_for_gate

        with expected_failures():
            spec = load_pipeline(pipeline)
            out = score(spec, trained["model_uri"], trained["splits"]["test"])
            mlflow.log_metrics({f"test_{k}": v for k, v in out["metrics"].items()})
            run_id = mlflow.active_run().info.run_id
            gate = evaluation_gate(
                out["metrics"], spec.gates.evaluation, f"runs:/{run_id}/blessing/evaluation.json"
            )
            mlflow.log_dict({"results": gate}, "blessing/evaluation.json")
            mlflow.set_tag(
                "slipway.gate.evaluation", "passed" if all(g["passed"] for g in gate) else "failed"
            )
            raise_for_gate(gate)
        return {"metrics": out["metrics"], "gates": gate, "run_id": run_id}

    return evaluate_model


def register_model(pipeline: str, **task_kwargs):
    """Task: register the model version and point the ``candidate`` alias at it."""

    @task(
        task_id=task_kwargs.pop("task_id", "register_model"),
        outlets=[candidate_asset(pipeline)],
        **task_kwargs,
    )
    @tracked(pipeline)
    def register_model(trained: dict, evaluated: dict, validated: dict, versioned: dict) -> dict:
        """Runs only when every upstream task succeeded (Airflow's all_success trigger rule)."""
        from include.lineage import code_version
        from include.spec import load_pipeline
        from include.tasks.register import register_candidate

        ctx = _ctx()
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
            "slipway.evaluation_run_id": evaluated["run_id"],
            "slipway.gates": json.dumps(
                {g["gate"] + "." + g["metric"]: g["passed"] for g in evaluated["gates"]}, sort_keys=True
            ),
            **{f"slipway.metric.{k}": f"{v:.6f}" for k, v in evaluated["metrics"].items() if k != "rows"},
        }
        out = register_candidate(
            load_pipeline(pipeline), trained["model_uri"], trained["splits"]["test"], tags
        )
        ctx["outlet_events"][candidate_asset(pipeline)].extra = {
            "model": pipeline,
            "version": out["version"],
            "data_version": versioned["data_version"],
        }
        return out

    return register_model


def training_chain(pipeline: str) -> dict:
    """Wire the training tasks of ``pipeline`` inside the current DAG; return them by name."""
    landed = wait_for_batch(pipeline)
    ingested = ingest_batch(pipeline)(landed.output)
    versioned = version_snapshot(pipeline)(ingested)
    validated = validate_snapshot(pipeline)(versioned)
    trained = train_model(pipeline)(versioned, validated)
    evaluated = evaluate_model(pipeline)(trained)
    registered = register_model(pipeline)(trained, evaluated, validated, versioned)
    return {
        "wait_for_batch": landed,
        "ingest_batch": ingested,
        "version_snapshot": versioned,
        "validate_snapshot": validated,
        "train_model": trained,
        "evaluate_model": evaluated,
        "register_model": registered,
    }


def custom_task(pipeline: str, fn, **task_kwargs):
    """Task: a plain Python function of the upstream results, with Slipway's lineage around it.

    ``fn`` receives the upstream tasks' return values (small dicts of URIs and versions) and
    returns a small JSON-serialisable dict; include data refs (:func:`include.lineage.data_ref`)
    in it to have what it wrote recorded as lineage.
    """
    return task(task_id=task_kwargs.pop("task_id", fn.__name__), **task_kwargs)(tracked(pipeline)(fn))
