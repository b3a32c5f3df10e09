"""The HTTP service: routes, authentication, routing between champion and challenger, logging.

Routes (the product's public interface, documented in the README):

* ``POST /v1/{pipeline}/predict`` (scope ``predict``): ``{"inputs": row}`` or ``{"instances": [rows]}``;
* ``POST /v1/{pipeline}/feedback`` (scope ``feedback``): ``{"request_id": …, "label": 0|1}``;
* ``GET /v1/{pipeline}/openapi.json`` (any valid key): the pipeline's OpenAPI document;
* ``GET /health`` (liveness) and ``GET /ready`` (models and log; ``degraded`` with the reasons),
  no key;
* ``GET /metrics`` (scope ``metrics``): Prometheus.

A response is sent only after its rows are committed to the prediction log; when the log cannot
keep up or is down the service answers 503 with ``Retry-After`` instead of answering unlogged.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from include.prediction_log.errors import LogOverloaded, LogUnavailable
from include.prediction_log.rows import FailureRow, PredictionRow, new_request_id
from include.prediction_log.writer import PredictionLog
from include.serving import metrics as m
from include.serving.asgi import AccessLog, App, Request, Response
from include.serving.explain import ExplainBusy, Explainers, ExplainUnavailable
from include.serving.keys import KeyStore, presented_key
from include.serving.models import ModelRegistry, PipelineState, sticky_share
from include.serving.schema import MAX_BODY_BYTES, RequestError, RequestSchema

log = logging.getLogger(__name__)

MAX_SHADOW_IN_FLIGHT = 256
DRAIN_LIMIT_BYTES = 4 * MAX_BODY_BYTES  # beyond this an oversized body is cut off (413, then close)


def _json(body: object, status: int = 200, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers=headers)


def _error(status: int, message: str, problems: list[str] | None = None, headers: dict | None = None):
    body = {"error": message}
    if problems:
        body["problems"] = problems
    return _json(body, status, headers)


@dataclass
class ServiceConfig:
    pipelines: list[str]
    refresh_s: float = 5.0
    db_url: str | None = None
    tracking_uri: str | None = None
    pinned: dict[str, int] | None = None


class Service:
    """Everything one worker process holds: schemas, models, the log, the keys."""

    def __init__(self, config: ServiceConfig):
        from include.settings import pii_key
        from include.spec import load_pipeline

        self.config = config
        self.schemas = {p: RequestSchema.from_spec(load_pipeline(p)) for p in config.pipelines}
        self.registry = ModelRegistry(config.pipelines, config.refresh_s, config.tracking_uri, config.pinned)
        self.log = PredictionLog(config.db_url)
        self.keys = KeyStore(config.db_url)
        self._entity_mac = hmac.new(pii_key(), digestmod="sha256")
        self._shadow_tasks: set[asyncio.Task] = set()
        self.explainers = Explainers(config.tracking_uri)

    def start(self) -> None:
        self.log.start()
        self.keys.start()
        self.registry.start()

    def stop(self) -> None:
        self.registry.stop()
        self.log.close()

    # ------------------------------------------------------------------ helpers
    def entity(self, schema: RequestSchema, raw: str | None) -> str | None:
        if raw is None:
            return None
        if schema.entity_hashed:  # the same keyed hash as ingest: joins with the lake, never the raw id
            mac = self._entity_mac.copy()  # the key's pads are hashed once, at start
            mac.update(raw.encode())
            return mac.hexdigest()
        return raw

    def authorise(self, request: Request, scope: str, pipeline: str | None):
        try:
            key = self.keys.authenticate(presented_key(request.headers))
        except Exception as exc:  # the key store's database is down: fail closed, and say so
            log.warning("key store unavailable: %s", type(exc).__name__)
            return None, _error(
                503, "the key store is unavailable; retry later", headers={"Retry-After": "5"}
            )
        if key is not None:
            request.state["key_id"] = key.key_id
        if key is None:
            return None, _error(
                401, "an API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key'"
            )
        if not key.allows(scope, pipeline):
            return key, _error(
                403,
                f"key {key.key_id} lacks scope {scope!r}"
                + (f" for pipeline {pipeline!r}" if pipeline else ""),
            )
        return key, None

    def admit(self, request: Request, scope: str, any_key: bool = False):
        """(pipeline, schema, refusal): the pipeline must be served here and the key allowed ``scope``
        (with ``any_key``, any valid key will do)."""
        pipeline = request.path_params["pipeline"]
        schema = self.schemas.get(pipeline)
        if schema is None:
            return (
                pipeline,
                None,
                _error(404, f"no pipeline {pipeline!r} is served here; served: {sorted(self.schemas)}"),
            )
        key, denied = self.authorise(request, scope, pipeline)
        if denied is not None and not (any_key and key is not None):
            return pipeline, schema, denied
        return pipeline, schema, None


@dataclass
class Scored:
    """One model call over some rows: probabilities, which rows failed and why, how long it took."""

    probs: list[float] | None
    bad: list[bool]  # per row: an exception, or no probability in [0, 1] (NaN included)
    reason: str
    took_s: float

    @property
    def good(self) -> int:
        return len(self.bad) - sum(self.bad)


def _score(model, arrays: dict, idx: list[int], n: int) -> Scored:
    sub = arrays if len(idx) == n else {name: a[idx] for name, a in arrays.items()}
    t0 = time.perf_counter()
    try:
        probs = model.predict(sub)
    except Exception as exc:  # a model that cannot score these rows is a failure to record, not a 500
        took = time.perf_counter() - t0
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
        return Scored(None, [True] * len(idx), reason, took)
    took = time.perf_counter() - t0
    # Python floats from here: per-element numpy calls cost more than the row's whole check.
    probs = probs.tolist()
    bad = [not 0.0 <= p <= 1.0 for p in probs]  # NaN compares false both ways
    return Scored(probs, bad, "probability not a number in [0, 1]" if any(bad) else "", took)


def _variant(state: PipelineState, pipeline: str, key: str | None, request_id: str) -> str:
    t = state.traffic
    if t.mode != "canary" or state.challenger is None or t.weight <= 0:
        return "champion"
    return "challenger" if sticky_share(pipeline, key or request_id) < t.weight else "champion"


def _too_big() -> RequestError:
    return RequestError(413, f"the body exceeds {MAX_BODY_BYTES} bytes; send fewer rows per request")


async def _read_json(request: Request):
    length = request.headers.get("content-length")
    if length is not None and not length.isdigit():
        raise RequestError(400, "Content-Length is not a number")
    chunks, size = [], 0
    while True:  # the body's ASGI messages
        message = await request.receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            chunks = []  # keep reading (and dropping) a moderately oversized body, so a client that
            if size > DRAIN_LIMIT_BYTES:  # sends it whole before reading gets the 413, not a reset
                raise _too_big()
        elif chunk:
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    if size > MAX_BODY_BYTES or (length is not None and int(length) > MAX_BODY_BYTES):
        raise _too_big()
    try:
        return orjson.loads(chunks[0] if len(chunks) == 1 else b"".join(chunks))
    except orjson.JSONDecodeError as exc:
        raise RequestError(
            400,
            f"the body is not valid JSON ({exc.msg}); NaN and Infinity are not JSON: send null or a number",
        ) from exc


def build_app(service: Service, access: AccessLog | None = None) -> App:
    async def predict(request: Request) -> Response:
        pipeline, schema, denied = service.admit(request, "predict")
        if denied:
            return denied
        request.state["rows"] = 0
        try:
            rows, batch = schema.rows(await _read_json(request))
            values, raw_keys, problems = schema.columns(rows)
        except RequestError as exc:
            m.REQUESTS.labels(pipeline, "predict", str(exc.status)).inc()
            return _error(exc.status, str(exc), exc.problems)
        if problems:
            m.REQUESTS.labels(pipeline, "predict", "422").inc()
            return _error(
                422, "the request does not match the model's schema; fix the fields listed", problems
            )
        state = service.registry.state(pipeline)
        if state is None or state.champion is None:
            m.REQUESTS.labels(pipeline, "predict", "503").inc()
            reason = "; ".join(state.problems) if state else "unknown pipeline"
            return _error(503, f"no model to serve for {pipeline}: {reason}", headers={"Retry-After": "5"})
        for n in schema.categorical:
            known = state.champion.categories.get(n)
            if known:
                unknown = len(values[n]) - sum(map(known.__contains__, values[n]))
                if unknown:
                    m.UNKNOWN_CATEGORY.labels(pipeline, n).inc(unknown)
        request.state["rows"] = len(rows)
        arrays = schema.arrays(values)
        keys = [service.entity(schema, k) for k in raw_keys]
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
            scored = _score(model, arrays, idx, len(rows))
            took = scored.took_s
            m.child(m.LATENCY, pipeline, str(model.version), variant).observe(took)
            if scored.good < len(idx):
                failed = [i for i, b in zip(idx, scored.bad, strict=True) if b]
                m.MODEL_FAILURES.labels(pipeline, str(model.version), variant).inc(len(failed))
                failures += [
                    FailureRow(ids[i], pipeline, model.version, variant, True, scored.reason, now)
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
                p = scored.probs[j]
                decision = int(p >= model.threshold)
                out[i] = {
                    "request_id": ids[i],
                    "probability": p,
                    "decision": decision,
                    "threshold": model.threshold,
                    "model_version": model.version,
                    "variant": variant,
                }
                log_rows.append(
                    PredictionRow(
                        ids[i],
                        pipeline,
                        keys[i],
                        model.version,
                        variant,
                        True,
                        {n: values[n][i] for n in schema.features},
                        p,
                        decision,
                        took * 1000 / len(idx),
                        now,
                    )
                )
        try:
            await service.log.record(log_rows, failures)
        except LogOverloaded:
            m.SHED.labels(pipeline, "log_overloaded").inc()
            m.REQUESTS.labels(pipeline, "predict", "503").inc()
            return _error(
                503, "the prediction log cannot keep up; retry shortly", headers={"Retry-After": "1"}
            )
        except LogUnavailable as exc:
            m.SHED.labels(pipeline, "log_unavailable").inc()
            m.REQUESTS.labels(pipeline, "predict", "503").inc()
            log.warning("prediction log unavailable: %s", exc)
            return _error(503, "the prediction log is unavailable; retry later", headers={"Retry-After": "5"})
        if state.traffic.mode == "shadow" and state.challenger is not None:
            _shadow(service, pipeline, state, schema, arrays, values, ids, keys, now)
        m.child(m.REQUESTS, pipeline, "predict", "200").inc()
        return _json(
            {"pipeline": pipeline, "predictions": out} if batch else {"pipeline": pipeline, **out[0]}
        )

    async def feedback(request: Request) -> Response:
        from include.prediction_log.errors import ConflictingLabel, UnknownRequest

        pipeline, _, denied = service.admit(request, "feedback")
        if denied:
            return denied
        try:
            body = await _read_json(request)
        except RequestError as exc:
            return _error(exc.status, str(exc))
        items = body if isinstance(body, list) else [body]
        if not items or len(items) > 1000:
            return _error(422, "send one {'request_id', 'label'} object or a list of 1 to 1000 of them")
        results = []
        for item in items:
            if not isinstance(item, dict) or set(item) != {"request_id", "label"}:
                return _error(422, "each feedback item is exactly {'request_id': str, 'label': 0 or 1}")
            rid, label = item["request_id"], item["label"]
            if not isinstance(rid, str) or not rid or len(rid) > 64:
                return _error(422, "request_id must be the string a prediction returned")
            if isinstance(label, bool) or label not in (0, 1):
                return _error(422, f"label must be 0 or 1, got {label!r}"[:200])
            try:
                outcome = await asyncio.get_running_loop().run_in_executor(
                    None, functools.partial(service.log.feedback, rid, int(label), pipeline=pipeline)
                )
            except UnknownRequest:
                return _error(404, f"no prediction {rid!r} of {pipeline} is logged; check the request id")
            except ConflictingLabel as exc:
                return _error(409, str(exc))
            except LogUnavailable as exc:
                log.warning("prediction log unavailable: %s", exc)
                return _error(
                    503, "the prediction log is unavailable; retry later", headers={"Retry-After": "5"}
                )
            results.append({"request_id": rid, "status": outcome})
        m.FEEDBACK.labels(pipeline).inc(len(results))
        return _json(results if isinstance(body, list) else results[0])

    async def explain(request: Request) -> Response:
        pipeline, schema, denied = service.admit(request, "explain")
        if denied:
            return denied
        try:
            rows, batch = schema.rows(await _read_json(request))
            if batch:
                raise RequestError(422, "explain takes one row: {'inputs': {...}}")
            values, _, problems = schema.columns(rows)
        except RequestError as exc:
            return _error(exc.status, str(exc), exc.problems)
        if problems:
            return _error(
                422, "the request does not match the model's schema; fix the fields listed", problems
            )
        state = service.registry.state(pipeline)
        if state is None or state.champion is None:
            return _error(503, f"no model to explain for {pipeline}", headers={"Retry-After": "5"})
        model = state.champion
        row = {n: values[n][0] for n in schema.features}
        try:
            out = await service.explainers.explain(pipeline, model.version, schema.features, row)
        except ExplainBusy as exc:
            m.SHED.labels(pipeline, "explain_busy").inc()
            return _error(503, str(exc), headers={"Retry-After": "2"})
        except ExplainUnavailable as exc:
            return _error(503, str(exc), headers={"Retry-After": "60"})
        m.REQUESTS.labels(pipeline, "explain", "200").inc()
        return _json({"pipeline": pipeline, "model_version": model.version, "variant": "champion", **out})

    async def openapi(request: Request) -> Response:
        pipeline, schema, denied = service.admit(request, "predict", any_key=True)
        if denied:
            return denied
        state = service.registry.state(pipeline)
        cats = state.champion.categories if state and state.champion else None
        return _json(schema.openapi(cats))

    async def health(request: Request) -> Response:
        return _json({"status": "ok"})

    async def ready(request: Request) -> Response:
        problems, pipelines = [], {}
        for p in service.schemas:
            st = service.registry.state(p)
            pipelines[p] = {
                "champion": st.champion.version if st and st.champion else None,
                "challenger": st.challenger.version if st and st.challenger else None,
                "traffic": {"mode": st.traffic.mode, "weight": st.traffic.weight} if st else None,
                "problems": list(st.problems) if st else [],
            }
            if st is None or st.champion is None:
                problems.append(f"{p}: no champion loaded")
            problems.extend(f"{p}: {x}" for x in (st.problems if st else ()))
        ok, reason = service.log.status()
        if not ok:
            problems.append(f"prediction log: {reason}")
        serving = all(v["champion"] is not None for v in pipelines.values()) and ok
        status = "ready" if serving and not problems else ("degraded" if serving else "unavailable")
        body = {"status": status, "problems": problems, "pipelines": pipelines}
        return _json(body, 200 if serving else 503)

    async def metrics(request: Request) -> Response:
        _, denied = service.authorise(request, "metrics", None)
        if denied:
            return denied
        m.QUEUE_DEPTH.set(service.log.queue_depth)
        m.sync_counters(service)
        try:
            await asyncio.get_running_loop().run_in_executor(
                None, m.sync_monitor, service.config.db_url, service.config.pipelines
            )
        except Exception as exc:  # the scrape still answers with the service's own metrics
            log.warning("monitor gauges not refreshed: %s", str(exc).splitlines()[0][:200])
        body, content_type = m.render()
        return Response(body, media_type=content_type)

    async def startup() -> None:
        await asyncio.get_running_loop().run_in_executor(None, service.start)

    async def shutdown() -> None:
        await asyncio.get_running_loop().run_in_executor(None, service.stop)

    return App(
        actions={
            ("POST", "predict"): predict,
            ("POST", "feedback"): feedback,
            ("POST", "explain"): explain,
            ("GET", "openapi.json"): openapi,
        },
        fixed={("GET", "/health"): health, ("GET", "/ready"): ready, ("GET", "/metrics"): metrics},
        on_error=_unexpected,
        startup=startup,
        shutdown=shutdown,
        access=access or AccessLog(enabled=False),
    )


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
    return _error(
        500,
        f"model version {model.version} could not score this input ({reason}); the failure is logged "
        "with the request id for the model's owners",
    )


def _unexpected(request: Request, exc: Exception) -> Response:
    parts = request.path.strip("/").split("/")
    pipeline, route = (
        (parts[1], parts[2]) if len(parts) == 3 and parts[0] == "v1" else ("", parts[0] if parts else "")
    )
    m.REQUESTS.labels(pipeline, route, "500").inc()
    log.exception("unexpected error on %s", request.path[:200])
    return _error(500, "internal error; the service log has the details")


def _shadow(service, pipeline, state, schema, arrays, values, ids, keys, now) -> None:
    """Score a mirror of the request with the challenger, off the response's path; log, never return."""
    if len(service._shadow_tasks) >= MAX_SHADOW_IN_FLIGHT:
        m.SHED.labels(pipeline, "shadow_dropped").inc()
        return
    challenger = state.challenger

    async def run() -> None:
        scored = _score(challenger, arrays, list(range(len(ids))), len(ids))
        took = scored.took_s * 1000 / len(ids)
        m.PREDICTIONS.labels(pipeline, str(challenger.version), "challenger").inc(scored.good)
        failures = [
            FailureRow(ids[i], pipeline, challenger.version, "challenger", False, scored.reason, now)
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
                float(p),
                int(p >= challenger.threshold),
                took,
                now,
            )
            for i, p in enumerate(scored.probs if scored.probs is not None else [])
            if not scored.bad[i]
        ]
        try:
            await service.log.record(rows, failures)
        except (LogOverloaded, LogUnavailable):
            m.SHED.labels(pipeline, "shadow_dropped").inc()

    task = asyncio.get_running_loop().create_task(run())
    service._shadow_tasks.add(task)
    task.add_done_callback(service._shadow_tasks.discard)


def app_from_env() -> App:
    """The ASGI app for uvicorn workers, configured from ``SLIPWAY_SERVE_*`` variables."""
    # A registry poll fails fast and is retried on the next poll: MLflow's own retries (minutes of
    # backoff) would hold the refresh thread while /ready still reported the old state.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    pipelines = [p for p in os.environ.get("SLIPWAY_SERVE_PIPELINES", "").split(",") if p]
    if not pipelines:
        from include.spec import discover

        pipelines = [s.name for s in discover()[0]]
    pinned = {}
    for item in filter(None, os.environ.get("SLIPWAY_SERVE_PIN", "").split(",")):
        name, _, version = item.partition("=")
        if not version.isdigit():
            raise SystemExit(f"--pin {item!r}: write PIPELINE=VERSION, e.g. telco_churn=3")
        pinned[name] = int(version)
    config = ServiceConfig(
        pipelines, refresh_s=float(os.environ.get("SLIPWAY_SERVE_REFRESH_S", "5")), pinned=pinned
    )
    return build_app(Service(config), AccessLog(enabled=os.environ.get("SLIPWAY_ACCESS_LOG", "1") != "0"))
