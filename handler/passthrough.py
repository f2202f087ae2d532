"""Native pass-through: a request in a provider API's own format, answered as that provider answered it.

When a front-end's format is the deployment's own (a Messages request to an Anthropic deployment), the
client's body goes upstream as sent (model renamed, output capped) and the answer comes back unchanged:
a non-streaming body as a `NativeReply`, a stream as a `NativeStream` of the provider's own events. The
adapter's meter reads the usage from them; the pipeline costs and settles as for any other request.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from handler.ports import NativeCall, StreamEvent
from handler.pricing import estimate_prompt_tokens
from handler.schemas import ChatRequest, Usage
from handler.upstream import UpstreamResponse

if TYPE_CHECKING:
    from handler.proxy import Exchange, Pipeline
    from handler.routing import Attempt

CLIENT_CLOSED = 499  # nginx's status for a client that hung up: the ledger's word for an abandoned stream
T = TypeVar("T")


@dataclass(slots=True)
class NativeReply:
    """A provider's non-streaming answer in its own format, and the usage read from it."""

    body: dict[str, Any]
    usage: Usage


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

    @abstractmethod
    def _items(self, events: list[StreamEvent]) -> list[T]:
        """The items these decoded events bring (the provider has finished when `_finished` is set)."""

    @abstractmethod
    def usage(self) -> Usage:
        """The provider's usage, or an estimate of what it bills for a stream cut short."""

    def _handing_out(self, batch: list[T]) -> None:
        """Called with each batch as it goes to the client."""

    async def prime(self) -> None:
        """Read until the first item."""
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
            self._finished = True
            self._pending.extend(self._items(self.decoder.finish()))
        else:
            self._pending.extend(self._items(self.decoder.feed(raw)))

    async def batches(self) -> AsyncIterator[list[T]]:
        """The items as they arrive, grouped by the upstream read that brought them."""
        while True:
            if self._pending:
                batch, self._pending = self._pending, []
                self._handing_out(batch)
                yield batch
            if self._finished:
                return
            await self._pull()

    async def complete(self) -> None:
        """The upstream finished: cost it and settle (in the background)."""
        if not self._settled:
            self._settled = True
            await self.pipeline._settle(self.ex, self.usage(), 200, background=True)

    async def close(self) -> None:
        """Always called: a stream abandoned by the client still settles what the provider bills."""
        await self.response.close()
        if not self._settled:
            self._settled = True
            self.pipeline.gateway.spawn(self.pipeline._settle(self.ex, self.usage(), CLIENT_CLOSED))


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
        self.meter = attempt.adapter.native_meter(call)

    def _items(self, events: list[StreamEvent]) -> list[StreamEvent]:
        for event in events:
            self.meter.feed(event)
        return events

    def usage(self) -> Usage:
        """The provider's usage, or an estimate (the whole prompt, no output) when it sent none."""
        return self.meter.usage or Usage.of(estimate_prompt_tokens(self.req), 0)
