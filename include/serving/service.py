"""What one worker process of the service holds (schemas, models, the prediction log, the keys), how a
request is admitted (pipeline served here, key and scope), and JSON in and out."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
from dataclasses import dataclass

import orjson

from include.prediction_log.writer import PredictionLog
from include.serving.asgi import Request, Response
from include.serving.explain import Explainers
from include.serving.keys import KeyStore, LookupsBusy, TooManyLookups, presented_key
from include.serving.models import ModelRegistry
from include.serving.schema import MAX_BODY_BYTES, RequestError, RequestSchema

log = logging.getLogger(__name__)

DRAIN_LIMIT_BYTES = 4 * MAX_BODY_BYTES  # beyond this an oversized body is cut off (413, then close)


def json_response(body: object, status: int = 200, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers=headers)


def error_response(status: int, message: str, problems: list[str] | None = None, headers: dict | None = None):
    body: dict[str, object] = {"error": message}
    if problems:
        body["problems"] = problems
    return json_response(body, status, headers)


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
        specs = {p: load_pipeline(p) for p in config.pipelines}
        self.schemas = {p: RequestSchema.from_spec(s) for p, s in specs.items()}
        self.feedback_caps = {p: s.feedback.max_labels_per_key_per_hour for p, s in specs.items()}
        # The p99 a version had to meet in its sandbox: the alerting rules hold the service to it too.
        self.latency_budgets_s = {p: s.rollout.infra.max_p99_latency_ms / 1000 for p, s in specs.items()}
        self.registry = ModelRegistry(config.pipelines, config.refresh_s, config.tracking_uri, config.pinned)
        self.log = PredictionLog(config.db_url)
        self.keys = KeyStore(config.db_url)
        self._entity_mac = hmac.new(pii_key(), digestmod="sha256")
        self._operator_keys = [
            hashlib.sha256(os.environ[var].encode()).digest()
            for var in ("SLIPWAY_SERVING_ADMIN_KEY", "SLIPWAY_SERVING_METRICS_KEY")
            if os.environ.get(var)
        ]
        self._shadow_tasks: set[asyncio.Task] = set()
        self.explainers = Explainers(config.tracking_uri)

    def start(self) -> None:
        self.log.start()
        self.keys.start()
        self.registry.start()

    def stop(self) -> None:
        self.registry.stop()
        self.keys.close()
        self.log.close()

    # ------------------------------------------------------------------ helpers
    def entity(self, raw: str | None) -> str | None:
        """The entity key as stored: the same keyed hash as ingest (it joins with the lake), never raw."""
        if raw is None:
            return None
        mac = self._entity_mac.copy()  # the key's pads are hashed once, at start
        mac.update(raw.encode())
        return mac.hexdigest()

    async def authorise(self, request: Request, scope: str | tuple[str, ...], pipeline: str | None):
        """(key, refusal): 503 when the key store is down or busy, 429 when this client looked up too
        many unknown keys, 401 without a valid key, 403 when the key holds none of the ``scope`` (one
        scope, or a tuple of which any will do) for ``pipeline``."""
        try:
            key = await self.keys.authenticate_async(presented_key(request.headers), request.client)
        except TooManyLookups as exc:
            return None, error_response(429, str(exc), headers={"Retry-After": str(exc.retry_after_s)})
        except LookupsBusy as exc:
            return None, error_response(503, str(exc), headers={"Retry-After": str(exc.retry_after_s)})
        except Exception as exc:  # the key store's database is down: fail closed, and say so
            log.warning("key store unavailable: %s", type(exc).__name__)
            return None, error_response(
                503, "the key store is unavailable; retry later", headers={"Retry-After": "5"}
            )
        if key is not None:
            request.state["key_id"] = key.key_id
        if key is None:
            return None, error_response(
                401, "an API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key'"
            )
        scopes = (scope,) if isinstance(scope, str) else scope
        if not any(key.allows(s, pipeline) for s in scopes):
            return key, error_response(
                403,
                f"key {key.key_id} lacks scope {' or '.join(repr(s) for s in scopes)}"
                + (f" for pipeline {pipeline!r}" if pipeline else ""),
            )
        return key, None

    async def operator(self, request: Request) -> bool:
        """Whether the caller presents a key for every pipeline with the ``metrics`` (or ``admin``)
        scope: it may see versions, traffic and problems. A probe without a key costs no lookup, and
        the deployment's own admin and metrics keys are known without the database, so an operator
        still reads why the service is degraded while the database that holds the keys is down."""
        presented = presented_key(request.headers)
        if presented is None:
            return False
        digest = hashlib.sha256(presented.encode()).digest()
        if any(hmac.compare_digest(digest, known) for known in self._operator_keys):
            return True
        try:
            key = await self.keys.authenticate_async(presented, request.client)
        except Exception:  # the key store is down or busy: the anonymous view, which needs no key
            return False
        return key is not None and key.allows("metrics", None)

    async def admit(self, request: Request, scope: str | tuple[str, ...]):
        """(pipeline, schema, refusal): the key must hold ``scope`` for the pipeline (checked first, so
        a caller without one learns nothing about which pipelines exist), and the pipeline must be
        served here."""
        pipeline = request.path_params["pipeline"]
        _, denied = await self.authorise(request, scope, pipeline)
        if denied is not None:
            return pipeline, None, denied
        schema = self.schemas.get(pipeline)
        if schema is None:
            return pipeline, None, error_response(404, f"no pipeline {pipeline!r} is served here")
        return pipeline, schema, None


def _too_big() -> RequestError:
    return RequestError(413, f"the body exceeds {MAX_BODY_BYTES} bytes; send fewer rows per request")


async def read_json(request: Request):
    length = request.headers.get("content-length")
    if length is not None and not length.isdigit():
        raise RequestError(400, "Content-Length is not a number")
    chunks: list[bytes] = []
    size = 0
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
