"""The request pipeline shared by every proxied route: plan, admit, try deployments, cost, settle.

Routes parse their own API into the internal form and render the outcome in their own API; what
happens in between is here and knows no provider by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

import orjson

from handler.errors import (
    CLIENT_CLOSED,
    BudgetExceededError,
    ClientClosedError,
    CostLimitError,
    GatewayError,
    InvalidRequestError,
    NativeOnlyError,
    ProviderRejectedError,
    RateLimitError,
    SchemaViolationError,
    ServiceUnavailableError,
    StrictParamsError,
    ThreadNotFoundError,
    UpstreamError,
    UpstreamOverloadedError,
    UpstreamRateLimitedError,
    UpstreamTimeoutError,
)
from handler.pipeline.attribution import line_tags
from handler.pipeline.budgets import Counted, Meter, Reservation, remaining_usd
from handler.pipeline.charges import Charges
from handler.pipeline.exchange import CUT_SLACK_S, Exchange, deadline_passed, too_short_to_send
from handler.pipeline.gateway import Gateway
from handler.pipeline.keys import allows_model, kept_unkeyed
from handler.pipeline.output_caps import OutputCap
from handler.pipeline.pricing import (
    Cost,
    PromptEstimate,
    counts_output,
    fee_for,
    held_window,
    plausible,
    predicted_tokens,
    prompt_estimate,
    sent_as_written,
    tier_served,
    usd,
    worst_case_usd,
)
from handler.pipeline.routing import Attempt, Plan
from handler.pipeline.upstream import UpstreamResponse
from handler.ports import BuiltRequest, LedgerItem, NativeCall, Served, StoreError, ThreadAnswer, as_client_named
from handler.redaction import clipped, names_clipped
from handler.schemas import LATER_MODULES, ChatCompletion, ChatRequest, PlainCompletion, Usage
from handler.telemetry.observability import span
from handler.wire import SHAPE_ERRORS, error_answer, json_body, malformed, misshapen

if TYPE_CHECKING:
    from handler.pipeline.breakers import Breakers, CountBreakers
    from handler.pipeline.chunk_stream import ChunkStream  # (imported with the first stream: `_chunk_stream`)
    from handler.pipeline.passthrough import NativeReply, NativeStream  # (with the first native answer or stream)
    from handler.pipeline.threads import HeldThreads  # (with the first thread's answer)
    from handler.schemas import EmbeddingsRequest, EmbeddingsResponse

    # What an attempt going out changed (`Pipeline._cut_connecting` undoes it): when the attempt before it went out,
    # whether its model had been sent to, the count of its model's own limits and its advisors' it took as sent.
    WentOut = tuple[float, bool, Counted | None, list[Counted] | None]

T = TypeVar("T")
# A whole answer in the internal form, and what it says of how it was served (`ProviderAdapter.chat_answer`).
Answered = tuple[ChatCompletion, Served | None]
PlainAnswered = tuple[ChatCompletion | PlainCompletion, Served | None]
C = TypeVar("C", bound=ChatCompletion | PlainCompletion)
log = logging.getLogger("gateway")
MAX_USER_CHARS = 256
# The batches of one embeddings request in flight at once, where the API takes fewer inputs a call than the client
# sent (`ProviderAdapter.embedding_batch`): OpenAI's 2,048 inputs are 21 of Gemini's batches.
BATCHES_AT_ONCE = 8
# Upstream statuses that mean the client's request itself is wrong: answered as 400, not 502. (A 404 about the
# deployment, not the request, is failed over as the operator's: `handler.wire.deployment_at_fault`.)
CLIENT_FAULT_STATUSES = frozenset({400, 404, 413, 422})


def answered_as(
    failure: UpstreamError, message: str | None = None, headers: dict[str, str] | None = None
) -> GatewayError:
    """The error a provider's `failure` is answered as where it ended the attempts made (`Pipeline._failover`, which
    words a rate limit its own way: `message`, `headers`): its rate limit the client's 429 `upstream_rate_limited`,
    its overload (503, 529) Anthropic's own on its API, a request it refused the client's 400
    (`ProviderRejectedError`), any other failure as it is (502); the provider's status and type inside. For an error
    after a stream's first byte, which no other attempt can follow, it is also what the client is told in the stream
    (a Messages client's `error` event, typed as Anthropic types the status)."""
    if failure.rate_limited or failure.overload:
        kind = UpstreamRateLimitedError if failure.rate_limited else UpstreamOverloadedError
        return kind(
            failure.message if message is None else message,
            upstream_status=429 if failure.rate_limited else failure.upstream_status,
            retryable=True,
            retry_after=failure.retry_after,
            upstream_type=failure.upstream_type,
            headers=headers,
        )
    if failure.upstream_status in CLIENT_FAULT_STATUSES and not failure.retryable:
        return ProviderRejectedError(failure)
    return failure


# The longest `retry-after` the gateway waits out itself before retrying a deployment; a longer wait is the client's.
MAX_RETRY_WAIT_S = 5
# What a retry waited for must have left of the request's deadline beyond `CUT_SLACK_S`, for the provider to answer it:
# waited out with less, the deadline cut the retry (or left too little to send it), a 504 for a request whose 429 the
# client could have been told of at once, or whose next deployment could have answered.
RETRY_ANSWER_S = 1.0
# The `retry-after` of a 429 whose providers named no wait (Bedrock's ThrottlingException): the least the header can
# say. Codex retries a 429 only when it carries one (without, it gave up after the one request).
UNNAMED_WAIT_S = 1
# The longest message id a thread's answer is kept under, or looked up by (Anthropic's are some 30 characters; a
# DynamoDB key holds 2 KB): a longer `previous_message_id` names no answer the gateway kept.
LONGEST_MESSAGE_ID = 256


class Pipeline(Charges):
    """Runs chat and embeddings requests against the gateway's deployments."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.meter = Meter(
            gateway.store,
            gateway.keys,
            gateway.config.gateway.reservation_ttl_seconds,
            spawn=gateway.spawn,
            awaiting=gateway.awaiting,
        )
        self.fee = gateway.config.gateway.fee
        self.threads: HeldThreads | None = None  # (with the first thread's answer)

    # --- chat -------------------------------------------------------------------------------

    async def chat(self, req: ChatRequest, ex: Exchange, plain: bool = False) -> ChatCompletion | PlainCompletion:
        """A non-streaming chat completion; `plain`: a `PlainCompletion` where the adapter reads one (the chat route,
        which writes the answer back as it came, untraced)."""
        plan = await self._plan(ex, req.model)
        await self._admit(ex, plan, req)

        async def accept(attempt: Attempt, response: UpstreamResponse) -> PlainAnswered:
            return await self._chat_answer(req, ex, attempt, response, plain)

        def build(attempt: Attempt) -> BuiltRequest:
            return attempt.adapter.chat_request(req, attempt.target, stream=False)

        try:
            completion, served = await self._deadline(ex, self._failover(ex, plan, build, accept))
        except BaseException as exc:
            await self._unanswered(ex, exc)
            raise
        return await self._settled_answer(ex, completion, served)

    async def chat_stream(self, req: ChatRequest, ex: Exchange) -> ChunkStream:
        """A streaming chat completion whose first chunks have arrived (failover is over by then)."""
        plan = await self._plan(ex, req.model)
        await self._admit(ex, plan, req)

        async def accept(attempt: Attempt, response: UpstreamResponse) -> ChunkStream:
            stream = _chunk_stream()(self, ex, req, attempt, response)
            await self._prime(stream, ex, attempt)
            return stream

        def build(attempt: Attempt) -> BuiltRequest:
            return attempt.adapter.chat_request(req, attempt.target, stream=True)

        try:
            return await self._deadline(ex, self._failover(ex, plan, build, accept))
        except BaseException as exc:
            await self._unanswered(ex, exc)
            raise

    @overload
    async def _chat_answer(
        self, req: ChatRequest, ex: Exchange, attempt: Attempt, response: UpstreamResponse, plain: Literal[False] = ...
    ) -> Answered: ...

    @overload
    async def _chat_answer(
        self, req: ChatRequest, ex: Exchange, attempt: Attempt, response: UpstreamResponse, plain: bool
    ) -> PlainAnswered: ...

    async def _chat_answer(
        self, req: ChatRequest, ex: Exchange, attempt: Attempt, response: UpstreamResponse, plain: bool = False
    ) -> PlainAnswered:
        """A whole answer in the internal form, and what it says of how it was served (`Served`, where the
        adapter reads it from the provider's answer: `ProviderAdapter.chat_answer`). `plain`: where no schema is
        enforced on it, a `PlainCompletion` where the adapter reads the answer as one (`ProviderAdapter.plain_answer`:
        the chat route, which writes the answer back as it came)."""
        schema = self._enforced_schema(req, attempt, ex)
        adapter = attempt.adapter
        read = adapter.plain_answer if plain and schema is None else adapter.chat_answer
        raw = await response.read()
        try:
            completion, served = read(raw, req, attempt.target)
        except SHAPE_ERRORS as exc:
            raise misshapen("answer", exc) from exc
        except UpstreamError as unusable:
            self._billed_unusable(ex, attempt, unusable)
            raise
        if schema is not None:
            assert isinstance(completion, ChatCompletion)  # (`chat_answer`'s: an enforced schema reads the model)
            if completion.choices:
                texts = [choice.message.content for choice in completion.choices]
                self._enforce(schema, ex, attempt, texts, completion.usage, served)
        return completion, served

    def _enforce(
        self,
        schema: dict[str, Any],
        ex: Exchange,
        attempt: Attempt,
        texts: list[str | None],
        usage: Usage | None,
        served: Served | None,
    ) -> None:
        """Raise a retryable `SchemaViolationError` when one of the answer's `texts` (each choice's) does not fit the
        enforced `schema`."""
        from handler.pipeline.schema_check import enforce

        try:
            enforce(schema, texts)
        except BaseException as exc:
            # The provider billed this answer even though it is thrown away: its cost goes on the request's
            # line, whether a later attempt answers or none does (then a line of its own, as for an error).
            self._thrown_away(ex, attempt, usage, served)
            ex.answered = (attempt, 200)
            if not isinstance(exc, SchemaViolationError):
                # The check itself failed (a schema admission let through that cannot check this answer): the
                # request ends on it, its attempt answered, not cut in flight, so its line has the answer's cost
                # above, not the reserved worst case (4,000 tokens, $0.0081, for an answer billed 5 tokens).
                outcome = str(getattr(exc, "code", type(exc).__name__))
                ex.route.append(f"{attempt.target.label}={outcome}")
                ex.upstream_ms += (time.perf_counter() - ex.inflight_at) * 1000
                if ex.trace is not None:
                    ex.trace.attempt(attempt, ex.inflight_at, 200, outcome)
                self.gateway.router.breakers.success(attempt.target.label)  # (the deployment answered)
                ex.inflight = None
            raise

    # --- native pass-through ------------------------------------------------------------------

    @overload
    async def native(
        self, call: NativeCall, req: ChatRequest, ex: Exchange, plain: Literal[False] = ...
    ) -> NativeReply | ChatCompletion: ...

    @overload
    async def native(
        self, call: NativeCall, req: ChatRequest, ex: Exchange, plain: bool
    ) -> NativeReply | ChatCompletion | PlainCompletion: ...

    async def native(
        self, call: NativeCall, req: ChatRequest, ex: Exchange, plain: bool = False
    ) -> NativeReply | ChatCompletion | PlainCompletion:
        """A request in a provider API's own format (`call`), non-streaming: sent as written to a deployment
        that speaks that API, and as `req` (the same request in the internal form) to any other in the plan.
        `plain`: the answer of another as a `PlainCompletion` where its adapter reads one (`_chat_answer`)."""
        from handler.pipeline.passthrough import NativeReply, advisor_calls, answer_text

        plan = await self._plan(ex, req.model)
        await self._admit(ex, plan, req, call)

        async def accept(attempt: Attempt, response: UpstreamResponse) -> NativeReply | PlainAnswered:
            if not attempt.adapter.speaks(call.api, attempt.target):
                return await self._chat_answer(req, ex, attempt, response, plain)
            body = json_body(await response.read())  # (parsed once: the usage is read from it too)
            if not isinstance(body, dict):
                raise malformed("upstream answered with something other than a JSON object")
            try:
                usage = attempt.adapter.native_usage(call, body)
            except SHAPE_ERRORS as exc:
                raise misshapen("answer", exc) from exc
            reply = NativeReply(body, usage, attempt.adapter.native_served(call, body))
            schema = self._enforced_schema(req, attempt, ex)
            if schema is not None:
                self._enforce(schema, ex, attempt, [answer_text(call.api, body)], usage, reply.served)
            return reply

        try:
            outcome = await self._deadline(ex, self._failover(ex, plan, self._native_build(call, req, False), accept))
        except BaseException as exc:
            await self._unanswered(ex, exc)
            raise
        if isinstance(outcome, NativeReply):
            # The answer's generated part: a message's `content` (Messages), a response's `output` (Responses).
            generated = outcome.body.get("content", outcome.body.get("output"))
            usage, source = self._checked(outcome.usage, ex, lambda: len(orjson.dumps(generated)) if generated else 0)
            if source != "provider":
                # Its usage does not count its advisor calls either (none, or an advisor's sampling without its
                # counts): each one it shows is charged its reserved bound, as a stream's cut before its usage is.
                ex.advised = advisor_calls(call.api, outcome.body)
            if "thread" in call.body and source == "provider":  # (its size, for a `continue` of it)
                self.thread_answered(ex, outcome.body.get("id"), usage, outcome.served)
            served = outcome.served or tier_served(outcome.body, ex.service_tier)
            await self._settle(ex, usage, 200, background=True, source=source, served=served)
            if "thread" in call.body:
                await self._keep_thread(ex, outcome.body.get("id"))
            return outcome
        completion, served = outcome
        return await self._settled_answer(ex, completion, served)

    async def _settled_answer(self, ex: Exchange, completion: C, served: Served | None) -> C:
        """Settle a whole answer in the internal form (or a `PlainCompletion`), which then says the usage it was
        charged for, as a stream's last event does (`ChunkStream.final_chunk`): the provider's, or the estimate that
        stood for usage it did not give, or gave impossible (the answer said none, or -1,000,000 tokens, while its
        cost and line said the estimate's)."""
        extra: dict[str, Any] | None
        if isinstance(completion, PlainCompletion):
            usage, source = self._checked(completion.usage, ex, completion.chars)
            extra = completion.body
        else:
            usage, source = self._checked(completion.usage, ex, lambda: answer_chars(completion))
            extra = completion.model_extra
        completion.usage = usage
        served = served or tier_served(extra, ex.service_tier)
        await self._settle(ex, usage, 200, background=True, source=source, served=served)
        return completion

    async def native_stream(self, call: NativeCall, req: ChatRequest, ex: Exchange) -> NativeStream | ChunkStream:
        """`native`, streaming: the provider's own events from a deployment that speaks the API, the internal
        chunk stream from any other; either has its first events in by the time it is returned."""
        from handler.pipeline.passthrough import NativeStream

        plan = await self._plan(ex, req.model)
        await self._admit(ex, plan, req, call)

        async def accept(attempt: Attempt, response: UpstreamResponse) -> NativeStream | ChunkStream:
            stream: NativeStream | ChunkStream
            if attempt.adapter.speaks(call.api, attempt.target):
                stream = NativeStream(self, ex, req, call, attempt, response)
            else:
                stream = _chunk_stream()(self, ex, req, attempt, response)
            await self._prime(stream, ex, attempt)
            return stream

        try:
            stream = await self._deadline(ex, self._failover(ex, plan, self._native_build(call, req, True), accept))
        except BaseException as exc:
            await self._unanswered(ex, exc)
            raise
        if "thread" in call.body and isinstance(stream, NativeStream):
            # Kept before the client is sent a byte: the answer's id is in its first event (`message_start`).
            try:
                await self._keep_thread(ex, stream.meter.answer_id)
            except BaseException:  # (cancelled: the client left, and the stream is settled as one it left)
                await stream.close()
                raise
        return stream

    async def count_tokens(self, call: NativeCall, req: ChatRequest, ex: Exchange) -> int | None:
        """The prompt's input tokens as the serving deployment's provider counts them, or None where it has
        no count (the route then estimates). Free at the providers, so no budget or tokens a minute; but the
        provider limits its counting per organisation, on the operator's key, so a count it is asked for is
        held to the requests a minute of the key's chain (a 429 when they are spent). A count a provider gave
        still leaves its ledger line, at no cost. An estimate calls no provider and is held to nothing: where no
        count will be sent (every deployment that counts passed over for its open breaker, or a deadline too
        short to send one) nothing is counted, and a count nothing was sent for after all gives back what it
        counted (kept, it would spend a request of the key's minute on an estimate: with `rpm: 1` the next count
        would be a 429, not the estimate, and so would the next request).

        The count is the provider's that would serve the request: of the model's own deployments, or, with each of
        them passed over for its open breaker, of its fallbacks after them, as `/v1/messages` would be served
        (counted by its Claude fallback while its own breakers are closed, a Llama on Bedrock would be answered
        Claude's count as the Llama prompt's own). It is judged on breakers of its own (`CountBreakers`), as a
        provider limits counting apart. A count the provider made tells the budget left (`Meter.remaining`), read
        then, as it reserved none."""
        plan = await self._plan(ex, req.model, shed=False)  # (breakers open: the route's estimate serves)
        reach = [attempt for attempt in plan if attempt.model == ex.model]
        if reach and not any(self.gateway.router.breakers.available(a.target.label) for a in reach):
            breakers_open(ex, plan, reach)  # (the model's own, ahead of any fallback the key may not use)
            reach = [attempt for attempt in plan if attempt.model != ex.model]
        kind = reach[0].target.provider_type if reach else None  # (none: pinned away from the model's own)
        # The plan's, so that the failover names a fallback the key may not use where it reaches it, as the request's
        # own route does (a list knows no place for it: a count made by a fallback would leave it out).
        counting = Plan(
            [a for a in reach if a.target.provider_type == kind and a.adapter.counts_tokens(a.target)],
            plan.skipped,
            plan.chain,
        )
        breakers = self.gateway.router.count_breakers
        passed = [attempt for attempt in counting if not breakers.available(attempt.target.label)]
        ends_at = ex.ends_at
        short = ends_at is not None and ends_at - time.perf_counter() <= CUT_SLACK_S
        if not counting or short or len(passed) == len(counting):
            breakers_open(ex, counting, passed)
            return None
        if call.held and any(attempt.adapter.speaks(call.api, attempt.target) for attempt in counting):
            await self._continued_thread(ex, call)  # (Anthropic counts the thread it holds: only the key's own)
        # Under an id of its own, as a fallback's and an advisor's counts are: its line is settled under the request
        # id, and the store takes one settlement of an id (DynamoDB's marker, SQLite's slice), so a give-back under
        # that id too would be dropped (a count a fallback made would keep the model asked for's request for the
        # minute). Waited for however often the request is cancelled meanwhile, as a reservation is (`_written`): cut,
        # a count the store had written would never be given back (the key's minute spent on a count never sent).
        ex.reservation = Reservation(None, 0.0, 0)  # nothing reserved: the line is written at no cost

        async def given_back(own: Counted | None, cut: asyncio.CancelledError) -> None:
            if own is not None:
                ex.counted.append(own)
                ex.unsent_counts[ex.model] = own
            await self._unanswered(ex, cut, counting=True)

        counted = await self._written(
            ex, self.meter.admit_count(ex.lineage, ex.model, f"{ex.request_id}#count"), given_back
        )
        if counted is not None:
            ex.counted.append(counted)
            ex.unsent_counts[ex.model] = counted  # (given back as it settles, unless a count of the model goes out)
            ex.limit_headers = self.meter.count_headers(counted)

        async def accept(attempt: Attempt, response: UpstreamResponse) -> int:
            return attempt.adapter.count_tokens_response(await response.read())

        def build(attempt: Attempt) -> BuiltRequest:
            built = attempt.adapter.count_tokens_request(call, req, attempt.target)
            if call.dropped and attempt.adapter.speaks(call.api, attempt.target):
                built.dropped = [*call.dropped, *built.dropped]  # (the client's body as sent, less what it named)
            return built

        try:
            count = await self._deadline(ex, self._failover(ex, counting, build, accept, breakers))
        except GatewayError as err:
            if ex.inflight_at == 0.0:  # (nothing was sent: what it counted is given back, and its answer tells none)
                ex.limit_headers = {}
            # The provider would not count (now, or this prompt, or its breaker is open): the route's estimate.
            estimated = isinstance(err, UpstreamError) or isinstance(err.__cause__, UpstreamError) or shed(err)
            await self._unanswered(ex, err, counting=True, answered=200 if estimated else None)
            if estimated:
                return None
            raise
        except asyncio.CancelledError as cut:
            # A stopping server past its grace: settled as any request it cuts is (a count in flight leaves its line,
            # free, one not sent gives back what it counted).
            await self._unanswered(ex, cut, counting=True)
            raise
        await self._settle(ex, Usage.of(0, 0), 200, background=True, free=True)
        with contextlib.suppress(StoreError):  # (the count is made and free: a store that fails its read tells none)
            ex.budget_remaining = await self.meter.remaining(ex.lineage)
        return count

    @staticmethod
    def _native_build(call: NativeCall, req: ChatRequest, stream: bool) -> Callable[[Attempt], BuiltRequest]:
        def build(attempt: Attempt) -> BuiltRequest:
            if attempt.adapter.speaks(call.api, attempt.target):
                # `req` carries the output cap the admission reserved for (see `_admit`).
                limit = req.output_limit()
                native = attempt.adapter.native_request(call, attempt.target, stream=stream, output_limit=limit)
                # (Each name once: the client's body and the deployment's may leave out the same kind of thing.)
                return BuiltRequest(native.request, list(dict.fromkeys([*call.dropped, *native.dropped])))
            if call.native_only is not None:
                raise call.native_only  # (named `=unsupported` in the route, as any request a deployment cannot take)
            try:
                built = attempt.adapter.translated_request(call, req, attempt.target, stream=stream)
            except InvalidRequestError as err:  # (`stop` too long for the provider: the client sent `stop_sequences`)
                named = as_client_named(call.api, [err.param])[0] if err.param else None
                if named != err.param:
                    err.message, err.param = err.message.replace(f"'{err.param}'", f"'{named}'"), named
                raise
            # (The request's search, where the provider has no search tool of its own: by the client's name for it.)
            _, unsent = attempt.adapter.sent_search(attempt.target, req)
            names = [*unsent, *call.untranslated, *as_client_named(call.api, built.dropped)]
            return BuiltRequest(built.request, list(dict.fromkeys(names)))

        return build

    async def _prime(self, stream: NativeStream | ChunkStream, ex: Exchange, attempt: Attempt) -> None:
        """Read `stream` to its first item; an answer it found unusable there is charged as a whole one is."""
        try:
            await stream.prime()
        except UpstreamError as unusable:
            self._billed_unusable(ex, attempt, unusable)
            raise

    def _billed_unusable(self, ex: Exchange, attempt: Attempt, err: UpstreamError) -> None:
        """An answer the provider billed and the gateway could not use (`UpstreamError.billed`: a model's invalid
        tool call): charged on the request's line, and covered before a failover."""
        if err.billed is not None:
            self._thrown_away(ex, attempt, err.billed)

    def _thrown_away(self, ex: Exchange, attempt: Attempt, usage: Usage | None, served: Served | None = None) -> None:
        """An answer the provider billed and the gateway threw away: its cost and its counts, for the request's line
        (`Exchange.wasted_usage`), and one more to cover before the next attempt goes out."""
        self._waste(ex, attempt, usage, served)
        if usage is not None:
            ex.wasted_usage = usage if ex.wasted_usage is None else ex.wasted_usage.plus(usage)
        ex.rejected += 1

    def _enforced_schema(self, req: ChatRequest, attempt: Attempt, ex: Exchange) -> dict[str, Any] | None:
        if not (ex.controls.enforce_schema or attempt.spec.enforce_schema):
            return None
        from handler.pipeline.schema_check import schema_of  # (on the first request that asks: few do)

        return schema_of(req)

    @staticmethod
    def _worst(ex: Exchange, reservation: Reservation, attempt: Attempt | None, counted: Usage | None = None) -> Usage:
        """The worst case `attempt` can be billed: its own prompt estimate (a deployment's image or tokenizer
        rules differ) and its own output (`_worst_output`). Priced at its deployment, it is within the reservation,
        which is the largest of them; the plan's largest prompt at a pricier deployment would not be (a $1 key
        would spend $4.82 through an image a cheap fallback counted 48,000 tokens). `counted`: the provider's counts so
        far (a stream's opening usage), whose input, where it gave one, is exact and taken instead of the estimate.
        Its searches are those it may run (`_searches_at`: none where the request is translated)."""
        output = Pipeline._worst_output(ex, reservation, attempt)
        searches = ex.searches if attempt is None else Pipeline._searches_at(ex, attempt)
        if counted is not None and counted.prompt_tokens:
            worst = counted.counted_as(counted.prompt_tokens, output)
            if searches:
                worst.set_count("web_searches", searches)
            return worst
        estimate = ex.prompt
        if estimate is not None and attempt is not None:
            prompt = estimate.tokens(attempt.target.provider_type, attempt.target.model)
        else:
            prompt = reservation.prompt_tokens
        worst = Usage.of(prompt, output)
        if searches:
            worst.set_count("web_searches", searches)
        return worst

    @staticmethod
    def _worst_output(ex: Exchange, reservation: Reservation, attempt: Attempt | None) -> int:
        """The most output `attempt` can be billed: the cap it was sent (else its model's ceiling) and a
        prediction's tokens, for each choice, within the output reserved for (the plan's largest); that where
        neither is known. The plan's largest at every attempt's price would charge a fallback sent 1,000 tokens
        for 16,384 at its own price: 3.3 times its key's budget, 16 times what the provider can bill."""
        cap = ex.output_cap
        written = cap.written_at_most(attempt) if cap is not None and attempt is not None else None
        if cap is None or written is None:
            return reservation.output_tokens
        predicted = predicted_tokens(cap.req) * (cap.req.n or 1)  # (billed beyond the cap: `_admit`)
        return min(written + predicted, reservation.output_tokens)

    def _waste(
        self, ex: Exchange, attempt: Attempt, usage: Usage | None, served: Served | None = None, reserved: bool = False
    ) -> None:
        """An earlier attempt the provider may bill: its provider cost (the fee is the request's, on the whole), as
        it was `served`; `reserved`: `usage` is its worst case, never answered (`Charges._cost`)."""
        if usage is not None:
            ex.wasted_usd += self._cost(ex, attempt, usage, served, reserved).provider_usd or 0.0

    # --- embeddings -------------------------------------------------------------------------

    async def embeddings(self, req: EmbeddingsRequest, ex: Exchange) -> EmbeddingsResponse:
        plan = await self._plan(ex, req.model, kind="embedding")
        if isinstance(req.user, str) and req.user and ex.user is None:
            # (Attributed as a chat request's `user` is: `_admit`.)
            ex.user = kept_unkeyed(req.user, ex.lineage, MAX_USER_CHARS)
        # The budget's worst case holds the inputs' bound; the rate limits count their estimate, as a chat prompt's
        # (at the bound, 60 KB of English, some 13,000 tokens, was refused by a `tpm` of 50,000 as no minute would
        # admit it: found by review, embrev37).
        ex.prompt = PromptEstimate(embedded_estimate(req.input), (), text_bound=embedded_tokens(req.input))
        inputs = ("its inputs", "send fewer or shorter inputs")
        await self._admit_tokens(ex, plan, [0] * len(plan), lowers="sending fewer or shorter inputs", needs=inputs)

        # The attempt's batches (`ProviderAdapter.embedding_batch`), each with its upstream request: all built before
        # the first is sent, so that one the adapter refuses is the client's 400 before anything is spent.
        batches: list[tuple[EmbeddingsRequest, BuiltRequest]] = []

        async def accept(attempt: Attempt, response: UpstreamResponse) -> EmbeddingsResponse:
            try:
                first = embeddings_read(attempt, await response.read(), batches[0][0])
            except UpstreamError as unreadable:
                # Billed its own batch, as a later batch's is (`_other_batches`), not as an attempt missed, whose
                # worst case is every input's bound, the batches never sent among them (found by review, mergerev37).
                if unreadable.billed is not None:  # (its inputs' estimate: `embeddings_read`)
                    ex.waste_estimated = True
                self._billed_unusable(ex, attempt, unreadable)
                raise
            if len(batches) == 1:
                return first
            return await self._other_batches(ex, attempt, first, batches[1:])

        def build(attempt: Attempt) -> BuiltRequest:
            parts = req.batches(attempt.adapter.embedding_batch)
            batches[:] = [(part, attempt.adapter.embeddings_request(part, attempt.target)) for part in parts]
            return batches[0][1]

        try:
            result = await self._deadline(ex, self._failover(ex, plan, build, accept))
        except BaseException as exc:
            await self._unanswered(ex, exc)
            raise
        # An answer without `usage` (an OpenAI-like server may send none) is not free: the prompt's estimate, as a chat
        # answer's is (not 0 tokens, $0, "provider").
        # Nor is one that counts 0 tokens for the inputs it embedded (llama.cpp's compatible server answers so).
        counted = "usage" in result.model_fields_set and (result.usage.prompt_tokens or not embedded_tokens(req.input))
        reported = Usage.of(result.usage.prompt_tokens, 0) if counted else None
        usage, source = self._checked(reported, ex, lambda: 0)
        if ex.attempt is not None and not ex.attempt.adapter.counts_embedding_tokens:
            source = "estimate"  # (the adapter's count: the provider's answer has none)
        await self._settle(ex, usage, 200, background=True, source=source)
        return result

    async def _other_batches(
        self,
        ex: Exchange,
        attempt: Attempt,
        first: EmbeddingsResponse,
        rest: list[tuple[EmbeddingsRequest, BuiltRequest]],
    ) -> EmbeddingsResponse:
        """The answers to an embeddings request's batches after the first (answered: `first`), sent to the same
        deployment (a few at a time) and joined with it in order. A batch the provider rate-limits is sent again
        alone, as `_failover` sends a deployment's 429 again (its wait, `_retry_wait`; as often as
        `max_retries_per_deployment`), the batches answered kept: the whole attempt sent again would bill every
        batch answered before it a second time (300 inputs in three batches, the third limited once: six calls, the
        first two batches charged twice). Any batch that fails for good fails the attempt as one error, once every
        batch has its answer: what the provider billed for those that answered is charged (`UpstreamError.billed`),
        unless one may still run unanswered, whose worst case covers the whole request; such a try is not sent again
        whole (`_retry_wait`)."""
        gate = asyncio.Semaphore(BATCHES_AT_ONCE)
        retries = self.gateway.config.gateway.max_retries_per_deployment

        async def one(part: EmbeddingsRequest, built: BuiltRequest) -> EmbeddingsResponse:
            retried = 0
            while True:
                async with gate:
                    within = None if ex.ends_at is None else ex.ends_at - time.perf_counter()
                    response = await self.gateway.upstream.send(built.request, within=within)
                    if response.status < 400:
                        body = await response.read()
                        break
                    failure = error_answer(
                        attempt.adapter.error, response.status, await response.read_error(), response.headers
                    )
                failure.retried = retried
                wait = self._retry_wait(ex, failure) if retried < retries else None
                if wait is None:
                    raise failure
                retried += 1
                ex.route.append(f"{attempt.target.label}={failure.outcome}")  # (a try of its own, as `_failover`'s)
                await asyncio.sleep(wait)  # (the provider's wait, outside the gate: the other batches go on)
            return embeddings_read(attempt, body, part)

        outcomes = await asyncio.gather(*(one(part, built) for part, built in rest), return_exceptions=True)
        answers = [first]
        failures: list[UpstreamError] = []
        for outcome in outcomes:
            if isinstance(outcome, UpstreamError):
                failures.append(outcome)
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                answers.append(outcome)
        if not failures:
            return type(first).joined(answers)
        # The error the attempt ends with: one the provider may still bill, else the client's own fault (sent again,
        # it fails again), else the first.
        failure = min(failures, key=lambda err: (not err.billable, err.retryable))
        if not failure.billable:
            unread = sum(failed.billed.prompt_tokens for failed in failures if failed.billed is not None)
            if unread:
                ex.waste_estimated = True
            failure.billed = Usage.of(sum(answer.usage.prompt_tokens for answer in answers) + unread, 0)
            self._billed_unusable(ex, attempt, failure)
        raise failure

    # --- shared steps -----------------------------------------------------------------------

    async def _plan(self, ex: Exchange, model: str, kind: str = "chat", shed: bool = True) -> Plan:
        """The attempts for `model` within the key's scope along its whole chain; a fallback the key (or an
        ancestor) may not use is skipped and named in the route. `shed`: with every deployment's breaker open, the
        request is refused here, before it is admitted (nothing reserved or counted, no ledger line, nothing sent):
        the last of the plan was sent whatever its breaker said, so an open breaker shed no load. Provider keys
        held in a secret store that are due are read again from here, off this request's way; one that could not
        be read, and that this request needs, is waited for a moment (`ProviderKeys.settle`), within the request's
        deadline: one it runs out in is the deadline's 504, nothing sent or reserved (waited out, a 300 ms
        deadline would be answered after the whole 2 s wait, and on Lambda the wait could outlast the invocation)."""
        router = self.gateway.router
        keys = self.gateway.provider_keys
        keys.check()
        allowed = partial(allows_model, ex.lineage)
        try:
            plan = router.plan(model, ex.controls.route, allowed, kind=kind)
        except ServiceUnavailableError as unkeyed:
            if unkeyed.code != "provider_not_configured":
                raise
            ends_at = ex.ends_at
            within = None if ends_at is None else ends_at - time.perf_counter() - CUT_SLACK_S
            held = await keys.settle(within)
            if held is None:  # (the deadline cut the wait, a read still under way)
                raise deadline_passed(ex, "its provider's key was read from its secret store") from None
            if not held:
                raise
            plan = router.plan(model, ex.controls.route, allowed, kind=kind)
        refusal = router.shed(plan) if shed else None
        if refusal is not None:
            breakers_open(ex, plan, plan)
            raise refusal
        return plan

    async def _admit(self, ex: Exchange, plan: list[Attempt], req: ChatRequest, call: NativeCall | None = None) -> None:
        if ex.trace is not None:
            ex.trace.requested(req)  # before the output cap below is applied
        if req.response_format is not None and (
            ex.controls.enforce_schema or any(attempt.spec.enforce_schema for attempt in plan)
        ):
            # Its schema checked now, not with the answer: one that cannot be checked is the client's 400 before
            # anything is reserved or sent, not a failure after the provider was paid.
            from handler.pipeline.schema_check import check

            check(req)
        who = req.user or (req.model_extra or {}).get("safety_identifier")
        if isinstance(who, str) and who and ex.user is None:
            ex.user = kept_unkeyed(who, ex.lineage, MAX_USER_CHARS)  # (beside its key's id on the line)
        native = [attempt for attempt in plan if attempt.adapter.speaks(call.api, attempt.target)] if call else []
        self._price_options(ex, req, plan, native)
        thread = None  # (a `continue`'s: the answer it continues, as the store keeps it)
        if call is not None:
            if call.native_only is not None and not native:
                raise call.native_only  # (before anything is reserved; a deployment that cannot is passed over later)
            if call.held and native:
                thread = await self._continued_thread(ex, call)  # (before anything is reserved or sent)
            ex.native_api = call.api
            self._price_native_options(ex, plan, call)
        ex.prompt = prompt_estimate(req)
        if call is not None and native:
            ex.prompt = sent_as_written(ex.prompt, call.body)  # (what the translation left out goes too)
            if thread is not None:
                ex.prompt = ex.prompt.holding(self._thread_holds(call, native))
                if not ex.advisors:  # (a `continue` sends no `tools`: its thread's advisors, as its record keeps them)
                    ex.advisors, ex.advisor_params = thread.advisors, ("thread",) * len(thread.advisors)
            if ex.advisors:  # (an attempt is sent the tool: its advisors run, and are held to the key's scopes)
                self._advisors_allowed(ex)
        cap = OutputCap(req, self.gateway.config.gateway.default_max_output_tokens, self.gateway.ceilings)
        # A request only a deployment that speaks its API can take (a message thread) is sent to no other: the rest
        # of the plan is passed over unsent (`=unsupported`), so the worst case is theirs alone. The whole plan's
        # would reserve a thread's `continue` with a translated fallback for its context window at the fallback's
        # prices ($152.47 for Sonnet's $12.09, behind a fallback at $150/$600 a million).
        reached = native if call is not None and call.native_only is not None else plan
        # Each attempt's worst case at its own cap: the plan's largest cap priced at every attempt's price held a
        # budget four times what any attempt could spend (gpt-4o-mini's 16,384 at a fallback Claude's price, which
        # is sent 4,096), and refused requests it could serve.
        outputs = [cap.of(attempt) for attempt in reached]
        extra = predicted_tokens(req)
        try:
            await self._admit_tokens(
                ex, reached, [(output + extra) * (req.n or 1) for output in outputs], f"a smaller {ex.cap_param}"
            )
        except BudgetExceededError as exc:  # (a budget's, or `x-gateway-max-cost-usd`'s: `CostLimitError`)
            if call is None or not call.held or call.native_only is None:
                raise
            raise unheld_thread(call.native_only, exc) from None
        budgeted = ex.reservation is not None and ex.reservation.budget_key is not None
        if budgeted or ex.controls.max_cost_usd is not None:
            # The reservation (or the worst case `x-gateway-max-cost-usd` was checked against) covers each attempt's
            # cap as it was then; none may be sent more, or a provider's own (larger) default, or a ceiling learned
            # since, could spend past it. Each attempt gets its own model's cap: the chain's largest sent to a smaller
            # model is a 400 (gpt-4o-mini's 16,384 against a fallback's 64,000).
            cap.reserved = {id(attempt): output for attempt, output in zip(reached, outputs, strict=True)}
        ex.output_cap = cap

    async def _continued_thread(self, ex: Exchange, call: NativeCall) -> ThreadAnswer:
        """The answer a thread's `continue` (`call`) continues, as the store keeps it (`_keep_thread`): its owner, and
        the advisors its thread holds, which the `continue` is reserved for and held to its key's scopes for
        (`_admit`), whichever process relayed it. Refuses an answer not relayed to `ex`'s key or one of its
        descendants, as a stored response is refused to any other key: Anthropic keeps every key's threads under
        the one account, and continued what any key named (another key's conversation read back, and charged to the
        key that named it). Unknown, expired, kept before owners were, or another key's: the same 404, Anthropic's
        own `thread_not_found`, on which the SDK's thread helpers send the whole conversation again as a new thread.
        One store read per `continue`."""
        previous = call.body["thread"].get("previous_message_id")
        if not isinstance(previous, str) or not previous:
            raise InvalidRequestError(
                "thread.previous_message_id: a `continue` names the message it continues, by its id",
                param="thread.previous_message_id",
            )
        answer = None
        if len(previous) <= LONGEST_MESSAGE_ID:
            answer = await self.gateway.store.get_thread_answer(previous)
        key = ex.key
        if answer is None or not (answer.key_id == key.id or key.id in answer.ancestors):
            raise ThreadNotFoundError(
                f"No thread this key may continue holds the message '{clipped(previous)}': a thread is continued "
                "by the key it was answered to, or one of that key's parents. Send the whole conversation with "
                '`thread: {"type": "create"}` to start a new one.',
                param="thread.previous_message_id",
            )
        return answer

    async def _keep_thread(self, ex: Exchange, message_id: object) -> None:
        """An answer of a thread, `message_id` (the provider's), relayed to `ex`'s key: kept as that key's, with its
        ancestors and the advisors its thread holds (`Exchange.advisors`: those its request offered and was reserved
        for, a `create`'s as sent, a `continue`'s its thread's), for as long as a stored response
        (`gateway.responses_ttl_seconds`), in the store, so that every process knows it (`_continued_thread`). One
        write per thread's answer. One the store cannot keep is still answered (the provider was paid for it): its
        `continue` is then the 404 that starts a new thread."""
        if not isinstance(message_id, str) or not message_id or len(message_id) > LONGEST_MESSAGE_ID:
            return
        key = ex.key
        expires_at = time.time() + self.gateway.config.gateway.responses_ttl_seconds
        answer = ThreadAnswer(message_id, key.id, list(key.ancestors), expires_at, ex.advisors)
        try:
            await self.gateway.store.put_thread_answer(answer)
        except StoreError as exc:
            log.warning("a thread's answer not kept: %s", exc, extra={"request_id": ex.request_id})

    def _thread_holds(self, call: NativeCall, native: list[Attempt]) -> int:
        """The most input a thread's `continue` (`call`) reads beyond its body, where `native` may serve it: what
        its thread holds after the answer it continues, where this process relayed that answer (`HeldThreads`),
        else, or at most, the models' context window."""
        window = max(held_window(attempt.spec) for attempt in native)
        if self.threads is None:
            return window
        thread = call.body["thread"]
        held = self.threads.holds(thread.get("previous_message_id"), {attempt.target.model for attempt in native})
        return window if held is None else min(held, window)

    def thread_size(self, thread: object) -> int:
        """What a message thread's `continue` (`thread`, a request's member) reads beyond its own messages, where this
        process relayed the answer it continues (`HeldThreads`); else, and for any other request, 0."""
        if self.threads is None or not isinstance(thread, dict) or thread.get("type") != "continue":
            return 0
        return self.threads.size(thread.get("previous_message_id")) or 0

    def thread_answered(self, ex: Exchange, message_id: object, usage: Usage, served: Served | None) -> None:
        """An answer of a thread, relayed whole or streamed, that the provider gave `usage` for (`served`: the tokens
        other models wrote into it, an advisor's): its thread's size is known here for a `continue` of it
        (`_thread_holds`). Its advisors are in its record, for every process (`_keep_thread`)."""
        if ex.attempt is None:
            return
        if self.threads is None:
            from handler.pipeline.threads import HeldThreads  # (with the first thread)

            self.threads = HeldThreads()
        others = sum(other.completion_tokens for _, other in served.others) if served is not None else 0
        self.threads.answered(message_id, ex.attempt.target.model, usage, others)

    async def _admit_tokens(
        self,
        ex: Exchange,
        plan: list[Attempt],
        outputs: list[int],
        lowers: str,
        needs: tuple[str, str] | None = None,
    ) -> None:
        """Reserve the plan's worst case: the dearest attempt's, each at its own output tokens (`outputs`, in the
        plan's order), and the most tokens any attempt shows on the rate limits. A refusal says what `lowers` it (an
        embeddings request has no max_tokens), and one too large for a tokens limit what the tokens are and what
        lowers them where they are no prompt and output (`needs`: `Meter.write`)."""
        estimate = ex.prompt or PromptEstimate(0, ())
        worst: float | None = 0.0
        worst_model = ex.model  # the model of the worst case; with an unknown price, the first model without one
        prompt = shown = 0
        output = max(outputs)
        unseen = estimate.unseen
        for attempt, written in zip(plan, outputs, strict=True):
            seen = estimate.seen(attempt.target.provider_type, attempt.target.model)
            tokens = seen + unseen  # (its worst case, `PromptEstimate.tokens`, its images priced once)
            prompt, shown = max(prompt, tokens), max(shown, seen)
            case = worst_case_usd(tokens, written, self._price(ex, attempt, worst=True), self.fee, ex.audio_output)
            searches = self._searches_at(ex, attempt)
            apart = self._per_request_usd(ex, attempt) + (searches * self._search_usd(ex, attempt) if searches else 0.0)
            if ex.advisors and case is not None:  # (Anthropic's advisor tool: another model's calls, billed apart)
                apart += self._advisors_usd(ex, attempt, tokens, written)
            if case is not None and apart:
                case += apart * (1 + self.fee.percent / 100)
            if worst is not None and (case is None or case > worst):
                worst_model = attempt.model
            worst = None if case is None or worst is None else max(worst, case)
        if worst is not None and not math.isfinite(worst):
            # A price or fee past what a float counts (1e300 USD is finite, and taken at load): no budget could
            # reserve it, and a key without one would be charged it.
            raise BudgetExceededError(
                f"the worst-case cost of this request at model '{worst_model}' is more than the gateway can count (a "
                "price or fee in its config is too large): no key can spend it"
            )
        if ex.controls.max_cost_usd is not None:
            if worst is None:
                raise CostLimitError(
                    "the cost of this model is unknown, so x-gateway-max-cost-usd, this request's own cap (not the "
                    "key's budget), cannot be honoured"
                )
            if worst > ex.controls.max_cost_usd:
                raise CostLimitError(
                    f"worst-case cost ${usd(worst)} exceeds x-gateway-max-cost-usd ${usd(ex.controls.max_cost_usd)}, "
                    "this request's own cap (not the key's budget)" + lowered_by(worst_model, ex.model, lowers)
                )
        ends_at = ex.ends_at
        if ends_at is not None and ends_at - time.perf_counter() <= CUT_SLACK_S:
            # Too little left to send anything (`_failover` would not): refused before it is reserved or counted.
            raise too_short_to_send(ex, ends_at - time.perf_counter())
        try:
            # The rate limits count what the request shows, at its estimate (`PromptEstimate.seen`), corrected to the
            # provider's count at settlement: a document the provider fetches (`referenced`) and the text's bound are
            # in the budget's worst case, not in the tokens a minute (100 pages would refuse it on any key's tpm).
            tokens = shown + output
            advice = self._advice(ex, plan, shown, output) if ex.advisors else 0
            reservation = self.meter.reservation(ex.lineage, ex.model, worst, tokens, ex.request_id, advice)
            if reservation.admission is not None and not self.meter.held(reservation):
                await self._reserve(ex, reservation, needs)
        except BudgetExceededError as exc:
            # What the chain's budgets leave, as every answer to a key with a budget says it (`Exchange.headers`):
            # the refusal is where a client needs it most. One store read, on a refusal alone.
            with contextlib.suppress(StoreError):
                left = await self.meter.remaining(ex.lineage)
                ex.budget_remaining = None if left is None else max(left, 0.0)
            if worst is None:  # no max_tokens lowers an unknown price: only a model with a known one serves
                raise BudgetExceededError(unpriced(worst_model, ex.model), code=exc.code, headers=exc.headers) from None
            lower = lowered_by(worst_model, ex.model, lowers)
            raise BudgetExceededError(exc.message + lower, code=exc.code, headers=exc.headers) from None
        reservation.prompt_tokens, reservation.output_tokens = prompt, output
        ex.reservation = reservation
        ex.limit_headers = reservation.headers
        ex.store_ms += reservation.store_ms
        if ex.trace is not None and reservation.admission is not None:  # (no budget, no limits: no round trip)
            ex.trace.store("store.admit", reservation.store_ms)

    async def _reserve(self, ex: Exchange, reservation: Reservation, needs: tuple[str, str] | None = None) -> None:
        """The store's write of the request's reservation (`Meter.write`), waited for however often the request is
        cancelled meanwhile (`outlasting`): a cancellation (a server stopping past its grace, once or more) would cut
        the wait and the write with it, after the store had written a reservation then neither settled nor
        released, which would hold the key's budget until it expires. A request cancelled so
        ends once the write is known, its reservation released (nothing was sent); a client that leaves meanwhile
        does not cancel it (`Exchange.reserving`)."""

        async def released(_: None, cut: asyncio.CancelledError) -> None:
            ex.reservation = reservation
            await self._unanswered(ex, cut)

        await self._written(ex, self.meter.write(reservation, ex.key, needs), released)

    async def _written(
        self, ex: Exchange, write: Awaitable[T], given_back: Callable[[T, asyncio.CancelledError], Awaitable[None]]
    ) -> T:
        """What `write` (a store write the request has to know of: its reservation, a fallback's count) returns,
        waited for however often the request is cancelled meanwhile (`outlasting`). A request cancelled so ends once
        the write is known, after `given_back` (given what it returned) has given back what it wrote; a client that
        leaves meanwhile does not cancel it (`Exchange.reserving`)."""
        ex.reserving = True
        writing = asyncio.ensure_future(write)
        try:
            return await asyncio.shield(writing)
        except asyncio.CancelledError as cut:
            with contextlib.suppress(GatewayError):
                await given_back(await outlasting(writing), cut)
            raise
        finally:
            ex.reserving = False

    def _checked(self, usage: Usage | None, ex: Exchange, output_chars: Callable[[], int]) -> tuple[Usage, str]:
        """The provider's usage when it is possible, else an estimate (`source` says which): an answer without
        usage is not free, and negative or impossible counts are never credited. The estimate's output, about three
        characters a token of what was generated, is at most what the attempt could write (`written_at_most`), so
        that it stays within the worst case the request was admitted for. An answer that wrote something and counts 0
        tokens out is no count a provider bills either (`counts_output`; nor where a reader takes a count left out
        for 0, as `handler.wire.usage_count` does)."""
        if usage is not None and plausible(usage) and counts_output(usage, output_chars):
            return usage, "provider"
        if usage is not None:
            log.warning("upstream usage refused as impossible", extra={"request_id": ex.request_id})
        attempt = ex.attempt
        estimate = ex.prompt or PromptEstimate(0, ())
        prompt = estimate.seen(attempt.target.provider_type, attempt.target.model) if attempt else 0
        output = math.ceil(output_chars() / 3)
        cap = ex.output_cap.written_at_most(attempt) if ex.output_cap is not None and attempt is not None else None
        return Usage.of(prompt, output if cap is None else min(output, cap)), "estimate"

    def _cut_connecting(
        self,
        ex: Exchange,
        attempt: Attempt,
        started: float,
        went_out: WentOut,
        probe: Breakers | CountBreakers | None = None,
    ) -> None:
        """`attempt` cut (its deadline, its client gone, the server stopping) while its connection was opened: the
        provider never saw it, so it is no attempt in flight to charge its worst case for, but one that never went
        out, as one the connect timeout ends (`=connect_timeout`; `=client_closed` where the client left). Charged as
        sent, a tight deadline in front of an unreachable region cost each request its worst case (found by review,
        streamrev36). `went_out`, what `_failover` changed as it went out, undone: when the attempt before it went
        out (0.0 if none did: nothing then stays counted on the rate limits, `_unanswered`), whether its model had
        been sent to before, the count of its model's own limits and its advisors' that it took as sent (a token
        count's, a fallback's: kept, they stayed counted for a request never sent; found by review, mergerev36).
        `probe`: the breakers whose half-open breaker's one probe it took, given back for the next request (kept, every
        key passed the deployment over as `=breaker-open` for a cooldown with nothing sent to it; mergerev36b)."""
        cancelled = ex.client_left or self.gateway.stopping
        outcome = ("client_closed" if ex.client_left else "server_shutting_down") if cancelled else "connect_timeout"
        ex.route.append(f"{attempt.target.label}={outcome}")
        ex.upstream_ms += (time.perf_counter() - started) * 1000
        if ex.trace is not None:
            ex.trace.attempt(attempt, started, 0, outcome)
        went_out_at, sent_before, counted, advisors = went_out
        ex.inflight, ex.inflight_at = None, went_out_at
        if probe is not None:
            probe.forgo(attempt.target.label)
        if not sent_before:
            ex.sent_to.discard(attempt.model)
        if counted is not None:
            ex.unsent_counts[attempt.model] = counted
        if advisors is not None:
            ex.advisor_sent, ex.unsent_advisors = False, advisors

    async def _unanswered(
        self, ex: Exchange, exc: BaseException, counting: bool = False, answered: int | None = None
    ) -> None:
        """Settle a request that ends with no answer to relay. Sent and never answered (a deadline, the Lambda
        time cap, the client gone) or sent and timed out: the provider may still run it to the end, so the
        reserved worst case is charged. Answered with an error: one line at no cost. Never sent: the
        reservation is released, and what it counted on the rate limits given back. `counting`: a token count's,
        free whatever ends it (it reserved nothing: charged as one cut in flight, it paid the per-request fee, which
        no budget counted), its line's status `answered` where the client is answered anyway (its estimate's 200:
        the line said the 502 or 504 the client never had; found by review, usagerev37)."""
        if ex.inflight is not None:
            # The attempt cut in flight ends the route, with the time it waited on the provider (a deadline's
            # 504 named no attempt at all, and said `upstream;dur=0`).
            cancelled = isinstance(exc, asyncio.CancelledError)
            outcome = str(getattr(exc, "code", type(exc).__name__))
            if cancelled:  # (by the client leaving, or by a stopping server past its grace)
                stopped = self.gateway.stopping and not ex.client_left
                outcome = "server_shutting_down" if stopped else "client_closed"
            ex.route.append(f"{ex.inflight.target.label}={outcome}")
            ex.upstream_ms += (time.perf_counter() - ex.inflight_at) * 1000
            if ex.trace is not None:
                ex.trace.cut(ex.inflight, outcome)
        if ex.inflight is not None and ex.inflight_status:
            # Cut while an error answer's body was read: the provider answered the attempt with an error, which it
            # does not bill (not the worst case of a request cut in flight).
            ex.answered, ex.inflight = (ex.inflight, ex.inflight_status), None
        if ex.inflight is None and ex.missed:
            ex.inflight = ex.missed.pop()  # (its attempt span was recorded when it timed out)
        # In the background (`_settle` does not suspend then), so the client is not kept waiting for the ledger
        # line: awaited, an error answer waited out the embedded store's linger for company (~10 ms), counted
        # as the gateway's own time; and a cancelled request's settlement cannot be cut half-way.
        if ex.inflight is not None:
            ex.attempt, ex.inflight = ex.inflight, None
            status = CLIENT_CLOSED if isinstance(exc, asyncio.CancelledError) else getattr(exc, "status", 500)
            if counting:
                await self._settle(ex, Usage.of(0, 0), answered or status, background=True, free=True)
                return
            await self._settle(ex, None, status, background=True, source="reserved")
        elif ex.answered is not None:
            # The status the client is answered (a provider's 500 is the client's 502), as its log line and
            # metrics say; the provider's own is in the line's route.
            ex.attempt, upstream_status = ex.answered
            status = exc.status_for(ex.anthropic) if isinstance(exc, GatewayError) else upstream_status
            status = answered or status
            # The error itself costs nothing; answers billed and thrown away on the way cost what they did, and the
            # line counts their tokens beside their cost (not 0 in, 0 out at a price).
            counted = ex.wasted_usage or Usage.of(0, 0)
            await self._settle(ex, counted, status, background=True, free=True)
        else:
            unsent = ex.inflight_at == 0.0  # (no attempt went out: `_failover` sets it as one does)
            if unsent and ex.reservation is not None and ex.reservation.admission is not None:  # (a count's: apart)
                ex.limit_headers = self.meter.given_back_headers(ex.reservation)
            await self._settle(ex, None, 0, background=True, unsent=unsent)

    async def _deadline(self, ex: Exchange, work: Awaitable[T]) -> T:
        if ex.controls.deadline_s is None or ex.ends_at is None:  # (none, or the gateway's own: `_failover`'s)
            return await work
        remaining = ex.ends_at - time.perf_counter()
        try:
            async with asyncio.timeout(max(0.0, remaining)):
                return await work
        except TimeoutError:
            if ex.inflight_at == 0.0:  # (nothing went out: cut while the first connection opened, `_cut_connecting`)
                nothing = "a connection to the provider opened: nothing was sent, nothing is charged"
                raise deadline_passed(ex, nothing) from None
            raise deadline_passed(ex, "an answer") from None

    async def _failover(
        self,
        ex: Exchange,
        plan: list[Attempt],
        build: Callable[[Attempt], BuiltRequest],
        accept: Callable[[Attempt, UpstreamResponse], Awaitable[T]],
        breakers: Breakers | CountBreakers | None = None,
    ) -> T:
        """`plan`'s attempts in order until one answers (`accept`'s result), each judged on `breakers`: the
        deployments' own, unless another set is given (a token count's)."""
        last: UpstreamError | None = None
        failed: list[UpstreamError] = []  # every failed try, the gateway's own retries among them
        skipped = False  # a candidate was passed over for its open breaker, opened by failures other than 429s
        unsupported: InvalidRequestError | None = None  # the first deployment that could not take the request
        passed = False  # one that could was passed over (its breaker open, its model's limits reached)
        retries = self.gateway.config.gateway.max_retries_per_deployment
        breakers = breakers or self.gateway.router.breakers
        for position, attempt in enumerate(plan):
            passed_over(ex, plan, position)
            label = attempt.target.label
            gate = breakers.gate(label)
            if gate is None:
                ex.route.append(f"{label}=breaker-open")
                skipped = skipped or not breakers.rate_limited(label)
                passed = True
                continue
            if attempt.model != ex.model and await self._fallback_refused(ex, attempt.model):
                ex.route.append(f"{label}=rate_limited")
                passed = True
                continue
            if ex.advisors and ex.advisor_models is None and self._sent_as_written(ex, attempt):
                await self._count_advisors(ex)  # (before the first attempt that is sent the tool)
            if len(ex.extra) < len(ex.missed) + ex.rejected and last is not None:
                await self._cover_missed(ex, last)
            if ex.client_left:  # while a reservation was written: the request ends before sending anything more
                raise ClientClosedError("the client closed the connection before the answer")
            if ex.output_cap is not None:
                ex.output_cap.apply(attempt)
            try:
                if ex.audio_output:
                    self._audio_priced(attempt)
                built = build(attempt)
                if ex.output_cap is not None and ex.output_cap.left_out:
                    built.dropped += ex.output_cap.left_out  # (a bounded request's own caps: `OutputCap.left_out`)
                ex.dropped_at[id(attempt)] = built.dropped
                if ex.service_tier is not None:
                    self._tier_priced(ex, attempt, built.dropped)
                key = attempt.adapter.secret  # (the key `built` carries: a 401 may have it read again)
                if built.dropped and ex.controls.strict:
                    named = names_clipped(built.dropped)  # (the client's names, as the header would carry them)
                    raise StrictParamsError(
                        f"{attempt.target.provider} cannot honour: {', '.join(named)} (x-gateway-strict is on)",
                        param=named[0],
                    )
            except InvalidRequestError as cannot:
                # This deployment's provider cannot take the request as written (an image by URL for Bedrock, an
                # image for DeepSeek, a parameter it would drop under strict): the next may. Refused by all, the
                # first refusal is the client's 400; the first deployment's refusal ended the whole request.
                ex.route.append(f"{label}=unsupported")
                unsupported = unsupported or cannot
                continue
            retry = 0
            lowered = False  # sent again within a ceiling the provider named: once per attempt at most
            rekeyed = False  # sent again with its key read again after a 401: once per attempt at most
            probing = gate == "half-open"  # its breaker's one probe is taken as the attempt goes out
            probe: Breakers | CountBreakers | None = None  # (the breakers whose probe it took, until it is sent)
            while True:
                started = time.perf_counter()
                # What is left of the request's deadline bounds the attempt's answer (its `total`), so that the
                # gateway's own bound (`timeouts.request`) needs no timer more than the upstream read's own.
                within = None if ex.ends_at is None else ex.ends_at - started
                if within is not None and within <= CUT_SLACK_S:
                    raise deadline_passed(ex, "an answer") if failed else too_short_to_send(ex, within)
                if probing:
                    # Taken here, with nothing left between it and the send: an attempt that sent nothing (passed
                    # over as `=unsupported`, for its fallback's limit, its client gone, its deadline) would take it
                    # at the gate and never report, and every request pass the deployment over as `=breaker-open` for
                    # a cooldown. One cut by the deadline once sent keeps it: its deployment said nothing in
                    # time, and the next request waits on it no more than the cooldown.
                    probing = False
                    if not breakers.allow(label):  # (a concurrent request took it meanwhile, or reopened the breaker)
                        ex.route.append(f"{label}=breaker-open")
                        skipped = skipped or not breakers.rate_limited(label)
                        passed = True
                        break
                    probe = breakers
                # (What it changes as it goes out is kept until it is known to have: `_cut_connecting` undoes it.)
                went_out_at, sent_before, counted, advisors = ex.inflight_at, attempt.model in ex.sent_to, None, None
                ex.inflight_at, ex.inflight = started, attempt
                ex.sent_to.add(attempt.model)
                if ex.unsent_counts:  # (it goes out: what its own limits counted stays counted)
                    counted = ex.unsent_counts.pop(attempt.model, None)
                if ex.advisors and not ex.advisor_sent and self._sent_as_written(ex, attempt):
                    advisors = ex.unsent_advisors
                    ex.advisor_sent = True
                    ex.unsent_advisors = []  # (it is sent the tool: what its advisors' limits counted stays counted)
                ex.inflight_status = 0
                try:
                    async with span("upstream", provider=attempt.target.provider, region=attempt.target.region):
                        try:
                            response = await self.gateway.upstream.send(built.request, within=within)
                        except asyncio.CancelledError:
                            if not built.request.written:
                                went_out = went_out_at, sent_before, counted, advisors
                                self._cut_connecting(ex, attempt, started, went_out, probe)
                            raise
                        finally:
                            probe = None  # (sent: its outcome, or its cut, is the probe's)
                    if response.status >= 400:
                        ex.inflight_status = response.status  # (cut while its body is read: an error, not billed)
                        body = await response.read_error()
                        raise error_answer(attempt.adapter.error, response.status, body, response.headers)
                    result = await accept(attempt, response)
                except UpstreamError as err:
                    failed.append(err)
                    ex.inflight = None
                    if 200 <= err.upstream_status < 300 and err.billed is None:
                        # A success it could not read, nor its usage: the provider ran it and bills it, for what
                        # the gateway cannot see, so it is charged as one cut in flight is (its worst case), and
                        # the client is not told to send it again at once.
                        err.billable = True
                        ex.missed.append(attempt)
                    elif err.upstream_status:  # answered: an error (no line had it)
                        ex.answered = (attempt, err.upstream_status)
                    elif err.billable:
                        ex.missed.append(attempt)
                    ex.upstream_ms += (time.perf_counter() - started) * 1000
                    ex.route.append(f"{label}={err.outcome}")
                    if ex.trace is not None:
                        ex.trace.attempt(attempt, started, err.upstream_status, err.outcome)
                    last = err
                    if err.upstream_status == 401 and not rekeyed:
                        rekeyed = True  # (once per attempt: a key read again that is refused too fails over)
                        if await self.gateway.provider_keys.renewed(attempt.adapter, key, built.request.headers):
                            # The key (or a header's value) was rotated in its store since it was last read: sent again
                            # with the new one (a 401 is not billed), before the deployment is failed over as one whose
                            # key is bad.
                            failed.pop()
                            built, key = build(attempt), attempt.adapter.secret
                            continue
                    if not err.retryable:
                        breakers.success(label)
                        cap = ex.output_cap
                        if err.upstream_status == 400 and not lowered and cap and cap.lowered(attempt, err.message):
                            # The cap sent was past the model's ceiling, which the refusal named (one not
                            # configured, or configured higher): sent again within it, as it is from now on.
                            lowered = True
                            failed.pop()
                            built, key = build(attempt), attempt.adapter.secret
                            continue
                        raise answered_as(err) from None
                    if (
                        isinstance(err, UpstreamTimeoutError)
                        and ex.ends_at is not None
                        and time.perf_counter() >= ex.ends_at - CUT_SLACK_S
                    ):
                        # The request's deadline cut the attempt (its `total` ended there), not the deployment:
                        # no breaker failure, no next attempt.
                        raise deadline_passed(ex, "an answer") from None
                    if isinstance(err, SchemaViolationError):
                        # The deployment answered (200); the answer missed this request's schema, which the next
                        # may fit. Counted on the breaker, one key's schema no answer fits took the deployment away
                        # from every key.
                        breakers.success(label)
                        break
                    if not err.spares_breaker:
                        breakers.failure(label, err.rate_limited, err.overloaded)
                    # (A try sent again here was not billed: one billed in part gets no wait, `_retry_wait`, and
                    # those the provider may bill before this attempt were covered as it went out.)
                    wait = self._retry_wait(ex, err) if retry < retries else None
                    if wait is not None:
                        retry += 1
                        waited = time.perf_counter()
                        await asyncio.sleep(wait)  # the provider's wait, not the gateway's own time
                        ex.upstream_ms += (time.perf_counter() - waited) * 1000
                        continue
                    break
                ex.inflight = None
                ex.upstream_ms += (time.perf_counter() - started) * 1000
                ex.route.append(f"{label}=200")
                if ex.trace is not None:
                    ex.trace.attempt(attempt, started, 200, None)
                deployments = self.gateway.router.breakers
                if ex.stream and breakers is deployments:
                    deployments.answered(label)  # (a stream is judged at its end: `passthrough.judged`)
                else:
                    breakers.success(label)
                ex.attempt = attempt
                ex.dropped = built.dropped
                if attempt.model != ex.model:  # (a fallback served it: the limits that bind it, its own among them)
                    ex.limit_headers = self.meter.served_headers(ex.reservation, ex.counted, attempt.model)
                return result
        passed_over(ex, plan, len(plan))
        if last is None:
            if unsupported is not None and not passed:
                raise unsupported
            refusal = next((refused for refused in ex.fallbacks.values() if refused is not None), None)
            if refusal is not None:  # the rest were passed over for their open breakers
                raise refusal
            # Every one passed over for its breaker after `_plan` found one to try (a concurrent request took the
            # half-open breaker's one probe): refused as `_plan` refuses, the reservation released unspent.
            raise self.gateway.router.shed(plan) or ServiceUnavailableError("every deployment's breaker is open")
        failure: GatewayError = last
        if all(err.rate_limited for err in failed) and not skipped:
            # (One skipped for other failures: not every one rate-limited.)
            waits = [err.retry_after for err in failed if err.retry_after is not None]
            headers = {"retry-after": str(max(1, math.ceil(min(waits))) if waits else UNNAMED_WAIT_S)}
            if len(failed) > 1 or last.retried:
                # Retried by the gateway: sent again or failed over, or its limited batch sent again alone within the
                # attempt (an embeddings request's: `_other_batches`). Not to be sent again at once, as for any
                # request the gateway retried (a batch's retries said `x-should-retry: true`, and that the gateway
                # had not retried it).
                whose = "every provider" if len(failed) > 1 else "the provider"
                alone = f" (the batch it limited was sent again alone {last.retried} time(s))" if last.retried else ""
                said = f"{whose} rate-limited this request, after the gateway's own retries{alone}: {last.message}"
                raise answered_as(last, said, headers)
            # The one attempt made, not retried: the provider named no wait (Bedrock's ThrottlingException), or one
            # past the gateway's own bound (Anthropic's 20 s). The client may wait and retry, as it would against
            # the provider: told not to, the SDKs and Claude Code gave up at once, and Codex after one request.
            said = (
                f"the provider rate-limited this request and the gateway did not retry it "
                f"({self._unretried(ex, last, retries)}): {last.message}"
            )
            limited = answered_as(last, said, headers)
            limited.should_retry = True
            raise limited
        if all(err.overload for err in failed):
            # Real overload (a candidate skipped for its open breaker is not available either): Anthropic's own
            # answer to it on its API, which Claude Code falls back on; a 502 it may retry without end.
            failure = answered_as(last)
        if len(failed) == 1 and last.upstream_status != 429 and not last.billable and not last.deployment_fault:
            # One attempt, failed for a passing reason (a 5xx, overloaded, unreachable), with nothing else to try:
            # the gateway retried nothing, so the client's SDK may (Claude Code retries an overloaded Anthropic
            # several times); told not to, one 529 ended the client's call. Not an attempt the provider may still
            # run and bill (it stalled, or broke mid-answer): its worst case is charged, and a retry at once
            # could be billed again. Nor a refusal of the deployment itself (its key revoked, its account out of
            # balance): sent again, it fails again until the operator acts.
            failure.should_retry = True
            if last.retry_after is not None:  # the provider's wait, which the gateway waits only on a 429: the SDK's
                failure.headers.setdefault("retry-after", str(max(1, math.ceil(last.retry_after))))
        raise failure

    @staticmethod
    def _retry_wait(ex: Exchange, err: UpstreamError) -> float | None:
        """The wait the gateway waits out before sending a deployment's failure to it again, if it does: only a
        429's (a 503 or 529 with a short `retry-after` waited out would hold back a healthy next deployment), at
        most `MAX_RETRY_WAIT_S`, ending `RETRY_ANSWER_S` and the `CUT_SLACK_S` a send needs before the request's
        deadline (waited closer to it, the deadline would cut the retry or leave no time to send it, a 504, and the
        next deployment never be tried)."""
        wait = err.retry_after
        if not err.rate_limited or wait is None or wait > MAX_RETRY_WAIT_S:
            return None
        if err.billed is not None:
            # A try the provider billed in part (an embeddings request's batches answered before one was limited) is
            # not sent again whole, each batch answered billed twice: its limited batch was sent again alone
            # (`_other_batches`), as long as waiting could help.
            return None
        if ex.ends_at is None or time.perf_counter() + wait + CUT_SLACK_S + RETRY_ANSWER_S < ex.ends_at:
            return wait
        return None

    @staticmethod
    def _unretried(ex: Exchange, limited: UpstreamError, retries: int) -> str:
        """Why the gateway did not retry a deployment's 429, in its answer's words."""
        if retries == 0:
            return "gateway.max_retries_per_deployment is 0"
        if limited.retry_after is None:
            return "the provider named no wait"
        wait = math.ceil(limited.retry_after)
        if limited.retry_after > MAX_RETRY_WAIT_S:
            return f"the provider's retry-after of {wait} s is past the {MAX_RETRY_WAIT_S} s the gateway waits itself"
        if ex.ends_at is not None and time.perf_counter() + limited.retry_after >= ex.ends_at:
            return f"the provider's retry-after of {wait} s would end past the request's deadline"
        return f"the provider's retry-after of {wait} s would leave too little of the request's deadline to answer"

    async def _fallback_refused(self, ex: Exchange, model: str) -> bool:
        """Whether a fallback `model`'s own per-model limits (the key's or an ancestor's) refuse the request,
        counted on them before its first attempt; its other deployments are then passed over too. The count is waited
        for however often the request is cancelled meanwhile, as `_reserve` waits for its admission: cut, a count the
        store had written would never be given back (the model's requests a minute spent on nothing sent to it)."""
        if model not in ex.fallbacks:
            reservation = ex.reservation
            # What the admission counted on its tokens a minute (`Reservation.tokens`): what the request shows, not a
            # document the provider fetches (`referenced`), whose 460,000 tokens would refuse the fallback
            # (`=rate_limited`) on a `tpm` the same request asked of it straight is served within.
            tokens = reservation.tokens if reservation is not None else 0
            counted = [ex.model, *(m for m, refused in ex.fallbacks.items() if refused is None)]
            counted += ex.advisor_models or ()  # (a pattern its advisors' models matched has counted it already)

            async def given_back(own: Counted | None, _: asyncio.CancelledError) -> None:
                if own is not None:
                    ex.unsent_counts[model] = own  # (given back as the cancelled request settles)

            counting = self.meter.admit_fallback(ex.lineage, model, tokens, f"{ex.request_id}@{model}", counted)
            try:
                own = await self._written(ex, counting, given_back)
                ex.fallbacks[model] = None
            except RateLimitError as refused:
                own, ex.fallbacks[model] = None, refused
            if own is not None:
                ex.counted.append(own)
                ex.unsent_counts[model] = own
        return ex.fallbacks[model] is not None

    async def _count_advisors(self, ex: Exchange) -> None:
        """Count the request on the per-model limits of its advisors' models along the key's chain, before the first
        attempt that is sent the tool: Anthropic runs that model for the answer, so its limits bind the tool as they
        bind a request for it (an advisor would run Opus past a key's Opus limit, counted on nothing).
        Each model of the config's that an advisor runs as and the chain may use (`_advisor_models`) is counted as a
        fallback is (`Meter.admit_fallback`), for the most its calls read and write (`advisor_tokens`), a pattern a
        model counted before matched (the one asked for, the fallbacks counted, another advisor's) not again; one
        spent refuses the request with its 429, nothing sent. What they counted is given back, as a fallback's is,
        when no attempt that is sent the tool goes out (`Exchange.unsent_advisors`); waited for however often the
        request is cancelled meanwhile, as a fallback's count is (`_written`). (The key chain's own `tpm`, which a
        fallback's count leaves to the admission it replaces the request of, counted the advisors' tokens on top of
        the request's at its admission: `_advice`.)"""
        reservation = ex.reservation
        # What the request shows, as its admission counted it on the rate limits (`_admit_tokens`: its tokens, less
        # its output), not the worst case's prompt, which holds the text's bound and the documents fetched.
        prompt = reservation.tokens - reservation.output_tokens if reservation else 0
        written = reservation.output_tokens if reservation else 0
        tokens: dict[str, int] = {}
        for model, uses, advice in ex.advisors:
            for name in self._advisor_models(model) if model else ():
                if allows_model(ex.lineage, name):
                    tokens[name] = tokens.get(name, 0) + advisor_tokens(prompt, written, uses, advice)
        ex.advisor_models = tuple(tokens)
        counted = [ex.model, *(m for m, refused in ex.fallbacks.items() if refused is None)]

        async def given_back(own: Counted | None, _: asyncio.CancelledError) -> None:
            if own is not None:
                ex.unsent_advisors.append(own)  # (given back as the cancelled request settles)

        for name, worst in tokens.items():
            counting = self.meter.admit_fallback(ex.lineage, name, worst, f"{ex.request_id}@advisor:{name}", counted)
            own = await self._written(ex, counting, given_back)
            counted.append(name)
            if own is not None:
                ex.unsent_advisors.append(own)
                ex.advisor_counts[name] = own

    def _advisors_used(self, ex: Exchange, served: Served | None) -> list[tuple[Counted, int]]:
        """What its advisors' models counted on their own limits where an attempt that is sent the tool went out
        (`Exchange.advisor_counts`), each with the tokens that model ran for the answer (`Served.others`, which its
        line is charged for; none there: the advisor was not called, as for an error's answer). Asked only where
        nothing the provider may bill went unseen: where something did (a stream cut short, an answer without usage,
        an attempt never answered, an answer thrown away), or its usage is not plausible, their most stands, as it is
        charged."""
        sent = [(name, counted) for name, counted in ex.advisor_counts.items() if counted not in ex.unsent_advisors]
        if not sent:
            return []
        ran: dict[str, int] = {}
        for model, usage in served.others if served is not None else ():
            if not plausible(usage):
                return []
            for name in self._advisor_models(model):
                ran[name] = ran.get(name, 0) + usage.prompt_tokens + usage.completion_tokens
        return [(counted, ran.get(name, 0)) for name, counted in sent]

    def _advice(self, ex: Exchange, plan: list[Attempt], prompt: int, written: int) -> int:
        """The most tokens the advisors of a request (`Exchange.advisors`) may run, counted on the key chain's own
        `tpm` beside the request's (`Meter.reservation`): a key's tokens a minute are those of every model it runs, and
        Anthropic runs the advisor's inside the answer (a parent's `tpm` of 4,000 would let its child's advised
        answers run 22,950 tokens in a minute, each told some 3,770 remained). Each tool's calls read and write at most
        `advisor_tokens` of what the request shows (`prompt`, as the rate limits count it, and the output `written`),
        as its model's own limits count them (`_count_advisors`). None where no attempt of `plan` is sent the tool
        (a translation leaves it out), nor for a tool naming no model (Anthropic's 400, which runs nothing)."""
        if not any(self._sent_as_written(ex, attempt) for attempt in plan):
            return 0
        return sum(advisor_tokens(prompt, written, uses, most) for model, uses, most in ex.advisors if model)

    @staticmethod
    def _advice_ran(ex: Exchange, reservation: Reservation, served: Served | None, source: str) -> int:
        """The tokens the key chain's own `tpm` settles to for the advisors (what it counted for them:
        `Reservation.advice`): none where no attempt that is sent the tool went out; the tokens their models ran
        for the answer (`Served.others`, which its line is charged for) where nothing the provider may bill went
        unseen; else (a stream cut short, an answer without usage or with usage not plausible, an attempt never
        answered, an answer thrown away) the most stays counted, as it is charged. As `_advisors_used` settles
        their models' own limits."""
        if not ex.advisor_sent:
            return 0
        if source != "provider" or ex.missed or ex.wasted_usage is not None:
            return reservation.advice
        ran = 0
        for _, usage in served.others if served is not None else ():
            if not plausible(usage):
                return reservation.advice
            ran += usage.prompt_tokens + usage.completion_tokens
        return ran

    async def _cover_missed(self, ex: Exchange, last: UpstreamError) -> None:
        """Before the next attempt: a worst case more on the key's budgets for the attempt the provider may still
        bill, or did bill for an answer thrown away (it is charged on the answer's line), so that a failover cannot
        spend past a budget or `x-gateway-max-cost-usd` (it did, by a worst case per such attempt). If it cannot be
        covered, the request ends as that attempt did (charged, as any attempt cut in flight or answered is)."""
        reservation = ex.reservation
        if reservation is None:
            return
        limit = ex.controls.max_cost_usd
        if limit is not None and reservation.amount_usd * (len(ex.extra) + 2) > limit:
            raise last
        ex.reserving = True
        writing = asyncio.ensure_future(self.meter.reserve_again(reservation, ex.key, len(ex.extra) + 1))
        try:
            again = await asyncio.shield(writing)
        except GatewayError:  # the budget's 402, or the store's 503: either way the request ends as that attempt did
            raise last from None
        except asyncio.CancelledError:
            # The deadline passed (or the client left) while the store wrote it: the request ends, but only once
            # the reservation is known, so that its settlement releases it (else it would hold the key's budget until
            # it expires).
            with contextlib.suppress(GatewayError):
                ex.extra.append(await outlasting(writing))
            raise
        finally:
            ex.reserving = False
        ex.extra.append(again)
        ex.store_ms += again.store_ms

    async def _settle(
        self,
        ex: Exchange,
        usage: Usage | None,
        status: int,
        background: bool = False,
        source: str = "provider",
        free: bool = False,
        served: Served | None = None,
        unsent: bool = False,
    ) -> None:
        """Cost the answer, release the reservation's rest and write the ledger line, exactly once.

        `source` says how the cost is known: `provider` (its usage), `estimate` (none or impossible usage:
        estimated), `reserved` (cut before any answer, or a reasoning stream cut short: the reserved worst case,
        on the input counts of `usage` where the provider gave them, `_worst`). `free`: the answer costs nothing
        (an error answer, a count of tokens): neither the prices per request (web search) nor the gateway's fee
        apply to it; an earlier attempt the provider may bill still does, and `usage` counts the answers thrown
        away on the way (`wasted_usage`), which any other answer's line adds to its own. `served`: what the answer
        says of how it was served (`Served`), which its cost follows. `unsent`: no attempt went out, so nothing it
        counted on the rate limits stays counted (`Meter.settlement`)."""
        reservation = ex.reservation
        if reservation is None:
            return
        ex.reservation = None
        attempt = ex.attempt
        item: LedgerItem | None = None
        actual = 0.0
        tokens = 0
        if served is not None or self.gateway.router.heard_tiers:  # (an answer that says how it ran, a tier learned)
            self._ran_unasked(ex, attempt, served, usage is not None and source != "reserved" and not free)
        unseen = source == "reserved"  # (the answer's own worst case is charged: `source` may say so for `missed` too)
        charged: Usage | None = None  # the worst cases of `missed`, which the line counts as it charges them
        if unseen or ex.missed:  # (rare: the worst case is built only when it is charged)
            if source == "reserved" and served is None and attempt is not None:
                served = self._unanswered_tier(ex, attempt)
            usage = self._worst(ex, reservation, attempt, usage) if source == "reserved" else usage
            if usage is not None and attempt is not None:
                for missed in ex.missed:  # attempts before this one that the provider may bill
                    worst = self._worst(ex, reservation, missed)
                    self._waste(ex, missed, worst, self._unanswered_tier(ex, missed), reserved=True)
                    charged = worst if charged is None else charged.plus(worst)
                if ex.missed:
                    # Part of the cost is their reserved worst case, no count the provider gave: the line says so
                    # (`provider` would have reports count it as known exactly).
                    source = "reserved"
        if usage is not None and attempt is not None:
            if free:
                ex.cost = Cost(0.0, 0.0, usage, None)
            else:
                ex.cost = self._cost(ex, attempt, usage, served, reserved=unseen, advised=ex.advised)
            if ex.wasted_usd and ex.cost.provider_usd is not None:
                provider = ex.cost.provider_usd + ex.wasted_usd  # the fee is on the whole, once
                ex.cost = ex.cost._replace(provider_usd=provider, fee_usd=fee_for(provider, self.fee))
            actual = ex.cost.total_usd or 0.0
            # The line counts every answer billed, as its cost does: those thrown away on the way (`wasted_usage`)
            # with the one relayed, whose own counts its client is told (`ex.cost.usage`). An error's line (`free`)
            # is passed theirs as its `usage` (`_unanswered`).
            billed = usage if free or ex.wasted_usage is None else usage.plus(ex.wasted_usage)
            tokens = billed.prompt_tokens + billed.completion_tokens  # (what the rate limits settle to)
            if unseen:
                # Its own worst case (a token a byte and the whole cap) is what it is charged, not what its rate limits
                # count: what the admission counted stays counted, with what was thrown away on the way (a 40 KB
                # prompt admitted at 20,109 settled the key's tpm at 40,116; found by review, mergerevb37).
                thrown = ex.wasted_usage
                tokens = reservation.tokens + (0 if thrown is None else thrown.prompt_tokens + thrown.completion_tokens)
            if charged is not None:
                # And the worst cases charged for the attempts before it that may have run unanswered (counted out,
                # a line charged an attempt's 50 tokens out and counted the served answer's 7; usagerev37). Not on
                # the rate limits: a worst case is a token a byte and the whole cap, which a key's tpm never counts
                # (a request served for 8,005 tokens took 48,121 of its minute; mergerev37).
                billed = billed.plus(charged)
            ex.budget_remaining = remaining_usd(reservation, actual)
            if ex.budget_remaining is not None:
                ex.cost = ex.cost._replace(budget_remaining_usd=ex.budget_remaining)
            total_ms = (time.perf_counter() - ex.started) * 1000
            item = LedgerItem(
                request_id=ex.request_id,
                ts=reservation.admitted_at or time.time(),
                key_id=ex.key.id,
                ancestors=list(ex.key.ancestors),
                model=attempt.model,
                provider=attempt.target.provider,
                region=attempt.target.runs_in,
                upstream_model=attempt.target.model,
                input_tokens=billed.prompt_tokens,
                cached_tokens=billed.cached_tokens,
                cache_write_tokens=billed.cache_write_tokens,
                output_tokens=billed.completion_tokens,
                reasoning_tokens=billed.reasoning_tokens,
                cost_usd=ex.cost.provider_usd,
                cache_savings_usd=ex.cost.cache_savings_usd,
                fee_usd=ex.cost.fee_usd,
                status=status,
                gateway_ms=max(0.0, total_ms - ex.store_ms - ex.upstream_ms),
                store_ms=ex.store_ms,
                upstream_ms=ex.upstream_ms,
                route=", ".join(ex.route),
                # (A cost some of whose counts the gateway estimated is no provider's count: mergerevb37.)
                cost_source="estimate" if ex.waste_estimated and source == "provider" else source,
                tags=line_tags(ex.lineage, ex.controls.tags),
                user=ex.user,
                session=ex.controls.session,
            )
        ex.ledger_item = item
        unsent_counts = list(ex.unsent_counts.values())
        if ex.sent_to and ex.model not in ex.sent_to:
            # Nothing went to the model asked for, though the request was sent (its deployments passed over or pinned
            # away, a fallback's went out): what it counted on limits binding none of those sent to is given back, as
            # a fallback's is, and its answer tells the limits that bind the model that answered.
            own = self.meter.taken_apart(reservation, ex.model, ex.sent_to)
            if own is not None:
                unsent_counts.append(own)
                if attempt is not None:
                    ex.limit_headers = self.meter.served_headers(reservation, ex.counted, attempt.model)
        advice = self._advice_ran(ex, reservation, served, source) if reservation.advice else 0
        settlements = [self.meter.settlement(reservation, actual, tokens, item, unsent, advice)]
        # The worst cases reserved more for attempts the provider may bill: released (the line carries their cost).
        settlements += [self.meter.settlement(extra, 0.0, 0, None) for extra in ex.extra]
        # What models nothing was sent to counted on their own limits: given back, as a request never sent gives
        # back its own counts (they held the key's requests a minute to that model for nothing).
        settlements += [self.meter.given_back(counted, ex.sent_to) for counted in unsent_counts]
        # And what its advisors' models counted when no attempt that is sent the tool went out (`_count_advisors`).
        settlements += [self.meter.given_back(counted, ex.sent_to) for counted in ex.unsent_advisors]
        # What the models it was sent to counted on their own limits (a fallback's, its advisors'): their tokens a
        # minute settled to the tokens used, as its admission's are.
        used = [(counted, tokens) for counted in ex.counted if counted not in unsent_counts]
        if ex.advisor_counts and source == "provider" and not ex.missed and ex.wasted_usage is None:
            used += self._advisors_used(ex, served)
        settlements += [settlement for counted, n in used if (settlement := self.meter.used(counted, n)) is not None]
        for settlement in settlements:
            if background:
                self.gateway.settle_soon(self.meter, settlement)
            else:
                await self.meter.settle(settlement)


def advisor_tokens(prompt: int, written: int, uses: int, advice: int) -> int:
    """The most tokens an advisor tool's calls read and write (`uses` calls, each writing at most `advice`) on a
    request whose worst case reads `prompt` and writes `written`: each reads the conversation as the executor has it
    then, the advice before it included, as its worst case is priced (`Charges._advisors_usd`)."""
    return uses * (prompt + written) + advice * uses * (uses - 1) // 2 + uses * advice


def unpriced(unknown_model: str, model: str) -> str:
    """The refusal of a budgeted key's request that a model with no known price could serve."""
    message = f"model '{unknown_model}' has no known price, so a key with a budget cannot use it"
    if unknown_model != model:
        return message + "; it is a fallback: `x-gateway-fallbacks: none` leaves it out"
    return message


def unheld_thread(refusal: InvalidRequestError, refused: BudgetExceededError) -> InvalidRequestError:
    """The refusal of a thread's `continue` whose worst case, with the conversation Anthropic holds counted as its
    model's whole context window, the key's budget or `x-gateway-max-cost-usd` cannot cover (`refused`): as
    Anthropic's own refusal of a request it cannot thread (`refusal`'s code), on which the SDK's thread helpers send
    the whole conversation again without a thread, whose worst case the body shows. A 402 would end the SDK's tool
    runner on any key whose budget is under a context window's price (a million tokens of Claude Haiku: $1), though
    the conversation may be a few hundred tokens."""
    return NativeOnlyError(
        "thread: a continued thread's worst case counts the conversation Anthropic holds as its model's whole context "
        f"window, and that is refused ({refused.message}): send the whole conversation without `thread`, whose "
        "worst case its body shows",
        code=refusal.code,
        param="thread",
    )


def passed_over(ex: Exchange, plan: list[Attempt], position: int) -> None:
    """The route names the fallbacks the key may not use where the plan would have tried them, before the attempt at
    `position` (they were listed first, ahead of the attempts that came before them)."""
    skipped_at = plan.skipped_at if isinstance(plan, Plan) else None
    if skipped_at:
        ex.route.extend(f"{name}=model_not_allowed" for name in skipped_at.get(position, ()))


def breakers_open(ex: Exchange, plan: list[Attempt], passed: list[Attempt]) -> None:
    """The route names the attempts of `plan` passed over for their open breakers (`passed`, in the plan's order) as
    `_failover` names them, each in its place: after the fallbacks the key may not use that the plan would have tried
    before it, and, with every attempt passed, those it would have tried after the last."""
    for position, attempt in enumerate(plan):
        if any(attempt is other for other in passed):
            passed_over(ex, plan, position)
            ex.route.append(f"{attempt.target.label}=breaker-open")
    if passed and len(passed) == len(plan):
        passed_over(ex, plan, len(plan))


def shed(err: GatewayError) -> bool:
    """Whether `err` refused a request for its deployments' open breakers (`Router.shed`), nothing sent."""
    return isinstance(err, ServiceUnavailableError) and err.code == "no_deployment_available"


def lowered_by(worst_model: str, model: str, lowers: str) -> str:
    """What lowers a refused worst case, told in the refusal (`lowers`: the request's own part of it). Any model the
    plan may try must be covered, so a fallback's worst case can be the one refused."""
    if worst_model != model:
        return f"; it is {worst_model}'s, a fallback: `x-gateway-fallbacks: none` or {lowers} lowers it"
    return f"; {lowers} lowers it"


LATER_MODULES.add("handler.pipeline.chunk_stream")  # (a server's start-up and a snapshot import it)


def _chunk_stream() -> type[ChunkStream]:
    """`ChunkStream`, its module imported with the first stream: a cold start serving whole answers (Lambda's
    buffered function) does not import it and the redaction of deltas it brings (two modules, about 1.7 million
    instructions, callgrind)."""
    from handler.pipeline.chunk_stream import ChunkStream

    return ChunkStream


async def outlasting(writing: asyncio.Future[T]) -> T:
    """What `writing` (a store write the request has to know of) returns, however often the request is cancelled
    while it is waited for: a second cancellation (the deadline's, then a stopping server's) would cut the wait, and
    the write with it, after the store had written a reservation then neither settled nor released. The
    cancellations stay counted on the task (`Task.cancelling`), so the request still ends as cancelled."""
    while True:
        try:
            return await asyncio.shield(writing)
        except asyncio.CancelledError:
            if writing.cancelled():  # (the write itself, not the wait: nothing more to learn)
                raise


def embeddings_read(attempt: Attempt, body: bytes, part: EmbeddingsRequest) -> EmbeddingsResponse:
    """The answer to `part` (an embeddings request, or one of its batches) as the adapter reads it, checked to hold
    one embedding an input, indexed 0 to n - 1. One the adapter chokes on is the provider's malformed answer, failed
    over, not the gateway's 500 (a Gemini vector of strings or nulls was one); one short of vectors, or indexed
    otherwise, is too: joined with the next batch's, it filed each vector after the gap under another input's index,
    in a 200 (found by review, embrev37). Such an answer is billed (`UpstreamError.billed`) its inputs' estimate."""
    try:
        try:
            answer = attempt.adapter.embeddings_response(body, part, attempt.target)
        except SHAPE_ERRORS as exc:
            raise misshapen("embeddings answer", exc) from exc
        inputs = part.input_count()
        if sorted(item.index for item in answer.data) != list(range(inputs)):
            raise malformed(f"upstream answered {len(answer.data)} embeddings for {inputs} inputs, or misindexed them")
    except UpstreamError as unreadable:
        if unreadable.outcome == "invalid_response" and unreadable.billed is None:
            # Answered, so run and billed: its inputs' estimate (no usage of it could be read).
            unreadable.billed = Usage.of(embedded_estimate(part.input), 0)
        raise
    return answer


def embedded_estimate(inputs: str | list[str] | list[int] | list[list[int]]) -> int:
    """An embeddings request's input tokens, estimated as a chat prompt's text is (`prompt_estimate`: about two
    UTF-8 bytes a token, a token id a token), for the key's rate limits: its bound (`embedded_tokens`) is the
    budget's worst case."""
    return inputs_tokens(inputs, lambda size: size // 2 + 1)


def embedded_tokens(inputs: str | list[str] | list[int] | list[list[int]]) -> int:
    """An embeddings request's input tokens at most, for the budget's worst case (the key's rate limits, and the line
    of an answer that has no usage, take its estimate: `embedded_estimate`): token ids are tokens (`list[int]`, one
    input; `list[list[int]]`, several), text one token a UTF-8 byte, which no byte-level tokenizer exceeds. About two
    bytes a token is no bound: digits and letters mixed (ids, hashes, codes) are a cl100k token a byte, and two
    requests of 8,000 such bytes, each reserved as 4,001 tokens, would spend twice a key's budget. At embedding
    prices the bound costs a reservation next to nothing. An id is one token, not its digits (5,000 ids would be
    25,000 tokens, refused on a key's tpm of 20,000), nor a list of them its repr (about 7 an id)."""
    return inputs_tokens(inputs, lambda size: size)


def inputs_tokens(inputs: str | list[str] | list[int] | list[list[int]], text: Callable[[int], int]) -> int:
    """An embeddings request's input tokens: each text's as `text` takes its UTF-8 size, a token id a token."""
    if isinstance(inputs, str):
        return text(len(inputs.encode()))
    return sum(
        text(len(item.encode())) if isinstance(item, str) else 1 if isinstance(item, int) else len(item)
        for item in inputs
    )


def answer_chars(completion: ChatCompletion) -> int:
    """The characters of everything an answer generated: text, reasoning, a refusal and tool-call arguments. Not the
    refusal of a choice its provider's filter ended (`content_filter`): the words of the filter, or the gateway's own
    (a prompt Gemini blocked has no candidate, and Gemini's usage counts none out: counted, they made that usage
    "impossible", and an estimate billed 16 output tokens of "Gemini blocked the prompt (...)")."""
    total = 0
    for choice in completion.choices:
        message = choice.message
        total += len(message.content or "") + len(message.reasoning_content or "")
        if message.refusal and choice.finish_reason != "content_filter":
            total += len(message.refusal)
        for call in message.tool_calls or ():
            total += len(call.function.arguments or "") + len(call.function.name or "")
    return total
