"""`gateway serve`'s HTTP protocol: uvicorn's httptools protocol with a bound on a request's headers.

uvicorn's httptools protocol takes request headers of any size, and httptools gathers a header (and
the target) by appending each piece it receives, so one 60 MB header kept the event loop busy for
seconds: every other request, `/health` included, waited. Here the bytes of a request's line and headers
are counted as they arrive (a read that also carries the body counts only as far as the head's end);
beyond `gateway.limits.request_header_bytes` the request is answered `431 headers_too_large` (in the error
shape of the API it calls: Anthropic's on `/v1/messages`) and its connection closed, before the parser is fed more.

As the server begins to stop, the protocol tells the served gateway (`server_stopping`), so that a request uvicorn
cuts once `--shutdown-grace` has run out is answered the gateway's 503, not a client's 499 or uvicorn's 500.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from handler.api.app import answered_before_the_app, anthropic_path
from handler.config import LimitsConfig
from handler.errors import GatewayError, HeadersTooLargeError, InvalidRequestError


@functools.cache
def request_header_bytes() -> int:
    """The bound from the served gateway's config (`handler.entry.asgi`, the app uvicorn loaded), else the default."""
    served = sys.modules.get("handler.entry.asgi")
    limits = served.gateway.config.gateway.limits if served is not None else LimitsConfig()
    return limits.request_header_bytes


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


def refusal(error: GatewayError, status_line: bytes, anthropic: bool) -> bytes:
    """An answer written before the app sees the request (`answered_before_the_app`), and the connection closed."""
    _, headers, body = answered_before_the_app(error, anthropic)
    head = b"".join(b"%s: %s\r\n" % (name.encode(), value.encode()) for name, value in headers)
    return b"HTTP/1.1 %s\r\n%scontent-length: %d\r\nconnection: close\r\n\r\n%s" % (status_line, head, len(body), body)


def anthropic_head(url: bytes, headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a request's head, as far as it was parsed, is an Anthropic caller's (`handler.api.app.
    anthropic_path`)."""
    if url.startswith((b"http://", b"https://")):  # the absolute form: the path after the authority
        url = url[url.find(b"/", url.find(b"//") + 2) :] if url.count(b"/") > 2 else b"/"
    return anthropic_path(url.decode("latin-1"), any(name == b"anthropic-version" for name, _ in headers))


QUIET = logging.Logger("gateway.refused")  # (a connection refused so: uvicorn's word on it would mislead)
QUIET.disabled = True


def head_end(piece: bytes, start: int) -> int:
    """Where the head that begins at `start` of `piece` ends (after its empty line), or -1: the first CRLF CRLF after
    the empty lines a request may be preceded by (the parser's leniencies are off: a head has no other)."""
    while piece[start : start + 1] in (b"\r", b"\n"):
        start += 1
    end = piece.find(b"\r\n\r\n", start)
    return end if end < 0 else end + 4


def chunked_end(piece: bytes, at: int) -> int | None:
    """Where a chunked body that begins at `at` of `piece` ends (after its last chunk and trailers), if it ends there
    as the parser read it."""
    while True:
        line = piece.find(b"\r\n", at)
        if line < 0:
            return None
        try:
            size = int(piece[at:line].partition(b";")[0], 16)  # (the parser took it: hex digits, maybe spaces)
        except ValueError:
            return None
        at = line + 2
        if size == 0:
            while (line := piece.find(b"\r\n", at)) > at:  # trailer fields, to the empty line
                at = line + 2
            return at + 2 if line == at else None
        at += size + 2


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """See the module docstring. A request's head is counted from its first byte: the connection's, the first of the
    first read after the last request's end, or, for a request pipelined behind another in one read, the byte after
    that one's end (found in the read only then: `_pipelined`); and to its end.

    What is fed to the parser is a piece: a read, or the part of one that fits the bound (`reading`). Per piece the
    count costs one addition (`received`: the bytes of the request fed so far, this piece's included) and the piece
    kept (`reading`), for the moment a request begins in the piece where the last one ended (no piece counted since):
    then what the last one left of it is found from where its head began (`head_in`, `head_at`) and ended
    (`head_done_in`)."""

    in_head = True
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
    pending: bytes | None = None  # a pipelined head's 431, held until the answer before it is written (`_refuse`)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.bound = request_header_bytes()
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.refused:  # (a 431 is written or held: nothing more is read on this connection)
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

    def _beyond_room(self, data: bytes, room: int) -> None:
        heads = self.heads
        if room > 0:
            self.earlier, self.reading = self.reading, data[:room]
            self.received += room
            super().data_received(self.reading)
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
        its framing: read from its headers, still the protocol's until `on_message_begin`). A chunked body that
        began in an earlier piece is not followed: the next head is then counted from the piece's first byte."""
        length, chunked = 0, False
        for name, value in self.headers:
            if name == b"content-length" and value.strip().isdigit():  # (as the parser took it: digits)
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
        if self.head_done_in is piece:
            body_at = self._head_end_in(piece, self.head_done_earlier)
            if chunked:
                end = chunked_end(piece, body_at)
                return body_at if end is None else end
            return body_at + length
        if chunked:
            return 0
        head_size = self.head_done_before + self._head_end_in(self.head_done_in or b"", self.head_done_earlier)
        return length - (self.ended_before - head_size)  # what the body had left for this piece

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
            self.refused = True
            headers = (getattr(self, "headers", None) or []) if url is None else []
            anthropic = anthropic_head(getattr(self, "url", b"") if url is None else url, headers)
            answer = too_large_answer(self.bound, anthropic)
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                # Pipelined behind a request still being answered: that answer first (`on_response_complete`), then
                # this one. Written at once, the 431 took the earlier request's place, which was sent and charged.
                self.pending = answer
                self.flow.pause_reading()
                return
            self.transport.write(answer)
            self.transport.close()

    def on_response_complete(self) -> None:
        """An answer is written: the next request's starts (uvicorn's), or, once every request before a refused
        head is answered, its held 431 (`_refuse`), and the connection closed."""
        pending = self.pending
        if pending is not None and not self.pipeline and not self.transport.is_closing():
            self.pending = None
            self.transport.write(pending)
            self.transport.close()
        super().on_response_complete()

    def send_400_response(self, msg: str) -> None:
        """A head the HTTP parser refuses (a CR or NUL in a header's value, two `Content-Length`s): the client's 400
        in the error shape of its API, where uvicorn wrote a plain-text one with no request id."""
        if self.transport.is_closing() or self.refused:  # (refused: the 431 is the answer, written or held)
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
        self.heads += 1
        self.head_done_in, self.head_done_before = self.reading, self.received - len(self.reading)
        self.head_done_earlier = self.earlier
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        # The next request's head begins after this one's end: in the next piece, or in this one (`_pipelined`).
        self.ended_before = self.received - len(self.reading)
        self.in_head = True
        self.received = 0
        super().on_message_complete()
