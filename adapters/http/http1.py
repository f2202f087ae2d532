"""The gateway's HTTP/1.1 client: httpx's transport interface over asyncio protocols and httptools.

Why its own: a provider call is one request on a kept-alive connection, and what a general client does
around it (aiohttp's request and response objects, header defaults, tracing hooks, payload registry;
httpx's own pool and h11 parser in Python) cost more per request on the benchmark machine than the
rest of the gateway's work (see tests/bench/transports.py). This client writes the request with one
`write` and parses the answer with httptools (llhttp, in C, the parser uvicorn uses), so per request
it does little more than the bytes need. It also keeps the cold start small: no aiohttp import, and
the TLS context is built on the first HTTPS connection, not at import.

What it does: HTTP/1.1 over TCP or TLS, keep-alive connections pooled per origin and closed after
`keepalive_seconds` idle or once `lifetime_seconds` old (so that an origin's new address, after a DNS change or a
region's failover, is reached within that time however steady the traffic that keeps a connection busy), at most
`max_per_origin` connections to one origin (requests beyond wait for one), bodies framed by `content-length`,
chunked encoding or the connection's end, reads paused while a slow reader has more than `HIGH_WATER` bytes
buffered. The environment is honoured as httpx honours it (adapters/http/environment.py):
`HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` (a CONNECT tunnel for HTTPS, the absolute form for plain HTTP) and
`SSL_CERT_FILE`/`SSL_CERT_DIR` (else certifi's CA bundle). What it leaves out, on purpose: redirects (a 3xx is an
answer like any other, for the caller to refuse), cookies, compression (every request accepts the identity coding
alone, and a success in any other is refused: `upstream_protocol_error`), protocol upgrades (a 101 is refused),
HTTP/2.

Reuse. A connection is reused only after its answer was read to the end; a request cancelled mid-way
closes its connection. A pooled connection is checked before reuse: closed, closing, idle too long, or
(plain TCP) readable while idle, which means the peer closed it or sent what nobody asked for; one
`poll` per reuse. That check cannot see a close that is still on the wire, nor tell a TLS session
ticket from a TLS close, and after a Lambda freeze the event loop has not run to notice either; so a
request on a reused connection that fails before any byte of the answer arrived is sent once more on a
new connection. Nothing was answered, so nothing was acted on that a client could see twice; one that fails
later than a close on the wire could take (`STALE_CLOSE_S`) is not sent again. Not retried, the failure says
where it happened: a reset (the request not read whole) is a `RemoteProtocolError`, an orderly close after
the whole request went out is `HungUp` (the origin may run it).

Bounds (`Limits`): the bytes of an answer's status line and headers (interim answers included) and the
number of header fields, checked as bytes arrive; a whole body read with `Http1Stream.read`; and an
optional overall deadline for the answer. Beyond a bound the exchange fails with `AnswerRefused`
(`code` says which) or `DeadlineExceeded`, and the connection is closed.

Timeouts come from the request's httpx `timeout` extension: `connect` (TCP and TLS handshake, and a
proxy's CONNECT answer), `read` (between any two reads once the request is sent) and, this client's own,
`total` (until the body's end); the wait for the status line as a whole is the caller's to bound
(handler/pipeline/upstream.py does, with the first-byte timeout).
"""

from __future__ import annotations

import asyncio
import collections
import select
import socket
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol, cast

import httptools
import httpx

from adapters.http import ACCEPT_ENCODING, IDENTITY
from adapters.http.environment import Proxy, ProxyRules, tls_context
from handler.records import Value

if TYPE_CHECKING:  # (a type alone: a Protocol class built at import costs every cold start)

    class Written(Protocol):
        """What a request's sender is told of it (`Http1Transport.exchange`): whether it went out on a connection."""

        written: bool


DEFAULT_PORTS = {b"http": 80, b"https": 443}
HIGH_WATER = 256 * 1024  # buffered body bytes at which reading from the socket pauses
CRLF = b"\r\n"
TOO_LARGE = "upstream_body_too_large"
READABLE = select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR
# How soon after a request on a reused connection its failure must come to be taken for a close that was on the
# wire before it (a peer's idle close arrives within a round trip); one later came from a peer that held the
# request, as a proxy's idle timeout in front of a slow origin does: not sent again.
STALE_CLOSE_S = 1.0
# How long `Http1Transport.aclose` waits for the connections it aborted to be gone: their sockets close on the loop's
# next iteration, so this bounds only a loop that runs late, never a wait for the peer.
CLOSE_WAIT_S = 1.0
ACCEPT_IDENTITY = (ACCEPT_ENCODING.encode(), IDENTITY.encode())  # (`request_head`'s field)


class Limits(Value):
    """How much of an answer the client takes (see the module docstring)."""

    __slots__ = ("max_header_bytes", "max_headers", "max_body_bytes")

    def __init__(
        self, max_header_bytes: int = 64 * 1024, max_headers: int = 256, max_body_bytes: int = 128 * 1024 * 1024
    ) -> None:
        self.max_header_bytes: Final = max_header_bytes
        self.max_headers: Final = max_headers
        self.max_body_bytes: Final = max_body_bytes


class AnswerRefused(httpx.RemoteProtocolError):
    """An answer the client will not take: too large, or of a kind it does not handle; `code` says which
    (`upstream_headers_too_large`, `upstream_body_too_large`, `upstream_protocol_error`)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class DeadlineExceeded(httpx.ReadTimeout):
    """The answer did not end within the exchange's overall deadline (`total`)."""


class HeadTimeout(httpx.ReadTimeout):
    """The request went out whole and its answer's head did not come in time: the origin may be running it."""


class HungUp(httpx.RemoteProtocolError):
    """The origin closed the connection in order (a FIN, every byte of the request written) before its answer's
    head was whole: it read the request and may be running it, as an origin behind a proxy whose idle timeout
    cut it is. One that did not read all of it resets the connection instead (a close with unread input is a
    reset), which stays a plain `RemoteProtocolError`: the request did not reach it whole."""


class Connection(asyncio.Protocol):
    """One connection to an origin, carrying one exchange at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limits: Limits) -> None:
        self.loop = loop
        self.limits = limits
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self.opened_at = time.monotonic()  # (its age bounds its reuse: `Http1Transport.lifetime_seconds`)
        self.poller: Any = None  # a `select.poll` on the socket, for the check before reuse
        self.gone: asyncio.Future[None] = loop.create_future()  # done once the connection is lost, its socket closed
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.in_head = True  # the status line and headers are not complete yet
        self.head_bytes = 0
        self.received = False  # any byte of the answer arrived
        self.length = -1  # the answer's content-length, if it gave one
        self.coding = b""  # the answer's content-encoding, if it gave one
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
        if sock is not None:
            self.poller = select.poll()
            self.poller.register(sock.fileno(), READABLE)

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse("upstream switched protocols (101) though no upgrade was asked for", "upstream_protocol_error")
            return
        except httptools.HttpParserError as exc:
            # Bytes came back: the origin answered (it is not unreachable), only not in HTTP the client can read.
            self._fail(AnswerRefused(f"malformed answer from upstream: {exc}", "upstream_protocol_error"))
            self.close()
            return
        if self.in_head:
            # Counted as they arrive, before the parser holds a whole field: one huge header is refused as
            # soon as it passes the bound, not after it was buffered.
            self.head_bytes += len(data)
            if self.head_bytes > self.limits.max_header_bytes:
                self._refuse(
                    f"upstream's answer headers exceed {self.limits.max_header_bytes} bytes",
                    "upstream_headers_too_large",
                )

    def _refuse(self, message: str, code: str) -> AnswerRefused:
        refused = AnswerRefused(message, code)
        self._fail(refused)
        self.chunks.clear()
        self.close()
        return refused

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.gone.done():
            self.gone.set_result(None)
        if self.head_done.done() and not self.complete and not self.framed and self.error is None and exc is None:
            self.complete = True  # a body delimited by the connection's end
            self._wake()
            return
        if not self.complete:
            detail = f": {exc}" if exc else ""
            if self.head_done.done():
                error_type: type[httpx.TransportError] = httpx.ReadError
            else:
                # (An orderly close comes only once what was written is flushed: the request went out whole.)
                error_type = HungUp if exc is None else httpx.RemoteProtocolError
            self._fail(error_type(f"upstream closed the connection before the answer was complete{detail}"))

    # --- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:  # bytes after the answer, before any new request: the connection cannot be trusted
            raise httptools.HttpParserError("upstream sent more than one answer to one request")

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self.headers
        headers.append((name, value))
        if len(headers) > self.limits.max_headers:
            self._fail(
                AnswerRefused(
                    f"upstream sent more than {self.limits.max_headers} headers", "upstream_headers_too_large"
                )
            )
            raise httptools.HttpParserError("too many headers")  # stops the parser; the connection closes
        lowered = name.lower()
        if lowered == b"content-length":
            self.framed = True
            self.length = int(value) if value.isdigit() else -1
        elif lowered == b"transfer-encoding" and b"chunked" in value.lower():
            self.framed = True
        elif lowered == b"content-encoding":
            self.coding = value.strip().lower()

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status == 101:
            self._fail(
                AnswerRefused(
                    "upstream switched protocols (101) though no upgrade was asked for", "upstream_protocol_error"
                )
            )
            raise httptools.HttpParserError("unexpected upgrade")
        if status < 200:  # an interim answer (100 Continue, 103 Early Hints): the real one follows
            self.headers = []
            self.framed = False
            self.length = -1
            self.coding = b""
            return
        if self.coding and self.coding != b"identity" and status < 300 and not self.head_only:
            # A success in a content coding the request did not accept (`request_head`): its body is not the answer
            # as the provider wrote it, and this client decodes none. (An error answer is its status's, whatever its
            # body: read as it came.)
            coding = self.coding[:40].decode("latin-1")
            self._fail(
                AnswerRefused(
                    f"upstream answered {status} in the content coding {coding!r}, where the request accepted only "
                    "identity",
                    "upstream_protocol_error",
                )
            )
            raise httptools.HttpParserError("unasked content coding")
        self.in_head = False
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

    def stale(self, plain: bool) -> bool:
        """Whether this idle connection cannot carry another request, as far as can be seen without the
        event loop: closed or closing, or (`plain` TCP) readable, which on an idle connection means the
        peer closed it or sent what nobody asked for. Over TLS, readable may just be a session ticket the
        loop has not read yet; a TLS close not yet seen is left to the retry (`Http1Transport.exchange`)."""
        if self.closed or self.transport is None or self.transport.is_closing():
            return True
        return plain and self.poller is not None and bool(self.poller.poll(0))

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

    async def next_chunk(self, timeout: float | None, deadline: float | None = None) -> bytes | None:
        """The next piece of the body, or None at its end; `deadline` on the loop's clock."""
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
            expire = self._read_timed_out
            if deadline is not None:
                left = deadline - self.loop.time()
                if timeout is None or left < timeout:
                    timeout, expire = max(left, 0.0), self._deadline_passed
            timer = self.loop.call_later(timeout, expire) if timeout is not None else None
            try:
                await self.waiter
            finally:
                self.waiter = None
                if timer is not None:
                    timer.cancel()

    def _read_timed_out(self) -> None:
        self._fail(httpx.ReadTimeout("upstream sent nothing within the read timeout"))
        self.close()

    def _deadline_passed(self) -> None:
        self._fail(DeadlineExceeded("upstream's answer did not end within the overall deadline"))
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Close at once, owing the peer nothing (an idle connection: no answer is due either way). Over TLS `close`
        only starts the TLS shutdown (close_notify, then a wait for the peer's under a 30 s timer), which keeps the
        socket open until a later run of the loop; an abort closes it on the loop's next iteration."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class Http1Stream(httpx.AsyncByteStream):
    """An answer's body; closing it returns the connection to its pool (or closes it)."""

    __slots__ = ("_connection", "_pool", "_timeout", "_deadline", "_released")

    def __init__(
        self, connection: Connection, pool: OriginPool, timeout: float | None, deadline: float | None = None
    ) -> None:
        self._connection = connection
        self._pool = pool
        self._timeout = timeout
        self._deadline = deadline
        self._released = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while (chunk := await self._connection.next_chunk(self._timeout, self._deadline)) is not None:
            yield chunk

    async def read(self) -> bytes:
        """The whole body, refused (`AnswerRefused`, the connection closed) beyond `Limits.max_body_bytes`."""
        connection = self._connection
        limit = connection.limits.max_body_bytes
        if connection.length > limit and not connection.head_only:
            raise connection._refuse(f"upstream's answer body of {connection.length} bytes exceeds {limit}", TOO_LARGE)
        parts: list[bytes] = []
        size = 0
        while (chunk := await connection.next_chunk(self._timeout, self._deadline)) is not None:
            size += len(chunk)
            if size > limit:
                parts.clear()
                raise connection._refuse(f"upstream's answer body exceeds {limit} bytes", TOO_LARGE)
            parts.append(chunk)
        return b"".join(parts)

    async def first(self, limit: int) -> bytes:
        """The body to its first `limit` bytes and what came with them in the read that passed them, or all of it
        where it is shorter, whatever its `content-length`: the rest is left unread, and the connection closed (it
        cannot carry another exchange)."""
        connection = self._connection
        parts: list[bytes] = []
        size = 0
        while (chunk := await connection.next_chunk(self._timeout, self._deadline)) is not None:
            size += len(chunk)
            parts.append(chunk)
            if size > limit:
                connection.close()
                break
        return b"".join(parts)

    async def aclose(self) -> None:
        if not self._released:
            self._released = True
            self._pool.release(self._connection)


class OriginPool:
    """Kept-alive connections to one scheme://host:port, and the limit on how many are open. `proxy`: the
    forward proxy that reaches the origin, if the environment names one."""

    def __init__(self, transport: Http1Transport, scheme: bytes, host: str, port: int, proxy: Proxy | None) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport = transport
        self.host = host
        self.port = port
        self.tls = scheme == b"https"
        self.proxy = proxy
        # The origin as a proxy is asked for it (RFC 3986 3.2.2): an IPv6 literal in brackets, as `host` has it not
        # (`httpx.URL.host`); without them `http://[::1]:8080` is asked for as `http://::1:8080`, CONNECT `::1:443`.
        self.authority = (f"[{host}]:{port}" if ":" in host else f"{host}:{port}").encode()
        # Plain HTTP through a proxy: requests in absolute form, with the proxy's credentials.
        self.forward_prefix = b"%s://%s" % (scheme, self.authority) if proxy and not self.tls else None
        self.idle: collections.deque[Connection] = collections.deque()
        self.slots = asyncio.Semaphore(transport.max_per_origin)

    async def acquire(self, connect_timeout: float | None) -> tuple[Connection, bool]:
        """A connection for one exchange, and whether it served an exchange before."""
        await self.slots.acquire()
        try:
            now = time.monotonic()
            oldest, born_after = now - self.transport.keepalive_seconds, now - self.transport.lifetime_seconds
            while self.idle:
                connection = self.idle.pop()  # the most recently used: the least likely to have timed out
                if (
                    connection.idle_since > oldest
                    and connection.opened_at > born_after
                    and not connection.stale(not self.tls)
                ):
                    return connection, True
                connection.close()
            return await self.connect(connect_timeout), False
        except BaseException:
            self.slots.release()
            raise

    async def connect(self, timeout: float | None) -> Connection:
        loop = asyncio.get_running_loop()
        tls = self.transport.tls_context() if self.tls else None
        proxy = self.proxy
        host, port = (proxy.host, proxy.port) if proxy else (self.host, self.port)
        limits = self.transport.limits
        try:
            async with asyncio.timeout(timeout):
                _, protocol = await loop.create_connection(
                    lambda: Connection(loop, limits),
                    host,
                    port,
                    ssl=None if proxy else tls,
                    server_hostname=self.host if tls and not proxy else None,
                )
                if proxy and tls:
                    await self._tunnel(protocol, proxy, tls)
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"connecting to {self.authority.decode()}{self._via()} timed out") from exc
        except (OSError, ssl.SSLError) as exc:
            raise httpx.ConnectError(f"cannot connect to {self.authority.decode()}{self._via()}: {exc}") from exc
        return protocol

    def _via(self) -> str:
        return f" through the proxy {self.proxy.host}:{self.proxy.port}" if self.proxy else ""

    async def _tunnel(self, connection: Connection, proxy: Proxy, tls: ssl.SSLContext) -> None:
        """Turn a connection to the proxy into a TLS connection to the origin: CONNECT, then TLS inside."""
        authority = self.authority
        fields = [(b"Host", authority)]
        if proxy.authorization:
            fields.append((b"Proxy-Authorization", proxy.authorization))
        try:
            connection.send(checked_head([b"CONNECT ", authority, b" HTTP/1.1\r\n"], fields), None, head_only=True)
            await connection.head_done
        except HungUp as exc:  # (no request of the caller's went out: the proxy's failure, not the origin's)
            connection.close()
            raise httpx.ProxyError(f"the proxy {proxy.host}:{proxy.port} closed the tunnel unanswered") from exc
        except BaseException:
            connection.close()
            raise
        if not 200 <= connection.status < 300:
            connection.close()
            raise httpx.ProxyError(f"the proxy {proxy.host}:{proxy.port} refused the tunnel: {connection.status}")
        assert connection.transport is not None
        connection.parser = httptools.HttpResponseParser(connection)  # the proxy's answer is over
        connection.transport = cast(
            asyncio.Transport,
            await self.loop.start_tls(connection.transport, connection, tls, server_hostname=self.host),
        )

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

    def close(self) -> list[Connection]:
        """Abort the idle connections (`Connection.abort`): those aborted, whose end is still to come."""
        aborted = []
        while self.idle:
            connection = self.idle.pop()
            if not self.loop.is_closed():
                connection.abort()
                aborted.append(connection)
        return aborted


class Http1Transport(httpx.AsyncBaseTransport):
    """See the module docstring. One per process; pools are created on the running event loop.

    `trust_env` (as httpx's): proxies and CA roots from the environment; `tls`, a TLS context of the
    caller's instead of the environment's roots."""

    def __init__(
        self,
        max_per_origin: int = 1000,
        keepalive_seconds: float = 60.0,
        tls: ssl.SSLContext | None = None,
        limits: Limits | None = None,
        trust_env: bool = True,
        lifetime_seconds: float = 300.0,
    ) -> None:
        self.max_per_origin = max_per_origin
        self.keepalive_seconds = keepalive_seconds
        self.lifetime_seconds = lifetime_seconds
        self.limits = limits or Limits()
        self.trust_env = trust_env
        self._pools: dict[tuple[bytes, bytes, int | None], OriginPool] = {}
        self._tls = tls
        self._proxies: ProxyRules | None = None

    def tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = tls_context() if self.trust_env else httpx.create_ssl_context(trust_env=False)
        return self._tls

    def _proxy(self, url: httpx.URL) -> Proxy | None:
        if not self.trust_env:
            return None
        if self._proxies is None:  # (read once, when the first pool is made)
            self._proxies = ProxyRules.from_environment()
        return self._proxies.proxy_for(url)

    def _pool(self, url: httpx.URL) -> OriginPool:
        origin = (url.raw_scheme, url.raw_host, url.port)
        pool = self._pools.get(origin)
        if pool is None or pool.loop is not asyncio.get_running_loop():
            # (A pool belongs to the loop that opened its connections; a new loop, as a test or a restored
            # snapshot may run, starts a new pool.)
            if url.raw_scheme not in DEFAULT_PORTS:
                raise httpx.UnsupportedProtocol(f"unsupported URL scheme '{url.scheme}'")
            port = url.port or DEFAULT_PORTS[url.raw_scheme]
            pool = self._pools[origin] = OriginPool(self, url.raw_scheme, url.host, port, self._proxy(url))
        return pool

    async def preconnect(self, url: str, timeout: float | None) -> None:
        """Open a connection to `url`'s origin and keep it in the pool for the first request."""
        pool = self._pool(httpx.URL(url))
        pool.park(await pool.connect(timeout))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts: dict[str, Any] = request.extensions.get("timeout", {})
        raw = request.headers.raw
        if ACCEPT_ENCODING not in request.headers:
            raw = [*raw, ACCEPT_IDENTITY]  # (as `request_head` frames it)
        head = checked_head([request.method.encode("ascii"), b" ", request.url.raw_path, b" HTTP/1.1\r\n"], raw)
        status, headers, stream = await self.exchange(
            request.method,
            request.url,
            head,
            request.content,
            timeouts.get("connect"),
            timeouts.get("read"),
            timeouts.get("total"),
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
        total_timeout: float | None = None,
        head_timeout: float | None = None,
        sent: Written | None = None,
    ) -> tuple[int, list[tuple[bytes, bytes]], Http1Stream]:
        """Send a request framed by `head` (see `request_head`) and wait for the answer's status line and
        headers; the body comes from the stream, and closing the stream returns the connection.

        A reused connection that fails before any byte of the answer arrived, within `STALE_CLOSE_S` of the
        request, was closed by its peer while idle (see the module docstring): the request goes once more on a
        new connection, unseen by the caller. `head_timeout` bounds everything up to the answer's headers, and
        says which side of the request's sending it ran out on: `httpx.PoolTimeout` before (the origin never
        saw it), `HeadTimeout` after (the origin may bill it); so does a close before the answer not retried:
        a reset, or `HungUp` (closed in order once the request was out whole). `total_timeout` bounds the
        answer's end. `sent`'s `written` says, whenever the exchange is cut (a deadline, a client gone), whether the
        request had gone out on a connection: one cut while its connection was opened never reached the origin."""
        pool = self._pool(url)
        written = False
        try:
            async with asyncio.timeout(head_timeout):
                connection, reused = await pool.acquire(connect_timeout)
                deadline = pool.loop.time() + total_timeout if total_timeout else None
                if pool.forward_prefix is not None:
                    head = self._absolute_form(head, pool)
                head_only = method == "HEAD"
                while True:
                    try:
                        sent_at = pool.loop.time()
                        connection.send(head, body, head_only)
                        written = True
                        if sent is not None:
                            sent.written = True
                        await connection.head_done
                    except httpx.TransportError:
                        connection.close()
                        if not reused or connection.received or pool.loop.time() - sent_at > STALE_CLOSE_S:
                            pool.release(connection)
                            raise
                        written = False  # (the origin never read it: a timeout from here on is the new connection's)
                        if sent is not None:
                            sent.written = False
                        try:
                            connection, reused = await pool.connect(connect_timeout), False  # (the same slot)
                        except BaseException:
                            pool.slots.release()
                            raise
                        continue
                    except BaseException:
                        connection.close()
                        pool.release(connection)
                        raise
                    stream = Http1Stream(connection, pool, read_timeout, deadline)
                    return connection.status, connection.headers, stream
        except TimeoutError:
            if written:
                raise HeadTimeout(f"{url.host} sent no answer within {head_timeout} s of the request") from None
            raise httpx.PoolTimeout(f"no connection to {url.host} within {head_timeout} s") from None

    @staticmethod
    def _absolute_form(head: bytes, pool: OriginPool) -> bytes:
        """`head` with its target in absolute form (`GET http://host:port/path`) for a forward proxy."""
        assert pool.proxy is not None and pool.forward_prefix is not None
        method, _, rest = head.partition(b" ")
        line, _, fields = rest.partition(CRLF)
        authorization = b"Proxy-Authorization: %s\r\n" % pool.proxy.authorization if pool.proxy.authorization else b""
        return b"%s %s%s\r\n%s%s" % (method, pool.forward_prefix, line, authorization, fields)

    async def aclose(self) -> None:
        """Close the pooled connections, and return once their sockets are closed (those of this loop's pools; at
        most `CLOSE_WAIT_S`). Over TLS a close returned with the socket open, its TLS shutdown and its 30 s timer
        left to a loop run still to come: before a SnapStart snapshot none comes, and every environment restored
        from it held the socket (handler/entry/lambda_handler.py)."""
        pools, self._pools = self._pools, {}
        loop = asyncio.get_running_loop()
        gone = []
        for pool in pools.values():
            aborted = pool.close()
            if pool.loop is loop:
                gone += [connection.gone for connection in aborted if not connection.gone.done()]
        if gone:
            await asyncio.wait(gone, timeout=CLOSE_WAIT_S)


def request_head(
    method: str, url: httpx.URL, headers: Mapping[str, str] | None, body: bytes | None, user_agent: str
) -> bytes:
    """The request line and headers, framed as `httpx.Request` frames them (a `Host` first and a
    `Content-Length` last unless given), plus a `user-agent` and `accept-encoding: identity` unless given (no coding
    of the answer is accepted: this client decodes none): no `httpx.Request` built."""
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
    if ACCEPT_ENCODING not in given:
        fields.append(ACCEPT_IDENTITY)
    return checked_head([method.encode("ascii"), b" ", url.raw_path, b" HTTP/1.1\r\n"], fields)


def checked_head(lines: list[bytes], fields: list[tuple[bytes, bytes]]) -> bytes:
    """The request line in `lines` and `fields`, framed; refused if a field or the target would split it."""
    for name, value in fields:
        lines += (name, b": ", value, CRLF)
    lines.append(CRLF)
    head = b"".join(lines)
    # Exactly one CR and one LF per line we wrote: any other came from a header and would split it.
    breaks = len(fields) + 2
    # (`find`, not `in`: see `handler.redaction.scrub`)
    if head.count(b"\n") != breaks or head.count(b"\r") != breaks or head.find(b"\0") >= 0:
        raise httpx.LocalProtocolError("a request header or the request target contains CR, LF or NUL")
    return head
