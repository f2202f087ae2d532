"""A provider's stream read in the gateway's chunk form (`ChunkStream`), whatever API the provider speaks: its
chunks, with a secret the model writes across deltas held back until it can be redacted (`ChunkRedactor`), its
usage, cost and settlement. Imported with the first stream (or a front-end that streams), not at a cold start:
a Lambda whose requests are whole answers never needs it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from handler import schemas
from handler.errors import GatewayError, UpstreamError
from handler.pipeline.passthrough import UpstreamStream
from handler.pipeline.pricing import tier_served
from handler.pipeline.redacting import ChunkRedactor
from handler.pipeline.upstream import UpstreamResponse
from handler.ports import Served, StreamParser
from handler.schemas import ChatRequest, Usage
from handler.wire import SHAPE_ERRORS, StreamEvent, WholeBodySniffer, error_excerpt, malformed

if TYPE_CHECKING:
    from handler.pipeline.exchange import Exchange
    from handler.pipeline.pipeline import Pipeline
    from handler.pipeline.routing import Attempt
    from handler.schemas import ChatCompletionChunk


class ChunkStream(UpstreamStream["ChatCompletionChunk"]):
    """An upstream stream in the gateway's chunk form, with its usage, cost and settlement.

    Chunks that carry only usage are withheld: the route writes one final event with usage and cost.
    """

    def __init__(
        self, pipeline: Pipeline, ex: Exchange, req: ChatRequest, attempt: Attempt, response: UpstreamResponse
    ) -> None:
        super().__init__(pipeline, ex, req, attempt, response)
        self.parser: StreamParser = attempt.adapter.stream_parser(req, attempt.target)
        # A server that ignores `stream` answers with the whole completion: it is streamed from that (`_whole`).
        self.decoder = self.sniffer = WholeBodySniffer(self.decoder, response.max_body)
        self._whole_usage: Usage | None = None
        self._whole_served: Served | None = None
        self._template: ChatCompletionChunk | None = None
        self._chars = 0
        self._refused: dict[int, int] = {}  # each choice's refusal's characters, counted in `_chars`
        # Each choice handed out so far, with the characters of its text (for the redactor, which moves the positions
        # of the choice's annotations past a secret it redacts from that text).
        self._choices: dict[int, int] = {}
        self._finished_choices: set[int] = set()
        # Each choice the parser has brought, and those it has brought the finish reason of, as they are read (not
        # handed out): whether the usage read at or after the last of them is the provider's final one
        # (`_reported_final`).
        self._read_choices: set[int] = set()
        self._read_finished: set[int] = set()
        self._final_usage = False
        self._texts: dict[int, list[str]] = {}  # each choice's text as it was handed out, where a schema is enforced
        self.redactor = ChunkRedactor(self._choices)

    @property
    def cut(self) -> bool:
        """Whether the upstream stream ended with a choice (or every choice) left without its finish reason:
        what was sent is billed, but the answer is not whole. A stream that said it ended (OpenAI's `[DONE]`,
        which some compatible servers send with no finish reason) is whole."""
        if self._said_ended():
            return False
        return not self._finished_choices or self._choices.keys() != self._finished_choices

    def _items(self, events: list[StreamEvent]) -> list[ChatCompletionChunk]:
        if self._salvaging:
            self._salvage(events)
            return []
        if self.sniffer.whole is not None:
            chunks = [c for e in events for c in self._whole(e.data)]
        else:
            chunks = []
            fed = 0
            try:
                for event in events:
                    before = self.parser.usage
                    fed_chunks = self.parser.feed(event)
                    chunks += fed_chunks
                    fed += 1
                    self._read_ends(fed_chunks, before)
            except Exception as error:  # (the parser raises the stream's error: the chunks before it go on first)
                held_back = getattr(self.parser, "held_back", None)  # (and any it held for the next: `_signed_late`)
                if held_back is not None:
                    chunks += held_back()
                self._broke_off(error, events[fed + 1 :])
            else:
                if self._finished:
                    chunks += self.parser.finish()
        return self._kept(chunks, self._finished or self._failure is not None)

    def _read_ends(self, chunks: list[ChatCompletionChunk], before: object) -> None:
        """Note the choices `chunks` (one event's) bring and end, and whether the event gave the stream's final usage:
        a usage read (anew: not the one held `before` it) once every choice it brought has its finish reason
        (OpenAI's chunk of usage alone after the finish, Anthropic's `message_delta`, Gemini's finishing chunk, a
        server's usage on every chunk, the finishing one's among them). Read so, a stream cut before its end marker
        (`[DONE]`, `message_stop`, the close) is charged the provider's usage, not an estimate of what was relayed
        (found by review, streamrev36: 100 tokens out, the worst case, for the provider's 20)."""
        for chunk in chunks:
            for choice in chunk.choices:
                self._read_choices.add(choice.index)
                if choice.finish_reason:
                    self._read_finished.add(choice.index)
        ended = bool(self._read_choices) and self._read_choices == self._read_finished
        usage = self.parser.usage
        if not ended:
            self._final_usage = False  # (a choice brought after the usage: the answer goes on)
        elif usage is not None and usage is not before:
            self._final_usage = True

    def _reported_final(self) -> bool:
        return self._final_usage

    def _held_back(self) -> list[ChatCompletionChunk]:
        held_back = getattr(self.parser, "held_back", None)
        if held_back is None or self._salvaging or self.sniffer.whole is not None:
            return []
        return self._kept(held_back(), True)

    def _kept(self, chunks: list[ChatCompletionChunk], final: bool) -> list[ChatCompletionChunk]:
        """`chunks` as they are handed out (`final`: the stream's last): a chunk of usage alone goes no further (its
        usage is the stream's, and a chunk's own is taken off), and each is redacted."""
        kept = []
        for chunk in chunks:
            if self._template is None:
                self._template = chunk
            if not chunk.choices and chunk.usage is not None:
                continue
            chunk.usage = None
            kept.append(chunk)
        self.redactor.redact(kept, final, self._template)
        return kept

    def _read(self, event: StreamEvent) -> None:
        self.parser.feed(event)

    def _said_ended(self) -> bool:
        return bool(getattr(self.parser, "ended", False))

    async def __aiter__(self) -> AsyncIterator[ChatCompletionChunk]:
        async for batch in self.batches():
            for chunk in batch:
                yield chunk

    def _handing_out(self, batch: list[ChatCompletionChunk]) -> None:
        for chunk in batch:
            self._count(chunk)

    def _count(self, chunk: ChatCompletionChunk) -> None:
        choices = self._choices
        for choice in chunk.choices:
            index, delta = choice.index, choice.delta
            text = delta.content
            content = len(text) if text else 0
            choices[index] = choices.get(index, 0) + content
            if choice.finish_reason:
                self._finished_choices.add(index)
            self._chars += content + len(delta.reasoning_content or "")
            if delta.refusal:
                self._chars += len(delta.refusal)
                self._refused[index] = self._refused.get(index, 0) + len(delta.refusal)
            if choice.finish_reason == "content_filter" and index in self._refused:
                # (The refusal of a choice a filter ended is no written output: `pipeline.answer_chars`.)
                self._chars -= self._refused.pop(index)
            if text and self.schema is not None:
                self._texts.setdefault(index, []).append(text)
            for call in delta.tool_calls or ():  # (its name and arguments, as `pipeline.answer_chars` counts them)
                if call.function:
                    self._chars += len(call.function.arguments or "") + len(call.function.name or "")

    def _answers(self) -> list[str]:
        """Every choice's text, in the order of their indices (with `n: 2`, only the first was checked)."""
        return ["".join(self._texts.get(index, ())) for index in sorted(self._choices)] or [""]

    def _whole(self, body: bytes) -> list[ChatCompletionChunk]:
        """A whole answer where a stream was asked for, read as the provider's non-streamed answer and handed out
        as the chunks its stream would have brought; an error object alone, the provider's error at the status the
        adapter read in it (`answered_error`), as the same body answering a whole request is; anything else (a page,
        a body of no completion), the provider's malformed answer, as a stream that brought no event is. (An error
        object taken for a malformed 200 would be charged its worst case, which a request served by the next
        deployment pays on top of its own answer: $0.008222 where the same request not streamed costs $0.00002.)"""
        try:
            completion, served = self.attempt.adapter.chat_answer(body, self.req, self.attempt.target)
        except UpstreamError as unusable:
            if unusable.billed is not None or not 200 <= unusable.upstream_status < 300:
                # An answer the adapter read and could not use (its own error names why, with what it billed), or
                # the provider's error (free, failed over as its status is, that status in the route).
                raise
            raise malformed(f"the provider's stream ended before its first event: {error_excerpt(body)}") from None
        except (GatewayError, *SHAPE_ERRORS):
            raise malformed(f"the provider's stream ended before its first event: {error_excerpt(body)}") from None
        self._whole_usage, self._whole_served = completion.usage, served
        return schemas.completion_chunks(completion)

    def _reported(self) -> Usage | None:
        if self._whole_usage is not None:
            return self._whole_usage
        usage = self.parser.usage
        return usage if isinstance(usage, Usage) else None

    def _opening_usage(self) -> Usage | None:
        return self.parser.opening_usage

    def _searches(self) -> int:
        return self.parser.searches

    def _relayed_chars(self) -> int:
        return self._chars

    def _served(self) -> Served | None:
        """What the provider said of how it served the answer: in its usage, as its parser read it (Anthropic's
        speed and geo, its advisor's tokens), else the service tier its chunks say it ran at (OpenAI's, on every
        chunk: the first's is read)."""
        served = self._whole_served if self.sniffer.whole is not None else self.parser.served
        if served is not None:
            return served
        template = self._template
        return tier_served(template.model_extra, self.ex.service_tier) if template is not None else None

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

    def error_chunk(self, error: GatewayError, include_usage: bool) -> dict[str, object]:
        """The last data event of a stream that ended on an error: OpenAI's in-stream error, and beside it what the
        stream was charged (settled before it is written, `guarded`): the cost always, the usage if asked for, as
        the last event of a stream that finished has them."""
        payload = error.openai_body()
        cost = self.ex.cost
        if include_usage and cost is not None:
            payload["usage"] = cost.usage.model_dump(exclude_none=True)
        payload["cost"] = cost.as_event() if cost else None
        return payload
