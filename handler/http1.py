"""The gateway's HTTP/1.1 client: httpx's transport interface over asyncio protocols and httptools.

Why its own: a provider call is one request on a kept-alive connection, and what a general client does
around it (aiohttp's request and response objects, header defaults, tracing hooks, payload registry;
httpx's own pool and h11 parser in Python) cost more per request on the benchmark machine than the
rest of the gateway's work (see tests/bench/transports.py). This client writes the request with one
`write` and parses the answer with httptools (llhttp, in C, the parser uvicorn uses), so per request
it does little more than the bytes need. It also keeps the cold start small: no aiohttp import, and
the TLS context is built on the first HTTPS connection, not at import.

What it does: HTTP/1.1 over TCP or TLS (certifi's CA bundle, as httpx uses), keep-alive connections
pooled per origin and closed after `keepalive_seconds` idle, at most `max_per_origin` connections to
one origin (requests beyond wait for one), bodies framed by `content-length`, chunked encoding or the
connection's end, reads paused while a slow reader has more than `HIGH_WATER` bytes buffered. What it
leaves out, on purpose: proxies, redirects, cookies, compression negotiation, HTTP/2. A connection is
reused only after its answer was read to the end; a request cancelled mid-way closes its connection.

Timeouts come from the request's httpx `timeout` extension: `connect` (TCP and TLS handshake) and
`read` (between any two reads once the request is sent); the wait for the status line as a whole is
the caller's to bound (handler/upstream.py does, with the first-byte timeout).
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, cast

import httptools
import httpx

DEFAULT_PORTS = {b"http": 80, b"https": 443}
HIGH_WATER = 256 * 1024  # buffered body bytes at which reading from the socket pauses
CRLF = b"\r\n"


class Connection(asyncio.Protocol):
    """One connection to an origin, carrying one exchange at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done: asyncio.Future[None] = self.loop.create_future()
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.complete = False
        self.error: httpx.TransportError | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.framed = False  # the body's end is known from its framing, not from the connection closing
        self.head_only = False
        self.paused = False
        self.keep_alive = False

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's transports are not its subclasses)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle delay on a request's last bytes

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed answer from upstream: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.head_done.done() and not self.complete and not self.framed and self.error is None and exc is None:
            self.complete = True  # a body delimited by the connection's end
            self._wake()
            return
        if not self.complete:
            detail = f": {exc}" if exc else ""
            error_type = httpx.ReadError if self.head_done.done() else httpx.RemoteProtocolError
            self._fail(error_type(f"upstream closed the connection before the answer was complete{detail}"))

    # --- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:  # bytes after the answer, before any new request: the connection cannot be trusted
            raise httptools.HttpParserError("upstream sent more than one answer to one request")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        lowered = name.lower()
        if lowered == b"content-length" or (lowered == b"transfer-encoding" and b"chunked" in value.lower()):
            self.framed = True

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:  # an interim answer (100 Continue): the real one follows
            self.headers = []
            self.framed = False
            return
        self.status = status
        if status in (204, 304):
            self.framed = True
        if not self.head_done.done():
            self.head_done.set_result(None)
        if self.head_only:
            self.complete = True
            self._wake()

    def on_body(self, body: bytes) -> None:
        if self.head_only:
            return
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.status == 0:  # the end of an interim answer
            return
        self.keep_alive = self.parser.should_keep_alive()  # (read now: the parser resets for the next message)
        self.complete = True
        self._wake()

    # --- used by the transport ----------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: httpx.TransportError) -> None:
        if self.error is None:
            self.error = error
        if not self.head_done.done():
            self.head_done.set_exception(error)
            self.head_done.exception()  # retrieved here: nobody may be waiting any more
        self._wake()

    def reusable(self) -> bool:
        return (
            not self.closed
            and self.complete
            and self.error is None
            and not self.head_only
            and self.keep_alive
            and self.transport is not None
            and not self.transport.is_closing()
        )

    def send(self, head: bytes, body: bytes | None, head_only: bool) -> None:
        self._reset()
        self.head_only = head_only
        assert self.transport is not None
        self.transport.write(head + body if body else head)  # one write: one segment for a small request

    async def next_chunk(self, timeout: float | None) -> bytes | None:
        """The next piece of the body, or None at its end."""
        while True:
            if self.chunks:
                chunk = self.chunks.popleft()
                self.buffered -= len(chunk)
                if self.paused and self.buffered <= HIGH_WATER // 2 and self.transport is not None:
                    self.paused = False
                    self.transport.resume_reading()
                return chunk
            if self.complete:  # (a failure after the answer was whole, such as stray bytes, spoils only reuse)
                return None
            if self.error is not None:
                raise self.error
            self.waiter = self.loop.create_future()
            timer = self.loop.call_later(timeout, self._read_timed_out) if timeout else None
            try:
                await self.waiter
            finally:
                self.waiter = None
                if timer is not None:
                    timer.cancel()

    def _read_timed_out(self) -> None:
        self._fail(httpx.ReadTimeout("upstream sent nothing within the read timeout"))
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Http1Stream(httpx.AsyncByteStream):
    """An answer's body; closing it returns the connection to its pool (or closes it)."""

    __slots__ = ("_connection", "_pool", "_timeout", "_released")

    def __init__(self, connection: Connection, pool: OriginPool, timeout: float | None) -> None:
        self._connection = connection
        self._pool = pool
        self._timeout = timeout
        self._released = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while (chunk := await self._connection.next_chunk(self._timeout)) is not None:
            yield chunk

    async def read(self) -> bytes:
        parts = []
        while (chunk := await self._connection.next_chunk(self._timeout)) is not None:
            parts.append(chunk)
        return b"".join(parts)

    async def aclose(self) -> None:
        if not self._released:
            self._released = True
            self._pool.release(self._connection)


class OriginPool:
    """Kept-alive connections to one scheme://host:port, and the limit on how many are open."""

    def __init__(self, transport: Http1Transport, scheme: bytes, host: str, port: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport = transport
        self.host = host
        self.port = port
        self.tls = scheme == b"https"
        self.idle: collections.deque[Connection] = collections.deque()
        self.slots = asyncio.Semaphore(transport.max_per_origin)

    async def acquire(self, connect_timeout: float | None) -> Connection:
        await self.slots.acquire()
        try:
            now = time.monotonic()
            while self.idle:
                connection = self.idle.pop()  # the most recently used: the least likely to have timed out
                if not connection.closed and now - connection.idle_since < self.transport.keepalive_seconds:
                    return connection
                connection.close()
            return await self.connect(connect_timeout)
        except BaseException:
            self.slots.release()
            raise

    async def connect(self, timeout: float | None) -> Connection:
        loop = asyncio.get_running_loop()
        tls = self.transport.tls_context() if self.tls else None
        try:
            async with asyncio.timeout(timeout):
                _, protocol = await loop.create_connection(
                    lambda: Connection(loop), self.host, self.port, ssl=tls, server_hostname=self.host if tls else None
                )
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"connecting to {self.host}:{self.port} timed out") from exc
        except (OSError, ssl.SSLError) as exc:
            raise httpx.ConnectError(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        return protocol

    def release(self, connection: Connection) -> None:
        if connection.reusable():
            connection.idle_since = time.monotonic()
            self.idle.append(connection)
        else:
            connection.close()
        self.slots.release()

    def park(self, connection: Connection) -> None:
        """A connection opened ahead of any request (see `Http1Transport.preconnect`)."""
        connection.complete = True
        connection.idle_since = time.monotonic()
        self.idle.append(connection)

    def close(self) -> None:
        while self.idle:
            connection = self.idle.pop()
            if not self.loop.is_closed():
                connection.close()


class Http1Transport(httpx.AsyncBaseTransport):
    """See the module docstring. One per process; pools are created on the running event loop."""

    def __init__(
        self, max_per_origin: int = 1000, keepalive_seconds: float = 60.0, tls: ssl.SSLContext | None = None
    ) -> None:
        self.max_per_origin = max_per_origin
        self.keepalive_seconds = keepalive_seconds
        self._pools: dict[tuple[bytes, bytes, int | None], OriginPool] = {}
        self._tls = tls

    def tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            import certifi  # httpx's own CA bundle, so both clients trust the same roots

            self._tls = ssl.create_default_context(cafile=certifi.where())
        return self._tls

    def _pool(self, url: httpx.URL) -> OriginPool:
        origin = (url.raw_scheme, url.raw_host, url.port)
        pool = self._pools.get(origin)
        if pool is None or pool.loop is not asyncio.get_running_loop():
            # (A pool belongs to the loop that opened its connections; a new loop, as a test or a restored
            # snapshot may run, starts a new pool.)
            if url.raw_scheme not in DEFAULT_PORTS:
                raise httpx.UnsupportedProtocol(f"unsupported URL scheme '{url.scheme}'")
            port = url.port or DEFAULT_PORTS[url.raw_scheme]
            pool = self._pools[origin] = OriginPool(self, url.raw_scheme, url.host, port)
        return pool

    async def preconnect(self, url: str, timeout: float | None) -> None:
        """Open a connection to `url`'s origin and keep it in the pool for the first request."""
        pool = self._pool(httpx.URL(url))
        pool.park(await pool.connect(timeout))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts: dict[str, Any] = request.extensions.get("timeout", {})
        raw = request.headers.raw
        head = checked_head([request.method.encode("ascii"), b" ", request.url.raw_path, b" HTTP/1.1\r\n"], raw)
        status, headers, stream = await self.exchange(
            request.method, request.url, head, request.content, timeouts.get("connect"), timeouts.get("read")
        )
        return httpx.Response(status, headers=headers, stream=stream, request=request)

    async def exchange(
        self,
        method: str,
        url: httpx.URL,
        head: bytes,
        body: bytes | None,
        connect_timeout: float | None,
        read_timeout: float | None,
    ) -> tuple[int, list[tuple[bytes, bytes]], Http1Stream]:
        """Send a request framed by `head` (see `request_head`) and wait for the answer's status line and
        headers; the body comes from the stream, and closing the stream returns the connection."""
        pool = self._pool(url)
        connection = await pool.acquire(connect_timeout)
        try:
            connection.send(head, body, head_only=method == "HEAD")
            await connection.head_done
        except BaseException:
            connection.close()
            pool.release(connection)
            raise
        return connection.status, connection.headers, Http1Stream(connection, pool, read_timeout)

    async def aclose(self) -> None:
        pools, self._pools = self._pools, {}
        for pool in pools.values():
            pool.close()


def request_head(
    method: str, url: httpx.URL, headers: Mapping[str, str] | None, body: bytes | None, user_agent: str
) -> bytes:
    """The request line and headers, framed as `httpx.Request` frames them (a `Host` first and a
    `Content-Length` last unless given), plus a `user-agent` unless given: no `httpx.Request` built."""
    given = set()
    fields: list[tuple[bytes, bytes]] = []
    for name, value in (headers or {}).items():
        given.add(name.lower())
        fields.append((name.encode("ascii"), value.encode("ascii")))
    if "host" not in given:
        fields.insert(0, (b"Host", url.netloc))
    if "content-length" not in given and "transfer-encoding" not in given:
        if body is not None:
            fields.append((b"Content-Length", str(len(body)).encode()))
        elif method in ("POST", "PUT", "PATCH"):
            fields.append((b"Content-Length", b"0"))
    if "user-agent" not in given:
        fields.append((b"user-agent", user_agent.encode("ascii")))
    return checked_head([method.encode("ascii"), b" ", url.raw_path, b" HTTP/1.1\r\n"], fields)


def checked_head(lines: list[bytes], fields: list[tuple[bytes, bytes]]) -> bytes:
    """The request line in `lines` and `fields`, framed; refused if a field or the target would split it."""
    for name, value in fields:
        lines += (name, b": ", value, CRLF)
    lines.append(CRLF)
    head = b"".join(lines)
    # Exactly one CR and one LF per line we wrote: any other came from a header and would split it.
    breaks = len(fields) + 2
    if head.count(b"\n") != breaks or head.count(b"\r") != breaks or b"\0" in head:
        raise httpx.LocalProtocolError("a request header or the request target contains CR, LF or NUL")
    return head
