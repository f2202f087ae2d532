"""Layer 3 of streaming: one serializer writing `data:` lines and the closing `[DONE]`.

Layers 1 (framing) and 2 (per-provider parsing) live with the adapters (`frame_decoder`,
`stream_parser`); everything the client receives on a stream is written here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from handler.errors import ClientClosedError
from handler.redaction import annotated, scrub, tokens_redacted
from handler.schemas import ChatCompletion

if TYPE_CHECKING:
    from handler.pipeline.exchange import Exchange
    from handler.schemas import ChatCompletionChunk

DONE = b"data: [DONE]\n\n"
T = TypeVar("T")
# How long past its request's end (`Exchange.ends_at`) a stream may still be written before it is cut as a client that
# left is (`DisconnectWatch.cut_past_the_end`). Its upstream is cut at the end already; what is written after it is the
# stream's close (the deadline's in-stream error, `[DONE]`: milliseconds to a client that reads). On Lambda, where the
# request's end is `LAMBDA_MARGIN_MS` (1.5 s) before the invocation's deadline, the cut comes `SETTLE_MARGIN_MS` (0.5 s)
# before it, the margin kept to spool a settlement the store has not taken; anywhere, far within the minute a
# reservation outlives the request's bound by (`reservation_ttl_seconds`).
PAST_THE_END_S = 1.0


def sse_chunk(chunk: ChatCompletionChunk) -> bytes:
    """One chunk as a `data:` line, with the members OpenAI requires even when null (see `Omitted`)."""
    return b"data: " + chunk.model_dump_json().encode() + b"\n\n"


def sse_chunk_usage_null(chunk: ChatCompletionChunk) -> bytes:
    """A chunk with `stream_options.include_usage` set: OpenAI's documented `"usage": null` on every chunk but the
    last (which holds the usage). Spliced into the written JSON: a member made null-writing in the model would be
    written on every stream, and a serializer of its own costs more than the splice."""
    body = chunk.model_dump_json().encode()
    if chunk.usage is None:
        body = body[:-1] + b',"usage":null}'
    return b"data: " + body + b"\n\n"


def answer_json(completion: ChatCompletion) -> bytes:
    """A whole chat answer, with the members OpenAI requires even when null (see `Omitted`). A message's
    `annotations` (a search model's `url_citation`) give positions in its text as the provider wrote it: where a
    secret in it is redacted (`scrub` would), the text is redacted now and they are moved past it (`annotated`), so
    that one after a key cites what it cited. A choice's log probabilities give its text again, token by token: the
    tokens of a secret are redacted as the text is (`tokens_redacted`). (Only a message with annotations, or a choice
    with log probabilities, is read for secrets here.)"""
    for choice in completion.choices:
        logprobs = choice.logprobs
        if logprobs and isinstance(logprobs, dict):
            for name in ("content", "refusal"):
                tokens_redacted(logprobs.get(name))
        message = choice.message
        extra = message.model_extra
        if extra and extra.get("annotations") and message.content:
            text = annotated(message.content, extra["annotations"])
            if text is not None:
                message.content = text
    return completion.model_dump_json().encode()


def sse_json(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def sse_event(event: str, payload: Any) -> bytes:
    """A named event, as the Anthropic Messages stream uses them."""
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


class DisconnectWatch:
    """Cancels the current task when the client disconnects (`gone` says it did); `stop()` when done.

    One plain task waiting on `receive`: started once the request's body was read, so what is left to
    receive is the disconnect (uvicorn) or nothing until the answer is sent (Mangum; and uvicorn behind the
    Lambda Web Adapter, whose connection stays open and reads the answer whole: no hang-up is seen on Lambda,
    docs/deploying.md). With `after_s`, the
    task starts only if the work is still going then: a quick answer pays a timer, not a task (a task,
    started and cancelled, cost several times the timer on the benchmark machine)."""

    def __init__(self, receive: Receive, after_s: float = 0.0, exchange: Exchange | None = None) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.task = task
        self.gone = False
        self._receive = receive
        self._exchange = exchange
        self._watcher: asyncio.Task[None] | None = None
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(after_s, self._start) if after_s else None
        if not after_s:
            self._start()

    def _start(self) -> None:
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    def cut_past_the_end(self) -> asyncio.TimerHandle | None:
        """A stream's one timer, until its events end (settled): `PAST_THE_END_S` after its request's end
        (`Exchange.ends_at`), a stream still going is cut as one whose client left (`gone`: settled once, a 499 charged
        what it produced), its upstream closed.
        Only a write can hold it there (its upstream reads end at the request's end): the server's `send` waits
        unbounded for a client that stopped reading (uvicorn's `drain`), and such a stream outlived its request's
        bound, and its reservation (`reservation_ttl_seconds`), which then released the budget it held: $0.00402
        charged on a $0.003 budget. (`gateway serve` closes such a connection at the request's end already:
        handler/entry/server.py.) None: the request has no end."""
        exchange = self._exchange
        ends_at = None if exchange is None else exchange.ends_at
        if ends_at is None:
            return None
        loop = asyncio.get_running_loop()
        return loop.call_at(loop.time() + ends_at - time.perf_counter() + PAST_THE_END_S, self._cut)

    def _cut(self) -> None:
        self.gone = True
        if self._exchange is not None:
            self._exchange.client_left = True
        self.task.cancel()

    async def _watch(self) -> None:
        try:
            while (await self._receive())["type"] != "http.disconnect":
                pass
        except Exception:  # noqa: BLE001 - a server that cannot tell: the work runs to its end
            return
        self.gone = True
        exchange = self._exchange
        if exchange is not None:
            exchange.client_left = True  # (its cancellation is the client's, not a stopping server's)
            if exchange.reserving:
                # Cancelled now, a reservation the store may have written would be held until it expires (its
                # request never learnt of it): the request ends once it is known, and releases it.
                return
        self.task.cancel()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._watcher is not None:
            self._watcher.cancel()

    def closed(self) -> ClientClosedError:
        """The client's 499, for the work this watch cancelled when the client left (`gone`)."""
        self.task.uncancel()
        return ClientClosedError("the client closed the connection before the answer")


class EventStream(Response):
    """An SSE answer: each piece of `events` is written as it comes, and a client that hangs up cancels
    the stream (whose generator then closes the upstream and settles what was used).

    Starlette's `StreamingResponse` does the same with an anyio task group per answer; on servers that
    speak ASGI 2.3 (uvicorn) or 2.0 (Mangum) that costs more than the rest of the stream's own work.
    Here one plain task watches for the disconnect and cancels the writer if it comes: `watch`, the one that
    watched the stream's head (`stream_head`).
    """

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[bytes], headers: Mapping[str, str], watch: DisconnectWatch) -> None:
        self.events = events
        self.watch = watch
        self.status_code = 200
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watch = self.watch
        cut = watch.cut_past_the_end()
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for piece in self.events:
                await send({"type": "http.response.body", "body": scrub(piece), "more_body": True})
            if cut is not None:
                # (The stream is settled, its events' end closed it: the last message is not cut, nor, behind the Web
                # Adapter, its wait for the settlements, which ends by the invocation's deadline less 0.5 s.)
                cut.cancel()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not watch.gone:
                raise
            watch.task.uncancel()  # the client left: nothing more to write, and nothing went wrong here
        finally:
            if cut is not None:
                cut.cancel()
            watch.stop()
            # Cancelled during a paused write, the generator waits at a `yield`: closed now, it closes the
            # upstream and settles what was used (else only once collected). Ended already: nothing to do.
            close = getattr(self.events, "aclose", None)
            if close is not None:
                await close()


WATCH_AFTER_S = 0.05  # a client leaving a non-streamed call is noticed this much later at most


async def until_client_leaves(request: Request, work: Coroutine[Any, Any, T], exchange: Exchange | None = None) -> T:
    """`work`, cancelled if the client disconnects first: its upstream call would otherwise run to its end
    (and be billed) for an answer nobody reads. Called once the request's body was read; the watch starts
    after `WATCH_AFTER_S`, so an answer quicker than that costs no task. Under Mangum (the buffered Lambda
    function, whose scope carries the event) nothing can leave before the answer: no watch at all."""
    if "aws.event" in request.scope:
        return await work
    watch = DisconnectWatch(request.receive, WATCH_AFTER_S, exchange)
    result = await watched(work, watch)
    watch.stop()
    return result


async def stream_head(request: Request, work: Coroutine[Any, Any, T], exchange: Exchange) -> tuple[T, DisconnectWatch]:
    """A stream's head (`work`: the attempts until its first chunk), cancelled if the client disconnects first, as
    `until_client_leaves` cancels a whole answer; and the watch, which goes on over the stream (`EventStream`).
    Started before the head rather than with the first write: a client gone while the provider was still to answer
    went unnoticed, and a stream that came in a single read was written to nobody, settled and logged as a 200
    before the watch ever ran. (The one task a stream's watch costs, started earlier.)"""
    watch = DisconnectWatch(request.receive, exchange=exchange)
    return await watched(work, watch), watch


async def watched(work: Coroutine[Any, Any, T], watch: DisconnectWatch) -> T:
    """`work` under `watch`: if it fails the watch stops, and a cancellation because the client left is the
    client's 499. (On success the watch is the caller's to stop, or to keep over a stream.)"""
    try:
        return await work
    except BaseException as exc:
        watch.stop()
        if isinstance(exc, asyncio.CancelledError) and watch.gone:
            raise watch.closed() from None
        raise
