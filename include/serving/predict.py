"""The predict route: a request's rows checked, routed between champion and challenger, scored, and
answered only once their rows are committed to the prediction log; the shadow mirror beside it."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from include.prediction_log.errors import LogOverloaded, LogUnavailable
from include.prediction_log.rows import FailureRow, PredictionRow, new_request_id
from include.serving import metrics as m
from include.serving.asgi import Request, Response
from include.serving.models import PipelineState, sticky_share
from include.serving.schema import RequestError
from include.serving.service import Service, error_response, json_response, read_json

log = logging.getLogger(__name__)

MAX_SHADOW_IN_FLIGHT = 256


async def predict(service: Service, request: Request) -> Response:
    pipeline, schema, denied = await service.admit(request, "predict")
    if denied:
        return denied
    key_id = request.state.get("key_id")  # recorded on every row: who asked
    request.state["rows"] = 0
    try:
        rows, batch = schema.rows(await read_json(request))
        values, raw_keys, problems = schema.columns(rows)
    except RequestError as exc:
        m.REQUESTS.labels(pipeline, "predict", str(exc.status)).inc()
        return error_response(exc.status, str(exc), exc.problems)
    if problems:
        m.REQUESTS.labels(pipeline, "predict", "422").inc()
        return error_response(
            422, "the request does not match the model's schema; fix the fields listed", problems
        )
    state = service.registry.state(pipeline)
    if state is None or state.champion is None:
        m.REQUESTS.labels(pipeline, "predict", "503").inc()
        reason = "; ".join(state.problems) if state else "unknown pipeline"
        return error_response(
            503, f"no model to serve for {pipeline}: {reason}", headers={"Retry-After": "5"}
        )
    for n in schema.categorical:
        known = state.champion.categories.get(n)
        if known:
            unknown = len(values[n]) - sum(map(known.__contains__, values[n]))
            if unknown:
                m.UNKNOWN_CATEGORY.labels(pipeline, n).inc(unknown)
    request.state["rows"] = len(rows)
    arrays = schema.arrays(values)
    keys = [service.entity(k) for k in raw_keys]
    ids = [new_request_id() for _ in rows]
    variants = [_variant(state, pipeline, k, i) for k, i in zip(keys, ids, strict=True)]
    now = datetime.now(UTC)
    out: list[dict | None] = [None] * len(rows)
    log_rows: list[PredictionRow] = []
    failures: list[FailureRow] = []
    # The challenger first: rows it cannot score are answered by the champion, and its failures
    # are logged (the canary's error rate), so a broken challenger never reaches a customer.
    for variant in ("challenger", "champion"):
        idx = [i for i, v in enumerate(variants) if v == variant]
        if not idx:
            continue
        model = state.champion if variant == "champion" else state.challenger
        assert model is not None  # rows go to the challenger only while one is loaded
        scored = _score(model, arrays, idx, len(rows))
        took = scored.took_s
        m.child(m.LATENCY, pipeline, str(model.version), variant).observe(took)
        if scored.good < len(idx):
            failed = [i for i, b in zip(idx, scored.bad, strict=True) if b]
            m.MODEL_FAILURES.labels(pipeline, str(model.version), variant).inc(len(failed))
            failures += [
                FailureRow(ids[i], pipeline, model.version, variant, True, scored.reason, now, key_id)
                for i in failed
            ]
            if variant == "champion":
                return await _champion_failed(service, pipeline, model, failures, scored.reason)
            for i in failed:
                variants[i] = "champion"
        m.child(m.PREDICTIONS, pipeline, str(model.version), variant).inc(scored.good)
        for j, i in enumerate(idx):
            if scored.bad[j]:
                continue
            answer, score, decision, scores = _answer(model, scored, j)
            out[i] = {"request_id": ids[i], **answer, "model_version": model.version, "variant": variant}
            log_rows.append(
                PredictionRow(
                    ids[i],
                    pipeline,
                    keys[i],
                    model.version,
                    variant,
                    True,
                    {n: values[n][i] for n in schema.features},
                    score,
                    decision,
                    took * 1000 / len(idx),
                    now,
                    key_id,
                    scores,
                )
            )
    try:
        await service.log.record(log_rows, failures)
    except LogOverloaded:
        m.SHED.labels(pipeline, "log_overloaded").inc()
        m.REQUESTS.labels(pipeline, "predict", "503").inc()
        return error_response(
            503, "the prediction log cannot keep up; retry shortly", headers={"Retry-After": "1"}
        )
    except LogUnavailable as exc:
        m.SHED.labels(pipeline, "log_unavailable").inc()
        m.REQUESTS.labels(pipeline, "predict", "503").inc()
        log.warning("prediction log unavailable: %s", exc)
        return error_response(
            503, "the prediction log is unavailable; retry later", headers={"Retry-After": "5"}
        )
    if state.traffic.mode == "shadow" and state.challenger is not None:
        _shadow(service, pipeline, state, schema, arrays, values, ids, keys, now, key_id)
    m.child(m.REQUESTS, pipeline, "predict", "200").inc()
    return json_response(
        {"pipeline": pipeline, "predictions": out} if batch else {"pipeline": pipeline, **(out[0] or {})}
    )


@dataclass
class Scored:
    """One model call over some rows: scores and decisions, which rows failed and why, how long it took.

    ``scores`` per row: binary the positive-class probability, multiclass the list of class
    probabilities, regression the predicted number; ``decisions`` under the version's rule."""

    scores: list | None
    decisions: list | None
    bad: list[bool]  # per row: an exception, or a score out of its range (NaN included)
    reason: str
    took_s: float

    @property
    def good(self) -> int:
        return len(self.bad) - sum(self.bad)


_BAD_SCORE = {
    "binary": "probability not a number in [0, 1]",
    "multiclass": "class probabilities not numbers in [0, 1]",
    "regression": "prediction not a finite number",
}


def _score(model, arrays: dict, idx: list[int], n: int) -> Scored:
    sub = arrays if len(idx) == n else {name: a[idx] for name, a in arrays.items()}
    t0 = time.perf_counter()
    try:
        raw = model.predict(sub)
        decided = model.decide(raw) if model.task != "binary" else None
    except Exception as exc:  # a model that cannot score these rows is a failure to record, not a 500
        took = time.perf_counter() - t0
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
        return Scored(None, None, [True] * len(idx), reason, took)
    took = time.perf_counter() - t0
    # Python floats from here: per-element numpy calls cost more than the row's whole check.
    scores = raw.tolist()
    if model.task == "binary":
        bad = [not 0.0 <= p <= 1.0 for p in scores]  # NaN compares false both ways
        decisions = [int(p >= model.threshold) for p in scores]
    elif model.task == "multiclass":
        assert decided is not None
        bad = [not all(0.0 <= p <= 1.0 for p in row) for row in scores]
        decisions = decided.tolist()
    else:
        assert decided is not None
        bad = [not math.isfinite(y) for y in scores]
        decisions = decided.tolist()
    return Scored(scores, decisions, bad, _BAD_SCORE[model.task] if any(bad) else "", took)


def _answer(model, scored: Scored, j: int) -> tuple[dict, float, float, tuple | None]:
    """Row ``j``'s answer fields, and what the log keeps: (answer, probability column, decision, scores)."""
    assert scored.scores is not None and scored.decisions is not None
    score, decision = scored.scores[j], scored.decisions[j]
    if model.task == "binary":
        return (
            {"probability": score, "decision": decision, "threshold": model.threshold},
            score,
            decision,
            None,
        )
    if model.task == "multiclass":
        probabilities = dict(zip(model.classes, score, strict=True))
        return (
            {"class": model.classes[decision], "probabilities": probabilities},
            score[decision],
            decision,
            tuple(score),
        )
    answer = {"prediction": score, "decision": decision}
    if model.interval is not None:  # the version's residuals on its test split: 90% of truths fell inside
        answer["interval"] = {
            "low": score + model.interval[0],
            "high": score + model.interval[1],
            "coverage": 0.9,
        }
    return answer, score, decision, None


def _variant(state: PipelineState, pipeline: str, key: str | None, request_id: str) -> str:
    t = state.traffic
    if t.mode != "canary" or state.challenger is None or t.weight <= 0:
        return "champion"
    return "challenger" if sticky_share(pipeline, key or request_id) < t.weight else "champion"


async def _champion_failed(service, pipeline: str, model, failures: list, reason: str) -> Response:
    """The champion could not score a row: log the failures and answer 500 (nothing else to serve)."""
    m.REQUESTS.labels(pipeline, "predict", "500").inc()
    log.error(
        "%s champion version %d could not score %d row(s): %s", pipeline, model.version, len(failures), reason
    )
    try:
        await service.log.record([], failures)
    except (LogOverloaded, LogUnavailable):
        pass  # the 500 below is the answer either way; the metric counted the failure
    return error_response(
        500,
        f"model version {model.version} could not score this input ({reason}); the failure is logged "
        "with the request id for the model's owners",
    )


def _shadow(service, pipeline, state, schema, arrays, values, ids, keys, now, key_id) -> None:
    """Score a mirror of the request with the challenger, off the response's path; log, never return."""
    if len(service._shadow_tasks) >= MAX_SHADOW_IN_FLIGHT:
        m.SHED.labels(pipeline, "shadow_dropped").inc()
        return
    challenger = state.challenger

    async def run() -> None:
        scored = _score(challenger, arrays, list(range(len(ids))), len(ids))
        took = scored.took_s * 1000 / len(ids)
        answers = [None if b else _answer(challenger, scored, i) for i, b in enumerate(scored.bad)]
        m.PREDICTIONS.labels(pipeline, str(challenger.version), "challenger").inc(scored.good)
        failures = [
            FailureRow(ids[i], pipeline, challenger.version, "challenger", False, scored.reason, now, key_id)
            for i, bad in enumerate(scored.bad)
            if bad
        ]
        if failures:
            m.MODEL_FAILURES.labels(pipeline, str(challenger.version), "challenger").inc(len(failures))
        rows = [
            PredictionRow(
                ids[i],
                pipeline,
                keys[i],
                challenger.version,
                "challenger",
                False,
                {n: values[n][i] for n in schema.features},
                answer[1],
                answer[2],
                took,
                now,
                key_id,
                answer[3],
            )
            for i, answer in enumerate(answers)
            if answer is not None
        ]
        try:
            await service.log.record(rows, failures)
        except (LogOverloaded, LogUnavailable):
            m.SHED.labels(pipeline, "shadow_dropped").inc()

    task = asyncio.get_running_loop().create_task(run())
    service._shadow_tasks.add(task)
    task.add_done_callback(service._shadow_tasks.discard)
