"""`gateway serve`'s HTTP protocol (handler/entry/server.py), driven byte by byte over a transport that records what
is written to it."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from uvicorn.server import ServerState

from handler.api.app import BODY_LATE
from handler.config import GatewaySettings
from handler.entry import server
from handler.entry.server import BoundedHttpToolsProtocol

BODY = b'{"ok": true}'


async def whole(request: Request) -> Response:
    return Response(BODY, media_type="application/json")


async def streamed(request: Request) -> StreamingResponse:
    async def events() -> AsyncIterator[bytes]:
        yield b"data: one\n\n"
        await asyncio.sleep(0.01)
        yield b"data: two\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


async def slow(request: Request) -> StreamingResponse:
    """A stream that runs longer than the head's bound these tests set (`bounds`)."""

    async def events() -> AsyncIterator[bytes]:
        for _ in range(4):
            await asyncio.sleep(0.1)
            yield b"data: on\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


READS: list[dict[str, Any]] = []  # what `echo` was given by each `receive`, for the tests of the body's bound


async def echo(request: Request) -> Response:
    """The body's length; its messages kept (`READS`), a disconnect too."""
    size = 0
    while True:
        message = await request.receive()
        READS.append(message)
        size += len(message.get("body", b""))
        if message["type"] != "http.request" or not message.get("more_body"):
            break
    return Response(b"%d" % size, media_type="text/plain")


APP = Starlette(
    routes=[
        Route("/whole", whole, methods=["GET", "HEAD"]),
        Route("/stream", streamed),
        Route("/slow", slow),
        Route("/echo", echo, methods=["POST"]),
        Route("/v1/messages", echo, methods=["POST"]),
    ]
)


class Recorded(asyncio.Transport):
    """What the protocol writes, write by write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.eof = False  # (`write_eof`: the protocol's end of the connection sent)
        self.protocol: asyncio.BaseProtocol | None = None  # (set where a protocol hands the transport over)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self.protocol is not None
        return self.protocol

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8080), "peername": ("127.0.0.1", 40000)}.get(name, default)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


async def answered(head: bytes) -> list[bytes]:
    """The writes of the answer to the request `head` (a request without a body)."""
    config = uvicorn.Config(APP, lifespan="off", log_level="warning")
    protocol = BoundedHttpToolsProtocol(config=config, server_state=ServerState(), app_state={})
    transport = Recorded()
    protocol.connection_made(transport)
    protocol.data_received(head)
    for _ in range(100):
        if protocol.cycle is not None and protocol.cycle.response_complete:
            break
        await asyncio.sleep(0.005)
    protocol.connection_lost(None)
    return transport.writes


async def test_a_head_requests_answer_is_its_head_alone() -> None:
    """A HEAD answer writes no body: its head alone goes."""
    [written] = await answered(b"HEAD /whole HTTP/1.1\r\nhost: gateway\r\n\r\n")
    assert written.startswith(b"HTTP/1.1 200 OK\r\n") and written.endswith(b"\r\n\r\n")


async def test_a_streams_head_goes_before_its_first_event() -> None:
    """A stream (no content-length) is written as it comes: its head at once, each event then."""
    writes = await answered(b"GET /stream HTTP/1.1\r\nhost: gateway\r\n\r\n")
    assert writes[0].startswith(b"HTTP/1.1 200 OK\r\n") and writes[0].endswith(b"\r\n\r\n")
    assert b"data: one" in writes[1] and b"data: two" in b"".join(writes[2:])


async def test_a_head_answers_head_goes_before_a_431_pipelined_behind_it() -> None:
    """A request refused for its head (431) pipelined behind a HEAD: the HEAD's answer first, then the 431 (a head
    held to go with a body, which a HEAD answer has not, went after the 431 had closed the connection: found by
    review of a change since taken back)."""
    refused = b"GET /whole HTTP/1.1\r\nhost: gateway\r\nconnection: close\r\nx-big: " + b"a" * 120_000 + b"\r\n\r\n"
    writes = await answered(b"HEAD /whole HTTP/1.1\r\nhost: gateway\r\n\r\n" + refused)
    assert writes[0].startswith(b"HTTP/1.1 200 OK\r\n"), [w[:40] for w in writes]
    assert writes[1].startswith(b"HTTP/1.1 431 "), [w[:40] for w in writes]


@pytest.fixture
def bounds(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The served gateway's bounds made short: a head within 0.2 s, a body within 0.3 s, two connections."""
    settings = GatewaySettings.model_validate(
        {"timeouts": {"request_head": 0.2, "request_body": 0.3}, "limits": {"connections": 2}}
    )
    monkeypatch.setattr(server, "served_settings", lambda: settings)
    READS.clear()
    yield


class Connection:
    """A protocol on a `Recorded` transport: what is written to it, read by read."""

    def __init__(self, server_state: ServerState | None = None) -> None:
        config = uvicorn.Config(APP, lifespan="off", log_level="warning")
        self.protocol = BoundedHttpToolsProtocol(
            config=config, server_state=server_state or ServerState(), app_state={}
        )
        self.transport = Recorded()
        self.protocol.connection_made(self.transport)

    @property
    def written(self) -> bytes:
        return b"".join(self.transport.writes)

    def statuses(self) -> list[bytes]:
        return re.findall(rb"HTTP/1\.1 (\d{3}) ", self.written)

    async def send(self, *reads: bytes) -> None:
        for read in reads:
            self.protocol.data_received(read)
            await asyncio.sleep(0)

    async def answers(self, count: int, within_s: float = 3) -> list[bytes]:
        """The statuses written once `count` answers are, or `within_s` has passed."""
        for _ in range(int(within_s / 0.005)):
            if len(self.statuses()) >= count:
                break
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.02)
        return self.statuses()

    def close(self) -> None:
        """The connection's end, told to the protocol that holds its transport (as the event loop tells it): another
        than this one's where the transport was handed over."""
        (self.transport.protocol or self.protocol).connection_lost(None)


def chunked(body: bytes, size: int = 8000) -> bytes:
    pieces = [b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size]) for i in range(0, len(body), size)]
    return b"".join(pieces) + b"0\r\n\r\n"


def error_of(answer: bytes) -> dict[str, Any]:
    """The error body of an answer written whole (its head, then its body)."""
    said: dict[str, Any] = orjson.loads(answer.partition(b"\r\n\r\n")[2])
    return said


@pytest.mark.parametrize("size", [70_000, 200_000, 250_000])
async def test_a_request_pipelined_behind_a_chunked_body_in_the_same_read_is_answered(size: int) -> None:
    """A chunked POST and a small request behind it, read at once (uvloop reads up to 256 KiB): the protocol cut the
    read at the head's bound (64 KiB), took the chunked body for one begun in an earlier read, and counted its rest as
    the next request's head: the 60-byte request behind a 200 KB body was refused 431 and the connection closed
    (found by review; uvicorn's own protocol answers both). The body is now followed in the whole read."""
    connection = Connection()
    first = b"POST /echo HTTP/1.1\r\nhost: g\r\ntransfer-encoding: chunked\r\n\r\n" + chunked(b"x" * size)
    second = b"POST /echo HTTP/1.1\r\nhost: g\r\ncontent-length: 2\r\n\r\nok"
    await connection.send(first + second)
    assert await connection.answers(2) == [b"200", b"200"], connection.written[-300:]
    assert connection.written.endswith(b"\r\n\r\n2") and not connection.transport.closed
    connection.close()


def split_points(first: bytes) -> list[int]:
    """Where the reads of a chunked request (`first`) are cut: in a chunk's data, in a size line, between its CR and
    LF, and in the last chunk's empty line."""
    line = first.index(b"\r\n1f40\r\n", 150_000) + 3
    return [150_000, line, line + 4, len(first) - 1, len(first) - 3]


@pytest.mark.parametrize("where", range(5), ids=["data", "size-line", "crlf", "last-lf", "last-chunk"])
async def test_a_request_pipelined_behind_a_chunked_body_spanning_reads_is_answered(where: int) -> None:
    """A chunked POST of 300 KB, and a request pipelined behind it in the read its body ends in. The next head was
    counted from that read's first byte (a chunked body begun in an earlier read was not followed), so the body's
    tail was taken for the next head: 431 `headers_too_large`, the connection closed (found by review; over a socket,
    a 700 KB chunked POST and `GET /health` in one `sendall` to `gateway serve` were answered 200, then 431). However
    the reads cut the body, it is followed to its end."""
    connection = Connection()
    first = b"POST /echo HTTP/1.1\r\nhost: g\r\ntransfer-encoding: chunked\r\n\r\n" + chunked(b"x" * 300_000)
    whole = first + b"POST /echo HTTP/1.1\r\nhost: g\r\ncontent-length: 2\r\n\r\nok"
    at = split_points(first)[where]
    await connection.send(whole[:at], whole[at:])
    assert await connection.answers(2) == [b"200", b"200"], connection.written[-300:]
    assert connection.written.endswith(b"\r\n\r\n2") and not connection.transport.closed
    connection.close()


async def test_a_pipelined_head_past_the_bound_behind_such_a_body_is_still_431() -> None:
    """Followed in the whole read, the chunked body's end is where the next head is counted from: a head past the
    bound behind it is refused, after the request before it is answered."""
    connection = Connection()
    first = b"POST /echo HTTP/1.1\r\nhost: g\r\ntransfer-encoding: chunked\r\n\r\n" + chunked(b"x" * 100_000)
    big = b"GET /whole HTTP/1.1\r\nhost: g\r\nx-big: " + b"a" * 70_000 + b"\r\n\r\n"
    await connection.send(first + big)
    assert await connection.answers(2) == [b"200", b"431"], connection.written[-300:]
    connection.close()


async def test_a_stream_to_an_http_1_0_client_is_not_chunked_and_ends_with_the_connection() -> None:
    """RFC 9112 (6.1): no Transfer-Encoding to a request that is not HTTP/1.1. A stream answered to HTTP/1.0 (curl
    -0, ab, a proxy's hop) was written chunked, and such a client read the chunk sizes among the events (found by
    review). Now its events go as they come, and the connection's close ends it; HTTP/1.1's is still chunked."""
    connection = Connection()
    await connection.send(b"GET /stream HTTP/1.0\r\nhost: g\r\n\r\n")
    await connection.answers(1)
    for _ in range(100):
        if connection.transport.closed:
            break
        await asyncio.sleep(0.01)
    head, _, body = connection.written.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower() and b"\r\nconnection: close" in head.lower(), head
    assert body == b"data: one\n\ndata: two\n\n" and connection.transport.closed
    connection.close()
    kept = Connection()
    await kept.send(b"GET /stream HTTP/1.1\r\nhost: g\r\n\r\n", b"HEAD /whole HTTP/1.0\r\nhost: g\r\n\r\n")
    await kept.answers(2)
    assert b"\r\ntransfer-encoding: chunked\r\n" in kept.written and b"\r\n0\r\n\r\n" in kept.written
    kept.close()


@pytest.mark.parametrize(
    ("hosts", "said"), [(b"", "none"), (b"host: a\r\nhost: b\r\n", "2")], ids=["no-host", "two-hosts"]
)
async def test_an_http_1_1_request_without_one_host_is_a_400_in_the_error_shape(hosts: bytes, said: str) -> None:
    """RFC 9112 (3.2): an HTTP/1.1 request that lacks Host, or has two, is a 400. It was served (found by review).
    Pipelined behind a request, it is answered after it; an HTTP/1.0 request needs none."""
    connection = Connection()
    await connection.send(b"GET /whole HTTP/1.1\r\nhost: g\r\n\r\nGET /whole HTTP/1.1\r\n" + hosts + b"\r\n")
    assert await connection.answers(2) == [b"200", b"400"]
    refused = connection.written[connection.written.index(b"HTTP/1.1 400") :]
    error = error_of(refused)["error"]
    assert (error["code"], error["message"]) == (
        "invalid_request",
        f"an HTTP/1.1 request carries one Host header; this one has {said}",
    )
    assert b"\r\nx-request-id: req_" in refused and connection.transport.closed
    connection.close()
    old = Connection()
    await old.send(b"GET /whole HTTP/1.0\r\n\r\n")
    assert await old.answers(1) == [b"200"]
    old.close()


async def test_a_request_line_of_http_2_0_is_a_505_in_the_error_shape(bounds: None) -> None:
    """`GET /whole HTTP/2.0` in HTTP/1's syntax (no HTTP/2: its requests are binary frames) was served as HTTP/1.0,
    200: httptools takes `2.0` (and refuses every other version past 1.1). RFC 9110 (15.6.6): a 505, saying which
    versions are served; pipelined behind a request, it is answered after it."""
    connection = Connection()
    await connection.send(b"GET /whole HTTP/1.1\r\nhost: g\r\n\r\nPOST /v1/messages HTTP/2.0\r\nhost: g\r\n\r\n")
    assert await connection.answers(2) == [b"200", b"505"] and connection.transport.closed
    refused = connection.written[connection.written.index(b"HTTP/1.1 505") :]
    said = error_of(refused)  # (on /v1/messages: Anthropic's shape)
    assert said["type"] == "error" and said["error"]["type"] == "invalid_request_error"
    assert said["error"]["message"].startswith("HTTP/2.0 is not served: gateway serve speaks HTTP/1.1 and 1.0")
    assert b"\r\nx-request-id: req_" in refused and READS == []
    connection.close()


@pytest.mark.parametrize("version", [b"3.0", b"2.1", b"9.9", b"0.9", b"0.8"])
async def test_a_request_line_of_a_major_version_other_than_1_is_a_505(bounds: None, version: bytes) -> None:
    """`HTTP/3.0` (or `HTTP/2.1`, `HTTP/0.8`) in a request line was the parser's 400, "the request's HTTP head is
    malformed", where `HTTP/2.0` was a 505: each is a well-formed version (RFC 9112 2.3) of a major version the gateway
    does not speak, RFC 9110 (15.6.6)'s 505, in the error shape of the API it calls."""
    connection = Connection()
    await connection.send(b"POST /v1/messages HTTP/" + version + b"\r\nhost: g\r\ncontent-length: 2\r\n\r\nok")
    assert await connection.answers(1) == [b"505"] and connection.transport.closed, connection.written
    said = error_of(connection.written)
    assert said["error"]["type"] == "invalid_request_error", said
    assert said["error"]["message"].startswith(f"HTTP/{version.decode()} is not served: gateway serve speaks HTTP/1.1")
    assert READS == []
    connection.close()


@pytest.mark.parametrize("version", [b"1.2", b"1.9"])
async def test_a_request_line_of_a_later_minor_version_is_served_as_http_1_1(bounds: None, version: bytes) -> None:
    """`HTTP/1.2` was the parser's 400: RFC 9110 (2.5) has a recipient process a message of a minor version past the
    ones it speaks as the highest of that major version it does. Served as HTTP/1.1: kept alive, a stream chunked,
    a Host required."""
    connection = Connection()
    line = b"GET /stream HTTP/" + version + b"\r\nhost: g\r\n\r\n"
    await connection.send(line, b"GET /whole HTTP/" + version + b"\r\nhost: g\r\n\r\n")
    assert await connection.answers(2) == [b"200", b"200"] and not connection.transport.closed, connection.written
    assert b"transfer-encoding: chunked" in connection.written and connection.written.endswith(BODY)
    await connection.send(b"GET /whole HTTP/" + version + b"\r\n\r\n")
    assert await connection.answers(3) == [b"200", b"200", b"400"] and connection.transport.closed
    assert "one Host header" in error_of(connection.written.rpartition(b"HTTP/1.1 400")[2])["error"]["message"]
    connection.close()


@pytest.mark.parametrize("version", [b"HTTP/1.10", b"HTTP/11.1", b"HTTP/1", b"HTTP/x.y", b"http/1.1"])
async def test_a_malformed_version_is_a_400_in_the_error_shape(bounds: None, version: bytes) -> None:
    """A version that is not `HTTP/` and a digit, a dot and a digit (RFC 9112 2.3) is malformed: the parser's 400,
    not a 505 (it names no version to refuse)."""
    connection = Connection()
    await connection.send(b"GET /whole " + version + b"\r\nhost: g\r\n\r\n")
    assert await connection.answers(1) == [b"400"] and connection.transport.closed, connection.written
    assert error_of(connection.written)["error"]["message"].startswith("the request's HTTP head is malformed")
    connection.close()


@pytest.mark.parametrize(
    "coding",
    [b"transfer-encoding: gzip, chunked\r\n", b"transfer-encoding: gzip\r\ntransfer-encoding: chunked\r\n"],
    ids=["one-line", "two-lines"],
)
async def test_a_transfer_coding_other_than_chunked_is_a_400_in_the_error_shape(bounds: None, coding: bytes) -> None:
    """httptools frames a `Transfer-Encoding: gzip, chunked` body by its chunks and handed the app its bytes still
    gzipped; a plain body so marked was served as if the coding were not there (found by review). The gateway decodes
    no transfer coding but chunked: such a request is refused, none of its body read, in its API's shape."""
    connection = Connection()
    head = b"POST /v1/messages HTTP/1.1\r\nhost: g\r\n" + coding + b"\r\n"
    await connection.send(head + chunked(b'{"a": 1}'))
    assert await connection.answers(1) == [b"400"] and connection.transport.closed
    said = error_of(connection.written)
    assert said["type"] == "error" and said["error"]["type"] == "invalid_request_error"
    assert "transfer coding other than chunked" in said["error"]["message"] and READS == []
    connection.close()
    plain = Connection()
    await plain.send(b"POST /echo HTTP/1.1\r\nhost: g\r\ntransfer-encoding: Chunked\r\n\r\n" + chunked(b"x" * 5))
    assert await plain.answers(1) == [b"200"] and plain.written.endswith(b"\r\n\r\n5")
    plain.close()


async def test_a_connection_that_sends_nothing_is_closed_at_the_heads_bound(bounds: None) -> None:
    """uvicorn's keep-alive timer starts after a first answer: a connection that sent nothing was held for ever, and
    thousands of them took the process's every file (found by review). It is closed at `timeouts.request_head`,
    unanswered (no request to answer)."""
    connection = Connection()
    await asyncio.sleep(0.1)
    assert not connection.transport.closed
    await asyncio.sleep(0.2)
    assert connection.transport.closed and connection.written == b""
    connection.close()


@pytest.mark.parametrize(
    ("line", "anthropic"),
    [(b"POST /v1/chat/completions", False), (b"POST /v1/messages", True)],
    ids=["openai", "anthropic"],
)
async def test_a_head_not_whole_within_its_bound_is_408_in_its_apis_shape(
    bounds: None, line: bytes, anthropic: bool
) -> None:
    """Slowloris: a head dripped a byte at a time was never ended (the 431's bound was hours away at that pace). Past
    `timeouts.request_head` it is answered 408 `request_timeout` and the connection closed."""
    connection = Connection()
    for byte in line + b" HTTP/1.1\r\nhost: g\r\nx-slow: aaaa":
        await connection.send(bytes([byte]))
        await asyncio.sleep(0.005)
        if connection.transport.closed:
            break
    for _ in range(100):
        if connection.transport.closed:
            break
        await asyncio.sleep(0.01)
    assert connection.written.startswith(b"HTTP/1.1 408 Request Timeout\r\n") and connection.transport.closed
    said = error_of(connection.written)
    if anthropic:
        assert said["type"] == "error" and said["error"]["type"] == "timeout_error"
    else:
        assert said["error"]["code"] == "request_timeout"
        assert said["error"]["message"].endswith("(gateway.timeouts.request_head)")
    connection.close()


async def test_empty_lines_alone_are_a_head_begun_at_the_heads_bound(bounds: None) -> None:
    """Empty lines before a request line are taken (RFC 9112 2.2) and begin no request for the parser: at the head's
    bound they are answered as a head begun, in OpenAI's shape (nothing tells another)."""
    connection = Connection()
    await connection.send(b"\r\n")
    assert await connection.answers(1, within_s=1) == [b"408"] and connection.transport.closed
    assert error_of(connection.written)["error"]["code"] == "request_timeout"
    connection.close()


async def test_the_heads_bound_runs_again_from_each_answer_and_not_during_one(bounds: None) -> None:
    """After an answer the next head has the same bound (uvicorn's keep-alive timer stops at the next byte, and the
    head after it was never ended); an answer that runs longer than it (a stream) is not cut."""
    connection = Connection()
    await connection.send(b"GET /slow HTTP/1.1\r\nhost: g\r\n\r\n")
    assert await connection.answers(1) == [b"200"]
    for _ in range(100):  # the stream runs 0.4 s, twice the head's bound
        if connection.written.endswith(b"0\r\n\r\n"):
            break
        await asyncio.sleep(0.01)
    assert connection.written.count(b"data: on") == 4 and not connection.transport.closed
    await connection.send(b"GET /whole HTTP/1.1\r\nhost: g\r\n")
    await asyncio.sleep(0.1)
    assert not connection.transport.closed
    await asyncio.sleep(0.2)
    assert connection.transport.closed and connection.statuses() == [b"200", b"408"]
    connection.close()


async def test_a_body_whole_in_its_heads_read_costs_no_timer(bounds: None) -> None:
    """The hot path: the head's timer is cancelled as the head is whole, and a body read with it arms none; one
    timer a request (the next head's, from the answer's end) is all the bounds cost."""
    connection = Connection()
    protocol = connection.protocol
    protocol.data_received(b"POST /echo HTTP/1.1\r\nhost: g\r\ncontent-length: 2\r\n\r\nok")
    assert protocol.head_timer is None and protocol.body_timer is None
    assert await connection.answers(1) == [b"200"]
    assert protocol.head_timer is not None and protocol.body_timer is None
    connection.close()


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [(b"", b"408", "request_timeout"), (b"x-gateway-deadline-ms: 100\r\n", b"504", "upstream_timeout")],
    ids=["bound", "deadline"],
)
async def test_a_body_shorter_than_its_length_is_answered_by_its_bound(
    bounds: None, headers: bytes, status: bytes, code: str
) -> None:
    """A body 20 bytes short of its `content-length` was read for ever: no answer, no close, its bytes held (found by
    review). Past `timeouts.request_body` (or the request's deadline, if sooner: its 504) the protocol answers for the
    app, with the request id the app gave it, closes the connection, and ends the app's read, giving it the error to
    observe the request with (`BODY_LATE`)."""
    connection = Connection()
    head = b"POST /echo HTTP/1.1\r\nhost: g\r\n%scontent-length: 50\r\n\r\n" % headers
    await connection.send(head + b"x" * 30)
    await asyncio.sleep(0)  # (the app's task begins)
    connection.protocol.cycle.scope["state"]["request_id"] = "req_the_apps"
    await asyncio.sleep(0.05)
    assert connection.written == b"" and not connection.transport.closed
    assert await connection.answers(1, within_s=1) == [status]
    head_out = connection.written.partition(b"\r\n\r\n")[0]
    assert b"\r\nx-request-id: req_the_apps\r\n" in head_out and head_out.endswith(b"\r\nconnection: close")
    assert error_of(connection.written)["error"]["code"] == code and connection.transport.closed
    assert [message["type"] for message in READS] == ["http.request", "http.disconnect"]
    assert connection.protocol.cycle.scope["state"][BODY_LATE].code == code
    connection.close()


async def test_a_body_that_comes_whole_in_several_reads_within_its_bound_is_answered(bounds: None) -> None:
    connection = Connection()
    await connection.send(b"POST /echo HTTP/1.1\r\nhost: g\r\ncontent-length: 50\r\n\r\n" + b"x" * 30)
    assert connection.protocol.body_timer is not None
    await asyncio.sleep(0.1)
    await connection.send(b"y" * 20)
    assert await connection.answers(1) == [b"200"] and connection.written.endswith(b"\r\n\r\n50")
    await asyncio.sleep(0.3)  # (past the body's bound from its head: the answer's end disarmed it)
    assert connection.statuses() == [b"200"]
    connection.close()


async def test_a_request_on_a_connection_past_the_limit_is_503_server_busy_in_the_error_shape(bounds: None) -> None:
    """No limit on connections: past the process's files every client was refused, `/health` too (found by review).
    uvicorn's `limit_concurrency` answers in plain text, counting the refused connection among the limit's; here a
    request on a connection past `limits.connections` (two) is answered 503 `server_busy`, `retry-after: 1`."""
    shared = ServerState()
    first, second = Connection(shared), Connection(shared)
    await second.send(b"GET /whole HTTP/1.1\r\nhost: g\r\n\r\n")
    assert await second.answers(1) == [b"200"]
    third = Connection(shared)
    await third.send(b"GET /whole HTTP/1.1\r\nhost: g\r\n\r\n")
    assert await third.answers(1) == [b"503"] and third.transport.closed
    head, _, _ = third.written.partition(b"\r\n\r\n")
    assert b"\r\nretry-after: 1\r\n" in head and b"\r\nx-should-retry: true\r\n" in head
    assert error_of(third.written)["error"]["code"] == "server_busy"
    third.close()
    # On Anthropic's API the gateway's own overload is its `overloaded_error` (the one 503 it is, with the breakers
    # an overload opened: `Router.shed`).
    claude = Connection(shared)
    await claude.send(b"POST /v1/messages HTTP/1.1\r\nhost: g\r\ncontent-length: 2\r\n\r\n{}")
    assert await claude.answers(1) == [b"503"]
    assert error_of(claude.written)["error"]["type"] == "overloaded_error"
    claude.close()
    await first.send(b"GET /whole HTTP/1.1\r\nhost: g\r\n\r\n")
    assert await first.answers(1) == [b"200"]
    first.close()
    second.close()


async def test_one_connection_past_the_limit_leaves_the_first_ones_served(bounds: None) -> None:
    """Each request was compared with every open connection, its own among them: with one connection past the
    limit (two), every connection's next request was refused 503, none served (found by review). The first two
    are served; the one past them is refused until a place frees, then served on a new connection."""
    shared = ServerState()
    first, second, third = Connection(shared), Connection(shared), Connection(shared)
    for connection, expected in ((first, b"200"), (second, b"200"), (third, b"503")):
        await connection.send(b"GET /whole HTTP/1.1\r\nhost: g\r\n\r\n")
        assert await connection.answers(1) == [expected]
    await first.send(b"GET /whole HTTP/1.1\r\nhost: g\r\n\r\n")
    assert await first.answers(2) == [b"200", b"200"]  # (kept alive: its second request served too)
    first.close()
    fourth = Connection(shared)
    await fourth.send(b"GET /whole HTTP/1.1\r\nhost: g\r\n\r\n")
    assert await fourth.answers(1) == [b"200"]
    second.close()
    fourth.close()
    third.close()


UPGRADE = b"connection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"


async def test_a_post_offering_an_h2c_upgrade_is_served_with_its_body(bounds: None) -> None:
    """`curl --http2` to an `http://` URL offers `Upgrade: h2c`: httptools stops parsing at the head, and the app was
    handed an empty body (a POST answered 400 "not valid JSON"; found by review). The offer is ignored (RFC 9110,
    7.8): the body is read by its length, and the connection closes after the answer (the parser reads no more)."""
    connection = Connection()
    await connection.send(b"POST /echo HTTP/1.1\r\nhost: g\r\n%scontent-length: 50\r\n\r\n" % UPGRADE + b"x" * 50)
    assert await connection.answers(1) == [b"200"] and connection.written.endswith(b"\r\n\r\n50")
    assert b"\r\nconnection: close\r\n" in connection.written and connection.transport.closed
    connection.close()


async def test_an_upgrade_offers_body_in_later_reads_is_read_whole_and_bytes_past_it_dropped(bounds: None) -> None:
    connection = Connection()
    await connection.send(b"POST /echo HTTP/1.1\r\nhost: g\r\n%scontent-length: 50\r\n\r\n" % UPGRADE + b"x" * 10)
    assert connection.protocol.body_timer is not None
    await connection.send(b"y" * 25, b"z" * 15 + b"GET /whole HTTP/1.1\r\nhost: g\r\n\r\n")
    assert await connection.answers(1) == [b"200"] and connection.written.endswith(b"\r\n\r\n50")
    assert sum(len(message.get("body", b"")) for message in READS) == 50
    await asyncio.sleep(0.4)  # (past the body's bound: its end disarmed it)
    assert connection.statuses() == [b"200"] and connection.transport.closed
    connection.close()


async def test_an_upgrade_offers_body_short_of_its_length_is_answered_by_its_bound(bounds: None) -> None:
    connection = Connection()
    await connection.send(b"POST /echo HTTP/1.1\r\nhost: g\r\n%scontent-length: 50\r\n\r\n" % UPGRADE + b"x" * 30)
    assert await connection.answers(1, within_s=1) == [b"408"]
    assert error_of(connection.written)["error"]["code"] == "request_timeout" and connection.transport.closed
    connection.close()


async def test_a_get_offering_an_upgrade_is_answered(bounds: None) -> None:
    connection = Connection()
    await connection.send(b"GET /whole HTTP/1.1\r\nhost: g\r\n%s\r\n" % UPGRADE)
    assert await connection.answers(1) == [b"200"]
    connection.close()


WEBSOCKET = b"connection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: %s\r\n"


@pytest.mark.parametrize("key", [b"dGhlIHNhbXBsZSBub25jZQ==", b"x"])
async def test_a_websocket_upgrade_is_served_in_http_and_gives_its_place_back(bounds: None, key: bytes) -> None:
    """uvicorn (its `ws` protocol configured, as its default `auto` is with `websockets` installed) handed a
    WebSocket upgrade's transport to its WebSocket protocol: the answer was its plain-text 400 or an empty 403, and
    the connection's place among `limits.connections` was never given back, so three upgrades under a limit of two
    left every later connection 503 `server_busy` (found by review). The offer is ignored as an h2c one is: the
    request is answered in HTTP/1.1, the connection closed after it, and its place freed."""
    shared = ServerState()
    for _ in range(3):
        connection = Connection(shared)
        await connection.send(b"GET /whole HTTP/1.1\r\nhost: g\r\n%s\r\n" % (WEBSOCKET % key))
        assert await connection.answers(1) == [b"200"] and connection.written.endswith(BODY)
        assert connection.transport.protocol is None and connection.transport.closed
        connection.close()
    later = Connection(shared)
    await later.send(b"GET /whole HTTP/1.1\r\nhost: g\r\n\r\n")
    assert await later.answers(1) == [b"200"]
    later.close()


async def test_an_upgrade_offer_with_a_chunked_body_is_a_400_in_the_error_shape(bounds: None) -> None:
    connection = Connection()
    head = b"POST /v1/messages HTTP/1.1\r\nhost: g\r\n%stransfer-encoding: chunked\r\n\r\n" % UPGRADE
    await connection.send(head + chunked(b"x" * 20))
    assert await connection.answers(1) == [b"400"] and connection.transport.closed
    said = error_of(connection.written)
    assert said["type"] == "error" and said["error"]["type"] == "invalid_request_error"
    assert "Upgrade" in said["error"]["message"] and READS == []
    connection.close()


async def test_an_upgrade_offer_pipelined_behind_a_stream_is_timed_only_once_that_is_answered(bounds: None) -> None:
    """An upgrade offer whose body is not whole yet, pipelined in the same read behind a 0.4 s stream: its body's
    bound (0.3 s) ran at once, and its 408 was written in the middle of the stream's answer, the connection closed
    under it (found by review). Timed from the stream's end, as a plain pipelined body is, it is answered 408 then."""
    connection = Connection()
    partial = b"POST /echo HTTP/1.1\r\nhost: g\r\n%scontent-length: 50\r\n\r\n" % UPGRADE + b"x" * 10
    await connection.send(b"GET /slow HTTP/1.1\r\nhost: g\r\n\r\n" + partial)
    assert await connection.answers(2, within_s=2) == [b"200", b"408"]
    written = connection.written
    assert written.index(b"HTTP/1.1 408") > written.index(b"0\r\n\r\n") and written.count(b"data: on") == 4
    connection.close()


async def test_an_upgrade_offer_pipelined_behind_an_answer_with_its_body_short_is_still_answered_by_its_bound(
    bounds: None,
) -> None:
    """The same behind a quick answer: its end armed no timer for the upgrade's body (the parser takes an upgrade's
    message as whole at its head), and the connection was held open unanswered for good (found by review)."""
    connection = Connection()
    partial = b"POST /echo HTTP/1.1\r\nhost: g\r\n%scontent-length: 50\r\n\r\n" % UPGRADE + b"x" * 10
    await connection.send(b"GET /whole HTTP/1.1\r\nhost: g\r\n\r\n" + partial)
    assert await connection.answers(2, within_s=2) == [b"200", b"408"] and connection.transport.closed
    connection.close()
