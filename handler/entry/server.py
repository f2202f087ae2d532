"""`gateway serve`'s HTTP protocol: uvicorn's httptools protocol with bounds on a request's head, its body's time, and
what a client speaking HTTP/1.0 or no Host is answered.

uvicorn's httptools protocol takes request headers of any size, and httptools gathers a header (and
the target) by appending each piece it receives, so one 60 MB header kept the event loop busy for
seconds: every other request, `/health` included, waited. Here the bytes of a request's line and headers
are counted as they arrive (a read that also carries the body counts only as far as the head's end);
beyond `gateway.limits.request_header_bytes` the request is answered `431 headers_too_large` (in the error
shape of the API it calls: Anthropic's on `/v1/messages`) and its connection closed, before the parser is fed more.

Nor does uvicorn bound a head's or a body's time: its keep-alive timer starts only after a first answer, and stops
at the next byte, so a connection that sends nothing, or a head a byte a second, would be held for ever, and so would
a body that stops short of its `content-length` (its bytes so far, up to `max_body_bytes`, with it). A head must be
whole within `gateway.timeouts.request_head` of its connection's open or of the answer before it (else `408
request_timeout`, or, where no byte of it came, the connection closed unanswered), and a body within
`gateway.timeouts.request_body` of its head, or the request's deadline (`x-gateway-deadline-ms`) if sooner (408, or
the deadline's `504 upstream_timeout`; the app, whose read then ends, observes it as answered: `BODY_LATE`). Nor
does it bound the number of connections: past the process's open files every client would be refused, `/health`
too, and the answers going could open no upstream connection. A request on a connection past
`gateway.limits.connections` (the role of uvicorn's `limit_concurrency`, whose 503 is plain text and counts the
refused connection among the limit's) is
answered `503 server_busy` in the error shape. A timer a request is what this costs: the head's, armed as an answer
ends and cancelled as the next head is whole (a body is timed only where a read ends before it does).

RFC 9112's rules uvicorn does not keep: an HTTP/1.1 request without one Host is a 400 (3.2), so is a body of a
transfer coding other than chunked, which the gateway does not decode (6.1; httptools framed `gzip, chunked` by its
chunks and handed the app the bytes still coded), and an answer of no length to an HTTP/1.0 request is not chunked
(6.1: its end is the connection's close, `UnchunkedCycle`). A request line's version is read as RFC 9112 (2.3) writes
one, `HTTP/` and a digit, a dot and a digit (else the parser's 400): one of a major version other than 1 (`HTTP/2.0`,
`HTTP/3.0`, `HTTP/0.9`) is a 505 (RFC 9110 15.6.6), and a minor version past 1 (`HTTP/1.2`) is served as HTTP/1.1, the
highest of its major version the gateway speaks (RFC 9110 2.5). (httptools takes 0.9, 1.0, 1.1 and 2.0 alone, any
other as malformed, unless told to be lenient with the version: so told, it hands every `HTTP/d.d` to
`on_headers_complete`, which answers it so.) And a request offering a
protocol upgrade (`curl --http2` to an `http://` URL offers `Upgrade: h2c`; the gateway speaks no WebSocket either) is
served in HTTP/1.1, its offer ignored, as RFC 9110 (7.8) lets a server: httptools stops parsing at such a head, and
uvicorn handed the app an empty body (a POST answered 400 "not valid JSON"). Its body is read here by its
`Content-Length`, and the connection closed after the answer (the parser reads nothing after the head).

As the server begins to stop, the protocol tells the served gateway (`server_stopping`), so that a request uvicorn
cuts once `--shutdown-grace` has run out is answered the gateway's 503, not a client's 499 or uvicorn's 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import struct
import sys
import time
from typing import Any, NoReturn

from uvicorn._types import ASGISendEvent
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from handler.api.app import BODY_LATE, answered_before_the_app, anthropic_path, arrival_deadline_s
from handler.config import GatewaySettings
from handler.errors import (
    GatewayError,
    HeadersTooLargeError,
    InvalidRequestError,
    OverloadedError,
    RequestTimeoutError,
    UpstreamTimeoutError,
    VersionNotSupportedError,
)


@functools.cache
def served_settings() -> GatewaySettings:
    """The bounds' settings from the served gateway's config (`handler.entry.asgi`, the app uvicorn loaded), else the
    defaults."""
    served = sys.modules.get("handler.entry.asgi")
    return served.gateway.config.gateway if served is not None else GatewaySettings()


def server_stopping() -> None:
    """Tell the served gateway (`handler.entry.asgi`) that the server has begun to stop: a request uvicorn cuts once
    `--shutdown-grace` has run out is then answered the gateway's 503 `server_shutting_down` (a stream: its API's
    error event), where it got uvicorn's plain-text 500, or a stream cut with no word."""
    served = sys.modules.get("handler.entry.asgi")
    if served is not None:
        served.gateway.stopping = True


def too_large_answer(limit: int, anthropic: bool = False) -> bytes:
    """The 431, written before the app sees the request."""
    error = HeadersTooLargeError(f"the request's line and headers exceed {limit} bytes")
    return refusal(error, b"431 Request Header Fields Too Large", anthropic)


def refusal(error: GatewayError, status_line: bytes, anthropic: bool, request_id: str | None = None) -> bytes:
    """An answer written before the app sees the request (`answered_before_the_app`), or without it (`request_id`:
    the app's, for a request it began), and the connection closed."""
    _, headers, body = answered_before_the_app(error, anthropic, request_id)
    head = b"".join(b"%s: %s\r\n" % (name.encode(), value.encode()) for name, value in headers)
    return b"HTTP/1.1 %s\r\n%scontent-length: %d\r\nconnection: close\r\n\r\n%s" % (status_line, head, len(body), body)


def anthropic_head(url: bytes, headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a request's head, as far as it was parsed, is an Anthropic caller's (`handler.api.app.
    anthropic_path`)."""
    if url.startswith((b"http://", b"https://")):  # the absolute form: the path after the authority
        url = url[url.find(b"/", url.find(b"//") + 2) :] if url.count(b"/") > 2 else b"/"
    return anthropic_path(url.decode("latin-1"), any(name == b"anthropic-version" for name, _ in headers))


# The most requests that may wait, pipelined on one connection, behind the one being answered (`on_headers_complete`).
MOST_PIPELINED = 32
# How long a connection whose request was answered before its body was read goes on reading (and dropping) what its
# client sends, after the answer's end (`BoundedHttpToolsProtocol._linger`).
LINGER_S = 2.0
NO_LINGER = struct.pack("ii", 1, 0)  # (SO_LINGER on, 0 s: a close resets the connection, its unsent bytes dropped)
QUIET = logging.Logger("gateway.refused")  # (a connection refused so: uvicorn's word on it would mislead)
QUIET.disabled = True


def head_end(piece: bytes, start: int) -> int:
    """Where the head that begins at `start` of `piece` ends (after its empty line), or -1: the first CRLF CRLF after
    the empty lines a request may be preceded by (the parser's leniencies are off: a head has no other)."""
    while piece[start : start + 1] in (b"\r", b"\n"):
        start += 1
    end = piece.find(b"\r\n\r\n", start)
    return end if end < 0 else end + 4


def chunked_end(piece: bytes, at: int) -> tuple[bool, int]:
    """Where a chunked body read from `at` of `piece` (a chunk's size line; past the piece's end, a chunk's data going
    on into the next piece) ends, as the parser read it: `(True, the offset after its last chunk and trailers)`; or, not
    ending in `piece`, `(False, where it goes on)`: the first line not whole in the piece (the last chunk's, where its
    trailers are not), or, past the piece's end, the offset at which the next size line begins (-1: a size line the
    gateway cannot read, which the parser then took as it cannot; not followed)."""
    while True:
        line = piece.find(b"\r\n", at)
        if line < 0:
            return False, at
        try:
            size = int(piece[at:line].partition(b";")[0], 16)  # (the parser took it: hex digits, maybe spaces)
        except ValueError:
            return False, -1
        last, at = at, line + 2
        if size == 0:
            while (line := piece.find(b"\r\n", at)) > at:  # trailer fields, to the empty line
                at = line + 2
            return (True, at + 2) if line == at else (False, last)
        at += size + 2


def last_chunk(line: bytes) -> bool:
    """Whether `line` (the start of a chunked body's unfinished line) is its last chunk's size line, with the trailers
    after it."""
    try:
        return int(line.split(b"\r\n", 1)[0].partition(b";")[0], 16) == 0
    except ValueError:
        return False


def framing(headers: list[tuple[bytes, bytes]]) -> tuple[int, bool]:
    """A request's body framing as its headers give it: its `Content-Length` (as the parser took it: digits; 0 where
    none) and whether it is chunked."""
    length, chunked = 0, False
    for name, value in headers:
        if name == b"content-length" and value.strip().isdigit():
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
    return length, chunked


class BoundedCycle(RequestResponseCycle):
    """A request's cycle that ends its connection after an answer written before the request's body was whole (no
    key's 401, a 405, a 413 by its `Content-Length`): RFC 9112 (9.6) lets a server that will not read a body close
    the connection, and kept open, the protocol went on feeding the parser whatever body the client sent, for
    `gateway.timeouts.request_head` after the answer (a keyless client's body of one-byte chunks held the loop with a
    callback each: every `/health` waited a second; found by review, edgerev37). The answer says `connection: close`;
    the connection is then closed as a lingering close does (`BoundedHttpToolsProtocol._linger`), not at once: closed
    with the client's body unread, the kernel resets it, and a reset that overtakes the answer loses it."""

    lingers = False

    async def send(self, message: ASGISendEvent) -> None:
        if message["type"] == "http.response.start":
            if not self.response_started and self.more_body:
                self.keep_alive, self.lingers = False, True  # (uvicorn writes `connection: close`)
        elif self.lingers and not message.get("more_body", False):
            # uvicorn would close at once: the protocol lingers instead, told by this cycle (its last parsed may be
            # another, pipelined behind: judged by it, the connection neither closed nor lingered; mergerevb37).
            self.keep_alive = True
            self.on_response = self.on_response.__self__._linger  # type: ignore[attr-defined]
        await super().send(message)


class UnchunkedCycle(BoundedCycle):
    """The answer to an HTTP/1.0 request: one of no length (a stream) is written as it comes, unframed, its end the
    connection's close (uvicorn closes every HTTP/1.0 connection once answered). uvicorn wrote it chunked, which RFC
    9112 (6.1) forbids to a request that is not HTTP/1.1: a client of HTTP/1.0 (`curl -0`, ab, a proxy's hop) read the
    chunk sizes as the body's, inside the events."""

    unframed = False

    async def send(self, message: ASGISendEvent) -> None:
        if message["type"] == "http.response.start" and not self.response_started:
            if (
                self.scope["method"] != "HEAD"
                and message["status"] not in (204, 304)
                and not any(name.lower() == b"content-length" for name, _ in message.get("headers", ()))
            ):
                self.unframed = True
                self.chunked_encoding = False  # (uvicorn adds its chunked framing where no framing is set)
        elif self.unframed and message["type"] == "http.response.body":
            # (What uvicorn counts down for a body of a length: here each piece's own, as it comes.)
            self.expected_content_length = len(message.get("body", b""))
        await super().send(message)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """See the module docstring. A request's head is counted from its first byte: the connection's, the first of the
    first read after the last request's end, or, for a request pipelined behind another in one read, the byte after
    that one's end (found in the read only then: `_pipelined`); and to its end.

    What is fed to the parser is a piece: a read, or the part of one that fits the bound (`reading`). Per piece the
    count costs one addition (`received`: the bytes of the request fed so far, this piece's included) and the piece
    kept (`reading`), for the moment a request begins in the piece where the last one ended (no piece counted since):
    then what the last one left of it is found from where its head began (`head_in`, `head_at`) and ended
    (`head_done_in`), and, for a chunked body begun in an earlier piece, from where that piece left it (`chunks_left`,
    kept by `_follow` for a chunked body only, where a piece leaves it unfinished).

    The head's timer (`head_timer`) runs from the connection's open, and from each answer's end where no request
    waits behind it, to the next head's end; the body's (`body_timer`), from the end of a read that left the running
    request's body unfinished to the body's end, or its answer's."""

    in_head = True
    head_fields = 0  # the head's fields among `headers` (`on_message_complete`)
    received = 0
    heads = 0  # the heads parsed on this connection
    refused = False
    bound = 0
    reading = b""
    earlier = b""  # the head's piece before `reading` (its end may straddle the two)
    ended_before = 0  # the bytes the last request had in pieces before the one it ended in
    head_in = b""
    head_at = 0
    head_done_in: bytes | None = None
    head_done_before = 0  # the bytes the request had in pieces before the one its head ended in
    head_done_earlier = b""
    # A chunked body not ended by the last piece fed (`_follow`): where it goes on in the next piece (its offset there,
    # a chunk's data and CRLF going on into it) and the start of a line the last piece cut (to be read again before it).
    chunks_left: tuple[int, bytes] | None = None
    pending: bytes | None = None  # a refused head's answer, held until the answer before it is written (`_close_with`)
    most = 0  # `gateway.limits.connections`
    admitted = False  # among the `most` connections served (`_admitted`)
    upgrade_left: int | None = None  # an ignored upgrade's body bytes still to come (`_ignore_upgrade`)
    head_s = 0.0  # `gateway.timeouts.request_head`
    body_s = 0.0  # `gateway.timeouts.request_body`
    request_s = 0.0  # `gateway.timeouts.request`
    head_timer: asyncio.TimerHandle | None = None
    body_timer: asyncio.TimerHandle | None = None
    write_timer: asyncio.TimerHandle | None = None  # while writing is paused (`pause_writing`)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        settings = served_settings()
        self.bound, self.most = settings.limits.request_header_bytes, settings.limits.connections
        self.head_s, self.body_s = settings.timeouts.request_head, settings.timeouts.body_s
        self.request_s = settings.timeouts.request
        super().connection_made(transport)
        self.parser.set_dangerous_leniencies(lenient_version=True)  # (every `HTTP/d.d`: `on_headers_complete` decides)
        self.head_timer = self.loop.call_later(self.head_s, self._head_late)
        self._admitted()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timers()
        if self.admitted:
            self._taken().discard(self)
        super().connection_lost(exc)

    def _taken(self) -> set[BoundedHttpToolsProtocol]:
        """The connections the server serves, at most `most` of them (the server's own: its processes' protocols)."""
        taken: set[BoundedHttpToolsProtocol] | None = getattr(self.server_state, "admitted", None)
        if taken is None:
            taken = set()
            self.server_state.admitted = taken  # type: ignore[attr-defined]
        return taken

    def _admitted(self) -> bool:
        """Whether this connection is among the `most` served, taking a place that is free. Counted against every open
        connection, its own among them, one past the limit would refuse every connection's next request, none
        served: the first `most` are served, and one past them once a place frees."""
        if not self.admitted:
            taken = self._taken()
            if len(taken) < self.most:
                taken.add(self)
                self.admitted = True
        return self.admitted

    def _stop_timers(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
        if self.body_timer is not None:
            self.body_timer.cancel()
            self.body_timer = None
        self._stop_write_timer()

    def _stop_write_timer(self) -> None:
        if self.write_timer is not None:
            self.write_timer.cancel()
            self.write_timer = None

    def pause_writing(self) -> None:
        """The client has an answer's bytes unread beyond the transport's high-water mark: the app's next write waits
        (uvicorn's `drain`) until it reads again, which a client that stopped reading never does. Timed from here to
        its request's end (`_request_ends`): a write still waiting then closes the connection (`_write_late`). The
        answer's request is settled as one whose client left (499, a stream charged what it produced), where else its
        stream would be held with its upstream, unsettled, past its bound and its budget reservation's expiry. A timer
        only while writing is paused."""
        super().pause_writing()
        cycle = self.cycle
        if self.write_timer is None and cycle is not None and not cycle.response_complete:
            self.write_timer = self.loop.call_at(self._request_ends(cycle.scope), self._write_late)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._stop_write_timer()

    def _request_ends(self, scope: Any) -> float:
        """When the request of `scope` ends, on the loop's clock: its deadline (`arrival_deadline_s`, as the app read
        it) or the whole request's bound (`gateway.timeouts.request`), the sooner, from its arrival (as
        `Exchange.ends_at`)."""
        state = scope.get("state") or {}
        arrived = state.get("started") or time.perf_counter()
        deadline = state["deadline_s"] if "deadline_s" in state else arrival_deadline_s(scope)
        bound = self.request_s if deadline is None else min(deadline, self.request_s)
        return self.loop.time() + arrived + bound - time.perf_counter()

    def _write_late(self) -> None:
        """The request's end came while its answer's write waited for the client: the connection is reset (an abort
        with no linger: a close waits for the unread bytes to be read, and the kernel would go on holding megabytes
        of them for the client after the process let the socket go), which uvicorn tells the app as the client's leaving
        (the stream's watch cancels it: `handler.api.streaming.DisconnectWatch`)."""
        self.write_timer = None
        cycle = self.cycle
        if cycle is not None and cycle.response_complete:  # (a whole answer's write, which only the client can end)
            return
        self.refused = True
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, NO_LINGER)
        self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.refused:  # (a refusal is written or held: nothing more is read on this connection)
            return
        if self.upgrade_left is not None:  # (the parser stopped at an upgrade's head: its body is read here)
            self._upgrade_body(data)
            return
        if self.in_head:
            room = self.bound - self.received
            if len(data) > room:
                # The bound is on the head alone, and a read may also carry the body (a coding agent's 200 KB
                # request, written at once, arrives so): the parser is given what fits, and says whether the
                # head ended within it before the rest is fed.
                self._beyond_room(data, room)
                return
            self.earlier = self.reading
        self.reading = data
        self.received += len(data)
        super().data_received(data)
        if not self.in_head and not self.refused:  # (the running request's body goes on past this read)
            self._follow(data)
            if self.body_timer is None and not self.pipeline:
                self._time_the_body()

    def _beyond_room(self, data: bytes, room: int) -> None:
        heads = self.heads
        if room > 0:
            self.earlier, self.reading = self.reading, data[:room]
            self.received += room
            super().data_received(self.reading)
            if not self.in_head and not self.refused:
                self._follow(self.reading)
        if self.transport.is_closing():
            return
        if not self.in_head or self.heads > heads:  # the head ended within it (and another may have begun: counted)
            self.data_received(data[room:])
        else:
            self._refuse()

    def on_message_begin(self) -> None:
        if not self.received:  # (no piece since the last request ended, which counted the piece it began in)
            self._pipelined()
        else:
            self.head_in, self.head_at = self.reading, 0
        super().on_message_begin()

    def _pipelined(self) -> None:
        """A request begins in the piece the last one ended in: counted from the byte after that one's end, and
        refused at once if its head is already past the bound in this piece. The parser is then stopped where the
        request begins (by the exception, which uvicorn's `data_received` takes for a malformed request, the 400 it
        would write not written, its log line not logged: the 431 is the answer), so that nothing of the piece reaches
        the request before it (its body would have)."""
        piece = self.reading
        start = min(max(self._last_end(piece), 0), len(piece))
        self.head_in, self.head_at = piece, start
        self.received = len(piece) - start
        if self.received > self.bound:
            end = head_end(piece, start)
            if end < 0 or end - start > self.bound:
                line = piece[start:].lstrip(b"\r\n").split(b"\r\n", 1)[0].split(b" ")
                self._refuse(line[1] if len(line) > 1 else b"")
                self.logger = QUIET
                raise HeadersTooLargeError("a pipelined request's head is past the bound")

    def _last_end(self, piece: bytes) -> int:
        """Where, in `piece`, the request that just ended there ends (its head as `head_end` finds it, and its body by
        its framing: read from its headers, still the protocol's until `on_message_begin`). A chunked body begun in an
        earlier piece is found from where the piece before left it (`chunks_left`): counted from the piece's first
        byte, its tail would be taken for the next request's head, and a request behind a chunked body of 300 KB
        answered 431 where the reads fall so; so would a 60-byte request behind a 200 KB one read at once, the read
        cut at the head's bound (`_beyond_room`)."""
        length, chunked = framing(self.headers)
        if self.head_done_in is piece:
            body_at = self._head_end_in(piece, self.head_done_earlier)
            if chunked:
                ended, end = chunked_end(piece, body_at)
                return end if ended else body_at
            return body_at + length
        if chunked:
            left = self.chunks_left
            if left is not None:
                at, carry = left
                ended, end = chunked_end(carry + piece if carry else piece, at)
                if ended and end >= len(carry):
                    return end - len(carry)
            return 0  # (not followed: counted from the piece's first byte)
        head_size = self.head_done_before + self._head_end_in(self.head_done_in or b"", self.head_done_earlier)
        return length - (self.ended_before - head_size)  # what the body had left for this piece

    def _follow(self, piece: bytes) -> None:
        """`piece` left the running request's body unfinished: where a chunked one goes on in the next piece
        (`chunks_left`), for `_last_end` if it ends there with a request behind it. One scan of the size lines of each
        piece of a chunked body that takes more than one (its data is skipped, not read); a body of a length costs
        its headers' framing once. A line cut by the piece longer than the head's bound is not followed (a chunk's
        extensions without end, read again with every piece, would be work without bound)."""
        if self.head_done_in is piece:
            if not framing(self.headers)[1]:
                return
            at, carry = self._head_end_in(piece, self.head_done_earlier), b""
        elif self.chunks_left is None:
            return
        else:
            at, carry = self.chunks_left
        whole = carry + piece if carry else piece
        ended, at = chunked_end(whole, at)
        if ended or at < 0:
            self.chunks_left = None
        elif at >= len(whole):
            self.chunks_left = (at - len(whole), b"")
        else:
            rest = whole[at:]
            if len(rest) > self.bound and last_chunk(rest):
                # Its trailers past the head's bound: the parser gathers a trailer's value as it gathers a header's, by
                # appending each piece, and one of 119 MB (no key needed) held every `/health` up to 3.8 s (found by
                # review, edgerev37). Refused as a head past it is.
                self.chunks_left = None
                self._refuse_trailers()
                return
            self.chunks_left = (0, rest) if len(rest) <= self.bound else None

    def _head_end_in(self, piece: bytes, earlier: bytes) -> int:
        """Where the last request's head ends in `piece`, the piece its head ended in (`earlier`: the head's piece
        before it, where the head began before `piece`)."""
        if self.head_in is piece:
            return head_end(piece, self.head_at)
        tail = earlier[-3:]
        for size in (1, 2, 3):  # its empty line straddling the two pieces
            if (tail + piece[:size]).endswith(b"\r\n\r\n"):
                return size
        return piece.find(b"\r\n\r\n") + 4

    def _refuse(self, url: bytes | None = None) -> None:
        """The 431, and the connection closed (`url`: the refused request's target, where its head is not the
        protocol's yet)."""
        if not self.refused and not self.transport.is_closing():
            headers = (getattr(self, "headers", None) or []) if url is None else []
            anthropic = anthropic_head(getattr(self, "url", b"") if url is None else url, headers)
            self._close_with(too_large_answer(self.bound, anthropic))

    def _refuse_trailers(self) -> None:
        """The last request's trailers past the head's bound: a 431 (`_end_running`), and the connection closed."""
        cycle = self.cycle
        error = HeadersTooLargeError(f"the request's trailer fields exceed {self.bound} bytes")
        queued = next((entry for entry in self.pipeline if entry[0] is cycle), None)
        if queued is not None:
            # Pipelined behind a request being answered, and never begun: dropped, and its 431 written once the
            # answers before it are (written at once, it took the place of the running request's answer, which was
            # then cut and charged as its client's leaving; found by review, mergerev37).
            self.pipeline.remove(queued)
            self._close_with(
                refusal(error, b"431 Request Header Fields Too Large", anthropic_head(self.url, self.headers))
            )
            return
        self._end_running(error, b"431 Request Header Fields Too Large")

    def _end_running(self, error: GatewayError, status_line: bytes) -> None:
        """The running request ended while its body was read: answered `error` with the app's request id where no
        answer has begun (the app, whose read of the body ends now as a client's leaving does, is given the error,
        `BODY_LATE`, and observes the request as answered so, not as a 499), and the connection closed."""
        cycle = self.cycle
        self.refused = True
        if not cycle.response_started:
            state = cycle.scope["state"]
            state[BODY_LATE] = error
            self.transport.write(
                refusal(error, status_line, anthropic_head(self.url, self.headers), state.get("request_id"))
            )
        self.transport.close()
        cycle.disconnected = True  # (as the connection's loss marks it: the app's read of the body ends now)
        cycle.message_event.set()

    def _refuse_head(self, error: GatewayError, status_line: bytes) -> NoReturn:
        """A whole head refused (`error`, in the error shape of its API), the connection closed, and the parser
        stopped there (by the exception, as `_pipelined` stops it), so that none of the request's body reaches the
        request before it."""
        self._close_with(refusal(error, status_line, anthropic_head(self.url, self.headers)))
        self.logger = QUIET
        raise error

    def _close_with(self, answer: bytes) -> None:
        """`answer` to a refused request, and the connection closed; nothing more is read on it."""
        self.refused = True
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # Pipelined behind a request still being answered: that answer first (`on_response_complete`), then
            # this one. Written at once, the refusal took the earlier request's place, which was sent and charged.
            self.pending = answer
            self.flow.pause_reading()
            return
        self.transport.write(answer)
        self.transport.close()

    def _head_late(self) -> None:
        """The head's time (`gateway.timeouts.request_head`) ran out: a head begun is answered 408 (its API's error
        shape as far as its head tells it), and the connection closed; one not begun (an idle connection, or the
        body of a request already answered) is closed unanswered, as uvicorn's keep-alive timer closes one."""
        self.head_timer = None
        if self.transport.is_closing() or self.refused:
            return
        if self.in_head and self.received:
            error = RequestTimeoutError(
                f"the request's line and headers were not whole within {self.head_s:g} s "
                "(gateway.timeouts.request_head)"
            )
            anthropic = anthropic_head(getattr(self, "url", b""), self.headers or [])  # (as far as it came)
            self._close_with(refusal(error, b"408 Request Timeout", anthropic))
        else:
            self.refused = True
            self.transport.close()

    def _time_the_body(self) -> None:
        """The running request's body is read within `gateway.timeouts.request_body` of now (its head's end, or its
        start behind the request before it), or by its deadline (`x-gateway-deadline-ms`, `arrival_deadline_s`)
        where that is sooner."""
        cycle = self.cycle
        if cycle is None or cycle.response_complete:  # (an upgrade's head: no request of this protocol's)
            return
        deadline = arrival_deadline_s(cycle.scope)
        within = self.body_s if deadline is None else min(deadline, self.body_s)
        self.body_timer = self.loop.call_later(within, self._body_late, within, within < self.body_s)

    def _body_late(self, within: float, by_deadline: bool) -> None:
        """The body's time ran out: a request not answered yet is answered 408 (`gateway.timeouts.request_body`) or
        its deadline's 504 (`_end_running`). One already answering is cut."""
        self.body_timer = None
        cycle = self.cycle
        if self.transport.is_closing() or self.refused or cycle.response_complete:
            return
        error: GatewayError
        if by_deadline:
            error = UpstreamTimeoutError(
                f"the deadline of {within * 1000:.0f} ms (x-gateway-deadline-ms) passed before the request's "
                "body was whole: nothing was sent, nothing is charged"
            )
            self._end_running(error, b"504 Gateway Timeout")
        else:
            error = RequestTimeoutError(
                f"the request's body was not whole within {within:g} s of its head (gateway.timeouts."
                "request_body): nothing was sent, nothing is charged"
            )
            self._end_running(error, b"408 Request Timeout")

    def on_response_complete(self) -> None:
        """An answer is written: the next request's starts (uvicorn's), or, once every request before a refused
        head is answered, its held refusal (`_close_with`), and the connection closed. Then the next head's timer,
        where no request waits to be answered (else the body's of the one now started, where its body goes on). An
        answer written before its request's body was whole ends the connection instead (`BoundedCycle`, `_linger`)."""
        pending = self.pending
        if pending is not None and not self.pipeline and not self.transport.is_closing():
            self.pending = None
            self.transport.write(pending)
            self.transport.close()
        waiting = bool(self.pipeline)
        super().on_response_complete()
        # The answer is whole: its bytes are the client's, however slowly it reads them. Its write's timer is stopped
        # before the closing connection returns (`connection: close`): one left would reset the connection at the
        # request's end, a paid 8 MB answer cut to the 4 KiB read.
        self._stop_write_timer()
        if self.transport.is_closing() or self.refused:
            return
        self._stop_timers()
        if not waiting:
            self.head_timer = self.loop.call_later(self.head_s, self._head_late)
        elif not self.pipeline and (not self.in_head or self.upgrade_left):
            self._time_the_body()  # (an ignored upgrade's body goes on past its head, which the parser took as whole)

    def _linger(self) -> None:
        """A lingering close: the answer's end sent (`write_eof`, a FIN after its bytes), what the client still sends
        read and dropped (no parser: a read a call, whatever its chunks), and the connection closed once the client
        closes its side (asyncio's transport closes at its EOF, uvicorn's `eof_received` keeping it no longer) or
        `LINGER_S` has passed. Closed at once with the client's body unread, the kernel resets the
        connection, and over a network a reset that overtakes the answer loses it (the client reads a reset where a
        401 was written)."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.refused = True  # (`data_received` drops what comes, a request pipelined behind it too)
        self._stop_timers()
        with contextlib.suppress(NotImplementedError, OSError, RuntimeError):
            if self.transport.can_write_eof():
                self.transport.write_eof()
        self.flow.resume_reading()
        self.head_timer = self.loop.call_later(LINGER_S, self.transport.close)

    def send_400_response(self, msg: str) -> None:
        """A head the HTTP parser refuses (a CR or NUL in a header's value, two `Content-Length`s): the client's 400
        in the error shape of its API, where uvicorn wrote a plain-text one with no request id."""
        if self.transport.is_closing() or self.refused:  # (refused: the refusal is the answer, written or held)
            return
        anthropic = anthropic_head(getattr(self, "url", b""), getattr(self, "headers", None) or [])
        error = InvalidRequestError(f"the request's HTTP head is malformed ({msg.rstrip('.')})")
        self.transport.write(refusal(error, b"400 Bad Request", anthropic))
        self.transport.close()

    def shutdown(self) -> None:
        """The server stops (uvicorn calls this on every connection as its shutdown begins)."""
        server_stopping()
        super().shutdown()

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.head_fields = len(self.headers)  # (what comes after the head's fields is a trailer: `on_message_complete`)
        self.heads += 1
        self.chunks_left = None
        self.head_done_in, self.head_done_before = self.reading, self.received - len(self.reading)
        self.head_done_earlier = self.earlier
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
        version = self.parser.get_http_version()
        if version[0] == "1" and version != "1.0":  # (`HTTP/1.2`: served as HTTP/1.1, RFC 9110 2.5)
            version = "1.1"
        elif version != "1.0":  # (`HTTP/2.0` in HTTP/1's syntax: no HTTP/2, whose requests are binary; `HTTP/3.0`)
            self._refuse_head(
                VersionNotSupportedError(
                    f"HTTP/{version} is not served: gateway serve speaks HTTP/1.1 and 1.0 (HTTP/2 is a proxy's in "
                    "front of it); send the request as HTTP/1.1"
                ),
                b"505 HTTP Version Not Supported",
            )
        hosts = 0
        coded = False  # a transfer coding other than chunked
        for name, value in self.headers:
            if name == b"host":
                hosts += 1
            elif name == b"transfer-encoding" and value.strip().lower() != b"chunked":
                coded = True
        if version == "1.1" and hosts != 1:  # RFC 9112 (3.2): none, or more than one, is a 400
            said = "none" if not hosts else f"{hosts}"
            self._refuse_head(
                InvalidRequestError(f"an HTTP/1.1 request carries one Host header; this one has {said}"),
                b"400 Bad Request",
            )
        if coded:
            # httptools frames such a body by its last coding, chunked, and hands the app its bytes still coded
            # (a `gzip, chunked` body would be read as if plain). The gateway decodes no transfer coding
            # but chunked, and RFC 9112 (6.1) has a server refuse one it does not understand.
            self._refuse_head(
                InvalidRequestError(
                    "a request body's transfer coding other than chunked (Transfer-Encoding: gzip, chunked) is not "
                    "served: send it chunked alone, or with a Content-Length"
                ),
                b"400 Bad Request",
            )
        if not self._admitted():
            self.logger.warning("a request refused: %d connections open (gateway.limits.connections)", self.most)
            self._refuse_head(
                OverloadedError(
                    f"the gateway holds as many connections as it takes ({self.most}); retry shortly",
                    code="server_busy",
                ),
                b"503 Service Unavailable",
            )
        upgrade = self.parser.should_upgrade()
        if upgrade and any(name == b"transfer-encoding" for name, _ in self.headers):
            self._refuse_head(
                InvalidRequestError(
                    "a request offering a protocol upgrade (Upgrade) with a chunked body is not served: send it "
                    "without the Upgrade header, or with a Content-Length"
                ),
                b"400 Bad Request",
            )
        if self.cycle is not None and not self.cycle.response_complete and len(self.pipeline) >= MOST_PIPELINED:
            # Every head of a read is parsed in one callback and queued behind the running request, a cycle each, and
            # held until the client reads the answers before it: 256 KiB of pipelined `GET /health`, some 7,700
            # requests, from a client that reads nothing (no key needed), took a worker 15 MB a connection, held up
            # to `gateway.timeouts.request` (found by review, edgerev37). Past a handful the rest is refused, once
            # the answers before it are written, and the connection closed.
            self._refuse_head(
                OverloadedError(
                    f"more than {MOST_PIPELINED} requests pipelined on one connection are not served; send them on "
                    "more connections, or wait for the answers",
                    code="server_busy",
                ),
                b"503 Service Unavailable",
            )
        super().on_headers_complete()
        self.scope["http_version"] = version  # (uvicorn's is the parser's: `1.2` where it is served as 1.1)
        if self.cycle is not None and self.cycle.scope is self.scope:
            self.cycle.__class__ = BoundedCycle if version == "1.1" else UnchunkedCycle
        if upgrade:
            self._ignore_upgrade()

    def _ignore_upgrade(self) -> None:
        """Serve a request whose upgrade is not spoken, its offer ignored: its body (by its `Content-Length`) is taken
        from the bytes after its head, in this read and the next ones (`_upgrade_body`), and the connection closes
        after the answer."""
        self.cycle.keep_alive = False
        self.upgrade_left = framing(self.headers)[0]
        start = self._head_end_in(self.reading, self.earlier)
        self._upgrade_body(self.reading[start:])

    def _upgrade_body(self, data: bytes) -> None:
        """Bytes of an ignored upgrade's body (`_ignore_upgrade`), as `on_body` takes them: what goes past its length
        is dropped (the connection closes after the answer), and its end completes the request's body."""
        left = self.upgrade_left or 0
        cycle = self.cycle
        if data and left and not cycle.response_complete:
            cycle.body += data[:left]
            if len(cycle.body) > HIGH_WATER_LIMIT:
                self.flow.pause_reading()
            cycle.message_event.set()
        self.upgrade_left = max(0, left - len(data))
        if self.upgrade_left:
            if self.body_timer is None and not self.pipeline:  # (behind an answer: timed once that ends)
                self._time_the_body()
        elif self.body_timer is not None:
            self.body_timer.cancel()
            self.body_timer = None
        if not self.upgrade_left:
            cycle.more_body = False
            cycle.message_event.set()

    def _should_upgrade(self) -> bool:
        """Never: an upgrade, `websocket` too, is served in HTTP/1.1 (`_ignore_upgrade`). uvicorn hands a WebSocket
        upgrade's transport to its WebSocket protocol (where a `ws` protocol is configured), and this protocol's
        `connection_lost` is then never called: the connection's place among `gateway.limits.connections` would never
        be given back (three upgrades under a limit of three, no key needed, would leave every later request 503
        `server_busy`), and the answer would be uvicorn's plain text or an empty 403."""
        return False

    def _unsupported_upgrade_warning(self) -> None:
        """uvicorn's warning that the parser stopped at an upgrade: this protocol serves such a request
        (`_ignore_upgrade`)."""

    def on_message_complete(self) -> None:
        # A chunked body's trailer fields are no headers of the request (RFC 9110 6.5.1: not merged into the header
        # section unless their definitions allow it; the gateway reads none): uvicorn appends them to
        # `scope["headers"]`, where the request's controls, read again once its body was read, saw them. Taken off
        # here, in the parser's callback that follows them, before the app can run again (a check on every header
        # instead would cost each request a call a header). Their bytes are held to the head's bound (`_follow`).
        del self.headers[self.head_fields :]
        # The next request's head begins after this one's end: in the next piece, or in this one (`_pipelined`).
        self.ended_before = self.received - len(self.reading)
        self.in_head = True
        self.received = 0
        if self.upgrade_left is not None:  # (its body is read, timed and ended by `_upgrade_body`)
            return
        if self.body_timer is not None:
            self.body_timer.cancel()
            self.body_timer = None
        super().on_message_complete()
