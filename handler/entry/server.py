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

import functools
import sys

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from handler.api.app import anthropic_path, new_request_id
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
    """An answer written before the app sees the request: with a request id of its own, as every answer has, in
    the error shape of the caller's API (`anthropic`: Anthropic's, with its `request-id` too)."""
    body = orjson.dumps(error.anthropic_body() if anthropic else error.openai_body())
    request_id = new_request_id().encode()
    return (
        b"HTTP/1.1 %s\r\ncontent-type: application/json\r\n"
        b"x-request-id: %s\r\n%sx-should-retry: false\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
        % (status_line, request_id, b"request-id: %s\r\n" % request_id if anthropic else b"", len(body), body)
    )


def anthropic_head(url: bytes, headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a request's head, as far as it was parsed, is an Anthropic caller's (`handler.api.app.
    anthropic_path`)."""
    if url.startswith((b"http://", b"https://")):  # the absolute form: the path after the authority
        url = url[url.find(b"/", url.find(b"//") + 2) :] if url.count(b"/") > 2 else b"/"
    return anthropic_path(url.decode("latin-1"), any(name == b"anthropic-version" for name, _ in headers))


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """See the module docstring. Counting starts at the connection's first byte, or the first read after the last
    request's end, and ends with the request's headers."""

    in_head = True
    head_bytes = 0
    heads = 0  # the heads parsed on this connection
    refused = False

    def data_received(self, data: bytes) -> None:
        if self.in_head:
            room = request_header_bytes() - self.head_bytes
            if len(data) > room:
                # The bound is on the head alone, and a read may also carry the body (a coding agent's 200 KB
                # request, written at once, arrives so): the parser is given what fits, and says whether the
                # head ended within it before the rest is fed.
                self.head_bytes += max(room, 0)
                heads = self.heads
                if room > 0:
                    super().data_received(data[:room])
                if self.transport.is_closing():
                    return
                if not self.in_head:
                    super().data_received(data[room:])
                elif self.heads > heads:  # a pipelined request began after one whose head ended: its own bound
                    self.data_received(data[room:])
                else:
                    self._refuse()
                return
            self.head_bytes += len(data)
        super().data_received(data)

    def _refuse(self) -> None:
        if not self.refused and not self.transport.is_closing():
            self.refused = True
            anthropic = anthropic_head(getattr(self, "url", b""), getattr(self, "headers", None) or [])
            self.transport.write(too_large_answer(request_header_bytes(), anthropic))
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """A head the HTTP parser refuses (a CR or NUL in a header's value, two `Content-Length`s): the client's 400
        in the error shape of its API, where uvicorn wrote a plain-text one with no request id."""
        if self.transport.is_closing():
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
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        # The next request's head begins after this one's end: counted from its first read on. (Not at the next
        # request's beginning, which the parser says in the midst of that read, after it was counted: the read was
        # forgotten, and a 120 KB head sent in two writes was taken. A request pipelined behind this one in the same
        # read is counted from the read after.)
        self.in_head = True
        self.head_bytes = 0
        super().on_message_complete()
