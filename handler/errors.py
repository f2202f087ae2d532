"""The gateway's one error hierarchy, rendered by one exception handler (see `handler.api.app`).

    GatewayError                      status, code, message, param, headers
    ├── InvalidRequestError           400 invalid_request
    │   ├── StrictParamsError         400 invalid_request (x-gateway-strict and a dropped parameter)
    │   ├── NativeOnlyError           400 the API's own code (what only the API's provider can take, and no
    │   │                                 deployment speaks the API: a Messages `thread_unsupported_request`)
    │   └── ProviderRejectedError     400 the provider's code, else invalid_request (its own 400/413/422, or a 404
    │                                     about the request, not the deployment; on Anthropic's API, Anthropic's own
    │                                     status and `error.details` where it gave them)
    ├── AuthenticationError           401 invalid_api_key | key_expired | key_revoked
    ├── BudgetExceededError           402 budget_exceeded
    │   └── CostLimitError            402 budget_exceeded, `param` x-gateway-max-cost-usd (the request's own cap)
    ├── PermissionDeniedError         403 model_not_allowed | ip_not_allowed | admin_only
    ├── NotFoundError                 404 model_not_found | not_found
    │   └── ThreadNotFoundError       404 thread_not_found (a Messages `continue` of an answer not relayed to the key
    │                                     or a descendant of it: Anthropic's own code, in `error.details.error_code`)
    ├── KeyChangedError               409 key_changed (a key kept changing under an admin write; retry)
    ├── RequestTimeoutError           408 request_timeout (`gateway serve`: a request's head or body not whole in time)
    ├── RequestTooLargeError          413 request_too_large
    │   └── AnswerTooLargeError       413 request_too_large (the buffered Lambda function: an answer past 6 MB)
    ├── UnsupportedEncodingError      415 unsupported_content_encoding (a body in a content coding, gzip say)
    ├── HeadersTooLargeError          431 headers_too_large (`gateway serve`: request headers beyond the bound)
    ├── ClientClosedError             499 client_closed_request (the client left; nobody reads this answer)
    ├── RateLimitError                429 rate_limit_exceeded (+ retry-after)
    ├── UpstreamError                 502 upstream_error (the provider's status and message, never its key)
    │   ├── UpstreamRateLimitedError  429 upstream_rate_limited (every candidate's provider said 429)
    │   ├── UpstreamOverloadedError   502 upstream_error; on Anthropic's API 529 overloaded_error (every one overloaded)
    │   ├── UpstreamTimeoutError      504 upstream_timeout
    │   └── SchemaViolationError      502 schema_violation
    └── ServiceUnavailableError       503 provider_not_configured | no_deployment_available | store_unavailable
        │                             | server_shutting_down (`gateway serve` stopped past its grace)
        └── OverloadedError           503 server_busy (`gateway serve` at `gateway.limits.connections`)
                                      | no_deployment_available (every breaker opened by its provider's overload);
                                      on Anthropic's API `overloaded_error`, the other 503s' `api_error`

`UpstreamError.retryable` tells the router whether another deployment may succeed. Library errors are
mapped at the boundary with `raise ... from exc`; nothing else reaches the client.

`status_for` is the status in the caller's API: the class's `status`, or Anthropic's own for the error
(`anthropic_status`) on Anthropic's routes.

`should_retry` tells the client, as the `x-should-retry` header the official OpenAI and Anthropic SDKs honour:
true only where the same request can succeed later (the key's own rate limit, an unavailable store, open
breakers), with a `retry-after`, and a provider's passing failure or 429 on the only attempt made; false where it
cannot (a bad request, a missing key, a budget) or where the gateway has already spent its own retries or failed
over.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from handler.redaction import clipped, redact_secrets, said_clipped, without_hashed_secrets

if TYPE_CHECKING:
    from collections.abc import Sequence

    from handler.schemas import Usage


class GatewayError(Exception):
    """Base of every error the gateway answers with."""

    status: ClassVar[int] = 500
    default_code: ClassVar[str] = "internal_error"
    error_type: ClassVar[str] = "api_error"
    anthropic_type: ClassVar[str] = "api_error"
    # Anthropic's own status for the error, where its API has one that OpenAI's has not (its 529 overloaded).
    anthropic_status: ClassVar[int | None] = None
    should_retry: bool = False

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        retry: bool | None = None,
    ) -> None:
        message = redact_secrets(message)  # (it may quote what a client sent: a key where a name belongs)
        super().__init__(message)
        self.message = message
        # The client's own names, as the message quotes them: a tag's name (`tags.<key>`), a tool's type
        # (`tools[<key>]`), a provider's code. Redacted beside the message, not only in it: a `param` of
        # `tags.gwk_...` gave back the key the message said `[REDACTED]`.
        self.code = clipped(code) if code else self.default_code
        self.param = clipped(param) if param else param
        self.headers = headers or {}
        self._retry_policy(retry)

    def without_own_secrets(self, hashes: Sequence[str]) -> None:
        """The message and `param` without the secret alone of the request's key or an ancestor (`hashes`, theirs:
        `redaction.without_hashed_secrets`), which no shape tells apart: answered to whoever sent it, a message that
        quotes a client's value (a model named by the key's secret, `team-<secret>`) gave back what a leaked log of
        the answer, beside the key's id, makes the key whole."""
        self.message = without_hashed_secrets(self.message, hashes)
        if self.param:
            self.param = without_hashed_secrets(self.param, hashes)

    def _retry_policy(self, retry: bool | None) -> None:
        """Settle `should_retry` (and what goes with it); `retry` is the raiser's own word, if it gave one."""
        if retry is not None:
            self.should_retry = retry

    def status_for(self, anthropic: bool) -> int:
        """The status of this error's answer in the caller's API (`anthropic`: Anthropic's)."""
        return (self.anthropic_status or self.status) if anthropic else self.status

    def openai_body(self) -> dict[str, object]:
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}}

    def anthropic_body(self) -> dict[str, object]:
        return {"type": "error", "error": {"type": self.anthropic_type, "message": self.message}}


class InvalidRequestError(GatewayError):
    status = 400
    default_code = "invalid_request"
    error_type = "invalid_request_error"
    anthropic_type = "invalid_request_error"


class StrictParamsError(InvalidRequestError):
    """A parameter the provider cannot honour, with `x-gateway-strict: true`."""


class NativeOnlyError(InvalidRequestError):
    """A request carrying what only a deployment that speaks the client's API can take (a Messages `thread`, whose
    conversation Anthropic holds), for a deployment that does not. `code` is the API's own for it, given where its
    SDK reads it: Anthropic's `error.details.error_code` (`thread_unsupported_request`, on which the SDK's thread
    helpers send the whole conversation again without a thread)."""

    def anthropic_body(self) -> dict[str, object]:
        return coded_body(self)


def coded_body(
    err: GatewayError, kind: str | None = None, details: dict[str, object] | None = None
) -> dict[str, object]:
    """`err` in Anthropic's shape with its code where Anthropic gives its own (`error.details.error_code`), which
    Anthropic's SDK reads (`APIStatusError.error_code`) and its thread helpers act on. `kind` and `details`,
    Anthropic's own where it gave them (a rejection relayed: `ProviderRejectedError`), in place of the error's type and
    beside its code."""
    error = {
        "type": kind or err.anthropic_type,
        "message": err.message,
        "details": {"error_code": err.code, **(details or {})},
    }
    return {"type": "error", "error": error}


class AuthenticationError(GatewayError):
    status = 401
    default_code = "invalid_api_key"
    error_type = "authentication_error"
    anthropic_type = "authentication_error"


class BudgetExceededError(GatewayError):
    status = 402
    default_code = "budget_exceeded"
    error_type = "insufficient_quota"
    anthropic_type = "billing_error"


class CostLimitError(BudgetExceededError):
    """The request's worst case is past its own cap, `x-gateway-max-cost-usd`: the interface's one 402 (SDKs retry
    a 429), `budget_exceeded`, its `param` the cap and its message saying it is the request's own cap, not a key's
    budget. (Not a code of its own such as `cost_limit_exceeded`, of type `invalid_request_error`, neither of which
    the interface lists for a 402.)"""

    def __init__(self, message: str) -> None:
        super().__init__(message, param="x-gateway-max-cost-usd")


class PermissionDeniedError(GatewayError):
    status = 403
    default_code = "model_not_allowed"
    error_type = "permission_error"
    anthropic_type = "permission_error"


def model_not_allowed(model: str) -> PermissionDeniedError:
    """The 403 for a model outside the scopes of the key (or an ancestor). Its words say the key was accepted:
    Claude Code shows every 403 as "Failed to authenticate" ("Please run /login" when interactive), the gateway's
    message after it, whatever the body's type; Codex as "unexpected status 403 Forbidden", the message after it."""
    return PermissionDeniedError(
        f"this key may not use model '{clipped(model)}': the key is valid, the model is outside its scopes (signing in "
        "again will not change that; GET /v1/models lists the models it may use)",
        code="model_not_allowed",
        param="model",
    )


class NotFoundError(GatewayError):
    status = 404
    default_code = "model_not_found"
    error_type = "invalid_request_error"
    anthropic_type = "not_found_error"


class ThreadNotFoundError(NotFoundError):
    """A message thread's `continue` whose `previous_message_id` names no answer the gateway relayed to the key or
    one of its descendants (unknown, expired, or another key's: alike, as for a stored response), refused as
    Anthropic refuses a thread it holds none of (`thread_not_found`), on which the SDK's thread helpers send the
    whole conversation again as a new thread."""

    default_code = "thread_not_found"

    def anthropic_body(self) -> dict[str, object]:
        return coded_body(self)


class KeyChangedError(GatewayError):
    """409: a key kept changing (other writes) while an admin write was read again and applied again. The SDKs
    retry a 409; they do not retry a 400."""

    status = 409
    default_code = "key_changed"
    error_type = "invalid_request_error"
    anthropic_type = "invalid_request_error"
    should_retry = True


class RequestTimeoutError(GatewayError):
    """`gateway serve`: a request's head or body did not come whole within its bound (`gateway.timeouts.
    request_head`, `request_body`); the connection is closed with it (RFC 9110 15.5.9). Not to be retried as it was:
    the gateway cannot tell a stalled network from a client that sends less than it announced."""

    status = 408
    default_code = "request_timeout"
    error_type = "timeout_error"
    anthropic_type = "timeout_error"


class RequestTooLargeError(GatewayError):
    status = 413
    default_code = "request_too_large"
    error_type = "invalid_request_error"
    anthropic_type = "request_too_large"


class UnsupportedEncodingError(GatewayError):
    """A request body in a content coding the gateway does not decode (`Content-Encoding: gzip`): RFC 9110 15.5.16's
    415, with `accept-encoding` naming the one it takes, where the body's bytes would be answered as invalid JSON."""

    status = 415
    default_code = "unsupported_content_encoding"
    error_type = "invalid_request_error"
    anthropic_type = "invalid_request_error"


class HeadersTooLargeError(GatewayError):
    status = 431
    default_code = "headers_too_large"
    error_type = "invalid_request_error"
    anthropic_type = "request_too_large"


class VersionNotSupportedError(GatewayError):
    """`gateway serve`: a request line of an HTTP version it does not speak (RFC 9110 15.6.6), `HTTP/2.0`, which
    httptools takes (and no other past 1.1): such a request would otherwise be served as HTTP/1.0."""

    status = 505
    default_code = "http_version_not_supported"
    error_type = "invalid_request_error"
    anthropic_type = "invalid_request_error"


class ClientClosedError(GatewayError):
    """The client disconnected before its answer: the work for it was cancelled."""

    status = 499
    default_code = "client_closed_request"
    error_type = "invalid_request_error"
    anthropic_type = "invalid_request_error"


CLIENT_CLOSED = ClientClosedError.status  # (nginx's status for a client that hung up: the ledger's, for a stream too)


class RateLimitError(GatewayError):
    status = 429
    default_code = "rate_limit_exceeded"
    error_type = "rate_limit_error"
    anthropic_type = "rate_limit_error"
    should_retry = True


def with_upstream(body: dict[str, object], status: int, kind: str | None) -> dict[str, object]:
    """An OpenAI-shaped error body with the provider's status and type beside the gateway's fields."""
    error = body["error"]
    assert isinstance(error, dict)
    error["upstream_status"] = status
    if kind:
        error["upstream_type"] = kind
    return body


# The longest message an `UpstreamError` relays (`upstream_error` cuts a provider's words to half of it first): a
# provider's 50 MB message would be relayed whole, after 23 s of redaction on the event loop.
UPSTREAM_MESSAGE_CHARS = 8192
UPSTREAM_TYPE_CHARS = 100
# A provider's statuses for its overload (`UpstreamError.overload`): HTTP's 503 and Anthropic's 529.
OVERLOAD_STATUSES = frozenset({503, 529})


class UpstreamError(GatewayError):
    """A provider answered with an error, or could not be reached.

    `upstream_status` is the provider's HTTP status (0 when no answer came); `retryable` says whether
    another attempt (same or next deployment) may succeed; `retry_after` is the provider's hint in seconds;
    `billable` says the provider got the whole request and gave no usable answer (it stalled, or the
    connection broke mid-answer), so it may still run it to the end and bill it. `native_event` is the
    provider's own in-stream error event (its data, credentials redacted), for a front-end that speaks the
    provider's API to relay as it came. `billed` is the usage of an answer the provider billed and the gateway
    could not use (a model's invalid function call): charged on the request's line, as a thrown-away answer is.
    `deployment_fault` says the provider refused the deployment itself, not the request (its key, its account's
    balance, its permissions, a model or deployment it does not have: `handler.wire.deployment_at_fault`): retryable
    on the next deployment, never by the client, whose same request fails the same way until the operator acts.
    `details` are Anthropic's own `error.details` (its `error_code`, redacted), for a client of its API
    (`ProviderRejectedError`).
    """

    status = 502
    default_code = "upstream_error"
    error_type = "upstream_error"
    anthropic_type = "api_error"
    billable_by_default: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        upstream_status: int = 0,
        retryable: bool = False,
        retry_after: float | None = None,
        code: str | None = None,
        param: str | None = None,
        upstream_type: str | None = None,
        outcome: str | None = None,
        headers: dict[str, str] | None = None,
        billable: bool | None = None,
    ) -> None:
        # The provider's words may quote the request's credentials back: never relay them.
        super().__init__(said_clipped(message, UPSTREAM_MESSAGE_CHARS), code=code, param=param, headers=headers)
        self.billable = self.billable_by_default if billable is None else billable
        self.upstream_status = upstream_status
        self.retryable = retryable
        self.retry_after = retry_after
        self.upstream_type = said_clipped(upstream_type, UPSTREAM_TYPE_CHARS, marked=False) if upstream_type else None
        self._outcome = outcome
        self.native_event: bytes | None = None
        self.billed: Usage | None = None
        # The gateway's own retries of this failure within its attempt, before it ended it (an embeddings request's
        # rate-limited batch, sent again alone: `Pipeline._other_batches`).
        self.retried = 0
        self.deployment_fault = False
        # A failure of this request alone on the deployment, which serves others (Groq's 413 of a request past its
        # tier's tokens a minute): failed over, never counted on the deployment's breaker.
        self.spares_breaker = False
        # The provider's own words, `code` and `param` (`upstream_error`): a rejected request's, for the client.
        self.said: str | None = None
        self.provider_code: str | None = None
        self.provider_param: str | None = None
        self.details: dict[str, object] | None = None

    def openai_body(self) -> dict[str, object]:
        return with_upstream(super().openai_body(), self.upstream_status, self.upstream_type)

    @property
    def rate_limited(self) -> bool:
        """The provider's rate limit (its 429), to be waited out: not its 429 refusing the deployment's account
        (OpenAI's `insufficient_quota`, out of credit until the operator pays), failed over as DeepSeek's 402 is."""
        return self.upstream_status == 429 and not self.deployment_fault

    @property
    def overload(self) -> bool:
        """The provider's word that it is overloaded, not that it limits this account's rate: HTTP's own "temporary
        overload" (503: Gemini's `UNAVAILABLE` "The model is overloaded", OpenAI's "The engine is currently
        overloaded", Bedrock's ServiceUnavailableException) or Anthropic's 529. Real overload, answered on Anthropic's
        API as Anthropic answers its own, a 529 `overloaded_error` (`UpstreamOverloadedError`), whole or in a stream
        alike: as an `api_error`, a provider's 503 would have Claude Code take an overloaded Gemini for a broken
        server and not switch to its fallback model, where a breaker the same 503s open is shed as an overload."""
        return self.upstream_status in OVERLOAD_STATUSES and not self.deployment_fault

    @property
    def overloaded(self) -> bool:
        """The provider's word that it has more to do than it takes, for now: its rate limit (`rate_limited`: not an
        `insufficient_quota`) or its overload (`overload`: a 503 or Anthropic's 529). A breaker such failures opened
        sheds as an overload (`Breakers.overloaded`); a 500's did not say so."""
        return self.rate_limited or self.overload

    @property
    def outcome(self) -> str:
        """How this attempt ended, for `x-gateway-route`: the provider's status, else what went wrong."""
        if self._outcome:
            return self._outcome
        return str(self.upstream_status) if self.upstream_status >= 400 else self.code


class ProviderRejectedError(InvalidRequestError):
    """A provider's own 400, 413 or 422, or a 404 about something the request names (not a deployment or model the
    provider does not have, which is failed over as the operator's): the request is the client's to fix. Its
    message, `code` and `param` as the provider gave them (an agent branches on them: Codex on
    `context_length_exceeded`, Claude Code matches Anthropic's `prompt is too long: N tokens > M maximum` whole),
    `invalid_request` where it gave no code, and the provider's status and type beside them in OpenAI's shape, as a
    provider's failure has.

    Anthropic's rejection with its `error.details` (an `error_code`) is relayed to a client of Anthropic's API as
    Anthropic gave it: its status, type and details (`coded_body`). Anthropic's SDK picks its error class by the
    status and the code together, and its thread helpers act on the code: Anthropic's 404 `thread_not_found` (a
    thread it no longer holds) is, without it, a 400 `invalid_request_error`, a plain `BadRequestError` on which the
    SDK's helpers give up where they would send the whole conversation again as a new thread."""

    def __init__(self, rejected: UpstreamError) -> None:
        super().__init__(rejected.said or rejected.message, code=rejected.provider_code, param=rejected.provider_param)
        self.upstream_status = rejected.upstream_status
        self.upstream_type = rejected.upstream_type
        self.details = rejected.details

    def status_for(self, anthropic: bool) -> int:
        if anthropic and self.details is not None:
            return self.upstream_status
        return super().status_for(anthropic)

    def openai_body(self) -> dict[str, object]:
        return with_upstream(super().openai_body(), self.upstream_status, self.upstream_type)

    def anthropic_body(self) -> dict[str, object]:
        if self.details is None:
            return super().anthropic_body()
        return coded_body(self, self.upstream_type, self.details)


class UpstreamRateLimitedError(UpstreamError):
    """Every candidate's provider rate-limited the request: a 429 with the providers' `retry-after`. Once the
    gateway's own waits and retries are spent (or it failed over), the client should not retry at once; where the
    gateway made the one attempt and did not retry it (the provider named no wait, or one past the gateway's own
    bound), the client may, after that wait, as it would against the provider."""

    status = 429
    default_code = "upstream_rate_limited"
    error_type = "rate_limit_error"
    anthropic_type = "rate_limit_error"


class UpstreamOverloadedError(UpstreamError):
    """Every provider the gateway tried said it is overloaded (`UpstreamError.overload`: a 503, Anthropic's 529
    `overloaded_error`), once the gateway's own retries were spent: real overload. Anthropic's API has a status of
    its own for it, and the Messages API answers with it, a 529 `overloaded_error`, as Anthropic would: Claude Code
    counts it as an overload (on the status or the type), and with `--fallback-model` switches to its fallback on it,
    also where a 502 does not make it switch (its retry watchdog, fast mode). OpenAI's API has none, so there it is
    the 502 `upstream_error` of any provider's failure, with the provider's status (503 or 529) and type inside."""

    anthropic_status = 529
    anthropic_type = "overloaded_error"


class UpstreamTimeoutError(UpstreamError):
    """No answer in time. Billable unless it ran out before the request went out (a connect timeout)."""

    status = 504
    default_code = "upstream_timeout"
    error_type = "timeout_error"
    anthropic_type = "timeout_error"
    billable_by_default = True


class SchemaViolationError(UpstreamError):
    default_code = "schema_violation"


class ServiceUnavailableError(GatewayError):
    """503. Retrying helps while the store is down or every breaker is open (they close again); it cannot
    while a provider has no key. On Anthropic's API an `api_error`: Claude Code switches to its fallback model on
    an `overloaded_error`, which only an overload is (`OverloadedError`)."""

    status = 503
    default_code = "no_deployment_available"
    error_type = "service_unavailable"
    anthropic_type = "api_error"
    RETRY_AFTER: ClassVar[dict[str, str]] = {
        "store_unavailable": "1",
        "no_deployment_available": "5",
        "server_shutting_down": "1",  # (another server, or this one restarted, takes the same request)
        "server_busy": "1",  # (`gateway serve` at `gateway.limits.connections`, which free as answers end)
    }

    def _retry_policy(self, retry: bool | None) -> None:
        wait = self.RETRY_AFTER.get(self.code)
        self.should_retry = retry if retry is not None else wait is not None
        if self.should_retry and wait is not None:
            self.headers.setdefault("retry-after", wait)


class OverloadedError(ServiceUnavailableError):
    """503 for an overload, the gateway's own (`server_busy`: `gateway serve` at `gateway.limits.connections`) or its
    deployments' (`no_deployment_available` with every breaker opened by its provider saying it was overloaded:
    `Router.shed`): on Anthropic's API its `overloaded_error`. Breakers opened by anything else are no overload: an
    `overloaded_error` makes Claude Code switch to its fallback model, which a model whose deployments answer 500s
    does not call for."""

    anthropic_type = "overloaded_error"
