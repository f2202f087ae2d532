"""The one upstream HTTP client of a process, reused across requests and warm Lambda invocations.

httpx is the API (its `Request` and `Response`, and its transport interface); the transport is
aiohttp's (`httpx-aiohttp`), chosen by measurement: on this machine a minimal proxy did ~1.4k req/s with
httpx's own pool and ~3.7k with the aiohttp transport (see tests/bench). Requests go straight to the
transport, not through `httpx.AsyncClient`, whose per-request work (auth and redirect flows, cookie jar,
default headers) cost more than the transport itself and does nothing a proxy wants: redirects are not
followed, upstream cookies are never kept, and no `accept-encoding` is sent, so answers come back as they
are streamed. Timeouts: connect, first byte (until the status line and headers arrive), and
between chunks (each read of the body).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from handler.config import TimeoutConfig
from handler.errors import UpstreamError, UpstreamTimeoutError
from handler.ports import UpstreamRequest

USER_AGENT = "llm-edge-gateway/0.1"


class UpstreamResponse:
    """A response whose body has not been read yet; close it when done."""

    __slots__ = ("_response", "status", "headers")

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status = response.status_code
        self.headers = response.headers

    async def read(self) -> bytes:
        try:
            return await self._response.aread()
        except httpx.TimeoutException as exc:
            raise UpstreamTimeoutError("upstream stalled while sending its answer", retryable=True) from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(
                f"upstream connection failed mid-answer ({type(exc).__name__})", retryable=True
            ) from exc
        finally:
            await self._response.aclose()

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.aiter_raw():
                yield chunk
        except httpx.TimeoutException as exc:
            raise UpstreamTimeoutError("upstream stalled between stream chunks", retryable=True) from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(f"upstream stream broke ({type(exc).__name__})", retryable=True) from exc

    async def close(self) -> None:
        await self._response.aclose()


def refused(exc: BaseException) -> bool:
    """A connection refused or reset, which httpx-aiohttp reports as `ConnectTimeout` (its exception
    map prefers the timeout class for every `ClientConnectionError`)."""
    cause = exc.__cause__
    return isinstance(cause, aiohttp.ClientConnectorError | ConnectionError) and not isinstance(
        cause, aiohttp.ServerTimeoutError
    )


class UpstreamClient:
    """Sends `UpstreamRequest`s over persistent connections."""

    def __init__(self, timeouts: TimeoutConfig, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.timeouts = timeouts
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200, keepalive_expiry=60)
        self._transport = transport or AiohttpTransport(limits=limits, trust_env=False)
        self._timeout = {
            "connect": timeouts.connect,
            "read": timeouts.between_chunks,
            "write": timeouts.between_chunks,
            "pool": timeouts.connect,
        }

    def _request(self, method: str, url: str, headers: Mapping[str, str] | None, body: bytes | None) -> httpx.Request:
        request = httpx.Request(method, url, headers=headers, content=body, extensions={"timeout": self._timeout})
        request.headers.setdefault("user-agent", USER_AGENT)
        return request

    async def send(self, request: UpstreamRequest, first_byte_timeout: float | None = None) -> UpstreamResponse:
        """Send and wait for the status line and headers; the body is read by the caller."""
        limit = self.timeouts.first_byte if first_byte_timeout is None else first_byte_timeout
        built = self._request(request.method, request.url, request.headers, request.body)
        try:
            async with asyncio.timeout(limit):
                response = await self._transport.handle_async_request(built)
        except TimeoutError as exc:
            raise UpstreamTimeoutError("upstream did not answer in time", retryable=True) from exc
        except httpx.TimeoutException as exc:
            if not refused(exc):
                raise UpstreamTimeoutError(f"upstream timed out ({type(exc).__name__})", retryable=True) from exc
            raise UpstreamError("upstream refused the connection", retryable=True, outcome="connect_error") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(
                f"upstream unreachable ({type(exc).__name__})", retryable=True, outcome="connect_error"
            ) from exc
        return UpstreamResponse(response)

    async def warm(self, url: str) -> None:
        """Open a connection ahead of the first request (any answer will do)."""
        try:
            async with asyncio.timeout(self.timeouts.connect):
                response = await self._transport.handle_async_request(self._request("HEAD", url, None, None))
                await response.aclose()
        except (TimeoutError, httpx.HTTPError):
            pass

    async def aclose(self) -> None:
        await self._transport.aclose()
