"""The HTTP front end's limits, on the service as a process: a header-size cap, header and body read
deadlines (slowloris), and a bound on concurrent connections."""

from __future__ import annotations

import socket
import time

from tests.support.service import PIPELINE, Service


def _connect(service) -> socket.socket:
    return socket.create_connection(("127.0.0.1", service.port), timeout=10)


def _closed_within(sock: socket.socket, seconds: float) -> tuple[bool, float, bytes]:
    """(the server closed the connection, after how long, what it sent before closing)."""
    started, got = time.monotonic(), b""
    sock.settimeout(seconds)
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except TimeoutError:
        return False, time.monotonic() - started, got
    except ConnectionResetError:
        pass
    return True, time.monotonic() - started, got


def test_an_oversized_header_gets_431_before_any_key_is_checked(service):
    with _connect(service) as sock:
        sock.sendall(b"POST /v1/%s/predict HTTP/1.1\r\nHost: x\r\nX-Big: " % PIPELINE.encode())
        sock.sendall(b"a" * (64 * 1024) + b"\r\n\r\n")
        closed, _, got = _closed_within(sock, 10)
    assert closed and got.startswith(b"HTTP/1.1 431"), got[:200]
    assert service.get("/health", key=None)[0] == 200  # the worker is fine


def test_a_client_that_never_finishes_its_headers_is_disconnected(service):
    with _connect(service) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # ... and then a byte now and then
        closed, after, _ = _closed_within(sock, 15)
    assert closed and after < 6, after  # the harness sets a 2 s header deadline


def test_a_connection_that_sends_nothing_is_not_kept(service):
    with _connect(service) as sock:
        closed, after, _ = _closed_within(sock, 15)
    assert closed and after < 6, after


def test_a_body_that_never_arrives_is_cut_off(service):
    with _connect(service) as sock:
        sock.sendall(
            b"POST /v1/%s/feedback HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"request_id"' % PIPELINE.encode()
        )
        closed, after, _ = _closed_within(sock, 20)
    assert closed and after < 8, after  # the harness sets a 3 s body deadline


def test_connections_beyond_the_limit_get_503(registry, tmp_path):
    svc = Service(registry, tmp_path, args=("--limit-concurrency", "3")).start()
    held = []
    try:
        for _ in range(3):  # three idle connections fill the worker's limit
            held.append(_connect(svc))
        time.sleep(0.3)
        with _connect(svc) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            _, _, got = _closed_within(sock, 10)
        assert got.startswith(b"HTTP/1.1 503"), got[:200]
    finally:
        for sock in held:
            sock.close()
        svc.stop()
    assert svc.proc.returncode is not None
