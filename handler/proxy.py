"""The request pipeline shared by every proxied route: plan, admit, try deployments, cost, settle.

Routes parse their own API into the internal form and render the outcome in their own API; what
happens in between is here and knows no provider by name.
"""

from __future__ import annotations

import asyncio
import math
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from handler.budgets import Meter, Reservation
from handler.errors import (
    CostLimitError,
    GatewayError,
    InvalidRequestError,
    SchemaViolationError,
    ServiceUnavailableError,
    StrictParamsError,
    UpstreamError,
    UpstreamTimeoutError,
)
from handler.gateway import Gateway
from handler.observability import span
from handler.ports import BuiltRequest, KeyRecord, LedgerItem, StreamParser
from handler.pricing import Cost, cost_of, estimate_prompt_tokens, price_for, worst_case_usd
from handler.routing import Attempt, RouteControls
from handler.schema_check import enforce, schema_of, violation
from handler.schemas import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatRequest,
    EmbeddingsRequest,
    EmbeddingsResponse,
    Usage,
)
from handler.upstream import UpstreamResponse
from handler.usage import usd

T = TypeVar("T")
CLIENT_CLOSED = 499
# Upstream statuses that mean the client's request itself is wrong: answered as 400, not 502.
CLIENT_FAULT_STATUSES = frozenset({400, 404, 413, 422})


@dataclass(frozen=True, slots=True)
class Controls:
    """The client's request-control headers, parsed."""

    route: RouteControls = field(default_factory=RouteControls)
    deadline_s: float | None = None
    max_cost_usd: float | None = None
    strict: bool = False
    enforce_schema: bool = False


@dataclass(slots=True)
class Exchange:
    """One client request on its way through the gateway: who, what, where it went, how long it took."""

    request_id: str
    key: KeyRecord
    model: str
    controls: Controls
    started: float = field(default_factory=time.perf_counter)
    route: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    inbound_dropped: list[str] = field(default_factory=list)
    store_ms: float = 0.0
    upstream_ms: float = 0.0
    attempt: Attempt | None = None
    reservation: Reservation | None = None
    cost: Cost | None = None
    budget_remaining: float | None = None
    wasted_usd: float = 0.0
    limit_headers: dict[str, str] = field(default_factory=dict)

    def headers(self) -> dict[str, str]:
        """The gateway's headers for this answer, as far as they are known."""
        headers = {"x-request-id": self.request_id}
        if self.attempt is not None:
            target = self.attempt.target
            headers["x-gateway-provider"] = target.provider
            headers["x-gateway-model"] = target.model
            headers["x-gateway-region"] = target.region
        if self.route:
            headers["x-gateway-route"] = ", ".join(self.route)
        if self.dropped or self.inbound_dropped:
            # The names come from the client's body: percent-encoded, a header value stays Latin-1 with no CR/LF.
            names = [*self.inbound_dropped, *self.dropped]
            headers["x-gateway-dropped-params"] = ",".join(urllib.parse.quote(n, safe="") for n in names)
        if self.cost is not None:
            provider = self.cost.provider_usd
            headers["x-gateway-cost-usd"] = "unknown" if provider is None else usd(provider)
            headers["x-gateway-fee-usd"] = usd(self.cost.fee_usd)
        if self.budget_remaining is not None:
            headers["x-gateway-budget-remaining-usd"] = usd(self.budget_remaining)
        headers.update(self.limit_headers)
        total = (time.perf_counter() - self.started) * 1000
        gateway = max(0.0, total - self.store_ms - self.upstream_ms)
        headers["server-timing"] = (
            f"gateway;dur={gateway:.3f}, store;dur={self.store_ms:.3f}, upstream;dur={self.upstream_ms:.3f}"
        )
        return headers


class Pipeline:
    """Runs chat and embeddings requests against the gateway's deployments."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.meter = Meter(gateway.store, gateway.keys, gateway.config.gateway.reservation_ttl_seconds)
        self.fee = gateway.config.gateway.fee

    # --- chat -------------------------------------------------------------------------------

    async def chat(self, req: ChatRequest, ex: Exchange) -> ChatCompletion:
        """A non-streaming chat completion."""
        plan = self.gateway.router.plan(req.model, ex.controls.route)
        await self._admit(ex, plan, req)

        async def accept(attempt: Attempt, response: UpstreamResponse) -> ChatCompletion:
            completion = attempt.adapter.chat_response(await response.read(), req, attempt.target)
            schema = self._enforced_schema(req, attempt, ex)
            if schema is not None and completion.choices:
                try:
                    enforce(schema, completion.choices[0].message.content)
                except SchemaViolationError:
                    # The provider billed this answer even though it is thrown away.
                    self._waste(ex, attempt, completion.usage)
                    raise
            return completion

        def build(attempt: Attempt) -> BuiltRequest:
            return attempt.adapter.chat_request(req, attempt.target, stream=False)

        try:
            completion = await self._deadline(ex, self._failover(ex, plan, build, accept))
        except BaseException:
            await self._settle(ex, None, 0)
            raise
        usage = completion.usage or Usage()
        await self._settle(ex, usage, 200, background=True)
        return completion

    async def chat_stream(self, req: ChatRequest, ex: Exchange) -> ChunkStream:
        """A streaming chat completion whose first chunks have arrived (failover is over by then)."""
        plan = self.gateway.router.plan(req.model, ex.controls.route)
        await self._admit(ex, plan, req)

        async def accept(attempt: Attempt, response: UpstreamResponse) -> ChunkStream:
            stream = ChunkStream(self, ex, req, attempt, response)
            await stream.prime()
            return stream

        def build(attempt: Attempt) -> BuiltRequest:
            return attempt.adapter.chat_request(req, attempt.target, stream=True)

        try:
            return await self._deadline(ex, self._failover(ex, plan, build, accept))
        except BaseException:
            await self._settle(ex, None, 0)
            raise

    # --- a provider's own API, relayed -------------------------------------------------------

    async def relay(
        self,
        req: ChatRequest,
        ex: Exchange,
        plan: list[Attempt],
        build: Callable[[Attempt], BuiltRequest],
        accept: Callable[[Attempt, UpstreamResponse], Awaitable[T]],
    ) -> T:
        """Admit `req` (the request in the internal form, for the estimate and the output cap) for `plan`,
        then try its deployments with the caller's `build` and `accept`: a route that sends a provider its
        own API's body. The caller settles the answer (`settle`); a failure is settled here."""
        await self._admit(ex, plan, req)
        try:
            return await self._deadline(ex, self._failover(ex, plan, build, accept))
        except BaseException:
            await self._settle(ex, None, 0)
            raise

    async def settle(self, ex: Exchange, usage: Usage | None, status: int = 200) -> None:
        """Cost and settle a relayed answer (once; in the background, after `ex.cost` is set)."""
        await self._settle(ex, usage, status, background=True)

    def _enforced_schema(self, req: ChatRequest, attempt: Attempt, ex: Exchange) -> dict[str, Any] | None:
        if not (ex.controls.enforce_schema or attempt.spec.enforce_schema):
            return None
        return schema_of(req)

    def _waste(self, ex: Exchange, attempt: Attempt, usage: Usage | None) -> None:
        if usage is not None:
            price = price_for(attempt.model, attempt.spec, attempt.target.model)
            ex.wasted_usd += cost_of(usage, price, self.fee).total_usd or 0.0

    # --- embeddings -------------------------------------------------------------------------

    async def embeddings(self, req: EmbeddingsRequest, ex: Exchange) -> EmbeddingsResponse:
        plan = self.gateway.router.plan(req.model, ex.controls.route, kind="embedding")
        texts = [req.input] if isinstance(req.input, str) else req.input
        tokens = sum(len(t.encode()) // 2 + 1 if isinstance(t, str) else len(str(t)) for t in texts)
        await self._admit_tokens(ex, plan, tokens, 0)

        async def accept(attempt: Attempt, response: UpstreamResponse) -> EmbeddingsResponse:
            return attempt.adapter.embeddings_response(await response.read(), req, attempt.target)

        def build(attempt: Attempt) -> BuiltRequest:
            return attempt.adapter.embeddings_request(req, attempt.target)

        try:
            result = await self._deadline(ex, self._failover(ex, plan, build, accept))
        except BaseException:
            await self._settle(ex, None, 0)
            raise
        usage = Usage.of(result.usage.prompt_tokens, 0)
        await self._settle(ex, usage, 200, background=True)
        return result

    # --- shared steps -----------------------------------------------------------------------

    async def _admit(self, ex: Exchange, plan: list[Attempt], req: ChatRequest) -> None:
        prompt = estimate_prompt_tokens(req)
        limit = req.output_limit()
        worst_output = 0
        for attempt in plan:
            cap = attempt.spec.max_output_tokens or self.gateway.config.gateway.default_max_output_tokens
            worst_output = max(worst_output, min(limit, cap) if limit else cap)
        await self._admit_tokens(ex, plan, prompt, worst_output * (req.n or 1))
        if ex.reservation is not None and ex.reservation.budget_key is not None and (not limit or limit > worst_output):
            # The reservation covers `worst_output` tokens; the upstream must not be allowed more, or a
            # provider's own (larger) default could spend past what was reserved.
            if req.max_tokens is not None and req.max_completion_tokens is None:
                req.max_tokens = worst_output
            else:
                req.max_completion_tokens = worst_output

    async def _admit_tokens(self, ex: Exchange, plan: list[Attempt], prompt: int, output: int) -> None:
        worst: float | None = 0.0
        for attempt in plan:
            price = price_for(attempt.model, attempt.spec, attempt.target.model)
            case = worst_case_usd(prompt, output, price, self.fee)
            worst = None if case is None or worst is None else max(worst, case)
        if ex.controls.max_cost_usd is not None:
            if worst is None:
                raise CostLimitError("the cost of this model is unknown, so x-gateway-max-cost-usd cannot be honoured")
            if worst > ex.controls.max_cost_usd:
                raise CostLimitError(
                    f"worst-case cost ${worst:.6f} exceeds x-gateway-max-cost-usd ${ex.controls.max_cost_usd:.6f}"
                )
        reservation = await self.meter.admit(ex.key, ex.model, worst, prompt + output, ex.request_id)
        ex.reservation = reservation
        ex.limit_headers = reservation.headers
        ex.store_ms += reservation.store_ms

    async def _deadline(self, ex: Exchange, work: Awaitable[T]) -> T:
        if ex.controls.deadline_s is None:
            return await work
        remaining = ex.controls.deadline_s - (time.perf_counter() - ex.started)
        try:
            async with asyncio.timeout(max(0.0, remaining)):
                return await work
        except TimeoutError:
            raise UpstreamTimeoutError(
                f"the deadline of {ex.controls.deadline_s * 1000:.0f} ms (x-gateway-deadline-ms, or the Lambda "
                "invocation's remaining time) passed before an answer"
            ) from None

    async def _failover(
        self,
        ex: Exchange,
        plan: list[Attempt],
        build: Callable[[Attempt], BuiltRequest],
        accept: Callable[[Attempt, UpstreamResponse], Awaitable[T]],
    ) -> T:
        last: UpstreamError | None = None
        retries = self.gateway.config.gateway.max_retries_per_deployment
        breakers = self.gateway.router.breakers
        for position, attempt in enumerate(plan):
            label = attempt.target.label
            if position < len(plan) - 1 and not breakers.allow(label):
                ex.route.append(f"{label}=breaker-open")
                continue
            built = build(attempt)
            if built.dropped and ex.controls.strict:
                raise StrictParamsError(
                    f"{attempt.target.provider} cannot honour: {', '.join(built.dropped)} (x-gateway-strict is on)",
                    param=built.dropped[0],
                )
            for retry in range(retries + 1):
                started = time.perf_counter()
                try:
                    async with span("upstream", provider=attempt.target.provider, region=attempt.target.region):
                        response = await self.gateway.upstream.send(built.request)
                    if response.status >= 400:
                        raise attempt.adapter.error(response.status, await response.read(), response.headers)
                    result = await accept(attempt, response)
                except UpstreamError as err:
                    ex.upstream_ms += (time.perf_counter() - started) * 1000
                    ex.route.append(f"{label}={err.outcome}")
                    last = err
                    if not err.retryable:
                        breakers.success(label)
                        raise self._client_facing(err) from None
                    breakers.failure(label)
                    if retry < retries and err.retry_after is not None and err.retry_after <= 5:
                        await asyncio.sleep(err.retry_after)
                        continue
                    break
                ex.upstream_ms += (time.perf_counter() - started) * 1000
                ex.route.append(f"{label}=200")
                breakers.success(label)
                ex.attempt = attempt
                ex.dropped = built.dropped
                return result
        if last is None:
            raise ServiceUnavailableError("every deployment's circuit breaker is open", code="no_deployment_available")
        raise last

    @staticmethod
    def _client_facing(err: UpstreamError) -> GatewayError:
        if err.upstream_status in CLIENT_FAULT_STATUSES:
            invalid = InvalidRequestError(f"the provider rejected the request: {err.message}", code="invalid_request")
            invalid.__cause__ = err
            return invalid
        return err

    async def _settle(self, ex: Exchange, usage: Usage | None, status: int, background: bool = False) -> None:
        """Cost the answer, release the reservation's rest and write the ledger line, exactly once."""
        reservation = ex.reservation
        if reservation is None:
            return
        ex.reservation = None
        attempt = ex.attempt
        item: LedgerItem | None = None
        actual = 0.0
        tokens = 0
        if usage is not None and attempt is not None:
            price = price_for(attempt.model, attempt.spec, attempt.target.model)
            ex.cost = cost_of(usage, price, self.fee)
            if ex.wasted_usd and ex.cost.provider_usd is not None:
                wasted = ex.wasted_usd
                ex.cost = Cost(ex.cost.provider_usd + wasted, ex.cost.fee_usd, usage, ex.cost.unit_prices)
            actual = ex.cost.total_usd or 0.0
            tokens = usage.prompt_tokens + usage.completion_tokens
            ex.budget_remaining = self.meter.remaining_usd(reservation, actual)
            total_ms = (time.perf_counter() - ex.started) * 1000
            item = LedgerItem(
                request_id=ex.request_id,
                ts=time.time(),
                key_id=ex.key.id,
                ancestors=list(ex.key.ancestors),
                model=attempt.model,
                provider=attempt.target.provider,
                region=attempt.target.region,
                upstream_model=attempt.target.model,
                input_tokens=usage.prompt_tokens,
                cached_tokens=usage.cached_tokens,
                cache_write_tokens=usage.cache_write_tokens,
                output_tokens=usage.completion_tokens,
                cost_usd=ex.cost.provider_usd,
                fee_usd=ex.cost.fee_usd,
                status=status,
                gateway_ms=max(0.0, total_ms - ex.store_ms - ex.upstream_ms),
                store_ms=ex.store_ms,
                upstream_ms=ex.upstream_ms,
                route=", ".join(ex.route),
            )
        settlement = self.meter.settlement(reservation, actual, tokens, item)
        if background:
            self.gateway.spawn(self.meter.settle(settlement))
        else:
            await self.meter.settle(settlement)


class ChunkStream:
    """An upstream stream in the gateway's chunk form, with its usage, cost and settlement.

    Chunks that carry only usage are withheld: the route writes one final event with usage and cost.
    """

    def __init__(
        self, pipeline: Pipeline, ex: Exchange, req: ChatRequest, attempt: Attempt, response: UpstreamResponse
    ) -> None:
        self.pipeline = pipeline
        self.ex = ex
        self.req = req
        self.attempt = attempt
        self.response = response
        self.decoder = attempt.adapter.frame_decoder()
        self.parser: StreamParser = attempt.adapter.stream_parser(req, attempt.target)
        self._raw = response.chunks()
        self._pending: list[ChatCompletionChunk] = []
        self._template: ChatCompletionChunk | None = None
        self._finished = False
        self._settled = False
        self._chars = 0
        self.schema = pipeline._enforced_schema(req, attempt, ex)
        self._text: list[str] = []
        self.schema_violation: str | None = None

    async def prime(self) -> None:
        """Read until the first chunk; an error before it lets the router fail over."""
        try:
            while not self._pending and not self._finished:
                await self._pull()
        except BaseException:
            await self.response.close()
            raise

    async def _pull(self) -> None:
        try:
            raw = await self._raw.__anext__()
        except StopAsyncIteration:
            events = self.decoder.finish()
            chunks = [c for e in events for c in self.parser.feed(e)] + self.parser.finish()
            self._finished = True
        else:
            chunks = [c for e in self.decoder.feed(raw) for c in self.parser.feed(e)]
        for chunk in chunks:
            if self._template is None:
                self._template = chunk
            if not chunk.choices and chunk.usage is not None:
                continue
            chunk.usage = None
            self._pending.append(chunk)

    async def __aiter__(self) -> AsyncIterator[ChatCompletionChunk]:
        async for batch in self.batches():
            for chunk in batch:
                yield chunk

    async def batches(self) -> AsyncIterator[list[ChatCompletionChunk]]:
        """The chunks as they arrive, grouped by the upstream read that brought them."""
        while True:
            if self._pending:
                batch, self._pending = self._pending, []
                for chunk in batch:
                    self._count(chunk)
                yield batch
            if self._finished:
                return
            await self._pull()

    def _count(self, chunk: ChatCompletionChunk) -> None:
        for choice in chunk.choices:
            self._chars += len(choice.delta.content or "") + len(choice.delta.reasoning_content or "")
            if self.schema is not None and choice.index == 0 and choice.delta.content:
                self._text.append(choice.delta.content)
            for call in choice.delta.tool_calls or ():
                self._chars += len(call.function.arguments or "") if call.function else 0

    def usage(self) -> Usage:
        """The provider's usage, or an estimate of what it bills for a stream cut short."""
        usage = self.parser.usage
        if isinstance(usage, Usage):
            return usage
        prompt = estimate_prompt_tokens(self.req)
        return Usage.of(prompt, math.ceil(self._chars / 3))

    def final_chunk(self, include_usage: bool) -> dict[str, object]:
        """The last data event: no choices, the usage if asked for, and always the cost."""
        template = self._template
        payload: dict[str, object] = {
            "id": template.id if template else f"chatcmpl-{self.ex.request_id}",
            "object": "chat.completion.chunk",
            "created": template.created if template else int(time.time()),
            "model": template.model if template else self.attempt.target.model,
            "choices": [],
        }
        if include_usage:
            payload["usage"] = self.usage().model_dump(exclude_none=True)
        cost = self.ex.cost
        payload["cost"] = cost.as_event() if cost else None
        if self.schema_violation is not None:
            payload["schema_violation"] = {"code": "schema_violation", "message": self.schema_violation}
        return payload

    async def complete(self) -> None:
        """The upstream finished: cost it and settle (in the background)."""
        if self.schema is not None:
            self.schema_violation = violation(self.schema, "".join(self._text))
        if not self._settled:
            self._settled = True
            await self.pipeline._settle(self.ex, self.usage(), 200, background=True)

    async def close(self) -> None:
        """Always called: a stream abandoned by the client still settles what the provider bills."""
        await self.response.close()
        if not self._settled:
            self._settled = True
            self.pipeline.gateway.spawn(self.pipeline._settle(self.ex, self.usage(), CLIENT_CLOSED))
