"""`gateway serve` and a request offering a WebSocket upgrade (`Upgrade: websocket`): the gateway speaks no WebSocket.
uvicorn, run with its default `ws="auto"` (`websockets` installed), handed such a request to its WebSocket protocol:
the answer was its plain text or an empty 403, and the connection's place among `gateway.limits.connections` was
never given back (the HTTP protocol's `connection_lost` is not called once the transport is handed over), so a few
such requests, with no key, left the gateway answering every later request 503 `server_busy` (found by review; the
test servers run uvicorn with `ws="none"`, so the suite never saw it). The offer is ignored, as an `h2c` one is."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import httpx

from tests.support.serve import gateway_serve
from tests.support.servers import ServerThread


def exchange(url: str, data: bytes) -> bytes:
    """What the server writes to a connection that sends `data`, until it closes the connection."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def upgrade(key: bytes = b"x", path: bytes = b"/health") -> bytes:
    """A WebSocket handshake's head (`key`: its `Sec-WebSocket-Key`, `x` one WebSocket refuses)."""
    return (
        b"GET " + path + b" HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\n"
        b"sec-websocket-key: " + key + b"\r\nsec-websocket-version: 13\r\n\r\n"
    )


def test_websocket_upgrades_give_their_connections_places_back(
    tmp_path: Path, upstream: tuple[ServerThread, dict[str, Any]]
) -> None:
    server, _ = upstream
    with gateway_serve(server.url, tmp_path, {}, gateway={"limits": {"connections": 3}}) as served:
        assert httpx.get(f"{served.url}/health").status_code == 200
        for _ in range(3):  # (no key sent; each connection closed by the server after its answer)
            assert exchange(served.url, upgrade()).startswith(b"HTTP/1.1 200 ")
        time.sleep(0.5)
        later = httpx.get(f"{served.url}/health", timeout=5)
        assert later.status_code == 200, (later.status_code, later.text)  # (was 503 server_busy, for good)


def test_a_websocket_upgrade_is_answered_in_the_error_shape(
    tmp_path: Path, upstream: tuple[ServerThread, dict[str, Any]]
) -> None:
    server, _ = upstream
    with gateway_serve(server.url, tmp_path, {}) as served:
        for answer in (
            exchange(served.url, upgrade(b"x", b"/v1/chat/completions")),  # (was uvicorn's 400 in plain text)
            exchange(served.url, upgrade(b"dGhlIHNhbXBsZSBub25jZQ==", b"/v1/models")),  # (was a 403, no body)
        ):
            head, _, body = answer.partition(b"\r\n\r\n")
            assert b"\r\nx-should-retry: " in head and b"\r\nx-request-id: " in head, answer[:300]
            assert set(json.loads(body)["error"]) >= {"message", "type", "param", "code"}, answer[:300]
