"""Native pass-through: a request in a provider API's own format, answered as that provider answered it.

When a front-end's format is the deployment's own (a Messages request to an Anthropic deployment), the
client's body goes upstream as sent (model renamed, output capped) and the answer comes back unchanged:
a non-streaming body as a `NativeReply`, a stream as a `NativeStream` of the provider's own events. The
adapter's meter reads the usage from them; the pipeline costs and settles as for any other request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from handler.ports import NativeCall, StreamEvent
from handler.pricing import estimate_prompt_tokens
from handler.schemas import ChatRequest, Usage
from handler.upstream import UpstreamResponse

if TYPE_CHECKING:
    from handler.proxy import Exchange, Pipeline
    from handler.routing import Attempt

CLIENT_CLOSED = 499


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


class NativeStream:
    """A provider's stream in its own format, event by event, metered on the way through.

    Like `ChunkStream`: `prime` reads until the first event (an error before it lets the pipeline fail
    over), `complete` settles once the provider's final usage is in, `close` always runs and settles a
    stream the client abandoned with what the provider will bill.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        ex: Exchange,
        req: ChatRequest,
        call: NativeCall,
        attempt: Attempt,
        response: UpstreamResponse,
    ) -> None:
        self.pipeline = pipeline
        self.ex = ex
        self.req = req
        self.attempt = attempt
        self.response = response
        self.decoder = attempt.adapter.frame_decoder()
        self.meter = attempt.adapter.native_meter(call)
        self._raw = response.chunks()
        self._pending: list[StreamEvent] = []
        self._finished = False
        self._settled = False

    async def prime(self) -> None:
        """Read until the first event."""
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
            self._finished = True
        else:
            events = self.decoder.feed(raw)
        for event in events:
            self.meter.feed(event)
            self._pending.append(event)

    async def batches(self) -> AsyncIterator[list[StreamEvent]]:
        """The events as they arrive, grouped by the upstream read that brought them."""
        while True:
            if self._pending:
                batch, self._pending = self._pending, []
                yield batch
            if self._finished:
                return
            await self._pull()

    def usage(self) -> Usage:
        """The provider's usage, or an estimate (the whole prompt, no output) when it sent none."""
        return self.meter.usage or Usage.of(estimate_prompt_tokens(self.req), 0)

    async def complete(self) -> None:
        """The provider's final usage is in: cost the stream and settle (in the background)."""
        if not self._settled:
            self._settled = True
            await self.pipeline._settle(self.ex, self.usage(), 200, background=True)

    async def close(self) -> None:
        """Always called: a stream abandoned by the client still settles what the provider bills."""
        await self.response.close()
        if not self._settled:
            self._settled = True
            self.pipeline.gateway.spawn(self.pipeline._settle(self.ex, self.usage(), CLIENT_CLOSED))
