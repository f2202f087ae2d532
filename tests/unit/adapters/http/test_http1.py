"""The gateway's HTTP/1.1 client against scripted servers: framing, keep-alive, timeouts, failures, TLS."""

from __future__ import annotations

import asyncio
import gzip
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from adapters.http.http1 import HIGH_WATER, Http1Stream, Http1Transport, HungUp
from handler.config import TimeoutConfig
from handler.errors import UpstreamError
from handler.pipeline.upstream import USER_AGENT, UpstreamClient
from handler.ports import UpstreamRequest
from tests.support.tls import self_signed

pytestmark = pytest.mark.both_loops

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
TIMEOUTS = {"timeout": {"connect": 2.0, "read": 2.0, "write": 2.0, "pool": 2.0}}


class Scripted:
    """A TCP server whose connections run `handler`; counts the connections it accepted."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client went away, or the test ended
        finally:
            writer.close()


@asynccontextmanager
async def scripted(
    handler: Handler, tls: ssl.SSLContext | None = None, host: str = "127.0.0.1"
) -> AsyncIterator[tuple[Scripted, str]]:
    state = Scripted(handler)
    server = await asyncio.start_server(state._serve, host, 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    named = "localhost" if tls else f"[{host}]" if ":" in host else host
    try:
        yield state, f"{'https' if tls else 'http'}://{named}:{port}"
    finally:
        server.close()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await reader.readexactly(length)


def answering(*answers: bytes, then_close: bool = False) -> Handler:
    """Answer each request on a connection with the next of `answers`."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for answer in answers:
            await read_request(reader)
            writer.write(answer)
            await writer.drain()
        if not then_close:
            await reader.read()  # keep the connection open until the client closes it

    return handler


def recording(answer: bytes, seen: list[bytes]) -> Handler:
    """Answer every request on a connection with `answer`, recording each request's bytes."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, body = await read_request(reader)
            seen.append(head + body)
            writer.write(answer)
            await writer.drain()

    return handler


HALF = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n01234"  # half the body it announces
OK = b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{"ok":true}'


async def send(transport: Http1Transport, url: str, method: str = "POST", body: bytes = b"{}") -> httpx.Response:
    request = httpx.Request(method, url, content=body if method != "HEAD" else None, extensions=TIMEOUTS)
    return await transport.handle_async_request(request)


async def send_fails(url: str, error: type[Exception], match: str | None = None) -> None:
    """A request to `url` over a new transport raises `error`; the transport is closed either way."""
    transport = Http1Transport()
    try:
        with pytest.raises(error, match=match):
            await send(transport, url)
    finally:
        await transport.aclose()


async def read_all(response: httpx.Response) -> bytes:
    stream = response.stream
    assert isinstance(stream, Http1Stream)
    try:
        return await stream.read()
    finally:
        await stream.aclose()


async def test_content_length_answers_reuse_one_connection() -> None:
    async with scripted(answering(OK, OK, OK)) as (server, url):
        transport = Http1Transport()
        for _ in range(3):
            response = await send(transport, f"{url}/v1/chat")
            assert response.status_code == 200
            assert response.headers["content-type"] == "application/json"
            assert await read_all(response) == b'{"ok":true}'
        assert server.connections == 1
        await transport.aclose()


async def test_request_bytes_on_the_wire() -> None:
    seen: list[bytes] = []
    async with scripted(recording(OK, seen)) as (_, url):
        transport = Http1Transport()
        request = httpx.Request(
            "POST", f"{url}/v1/x?a=1", headers={"authorization": "Bearer k"}, content=b"hello", extensions=TIMEOUTS
        )
        await read_all(await transport.handle_async_request(request))
        await transport.aclose()
    head, _, body = seen[0].partition(b"\r\n\r\n")
    lines = head.lower().split(b"\r\n")
    assert lines[0] == b"post /v1/x?a=1 http/1.1"
    assert b"authorization: bearer k" in lines
    assert b"content-length: 5" in lines
    assert any(line.startswith(b"host: 127.0.0.1:") for line in lines)
    assert lines[-1] == b"accept-encoding: identity"  # (no coding of the answer accepted: none is decoded)
    assert body == b"hello"


async def test_a_success_in_a_content_coding_is_refused_and_an_error_in_one_is_its_status() -> None:
    """Every request accepts the identity coding alone, and the client decodes none: a success in gzip is refused
    (`upstream_protocol_error`: the provider ran the request, so it is billable). The request said nothing of codings,
    which accepts any (RFC 9110 12.5.3), and a gzip answer was read as a body that is not JSON (502 `=invalid_json`,
    found by review). `identity` said is no coding; an error answer is its status's, whatever its body."""
    packed = gzip.compress(b'{"ok":true}')
    coded = b"HTTP/1.1 %d X\r\ncontent-encoding: %s\r\ncontent-length: %d\r\n\r\n%s"
    answers = [coded % (200, b"gzip", len(packed), packed), coded % (200, b"Identity", 11, b'{"ok":true}')]
    seen: list[bytes] = []
    async with scripted(recording(answers[0], seen)) as (_, url):
        client = UpstreamClient(TimeoutConfig())
        with pytest.raises(UpstreamError) as refused:
            await client.send(UpstreamRequest("POST", url, {}, b"{}"))
        assert (refused.value.outcome, refused.value.billable, refused.value.retryable) == (
            "upstream_protocol_error",
            True,
            True,
        )
        assert "content coding 'gzip'" in refused.value.message
        await client.aclose()
    assert b"\r\naccept-encoding: identity\r\n" in seen[0]
    async with scripted(answering(answers[1], coded % (500, b"gzip", len(packed), packed))) as (_, url):
        client = UpstreamClient(TimeoutConfig())
        answer = await client.send(UpstreamRequest("POST", url, {}, b"{}"))
        assert answer.status == 200 and await answer.read() == b'{"ok":true}'
        failed = await client.send(UpstreamRequest("POST", url, {}, b"{}"))
        assert failed.status == 500 and await failed.read_error() == packed
        await client.aclose()


async def test_chunked_answer_streams_in_pieces() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        for event in (b"data: 1\n\n", b"data: 2\n\n"):
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            await writer.drain()
            await asyncio.sleep(0.05)
        writer.write(b"0\r\n\r\n")
        await reader.read()

    async with scripted(handler) as (server, url):
        transport = Http1Transport()
        response = await send(transport, url)
        pieces = [chunk async for chunk in response.stream]  # type: ignore[union-attr]
        await response.aclose()
        assert pieces == [b"data: 1\n\n", b"data: 2\n\n"]
        assert server.connections == 1
        await transport.aclose()


async def test_body_delimited_by_the_connection_closing() -> None:
    until_closed = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end"
    async with scripted(answering(until_closed, then_close=True)) as (_, url):
        transport = Http1Transport()
        assert await read_all(await send(transport, url)) == b"until the end"
        await transport.aclose()


async def test_no_body_answers_and_head() -> None:
    no_content = b"HTTP/1.1 204 No Content\r\n\r\n"
    head = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n"
    async with scripted(answering(no_content, head)) as (_, url):
        transport = Http1Transport()
        response = await send(transport, url)
        assert response.status_code == 204
        assert await read_all(response) == b""
        response = await send(transport, url, method="HEAD")
        assert response.headers["content-length"] == "100"
        assert await read_all(response) == b""
        await transport.aclose()


async def test_interim_answer_is_skipped() -> None:
    async with scripted(answering(b"HTTP/1.1 100 Continue\r\n\r\n" + OK)) as (_, url):
        transport = Http1Transport()
        response = await send(transport, url)
        assert response.status_code == 200
        assert await read_all(response) == b'{"ok":true}'
        await transport.aclose()


async def test_connection_close_is_not_reused() -> None:
    closing = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"
    async with scripted(answering(closing, then_close=True)) as (server, url):
        transport = Http1Transport()
        for _ in range(2):
            assert await read_all(await send(transport, url)) == b"ok"
        assert server.connections == 2
        await transport.aclose()


async def test_bytes_after_the_answer_spoil_only_the_connection() -> None:
    stray = OK + b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstray"
    async with scripted(answering(stray, OK)) as (server, url):
        transport = Http1Transport()
        assert await read_all(await send(transport, url)) == b'{"ok":true}'
        assert await read_all(await send(transport, url)) == b'{"ok":true}'
        assert server.connections == 2  # the first connection was not trusted again
        await transport.aclose()


async def test_unread_body_closes_its_connection() -> None:
    # The first connection sends half a body and stops; the second, the whole answer.
    per_connection = iter([answering(HALF), answering(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n0123456789")])

    async def then_whole(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await next(per_connection)(reader, writer)

    async with scripted(then_whole) as (server, url):
        transport = Http1Transport()
        response = await send(transport, url)
        await response.aclose()  # not read: the connection cannot carry another exchange safely
        assert await read_all(await send(transport, url)) == b"0123456789"
        assert server.connections == 2
        await transport.aclose()


async def test_large_body_survives_paused_reading() -> None:
    payload = bytes(range(256)) * (HIGH_WATER // 64)  # four times the high-water mark
    answer = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(payload), payload)
    async with scripted(answering(answer)) as (_, url):
        transport = Http1Transport()
        response = await send(transport, url)
        await asyncio.sleep(0.2)  # let the answer pile up unread
        assert await read_all(response) == payload
        await transport.aclose()


async def test_refused_connection_is_a_connect_error() -> None:
    async with scripted(answering(OK)) as (_, url):
        pass  # closed: nothing listens on that port now
    await send_fails(url, httpx.ConnectError)


async def test_read_timeout_between_chunks() -> None:
    async with scripted(answering(HALF)) as (_, url):
        transport = Http1Transport()
        request = httpx.Request("POST", url, content=b"{}", extensions={"timeout": {"connect": 1, "read": 0.2}})
        response = await transport.handle_async_request(request)
        with pytest.raises(httpx.ReadTimeout):
            await read_all(response)
        await transport.aclose()


async def test_cut_mid_body_is_a_read_error() -> None:
    async with scripted(answering(HALF, then_close=True)) as (_, url):
        transport = Http1Transport()
        response = await send(transport, url)
        with pytest.raises(httpx.ReadError):
            await read_all(response)
        await transport.aclose()


async def test_closed_before_answering_and_malformed_answers() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    async with scripted(silent) as (_, url):
        await send_fails(url, HungUp)
    async with scripted(answering(b"NOT HTTP AT ALL\r\n\r\n")) as (_, url):
        await send_fails(url, httpx.RemoteProtocolError)


async def test_a_close_says_whether_the_request_went_out_whole() -> None:
    """Closed in order once the request was read (the origin may run it) is `HungUp`; reset unread, a reset
    (`RemoteProtocolError`, not `HungUp`): the caller bills the one and not the other."""

    async def hanging_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(0.05)

    async def resetting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # a reset (a close with no lingering), the request unread

    async with scripted(hanging_up) as (_, url):
        await send_fails(url, HungUp, match="before the answer was complete")
    async with scripted(resetting) as (_, url):
        transport = Http1Transport()
        with pytest.raises(httpx.RemoteProtocolError) as failure:
            await send(transport, url)
        assert not isinstance(failure.value, HungUp)
        await transport.aclose()


async def test_header_injection_is_refused_before_sending() -> None:
    async with scripted(answering(OK)) as (server, url):
        transport = Http1Transport()
        request = httpx.Request("POST", url, headers={"x-bad": "a\r\nx-injected: 1"}, content=b"{}")
        with pytest.raises(httpx.LocalProtocolError):
            await transport.handle_async_request(request)
        assert server.connections == 0
        await transport.aclose()


async def test_cancelled_request_closes_its_connection() -> None:
    async def slow_then_fast(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(0.5)
        writer.write(OK)
        await reader.read()

    async with scripted(slow_then_fast) as (server, url):
        transport = Http1Transport()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await send(transport, url)
        # The late answer must not be read as the next request's.
        assert await read_all(await send(transport, url)) == b'{"ok":true}'
        assert server.connections == 2
        await transport.aclose()


async def test_connections_per_origin_are_capped() -> None:
    open_now = 0
    most = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_now, most
        while True:
            await read_request(reader)
            open_now += 1
            most = max(most, open_now)
            await asyncio.sleep(0.05)
            open_now -= 1
            writer.write(OK)
            await writer.drain()

    async with scripted(handler) as (server, url):
        transport = Http1Transport(max_per_origin=2)
        bodies = await asyncio.gather(*(read_after(send(transport, url)) for _ in range(6)))
        assert bodies == [b'{"ok":true}'] * 6
        assert server.connections == 2
        assert most == 2
        await transport.aclose()


async def read_after(response: Awaitable[httpx.Response]) -> bytes:
    return await read_all(await response)


async def test_preconnected_connection_serves_the_first_request() -> None:
    async with scripted(answering(OK)) as (server, url):
        transport = Http1Transport()
        await transport.preconnect(url, 1.0)
        assert server.connections == 1
        assert await read_all(await send(transport, url)) == b'{"ok":true}'
        assert server.connections == 1
        await transport.aclose()


async def test_idle_connection_past_keepalive_is_not_reused() -> None:
    async with scripted(answering(OK, OK)) as (server, url):
        transport = Http1Transport(keepalive_seconds=0.05)
        await read_all(await send(transport, url))
        await asyncio.sleep(0.1)
        await read_all(await send(transport, url))
        assert server.connections == 2
        await transport.aclose()


async def test_tls(tmp_path: Path) -> None:
    certificate = self_signed(tmp_path)
    server_tls = certificate.server_context()
    async with scripted(answering(OK, OK), tls=server_tls) as (server, url):
        trusting = Http1Transport(tls=certificate.client_context())
        for _ in range(2):
            assert await read_all(await send(trusting, url)) == b'{"ok":true}'
        assert server.connections == 1
        await trusting.aclose()
        # A transport with certifi's roots, which do not include a self-signed certificate:
        await send_fails(url, httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED")


async def test_the_upstream_client_frames_requests_as_httpx_does_without_building_them() -> None:
    """`UpstreamClient` over this client writes the head itself: the same bytes an `httpx.Request` gives."""
    seen: list[bytes] = []
    async with scripted(recording(OK, seen)) as (server, url):
        client = UpstreamClient(TimeoutConfig())
        cases = [
            UpstreamRequest("POST", f"{url}/v1/x?a=1", {"authorization": "Bearer k"}, b"hello"),
            UpstreamRequest("POST", f"{url}/v1/empty", None, None),
            UpstreamRequest("GET", f"{url}/v1/models", {"user-agent": "mine", "Host": "example.test"}, None),
        ]
        for case in cases:
            answer = await client.send(case)
            assert answer.status == 200 and await answer.read() == b'{"ok":true}'
        transport = Http1Transport()
        for case in cases:
            headers = dict(case.headers or {})
            built = httpx.Request(case.method, case.url, headers=headers, content=case.body, extensions=TIMEOUTS)
            built.headers.setdefault("user-agent", USER_AGENT)  # (and `accept-encoding`, as the transport adds it)
            await read_all(await transport.handle_async_request(built))
        await transport.aclose()
        await client.aclose()
        assert server.connections == 2
    direct, through_httpx = seen[:3], seen[3:]
    assert direct == through_httpx
    assert direct[1].split(b"\r\n")[1:3] == [b"Host: " + url.removeprefix("http://").encode(), b"Content-Length: 0"]
    assert b"\r\nHost: example.test\r\n" in direct[2] and b"\r\nuser-agent: mine\r\n" in direct[2]


async def test_upstream_answer_headers_are_read_only_when_asked_for() -> None:
    async with scripted(answering(b"HTTP/1.1 429 Too Many\r\nretry-after: 7\r\ncontent-length: 2\r\n\r\n{}")) as (
        _,
        url,
    ):
        client = UpstreamClient(TimeoutConfig())
        answer = await client.send(UpstreamRequest("POST", url, None, b"{}"))
        assert answer.status == 429 and answer._headers is None
        assert answer.headers["Retry-After"] == "7"  # case-insensitive, as httpx's headers are
        assert await answer.read() == b"{}"
        await client.aclose()


async def test_an_injected_header_never_leaves_the_upstream_client() -> None:
    async with scripted(answering(OK)) as (server, url):
        client = UpstreamClient(TimeoutConfig())
        with pytest.raises(UpstreamError, match="LocalProtocolError"):
            await client.send(UpstreamRequest("POST", url, {"x-bad": "a\r\nx-injected: 1"}, b"{}"))
        assert server.connections == 0
        await client.aclose()
