"""The Starlette application: routes, request parsing, error rendering."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.datastructures import State
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from handler import schemas
from handler.api.answer_size import AnswerLimit, deliverable
from handler.api.request_fields import EMBEDDINGS, chat_completions_fields, refuse_unknown
from handler.api.route_table import COUNTED_PATHS, Endpoints, Handler, direct_lane, handlers, starlette_routes
from handler.api.streaming import (
    DONE,
    EventStream,
    answer_json,
    sse_chunk,
    sse_chunk_usage_null,
    sse_json,
    stream_head,
    until_client_leaves,
)
from handler.errors import (
    AuthenticationError,
    ClientClosedError,
    GatewayError,
    InvalidRequestError,
    NotFoundError,
    RequestTooLargeError,
    ServiceUnavailableError,
    StrictParamsError,
    UnsupportedEncodingError,
    UpstreamError,
)
from handler.pipeline.attribution import parse_tags, session_id
from handler.pipeline.budgets import SETTLE_BY
from handler.pipeline.exchange import Controls, Exchange, shut_down_before
from handler.pipeline.gateway import Gateway
from handler.pipeline.keys import hash_secret, hop_address, kept_unkeyed, network, own_secret_hashes, split_key
from handler.pipeline.pipeline import Pipeline
from handler.pipeline.routing import RouteControls
from handler.ports import STORE_DEADLINE, KeyRecord, StoreDeadlineError, StoreError
from handler.redaction import echoed, names_clipped, path_clipped, scrub, unkeyed
from handler.schemas import ChatRequest, PlainCompletion
from handler.telemetry import prometheus
from handler.telemetry.observability import TRACING_ON, observe, observe_failure
from handler.wire import interrupted

if TYPE_CHECKING:  # (the chunk model is built on a stream's first use: a cold start pays for none)
    from handler.pipeline.chunk_stream import ChunkStream
    from handler.schemas import ChatCompletionChunk

logger = logging.getLogger("gateway")
M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
JSON = "application/json"
MAX_JSON_DEPTH = 128  # well under the 254 levels orjson can write back out (see refused_bodies.nested_deeper_than)


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = scrub(payload if isinstance(payload, bytes) else orjson.dumps(payload))
    return Response(body, status_code=status, headers=headers, media_type=JSON)


def answer_response(payload: bytes, headers: dict[str, str]) -> Response:
    """A proxied request's whole answer (`payload`, its JSON), scrubbed as `json_response`'s, with its headers kept as
    text until they are sent (`TextHeaders`)."""
    return TextHeadersResponse(scrub(payload), headers)


class TextHeaders:
    """An answer's headers as the text they are made as, iterated as ASGI's `(name, value)` byte pairs (Latin-1, as
    Starlette encodes them) wherever they are read so (`gateway serve`'s uvicorn). The buffered Lambda function
    returns them as text (`handler.entry.adapter`): made bytes by Starlette only for Mangum to make text of them
    again, a proxied answer's 17 headers would cost a warm invocation about 6 µs."""

    __slots__ = ("text",)

    def __init__(self, text: dict[str, str]) -> None:
        self.text = text  # (lowercase ASCII names and ASCII values: `TextHeadersResponse`)

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        return ((name.encode("latin-1"), value.encode("latin-1")) for name, value in self.text.items())

    def __len__(self) -> int:
        return len(self.text)


class TextHeadersResponse(Response):
    """A 200 JSON answer on the direct lane, whose start message carries its headers as `TextHeaders`: the same names,
    values and order as Starlette's `Response` makes (`content-length`, `content-type` last). Headers that are not
    lowercase ASCII are made bytes at once, as Starlette makes them (a value Latin-1 cannot carry raises here, as it
    raises there), and so are they where `raw_headers` is read (a cookie set on the answer goes with them)."""

    media_type = JSON

    def __init__(self, body: bytes, headers: dict[str, str]) -> None:
        self.status_code = 200
        self.background = None
        self.body = body
        text = {**headers}
        if "content-length" not in text:
            text["content-length"] = str(len(body))
        text.setdefault("content-type", JSON)
        names = "".join(text)
        self._raw: list[tuple[bytes, bytes]] | None = None
        self.text_headers = text
        # (`lower()` compared, not `islower()`: on ASCII text it runs at C speed, where `islower()` looks up each of
        # the 250-odd characters' Unicode cases, some 17,000 instructions an answer.)
        if not ((names + "".join(text.values())).isascii() and names.lower() == names):
            self.init_headers(headers)

    @property
    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        if self._raw is None:
            self._raw = list(TextHeaders(self.text_headers))
        return self._raw

    @raw_headers.setter
    def raw_headers(self, raw: list[tuple[bytes, bytes]]) -> None:
        self._raw = raw

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        headers = TextHeaders(self.text_headers) if self._raw is None else self._raw
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


# The scope's key of its headers by raw name (`first_headers`).
FIRST_HEADERS = "gateway.first_headers"


def first_headers(scope: Any) -> dict[bytes, bytes]:
    """The request's headers by raw name (lowercase, as ASGI servers and Mangum give them), each its first value: made
    once a request, in C (a dict of the list reversed, so that the first of a repeated name is the one kept), where
    the headers every proxied request reads (`header`'s three, the deadline's, the controls' absence) each went
    through the list in Python, some 10,000 instructions a warm invocation."""
    index: dict[bytes, bytes] | None = scope.get(FIRST_HEADERS)
    if index is None:
        index = scope[FIRST_HEADERS] = dict(reversed(scope["headers"]))
    return index


def header(request: Request, name: bytes) -> str | None:
    """The request's first `name` header (a raw name: lowercase), as `request.headers.get` reads it, without the
    `Headers` it builds and the name it lowers and encodes per look-up (`first_headers`)."""
    value = first_headers(request.scope).get(name)
    return None if value is None else value.decode("latin-1")


def anthropic_path(path: str, versioned: bool) -> bool:
    """Whether a request to `path` speaks Anthropic's API: on its routes, and on the model routes when it carries
    `anthropic-version` (`versioned`, as Anthropic's SDK sends it)."""
    return path.startswith("/v1/messages") or (versioned and path.startswith("/v1/models"))


def anthropic_caller(request: Request) -> bool:
    """`anthropic_path` of an app's request."""
    return anthropic_path(route_path(request.scope), "anthropic-version" in request.headers)


def unread_x_api_key(path: str) -> str:
    """Why a key sent as `x-api-key` was not read on `path` (which is not echoed, nor the key: a path may hold what a
    client mistook for an id). "Send a bearer key" told a client that had sent its key that it had sent none."""
    if path.startswith("/v1/models"):
        return (
            "x-api-key is read on /v1/models only with an anthropic-version header (Anthropic's list shape, as "
            "Anthropic's SDK asks for it): add anthropic-version: 2023-06-01, or send the key as Authorization: "
            "Bearer <key>"
        )
    return "this route does not read x-api-key: send the key as Authorization: Bearer <key>"


def error_response(request: Request, exc: GatewayError, observed: int | None = None) -> Response:
    """`exc` as the answer, in the error shape of the caller's API, with the request's headers; observed (its log
    line, its metrics) with its status, or `observed`: the status of the request's ledger line, where it differs."""
    anthropic = anthropic_caller(request)
    state = request.scope.get("state", {})
    ex: Exchange | None = state.get("exchange")
    lineage: list[KeyRecord] | None = ex.lineage if ex is not None else state.get("lineage")  # (once the key was known)
    # (Before it was: the secret of the key the request presents, which a path may hold, or a name it gives.)
    hashes = own_secret_hashes(lineage) if lineage else presented_secret_hashes(request.scope)
    exc.without_own_secrets(hashes)
    body = exc.anthropic_body() if anthropic else exc.openai_body()
    status = exc.status_for(anthropic)
    headers = dict(exc.headers)
    if ex is not None:
        headers = {**ex.headers(), **headers}
        observe(ex, observed or status, stream=ex.stream, code=exc.code)
    else:
        # (A path may hold what a client mistook for an id: a whole key, where `/admin/keys/{id}` wants its id.)
        path = route_path(request.scope)
        observe_failure(
            state.get("request_id"),
            path_clipped(path, hashes=hashes),
            status,
            exc.code,
            key_id=lineage[0].id if lineage else None,
            counted=request.scope["method"] == "POST" and path in COUNTED_PATHS,
            started=state.get("started"),
        )
    if state.get("request_id"):
        headers["x-request-id"] = state["request_id"]
        if anthropic:
            headers["request-id"] = state["request_id"]  # where Anthropic's SDK reads it (`_request_id`)
    headers["x-should-retry"] = "true" if exc.should_retry else "false"
    return json_response(body, status, headers)


def presented_secret_hashes(scope: Any) -> tuple[str, ...]:
    """The hash of the secret of the gateway key a request presents (`Authorization: Bearer`, `x-api-key`), where
    the key was not read (an unknown route, a refusal before it): its error and its log lines are said without it,
    as those of a request whose key was read are without its lineage's."""
    headers = first_headers(scope)
    hashes = []
    for name in (b"authorization", b"x-api-key"):
        value = headers.get(name)
        parts = split_key(value.decode("latin-1").rpartition(" ")[2]) if value else None
        if parts is not None:
            hashes.append(hash_secret(parts[1]))
    return tuple(hashes)


class Api:
    """Route handlers bound to one gateway."""

    def __init__(self, gateway: Gateway, answer_limit: AnswerLimit | None = None) -> None:
        self.gateway = gateway
        self.pipeline = Pipeline(gateway)
        self.answer_limit = answer_limit  # the buffered Lambda function's (handler/api/answer_size.py)
        settings = gateway.config.gateway
        self.max_body = settings.max_body_bytes
        self.trusted = [network(n) for n in settings.trusted_proxies]  # (a mapped range as the IPv4 one it maps)
        self.capture_content = gateway.tracer is not None and gateway.tracer.capture_content
        self.lifetime_s = settings.timeouts.request  # every request's bound, whatever deadline its client set
        # (for `x-gateway-strict`: OpenAI's fields and those of the configured providers' own dialects)
        self.chat_fields = chat_completions_fields(type(a).chat_fields for a in gateway.router.adapters.values())
        self.embedding_fields = EMBEDDINGS.union(*(type(a).embedding_fields for a in gateway.router.adapters.values()))

    # --- request helpers --------------------------------------------------------------------

    async def body(self, request: Request, max_bytes: int | None = None) -> bytes:
        """The request's body, refused (413) past `max_bytes` (a route whose bodies are small by nature: a larger
        one is not read), or past the gateway's `max_body_bytes`."""
        limit = self.max_body if max_bytes is None else min(max_bytes, self.max_body)
        declared = header(request, b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise InvalidRequestError("content-length is not a number") from None
            if size > limit:
                raise RequestTooLargeError(f"request body of {size} bytes exceeds the {limit}-byte limit")
        body = await self._receive_body(request, limit)
        if self.capture_content:
            request.scope["state"]["body"] = body  # the prompt, for the request's span
        return body

    async def _receive_body(self, request: Request, limit: int) -> bytes:
        """The body from the ASGI messages, as `Request.stream` reads them but without an async generator (its
        hooks and finalizer cost a proxied request more than the loop itself); kept as the request's `_body`, as
        `Request.body` keeps it, for any later reader. Its time is bounded by `gateway serve`'s protocol, which
        ends the read past `gateway.timeouts.request_body` or the request's deadline (`BODY_LATE`): a timer here
        would cost every request's body one, where the protocol arms one only for a body a read left unfinished."""
        if hasattr(request, "_body"):
            return request._body
        receive = request.receive
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # http.disconnect: gone before its body was whole; nobody
                request._is_disconnected = True  # reads the answer, and it is not the gateway's fault
                late: GatewayError | None = request.scope.get("state", {}).get(BODY_LATE)
                if late is not None:  # (or the server ended the read: the answer it wrote, observed as such)
                    raise late
                raise ClientClosedError("the client closed the connection before its request body was sent")
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > limit:
                raise RequestTooLargeError(f"request body exceeds the {limit}-byte limit")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        request._stream_consumed = True
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        request._body = body
        return body

    def json(self, payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        return json_response(payload, status, headers)

    async def parse(
        self, request: Request, model: type[M], *, empty_ok: bool = False, max_bytes: int | None = None
    ) -> M:
        return self.validate(model, await self.parse_json(request, empty_ok=empty_ok, max_bytes=max_bytes), request)

    async def parse_json(
        self, request: Request, *, empty_ok: bool = False, max_bytes: int | None = None
    ) -> dict[str, Any]:
        """The request's JSON object body, checked for size (`body`), type and depth but not yet validated."""
        declared = header(request, b"content-type")
        content_type = (JSON if declared is None else declared).split(";", 1)[0].strip().lower()
        if content_type and content_type != JSON and not content_type.endswith("+json"):
            # (Echoed as `echoed` has it: a token templated into the header came back whole; edgerev37.)
            raise InvalidRequestError(f"content-type must be application/json, not {echoed(content_type)}")
        coding = header(request, b"content-encoding")
        if coding is not None and coding.strip().lower() not in ("", "identity"):
            raise UnsupportedEncodingError(
                f"request bodies in content-encoding {echoed(coding.strip())} are not accepted; send the JSON uncoded",
                headers={"accept-encoding": "identity"},
            )
        raw = await self.body(request, max_bytes)
        if empty_ok and not raw.strip():
            raw = b"{}"
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequestError(f"the request body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise InvalidRequestError("the request body must be a JSON object")
        # Nesting needs an opening bracket per level: a body with few cannot be too deep (no walk).
        if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH:
            from handler.api.refused_bodies import nested_deeper_than

            if nested_deeper_than(data, MAX_JSON_DEPTH):
                raise InvalidRequestError(f"the request body nests deeper than {MAX_JSON_DEPTH} levels")
        return data

    def validate(self, model: type[M], data: dict[str, Any], request: Request | None = None) -> M:
        """`data` as `model`, or the client's 400 naming the first problem. A large body (`request`'s, as read) is
        validated with every list stopping at its first bad item (`refused_bodies.fail_fast_validator`)."""
        try:
            if request is not None and len(getattr(request, "_body", b"")) > FAIL_FAST_BYTES:
                from handler.api.refused_bodies import fail_fast_validator

                return fail_fast_validator(model).validate_python(data)  # type: ignore[no-any-return]
            return model.model_validate(data)
        except ValidationError as exc:
            from handler.api.refused_bodies import invalid_from_validation

            raise invalid_from_validation(exc, data) from None
        except RecursionError:
            raise InvalidRequestError("the request body is nested too deeply") from None

    def client_ip(self, request: Request) -> str | None:
        peer = request.client.host if request.client else None
        if from_web_adapter(request):
            # The Function URL's request context (with the caller's address) is in this header, replacing any the
            # caller sent.
            source = lwa_source_ip(request.headers.get("x-amzn-request-context"))
            if source:
                return source
        if not self.trusted or peer is None:
            return peer
        # Every line of the header, in order: a proxy may add a line of its own rather than extend the client's
        # (HAProxy does), and the lines are one list (RFC 9110 5.3), whose first is the client's own word.
        lines = request.headers.getlist("x-forwarded-for")
        hops = [h.strip() for line in lines for h in line.split(",") if h.strip()]
        # Each hop read as `hop_address` reads it: a dual-stack socket's IPv4 peer is `::ffff:127.0.0.1`, which no
        # IPv4 range holds (an IPv4 proxy would never be trusted there: the proxy's own address taken for the
        # client's), and a hop with a port (`203.0.113.7:51234`) no address at all (an allowed client refused).
        chain = [*hops, peer]
        address = None
        for hop in reversed(chain):
            address = hop_address(hop)
            if address is None:
                return hop
            if not any(address in net for net in self.trusted):
                return str(address)
        return str(address)

    async def authenticate(
        self, request: Request, *, allow_x_api_key: bool = False, administers: bool = False
    ) -> KeyRecord:
        """The request's key, its lineage kept for `lineage`. `administers`: the route uses the key's admin powers
        or mints a key under it, which the key's previous secret, in a rotation's grace, may not (403 `admin_only`:
        `KeyService.authenticate_lineage`)."""
        token = None
        auth = header(request, b"authorization")
        if auth:
            scheme, _, value = auth.partition(" ")
            if scheme.lower() == "bearer":
                # (An empty one, a script's unset variable, is none: it hid an `x-api-key` sent beside it; edgerev37.)
                token = value.strip() or None
        if token is None and allow_x_api_key:
            token = request.headers.get("x-api-key")
            if not token:  # an Anthropic client: its SDK and Claude Code send `x-api-key`
                raise AuthenticationError("missing API key: send x-api-key: <key> or Authorization: Bearer <key>")
        elif token is None and "x-api-key" in request.headers:
            raise AuthenticationError(unread_x_api_key(route_path(request.scope)))
        lineage = await self.gateway.keys.authenticate_lineage(token, self.client_ip(request), administers)
        # (The request's state written as the dict it is: Starlette's `request.state`, a `State` made per request
        # whose attributes go through `__setattr__` and `__getattr__`, cost a proxied request 2 µs in these four.)
        request.scope.setdefault("state", {})["lineage"] = lineage
        return lineage[0]

    @staticmethod
    def lineage(request: Request) -> list[KeyRecord]:
        """The authenticated key and its ancestors, nearest first (set by `authenticate`)."""
        lineage: list[KeyRecord] = request.scope["state"]["lineage"]
        return lineage

    def exchange(
        self,
        request: Request,
        key: KeyRecord,
        model: str,
        inbound_dropped: list[str] | None = None,
        *,
        stream: bool | None = False,
        anthropic: bool = False,
        extra: Mapping[str, Any] | None = None,
        known: frozenset[str] | None = None,
    ) -> Exchange:
        """The request's exchange, once its key may use `model` and its controls are read. Under `x-gateway-strict`,
        a field of `extra` (the body's fields its model does not declare) not in `known` (its API's fields,
        `handler.api.request_fields`) is the client's 400, as is a field the translation left out (`inbound_dropped`).
        """
        lineage = self.lineage(request)
        self.gateway.keys.check_model(lineage, model, self.gateway.router.spec)
        controls = parse_controls(request, lineage)
        if controls.strict and known is not None:
            refuse_unknown(extra, known)
        if inbound_dropped and controls.strict:
            named = names_clipped(inbound_dropped)  # (the client's names, as the header would carry them)
            raise StrictParamsError(f"cannot honour: {', '.join(named)} (x-gateway-strict is on)", param=named[0])
        state = request.scope["state"]
        ex = Exchange(
            state["request_id"],
            key,
            model,
            controls,
            inbound_dropped=inbound_dropped or [],
            lineage=lineage,
            stream=bool(stream),
            anthropic=anthropic,  # (the Messages routes say so: no header scan on every request)
            arrived=state.get("started"),  # (the deadline runs from there)
            lifetime_s=self.lifetime_s,
        )
        state["exchange"] = ex
        tracer = self.gateway.tracer
        if tracer is not None:
            # (The key's and its ancestors' secrets as hashes only, and only where content is captured: `captured`.)
            own_secrets = own_secret_hashes(ex.lineage) if self.capture_content else ()
            ex.trace = tracer.begin(request.headers, route_path(request.scope), state.get("body"), own_secrets)
        return ex

    # --- routes (the read routes: handler/api/info_routes.py) -----------------------------------

    async def chat_completions(self, request: Request) -> Response:
        key = await self.authenticate(request)
        req = await self.parse(request, ChatRequest)
        if req.stream_options is not None and not req.stream:  # (as OpenAI refuses it; null is no option)
            raise InvalidRequestError(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.", param="stream_options"
            )
        ex = self.exchange(request, key, req.model, stream=req.stream, extra=req.model_extra, known=self.chat_fields)
        if req.stream:
            stream, watch = await stream_head(request, self.pipeline.chat_stream(req, ex), ex)
            include_usage = bool(req.stream_options and req.stream_options.get("include_usage"))
            return EventStream(openai_events(stream, include_usage), stream_headers(ex), watch)
        # (Untraced, the answer is written back as it came where it can be: `PlainCompletion`.)
        completion = await until_client_leaves(request, self.pipeline.chat(req, ex, plain=ex.trace is None), ex)
        if isinstance(completion, PlainCompletion):
            return self.answered(ex, answer_response(completion.json(), ex.headers()))
        return self.answered(ex, answer_response(answer_json(completion), ex.headers()), completion)

    async def embeddings(self, request: Request) -> Response:
        key = await self.authenticate(request)
        req = await self.parse(request, schemas.EmbeddingsRequest)
        ex = self.exchange(request, key, req.model, extra=req.model_extra, known=self.embedding_fields)
        limit = self.answer_limit
        if limit is not None:
            # An answer known to be past it: refused before anything is sent, once the model and the key's scope are
            # (a model it may not use was told to send at most 6 inputs a request: found by review, embrev37).
            limit.check_embeddings(req)
        result = await until_client_leaves(request, self.pipeline.embeddings(req, ex), ex)
        response = answer_response(result.model_dump_json(exclude_none=True).encode(), ex.headers())
        if limit is not None:
            limit.learn(req, result, len(response.body))
        return self.answered(ex, response)

    def answered(self, ex: Exchange, response: Response, parsed: object = None) -> Response:
        """`response`, a proxied request's whole answer, observed (handed to its trace when traced, with `parsed`, the
        answer as the route built it, for its finish reasons); on the buffered Lambda function, one past what it can
        return is a 413 instead (`AnswerLimit.check_answer`)."""
        limit = self.answer_limit
        if limit is not None:
            limit.check_answer(ex, response.body)
        if ex.trace is not None:
            ex.trace.answered(response.body, parsed)
        observe(ex, 200)
        return response


def ends_a_choice(chunk: ChatCompletionChunk) -> bool:
    return any(choice.finish_reason for choice in chunk.choices)


def stream_headers(ex: Exchange) -> dict[str, str]:
    return {**ex.headers(), "cache-control": "no-cache", "x-accel-buffering": "no"}


async def openai_events(stream: ChunkStream, include_usage: bool) -> AsyncIterator[bytes]:
    """The client's SSE body: chunks, the cost on the last data event, `[DONE]`; an error after the first byte,
    the stream's close and the request's observation as for every other front-end (`guarded`).

    With `stream_options.include_usage` the last event is OpenAI's extra chunk of no choices, with the usage, and
    the cost beside it. Without it OpenAI sends no chunk of no choices, and clients index `choices[0]` of every
    chunk (OpenAI's own streaming example does): the chunks that end a choice are held until the upstream ends,
    and the last of them carries the cost."""
    from handler.pipeline.passthrough import guarded  # (imported with the first stream: its module's docstring)

    async def events() -> AsyncGenerator[bytes]:
        write = sse_chunk_usage_null if include_usage else sse_chunk
        ending: list[ChatCompletionChunk] = []
        async for batch in stream.batches():  # what one upstream read brought: one write to the client
            if not include_usage:
                going: list[ChatCompletionChunk] = []
                for chunk in batch:
                    (ending if ends_a_choice(chunk) else going).append(chunk)
                batch = going
            if batch:
                yield b"".join(write(chunk) for chunk in batch)
        cut = stream.cut
        if cut:
            stream.failed(UpstreamError.status)  # its ledger line, log line and metrics say so
        await stream.complete()
        if cut:  # (billed and settled above)
            if ending:
                yield b"".join(sse_chunk(chunk) for chunk in ending)
            raise interrupted()
        final = stream.final_chunk(include_usage)
        if include_usage or not ending:
            yield sse_json(final)
            return
        last = ending.pop()
        tail = {name: final[name] for name in ("cost", "schema_violation") if name in final}
        spliced = last.model_dump_json().encode()[:-1] + b"," + orjson.dumps(tail)[1:]
        yield b"".join(sse_chunk(chunk) for chunk in ending) + b"data: " + spliced + b"\n\n"

    async def failed(error: GatewayError) -> bytes:
        return sse_json(stream.error_chunk(error, include_usage))

    async with contextlib.aclosing(guarded(stream, events(), failed)) as relayed:
        async for data in relayed:
            yield data
    yield DONE


# Past this many bytes, a body is validated by `refused_bodies.fail_fast_validator`'s validator for its model: a list a
# client can make long stops at its first bad item, which the 400 names. pydantic's own goes on: 1 MB of `messages`
# that are 500,000 `1`s make an error each and hold the event loop 3-5 s.
FAIL_FAST_BYTES = 16 * 1024


BEHIND_WEB_ADAPTER = bool(os.environ.get("AWS_LWA_INVOKE_MODE") or os.environ.get("AWS_LWA_PORT"))
LOOPBACK = {"127.0.0.1", "::1"}
# What a Lambda invocation keeps back from its deadline for settling and answering.
LAMBDA_MARGIN_MS = 1500
# What it keeps back from its deadline for spooling a settlement the store has not taken by then, logging it and
# answering: the store's attempts end there (`budgets.SETTLE_BY`). A spool line is one fsynced append, its log line
# one write: milliseconds.
SETTLE_MARGIN_MS = 500
# How long the streaming function's last bytes wait for their settlements (`SettledBeforeTheEnd`); one the store has
# not taken by then is spooled (and counted in `settlements_spooled`, which the template alarms on), and the response
# ends. `SHUTDOWN_SETTLE_S`'s bound, for the same reasons: more than the meter's five attempts take against a store
# that refuses at once, so such a store still gets them all. Bounded only by the invocation's deadline (900 s less
# `SETTLE_MARGIN_MS`), a stalled DynamoDB held a stream's end 77 s after its last event, and a throttling one 11.5 s.
LAST_BYTE_SETTLE_S = 5.0
LAST_BYTE_SPOOLED = f"the store did not take it within {LAST_BYTE_SETTLE_S:g} s of the response's end"
# How long a buffered invocation's answer waits for the answers of admissions that ran on past a request's deadline
# (`Gateway.awaiting`: a 503's, or an earlier invocation's not yet answered), whose releases are then written before
# it goes. Its settlements run before it anyway, but a whole late admission waited for would hold the 503 for
# the admission's own timeouts (15 s); not waited for at all, one answered after the invocation would be released only
# with the environment's next invocation, or never (an environment reclaimed), its reservation holding the key's
# budget until it expires. An answer late by a throttled retry's backoff comes within it.
LATE_ANSWER_WAIT_S = 0.5


def from_web_adapter(request: Request) -> bool:
    """Whether a request came from the Lambda Web Adapter (the streaming function): it connects from loopback, and
    only then are the invocation's headers it adds (`x-amzn-request-context`, `x-amzn-lambda-context`) believed."""
    if not BEHIND_WEB_ADAPTER:
        return False
    client = request.scope.get("client")
    return client is not None and client[0] in LOOPBACK


def adopt_invocation_trace(scope: Any) -> None:
    """Behind the Web Adapter, with tracing on: the invocation's X-Ray trace (the adapter's `x-amzn-trace-id`, believed
    from the adapter itself, on loopback) made the process's `_X_AMZN_TRACE_ID`, where the X-Ray SDK reads a Lambda
    invocation's trace. Lambda's Python runtime sets it per invocation; behind the adapter none runs (uvicorn was
    started once, at init), so every subsegment was discarded, each with a warning in the function's log. An
    environment serves one invocation at a time."""
    if not TRACING_ON:
        return
    client = scope.get("client")
    trace = first_headers(scope).get(b"x-amzn-trace-id")
    if trace and client is not None and client[0] in LOOPBACK:
        os.environ["_X_AMZN_TRACE_ID"] = trace.decode("latin-1")


def lwa_source_ip(raw: str | None) -> str | None:
    if not raw:
        return None
    try:
        context = orjson.loads(raw)
        source = context.get("http", {}).get("sourceIp") or context.get("identity", {}).get("sourceIp")
        return str(ipaddress.ip_address(source))
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
        return None


def lambda_time_left_s(scope: Any) -> float | None:
    """On Lambda: the invocation's remaining time (the request's ASGI `scope`'s), less a margin, so a slow upstream
    ends in our 504 with its settlement written, not in the function being killed. Mangum puts the context in the
    scope; behind the Web Adapter it is the `x-amzn-lambda-context` header (the invocation's `deadline`, in epoch
    milliseconds), believed from the adapter itself only, on loopback."""
    context = scope.get("aws.context")
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    if remaining is None:
        if BEHIND_WEB_ADAPTER:
            request = Request(scope)
            if from_web_adapter(request):
                return web_adapter_time_left_s(request.headers.get("x-amzn-lambda-context"))
        return None
    try:
        left = float(remaining())
    except (TypeError, ValueError):
        return None
    gives_up = api_gateway_ms_left(scope.get("aws.event"))
    if gives_up is not None and gives_up < left:
        left = gives_up
    return max(0.1, (left - LAMBDA_MARGIN_MS) / 1000)


# How long API Gateway waits on the function from the moment it received the request: an HTTP API 30 s (its
# integration's most), a REST API 29 s. Counted from then, a cold start's init included, which Lambda counts apart
# from the function's Timeout (it has 10 s of its own): the invocation's time left alone would end an invocation
# that followed an init of over 2.5 s after API Gateway had answered its bare 503.
HTTP_API_WAITS_MS = 30_000
REST_API_WAITS_MS = 29_000
# An event's time of arrival is believed only this far in the past: the sample events (`sam local invoke -e
# events/...`) carry a fixed one.
ARRIVAL_BELIEVED_MS = 60_000


def api_gateway_ms_left(event: Any) -> float | None:
    """The milliseconds before API Gateway gives up on the request of a buffered invocation's `event` (its
    `requestContext.timeEpoch`, an HTTP API's, or `requestTimeEpoch`, a REST API's), or None: another source (a
    function URL waits as long as the function's Timeout; a load balancer has no such bound here), or a time of arrival
    not to be believed."""
    context = event.get("requestContext") if isinstance(event, dict) else None
    if not isinstance(context, dict):
        return None
    arrived, waits = context.get("timeEpoch"), HTTP_API_WAITS_MS
    if arrived is None:
        arrived, waits = context.get("requestTimeEpoch"), REST_API_WAITS_MS
    domain = context.get("domainName")
    if isinstance(arrived, bool) or not isinstance(arrived, int | float):
        return None
    if isinstance(domain, str) and ".lambda-url." in domain:
        return None
    age = time.time() * 1000 - arrived
    if not 0 <= age <= ARRIVAL_BELIEVED_MS:
        return None
    return waits - age


def web_adapter_time_left_s(raw: str | None) -> float | None:
    """The time left before the invocation's deadline in the Web Adapter's Lambda context, less the margin."""
    left = web_adapter_ms_left(raw)
    return None if left is None else max(0.1, (left - LAMBDA_MARGIN_MS) / 1000)


def web_adapter_ms_left(raw: str | None) -> float | None:
    """The milliseconds left before the invocation's deadline in the Web Adapter's Lambda context."""
    if not raw:
        return None
    try:
        context = orjson.loads(raw)
        deadline = context.get("deadline", context.get("deadline_ms"))
        if isinstance(deadline, bool) or not isinstance(deadline, int | float):
            return None
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return float(deadline - time.time() * 1000)


def settle_by(scope: Any) -> float | None:
    """On Lambda: the event loop's time by which the invocation's settlements must be durable, its deadline less
    `SETTLE_MARGIN_MS` (from Mangum's context, or the Web Adapter's, believed as `lambda_time_left_s` believes it).
    None elsewhere: a server has no deadline to be killed at."""
    context = scope.get("aws.context")
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    left: float | None = None
    if remaining is not None:
        try:
            left = float(remaining())
        except (TypeError, ValueError):
            return None
    elif BEHIND_WEB_ADAPTER:
        request = Request(scope)
        if from_web_adapter(request):
            left = web_adapter_ms_left(request.headers.get("x-amzn-lambda-context"))
    return None if left is None else asyncio.get_running_loop().time() + (left - SETTLE_MARGIN_MS) / 1000


def late_answers_by(by: float | None) -> float | None:
    """The loop's time by which an invocation ends its wait for late admissions' answers (`Gateway.answered_within`):
    its settlements' (`settle_by`, `SETTLE_BY`) less `SETTLE_MARGIN_MS` again, left to the releases they spawn to be
    written (or spooled) in time. None: no deadline."""
    return None if by is None else by - SETTLE_MARGIN_MS / 1000


NO_CONTROLS = Controls()


def arrival_deadline_s(scope: Any) -> float | None:
    """The request's deadline, in seconds from its arrival: `x-gateway-deadline-ms`, and on Lambda the invocation's
    time left less the margin (`lambda_time_left_s`), whichever is sooner. Read as the request arrives (`GatewayApp`),
    so that every store call it makes ends by then (`STORE_DEADLINE`), its key lookup first: a key looked up before
    the deadline is read would let a store that never answers hold the request for three attempts of 5 s, on
    Lambda until the function is killed. A header that is no positive number sets none here; `parse_controls`
    answers it with a 400 once the key is known."""
    left = lambda_time_left_s(scope)
    value = first_headers(scope).get(b"x-gateway-deadline-ms")
    if value is None:
        return left
    try:
        asked = float(value) / 1000
    except ValueError:
        return left
    if 0 < asked < float("inf"):
        return asked if left is None or asked < left else left
    return left


def request_deadline_s(request: Request) -> float | None:
    """The deadline `GatewayApp` read as the request arrived (`arrival_deadline_s`); read now for a request that did
    not come through it."""
    state = request.scope.get("state")
    if state is not None and "deadline_s" in state:
        deadline: float | None = state["deadline_s"]
        return deadline
    return arrival_deadline_s(request.scope)


def parse_controls(request: Request, lineage: list[KeyRecord] | None = None) -> Controls:
    """The request's controls. With the `lineage` of the key it was sent with, its tags and session are kept without
    the secret of any of those keys (`keys.without_own_secret`): on the ledger line beside their ids, it would be the
    key."""
    if CONTROL_HEADERS.isdisjoint(first_headers(request.scope)):
        # Most requests set no control: one pass over the raw names instead of a lookup of each control (a set's
        # `isdisjoint` of them: 0.4 µs where `any` over a generator took 1.0).
        left = request_deadline_s(request)
        return NO_CONTROLS if left is None else Controls(deadline_s=left)
    headers = control_headers(request.scope["headers"])
    fallbacks_header = headers.get("x-gateway-fallbacks")
    fallbacks = None
    if fallbacks_header is not None:
        value = fallbacks_header.strip()
        fallbacks = [] if value.lower() == "none" else [m.strip() for m in value.split(",") if m.strip()]
        if not fallbacks and value.lower() != "none":
            # (`""`, `,`: a client's template whose variable was unset. Read as `none`, it would drop the configured
            # fallbacks unsaid, and the client get the first deployment's failure.)
            raise InvalidRequestError(
                "x-gateway-fallbacks names no model: give model names separated by commas, or `none` for no fallbacks",
                param="x-gateway-fallbacks",
            )
    _number(headers.get("x-gateway-deadline-ms"), "x-gateway-deadline-ms", positive=True)  # (its 400; the value:)
    max_cost = _number(headers.get("x-gateway-max-cost-usd"), "x-gateway-max-cost-usd", positive=False)
    kept = unkeyed if not lineage else partial(kept_unkeyed, lineage=lineage)
    return Controls(
        route=RouteControls(
            fallbacks=fallbacks,
            provider=headers.get("x-gateway-provider") or None,
            region=headers.get("x-gateway-region") or None,
        ),
        deadline_s=request_deadline_s(request),
        max_cost_usd=max_cost,
        strict=_flag(headers.get("x-gateway-strict"), "x-gateway-strict"),
        enforce_schema=_flag(headers.get("x-gateway-enforce-schema"), "x-gateway-enforce-schema"),
        tags=parse_tags(headers.get("x-gateway-tags"), kept=kept),
        session=session_of(headers, kept),
    )


# The agent session a client names: Claude Code's header, Codex's (`session-id`; `session_id` in other releases of
# its source), and a generic one.
SESSION_HEADERS = (b"x-claude-code-session-id", b"session-id", b"session_id", b"x-session-id")


# The request controls `parse_controls` reads (an `x-gateway-*` name it does not read is left alone, as before).
CONTROL_HEADERS = frozenset(
    (
        b"x-gateway-fallbacks",
        b"x-gateway-provider",
        b"x-gateway-region",
        b"x-gateway-deadline-ms",
        b"x-gateway-max-cost-usd",
        b"x-gateway-strict",
        b"x-gateway-enforce-schema",
        b"x-gateway-tags",
        *SESSION_HEADERS,
    )
)


def control_headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """The request's `CONTROL_HEADERS` lines, one value a name. Reading only a header's first line would
    drop a second unsaid (a cost cap a proxy appended after the client's own unread): lines that differ
    are a 400 naming the header, as `anthropic-version`'s are, and as a cap, a deadline or a flag is whose two values
    come joined on one line (RFC 9110, 5.3, makes both forms the same); identical lines are one. Each value is the
    text the client wrote (`header_text`)."""
    headers: dict[str, str] = {}
    for name, value in raw:
        if name in CONTROL_HEADERS:
            header, text = name.decode("latin-1"), header_text(value)
            if headers.setdefault(header, text) != text:
                raise InvalidRequestError(f"the {header} header must have one value", param=header)
    return headers


def header_text(value: bytes) -> str:
    """A header's value as the client wrote it: curl and Go send its text as UTF-8 bytes, which Starlette decodes as
    Latin-1 (`x-gateway-deadline-ms: é`'s 400 would echo `'Ã©'`, a session `café` be kept as `cafÃ©`, and a
    fallback named `modèle` be no model of the gateway's); bytes that are no UTF-8 as Latin-1, as Starlette reads
    them."""
    try:
        return value.decode()
    except UnicodeDecodeError:
        return value.decode("latin-1")


def session_of(headers: dict[str, str], kept: Callable[[str], str] = unkeyed) -> str | None:
    """The first of `SESSION_HEADERS` among the request's `control_headers`, as `session_id` takes it (a 400 for one
    it refuses)."""
    for name in SESSION_HEADERS:
        value = headers.get(name.decode())
        if value:
            return session_id(value, name.decode(), kept)
    return None


def _flag(raw: str | None, name: str) -> bool:
    """A `true`/`false` control (either case); anything else is a 400: `x-gateway-strict: 1` taken as off would
    let the parameters it means to refuse go on dropped."""
    value = (raw or "").strip().lower()
    if value in ("", "false"):
        return False
    if value == "true":
        return True
    raise InvalidRequestError(f"{name} must be true or false, not {echoed(raw or '')}", param=name)


def _number(raw: str | None, name: str, *, positive: bool) -> float | None:
    if raw is None:
        return None
    try:
        # (In ASCII digits: read as the client wrote it, `１０００` is a number to Python, and none to the deadline
        # read from the header's bytes as the request arrived, `arrival_deadline_s`.)
        value = float(raw) if raw.isascii() else None
    except ValueError:
        value = None
    if value is None:
        raise InvalidRequestError(f"{name} must be a number, not {echoed(raw)}", param=name)
    if value != value or value in (float("inf"), float("-inf")) or value < 0 or (positive and value == 0):
        raise InvalidRequestError(f"{name} must be a {'positive' if positive else 'non-negative'} number", param=name)
    return value


def answered_before_the_app(
    error: GatewayError, anthropic: bool, request_id: str | None = None
) -> tuple[str, list[tuple[str, str]], bytes]:
    """An error answered before the app sees the request (`gateway serve`'s 431 and malformed heads, a Lambda event
    no request can be read from), or in its place (`request_id`: the app's, `BODY_LATE`): a request id of its own
    where none is given, as every answer has, its headers and its body in the error shape of the caller's API
    (`anthropic`: Anthropic's, with its `request-id` too)."""
    request_id = request_id or new_request_id()
    headers = [("content-type", JSON), ("x-request-id", request_id)]
    if anthropic:
        headers.append(("request-id", request_id))  # (where Anthropic's SDK reads it)
    headers.extend(error.headers.items())  # (a 503 `server_busy`'s `retry-after`)
    headers.append(("x-should-retry", "true" if error.should_retry else "false"))
    return request_id, headers, orjson.dumps(error.anthropic_body() if anthropic else error.openai_body())


# Where `gateway serve`'s protocol leaves the error it answered a request whose body was not whole in time with
# (`gateway.timeouts.request_body`, or its deadline: handler/entry/server.py): the app's read of the body then ends,
# and the request is observed with that error, not as a client's leaving (499).
BODY_LATE = "body_late"


def new_request_id() -> str:
    """A request id; the client's `x-request-id` is not trusted: it could collide in the ledger, whose
    writes are idempotent by request id."""
    return "req_" + os.urandom(16).hex()  # 128 random bits, as uuid4 has


def route_path(scope: Any) -> str:
    """The path the routes see: without the root path a proxy or Mangum may mount the app under."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


ErrorHandler = Callable[[Request, Exception], Awaitable[Response]]


class GatewayApp:
    """The ASGI app: every request gets an id; the proxied routes (the POSTs the route table marks
    `direct`: chat, messages, embeddings, responses) go straight to their handlers, everything else
    through Starlette.

    The direct lane saves what Starlette's router and its two exception middlewares cost a request
    (matching ~20 routes, three wrapped `send`s); its errors go to the same handlers, found the same
    way (the exception's class, then its bases), and an unexpected one is re-raised after its 500 is
    sent, as Starlette does, so the server logs it.

    The Starlette app is built (`build`, given the app's `state`) on the first request off the direct lane, or
    the server's lifespan: its router compiles a pattern per route (about 1.5 ms of a Lambda cold start whose
    first invocation is a chat completion, which never needs them)."""

    def __init__(
        self, build: Callable[[State], Starlette], direct: dict[str, Handler], errors: dict[type, ErrorHandler]
    ) -> None:
        self.state = State()
        self.direct = direct
        self.errors = errors
        self._build = build
        self._starlette: Starlette | None = None

    @property
    def starlette(self) -> Starlette:
        if self._starlette is None:
            self._starlette = self._build(self.state)
        return self._starlette

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.starlette(scope, receive, send)
            return
        request_id = new_request_id()
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["started"] = time.perf_counter()  # (a request refused before its exchange is timed from here)
        deadline_s = state["deadline_s"] = arrival_deadline_s(scope)
        if BEHIND_WEB_ADAPTER:
            adopt_invocation_trace(scope)
        if deadline_s is None:
            await self._serve(scope, receive, send, request_id)
            return
        # Every store call of the request ends by its deadline (its key lookup, admission, stored responses).
        bound = STORE_DEADLINE.set(asyncio.get_running_loop().time() + deadline_s)
        try:
            await self._serve(scope, receive, send, request_id)
        finally:
            STORE_DEADLINE.reset(bound)

    async def _serve(self, scope: Any, receive: Any, send: Any, request_id: str) -> None:
        handler = self.direct.get(route_path(scope)) if scope["method"] == "POST" else None
        if handler is None:
            try:
                await self.starlette(scope, receive, with_answer_headers(send, request_id, scope))
            except asyncio.CancelledError:
                if not self.state.gateway.stopping or scope["state"].get("answering"):
                    raise
                await self._shut_down_before(Request(scope, receive), send)
            return
        request = Request(scope, receive)
        try:
            response = await handler(request)
        except Exception as exc:
            handle = next(self.errors[cls] for cls in type(exc).__mro__ if cls in self.errors)
            await (await handle(request, exc))(scope, receive, send)
            if handle is self.errors[Exception]:
                raise
            return
        except asyncio.CancelledError:
            if not self.state.gateway.stopping:
                raise
            await self._shut_down_before(request, send)
            return
        await response(scope, receive, send)

    @staticmethod
    async def _shut_down_before(request: Request, send: Any) -> None:
        """The server stopped, and cut this request past its grace, before its answer began (a client that left is
        not cut so: its watch makes the cancellation its 499): answered the gateway's 503 in its API's error shape,
        saying what it is charged (`shut_down_before`), where uvicorn wrote a plain-text 500 with no request id. Its
        ledger line is a client's that left (status 499), and so are its log line and metrics."""
        asyncio.current_task().uncancel()  # type: ignore[union-attr]  # (answered, not cancelled: nothing else cut it)
        ex: Exchange | None = request.scope["state"].get("exchange")
        item = ex.ledger_item if ex is not None else None
        answer = error_response(request, shut_down_before(ex), item.status if item is not None else None)
        await answer(request.scope, request.receive, send)


# On the answer to a request a key was read from, unless it says otherwise: only the client may keep it, and only as
# long as it reads it. Such an answer is that key's (its report, budget, models, keys): a shared cache (a CDN, Varnish)
# keeps none of a request sent with `Authorization` (RFC 9111 3.5), but knows nothing of `x-api-key`, and stored
# `GET /v1/usage`'s answer by its URL, for the next tenant asking the same URL with its own key.
KEYED_CACHE_CONTROL = (b"cache-control", b"private, no-store")


def with_answer_headers(send: Any, request_id: str, scope: Any) -> Any:
    """`send`, adding the request id to a response that does not carry it yet, and `KEYED_CACHE_CONTROL` to one that
    names no `cache-control` of its own, where the request's key was read (`Api.authenticate`); marking `scope`'s
    state once the response has begun."""

    async def send_with_headers(message: Any) -> None:
        if message["type"] == "http.response.start":
            state = scope["state"]
            state["answering"] = True  # (a request cut by a shutdown from now on is cut, not answered)
            headers = message.get("headers", [])
            if not isinstance(headers, list):  # (ASGI's headers are any iterable of pairs: `TextHeaders`, a tuple)
                headers = list(headers)
            message["headers"] = headers
            if not any(name == b"x-request-id" for name, _ in headers):
                headers.append((b"x-request-id", request_id.encode()))
            if "lineage" in state and not any(name == b"cache-control" for name, _ in headers):
                headers.append(KEYED_CACHE_CONTROL)
        await send(message)

    return send_with_headers


class Settling:
    """`app`, then the settlements it left, within the same loop run (a buffered Lambda invocation: its answer
    is not sent before they are written, and a second loop run would cost more than the wait itself). They are
    deferred while the app runs and written after it, in this task (`Gateway.settle_now`); if the app raises,
    they become tasks, which the Lambda handler drains. Each is durable by the invocation's deadline less
    `SETTLE_MARGIN_MS` (`settle_by`): written, or else spooled, before Lambda can kill the environment. Where an
    admission ran on past a request's deadline (`Gateway.awaiting`), its answer is waited for first, at most
    `LATE_ANSWER_WAIT_S`: a written one's release joins the settlements, as does that of one an earlier invocation
    left, answered while the environment was frozen.

    With an `answer_limit` (the buffered Lambda function's, its app's too), the answer's messages are held until the
    app is done (Mangum holds the whole answer anyway), and one past the limit is replaced by a 413 (`deliverable`)."""

    def __init__(self, app: GatewayApp, gateway: Gateway, answer_limit: AnswerLimit | None = None) -> None:
        self.app = app
        self.gateway = gateway
        self.answer_limit = answer_limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        gateway = self.gateway
        deferred: list[Coroutine[Any, Any, None]] = []
        gateway.deferred = deferred
        limit = self.answer_limit
        held: list[Any] = []

        async def hold(message: Any) -> None:
            held.append(message)

        by = SETTLE_BY.set(settle_by(scope))  # (the tasks of an app that raised take it along)
        try:
            try:
                await self.app(scope, receive, send if limit is None else hold)
            except BaseException:
                gateway.deferred = None
                for work in deferred:
                    gateway.spawn(work)
                for message in held:
                    await send(message)
                raise
            if gateway.awaiting:  # (their releases deferred with the rest, written under this invocation's deadline)
                await gateway.answered_within(LATE_ANSWER_WAIT_S, late_answers_by(SETTLE_BY.get()))
            gateway.deferred = None
            if limit is not None:
                for message in deliverable(limit, scope, held):
                    await send(message)
            await gateway.settle_now(deferred)
            if gateway.background:
                await gateway.drain()
        finally:
            SETTLE_BY.reset(by)


class SettledBeforeTheEnd:
    """`app` behind the Lambda Web Adapter (the streaming function): an invocation ends with its response's last
    byte, and the environment is then frozen, or reclaimed, with whatever had not run. Each response's last
    message waits for the settlements left to write (the answer's ledger line, its budget's charge), so none is
    lost with the environment or left to land only on the next invocation's thaw. The client has every byte of the
    answer but the end of the stream by then; what it waits is the store's one write, or, past `LAST_BYTE_SETTLE_S`
    (or the invocation's deadline less `SETTLE_MARGIN_MS`, `settle_by`, if sooner), the spool's: a settlement is
    never lost, but a store that stalls or throttles must not hold every stream's end for its whole retry budget.
    Within the same bound it waits first for the answers of admissions that ran on past a request's deadline
    (`Gateway.awaiting`, a 503's), then for the releases they spawn (`Gateway.settle_late_within`): left behind, a
    written one would be released only at the next thaw, or never, its reservation holding the key's budget and
    its minute's counts until it expires. One still unanswered at the bound is left to run; the response ends."""

    def __init__(self, app: GatewayApp, gateway: Gateway) -> None:
        self.app = app
        self.gateway = gateway

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        gateway = self.gateway

        async def send_when_settled(message: Any) -> None:
            if (
                message["type"] == "http.response.body"
                and not message.get("more_body", False)
                and (gateway.unsettled or gateway.awaiting)
            ):
                await self.settled()
            await send(message)

        by = SETTLE_BY.set(settle_by(scope))  # (the settlements' tasks and callbacks take it along)
        try:
            await self.app(scope, receive, send_when_settled)
        finally:
            if gateway.unsettled or gateway.awaiting:
                # A response that never sent its end (its client left mid-stream): the server ends it, and the
                # invocation with it, once the app returns.
                await self.settled()
            SETTLE_BY.reset(by)

    async def settled(self) -> None:
        """The late admissions' answers, then the settlements, within `LAST_BYTE_SETTLE_S` in all."""
        by = late_answers_by(SETTLE_BY.get())
        await self.gateway.settle_late_within(LAST_BYTE_SETTLE_S, LAST_BYTE_SPOOLED, by)


def serving_app(gateway: Gateway) -> GatewayApp | SettledBeforeTheEnd:
    """The app a server runs (`gateway serve`, and behind the Lambda Web Adapter, where each response's end
    waits for its settlements)."""
    app = create_app(gateway)
    return SettledBeforeTheEnd(app, gateway) if BEHIND_WEB_ADAPTER else app


def create_app(gateway: Gateway, answer_limit: AnswerLimit | None = None) -> GatewayApp:
    """The ASGI app for one gateway; build the gateway once per process and pass it in. `answer_limit`: the most an
    answer may weigh (the buffered Lambda function's, handler/api/answer_size.py); none by default."""
    prometheus.configure(gateway.config.models, gateway.config.providers)
    api = Api(gateway, answer_limit)

    async def on_gateway_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, GatewayError)
        return error_response(request, exc)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        # The method as the path: clipped and redacted (a server that takes any token, as the Lambda function's
        # events do, passes a method of 100 KB, which the answer echoed whole).
        message = f"{path_clipped(request.method)} {path_clipped(request.url.path)}: {exc.detail}"
        error: GatewayError
        if exc.status_code == 404:
            error = NotFoundError(message, code="not_found", headers=dict(exc.headers or {}))
        else:
            error = InvalidRequestError(message, code="method_not_allowed", headers=dict(exc.headers or {}))
            error.status = exc.status_code  # type: ignore[misc]
        return error_response(request, error)

    async def on_store_error(request: Request, exc: Exception) -> Response:
        # A store outage outside metering (key lookups, stored responses, usage, admin): 503, not an "unhandled" 500;
        # also one that did not answer by the request's deadline: the store failed, not the upstream (no 504).
        logger.warning("store unavailable: %s", exc, extra={"path": path_clipped(request.url.path)})
        what = "the gateway's store (keys, budgets, stored responses)"
        why = (
            "did not answer within the request's deadline" if isinstance(exc, StoreDeadlineError) else "is unavailable"
        )
        error = ServiceUnavailableError(f"{what} {why}; retry shortly", code="store_unavailable")
        return error_response(request, error)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        logger.exception("unhandled error", extra={"path": path_clipped(request.url.path)})
        error = GatewayError("the gateway failed to handle this request; it has been logged")
        return error_response(request, error)

    errors: dict[type, ErrorHandler] = {
        GatewayError: on_gateway_error,
        HTTPException: on_http_error,
        StoreError: on_store_error,
        Exception: on_unexpected,
    }

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        gateway.start()  # (uvicorn runs the lifespan; Lambda's entry point calls start itself)
        observability = gateway.config.observability
        metrics = None
        if observability.metrics_port is not None:
            metrics = await prometheus.serve(observability.metrics_host, observability.metrics_port)
        # A worker of `gateway serve --workers N`: its figures go to the server's folder, for every worker's scrape.
        sharing = await prometheus.share(os.environ.get(prometheus.SHARED_ENV))
        yield
        if metrics is not None:
            metrics.close()
            await metrics.wait_closed()
        # The settlements still lingering for company are written, not left behind; those the store does not take
        # within `SHUTDOWN_SETTLE_S` are spooled, so a store that never answers cannot hold the exit.
        await gateway.settle_before_exit()
        # Then what those settlements left unspent of other regions' budgets goes home, within its own bound.
        await gateway.return_leases_before_exit()
        await gateway.spooled.close()
        # Last, the store: closed, it gives back the unused slices of the shared counters, within its own bound.
        await gateway.close_store_before_exit()
        if gateway.tracer is not None:
            await asyncio.to_thread(gateway.tracer.close)  # the spans still queued go out
        await prometheus.unshare(sharing)  # last: the figures of every request, and of spans dropped at the close

    table = handlers(Endpoints(api))

    def build(state: State) -> Starlette:
        starlette = Starlette(routes=starlette_routes(table), exception_handlers=errors, lifespan=lifespan)
        # A path with a slash too many (`/v1/chat/completions/`) is an unknown path, 404 `not_found`. Starlette
        # redirected it (a bare 307, to an address built from the client's Host header and the socket's scheme),
        # and the SDKs follow redirects: the prompt went again to the Host the client named, over `http://` behind a
        # proxy that ends TLS.
        starlette.router.redirect_slashes = False
        starlette.state = state
        return starlette

    app = GatewayApp(build, direct_lane(table), errors)
    app.state.gateway = gateway
    return app
