"""The service's HTTP layer: a small ASGI dispatcher, written for the hot path.

The routes are few and fixed (``/v1/{pipeline}/{action}``, ``/health``, ``/ready``,
``/metrics``), so a framework's middleware stack, routing regexes and request objects cost more
than they give: profiled under load, Starlette's layers took ~17% of the event loop's time and
the access log through ``logging`` ~10%. This module keeps what the service uses: headers as a
dict, the body as a stream, one JSON access line per request (written by a background thread),
lifespan start-up and shut-down, and a 500 that is counted and logged, never a traceback to the
client.
"""

from __future__ import annotations

import collections
import logging
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson

log = logging.getLogger(__name__)


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    path_params: dict[str, str]
    receive: Callable
    state: dict = field(default_factory=dict)
    client: str | None = None  # the peer's address (a proxy's, unless the server trusts its headers)


@dataclass
class Response:
    body: bytes
    status: int = 200
    media_type: str = "application/json"
    headers: dict[str, str] | None = None


Handler = Callable[[Request], Awaitable[Response]]


class AccessLog:
    """JSON lines on stderr, one per request, written by a thread every ``interval_s``.

    A request appends a tuple (no formatting, no lock, no system call on the event loop); the
    writer formats and writes what accumulated. At most ``interval_s`` of lines is lost when the
    process is killed: the prediction log, not this, is the durable record of what was answered.
    """

    def __init__(self, stream=None, interval_s: float = 0.2, enabled: bool = True):
        self.enabled = enabled
        self._stream = stream or sys.stderr
        self._lines: collections.deque = collections.deque(maxlen=100_000)
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, method: str, path: str, status: int, ms: float, state: dict) -> None:
        if self.enabled:
            self._lines.append(
                (time.time(), method, path, status, ms, state.get("rows"), state.get("key_id"))
            )

    def start(self) -> None:
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="slipway-access-log", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.flush()
        self.flush()

    def flush(self) -> None:
        out = []
        while self._lines:
            ts, method, path, status, ms, rows, key_id = self._lines.popleft()
            out.append(
                orjson.dumps(
                    {
                        "ts": datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds"),
                        "method": method,
                        "path": path[:200],
                        "status": status,
                        "ms": round(ms, 3),
                        "rows": rows,
                        "key_id": key_id,
                    }
                )
            )
        if out:
            try:
                self._stream.write(b"\n".join(out).decode() + "\n")
                self._stream.flush()
            except (OSError, ValueError):  # stderr closed at shutdown: nothing to report it to
                pass

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


class App:
    """Dispatch ``/v1/{pipeline}/{action}`` and the fixed top-level paths to handlers."""

    def __init__(
        self,
        actions: dict[tuple[str, str], Handler],
        fixed: dict[tuple[str, str], Handler],
        on_error: Callable[[Request, Exception], Response],
        startup: Callable[[], Awaitable[None]],
        shutdown: Callable[[], Awaitable[None]],
        access: AccessLog,
    ):
        self.actions, self.fixed = actions, fixed
        self.on_error, self.startup, self.shutdown, self.access = on_error, startup, shutdown, access

    async def __call__(self, scope, receive, send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                    self.access.start()
                except Exception as exc:
                    log.exception("the service could not start")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)[:500]})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await self.shutdown()
                finally:
                    self.access.stop()
                    await send({"type": "lifespan.shutdown.complete"})
                return

    def _route(self, method: str, path: str) -> tuple[Handler | None, dict[str, str], list[str]]:
        """(handler, path params, the methods the path answers: for a 405's ``Allow``)."""
        parts = path.strip("/").split("/")
        if len(parts) == 3 and parts[0] == "v1":
            handler = self.actions.get((method, parts[2]))
            allowed = sorted(m for m, action in self.actions if action == parts[2])
            return handler, {"pipeline": parts[1]}, allowed
        handler = self.fixed.get((method, path))
        return handler, {}, sorted(m for m, p in self.fixed if p == path)

    async def _http(self, scope, receive, send) -> None:
        started = time.perf_counter()
        method, path = scope["method"], scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        handler, params, allowed = self._route(method, path)
        peer = scope.get("client")
        request = Request(method, path, headers, params, receive, client=peer[0] if peer else None)
        try:
            if handler is not None:
                response = await handler(request)
            elif allowed:  # RFC 9110: a 405 names the methods the resource answers
                response = Response(
                    b'{"error":"method not allowed"}', 405, headers={"Allow": ", ".join(allowed)}
                )
            else:
                response = Response(b'{"error":"not found; see /v1/{pipeline}/openapi.json"}', 404)
        except Exception as exc:
            response = self.on_error(request, exc)
        raw_headers = [
            (b"content-type", response.media_type.encode()),
            (b"content-length", str(len(response.body)).encode()),
        ]
        if response.headers:
            raw_headers += [(k.lower().encode(), str(v).encode()) for k, v in response.headers.items()]
        await send({"type": "http.response.start", "status": response.status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": response.body})
        self.access.add(method, path, response.status, (time.perf_counter() - started) * 1000, request.state)
