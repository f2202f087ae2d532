"""Native pass-through: a request in a provider API's own format, answered as that provider answered it.

When a front-end's format is the deployment's own (a Messages request to an Anthropic deployment), the
client's body goes upstream as sent (model renamed, output capped) and the answer comes back unchanged:
a non-streaming body as a `NativeReply`, a stream as a `NativeStream` of the provider's own events (less what could
be the beginning of a secret the model is writing, held back until its next delta: `handler.pipeline.redacting`). The
adapter's meter reads the usage from them; the pipeline costs and settles as for any other request.

The module also holds what every upstream stream does the same way (`UpstreamStream`, `guarded`). It is imported on
the first native answer or stream (`handler.pipeline.pipeline`, the front-ends): a Lambda serving Chat Completions
that are not streamed never imports it (1.1 million instructions of its cold start, callgrind).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import orjson

from handler.errors import (
    CLIENT_CLOSED,
    ClientClosedError,
    GatewayError,
    SchemaViolationError,
    UpstreamError,
    UpstreamTimeoutError,
)
from handler.pipeline.exchange import CUT_SLACK_S, deadline_passed, shut_down_before
from handler.pipeline.pricing import counts_output, plausible, reasoning_off, wants_reasoning
from handler.pipeline.upstream import UpstreamResponse
from handler.ports import RESPONSES_API, NativeCall, Served
from handler.schemas import ChatRequest, Usage
from handler.telemetry.observability import observe
from handler.wire import (
    INTERRUPTED,
    SHAPE_ERRORS,
    StreamEvent,
    WholeBodySniffer,
    error_excerpt,
    json_body,
    malformed,
    misshapen,
)

if TYPE_CHECKING:
    from handler.pipeline.exchange import Exchange
    from handler.pipeline.pipeline import Pipeline
    from handler.pipeline.routing import Attempt

logger = logging.getLogger("gateway")
HEAD_KEPT = 2048  # bytes of a stream's start kept until its first event, to say what came instead
OUTPUT_TEXT_DELTA = "response.output_text.delta"
T = TypeVar("T")


class NativeReply:
    """A provider's non-streaming answer in its own format, the usage read from it (None: it had none, so it is
    estimated), and what it says of how it was served (`Served`, None where its API says nothing of it)."""

    __slots__ = ("body", "usage", "served")

    def __init__(self, body: dict[str, Any], usage: Usage | None, served: Served | None = None) -> None:
        self.body = body
        self.usage = usage
        self.served = served


def answer_text(api: str, body: dict[str, Any]) -> str | None:
    """A provider's whole answer's text in its own format (a message's text blocks, a response's output text), the
    text an enforced schema checks; None where it has none."""
    if api == RESPONSES_API:
        messages = [
            item for item in body.get("output") or () if isinstance(item, dict) and item.get("type") == "message"
        ]
        parts = [part for item in messages for part in item.get("content") or () if isinstance(part, dict)]
        texts = [part.get("text") for part in parts if part.get("type") == "output_text"]
    else:
        blocks = [block for block in body.get("content") or () if isinstance(block, dict)]
        texts = [block.get("text") for block in blocks if block.get("type") == "text"]
    kept = [text for text in texts if isinstance(text, str)]
    return "".join(kept) if kept else None


def advisor_calls(api: str, body: dict[str, Any]) -> int:
    """The calls to an advisor tool a provider's whole answer in its own format shows (Anthropic's `server_tool_use`
    blocks naming it), as its stream's meter counts them (`advised`)."""
    if api == RESPONSES_API:
        return 0
    blocks = [block for block in body.get("content") or () if isinstance(block, dict)]
    return sum(1 for block in blocks if block.get("type") == "server_tool_use" and block.get("name") == "advisor")


def answer_delta(api: str, event: StreamEvent) -> str | None:
    """The answer's text an event of a provider's own stream adds (`answer_text`'s, as it streams), if any."""
    if event.event not in ((None, OUTPUT_TEXT_DELTA) if api == RESPONSES_API else ("content_block_delta",)):
        return None
    try:
        payload = orjson.loads(event.data)
    except orjson.JSONDecodeError:  # (a Responses stream's `[DONE]`; the relay says what is wrong with any other)
        return None
    if not isinstance(payload, dict):
        return None
    if api == RESPONSES_API:
        text = payload.get("delta") if payload.get("type") == OUTPUT_TEXT_DELTA else None
    else:
        delta = payload.get("delta")
        text = delta.get("text") if isinstance(delta, dict) and delta.get("type") == "text_delta" else None
    return text if isinstance(text, str) else None


def whole_event(event: StreamEvent) -> bool:
    """Whether an event of a provider's own stream is whole: its data JSON (or a Responses stream's `[DONE]`)."""
    if event.data == b"[DONE]":
        return True
    try:
        orjson.loads(event.data)
    except orjson.JSONDecodeError:
        return False
    return True


def sse_frame(event: StreamEvent) -> bytes:
    """An SSE event written back as it arrived: its name and its data, unchanged."""
    head = b"event: " + event.event.encode() + b"\n" if event.event else b""
    data = b"".join(b"data: " + line + b"\n" for line in event.data.split(b"\n"))
    return head + data + b"\n"


class UpstreamStream(ABC, Generic[T]):
    """What every upstream stream does the same way, whatever it yields (`T`: internal chunks, or a
    provider's own events): read until the first item (`prime`: an error before it lets the pipeline fail
    over), hand items out grouped by the upstream read that brought them, settle once (`complete`), and
    always close, settling a stream the client abandoned with what the provider will bill."""

    def __init__(
        self, pipeline: Pipeline, ex: Exchange, req: ChatRequest, attempt: Attempt, response: UpstreamResponse
    ) -> None:
        self.pipeline = pipeline
        self.ex = ex
        self.req = req
        self.attempt = attempt
        self.response = response
        self.decoder = attempt.adapter.frame_decoder()
        self._raw = response.chunks()
        self._pending: list[T] = []
        self._finished = False
        self._settled = False
        self._head: bytes | None = b""  # the stream's start, until its first item
        self._ended_status = 0  # an error's status, if one ended the stream (`failed`)
        # The provider's own failure that ended the stream in its own closing event (`failed`), for its breaker.
        self.ended_by: GatewayError | None = None
        # An error one of a read's events raised after the events before it brought items (`_broke_off`).
        self._failure: Exception | None = None
        # A malformed answer before the first item: the rest is read for the provider's usage alone (`_salvage`),
        # the events of its read after the one that failed (`_broke_off`) first.
        self._salvaging = False
        self._unread: list[StreamEvent] = []
        self.status = 0  # the status it was settled with (its ledger line's): 200, an error's, or 499
        self.schema = pipeline._enforced_schema(req, attempt, ex)
        self._text: list[str] = []  # the answer's text as it was handed out, where `schema` is enforced
        self.schema_violation: str | None = None  # why the whole answer does not fit `schema`, once it ended

    @abstractmethod
    def _items(self, events: list[StreamEvent]) -> list[T]:
        """The items these decoded events bring (the provider has finished when `_finished` is set); where one of
        them is the stream's error (`_broke_off`), those the events before it bring, with all that was held."""

    def _broke_off(self, error: Exception, unread: list[StreamEvent]) -> None:
        """One of a read's events is the stream's error (a server's failure, which it writes in the same read as
        its last words): the items of the events before it are handed out first, then it ends the stream
        (`batches`), or fails the attempt before the first item (`prime`). Raised at once, it would take them
        along: the client would lose the text the meter had counted, and be charged for it. `unread`: the events of
        the read after it, which a malformed answer before the first item is read on for its usage (`_salvage`)."""
        self._failure = misshapen("stream event", error) if isinstance(error, SHAPE_ERRORS) else error
        if self._failure is not error:
            self._failure.__cause__ = error
        self._unread = unread

    def _salvage(self, events: list[StreamEvent]) -> None:
        """Read `events`, which follow a malformed answer before the stream's first item, for the usage the provider
        reports in them, and for nothing else: no item of them goes anywhere (`_billed_malformed`)."""
        for event in events:
            with contextlib.suppress(Exception):  # (an event it cannot read says no usage: the next may)
                self._read(event)

    def _held_back(self) -> list[T]:
        """The items held back for what was to come (a chat stream's parser's: `held_back`), handed out where the
        stream's read breaks; none for most streams."""
        return []

    @abstractmethod
    def _read(self, event: StreamEvent) -> None:
        """Read one event into what counts the stream's usage (a chat stream's parser, a provider's meter)."""

    def _said_ended(self) -> bool:
        """Whether the provider said its stream ended whole (OpenAI's `[DONE]`), where its API has such an event."""
        return False

    @abstractmethod
    def _reported(self) -> Usage | None:
        """The usage the provider has reported so far, if any."""

    def _opening_usage(self) -> Usage | None:
        """The counts the provider gave as its stream opened, before its final usage (`_reported`), if it gives
        any: Anthropic's `message_start` has the input's, exact."""
        return None

    def _relayed_chars(self) -> int:
        """The characters of generated text handed to the client so far."""
        return 0

    def _reported_final(self) -> bool:
        """Whether the provider has given its final usage, perhaps before the stream's last event."""
        return False

    def _searches(self) -> int:
        """The web searches the provider has run so far (its own search tool's)."""
        return 0

    def _advised(self) -> int:
        """The calls to an advisor tool the provider has made so far (Anthropic's)."""
        return 0

    def _served(self) -> Served | None:
        """What the provider has said so far of how it served the answer (`Served`), if anything."""
        return None

    def _provider_finished(self) -> bool:
        """Whether the provider finished its answer: its stream ended, or it gave its final usage before that."""
        return self._finished or self._reported_final()

    def usage(self) -> Usage:
        """The usage this stream is charged for (see `metered`)."""
        return self.metered()[0]

    def metered(self) -> tuple[Usage, str]:
        """What the stream is charged for, and how that is known (`LedgerItem.cost_source`): the provider's
        usage once it finished; for a stream cut short or without usage, an estimate: the provider's input counts
        where it gave them (exact from its first: Anthropic's `message_start`), else the prompt's estimate, and the
        output the provider counted so far or the relayed text's estimate, whichever is larger; and for a reasoning
        request cut short (one that asks for reasoning, or to a model that reasons unasked: `wants_reasoning`), whose
        hidden reasoning cannot be seen, the reserved worst case (with the provider's input counts, where it gave
        them)."""
        usage = self._reported()
        if usage is not None and not plausible(usage):
            usage = None
        finished = self._provider_finished()
        # (0 tokens out for what was relayed is no count of it, as for a whole answer: `counts_output`. Its input
        # counts stand.)
        if finished and usage is not None and counts_output(usage, self._relayed_chars):
            return usage, "provider"
        counted = usage or self._opening_usage()
        if counted is not None and not plausible(counted):
            counted = None
        # Each advisor call that started is billed too, in the final usage alone: charged its reserved bound (a
        # reasoning stream's worst case holds its advisors' where the request named them; the calls seen where not).
        self.ex.advised = self._advised()
        unasked = self.attempt.adapter.reasons_unasked(self.attempt.target, reasoning_off(self.req))
        if not finished and wants_reasoning(self.req, unasked):
            return counted or Usage(), "reserved"
        estimate, source = self.pipeline._checked(None, self.ex, self._relayed_chars)
        if counted is not None:
            # The provider counts the prompt before it writes: its input counts, cache reads and writes among them,
            # are its bill's. Taking the larger of them and the prompt's upper bound charged a Claude Code turn
            # left early 10.9 times what Anthropic billed (51,242 cached tokens charged again as input). A count
            # of 0 is no count (a usage of the output alone).
            prompt = counted.prompt_tokens or estimate.prompt_tokens
            completion = max(counted.completion_tokens, estimate.completion_tokens)
            estimate = counted.counted_as(prompt, completion)
        searches = self._searches()
        if searches > estimate.web_searches:  # each search that ran is billed, the stream cut or not
            estimate.set_count("web_searches", searches)
        return estimate, source

    def _handing_out(self, batch: list[T]) -> None:
        """Called with each batch as it goes to the client."""

    async def prime(self) -> None:
        """Read until the first item. A stream that ends before any is the provider's malformed answer: retryable,
        so the plan goes on; charged the usage the provider reported in it, where it did (`_billed_malformed`), as a
        whole answer the gateway cannot use is, else its worst case. The one exception is the answer of no choice
        whose stream said it ended whole (OpenAI's `[DONE]` after a chunk of `"choices": []` and its usage): that is
        the answer the same request gets whole, a 200 of no choice, and it streams as one, billed that usage. (A
        whole JSON body answering the stream's request is read by the stream itself, `_items`: an error object alone
        is the provider's error.)"""
        try:
            while not self._pending and not self._finished and self._failure is None:
                await self._pull()
            if self._failure is not None:  # (nothing has gone to the client: the next deployment is tried)
                await self._billed_malformed(self._failure)
                raise self._failure
            if not self._pending:
                usage = self._reported()
                if usage is not None and plausible(usage) and self._said_ended():
                    self._head = None
                    return  # (the empty answer: its front-end writes its opening and its end, as a whole one's)
                if usage is not None and plausible(usage):
                    failure = malformed("the provider's stream ended with its usage and no answer")
                else:
                    said = error_excerpt(self._head or b"")
                    failure = malformed(f"the provider's stream ended before its first event: {said}")
                await self._billed_malformed(failure)
                raise failure
            self._head = None
        except BaseException:
            await self.response.close()
            raise

    async def _billed_malformed(self, failure: Exception) -> None:
        """A malformed answer before the stream's first item (an event that fails its shape, a stream of its usage
        alone) is billed what the provider reported in it (`UpstreamError.billed`), as the same answer whole is:
        after an event that failed, the rest of the stream is read to its end for that usage alone (`_salvage`),
        each read bounded as any is. Charged its worst case instead, a chat stream of no choice and a usage of 10
        in and 5 out was billed 50 out, 5.5 times what the provider reported, where the same answer whole was billed
        the usage. Where it reported none after the failure (a running count an event before it gave is not the
        bill), or the rest cannot be read, its worst case stands: it ran the request for what the gateway cannot
        see."""
        if not isinstance(failure, UpstreamError) or failure.upstream_status != 200 or failure.billed is not None:
            return  # (the provider's own error: not billed, failed over as its status is)
        before = self._reported() if failure is self._failure else None
        self._salvaging = True
        self._salvage(self._unread)
        try:
            while not self._finished:
                await self._pull()
        except GatewayError:  # (a stall, a broken connection, a stream past its bound: its bill unread)
            return
        usage = self._reported()
        if usage is not None and usage is not before and plausible(usage):
            failure.billed = usage

    async def _pull(self) -> None:
        waited = time.perf_counter()
        try:
            raw: bytes | None = await self._raw.__anext__()
        except StopAsyncIteration:
            raw = None
        finally:
            if self._head is None:
                # Past the stream's head (`_failover` timed the attempt up to it), waiting on the provider as it
                # generates: upstream time. It was the gateway's own: an 8 s stream logged `gateway_ms` 7,998.
                self.ex.upstream_ms += (time.perf_counter() - waited) * 1000
        if raw is None:
            self._finished = True
            try:
                self._pending.extend(self._items(self.decoder.finish()))
            except SHAPE_ERRORS as exc:
                raise misshapen("stream event", exc) from exc
            return
        if self._head is not None and len(self._head) < HEAD_KEPT:
            self._head += raw[: HEAD_KEPT - len(self._head)]  # what it said, if no event comes of it
        try:
            self._pending.extend(self._items(self.decoder.feed(raw)))
        except SHAPE_ERRORS as exc:
            raise misshapen("stream event", exc) from exc

    async def batches(self) -> AsyncIterator[list[T]]:
        """The items as they arrive, grouped by the upstream read that brought them. The request's deadline holds
        for the whole stream, not only its head: on Lambda, a body still running when the invocation's time ran
        out was killed with the function, its settlement never written (the provider billed it, the ledger and
        the budget never saw it); past it, the stream ends with the in-stream 504 and is settled. So does the
        gateway's bound on a whole request (`gateway.timeouts.request`), past which its budget reservation could
        be released as a dead request's: each read times out there already (the attempt's `total` ends there), so
        without a client's deadline no timer more is set per read, and the clock is read once per batch, for a
        client that reads so slowly that the upstream's answer waits in the buffers."""
        ends = self.ex.ends_at
        timed = ends is not None and self.ex.controls.deadline_s is not None
        while True:
            if self._pending:
                batch, self._pending = self._pending, []
                self._handing_out(batch)
                if self.ex.trace is not None:
                    self.ex.trace.relayed(batch)
                yield batch
            if self._failure is not None:
                raise self._failure
            if self._finished:
                return
            try:
                await self._read_within(ends, timed)
            except GatewayError as exc:  # (what was held back for what was to come goes first, as before an event's)
                held = self._held_back()
                if not held:
                    raise
                self._pending.extend(held)
                self._failure = exc

    async def _read_within(self, ends: float | None, timed: bool) -> None:
        """The next read (`_pull`), within the request's deadline (`ends`, timed apart where the client set one:
        `timed`); past it, the deadline's error."""
        if ends is None:
            await self._pull()
            return
        if time.perf_counter() >= ends:
            raise deadline_passed(self.ex, "the stream's end")
        if not timed:
            try:
                await self._pull()
            except UpstreamTimeoutError:
                if time.perf_counter() >= ends - CUT_SLACK_S:  # (the attempt's `total`, cut at `ends`)
                    raise deadline_passed(self.ex, "the stream's end") from None
                raise
            return
        try:
            async with asyncio.timeout(max(0.0, ends - time.perf_counter())):
                await self._pull()
        except TimeoutError:
            raise deadline_passed(self.ex, "the stream's end") from None

    async def complete(self) -> None:
        """The upstream finished (with the error `failed` named, if it ended on one): check the answer against the
        schema if enforced (`schema_violation`: it streamed as it came, so it is checked whole only now), cost it
        and settle (in the background)."""
        if self.schema is not None and not self._settled:
            from handler.pipeline.schema_check import first_violation

            self.schema_violation = first_violation(self.schema, self._answers())
        await self._settle_once(200)

    def _answers(self) -> list[str]:
        """The answer's texts the schema checks, each choice's: a provider's own stream has one."""
        return ["".join(self._text)]

    def failed(self, status: int, said: GatewayError | None = None) -> None:
        """The stream ended on an error (the provider's, or one reading it) with this status, not on the client;
        `said`: the provider's failure, where it ended the stream in its own closing event (a Responses stream's
        `response.failed`), which raises nothing and is judged on the breaker as if raised (`judged`)."""
        self._ended_status = status
        self.ended_by = said

    async def close(self) -> None:
        """Always called: a stream abandoned by the client (or ended by an error, `failed`) still settles what the
        provider bills, with the status it ended on. Costed here, before the upstream is closed (`_settle`
        with `background` does not suspend: nothing can cancel it half-way), so the request's log line and
        metrics have its cost; its ledger line is written after."""
        try:
            await self._settle_once(CLIENT_CLOSED)
        finally:
            await self.response.close()

    async def _settle_once(self, status: int) -> None:
        """Cost the stream and settle it once, with the status of the error that ended it, else `status`."""
        if not self._settled:
            self._settled = True
            self.status = self._ended_status or status
            if self.ex.trace is not None:
                self.ex.trace.stream_ended()
            usage, source = self.metered()
            served = self._served()
            await self.pipeline._settle(self.ex, usage, self.status, background=True, source=source, served=served)


class NativeStream(UpstreamStream[StreamEvent]):
    """A provider's stream in its own format, event by event, metered on the way through by its adapter."""

    def __init__(
        self,
        pipeline: Pipeline,
        ex: Exchange,
        req: ChatRequest,
        call: NativeCall,
        attempt: Attempt,
        response: UpstreamResponse,
    ) -> None:
        super().__init__(pipeline, ex, req, attempt, response)
        # A server that ignores `stream` answers with one whole body: an error object alone is read as such (`_whole`).
        self.decoder = self.sniffer = WholeBodySniffer(self.decoder, response.max_body)
        self.meter = attempt.adapter.native_meter(call)
        self.call = call
        from handler.pipeline import redacting  # (with the first stream)

        if call.api == RESPONSES_API:
            # (an annotation's indices are positions in its text: `placed` says where secrets were redacted from it)
            self.redactor = redacting.EventRedactor(redacting.responses_delta, redacting.responses_within, placed=True)
        else:
            self.redactor = redacting.EventRedactor(redacting.messages_delta, redacting.messages_within)
        self.api = call.api

    def _items(self, events: list[StreamEvent]) -> list[StreamEvent]:
        if self.sniffer.whole is not None:
            events = [replayed for event in events for replayed in self._whole(event.data)]
        elif self._finished:
            # What the stream's end left of an event it cut part-way (no blank line after it, its data no whole JSON)
            # is no event, as the WHATWG rules leave an unfinished one: relayed, the provider's raw bytes reached the
            # client, whose SDK failed on them (the official Anthropic SDK raised JSONDecodeError) and never read the
            # error event after them, nor what the stream was charged. The stream ends as one cut short.
            events = [event for event in events if whole_event(event)]
        if self._salvaging:
            self._salvage(events)
            return []
        fed = 0
        try:
            for event in events:
                self.meter.feed(event)
                fed += 1
        except Exception as error:  # (the meter raises the stream's error: an untyped `{"error": ...}`, Anthropic's)
            self._broke_off(error, events[fed + 1 :])
            events = events[:fed]  # (those it metered)
        relayed = self.redactor.relay(events)
        return relayed + self.redactor.release() if self._finished or self._failure is not None else relayed

    def _read(self, event: StreamEvent) -> None:
        self.meter.feed(event)

    def _whole(self, body: bytes) -> list[StreamEvent]:
        """A whole body where the provider's own stream was asked for: a whole answer of the API (read as the same
        body answering a whole request is, `native_usage`) is replayed as the events its stream would have brought
        (`handler.pipeline.replay`), metered and relayed as they are, so the client gets its stream and the line the
        provider's usage, as a Chat Completions deployment's whole answer is streamed (`ChunkStream._whole`); an
        error object alone is the provider's error at the status the adapter reads in it; anything else (a page, an
        answer of no stream's shape), the provider's malformed answer, as a stream that brought no event is. (Taken
        for a malformed 200, the error would be charged its worst case: a request the next deployment served,
        $0.008213 for an answer that cost $0.000001; and so would a whole answer, a 502 charged 4,000 tokens out where
        the provider billed 5.)"""
        try:
            data = json_body(body)
            if isinstance(data, dict):
                self.attempt.adapter.native_usage(self.call, data)
                from handler.pipeline.replay import replayed  # (with the first whole answer: few servers write one)

                return replayed(self.api, data)
        except UpstreamError as failed:
            if not 200 <= failed.upstream_status < 300:
                raise  # the provider's error: free, failed over as its status is, that status in the route
        except (GatewayError, *SHAPE_ERRORS):
            pass
        raise malformed(f"the provider's stream ended before its first event: {error_excerpt(body)}")

    def _handing_out(self, batch: list[StreamEvent]) -> None:
        if self.schema is None:
            return
        for event in batch:
            text = answer_delta(self.api, event)
            if text is not None:
                self._text.append(text)

    async def _settle_once(self, status: int) -> None:
        if not self._settled and "thread" in self.call.body:  # (its answer's size, for a `continue` of it)
            usage, source = self.metered()
            if source == "provider":  # (cut short, its size is not known: a `continue` of it holds the whole window)
                self.pipeline.thread_answered(self.ex, self.meter.answer_id, usage, self.meter.served)
        await super()._settle_once(status)

    def _reported(self) -> Usage | None:
        return self.meter.usage

    def _served(self) -> Served | None:
        return self.meter.served

    def _relayed_chars(self) -> int:
        return self.meter.output_chars

    def _reported_final(self) -> bool:
        return self.meter.final

    def _searches(self) -> int:
        return self.meter.searches

    def _advised(self) -> int:
        return self.meter.advised

    def _provider_finished(self) -> bool:
        # A provider's own stream ends its answer with the final usage (Anthropic's `message_delta`, a Responses
        # stream's terminal event): one that ended without it was cut short, however its connection closed.
        return self.meter.final


def judged(stream: UpstreamStream[Any], failure: GatewayError | None) -> None:
    """A stream's end on its deployment's breaker, as the same answer not streamed is judged (`Pipeline._failover`),
    whose first event only closed an open breaker (`Breakers.answered`): finished, a success; failed part way for a
    passing reason (an error the provider wrote there, a Responses stream's own `response.failed` among them, its rate
    limit, its overload, its stream broken, stalled or ended before its answer was finished, a malformed event), a
    failure; a request the provider refused, or an answer that missed its schema, a success. Anything else (the client
    gone, the request's deadline) says nothing either way. With its first event counted as the deployment's
    success, a deployment failing every stream part way would never be taken out of rotation: after five overloaded
    streams in a row the sixth would be sent to it again; and so would one whose Responses streams end in
    `response.failed`, or whose streams of any API end before their last event (`stream_interrupted`)."""
    breakers = stream.pipeline.gateway.router.breakers
    label = stream.attempt.target.label
    failure = failure or stream.ended_by
    if failure is None:
        if stream.status == 200:
            breakers.success(label)
    elif isinstance(failure, UpstreamError) and failure.code == INTERRUPTED:
        breakers.failure(label)  # (cut short as a broken stream is, with no word of why: neither limit nor overload)
    elif isinstance(failure, UpstreamError) and failure.retryable and not isinstance(failure, SchemaViolationError):
        breakers.failure(label, failure.rate_limited, failure.overloaded)
    elif isinstance(failure, SchemaViolationError) or getattr(failure, "upstream_status", 0) >= 400:
        breakers.success(label)


async def guarded(
    stream: UpstreamStream[Any], events: AsyncGenerator[bytes], failed: Callable[[GatewayError], Awaitable[bytes]]
) -> AsyncGenerator[bytes]:
    """`events`, then: an error after the first byte as the front-end's in-stream error (`failed`), written once the
    stream is settled, so that it can carry what the stream was charged (`ex.cost`, its ledger line's: the error
    event is the stream's last, and a client reconciles from it as from a finished stream's last event); the stream
    closed (and settled) however it ended; the request observed."""
    failure: GatewayError | None = None
    stopped: GatewayError | None = None
    try:
        try:
            async for data in events:
                yield data
        except GatewayError as exc:
            failure = exc
        except Exception:  # a bug: the client still gets the in-stream error, not a connection cut mid-event
            logger.exception("a stream failed", extra={"request_id": stream.ex.request_id})
            failure = GatewayError("the gateway failed while relaying this stream; it has been logged")
        except asyncio.CancelledError:
            if stream.ex.client_left or not stream.pipeline.gateway.stopping:
                raise
            # The server stopped and its grace ran out: settled as a stream its client left is (status 499, what was
            # produced), it ends with its API's error event, where it was cut with no word.
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            failure = stopped = shut_down_before(stream.ex, streamed=True)
        if failure is not None:
            if failure is not stopped:
                stream.failed(failure.status)
            await stream.close()  # settled with the failure's status (and the upstream closed) before the event
            yield await failed(failure)
    finally:
        await events.aclose()
        await stream.close()
        if stopped is None:  # (a server that stopped: no word on the deployment)
            judged(stream, failure)  # (`failure is not stopped`, None for both, judged no finished stream)
        # (A client that left mid-stream: its line says why, as a whole answer's does.)
        code = failure.code if failure else (ClientClosedError.default_code if stream.status == CLIENT_CLOSED else None)
        observe(stream.ex, stream.status, stream=True, code=code)
