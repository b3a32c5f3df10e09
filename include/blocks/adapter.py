"""One adapter from an :mod:`include.tasks` function to a tracked Airflow TaskFlow task.

Every block of every DAG family is written as ``@block def verb_noun(step, *upstream) -> dict``.
:func:`block` turns it into a factory, ``verb_noun(pipeline, **task_kwargs)``, that returns the
TaskFlow task. Around the body the adapter provides, so no block repeats it:

* the task instance's nested MLflow run (:func:`include.lineage.track`): tags, data refs read
  (found in the upstream results) and written (found in the return value), the outcome;
* the pipeline's spec and settings, loaded lazily on :class:`Step`;
* expected failures: the product's deterministic errors (a bad spec, batch or model, a failed
  suite or gate) become ``AirflowFailException``, failed at once without retries, with the message
  the operator reads in the UI. Anything else (an unreachable store) is retried by Airflow.

Heavy libraries are imported inside bodies only: importing a block module is cheap.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
from functools import cached_property
from pathlib import Path
from typing import Any

from airflow.sdk import task

from include.lineage import data_ref, track, tracked
from include.spec import Retries

# Retries with a capped exponential backoff: 1, then 2 minutes. Airflow computes the backoff from
# the try number, which keeps counting across clears (a third clear's first retry would wait 2^5
# minutes): the cap keeps every wait under 5 minutes. A pipeline's DAGs take theirs from its spec
# (``retries:``, the same defaults); this is for DAGs written by hand.
DEFAULT_ARGS = Retries().default_args()

__all__ = ["DEFAULT_ARGS", "Step", "block", "custom_task", "data_ref", "expected_failures"]


def _deterministic_errors() -> tuple[type[BaseException], ...]:
    """The product's errors that a retry cannot fix (imported lazily: some pull in pandas)."""
    from include.attributions import ExplainError
    from include.model_files import ModelFileError
    from include.prediction_log.retention import RetentionError
    from include.registry import PromotionConflict
    from include.spec import SpecError
    from include.tasks.gates import GateFailed
    from include.tasks.rollout.promotion import ServedVersionMismatch
    from include.tasks.score.deliver import DeliveryError
    from include.tasks.score.population import PopulationError
    from include.tasks.train.fairness import FairnessInputError
    from include.tasks.train.feedback import FeedbackError
    from include.tasks.train.fit import TrainingError
    from include.tasks.train.ingest import BatchError
    from include.tasks.train.validate import DataValidationError

    return (
        SpecError,
        BatchError,
        DataValidationError,
        GateFailed,
        TrainingError,
        ModelFileError,
        ExplainError,
        FairnessInputError,
        FeedbackError,
        PromotionConflict,
        ServedVersionMismatch,
        PopulationError,
        DeliveryError,
        RetentionError,
    )


@contextlib.contextmanager
def expected_failures():
    """Turn the product's known, deterministic failures into a non-retried task failure."""
    from airflow.sdk.exceptions import AirflowFailException

    try:
        yield
    except _deterministic_errors() as exc:
        # The reason, in plain words at the top of the failure in the task log; no retry will help.
        logging.getLogger("slipway").error("%s (%s; not retried)", exc, type(exc).__name__)
        raise AirflowFailException(str(exc)) from exc


class Step:
    """What a block body gets besides its upstream results: the pipeline, its spec, the context."""

    def __init__(self, pipeline: str, context: Any):
        self.pipeline = pipeline
        self.context = context

    @cached_property
    def spec(self):
        """The pipeline's validated spec (read when first used)."""
        from include.spec import load_pipeline

        return load_pipeline(self.pipeline)

    @cached_property
    def settings(self):
        """Where things live (see :mod:`include.settings`)."""
        from include.settings import get_settings

        return get_settings()

    @property
    def mlflow(self):
        """The ``mlflow`` module, with this task instance's run active."""
        import mlflow

        return mlflow

    @property
    def run_id(self) -> str:
        """This task instance's MLflow run id."""
        return self.mlflow.active_run().info.run_id

    @property
    def parent_run_id(self) -> str | None:
        """The DAG run's MLflow parent run (this task instance's run is nested under it)."""
        return self.mlflow.active_run().data.tags.get("mlflow.parentRunId")

    def set_outcome(self, line: str) -> None:
        """What this DAG run found or did, in one line, on its MLflow parent run (``slipway.outcome``).

        When the DAG run ends, the lineage listener shows it as the run's note in the Airflow UI
        (unless a person wrote one), and it heads the parent run's description in MLflow."""
        from include.lineage import OUTCOME_TAG

        parent = self.parent_run_id
        if parent:
            self.mlflow.MlflowClient().set_tag(parent, OUTCOME_TAG, line[:1000])
        logging.getLogger("slipway").info("%s", line)

    def evidence(self, path: str) -> str:
        """``runs:/`` URI of an artifact of this task instance's MLflow run."""
        return f"runs:/{self.run_id}/{path}"

    def lake(self, month: str, *parts: str) -> str:
        """URI under the interval's run prefix in the lake: ``<lake>/<pipeline>/runs/month=M/...``."""
        from include.uri import join

        return join(self.settings.lake_uri, self.pipeline, "runs", f"month={month}", *parts)

    def publish(self, local_dir: str | Path, prefix_uri: str, only: tuple[str, ...] = ()) -> dict[str, str]:
        """Copy a folder's files (or ``only`` those) under ``prefix_uri``; return ``{relative name: URI}``.

        The lake holds content-addressed outputs that a re-run rewrites byte for byte: publish what
        later tasks read, never run-dependent measurements (those stay in the MLflow run).
        """
        from include import storage

        out = {}
        for path in sorted(Path(local_dir).rglob("*")):
            rel = path.relative_to(local_dir).as_posix()
            if path.is_file() and (not only or rel in only):
                out[rel] = storage.write_bytes(storage.join(prefix_uri, rel), path.read_bytes())
        return out


def block(fn=None, **fixed_task_kwargs):
    """Decorator: ``fn(step, *upstream)`` becomes a factory ``fn(pipeline, **task_kwargs)`` of a tracked task.

    ``fixed_task_kwargs`` (e.g. ``trigger_rule``) are defaults of every task the factory makes;
    ``task_kwargs`` given to the factory win (``task_id``, ``outlets``, ``retries`` ...).
    """
    if fn is None:
        return functools.partial(block, **fixed_task_kwargs)

    params = list(inspect.signature(fn).parameters.values())
    if not params or params[0].name != "step":
        raise TypeError(f"block {fn.__name__}: the first parameter must be `step`")
    upstream_signature = inspect.Signature(params[1:])

    def factory(pipeline: str, **task_kwargs):
        def body(*args, **kwargs):
            from airflow.sdk import get_current_context

            context = get_current_context()
            with track(pipeline, context, inputs=[args, kwargs]) as record, expected_failures():
                return record(fn(Step(pipeline, context), *args, **kwargs))

        body.__name__ = body.__qualname__ = fn.__name__
        body.__doc__ = fn.__doc__
        body.__signature__ = upstream_signature  # type: ignore[attr-defined]  # TaskFlow binds XComs by it
        kwargs = {**fixed_task_kwargs, **task_kwargs}
        return task(task_id=kwargs.pop("task_id", fn.__name__), **kwargs)(body)

    factory.__name__ = factory.__qualname__ = fn.__name__
    factory.__doc__ = fn.__doc__
    factory.__wrapped_block__ = fn
    return factory


def custom_task(pipeline: str, fn, **task_kwargs):
    """Task: a plain Python function of the upstream results, with Slipway's lineage around it.

    ``fn`` receives the upstream tasks' return values (small dicts of URIs and versions) and
    returns a small JSON-serialisable dict; include data refs (:func:`data_ref`) in it to have what
    it wrote recorded as lineage. Slipway's deterministic errors fail it without retries.
    """

    @functools.wraps(fn)
    def body(*args, **kwargs):
        with expected_failures():
            return fn(*args, **kwargs)

    return task(task_id=task_kwargs.pop("task_id", fn.__name__), **task_kwargs)(tracked(pipeline)(body))
