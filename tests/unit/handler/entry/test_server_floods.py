"""What a client with no key could hold a worker with, past the bounds on a request's head (found by review,
edgerev37): one read of pipelined requests (256 KiB of `GET /health` is some 7,700 of them) was parsed and queued
whole, held until the client read the answers before each; a request answered before its body was read (no key's 401,
a 405) kept its connection reading that body, a callback a chunk, for `gateway.timeouts.request_head`; and a chunked
body's trailer fields were gathered without the head's bound, and added to the request's headers."""

from __future__ import annotations

import asyncio

import pytest

from handler.config import GatewaySettings
from handler.entry import server
from tests.unit.handler.entry.test_server import READS, Connection

HEALTH = b"GET /whole HTTP/1.1\r\nhost: x\r\n\r\n"


async def test_one_read_of_pipelined_requests_queues_a_bounded_number_of_them() -> None:
    connection = Connection()
    connection.protocol.data_received(HEALTH * 2000)  # 66 KB: one read
    queued = len(connection.protocol.pipeline)
    connection.close()
    # A handful may wait behind the running request (a client's pipeline of a few); not every head of the read.
    assert queued <= 64, f"{queued} requests of one read were parsed and queued behind the first"


async def test_a_connection_whose_request_was_answered_before_its_body_stops_reading_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Answered before its body was read (a 405 here, a keyless 401 in service), a connection read on whatever body
    its client sent, a parser callback a chunk, for `request_head` after the answer. Now the answer says `connection:
    close` and its end is sent (a FIN), what the client still sends is dropped unparsed, and the connection closes
    once `LINGER_S` has passed (a lingering close: closed at once with a body unread, the kernel resets it)."""
    settings = GatewaySettings.model_validate({"timeouts": {"request_head": 5, "request_body": 5}})
    monkeypatch.setattr(server, "served_settings", lambda: settings)
    monkeypatch.setattr(server, "LINGER_S", 0.2)
    parsed: list[int] = []
    on_body = server.BoundedHttpToolsProtocol.on_body
    monkeypatch.setattr(
        server.BoundedHttpToolsProtocol, "on_body", lambda self, body: (parsed.append(len(body)), on_body(self, body))
    )
    READS.clear()
    connection = Connection()
    # (`/whole` takes GET: Starlette answers this POST 405 without reading its body, as the gateway answers a
    # keyless one 401.)
    await connection.send(b"POST /whole HTTP/1.1\r\nhost: g\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n")
    assert await connection.answers(1) == [b"405"]
    head = connection.written.partition(b"\r\n\r\n")[0].lower()
    assert b"connection: close" in head, head
    assert connection.transport.eof and not connection.transport.closed  # (its end sent: the client reads it whole)
    before = len(parsed)
    for _ in range(50):  # the client goes on sending its body, a byte a chunk
        await connection.send(b"1\r\na\r\n" * 1000)
    assert len(parsed) == before  # dropped, not parsed
    await asyncio.sleep(0.3)
    closed = connection.transport.closed
    connection.close()
    assert closed, "the connection still reads the body of a request already answered"


async def test_a_chunked_bodys_trailer_past_the_header_bound_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = GatewaySettings.model_validate(
        {"timeouts": {"request_head": 5, "request_body": 5}, "limits": {"request_header_bytes": 8192}}
    )
    monkeypatch.setattr(server, "served_settings", lambda: settings)
    READS.clear()
    connection = Connection()
    head = b"POST /echo HTTP/1.1\r\nhost: g\r\ntransfer-encoding: chunked\r\n\r\n"
    await connection.send(head + b"2\r\n{}\r\n0\r\nx-trailer: ")
    piece = b"a" * 65536
    for _ in range(64):  # 4 MiB of one trailer field's value: 512 times the bound on the head
        if connection.transport.closed:
            break
        await connection.send(piece)
    await connection.send(b"\r\n\r\n")
    await asyncio.sleep(0.05)
    appended = [len(value) for name, value in connection.protocol.headers if name == b"x-trailer"]
    closed, statuses = connection.transport.closed, connection.statuses()
    connection.close()
    # The bound the head is held to holds for the trailers too: the connection is refused (431, or closed) once they
    # pass it, and no trailer field of megabytes is gathered nor appended to the request's headers.
    assert closed, f"4 MiB of one trailer were read and gathered (statuses {statuses}, appended: {appended} bytes)"
    assert not appended or max(appended) <= 8192, appended


@pytest.fixture
def bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = GatewaySettings.model_validate(
        {"timeouts": {"request_head": 5, "request_body": 5}, "limits": {"request_header_bytes": 8192}}
    )
    monkeypatch.setattr(server, "served_settings", lambda: settings)
    READS.clear()


async def test_a_pipelined_requests_trailer_refusal_follows_the_answer_before_it(bounded: None) -> None:
    """The 431 of a request pipelined behind another, its trailers past the bound, comes after that one's answer:
    written at once, it took its place, and the running request was cut and charged (found by review, mergerev37)."""
    connection = Connection()
    first = b"GET /slow HTTP/1.1\r\nhost: g\r\n\r\n"  # a stream of 0.4 s, answered first
    second = b"POST /echo HTTP/1.1\r\nhost: g\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nx-trailer: "
    await connection.send(first + second + b"a" * 20_000)  # one read: its trailer already past the 8 KiB bound
    statuses = await connection.answers(2, within_s=2)
    written = connection.written
    connection.close()
    assert statuses[:1] == [b"200"], (
        f"the first request's answer was replaced by the pipelined one's refusal: statuses {statuses}, "
        f"written {written[:200]!r}"
    )
    assert written.count(b"data: on") == 4, written[:400]


# Review mergerevb37: the lingering close is decided on `self.cycle`, the last request parsed, not the one whose
# answer is complete.
@pytest.fixture
def lingering(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = GatewaySettings.model_validate({"timeouts": {"request_head": 5, "request_body": 5}})
    monkeypatch.setattr(server, "served_settings", lambda: settings)
    monkeypatch.setattr(server, "LINGER_S", 0.3)


async def test_an_answer_saying_connection_close_ends_the_connection_with_a_request_pipelined_behind_it(
    lingering: None,
) -> None:
    """A request answered before its body was whole says `connection: close` (`BoundedCycle`), and its connection is to
    end after it (RFC 9112 9.6: no further request processed). Where its answer's write waited (the client reading an
    earlier answer slowly) while the rest of its body and a pipelined request came, `on_response_complete` looked at
    `self.cycle` (the pipelined request's, which does not linger), so the connection neither ended nor lingered:
    the pipelined request was answered, on a connection whose last answer said it was closing."""
    connection = Connection()
    connection.protocol.pause_writing()  # (the client is slow to read an earlier answer: the next write waits)
    # `/whole` takes GET: Starlette answers this POST 405 without reading its body (as a keyless one is 401).
    await connection.send(b"POST /whole HTTP/1.1\r\nhost: g\r\ncontent-length: 10\r\n\r\n12345")
    await asyncio.sleep(0.05)  # the app's answer begins, its write waiting
    await connection.send(b"67890GET /whole HTTP/1.1\r\nhost: g\r\n\r\n")  # its body's rest, and a request behind it
    connection.protocol.resume_writing()
    statuses = await connection.answers(2, within_s=1)
    await asyncio.sleep(0.5)  # past the linger
    written, eof, closed = connection.written, connection.transport.eof, connection.transport.closed
    connection.close()
    head = written.partition(b"\r\n\r\n")[0].lower()
    assert statuses[:1] == [b"405"] and b"connection: close" in head, written[:300]
    assert statuses == [b"405"] and (eof or closed), (
        f"after an answer saying `connection: close`: statuses {statuses}, end sent {eof}, closed {closed}"
    )


async def test_a_chunked_bodys_trailer_is_no_header_of_the_request(bounded: None) -> None:
    """A trailer within the bound is read and dropped: uvicorn appended it to `scope["headers"]`, where the request's
    controls, read again once its body was read, saw it (RFC 9110 6.5.1)."""
    connection = Connection()
    await connection.send(
        b"POST /echo HTTP/1.1\r\nhost: g\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nx-trailer: 1\r\n\r\n"
    )
    assert await connection.answers(1) == [b"200"]
    names = [name for name, _ in connection.protocol.headers]
    connection.close()
    assert b"transfer-encoding" in names and b"x-trailer" not in names, names
