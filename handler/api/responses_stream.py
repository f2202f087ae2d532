"""The Responses API's event stream, written from the internal chunk stream.

`response.created` and `response.in_progress` open it; each output item (reasoning, message,
function call) is announced (`output_item.added`), filled by deltas and closed (`output_item.done`)
in the order the provider produced them; `response.completed` (or `response.incomplete`) carries the
whole response with usage and cost. An upstream failure after the first event ends the stream with
`error` and `response.failed`, whose response has the output as far as it was streamed, and the usage and cost
charged. Every event has a `sequence_number`, counted from 0.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Collection
from typing import Any

from handler.api.call_order import CallOrder
from handler.api.reasoning_seal import ReasoningSeal
from handler.api.responses_api import (
    Namespaces,
    ResponseIds,
    ResponsesRequest,
    call_item,
    content_part,
    ending_status,
    envelope,
    finish,
    merge,
    message_item,
    reasoning_fields,
    reasoning_item,
    search_call,
    url_citations,
)
from handler.api.streaming import sse_event
from handler.errors import GatewayError, UpstreamError
from handler.pipeline.chunk_stream import ChunkStream
from handler.pipeline.passthrough import guarded
from handler.pipeline.pricing import Cost
from handler.schemas import ChatCompletionChunk, ToolCallDelta
from handler.wire import interrupted

Finished = Callable[[dict[str, Any]], Awaitable[None]]


class _Item:
    """An output item being streamed."""

    def __init__(self, kind: str, item_id: str, index: int) -> None:
        self.kind = kind
        self.id = item_id
        self.index = index
        self.text: list[str] = []  # of the open content part, for a message
        self.parts: list[dict[str, Any]] = []  # a message's finished content parts
        self.part: str | None = None  # the kind of a message's open content part
        self.fields: dict[str, Any] = {}
        self.call_id = ""
        self.name = ""
        self.start = 0  # where the open content part's text starts in the answer's (its annotations' origin)
        self.annotations: list[dict[str, Any]] = []  # the open content part's


class ResponsesEventWriter:
    """Turns internal chunks into Responses events, one output item open at a time."""

    def __init__(
        self, req: ResponsesRequest, ids: ResponseIds, seal: ReasoningSeal, dropped: Collection[str] = ()
    ) -> None:
        self.req = req
        self.ids = ids
        self.seal = seal
        self.dropped = dropped  # (what the deployment streaming the answer was not sent: `envelope`)
        self.created_at = int(time.time())
        self.sequence = 0
        self.output: list[dict[str, Any]] = []
        self.open: _Item | None = None
        self.open_key: tuple[str, int] | None = None
        self.finish_reason: str | None = None
        self.trailing: dict[str, Any] = {}
        self.calls = CallOrder()
        self.spaces = Namespaces(req.tools)  # (a call of a namespace's function names it: `call_item`)
        self.served_tier: str | None = None  # (the tier the chunks say the answer runs at: `envelope`)
        self.written = 0  # the answer's text so far, in characters (where its annotations point)
        self.held: list[dict[str, Any]] = []  # searches given while an item was open, written once it closes

    def event(self, kind: str, **payload: Any) -> bytes:
        data = {"type": kind, "sequence_number": self.sequence, **payload}
        self.sequence += 1
        return sse_event(kind, data)

    def response(self, status: str) -> dict[str, Any]:
        return envelope(
            self.req,
            self.ids.response,
            self.created_at,
            status=status,
            output=list(self.output),
            finish_reason=self.finish_reason,
            dropped=self.dropped,
            served_tier=self.served_tier,
        )

    def start(self) -> bytes:
        response = self.response("in_progress")
        return self.event("response.created", response=response) + self.event("response.in_progress", response=response)

    # --- items ----------------------------------------------------------------------------------

    def _switch(self, kind: str, key: int) -> tuple[bytes, _Item]:
        if self.open is not None and self.open_key == (kind, key):
            return b"", self.open
        out = self._close()
        prefix = {"reasoning": "rs", "message": "msg", "function_call": "fc"}[kind]
        item = _Item(kind, self.ids.item(prefix), len(self.output))
        self.open, self.open_key = item, (kind, key)
        where = {"output_index": item.index}
        if kind == "reasoning":
            added = {"id": item.id, "type": "reasoning", "summary": []}
            out += self.event("response.output_item.added", item=added, **where)
            summary = {"type": "summary_text", "text": ""}
            out += self.event(
                "response.reasoning_summary_part.added", item_id=item.id, summary_index=0, part=summary, **where
            )
        elif kind == "message":
            out += self.event("response.output_item.added", item=message_item(item.id, [], "in_progress"), **where)
        return out, item

    def _message(self, part: str) -> tuple[bytes, _Item]:
        """The message item, with a content part of the kind `part` (`output_text`, `refusal`) open."""
        out, item = self._switch("message", 0)
        if item.part != part:
            out += self._close_part(item)
            item.part, item.start = part, self.written
            where = {"item_id": item.id, "output_index": item.index, "content_index": len(item.parts)}
            out += self.event("response.content_part.added", part=content_part(part, ""), **where)
        return out, item

    def _close_part(self, item: _Item) -> bytes:
        if item.part is None:
            return b""
        text, part = "".join(item.text), item.part
        item.text, item.part = [], None
        where = {"item_id": item.id, "output_index": item.index, "content_index": len(item.parts)}
        if part == "refusal":
            out = self.event("response.refusal.done", refusal=text, **where)
        else:
            out = self.event("response.output_text.done", text=text, logprobs=[], **where)
        item.parts.append(content_part(part, text))
        if item.annotations:
            item.parts[-1]["annotations"], item.annotations = item.annotations, []
        return out + self.event("response.content_part.done", part=item.parts[-1], **where)

    def _announce_call(self, item: _Item) -> bytes:
        added = call_item(item.id, item.call_id, item.name, "", "in_progress", self.spaces)
        return self.event("response.output_item.added", item=added, output_index=item.index)

    def _close(self, status: str = "completed") -> bytes:
        """Close the open item (a message or function call as `status`)."""
        item, self.open, self.open_key = self.open, None, None
        if item is None:
            return b""
        where = {"item_id": item.id, "output_index": item.index}
        text = "".join(item.text)
        out = b""
        if item.kind == "reasoning":
            done = reasoning_item(item.id, text, item.fields, self.req, self.seal)
            part = {"type": "summary_text", "text": text}
            out += self.event("response.reasoning_summary_text.done", summary_index=0, text=text, **where)
            out += self.event("response.reasoning_summary_part.done", summary_index=0, part=part, **where)
        elif item.kind == "message":
            out += self._close_part(item)
            done = message_item(item.id, item.parts, status)
        else:
            done = call_item(item.id, item.call_id, item.name, text, status, self.spaces)
            out += self.event("response.function_call_arguments.done", name=done["name"], arguments=text, **where)
        self.output.append(done)
        out += self.event("response.output_item.done", item=done, output_index=item.index)
        held, self.held = self.held, []
        return out + self._searched(held)

    def chunk(self, chunk: ChatCompletionChunk) -> bytes:
        out = b""
        extra = chunk.model_extra
        if extra and "service_tier" in extra:
            self.served_tier = extra["service_tier"]
        for choice in (c for c in chunk.choices if c.index == 0):  # the Responses API has one answer
            delta = choice.delta
            fields = reasoning_fields(delta.model_extra)
            # Claude's blocks (a redacted one, a signature closing a thinking block) come in deltas of their own, in
            # the order the model wrote them: a reasoning item where they stand, as the whole answer has it.
            own = "thinking_blocks" in fields and not (delta.content or delta.refusal or delta.tool_calls)
            if self.held and (delta.reasoning_content or own or delta.content or delta.refusal or delta.tool_calls):
                out += self._close()  # (more of the answer after its searches: the item they came in is done)
            if delta.reasoning_content or (fields and (own or self.open_key == ("reasoning", 0))):
                data, item = self._switch("reasoning", 0)
                out += data
                merge(item.fields, fields)
                if delta.reasoning_content:
                    item.text.append(delta.reasoning_content)
                    out += self.event(
                        "response.reasoning_summary_text.delta",
                        item_id=item.id,
                        output_index=item.index,
                        summary_index=0,
                        delta=delta.reasoning_content,
                    )
            elif fields:
                # Signatures that arrive with the text or a call (Gemini's): a reasoning item of their own at
                # the end, so the item being streamed is not cut in two.
                merge(self.trailing, fields)
            if delta.content:
                data, item = self._message("output_text")
                item.text.append(delta.content)
                self.written += len(delta.content)
                out += data + self.event(
                    "response.output_text.delta",
                    item_id=item.id,
                    output_index=item.index,
                    content_index=len(item.parts),
                    delta=delta.content,
                    logprobs=[],
                )
            if delta.refusal:
                data, item = self._message("refusal")
                item.text.append(delta.refusal)
                where = {"item_id": item.id, "output_index": item.index, "content_index": len(item.parts)}
                out += data + self.event("response.refusal.delta", delta=delta.refusal, **where)
            if delta.tool_calls:
                out += self._calls(self.calls.feed(delta.tool_calls))
            annotations = delta.model_extra.get("annotations") if delta.model_extra else None
            if annotations and self.open is not None and self.open.part == "output_text":
                out += self._annotated(self.open, annotations)
            if delta.web_searches:
                out += self._search(delta.web_searches)
            if choice.finish_reason:
                out += self._calls(self.calls.flush())
                self.finish_reason = choice.finish_reason
        return out

    def _search(self, calls: list[dict[str, Any]]) -> bytes:
        """Searches a provider's own search tool ran (`ChunkDelta.web_searches`, each done), each a `web_search_call`
        item of its own between the items around it. Given while an item is open, they wait for it to close (`_close`):
        more of the answer closes it as done, the answer's end with its ending status, as the whole answer marks it.
        (Gemini gives its grounding's searches just before the event that says whether its text was cut there.)"""
        searches = [{**search_call(call), "id": self.ids.item("ws")} for call in calls]
        if self.open is not None:
            self.held += searches
            return b""
        return self._searched(searches)

    def _searched(self, searches: list[dict[str, Any]]) -> bytes:
        """The searches' `web_search_call` items, with the events OpenAI streams for one."""
        out = b""
        for item in searches:
            where = {"output_index": len(self.output)}
            added = {"id": item["id"], "type": "web_search_call", "status": "in_progress", "action": item["action"]}
            out += self.event("response.output_item.added", item=added, **where)
            out += self.event("response.web_search_call.in_progress", item_id=item["id"], **where)
            out += self.event("response.web_search_call.searching", item_id=item["id"], **where)
            if item["status"] == "completed":
                out += self.event("response.web_search_call.completed", item_id=item["id"], **where)
            self.output.append(item)
            out += self.event("response.output_item.done", item=item, **where)
        return out

    def _annotated(self, item: _Item, annotations: list[Any]) -> bytes:
        """The open text's citations (Chat Completions' `annotations`, at the answer's text), each added to it."""
        out = b""
        where = {"item_id": item.id, "output_index": item.index, "content_index": len(item.parts)}
        for cited in url_citations(annotations, item.start, self.written):
            out += self.event(
                "response.output_text.annotation.added",
                annotation_index=len(item.annotations),
                annotation=cited,
                **where,
            )
            item.annotations.append(cited)
        return out

    def _calls(self, calls: list[ToolCallDelta]) -> bytes:
        out = b""
        for call in calls:
            fresh = self.open_key != ("function_call", call.index)
            data, item = self._switch("function_call", call.index)
            out += data
            function = call.function
            if fresh:
                item.call_id = call.id or item.id
                item.name = (function.name if function else None) or ""
                out += self._announce_call(item)
            if function and function.arguments:
                item.text.append(function.arguments)
                out += self.event(
                    "response.function_call_arguments.delta",
                    item_id=item.id,
                    output_index=item.index,
                    delta=function.arguments,
                )
        return out

    def completed(self) -> tuple[bytes, dict[str, Any]]:
        """Close what is open; the final response (usage still to be put on it) and the events so far."""
        out = self._calls(self.calls.flush())
        out += self._close(ending_status(self.finish_reason))  # the item the answer ended in
        if self.trailing:
            item = reasoning_item(self.ids.item("rs"), "", self.trailing, self.req, self.seal)
            self.output.append(item)
            where = {"output_index": len(self.output) - 1}
            out += self.event("response.output_item.added", item={**item, "summary": []}, **where)
            out += self.event("response.output_item.done", item=item, **where)
        return out, self.response("completed")

    def streamed(self) -> list[dict[str, Any]]:
        """The output items as far as they were streamed: those done, and the one open when the stream broke off, with
        its text so far and `status: incomplete`, as OpenAI marks an item its answer was cut in. (A reasoning item cut
        short is its summary alone, unsealed: an unsigned part of Claude's thinking cannot go back to Claude.)"""
        item = self.open
        if item is None:
            return list(self.output)
        text = "".join(item.text)
        cut: dict[str, Any]
        if item.kind == "reasoning":
            summary = [{"type": "summary_text", "text": text}] if text else []
            cut = {"id": item.id, "type": "reasoning", "summary": summary, "status": "incomplete"}
        elif item.kind == "message":
            parts = [*item.parts, content_part(item.part, text)] if item.part is not None else list(item.parts)
            cut = message_item(item.id, parts, "incomplete")
        else:
            cut = call_item(item.id, item.call_id, item.name, text, "incomplete", self.spaces)
        return [*self.output, cut, *self.held]  # (the searches that ran while it was written after it)

    def failed(self, exc: GatewayError, cost: Cost | None) -> tuple[bytes, dict[str, Any]]:
        """The `error` event, and the failed response for `response.failed`: its output as far as it was streamed
        (`streamed`), and what the stream was charged (settled before, `guarded`): its usage and cost."""
        out = self.event("error", code=exc.code, message=exc.message, param=exc.param)
        response = envelope(
            self.req,
            self.ids.response,
            self.created_at,
            status="failed",
            output=self.streamed(),
            dropped=self.dropped,
            served_tier=self.served_tier,
        )
        response["error"] = {"code": exc.code, "message": exc.message}
        if cost is not None:
            finish(response, cost.usage, cost)
        else:
            response["cost"] = None
        return out, response


def responses_events(
    stream: ChunkStream,
    req: ResponsesRequest,
    ids: ResponseIds,
    seal: ReasoningSeal,
    on_finished: Finished,
) -> AsyncIterator[bytes]:
    """The client's Responses event stream for an internal chunk stream; `on_finished` gets the final
    response (to store it) before `response.completed` (or `response.failed`) is sent."""
    writer = ResponsesEventWriter(req, ids, seal, stream.ex.dropped)

    async def render() -> AsyncGenerator[bytes]:
        yield writer.start()
        async for batch in stream.batches():
            data = b"".join(writer.chunk(chunk) for chunk in batch)
            if data:
                yield data
        cut = stream.cut  # (as Chat Completions decides it: no finish reason, and no end said)
        if cut:
            stream.failed(UpstreamError.status)  # its ledger line, log line and metrics say so
        await stream.complete()
        if cut:  # what the provider sent is billed (settled above), but the answer is not whole
            raise interrupted()
        if stream.schema_violation is not None:  # (`error` and `response.failed` in place of `response.completed`)
            from handler.pipeline.schema_check import violated

            raise violated(stream.schema_violation)
        closing, response = writer.completed()
        finish(response, stream.usage(), stream.ex.cost)
        await on_finished(response)
        kind = "response.incomplete" if response["status"] == "incomplete" else "response.completed"
        yield closing + writer.event(kind, response=response)

    async def failed(exc: GatewayError) -> bytes:
        error, response = writer.failed(exc, stream.ex.cost)
        await on_finished(response)  # (kept as the client is told it, what was streamed of it)
        return error + writer.event("response.failed", response=response)

    return guarded(stream, render(), failed)
