"""A stream's chunks in the internal form (`chat.completion.chunk`), apart from handler/schemas.py: a request that
does not stream never makes their classes (`handler.schemas` imports this module on the first use of one of its
names, see `handler.schemas.LATER`)."""

# No `from __future__ import annotations`, as in handler/schemas.py.
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, PlainSerializer

from handler.schemas import OPEN, ChatCompletion, FinishReason, Omitted, ReasoningText, Reported


class _SentNull(str):
    """A delta member the provider sent as null: an empty string to the code that reads it, null on the wire."""

    __slots__ = ()


SENT_NULL = _SentNull()


def _kept(value: str | None) -> str | None:
    return SENT_NULL if value is None else value


def _written(value: str) -> str | None:
    return None if value is SENT_NULL else value


# A delta member a provider may send as null, as OpenAI's first delta carries `"refusal": null` (and `"content": null`
# when it starts a tool call): relayed as sent.
# Left out when not sent, as every `Omitted` member (its default, None, is not written); sent as null, it is kept as
# `SENT_NULL` and written back as null. The validator and the serializer run only for a chunk that carries the
# member: the chunks without it cost what they did.
NullKept = Annotated[str | None, AfterValidator(_kept), PlainSerializer(_written)]


class FunctionCallDelta(BaseModel):
    model_config = OPEN

    name: str | None = Omitted()
    arguments: str | None = Omitted()


class ToolCallDelta(BaseModel):
    model_config = OPEN

    index: int
    id: str | None = Omitted()
    type: Literal["function"] | None = Omitted()
    function: FunctionCallDelta | None = Omitted()
    extra_content: dict[str, Any] | None = Omitted()


class ChunkDelta(BaseModel):
    model_config = OPEN

    role: Literal["assistant"] | None = Omitted()
    content: NullKept = Omitted()
    tool_calls: list[ToolCallDelta] | None = Omitted()
    refusal: NullKept = Omitted()
    reasoning_content: str | None = ReasoningText()
    # A search a provider's own search tool ran, done (`AssistantMessage.web_searches`): the gateway's own, no Chat
    # Completions chunk carries it (`exclude`); the text's citations come as the delta's `annotations`, as OpenAI's.
    web_searches: list[dict[str, Any]] | None = Field(default=None, exclude=True)


class ChunkChoice(BaseModel):
    model_config = OPEN

    index: int = 0
    delta: ChunkDelta
    finish_reason: FinishReason | None = None
    logprobs: Any = None
    stop_sequence: str | None = Omitted()


class ChatCompletionChunk(BaseModel):
    model_config = OPEN

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice] = Field(default_factory=list)
    usage: Reported = Omitted()
    system_fingerprint: str | None = Omitted()


def completion_chunks(completion: ChatCompletion) -> list[ChatCompletionChunk]:
    """A whole completion as the chunks its stream would have brought, as OpenAI streams one: for each choice, its
    message in one delta (the role, the text, the reasoning, a refusal, the tool calls with their index, and any
    member the provider added), then its finish reason in an empty delta. The usage is the completion's."""
    head: dict[str, Any] = {**(completion.model_extra or {}), "id": completion.id, "created": completion.created}
    head["model"] = completion.model
    if completion.system_fingerprint is not None:
        head["system_fingerprint"] = completion.system_fingerprint
    chunks = []
    for choice in completion.choices:
        delta = choice.message.model_dump(exclude_none=True)
        if delta.get("tool_calls"):
            delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(delta["tool_calls"])]
        said = {"index": choice.index, "delta": delta, "logprobs": choice.logprobs}
        chunks.append(ChatCompletionChunk.model_validate({**head, "choices": [said]}))
        end = {**(choice.model_extra or {}), "index": choice.index, "delta": {}, "finish_reason": choice.finish_reason}
        if choice.stop_sequence is not None:
            end["stop_sequence"] = choice.stop_sequence
        chunks.append(ChatCompletionChunk.model_validate({**head, "choices": [end]}))
    return chunks


def opening_delta(first: ChatCompletionChunk) -> ChunkDelta:
    """The role's delta that opens a translated stream whose first chunk of a choice after it is `first`, as OpenAI
    opens its own:
    `content: ""` before text (or an answer of nothing), `content: null` before a tool call, a refusal, or reasoning
    (as DeepSeek's). Sent before the provider said what came first, it would be `""` whatever followed: a tool-only
    answer streamed would end with `content: ""` (the SDK's stream helper), where the same answer whole, and
    OpenAI's streamed, has None."""
    delta = first.choices[0].delta
    opens_other = delta.tool_calls or delta.reasoning_content or delta.refusal or delta.model_extra
    return ChunkDelta(role="assistant", content=None if opens_other else "")
