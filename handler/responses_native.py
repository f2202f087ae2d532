"""`/v1/responses` relayed to deployments that serve the Responses API themselves (OpenAI, Azure OpenAI).

When every deployment a request may go to serves the API, the client's body goes upstream as sent, with
the model renamed to the deployment's, the output capped where the key's budget requires it, and
`store: false` unless the operator lets the provider keep answers (the gateway keeps them itself). A
`previous_response_id` the gateway stored is expanded into the input it stands for. The answer or the
event stream comes back as the provider sent it, metered from its `usage`; the gateway adds its `cost`
and says what it did with `store`.
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

import orjson

from handler.errors import GatewayError, UpstreamError
from handler.observability import observe
from handler.ports import BuiltRequest, SSEDecoder, StreamEvent, json_body, malformed
from handler.pricing import estimate_prompt_tokens
from handler.proxy import Exchange, Pipeline
from handler.responses_api import ReasoningSeal, ResponsesRequest, input_items
from handler.routing import Attempt
from handler.schemas import ChatRequest, CompletionTokensDetails, Usage
from handler.streaming import sse_event
from handler.upstream import UpstreamResponse

Finished = Callable[[dict[str, Any]], Awaitable[None]]
TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})


def relayable(plan: list[Attempt]) -> bool:
    """Whether every deployment of the plan serves the Responses API itself."""
    return bool(plan) and all(a.adapter.serves_responses(a.target) for a in plan)


def usage_of(raw: Any) -> Usage | None:
    """A Responses `usage` object as the gateway's usage."""
    if not isinstance(raw, dict):
        return None
    details = raw.get("input_tokens_details") or {}
    output_details = raw.get("output_tokens_details") or {}
    usage = Usage.of(int(raw.get("input_tokens") or 0), int(raw.get("output_tokens") or 0))
    if usage.prompt_tokens_details is not None:
        usage.prompt_tokens_details.cached_tokens = int(details.get("cached_tokens") or 0)
    reasoning = int(output_details.get("reasoning_tokens") or 0)
    usage.completion_tokens_details = CompletionTokensDetails(reasoning_tokens=reasoning)
    return usage


class Relay:
    """One relayed request: the body each deployment gets, and what the gateway changes in the answer."""

    def __init__(self, body: ResponsesRequest, history: list[dict[str, Any]], chat: ChatRequest, ex: Exchange) -> None:
        self.body = body
        self.chat = chat
        self.ex = ex
        self.sent = body.model_dump(exclude_unset=True, by_alias=True)
        items = [*history, *input_items(body)] if history or body.previous_response_id else self.sent.get("input")
        self.sent.pop("previous_response_id", None)  # the gateway's id: the provider never saw it
        if isinstance(items, list):
            kept = [item for item in items if not self._sealed_here(item)]
            if len(kept) < len(items):
                # The gateway's own seal (from a turn another provider served) means nothing to this one.
                ex.inbound_dropped.append("input[reasoning].encrypted_content")
            items = kept
        if items is not None:
            self.sent["input"] = items

    @staticmethod
    def _sealed_here(item: Any) -> bool:
        if not isinstance(item, dict) or item.get("type") != "reasoning":
            return False
        sealed = item.get("encrypted_content")
        return isinstance(sealed, str) and sealed.startswith(ReasoningSeal.PREFIX)

    def build(self, attempt: Attempt) -> BuiltRequest:
        body = {**self.sent, "model": attempt.target.model}
        if not (attempt.adapter.responses_store() and self.body.stored):
            body["store"] = False
        cap = self.chat.max_completion_tokens  # the client's, or the admission's cap for a budgeted key
        if cap is not None:
            body["max_output_tokens"] = cap
        return BuiltRequest(attempt.adapter.responses_request(body, attempt.target))

    def finish(self, response: dict[str, Any]) -> dict[str, Any]:
        """The gateway's part of an answer: what it did with `store`, the id the client continued, the cost."""
        response["store"] = self.body.stored
        response["previous_response_id"] = self.body.previous_response_id
        cost = self.ex.cost
        response["cost"] = cost.as_event() if cost is not None else None
        return response


async def relay_response(pipeline: Pipeline, relay: Relay, plan: list[Attempt]) -> dict[str, Any]:
    """A non-streaming relayed response, settled."""

    async def accept(attempt: Attempt, upstream: UpstreamResponse) -> dict[str, Any]:
        data = json_body(await upstream.read())
        if not isinstance(data, dict) or data.get("object") != "response":
            raise malformed("upstream answer is not a Responses API response")
        return data

    response = await pipeline.relay(relay.chat, relay.ex, plan, relay.build, accept)
    await pipeline.settle(relay.ex, usage_of(response.get("usage")) or Usage())
    return relay.finish(response)


class RelayedStream:
    """A relayed event stream: the provider's events, the terminal one with the gateway's additions."""

    def __init__(self, pipeline: Pipeline, relay: Relay, attempt: Attempt, upstream: UpstreamResponse) -> None:
        self.pipeline = pipeline
        self.relay = relay
        self.attempt = attempt
        self.upstream = upstream
        self.decoder = SSEDecoder()
        self._events = self._decoded()
        self._first: StreamEvent | None = None
        self._settled = False
        self.sequence = -1
        self.chars = 0
        self.usage: Usage | None = None

    async def _decoded(self) -> AsyncGenerator[StreamEvent, None]:
        async for raw in self.upstream.chunks():
            for event in self.decoder.feed(raw):
                yield event
        for event in self.decoder.finish():
            yield event

    async def prime(self) -> None:
        """Wait for the first event; a failure before it lets the router fail over."""
        try:
            self._first = await anext(self._events, None)
        except BaseException:
            await self.upstream.close()
            raise

    async def _all(self) -> AsyncIterator[StreamEvent]:
        if self._first is not None:
            yield self._first
        async for event in self._events:
            yield event

    async def _settle(self, status: int) -> None:
        if not self._settled:
            self._settled = True
            usage = self.usage or Usage.of(estimate_prompt_tokens(self.relay.chat), math.ceil(self.chars / 3))
            await self.pipeline.settle(self.relay.ex, usage, status)

    def _event(self, data: bytes) -> dict[str, Any]:
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise malformed("upstream sent a stream event that is not JSON", "invalid_json") from exc
        if not isinstance(event, dict):
            raise malformed("upstream sent a stream event that is not an object")
        if isinstance(event.get("sequence_number"), int):
            self.sequence = event["sequence_number"]
        return event

    async def events(self, on_finished: Finished) -> AsyncIterator[bytes]:
        """The client's stream; `on_finished` gets a completed response before it is sent on."""
        failure: GatewayError | None = None
        ended = False
        try:
            async for raw in self._all():
                name, data = raw.event or "", raw.data
                if not data or data == b"[DONE]":
                    continue
                event = self._event(data)
                kind = str(event.get("type") or name)
                delta = event.get("delta")
                if isinstance(delta, str):
                    self.chars += len(delta)
                if kind in TERMINAL and isinstance(event.get("response"), dict):
                    ended = True
                    response = event["response"]
                    self.usage = usage_of(response.get("usage"))
                    await self._settle(200)
                    self.relay.finish(response)
                    if kind != "response.failed":
                        await on_finished(response)
                    yield sse_event(kind, event)
                else:
                    yield _frame(kind, data)
            if not ended:
                raise UpstreamError(
                    "the provider's stream ended before the response was finished",
                    upstream_status=200,
                    retryable=False,
                    code="stream_interrupted",
                )
        except GatewayError as exc:
            failure = exc
            yield self._failed(exc)
        finally:
            await self._events.aclose()
            await self.upstream.close()
            await self._settle(499)
            observe(self.relay.ex, 200, stream=True, code=failure.code if failure else None)

    def _failed(self, exc: GatewayError) -> bytes:
        self.sequence += 1
        error = {"type": "error", "sequence_number": self.sequence, "code": exc.code, "message": exc.message}
        out = sse_event("error", {**error, "param": exc.param})
        self.sequence += 1
        failed = {"code": exc.code, "message": exc.message}
        response: dict[str, Any] = {"id": None, "object": "response", "status": "failed", "error": failed, "output": []}
        return out + sse_event(
            "response.failed", {"type": "response.failed", "sequence_number": self.sequence, "response": response}
        )


def _frame(kind: str, data: bytes) -> bytes:
    """An event as the provider sent it (its data untouched)."""
    return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"


async def relay_stream(pipeline: Pipeline, relay: Relay, plan: list[Attempt]) -> RelayedStream:
    """A relayed stream whose first event has arrived (failover is over by then)."""

    async def accept(attempt: Attempt, upstream: UpstreamResponse) -> RelayedStream:
        stream = RelayedStream(pipeline, relay, attempt, upstream)
        await stream.prime()
        return stream

    return await pipeline.relay(relay.chat, relay.ex, plan, relay.build, accept)
