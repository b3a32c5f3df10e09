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
import logging
import os
import time
from datetime import UTC, datetime, timedelta

from include.prediction_log.errors import LogUnavailable
from include.serving import metrics as m
from include.serving.asgi import AccessLog, App, Request, Response
from include.serving.explain import ExplainBusy, ExplainUnavailable
from include.serving.predict import predict
from include.serving.schema import RequestError
from include.serving.service import Service, ServiceConfig, error_response, json_response, read_json

log = logging.getLogger(__name__)


async def feedback(service: Service, request: Request) -> Response:
    from include.prediction_log.errors import ConflictingLabel, UnknownRequest

    pipeline, schema, denied = await service.admit(request, "feedback")
    if denied:
        return denied
    try:
        body = await read_json(request)
    except RequestError as exc:
        return error_response(exc.status, str(exc))
    items = body if isinstance(body, list) else [body]
    if not items or len(items) > 1000:
        return error_response(422, "send one {'request_id', 'label'} object or a list of 1 to 1000 of them")
    key_id = request.state["key_id"]  # admitted: a key was presented and recorded
    cap = service.feedback_caps[pipeline]
    loop = asyncio.get_running_loop()
    try:
        recent = await loop.run_in_executor(
            None, service.log.labels_since, pipeline, key_id, datetime.now(UTC) - timedelta(hours=1)
        )
    except LogUnavailable as exc:
        log.warning("prediction log unavailable: %s", exc)
        return error_response(
            503, "the prediction log is unavailable; retry later", headers={"Retry-After": "5"}
        )
    if recent + len(items) > cap:
        m.SHED.labels(pipeline, "feedback_cap").inc()
        return error_response(
            429,
            f"key {key_id} has sent {recent} labels for {pipeline} in the last hour; at most {cap} may be "
            "sent (feedback.max_labels_per_key_per_hour in the pipeline's spec): retry later, or raise it",
            headers={"Retry-After": "60"},
        )
    results = []
    for item in items:
        if not isinstance(item, dict) or set(item) != {"request_id", "label"}:
            expected = {"binary": "0 or 1", "multiclass": "a class", "regression": "a number"}[schema.task]
            return error_response(
                422, f"each feedback item is exactly {{'request_id': str, 'label': {expected}}}"
            )
        rid = item["request_id"]
        if not isinstance(rid, str) or not rid or len(rid) > 64:
            return error_response(422, "request_id must be the string a prediction returned")
        try:
            label = schema.label(item["label"])
        except RequestError as exc:
            return error_response(exc.status, str(exc))
        try:
            outcome = await loop.run_in_executor(
                None,
                functools.partial(service.log.feedback, rid, label, pipeline=pipeline, key_id=key_id),
            )
        except UnknownRequest:
            return error_response(404, f"no prediction {rid!r} of {pipeline} is logged; check the request id")
        except ConflictingLabel as exc:
            return error_response(409, str(exc))
        except LogUnavailable as exc:
            log.warning("prediction log unavailable: %s", exc)
            return error_response(
                503, "the prediction log is unavailable; retry later", headers={"Retry-After": "5"}
            )
        results.append({"request_id": rid, "status": outcome})
    m.FEEDBACK.labels(pipeline).inc(len(results))
    return json_response(results if isinstance(body, list) else results[0])


async def explain(service: Service, request: Request) -> Response:
    pipeline, schema, denied = await service.admit(request, "explain")
    if denied:
        return denied
    try:
        rows, batch = schema.rows(await read_json(request))
        if batch:
            raise RequestError(422, "explain takes one row: {'inputs': {...}}")
        values, _, problems = schema.columns(rows)
    except RequestError as exc:
        return error_response(exc.status, str(exc), exc.problems)
    if problems:
        return error_response(
            422, "the request does not match the model's schema; fix the fields listed", problems
        )
    state = service.registry.state(pipeline)
    if state is None or state.champion is None:
        return error_response(503, f"no model to explain for {pipeline}", headers={"Retry-After": "5"})
    model = state.champion
    row = {n: values[n][0] for n in schema.features}
    try:
        out = await service.explainers.explain(pipeline, model.version, schema.features, row)
    except ExplainBusy as exc:
        m.SHED.labels(pipeline, "explain_busy").inc()
        return error_response(503, str(exc), headers={"Retry-After": "2"})
    except ExplainUnavailable as exc:
        return error_response(503, str(exc), headers={"Retry-After": "60"})
    m.REQUESTS.labels(pipeline, "explain", "200").inc()
    index = out.pop("explained_class_index", None)
    if index is not None and index < len(schema.classes):
        out["explained_class"] = schema.classes[index]  # multiclass: the contributions are this class's
    return json_response({"pipeline": pipeline, "model_version": model.version, "variant": "champion", **out})


async def openapi(service: Service, request: Request) -> Response:
    # The document describes the pipeline's request: any key that may call one of its routes reads it.
    pipeline, schema, denied = await service.admit(request, ("predict", "feedback", "explain"))
    if denied:
        return denied
    state = service.registry.state(pipeline)
    cats = state.champion.categories if state and state.champion else None
    return json_response(schema.openapi(cats))


async def health(request: Request) -> Response:
    return json_response({"status": "ok"})


def readiness(service: Service) -> tuple[str, list[str], dict[str, dict]]:
    """(status: ready | degraded | unavailable, the problems, what each pipeline serves)."""
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
    return status, problems, pipelines


async def ready(service: Service, request: Request) -> Response:
    status, problems, pipelines = readiness(service)
    serving = status != "unavailable"
    # A load balancer needs the status and its code; versions, traffic and the reasons are for
    # operators (the metrics or admin key), not for anyone who can reach the port.
    if not await service.operator(request):
        return json_response({"status": status}, 200 if serving else 503)
    body = {"status": status, "problems": problems, "pipelines": pipelines}
    return json_response(body, 200 if serving else 503)


async def metrics(service: Service, request: Request) -> Response:
    _, denied = await service.authorise(request, "metrics", None)
    if denied:
        return denied
    m.sync_counters(service)
    _, _, pipelines = readiness(service)
    m.sync_state(
        service,
        {p: v["champion"] is not None and not v["problems"] for p, v in pipelines.items()},
        time.time(),
    )
    loop = asyncio.get_running_loop()
    for sync, what in ((m.sync_monitor, "monitor"), (m.sync_events, "run event")):
        try:
            await loop.run_in_executor(None, sync, service.config.db_url, service.config.pipelines)
        except Exception as exc:  # the scrape still answers with the service's own metrics
            log.warning("%s gauges not refreshed: %s", what, str(exc).splitlines()[0][:200])
    body, content_type = m.render()
    return Response(body, media_type=content_type)


def _timed(service: Service, route: str, handler):
    """``handler`` with its time observed per pipeline (only the service's own pipelines: a path's
    made-up name never becomes a metric's label)."""
    known = set(service.schemas)

    async def timed(request: Request) -> Response:
        started = time.perf_counter()
        response = await handler(request)
        pipeline = request.path_params.get("pipeline")
        if pipeline in known:
            m.child(m.REQUEST_SECONDS, pipeline, route).observe(time.perf_counter() - started)
        return response

    return timed


def settle_heap() -> None:
    """Move what start-up allocated out of the garbage collector's sight.

    The libraries a worker imports (MLflow, scikit-learn, pandas, onnxruntime) leave about a million
    objects that live as long as the process. Python's full collection walks all of them: under load
    (a request allocates enough to trigger one every second or so) that was a ~100 ms pause of the
    event loop, and every request in flight waited for it: the 64-connection p99 was 9x the p50.
    ``gc.freeze()`` puts them in a permanent generation that collections skip (what CPython documents
    for pre-fork servers); what requests allocate is still collected.
    """
    import gc

    gc.collect()
    gc.freeze()


def build_app(service: Service, access: AccessLog | None = None) -> App:
    """The service's ASGI app: its routes bound to ``service``."""

    async def startup() -> None:
        await asyncio.get_running_loop().run_in_executor(None, service.start)
        settle_heap()

    async def shutdown() -> None:
        await asyncio.get_running_loop().run_in_executor(None, service.stop)

    return App(
        actions={
            ("POST", "predict"): _timed(service, "predict", functools.partial(predict, service)),
            ("POST", "feedback"): functools.partial(feedback, service),
            ("POST", "explain"): functools.partial(explain, service),
            ("GET", "openapi.json"): functools.partial(openapi, service),
        },
        fixed={
            ("GET", "/health"): health,
            ("GET", "/ready"): functools.partial(ready, service),
            ("GET", "/metrics"): functools.partial(metrics, service),
        },
        on_error=_unexpected,
        startup=startup,
        shutdown=shutdown,
        access=access or AccessLog(enabled=False),
    )


def _unexpected(request: Request, exc: Exception) -> Response:
    parts = request.path.strip("/").split("/")
    pipeline, route = (
        (parts[1], parts[2]) if len(parts) == 3 and parts[0] == "v1" else ("", parts[0] if parts else "")
    )
    m.REQUESTS.labels(pipeline, route, "500").inc()
    log.exception("unexpected error on %s", request.path[:200])
    return error_response(500, "internal error; the service log has the details")


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
