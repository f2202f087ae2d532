"""The upstream client against hostile or broken upstreams: every answer it cannot use ends in a clear
error, soon, without unbounded memory."""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
import pytest

from adapters.http.http1 import Http1Transport
from handler.config import LimitsConfig, TimeoutConfig
from handler.errors import UpstreamError, UpstreamTimeoutError
from handler.pipeline.upstream import UpstreamClient
from handler.ports import UpstreamRequest
from tests.unit.adapters.http.test_http1 import OK, Handler, answering, read_request, scripted

pytestmark = pytest.mark.both_loops
LIMITS = LimitsConfig(upstream_header_bytes=16 * 1024, upstream_headers=100, upstream_body_bytes=1024 * 1024)


def head_then(first: bytes, piece: bytes, times: int, pause_s: float = 0.0) -> Handler:
    """Answer with `first`, then `piece` `times` times (a pause between each), as long as the client reads."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(first)
        for _ in range(times):
            writer.write(piece)
            await writer.drain()
            if pause_s:
                await asyncio.sleep(pause_s)
        await reader.read()

    return handler


async def fails(
    handler: Handler, outcome: str, timeouts: TimeoutConfig | None = None, stream: bool = False
) -> UpstreamError:
    """A POST to `handler`'s server fails as `outcome` says (what `x-gateway-route` shows), on sending or on
    reading the body; the client sees 502 `upstream_error` or 504 `upstream_timeout`, the interface's codes."""
    async with scripted(handler) as (_, url):
        client = UpstreamClient(timeouts or TimeoutConfig(connect=2, first_byte=5, between_chunks=5), limits=LIMITS)
        try:
            with pytest.raises(UpstreamError) as failure:
                answer = await client.send(UpstreamRequest("POST", url, None, b"{}"))
                if stream:
                    async for _ in answer.chunks():
                        pass
                else:
                    await answer.read()
        finally:
            await client.aclose()
    error = failure.value
    assert error.outcome == outcome, error.message
    assert (error.status, error.code) in ((502, "upstream_error"), (504, "upstream_timeout"))
    return error


@pytest.mark.usefixtures("no_gc_pauses")
async def test_two_million_headers_are_refused_at_the_count() -> None:
    started = time.perf_counter()
    error = await fails(head_then(b"HTTP/1.1 200 OK\r\n", b"x-h: v\r\n" * 10_000, 200), "upstream_headers_too_large")
    assert "more than 100 headers" in error.message
    assert time.perf_counter() - started < 2


@pytest.mark.usefixtures("no_gc_pauses")
async def test_one_endless_header_is_refused_at_the_byte_bound() -> None:
    started = time.perf_counter()
    error = await fails(head_then(b"HTTP/1.1 200 OK\r\nx-h: ", b"a" * 65536, 1000), "upstream_headers_too_large")
    assert "exceed 16384 bytes" in error.message
    assert time.perf_counter() - started < 2


async def test_endless_interim_answers_count_toward_the_header_bound() -> None:
    await fails(head_then(b"", b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n", 10_000), "upstream_headers_too_large")


async def test_an_interim_answer_before_the_real_one_is_skipped() -> None:
    async with scripted(head_then(b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n" + OK, b"", 0)) as (_, url):
        client = UpstreamClient(TimeoutConfig(), limits=LIMITS)
        answer = await client.send(UpstreamRequest("POST", url, None, b"{}"))
        assert answer.status == 200 and await answer.read() == b'{"ok":true}'
        await client.aclose()


@pytest.mark.usefixtures("no_gc_pauses")
async def test_an_endless_body_is_refused_at_the_body_bound() -> None:
    chunk = b"%x\r\n%s\r\n" % (65536, b"a" * 65536)
    started = time.perf_counter()
    error = await fails(
        head_then(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", chunk, 10_000), "upstream_body_too_large"
    )
    assert "exceeds 1048576 bytes" in error.message
    assert time.perf_counter() - started < 2


async def test_a_body_announced_beyond_the_bound_is_refused_before_it_is_read() -> None:
    error = await fails(
        head_then(b"HTTP/1.1 200 OK\r\ncontent-length: 900000000\r\n\r\n", b"", 0), "upstream_body_too_large"
    )
    assert "900000000 bytes" in error.message


async def test_the_body_bound_holds_over_any_transport() -> None:
    """Over another httpx transport (httpx's own pool here) the whole-body bound is the client's own."""
    big = head_then(b"HTTP/1.1 200 OK\r\ncontent-length: 2000000\r\n\r\n", b"a" * 2_000_000, 1)
    async with scripted(big) as (_, url):
        client = UpstreamClient(TimeoutConfig(), httpx.AsyncHTTPTransport(), LIMITS)
        answer = await client.send(UpstreamRequest("POST", url, None, b"{}"))
        with pytest.raises(UpstreamError) as failure:
            await answer.read()
        assert failure.value.outcome == "upstream_body_too_large" and failure.value.code == "upstream_error"
        await client.aclose()


@pytest.mark.usefixtures("no_gc_pauses")
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_a_dripping_body_ends_at_the_overall_deadline(stream: bool) -> None:
    """A byte every 0.1 s never trips the timeout between chunks; the overall deadline ends it: 504."""
    timeouts = TimeoutConfig(connect=1, first_byte=1, between_chunks=1, total=0.6)
    drip = head_then(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n", b"a", 1000, pause_s=0.1)
    started = time.perf_counter()
    error = await fails(drip, "upstream_timeout", timeouts, stream=stream)
    assert isinstance(error, UpstreamTimeoutError) and error.status == 504
    assert "overall deadline" in error.message
    assert 0.5 < time.perf_counter() - started < 1.5


@pytest.mark.usefixtures("no_gc_pauses")
async def test_headers_that_never_end_are_bounded_by_the_overall_deadline() -> None:
    timeouts = TimeoutConfig(connect=1, first_byte=30, between_chunks=30, total=0.5)
    started = time.perf_counter()
    await fails(head_then(b"HTTP/1.1 200 OK\r\n", b"x", 1000, pause_s=0.1), "upstream_timeout", timeouts)
    assert time.perf_counter() - started < 1.5


async def test_switching_protocols_is_a_clear_error_not_a_transport_crash(caplog: pytest.LogCaptureFixture) -> None:
    switching = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\nraw bytes"
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        error = await fails(head_then(switching, b"", 0), "upstream_protocol_error")
        await asyncio.sleep(0.05)
    assert "101" in error.message
    assert not [r for r in caplog.records if r.name == "asyncio"], caplog.text


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_a_redirect_is_an_error_not_a_success(status: int) -> None:
    redirect = b"HTTP/1.1 %d Moved\r\nlocation: http://elsewhere.test/\r\ncontent-length: 0\r\n\r\n" % status
    error = await fails(head_then(redirect, b"", 0), "upstream_redirect")
    assert error.upstream_status == status and error.status == 502 and error.retryable


def silent(seen: list[bytes]) -> Handler:
    """Take the request whole and never answer it."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, _ = await read_request(reader)
        seen.append(head)
        await reader.read()

    return handler


async def test_a_request_sent_whole_and_never_answered_is_billable() -> None:
    seen: list[bytes] = []
    error = await fails(silent(seen), "upstream_timeout", TimeoutConfig(connect=1, first_byte=0.3, between_chunks=5))
    assert len(seen) == 1 and error.billable


async def test_an_answer_broken_after_its_head_is_billable() -> None:
    error = await fails(answering(OK[: OK.index(b"\r\n\r\n") + 4] + b"{", then_close=True), "upstream_error")
    assert error.billable


async def test_a_request_that_never_went_out_is_not_billable() -> None:
    """Every connection to the origin busy past the wait: the provider never saw this request."""
    seen: list[bytes] = []
    async with scripted(silent(seen)) as (_, url):
        timeouts = TimeoutConfig(connect=1, first_byte=0.3, between_chunks=5)
        client = UpstreamClient(timeouts, transport=Http1Transport(max_per_origin=1), limits=LIMITS)
        try:
            first = asyncio.ensure_future(client.send(UpstreamRequest("POST", url, None, b"{}"), first_byte_timeout=1))
            await asyncio.sleep(0.05)
            with pytest.raises(UpstreamTimeoutError) as queued:
                await client.send(UpstreamRequest("POST", url, None, b"{}"))
            with pytest.raises(UpstreamTimeoutError) as sent:
                await first
        finally:
            await client.aclose()
    assert queued.value.outcome == "connect_timeout" and not queued.value.billable
    assert sent.value.outcome == "upstream_timeout" and sent.value.billable
    assert len(seen) == 1
