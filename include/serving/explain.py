"""Local explanations for one input: SHAP contributions per original column, in bounded time.

The ONNX graph scores; SHAP needs the fitted scikit-learn Pipeline, so the version's skops file
is read from its MLflow run, checked against the digest registered with the version
(``slipway.sklearn_sha256``) and loaded with the trusted-types allowlist (nothing is unpickled).
The background is a seeded sample of the version's own training rows (its snapshot, rows of the
``train`` split). The explainer is the one the training gate used (:func:`explain_pipeline`).

Explaining costs far more than scoring: at most ``max_concurrent`` explanations run at a time (a
request beyond that gets 503 + Retry-After) and one that takes longer than ``timeout_s`` is
answered with 503 (the computation finishes in its thread and is discarded).
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any

BACKGROUND_ROWS = 100
LOAD_TIMEOUT_S = 60.0  # loading a version for explanations, on its first explanation


class ExplainBusy(RuntimeError):
    """Too many explanations in flight, or one took too long."""


@dataclass(frozen=True)
class _Loaded:
    pipeline: Any  # the fitted scikit-learn Pipeline
    background: Any  # a pandas DataFrame of training rows


class Explainers:
    """The scikit-learn model and background of each served version, loaded on first use."""

    def __init__(self, tracking_uri: str | None = None, max_concurrent: int = 2, timeout_s: float = 10.0):
        self.tracking_uri = tracking_uri
        self.timeout_s = timeout_s
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self._cache: dict[tuple[str, int], _Loaded] = {}
        self._lock = threading.Lock()

    def _load(self, pipeline: str, version: int) -> _Loaded:
        import mlflow

        from include.model_files import ModelRefused

        with self._lock:
            hit = self._cache.get((pipeline, version))
        if hit is not None:
            return hit
        from include.registry import load_explainable
        from include.tracking import mlflow_client

        client = mlflow.MlflowClient(self.tracking_uri) if self.tracking_uri else mlflow_client()
        try:
            model, background = load_explainable(client, pipeline, version, BACKGROUND_ROWS)
        except ModelRefused as exc:
            raise ExplainUnavailable(str(exc)) from None
        loaded = _Loaded(model, background)
        with self._lock:
            self._cache[(pipeline, version)] = loaded
        return loaded

    def _explain(self, pipeline: str, version: int, features: tuple[str, ...], values: dict) -> dict:
        import pandas as pd

        from include.attributions import explain_pipeline

        loaded = self._load(pipeline, version)
        sample = pd.DataFrame({n: [values[n]] for n in features})
        background = loaded.background[list(features)]
        out = explain_pipeline(loaded.pipeline, background, sample)
        per_col: dict[str, float] = {}
        for (_, col), v in zip(out["features"], out["values"][0], strict=True):
            per_col[col] = per_col.get(col, 0.0) + float(v)
        ranked = sorted(per_col.items(), key=lambda kv: (-abs(kv[1]), kv[0]))
        base = float(out["base_values"][0])
        model = loaded.pipeline
        answer: dict = {}
        if not hasattr(model, "predict_proba"):  # a regressor: the number explained
            answer["sklearn_prediction"] = round(float(model.predict(sample)[0]), 6)
        elif out.get("values_by_class") is not None:  # multiclass: the class whose output is explained
            proba = model.predict_proba(sample)[0]
            top = int(proba.argmax())
            answer["explained_class_index"] = top
            answer["sklearn_probability"] = round(float(proba[top]), 6)
        else:
            answer["sklearn_probability"] = round(
                float(model.predict_proba(sample)[0][-1]), 6
            )  # positive last
        return {
            "explainer": out["explainer"],
            "output": out["output"],
            "base_value": round(base, 6),
            "output_value": round(base + sum(per_col.values()), 6),
            **answer,
            "contributions": [
                {"feature": col, "value": values[col], "shap": round(v, 6)} for col, v in ranked
            ],
        }

    async def explain(self, pipeline: str, version: int, features: tuple[str, ...], values: dict) -> dict:
        if not self._slots.acquire(blocking=False):
            raise ExplainBusy("explanations are busy; retry shortly")
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(None, self._explain, pipeline, version, features, values)
        future.add_done_callback(lambda _f: self._slots.release())
        # The first explanation of a version also loads it (shap, the skops model, the background
        # rows): that gets its own bound, so a cold start is not mistaken for a slow explanation.
        with self._lock:
            cold = (pipeline, version) not in self._cache
        budget = self.timeout_s + (LOAD_TIMEOUT_S if cold else 0.0)
        try:
            return await asyncio.wait_for(asyncio.shield(future), budget)
        except TimeoutError as exc:
            raise ExplainBusy(f"the explanation took longer than {budget:.0f} s; retry later") from exc


class ExplainUnavailable(RuntimeError):
    """The version cannot be explained (no scikit-learn model or training rows on record)."""
