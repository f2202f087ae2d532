"""Gemini's `streamGenerateContent?alt=sse` events as OpenAI chunks (`GeminiStreamParser`), imported with the first
stream: a Lambda's buffered function answers whole."""

from __future__ import annotations

import time
from typing import Any

import orjson

from adapters.providers.gemini.adapter import (
    block_message,
    candidate_parts,
    checked_payload,
    finish_reason,
    tool_call_of,
    tool_context,
    usage_of,
)
from adapters.providers.gemini.search import billed_searches, grounding, queries_run
from adapters.providers.params import ToolNames
from handler.chunks import opening_delta
from handler.errors import UpstreamError
from handler.ports import Served
from handler.schemas import (
    TOOL_CONTEXT,
    ChatCompletionChunk,
    ChunkChoice,
    ChunkDelta,
    FinishReason,
    FunctionCallDelta,
    ToolCallDelta,
    Usage,
    completion_id,
)
from handler.wire import StreamEvent, json_body


class GeminiStreamParser:
    """`streamGenerateContent?alt=sse` events, each a whole `GenerateContentResponse`, into chunks.

    Gemini sends text in pieces but every function call whole, so a call becomes one complete tool-call
    delta. Each event repeats the running `usageMetadata`; the last one is the bill.
    """

    served: Served | None = None  # (its usage says nothing of how the answer was served)
    opening_usage: Usage | None = None  # (each event's running `usageMetadata` is `usage`)

    def __init__(self, model: str, names: ToolNames | None = None, *, searched: bool = False) -> None:
        self.usage: Usage | None = None
        self._searched = searched  # (the request's search went as Google Search: its grounding is read)
        self._texts: dict[int, list[str]] = {}  # each candidate's text so far, where its grounding points
        # Each candidate's grounding: the latest Gemini sent (each event's holds the searches so far, not only the
        # new ones), the queries it ran (the most any of them named), and what of it the client was given.
        self._grounding: dict[int, Any] = {}
        self._queries: dict[int, int] = {}
        self._told: dict[int, tuple[int, set[bytes]]] = {}  # the searches given, and the annotations (their JSON)
        self._finished: set[int] = set()
        self.searches = 0  # what Google bills of the queries (`billed_searches`)
        self._names = names  # the request's function names, to give each call its client's name
        self._id = completion_id()
        self._created = int(time.time())
        self._model = model
        self._started: set[int] = set()
        self._calls: dict[int, int] = {}
        self._said: set[int] = set()  # the candidates that wrote text (a finish reason's meaning may hang on it)

    def _chunk(self, index: int, delta: ChunkDelta, reason: FinishReason | None = None) -> ChatCompletionChunk:
        choice = ChunkChoice(index=index, delta=delta, finish_reason=reason)
        return ChatCompletionChunk(id=self._id, created=self._created, model=self._model, choices=[choice])

    def _opening(self, index: int, chunks: list[ChatCompletionChunk]) -> list[ChatCompletionChunk]:
        """Candidate `index`'s `chunks`, behind its role's chunk when they are its first (`opening_delta`: what
        they open with tells its `content`)."""
        if index in self._started or not chunks:
            return chunks
        self._started.add(index)
        return [self._chunk(index, opening_delta(chunks[0])), *chunks]

    def feed(self, event: StreamEvent) -> list[ChatCompletionChunk]:
        if not event.data.strip():
            return []
        data = checked_payload(json_body(event.data))
        if not self._started and isinstance(data.get("responseId"), str):
            self._id = f"chatcmpl-{data['responseId']}"
        if isinstance(data.get("modelVersion"), str):
            self._model = data["modelVersion"]
        if data.get("usageMetadata") is not None:
            # The running usage is the latest event's: one without its input count is none (`usage_of`), and an
            # earlier event's, counting less of the answer, is not the bill.
            self.usage = usage = usage_of(data["usageMetadata"])
            if usage is not None and self.searches:
                usage.set_count("web_searches", self.searches)
        chunks: list[ChatCompletionChunk] = []
        candidates = [c for c in data.get("candidates") or () if isinstance(c, dict)]
        blocked = block_message(data)
        if not candidates and blocked:
            chunks += self._opening(0, [self._chunk(0, ChunkDelta(refusal=blocked), "content_filter")])
        for position, candidate in enumerate(candidates):
            index = candidate.get("index", position)
            said: list[ChatCompletionChunk] = []  # (this candidate's)
            for part in candidate_parts(candidate):
                call = tool_call_of(part, self._calls.get(index, 0))
                if call is not None:
                    n = self._calls.get(index, 0)
                    self._calls[index] = n + 1
                    delta = ToolCallDelta(
                        index=n,
                        id=call.id,
                        type="function",
                        function=FunctionCallDelta(
                            name=self._client_name(call.function.name), arguments=call.function.arguments
                        ),
                    )
                    said.append(self._chunk(index, ChunkDelta(tool_calls=[delta])))
                elif self._searched and tool_context([part]):
                    # (the search's own call and results, for the next turn: `TOOL_CONTEXT`, as a whole answer has it)
                    said.append(self._chunk(index, ChunkDelta.model_validate({TOOL_CONTEXT: [part]})))
                elif isinstance(part.get("text"), str) and part["text"]:
                    if part.get("thought"):
                        said.append(self._chunk(index, ChunkDelta(reasoning_content=part["text"])))
                    else:
                        self._said.add(index)
                        self._texts.setdefault(index, []).append(part["text"])
                        said.append(self._chunk(index, ChunkDelta(content=part["text"])))
            if self._searched and candidate.get("groundingMetadata"):
                self._ground(index, candidate["groundingMetadata"])
                if index in self._finished:  # (a grounding after the candidate's end: given as it comes)
                    said += self._grounded(index)
            if candidate.get("finishReason"):
                self._finished.add(index)
                said += self._grounded(index)
                try:
                    reason = finish_reason(candidate["finishReason"], bool(self._calls.get(index)), index in self._said)
                except UpstreamError as unusable:
                    if any(other != index for other in (*self._said, *self._calls)):
                        reason = "stop"  # (another candidate answered: this choice ends empty, the others go on)
                    else:
                        unusable.billed = self.usage  # charged before a failover, as a whole answer's is
                        raise
                said.append(self._chunk(index, ChunkDelta(), reason))
            chunks += self._opening(index, said)
        return chunks

    def _ground(self, index: int, meta: Any) -> None:
        """Candidate `index`'s grounding (Google Search's) as an event gives it: Gemini resends the grounding so far
        on later events (as other clients read it, "later chunks win"), so it replaces the one before, and the
        queries it names are the candidate's, not more of them (added up, one query seen on two events would be
        billed twice on Gemini 3, and given twice). The usage counts the searches billed from the first event that
        names them, so that a stream cut after them is charged them."""
        self._grounding[index] = meta
        self._queries[index] = max(self._queries.get(index, 0), queries_run(meta))
        self.searches = billed_searches(self._model, sum(self._queries.values()))
        if self.usage is not None and self.searches:
            self.usage.set_count("web_searches", self.searches)

    def _grounded(self, index: int) -> list[ChatCompletionChunk]:
        """What candidate `index`'s latest grounding says that the client was not yet given, at the event that ends
        the candidate (its text whole, where the grounding's spans point): its searches, and the annotations of its
        text. (Given at the end, as a whole answer's are: a search given mid-text would split the Responses
        message it cites.)"""
        if index not in self._grounding:
            return []
        searched, annotations = grounding(self._grounding[index], "".join(self._texts.get(index, ())))
        given, cited = self._told.get(index, (0, set()))
        searched = searched[given:]
        written = [(orjson.dumps(annotation), annotation) for annotation in annotations]
        fresh = [annotation for key, annotation in written if key not in cited]
        self._told[index] = (given + len(searched), cited | {key for key, _ in written})
        delta = ChunkDelta(web_searches=searched or None)
        if fresh:
            setattr(delta, "annotations", fresh)  # noqa: B010 - (Chat Completions' member, an extra)
        return [self._chunk(index, delta)] if searched or fresh else []

    def _client_name(self, name: str) -> str:
        """The client's name for a function Gemini called by `name` (an alias, where Gemini refused the client's)."""
        return self._names.client(name) if self._names is not None else name

    def finish(self) -> list[ChatCompletionChunk]:
        if self.usage is None:
            return []
        return [ChatCompletionChunk(id=self._id, created=self._created, model=self._model, usage=self.usage)]
