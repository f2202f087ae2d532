"""Reuse of pooled connections that the upstream closed while the process was frozen (as Lambda freezes an
environment between invocations: the event loop does not run, so nothing in the process sees the close)."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from adapters.http import http1
from adapters.http.http1 import STALE_CLOSE_S, Http1Transport, OriginPool
from handler.config import TimeoutConfig
from handler.errors import UpstreamError
from handler.pipeline.upstream import UpstreamClient
from handler.ports import UpstreamRequest
from tests.support.servers import SocketServer
from tests.support.tls import self_signed
from tests.unit.adapters.http.test_http1 import OK, read_all, read_request, scripted, send

pytestmark = pytest.mark.both_loops
FROZEN_S = 0.3


class IdleClosing:
    """A server in its own thread (it runs while the test's event loop is blocked) that answers every
    request with OK and closes a connection once it was idle for `idle_s`."""

    def __init__(self, idle_s: float, tls: ssl.SSLContext | None = None) -> None:
        self.idle_s = idle_s
        self.tls = tls
        self.server = SocketServer(self._serve)
        self.url = f"{'https://localhost' if tls else 'http://127.0.0.1'}:{self.server.port}"
        self.requests = 0
        self.closed_idle = 0

    @property
    def connections(self) -> int:
        return self.server.connections

    def _serve(self, raw: socket.socket) -> None:
        try:
            conn = self.tls.wrap_socket(raw, server_side=True) if self.tls is not None else raw
        except OSError:
            raw.close()
            return
        with conn:
            conn.settimeout(self.idle_s)
            buffer = b""
            while True:
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    self.closed_idle += 1
                    return
                except OSError:
                    return
                if not data:
                    return
                buffer += data
                while b"\r\n\r\n" in buffer:
                    head, _, rest = buffer.partition(b"\r\n\r\n")
                    length = next(
                        (
                            int(line.split(b":")[1])
                            for line in head.split(b"\r\n")
                            if line.lower().startswith(b"content-length:")
                        ),
                        0,
                    )
                    if len(rest) < length:
                        break
                    buffer = rest[length:]
                    self.requests += 1
                    conn.sendall(OK)

    def close(self) -> None:
        self.server.close()


@contextmanager
def idle_closing(idle_s: float, tls: ssl.SSLContext | None = None) -> Iterator[IdleClosing]:
    server = IdleClosing(idle_s, tls)
    try:
        yield server
    finally:
        server.close()


def freeze() -> None:
    """Block the event loop, as a frozen Lambda environment does, while the server closes idle connections."""
    time.sleep(FROZEN_S)


async def test_a_connection_closed_while_frozen_is_not_reused() -> None:
    with idle_closing(0.05) as server:
        transport = Http1Transport()
        for _ in range(3):
            assert await read_all(await send(transport, server.url)) == b'{"ok":true}'
            freeze()
        assert server.connections == 3 and server.closed_idle == 3
        assert server.requests == 3
        await transport.aclose()


async def test_a_tls_connection_closed_while_frozen_is_retried_on_a_new_one(tmp_path: Path) -> None:
    """Over TLS the check before reuse cannot tell a close from a session ticket: the request fails on the
    dead connection before any answer byte, and goes once more on a new one."""
    certificate = self_signed(tmp_path)
    with idle_closing(0.05, certificate.server_context()) as server:
        client = UpstreamClient(TimeoutConfig(), Http1Transport(tls=certificate.client_context()))
        for _ in range(3):
            answer = await client.send(UpstreamRequest("POST", server.url, None, b"{}"))
            assert answer.status == 200 and await answer.read() == b'{"ok":true}'
            freeze()
        assert server.connections == 3 and server.requests == 3
        await client.aclose()


async def test_a_reused_connection_hung_up_on_after_the_request_is_not_retried() -> None:
    """A peer that held the request longer than a close on the wire takes, then closed the connection unanswered
    (a proxy's idle timeout in front of a slow provider), took it: it is not sent again (the provider would run
    it twice), and the upstream client charges it as it charges a stall."""
    seen = 0

    async def ok_then_held(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal seen
        await read_request(reader)
        seen += 1
        writer.write(OK)
        await read_request(reader)
        seen += 1
        await asyncio.sleep(STALE_CLOSE_S + 0.2)

    async with scripted(ok_then_held) as (server, url):
        client = UpstreamClient(TimeoutConfig())
        answer = await client.send(UpstreamRequest("POST", url, None, b"{}"))
        assert await answer.read() == b'{"ok":true}'
        with pytest.raises(UpstreamError) as failure:
            await client.send(UpstreamRequest("POST", url, None, b"{}"))
        assert (failure.value.outcome, failure.value.billable) == ("upstream_disconnected", True)
        assert server.connections == 1 and seen == 2
        await client.aclose()


async def test_a_reused_connection_that_breaks_mid_answer_is_not_retried() -> None:
    """Once any byte of the answer came, the upstream acted on the request: it is not sent again."""
    seen = 0

    async def ok_then_broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal seen
        await read_request(reader)
        seen += 1
        writer.write(OK)
        await read_request(reader)
        seen += 1
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-le")
        await writer.drain()

    async with scripted(ok_then_broken) as (server, url):
        client = UpstreamClient(TimeoutConfig())
        answer = await client.send(UpstreamRequest("POST", url, None, b"{}"))
        assert await answer.read() == b'{"ok":true}'
        with pytest.raises(UpstreamError) as failure:
            await client.send(UpstreamRequest("POST", url, None, b"{}"))
        assert (failure.value.outcome, failure.value.billable) == ("upstream_disconnected", True)
        assert server.connections == 1 and seen == 2
        await client.aclose()


SLOW_CONNECT_S = 1.0
HEAD_TIMEOUT_S = 0.4


def slow_reconnects(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every connection after the first takes SLOW_CONNECT_S to open (a DNS change or a region's failover between
    invocations, a congested path): the connections opened, counted."""
    opened: list[int] = []
    connect = OriginPool.connect

    async def slow(self: OriginPool, timeout: float | None) -> Any:
        opened.append(1)
        if len(opened) > 1:
            await asyncio.sleep(SLOW_CONNECT_S)
        return await connect(self, timeout)

    monkeypatch.setattr(OriginPool, "connect", slow)
    return opened


async def test_a_stale_connections_slow_reconnect_is_not_a_request_the_origin_may_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A TLS connection the upstream closed during a freeze fails the next request before the upstream read it, and
    the request goes once more on a new connection, which takes longer to open than the head timeout leaves. Nothing
    reached the upstream, yet the failure was `HeadTimeout` ("sent no answer within 0.4 s of the request"), which the
    upstream client charges as a stall the provider may bill (the reserved worst case); the transport still held the
    first connection's `sent` (found by review). Now a timeout while the retry's connection opens is a
    `PoolTimeout`: not billable."""
    certificate = self_signed(tmp_path)
    opened = slow_reconnects(monkeypatch)
    with idle_closing(0.05, certificate.server_context()) as server:
        transport = Http1Transport(tls=certificate.client_context())
        client = UpstreamClient(TimeoutConfig(), transport)
        answer = await client.send(UpstreamRequest("POST", server.url, None, b"{}"))
        assert answer.status == 200 and await answer.read() == b'{"ok":true}'
        freeze()
        with pytest.raises(UpstreamError) as failure:
            await client.send(UpstreamRequest("POST", server.url, None, b"{}"), first_byte_timeout=HEAD_TIMEOUT_S)
        assert len(opened) == 2 and server.requests == 1  # (the second request never reached the upstream)
        assert isinstance(failure.value.__cause__, httpx.PoolTimeout), repr(failure.value.__cause__)
        assert not failure.value.billable, (failure.value.outcome, str(failure.value))
        await client.aclose()


async def test_a_connection_past_its_lifetime_is_not_reused_however_busy(monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection kept busy (never idle for `keepalive_seconds`) was reused for as long as the environment lived,
    so an origin's new address (a DNS change, a region's failover) was never reached (found by review). Now one
    older than `lifetime_seconds` is closed rather than reused; a younger one is still reused. The connections age
    on a clock the test moves (`aged`), a minute at a time: a loaded runner's stall between two requests (a full
    collection late in the suite: 0.35 s to over a second) aged them past a lifetime counted in tenths of seconds."""
    aged = [0.0]
    monkeypatch.setattr(http1, "time", SimpleNamespace(monotonic=lambda: time.monotonic() + aged[0]))
    with idle_closing(5.0) as server:
        transport = Http1Transport(keepalive_seconds=3600.0, lifetime_seconds=60.0)
        for age in (0.0, 61.0, 0.0):  # the first connection reused at once, past its lifetime a new one
            aged[0] += age
            assert await read_all(await send(transport, server.url)) == b'{"ok":true}'
        assert await read_all(await send(transport, server.url)) == b'{"ok":true}'
        assert (server.requests, server.connections) == (4, 2)
        await transport.aclose()
