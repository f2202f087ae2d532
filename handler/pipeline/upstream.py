"""The one upstream HTTP client of a process, reused across requests and warm Lambda invocations.

httpx is the API: adapters' requests become `httpx.Request`s and go to an `httpx.AsyncBaseTransport`
(tests plug in `MockTransport` or `ASGITransport`). The transport in production is the gateway's own
HTTP/1.1 client (adapters/http/http1.py), chosen by measurement: see tests/bench/transports.py, where the same
minimal proxy is run over httpx's own pool, the `httpx-aiohttp` transport, aiohttp itself and this
client. URLs are parsed once per upstream address, not per request (`httpx.URL` parsing costs more
than the rest of `httpx.Request`).

Requests go straight to the transport, not through `httpx.AsyncClient`, whose per-request work (auth
and redirect flows, cookie jar, default headers) does nothing a proxy wants: redirects are not
followed, upstream cookies are never kept, and `accept-encoding: identity` is sent (no coding is decoded), so
answers come back as they are streamed. Over the gateway's own client not even `httpx.Request` and `httpx.Response`
are built (with their headers, a fifth of the gateway's own work per request): the request head is framed
as httpx would frame it, and an answer's headers become `httpx.Headers` only if something reads them,
which only error handling does. Timeouts: connect, first byte (until the status line and headers
arrive), between chunks (each read of the body) and total (until the body's end). Bounds: the answer's
header bytes and count, and a non-streamed body (`gateway.limits`).

An answer the gateway cannot use as one is an `UpstreamError` (502 `upstream_error`, as the interface
names every upstream failure) whose outcome, in `x-gateway-route`, says what it was, whatever the
transport: a redirect (3xx, never followed: `upstream_redirect`), a protocol switch, a final interim
status or a success in a content coding the request did not accept (`upstream_protocol_error`: its body is not the
answer as the provider wrote it, which it ran and may bill), headers or a body beyond the bounds
(`upstream_headers_too_large`, `upstream_body_too_large`), a connection closed in order after the whole request went
out and before any answer (`upstream_disconnected`: billable, as a stall is, where a reset or a refused connection is
`connect_error`, free); the overall deadline passing is an `UpstreamTimeoutError` (504). An error answer is the
provider's own, whatever its body: read to its first `ERROR_BODY_BYTES` (`read_error`), never billable.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping

import httpx

from adapters.http import ACCEPT_ENCODING, IDENTITY, USER_AGENT, parsed_url
from adapters.http.http1 import (
    AnswerRefused,
    DeadlineExceeded,
    HeadTimeout,
    Http1Stream,
    Http1Transport,
    HungUp,
    Limits,
    request_head,
)
from handler.config import LimitsConfig, TimeoutConfig
from handler.errors import UpstreamError, UpstreamTimeoutError
from handler.ports import UpstreamRequest
from handler.redaction import redact_secrets

log = logging.getLogger("gateway")
DEFAULT_MAX_BODY: int = LimitsConfig.model_fields["upstream_body_bytes"].default  # (no validator built at import)


class UpstreamResponse:
    """A response whose body has not been read yet; close it when done. `raw_headers` as received;
    `response`, the httpx answer when the transport gave one."""

    __slots__ = ("status", "_raw", "_headers", "_stream", "_response", "_max_body")

    def __init__(
        self,
        status: int,
        raw_headers: list[tuple[bytes, bytes]],
        stream: httpx.AsyncByteStream,
        response: httpx.Response | None = None,
        max_body: int = DEFAULT_MAX_BODY,
    ) -> None:
        self.status = status
        self._raw = raw_headers
        self._headers = response.headers if response is not None else None
        self._stream = stream
        self._response = response
        self._max_body = max_body

    @property
    def max_body(self) -> int:
        """The most a whole (non-streamed) answer may hold: `gateway.limits.upstream_body_bytes`."""
        return self._max_body

    @classmethod
    def of(cls, response: httpx.Response, max_body: int) -> UpstreamResponse:
        stream = response.stream
        assert isinstance(stream, httpx.AsyncByteStream)
        return cls(response.status_code, response.headers.raw, stream, response, max_body)

    @property
    def headers(self) -> httpx.Headers:
        if self._headers is None:
            self._headers = httpx.Headers(self._raw)
        return self._headers

    async def read(self) -> bytes:
        """The whole body (at most `gateway.limits.upstream_body_bytes`); the answer is closed after."""
        stream = self._stream
        try:
            if isinstance(stream, Http1Stream):
                return await stream.read()
            return await self._read_bounded()
        except AnswerRefused as exc:
            raise refused(exc) from exc
        except DeadlineExceeded as exc:
            raise UpstreamTimeoutError(str(exc), retryable=True) from exc
        except httpx.TimeoutException as exc:
            raise UpstreamTimeoutError("upstream stalled while sending its answer", retryable=True) from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(
                f"upstream connection failed mid-answer ({type(exc).__name__})", retryable=True, billable=True
            ) from exc
        finally:
            await self.close()

    async def read_error(self) -> bytes:
        """An error answer's body to its first `ERROR_BODY_BYTES`, whatever its length and the bound on a whole
        answer (`gateway.limits.upstream_body_bytes`): the rest is left unread (its connection closed). The answer is
        closed after. The provider bills no error answer, so neither does a failure while it is read: a stall is a
        timeout, a break an upstream failure, each with the status the provider answered and failed over."""
        stream = self._stream
        try:
            if isinstance(stream, Http1Stream):
                body = await stream.first(ERROR_BODY_BYTES)
            else:
                body = await self._read_first(ERROR_BODY_BYTES)
        except httpx.TimeoutException as exc:  # (`DeadlineExceeded` among them)
            raise UpstreamTimeoutError(
                f"upstream answered {self.status} and stalled while sending its body",
                upstream_status=self.status,
                retryable=True,
                outcome="upstream_timeout",
                billable=False,
            ) from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(
                f"upstream answered {self.status} and its connection failed mid-body ({type(exc).__name__})",
                upstream_status=self.status,
                retryable=True,
            ) from exc
        finally:
            await self.close()
        return body[:ERROR_BODY_BYTES]

    async def _read_first(self, limit: int) -> bytes:
        parts = []
        size = 0
        async for chunk in self._stream:
            size += len(chunk)
            parts.append(chunk)
            if size > limit:
                break
        return b"".join(parts)

    async def _read_bounded(self) -> bytes:
        parts = []
        size = 0
        async for chunk in self._stream:
            size += len(chunk)
            if size > self._max_body:
                raise AnswerRefused(f"upstream's answer body exceeds {self._max_body} bytes", TOO_LARGE)
            parts.append(chunk)
        return b"".join(parts)

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._stream:
                yield chunk
        except DeadlineExceeded as exc:
            raise UpstreamTimeoutError(f"{exc} (the stream was cut there)", retryable=True) from exc
        except httpx.TimeoutException as exc:
            raise UpstreamTimeoutError("upstream stalled between stream chunks", retryable=True) from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(f"upstream stream broke ({type(exc).__name__})", retryable=True, billable=True) from exc

    async def close(self) -> None:
        if self._response is not None:
            await self._response.aclose()
        else:
            await self._stream.aclose()


class UpstreamClient:
    """Sends `UpstreamRequest`s over persistent connections."""

    def __init__(
        self,
        timeouts: TimeoutConfig,
        transport: httpx.AsyncBaseTransport | None = None,
        limits: LimitsConfig | None = None,
    ) -> None:
        self.timeouts = timeouts
        limits = limits or LimitsConfig()
        self._max_body = limits.upstream_body_bytes
        self._transport = transport or Http1Transport(limits=transport_limits(limits))
        self._http1 = self._transport if isinstance(self._transport, Http1Transport) else None
        self._extensions = {
            "timeout": {
                "connect": timeouts.connect,
                "read": timeouts.between_chunks,
                "write": timeouts.between_chunks,
                "pool": timeouts.connect,
                "total": timeouts.total,
            }
        }

    def _request(self, method: str, url: str, headers: Mapping[str, str] | None, body: bytes | None) -> httpx.Request:
        request = httpx.Request(method, parsed_url(url), headers=headers, content=body, extensions=self._extensions)
        request.headers.setdefault("user-agent", USER_AGENT)
        request.headers.setdefault(ACCEPT_ENCODING, IDENTITY)  # (as `request_head` frames it)
        return request

    async def send(
        self, request: UpstreamRequest, first_byte_timeout: float | None = None, within: float | None = None
    ) -> UpstreamResponse:
        """Send and wait for the status line and headers; the body is read by the caller. `within`: the seconds
        left of the request's deadline, which ends the answer (its `total`) where it is sooner."""
        timeouts = self.timeouts
        total = timeouts.total if within is None or within > timeouts.total else max(within, 0.001)
        limit = min(timeouts.first_byte if first_byte_timeout is None else first_byte_timeout, total)
        http1 = self._http1
        built = None if http1 else self._request(request.method, request.url, request.headers, request.body)
        request.written = built is not None  # (the gateway's own client says when it writes it)
        try:
            if built is not None:
                async with asyncio.timeout(limit):
                    answer = UpstreamResponse.of(await self._transport.handle_async_request(built), self._max_body)
                coding = answer.headers.get("content-encoding", IDENTITY).strip().lower()
                if coding != IDENTITY and 200 <= answer.status < 300:  # (as the gateway's own client refuses it)
                    await answer.close()
                    raise AnswerRefused(
                        f"upstream answered {answer.status} in the content coding {coding[:40]!r}, where the request "
                        "accepted only identity",
                        "upstream_protocol_error",
                    )
            else:
                assert http1 is not None
                url = parsed_url(request.url)
                head = request_head(request.method, url, request.headers, request.body, USER_AGENT)
                status, headers, stream = await http1.exchange(
                    request.method,
                    url,
                    head,
                    request.body,
                    timeouts.connect,
                    timeouts.between_chunks,
                    total,
                    head_timeout=limit,
                    sent=request,
                )
                answer = UpstreamResponse(status, headers, stream)
        except AnswerRefused as exc:
            raise refused(exc) from exc
        except (TimeoutError, HeadTimeout) as exc:
            # Sent whole (or, through another transport, perhaps): the provider may run it to the end.
            raise UpstreamTimeoutError("upstream did not answer in time", retryable=True) from exc
        except HungUp as exc:
            # It read the whole request and hung up, as a proxy's idle timeout in front of a slow provider does: the
            # provider may run it to the end and bill it, as a stalled one may, so it is charged as one.
            raise UpstreamError(
                "upstream closed the connection after the whole request, before its answer (it may still run it)",
                retryable=True,
                outcome="upstream_disconnected",
                billable=True,
            ) from exc
        except httpx.ConnectError as exc:
            raise UpstreamError("upstream refused the connection", retryable=True, outcome="connect_error") from exc
        except (httpx.ConnectTimeout, httpx.PoolTimeout, httpx.WriteTimeout) as exc:
            raise UpstreamTimeoutError(
                f"upstream could not be reached in time ({type(exc).__name__})",
                retryable=True,
                outcome="connect_timeout",
                billable=False,
            ) from exc
        except httpx.TimeoutException as exc:
            raise UpstreamTimeoutError(f"upstream timed out ({type(exc).__name__})", retryable=True) from exc
        except httpx.HTTPError as exc:
            # The kind of failure only, as for a refused or timed-out connection: the transport's words name where it
            # went (a forward proxy refusing the tunnel: "the proxy 127.0.0.1:3128 refused the tunnel: 407"), the
            # operator's, for the log.
            log.warning(
                "upstream unreachable", extra={"error_type": type(exc).__name__, "reason": redact_secrets(str(exc))}
            )
            raise UpstreamError(
                f"upstream unreachable ({type(exc).__name__})", retryable=True, outcome="connect_error"
            ) from exc
        if not 200 <= answer.status < 300 and answer.status < 400:
            await answer.close()
            raise unusable(answer.status)
        return answer

    async def warm(self, url: str) -> None:
        """Open a connection (TCP and TLS) to `url`'s origin ahead of the first request; no request is sent."""
        if isinstance(self._transport, Http1Transport):
            try:
                await self._transport.preconnect(url, self.timeouts.connect)
            except httpx.HTTPError:
                pass  # the first request will try again, and report what fails

    async def aclose(self) -> None:
        await self._transport.aclose()


TOO_LARGE = "upstream_body_too_large"
# How much of an error answer's body is read (`UpstreamResponse.read_error`): far more than what is relayed of it (a
# message's first `handler.wire.PROVIDER_MESSAGE_CHARS` characters; a body not in the provider's JSON shape is scanned
# to `handler.wire.ERROR_SCAN_BYTES`), little enough that one of a hundred megabytes is neither held nor parsed whole.
# (Read as a whole answer, one past `gateway.limits.upstream_body_bytes` would be refused as a success too large:
# charged its worst case, and the client's bad request sent to the next deployment.)
ERROR_BODY_BYTES = 1024 * 1024


def transport_limits(limits: LimitsConfig) -> Limits:
    """The transport's bounds from the config's `gateway.limits`."""
    return Limits(limits.upstream_header_bytes, limits.upstream_headers, limits.upstream_body_bytes)


def refused(exc: AnswerRefused) -> UpstreamError:
    """An answer the transport would not take, as the gateway's error (another deployment may do better). The
    request went out whole and the provider answered it, so it ran and may be billed: charged its reserved worst
    case (`billable`), as an attempt cut in flight is, and a retry of it may be billed again."""
    return UpstreamError(f"upstream's answer was refused: {exc}", retryable=True, outcome=exc.code, billable=True)


def unusable(status: int) -> UpstreamError:
    """A final answer that is neither a success nor an error: a redirect (never followed), or 1xx."""
    if 300 <= status < 400:
        message, code = (
            f"upstream answered {status}, a redirect, which the gateway does not follow",
            "upstream_redirect",
        )
    else:
        message, code = f"upstream answered {status}, not a final status", "upstream_protocol_error"
    return UpstreamError(message, upstream_status=status, retryable=True, outcome=code)
