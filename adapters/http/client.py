"""Whole-answer exchanges for adapters that need no streaming (the DynamoDB client): send, read the body to
its end, return both; over the process's HTTP/1.1 client, or any httpx transport a test plugs in.

Failures are httpx's own errors (any timeout an `httpx.TimeoutException`), for the adapter to map; the
application's upstream client (handler/pipeline/upstream.py) is not involved, so a store does not depend on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import httpx

from adapters.http import ACCEPT_ENCODING, IDENTITY, USER_AGENT, parsed_url
from adapters.http.http1 import Http1Transport, request_head


class HttpClient:
    """`post` a body, get `(status, body)`; `read_timeout` bounds the wait for the answer's head and each
    read of its body, and the exchange as a whole takes at most `total_timeout`."""

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        connect_timeout: float,
        read_timeout: float,
        total_timeout: float | None = None,
    ) -> None:
        self._transport = transport
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.total_timeout = total_timeout or connect_timeout + 2 * read_timeout
        self._timeouts = {"connect": connect_timeout, "read": read_timeout, "write": read_timeout}

    async def post(
        self, url: str, headers: Mapping[str, str], body: bytes, ends_by: float | None = None
    ) -> tuple[int, bytes]:
        """`ends_by`, the event loop's time by which the exchange must end whatever its timeouts allow (a
        request's deadline), cuts it sooner where it is sooner."""
        parsed = parsed_url(url)
        transport = self._transport
        cut = False
        try:
            async with asyncio.timeout(self.total_timeout) as bound:
                when = bound.when()
                if ends_by is not None and when is not None and ends_by < when:
                    bound.reschedule(ends_by)
                    cut = True
                if isinstance(transport, Http1Transport):
                    head = request_head("POST", parsed, headers, body, USER_AGENT)
                    status, _, stream = await transport.exchange(
                        "POST", parsed, head, body, self.connect_timeout, self.read_timeout, self.total_timeout
                    )
                    try:
                        return status, await stream.read()
                    finally:
                        await stream.aclose()
                request = httpx.Request("POST", parsed, headers=headers, content=body)
                request.headers.setdefault(ACCEPT_ENCODING, IDENTITY)  # (as `request_head` frames it)
                request.extensions["timeout"] = self._timeouts
                response = await transport.handle_async_request(request)
                try:
                    return response.status_code, await response.aread()
                finally:
                    await response.aclose()
        except TimeoutError as exc:
            within = "by the deadline it was given" if cut else f"within {self.total_timeout} s"
            raise httpx.TimeoutException(f"no whole answer from {parsed.host} {within}") from exc

    async def aclose(self) -> None:
        await self._transport.aclose()
