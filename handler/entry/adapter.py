"""Mangum for the buffered function, with each invocation's ASGI scope built once, and an event it cannot read
raised as one (`UnreadableEventError`), for the handler to answer.

Mangum's handlers for API Gateway HTTP APIs (payload 1.0 and 2.0, `HTTPGateway`) and for ALB build the scope as a
property, and their `__call__` reads `self.scope["aws.event"]` to shape the answer: the whole scope, every request
header lowered and encoded, would be built a second time per invocation just to read the event back: about 6 µs of a
warm invocation's own work (`python -m tests.bench.lambda_warm 3000 responses`, three alternated pairs: 298, 296,
301 against 304, 302, 307 µs). These subclasses build it once; Mangum tries them before its own.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from mangum import Mangum
from mangum.handlers import ALB, APIGateway, HTTPGateway
from mangum.handlers.utils import handle_base64_response_body
from mangum.protocols.http import HTTPCycle, HTTPCycleState
from mangum.types import ASGI, LambdaContext, LambdaEvent, LambdaHandler, Message, Response, Scope

from handler.api.app import TextHeaders, answered_before_the_app, anthropic_path, presented_secret_hashes, route_path
from handler.errors import InvalidRequestError
from handler.redaction import path_clipped
from handler.telemetry.observability import RedactedText, logger


class UnreadableEventError(Exception):
    """An event that is no HTTP request the function can read: the Lambda console's default test event
    (`{"key1": "value1", ...}`), `{}`, `42`, `null`, a list, an event of API Gateway's or ALB's shape without the
    fields of a request, a body marked base64 that is not. Mangum raised a `RuntimeError` (or a `TypeError`, a
    `KeyError`, `binascii.Error`) out of the handler: an invocation error, behind API Gateway a bare 500. `handler`:
    the event's Mangum handler, where the event is a request whose body alone cannot be read (it shapes the answer as
    its source takes one: an ALB's `multiValueHeaders`, ...)."""

    def __init__(self, message: str, handler: LambdaHandler | None = None) -> None:
        super().__init__(message)
        self.handler = handler


NO_HTTP_REQUEST = (
    "the Lambda event is no HTTP request: the gateway takes API Gateway (HTTP API or REST API), Function URL and ALB "
    "events (samples: events/*.json, as `sam local invoke -e` sends them), not the Lambda console's default test event"
)

NO_UTF8 = "the event's path, headers or query string are not text UTF-8 can carry (a lone surrogate)"


# The characters of a method (RFC 9110's token).
TOKEN = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


class ReadOnce:
    """A Mangum handler whose scope is built once (see the module's docstring), and whose event, if no request can be
    read from it, raises `UnreadableEventError`: the handler's answer, not an invocation error."""

    @property
    def scope(self) -> Scope:
        """The scope, built at the first read (`_read_scope`) and kept: by hand, as `functools.cached_property` would
        keep it but without the lock it takes at that read (some 1,500 instructions a warm invocation)."""
        scope: Scope | None = self.__dict__.get("_scope")
        if scope is None:
            scope = self.__dict__["_scope"] = self._read_scope()
        return scope

    def _read_scope(self) -> Scope:
        try:
            scope: Scope = super().scope  # type: ignore[misc]
        except UnicodeEncodeError:  # (a header's or the query string's lone surrogate: Mangum encodes them)
            raise UnreadableEventError(NO_UTF8) from None
        except (LookupError, TypeError, AttributeError, ValueError):  # (a field missing, or not what it should be)
            raise UnreadableEventError(NO_HTTP_REQUEST) from None
        # Mangum takes the event's method as it comes: `["GET"]` reached Starlette's router, which raised on it (a
        # 500). The path and query string are held to the types the app reads them as; the headers need no look:
        # Mangum encodes each, which raises on anything but a string.
        # So is the client's address (`requestContext.http.sourceIp`, `identity.sourceIp`): a number or an object
        # there made the dashboard's sign-in, which reads it, a 500.
        method, path, client = scope["method"], scope["path"], scope.get("client")
        if not (
            isinstance(method, str)
            and method
            and not method.strip(TOKEN)
            and isinstance(path, str)
            and isinstance(scope["query_string"], bytes)
            and (client is None or isinstance(client[0], str | None))
        ):
            raise UnreadableEventError(NO_HTTP_REQUEST)
        # The path Mangum keeps as a str: one holding a lone surrogate (JSON's `"\ud800"`, which the Lambda runtime's
        # parser takes) would go to the app, whose request line cannot write it, and the answer would be Starlette's
        # plain-text 500. `gateway serve` never has one: uvicorn decodes the target's bytes.
        if not path.isascii():
            try:
                path.encode()
            except UnicodeEncodeError:
                raise UnreadableEventError(NO_UTF8) from None
        return scope

    @property
    def body(self) -> bytes:
        try:
            return super().body  # type: ignore[misc, no-any-return]
        except UnicodeEncodeError:  # (a JSON string's lone surrogate, `"\ud800"`: a str no UTF-8 carries)
            raise UnreadableEventError(
                "the event's body is not text UTF-8 can carry (a lone surrogate)",
                self,  # type: ignore[arg-type]
            ) from None
        except ValueError:  # (binascii.Error among them)
            raise UnreadableEventError(
                "the event's body is marked isBase64Encoded but is not base64",
                self,  # type: ignore[arg-type]
            ) from None
        except (TypeError, AttributeError):
            raise UnreadableEventError("the event's body is not a string", self) from None  # type: ignore[arg-type]


class HTTPGatewayOnce(ReadOnce, HTTPGateway):
    """API Gateway's HTTP APIs (payload 1.0 and 2.0) and Function URLs. An answer of payload 2.0 whose headers are
    `TextHeaders` returns their text as it is: Mangum's `_combine_headers_v2` would decode and lower the bytes they
    iterate as, giving back the same text (lowercase names, no two alike, no `set-cookie`, a `content-type`)."""

    def __call__(self, response: Response) -> dict[str, Any]:
        headers = response["headers"]
        if not isinstance(headers, TextHeaders) or self.event["version"] != "2.0":
            return super().__call__(response)
        text = headers.text
        body, encoded = handle_base64_response_body(response["body"], text, self.config["text_mime_types"])
        return {"statusCode": response["status"], "body": body, "headers": text, "isBase64Encoded": encoded}


class ALBOnce(ReadOnce, ALB):
    """An Application Load Balancer's. Its client is the address the balancer saw, which it appends to
    `X-Forwarded-For`: Mangum gives the whole header, whose first hops the client writes itself (a client sending
    `X-Forwarded-For: 10.0.0.1` would be `10.0.0.1, <its address>`, and one changing it each time a new client to
    count each time: `POST /dashboard/sign-in`'s failures)."""

    def _read_scope(self) -> Scope:
        scope = super()._read_scope()
        forwarded, port = scope["client"]
        scope["client"] = (forwarded.rpartition(",")[2].strip(), port)
        return scope


class APIGatewayOnce(ReadOnce, APIGateway):
    """API Gateway's REST APIs (v1)."""


MANGUM_LOG = logging.getLogger("mangum.http")
ACCESS_LINE = RedactedText("%s %s %s")  # method, path (each `path_clipped`) and status


class OneCycle(HTTPCycle):
    """Mangum's cycle of one request, without what a buffered request never needs: its queue (the request's one
    message, then, once the answer is whole, the disconnect), its body buffer (a list of the answer's parts), a
    logger looked up per invocation and a second task (the loop's own runs the app). The same messages, answer and
    log line as Mangum's (`tests/unit/handler/entry/test_adapter.py`), but for the method and path in the line,
    clipped and redacted as `gateway serve`'s request line has them (whole, a 60,000-character path would be a 60
    KB line, and a key pasted into a path logged); about 8 µs less of a warm invocation."""

    def __init__(self, scope: Scope, body: bytes) -> None:
        self.scope = scope
        self.state = HTTPCycleState.REQUEST
        self.logger = MANGUM_LOG
        self.request: Message | None = {"type": "http.request", "body": body, "more_body": False}
        self.parts: list[bytes] = []
        self.answered: asyncio.Future[None] | None = None

    def __call__(self, app: ASGI) -> Response:
        asyncio.get_event_loop().run_until_complete(self.run(app))
        # (A HEAD answer carries no body, as uvicorn writes it for `gateway serve`: Mangum's carried the GET's.)
        return {
            "status": self.status,
            "headers": self.headers,
            "body": b"" if self.scope["method"] == "HEAD" else self.body,
        }

    async def receive(self) -> Message:
        request, self.request = self.request, None
        if request is not None:
            return request
        if self.state is not HTTPCycleState.COMPLETE:  # (as Mangum's queue: nothing more until the answer is whole)
            self.answered = self.answered or asyncio.get_running_loop().create_future()
            await self.answered
        return {"type": "http.disconnect"}  # (a message of its own, as Mangum's: the app may keep or change it)

    async def send(self, message: Message) -> None:
        if self.state is HTTPCycleState.RESPONSE and message["type"] == "http.response.body":
            self.parts.append(message.get("body", b""))
            if not message.get("more_body", False):
                self.body = b"".join(self.parts)
                self.state = HTTPCycleState.COMPLETE
                if self.answered is not None and not self.answered.done():
                    self.answered.set_result(None)
                if self.logger.isEnabledFor(logging.INFO):  # (the clipping and redaction only for a line written)
                    # (Its path without the secret of the key the request presents: the request's own line,
                    # beside it in the log, names the key's id.)
                    path = path_clipped(self.scope["path"], hashes=presented_secret_hashes(self.scope))
                    method = path_clipped(self.scope["method"])
                    self.logger.info(ACCESS_LINE, method, path, self.status)  # (redacted once: `RedactedText`)
        else:
            await super().send(message)  # the answer's start, and what Mangum refuses


class GatewayMangum(Mangum):
    def __call__(self, event: LambdaEvent, context: LambdaContext) -> dict[str, Any]:
        handler = self.infer(event, context)  # (the lifespan is off: `lambda_adapter`)
        return handler(OneCycle(handler.scope, handler.body)(self.app))

    def infer(self, event: LambdaEvent, context: LambdaContext) -> LambdaHandler:
        if not isinstance(event, dict):  # (`42`, `null`, a list: Mangum's tests of a dict's keys raised on them)
            raise UnreadableEventError(NO_HTTP_REQUEST)
        try:
            return super().infer(event, context)
        except (RuntimeError, LookupError, TypeError):  # (RuntimeError: Mangum's word for an event none takes)
            raise UnreadableEventError(NO_HTTP_REQUEST) from None


def lambda_adapter(app: ASGI | Any) -> Mangum:
    """The app under Mangum as the buffered function runs it: no lifespan (Mangum would run it every invocation).
    An event it cannot read raises `UnreadableEventError`."""
    return GatewayMangum(app, lifespan="off", custom_handlers=[HTTPGatewayOnce, ALBOnce, APIGatewayOnce])


def unreadable_answer(event: Any, exc: UnreadableEventError) -> dict[str, Any]:
    """The 400 answer to an event no HTTP request can be read from, in the gateway's error shape (Anthropic's for a
    request to its API whose body alone could not be read) and in the answer form of the event's source (API
    Gateway's where the source is unknown); logged with the event's top-level field names (or its JSON type), never
    its values: the body is the client's prompt."""
    fields = sorted(str(name) for name in event)[:20] if isinstance(event, dict) else type(event).__name__
    error = InvalidRequestError(str(exc))
    source = exc.handler
    scope = source.scope if source is not None else None
    anthropic = scope is not None and anthropic_path(
        route_path(scope), any(name == b"anthropic-version" for name, _ in scope["headers"])
    )
    request_id, headers, body = answered_before_the_app(error, anthropic)
    logger.warning(f"unreadable Lambda event: {exc}", extra={"event_fields": fields, "request_id": request_id})
    if source is not None:
        answer = {"status": error.status, "headers": [(k.encode(), v.encode()) for k, v in headers], "body": body}
        return source(answer)  # type: ignore[arg-type]
    return {"statusCode": error.status, "headers": dict(headers), "body": body.decode(), "isBase64Encoded": False}
