"""The service's HTTP protocol: uvicorn's httptools protocol with the limits it lacks.

uvicorn bounds the idle time between requests (``timeout_keep_alive``) but, with httptools, neither
the size of a request's headers nor the time a client may take to send them or its body: a client
could send an 8 MiB header (read before any key is checked) or hold connections open with a byte a
minute (slowloris). Here:

* the request line and headers may take at most ``SLIPWAY_SERVE_MAX_HEADER_BYTES`` (16 KiB): beyond,
  431 and the connection is closed;
* a connection must complete a request's headers within ``SLIPWAY_SERVE_HEADER_TIMEOUT_S`` (10 s) of
  opening or of the request's first byte, and its body within ``SLIPWAY_SERVE_BODY_TIMEOUT_S`` (30 s)
  of the headers: else it is closed.

How many connections and requests a worker takes at once is uvicorn's ``limit_concurrency`` (503
beyond it), set by ``slipway serve``. A proxy in front (production) should set the same limits
(docs/production.md, "Security").
"""

from __future__ import annotations

import os
from asyncio import TimerHandle

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEADER_BYTES = int(os.environ.get("SLIPWAY_SERVE_MAX_HEADER_BYTES", str(16 * 1024)))
HEADER_TIMEOUT_S = float(os.environ.get("SLIPWAY_SERVE_HEADER_TIMEOUT_S", "10"))
BODY_TIMEOUT_S = float(os.environ.get("SLIPWAY_SERVE_BODY_TIMEOUT_S", "30"))

_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s"
)


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """:class:`HttpToolsProtocol` with a header-size cap and header and body read timeouts."""

    _in_headers = True
    _header_bytes = 0
    _deadline: TimerHandle | None = None

    def _arm(self, seconds: float) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_later(seconds, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()  # connection_lost tells a waiting request that its client left

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(HEADER_TIMEOUT_S)  # a connection that sends nothing is not kept either

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_headers:
            end = data.find(b"\r\n\r\n")
            self._header_bytes += len(data) if end < 0 else end
            if self._header_bytes > MAX_HEADER_BYTES:
                body = b'{"error":"request headers exceed %d bytes; send fewer or shorter headers"}' % (
                    MAX_HEADER_BYTES
                )
                self.transport.write(_TOO_LARGE % (len(body), body))
                self.transport.close()
                return
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers, self._header_bytes = True, 0
        self._arm(HEADER_TIMEOUT_S)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._arm(BODY_TIMEOUT_S)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        self._in_headers, self._header_bytes = True, 0  # the next bytes on this connection: a new request
        super().on_message_complete()
