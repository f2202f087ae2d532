"""The gateway's internal form: OpenAI Chat Completions, typed.

Every inbound API (`/v1/chat/completions`, `/v1/messages`) is parsed into `ChatRequest`, every provider
adapter builds its upstream request from it and parses its answer back into `ChatCompletion` or a
stream of `ChatCompletionChunk`. Unknown top-level request fields are kept (`extra="allow"`) so an
OpenAI-compatible upstream receives them untouched, while other adapters report them as dropped.
"""

# No `from __future__ import annotations` here: pydantic would evaluate every field's annotation from its string
# when the class is made, in the cold start; as objects they come from the cached bytecode.
import functools
import importlib
import operator
import secrets
from collections.abc import Callable, Mapping
from typing import (
    TYPE_CHECKING,
    Annotated,
    Any,
    Final,
    Literal,
    NotRequired,
    Self,
)

import orjson
from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    with_config,
)
from pydantic_core import PydanticCustomError
from typing_extensions import TypedDict  # (pydantic takes typing's only from Python 3.12)

from handler.records import Value
from handler.wire import no_count

# `value is None` as a C call: the answer writers run it for every optional field of every chunk.
_is_none = functools.partial(operator.is_, None)


def Omitted() -> Any:  # noqa: N802 - reads as a field type at the use site
    """An optional answer field: written when it has a value, left out when it is None. The answer writers
    dump with every field, so the fields OpenAI's schemas require even when null (`message.content`,
    `message.refusal`, `choices[].logprobs`, a chunk's `finish_reason`) are always written."""
    return Field(default=None, exclude_if=_is_none)


REASONING_NAMES = AliasChoices("reasoning_content", "reasoning")


def ReasoningText() -> Any:  # noqa: N802 - reads as a field type at the use site
    """An answer's (or a stream delta's) reasoning text, an `Omitted` field read under either name OpenAI-compatible
    servers give it: `reasoning_content`, else `reasoning` (the newer servers' name for it). Read so as the answer is
    validated, with no step of its own; written as `reasoning_content`, where every front-end, a stream's redaction and
    a cut stream's estimate read it. Read under the one name, a server's `reasoning` would reach a Messages or
    Responses client as nothing at all (no thinking block, an empty summary), though its tokens are billed."""
    return Field(default=None, exclude_if=_is_none, validation_alias=REASONING_NAMES)


# Every API model's validator is built on its first use, not at import (`defer_build`): a Lambda cold start
# builds only what its first request needs (a chat completion, none of the Responses or Messages models).
# `gateway serve` and a SnapStart snapshot build them all beforehand (`build_deferred_models`). Fields a model does
# not declare are kept (`extra`). Each model says so by its config, not by a base class: a model class costs a cold
# start about 0.4 million instructions even without a field.
OPEN = ConfigDict(extra="allow", defer_build=True)
# A client's request: its declared fields take their JSON types as sent (`strict`: `"stream": "true"` or
# `"max_tokens": "10"` is the client's 400, as at OpenAI, not a value converted and sent on), while a provider's
# answer (`OPEN` alone) is read leniently. An integer is still a number.
REQUEST = ConfigDict(extra="allow", defer_build=True, strict=True)


def build_deferred_models() -> None:
    """Build now the validators of every model of the gateway's own (the application's and the adapters') left
    to their first use: where a first request should not wait for them (a server's start-up, the state a
    SnapStart snapshot captures), the models made on first use (`LATER`, `LATER_MODULES`) with them."""
    for module in set(LATER.values()) | LATER_MODULES:
        importlib.import_module(module)
    pending: list[type[BaseModel]] = [BaseModel]
    while pending:
        for model in pending.pop().__subclasses__():
            if model.__module__.startswith(("handler.", "adapters.")) and not model.__pydantic_complete__:
                model.model_rebuild()
            pending.append(model)


# --- request -------------------------------------------------------------------------------------


class TextPart(BaseModel):
    model_config = REQUEST

    type: Literal["text"]
    text: str


# A request's leaf objects with a field or two are typed dicts, validated as strictly and keeping unknown fields as
# the models do (`OPEN_DICT`): each model class costs a Lambda cold start about a million instructions of pydantic's
# class machinery (ten two-field models: 10.6 million, ten such typed dicts: 0.3), where a typed dict costs next to
# nothing.
OPEN_DICT = with_config(ConfigDict(extra="allow", strict=True))


@OPEN_DICT
class ImageURL(TypedDict):
    url: str
    detail: NotRequired[Literal["auto", "low", "high"] | None]


class ImagePart(BaseModel):
    model_config = REQUEST

    type: Literal["image_url"]
    image_url: ImageURL


@OPEN_DICT
class InputAudio(TypedDict):
    data: str
    format: str


class AudioPart(BaseModel):
    model_config = REQUEST

    type: Literal["input_audio"]
    input_audio: InputAudio


class FilePart(BaseModel):
    model_config = REQUEST

    type: Literal["file"]
    file: dict[str, Any]


# A Messages `document` block's fields with no place in a Chat Completions part (its `title`, `context` and
# `citations`), kept by the Messages translation on the part it becomes (a `file` part, or a `text` part for a text
# source) as `{"document": {...}}`: each adapter sends what its provider takes of them and names the rest
# (`adapters.providers.params.unsent_part_fields`). It never goes upstream as it is.
DOCUMENT = "document"
DOCUMENT_FIELDS = ("title", "context", "citations")


ContentPart = Annotated[TextPart | ImagePart | AudioPart | FilePart, Field(discriminator="type")]


class FunctionCall(BaseModel):
    model_config = REQUEST

    name: str
    arguments: str = ""


class ToolCall(BaseModel):
    model_config = REQUEST

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall
    # Provider state a tool call must carry back, in the shape Google's OpenAI-compatible API uses
    # (`{"google": {"thought_signature": ...}}`): Gemini 3 refuses a tool-call history without it.
    extra_content: dict[str, Any] | None = Omitted()


# An assistant turn's parts in the order the model wrote them, where Claude put its thinking between them
# (interleaved thinking: a thinking block after a tool call or text), which one Chat Completions message cannot say.
# Each entry names a part: `("thinking", i)` the i-th of its `thinking_blocks`, `("call", i)` its i-th tool call,
# `("text", n)` the next n characters of its content. The gateway's own: no API writes it (`exclude`), and a turn
# that thinks first has none (its parts go in the usual order: thinking, text, calls).
BlockOrder = list[tuple[str, int]]


def thinks_between(order: BlockOrder) -> bool:
    """Whether a thinking part follows a part of another kind: only then does the order say more than the usual."""
    other = False
    for kind, _ in order:
        if kind != "thinking":
            other = True
        elif other:
            return True
    return False


def ordered_parts(
    order: BlockOrder, blocks: list[dict[str, Any]], text: str, calls: list[Any]
) -> list[tuple[str, Any]] | None:
    """The parts `order` names, each with what it stands for (a thinking block, a text, a tool call); None when it
    does not name each block, call and character exactly once (the turn changed since: the usual order serves)."""
    parts: list[tuple[str, Any]] = []
    at = 0
    blocks_left, calls_left = set(range(len(blocks))), set(range(len(calls)))
    for kind, n in order:
        if kind == "thinking" and n in blocks_left:
            blocks_left.discard(n)
            parts.append((kind, blocks[n]))
        elif kind == "call" and n in calls_left:
            calls_left.discard(n)
            parts.append((kind, calls[n]))
        elif kind == "text" and 0 < n <= len(text) - at:
            parts.append((kind, text[at : at + n]))
            at += n
        else:
            return None
    return parts if at == len(text) and not blocks_left and not calls_left else None


# How a tool message says its tool failed, in its text, to a provider with no other way to say it (a Messages
# client's `tool_result` with `is_error: true`; `Message.is_error` says it to one that has: Converse's `status`).
TOOL_ERROR_MARK = "[tool error] "


class Message(BaseModel):
    model_config = REQUEST

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None
    block_order: BlockOrder | None = Field(default=None, exclude=True)  # (see `BlockOrder`)
    # A tool message whose tool failed (a Messages client's `is_error`): its content opens with `TOOL_ERROR_MARK`.
    # The gateway's own, as `block_order` is: no Chat Completions body carries it (`exclude`).
    is_error: bool | None = Field(default=None, exclude=True)
    # An earlier Gemini 3 turn's own search parts (`TOOL_CONTEXT`), as its answer gave them and its reasoning item's
    # seal (or a Chat client's message) brings them back, for the Gemini adapter alone: no Chat Completions body
    # carries them (`exclude`).
    reasoning_tool_context: list[dict[str, Any]] | None = Field(default=None, exclude=True)

    def text(self) -> str:
        """The message's text parts joined; non-text parts are left out."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content if isinstance(p, TextPart))


class FunctionDefinition(BaseModel):
    model_config = REQUEST

    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    model_config = REQUEST

    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(BaseModel):
    model_config = REQUEST

    name: str


class NamedToolChoice(BaseModel):
    model_config = REQUEST

    type: Literal["function"] = "function"
    function: NamedFunction


# OpenAI's `allowed_tools` choice (`{"type": "allowed_tools", "allowed_tools": {"mode": ..., "tools": [...]}}`): the
# tools the model may call among those the request offers (the rest stay in `tools`, so a prompt cached with them is
# still cached, but go uncalled), `mode` saying whether it must call one. The only choice that is a dict, checked in
# Python (`checked_allowed_tools`): as two models (or typed dicts), it would cost every Lambda cold start 2.6 million
# instructions of pydantic's class and schema machinery (1.3 as models at the import, the rest building the schema).
def checked_allowed_tools(choice: dict[str, Any]) -> dict[str, Any]:
    """`choice` if it is a well-formed `allowed_tools` choice, else the client's problem with it, in words of its own
    (pydantic's "Value error, " left out)."""
    if choice.get("type") != "allowed_tools":
        raise PydanticCustomError("tool_choice", "type must be 'function' or 'allowed_tools'")
    allowed = choice.get("allowed_tools")
    if not isinstance(allowed, dict) or allowed.get("mode") not in ("auto", "required"):
        raise PydanticCustomError("tool_choice", "allowed_tools.mode must be 'auto' or 'required'")
    tools = allowed.get("tools")
    if not isinstance(tools, list) or not tools:
        raise PydanticCustomError("tool_choice", "allowed_tools.tools must be a non-empty list of functions")
    for i, tool in enumerate(tools):
        # (as sent upstream: a function's `type`, which the client may leave out, written)
        kind = tool.setdefault("type", "function") if isinstance(tool, dict) else None
        function = tool.get("function") if isinstance(tool, dict) and kind == "function" else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise PydanticCustomError("tool_choice", f"allowed_tools.tools[{i}] must be a function with a name")
    return choice


def _tool_choice(choice: Any, validated: ValidatorFunctionWrapHandler) -> Any:
    """An `allowed_tools` choice checked alone (the union's other members' complaints about it are noise: its mode
    named as a `type` that should be 'function'); any other, by the union."""
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        return checked_allowed_tools(choice)
    return validated(choice)


AllowedToolsChoice = Annotated[dict[str, Any], AfterValidator(checked_allowed_tools)]
ToolChoice = Annotated[
    Literal["none", "auto", "required"] | NamedToolChoice | AllowedToolsChoice, WrapValidator(_tool_choice)
]


def allowed_names(choice: ToolChoice | None) -> list[str] | None:
    """The names a choice of `allowed_tools` allows (the only choice that is a dict); None for any other."""
    if isinstance(choice, dict):
        return [tool["function"]["name"] for tool in choice["allowed_tools"]["tools"]]
    return None


class JSONSchemaFormat(BaseModel):
    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None

    model_config = ConfigDict(
        extra="allow", defer_build=True, populate_by_name=True, serialize_by_alias=True, strict=True
    )


class ResponseFormat(BaseModel):
    model_config = REQUEST

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


@OPEN_DICT
class StreamOptions(TypedDict, total=False):
    include_usage: bool | None


class ThinkingConfig(BaseModel):
    """Extended thinking as Anthropic's Messages API asks for it: `enabled` with a token budget,
    `adaptive` (the model decides how much), or `disabled`. Each adapter maps it to its provider's
    control (see `adapters/providers/reasoning.py`)."""

    model_config = REQUEST

    type: Literal["enabled", "adaptive", "disabled"]
    budget_tokens: int | None = Field(default=None, ge=0)
    # A Messages request's `output_config.effort` (`low` ... `max`). Unlike Chat Completions' `reasoning_effort`
    # it is a wish, not a parameter: it reaches only models that reason, and is reported as dropped elsewhere.
    effort: str | None = None

    @property
    def sent(self) -> bool:
        """Whether the client sent `thinking` itself: not where it stands for a Messages request's
        `output_config.effort` sent alone (`handler.api.messages_api.EffortAlone`), whose wish a provider that cannot
        honour it names as the effort, the field the client wrote (`adapters.providers.reasoning.asked_with`)."""
        return True


# The searches a request with a provider's own web search tool may run when it sets no limit: the limit sent
# (Anthropic's `max_uses`, the Responses API's `max_tool_calls`) and the worst case reserved.
DEFAULT_SEARCHES = 10
# Where the user is, as Chat Completions' `web_search_options.user_location.approximate` and the Responses API's
# `web_search` tool's `user_location` give it (and Anthropic's search tool takes it).
LOCATION_FIELDS = ("city", "region", "country", "timezone")


class WebSearch(Value):
    """A request's web search, as a translation sends it to a provider's own search tool (Anthropic's
    `web_search_*`, Gemini's `google_search`): the most searches it may run (`most`: sent where the tool takes a
    limit, and reserved for), the client's name for it (`param`: `web_search_options`, `tools[web_search]`), by which
    what a provider cannot honour is named dropped (`tools[web_search].search_context_size`), and what it asks of the
    search: how much of the pages to read (`context_size`, OpenAI's `search_context_size`), where the user is
    (`location`: `LOCATION_FIELDS`), the only sites to search (`domains`, the Responses tool's
    `filters.allowed_domains`), and whether it may go to the live web (`live`; Codex's cached mode sends
    `external_web_access: false`, OpenAI's cached results only, which no other provider's search offers). `limit`:
    the client's name for the limit it set apart from the search (the Responses API's `max_tool_calls`), which goes
    with the search, and is named dropped with it where the search does not go (`unsent`). `blocked`: the sites
    never to search (Anthropic's tool's `blocked_domains`), and `domains_field` the client's name for the sites
    allowed (`filters.allowed_domains` in OpenAI's options, `allowed_domains` in Anthropic's tool)."""

    __slots__ = ("most", "param", "context_size", "location", "domains", "live", "limit", "blocked", "domains_field")

    def __init__(
        self,
        most: int,
        param: str,
        context_size: str | None = None,
        location: dict[str, str] | None = None,
        domains: tuple[str, ...] = (),
        live: bool = True,
        limit: str | None = None,
        blocked: tuple[str, ...] = (),
        domains_field: str = "filters.allowed_domains",
    ) -> None:
        self.most: Final = most
        self.param: Final = param
        self.context_size: Final = context_size
        self.location: Final = location
        self.domains: Final = domains
        self.live: Final = live
        self.limit: Final = limit
        self.blocked: Final = blocked
        self.domains_field: Final = domains_field

    @classmethod
    def asked(cls, options: dict[str, Any], most: int, param: str) -> "WebSearch":
        """The search a client's options ask for: Chat Completions' `web_search_options` (its location under
        `user_location.approximate`) or the Responses API's `web_search` tool (under `user_location`). Each member is
        read only in the shape its API gives it, as the rest of the options are: a location that is not an object
        (`"approximate": "Paris"`) is none (read as one, it would be a 500 as Claude's request is built)."""
        place = options.get("user_location")
        place = place.get("approximate", place) if isinstance(place, dict) else None
        place = place if isinstance(place, dict) else None
        location = {name: v for name in LOCATION_FIELDS if isinstance(v := (place or {}).get(name), str) and v}
        size = options.get("search_context_size")
        filters = options.get("filters")
        allowed = filters.get("allowed_domains") if isinstance(filters, dict) else None
        domains = tuple(d for d in allowed if isinstance(d, str) and d) if isinstance(allowed, list) else ()
        live = options.get("external_web_access") is not False
        return cls(most, param, size if isinstance(size, str) else None, location or None, domains, live)

    @classmethod
    def of_tool(cls, tool: dict[str, Any], param: str) -> "WebSearch":
        """The search Anthropic's web search tool (`web_search_*`, as a Messages client sends it) asks for: its
        `max_uses` (set before: `Charges.search_limit`), `user_location`, `allowed_domains` and `blocked_domains`."""
        place = tool.get("user_location")
        place = place if isinstance(place, dict) else {}  # (a location that is no object is none, not a 500)
        location = {name: v for name in LOCATION_FIELDS if isinstance(v := place.get(name), str) and v}

        def sites(name: str) -> tuple[str, ...]:
            given = tool.get(name)
            return tuple(d for d in given if isinstance(d, str) and d) if isinstance(given, list) else ()

        most = tool.get("max_uses")
        return cls(
            most if isinstance(most, int) else DEFAULT_SEARCHES,
            param,
            location=location or None,
            domains=sites("allowed_domains"),
            blocked=sites("blocked_domains"),
            domains_field="allowed_domains",
        )

    def unsent(self) -> list[str]:
        """The search left out of a request, as `x-gateway-dropped-params` names it: the search, and the limit the
        client set of it (`max_tool_calls`, which went unnamed at Bedrock, DeepSeek and Gemini beside functions)."""
        return [self.param, *([self.limit] if self.limit else [])]

    def unhonoured(self, *, location: bool, domains: bool, blocked: bool = False) -> list[str]:
        """What a provider's search tool cannot honour, as `x-gateway-dropped-params` names it: a context size (none
        takes one but OpenAI's), cached results only (none offers them but OpenAI's), and, unless it takes them
        (`location`, `domains`, `blocked`), the user's location, the sites allowed and the sites blocked."""
        names = [f"{self.param}.search_context_size"] if self.context_size is not None else []
        if self.location and not location:
            names.append(f"{self.param}.user_location")
        if self.domains and not domains:
            names.append(f"{self.param}.{self.domains_field}")
        if self.blocked and not blocked:
            names.append(f"{self.param}.blocked_domains")
        if not self.live:
            names.append(f"{self.param}.external_web_access")
        return names


class ChatRequest(BaseModel):
    """An OpenAI Chat Completions request body."""

    model_config = REQUEST

    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int | None = Field(default=None, ge=1, le=128)
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    seed: int | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    user: str | None = None
    # OpenAI's reasoning control (`none` ... `xhigh`; `max` only comes from a Messages `output_config.effort`).
    reasoning_effort: str | None = None
    thinking: ThinkingConfig | None = None

    @property
    def reasoning_summary(self) -> str | None:
        """A Responses request's `reasoning.summary` (`auto`, `concise`, `detailed`): the client wants the model's
        reasoning back as text. Not a field: no Chat Completions API has it, so no client sends it here and no
        upstream gets it as one; a Responses request asking for one is a `ResponsesChatRequest`
        (handler/api/responses_api.py). A Messages client asks the same with `thinking.display: summarized`."""
        thinking = self.thinking
        if thinking is not None and thinking.model_extra and thinking.model_extra.get("display") == "summarized":
            return "summarized"
        return None

    @functools.cached_property
    def web_search(self) -> WebSearch | None:
        """The web search the request asks for, which an adapter whose provider has its own search tool sends as that
        tool (`ProviderAdapter.hosts_search`): a Chat Completions client's `web_search_options` (up to
        `DEFAULT_SEARCHES`); a Responses request's `web_search` tool, once priced, is a `ResponsesChatRequest`
        (handler/api/responses_api.py). Not a field: OpenAI's own Chat Completions gets `web_search_options` as
        written, and the search's results come back as the provider gives them. Read once for each attempt's
        reservation, body, costing and answer, it is built once (a copy builds its own: `model_copy`)."""
        options = self.model_extra.get("web_search_options") if self.model_extra else None
        return WebSearch.asked(options, DEFAULT_SEARCHES, "web_search_options") if isinstance(options, dict) else None

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy, with its own `web_search` (the options `update` sets are its search, not the original's)."""
        copied = super().model_copy(update=update, deep=deep)
        copied.__dict__.pop("web_search", None)
        return copied

    @property
    def prefill(self) -> str | None:
        """The text a Messages request's final assistant turn prefills the answer with: Claude's answer continues it,
        and does not repeat it. Not a field: a Chat Completions client's last assistant message asks nothing of the
        kind (Mistral's and DeepSeek's `prefix: true` on it are the client's own, sent as written), and a Responses
        input has no prefill; a Messages request ending with one is a `MessagesChatRequest`
        (handler/api/messages_api.py). Each adapter sends it where its provider continues an assistant turn, and
        names it as dropped (`messages.prefill`) where it cannot."""
        return None

    def output_limit(self) -> int | None:
        """The client's cap on generated tokens, whichever field it used."""
        return self.max_completion_tokens or self.max_tokens

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def set_fields(self) -> set[str]:
        """Top-level fields the client actually sent, extras included."""
        fields = set(self.model_fields_set)
        if self.model_extra:
            fields.update(self.model_extra)
        return fields


# --- response ------------------------------------------------------------------------------------


class _Counted:
    """A usage object with counts it does not declare, kept among its extras and written with them: a field
    declared costs a Lambda cold start about 0.3 million instructions, for counts few answers have. (A plain mixin:
    as a model class of its own, it would cost 0.4 million more.)"""

    if TYPE_CHECKING:
        __pydantic_extra__: dict[str, Any] | None

    def count(self, name: str) -> int:
        extra = self.__pydantic_extra__  # (read on every request's costing: the cheapest way in)
        value = extra.get(name) if extra else None
        return value if type(value) is int else 0  # (not a bool)

    def set_count(self, name: str, value: int) -> None:
        if self.__pydantic_extra__ is not None:
            self.__pydantic_extra__[name] = value


def _null_is_0(value: Any) -> Any:
    return 0 if no_count(value) else value


# A provider's count of a detail of its usage (cached, cache-write, reasoning, audio tokens): a plain integer, null
# (or negative: `handler.wire.no_count`) read as 0 (as `handler.wire.usage_count` reads it: OpenAI-compatible servers
# built on LiteLLM write `"cached_tokens": null` for a count they have none of, and refused, a real answer would be
# a malformed one, charged its worst case); `10.7`, `"12"` and `true` refused (`Usage`). Not a main count, the input's
# or the output's: one that is null, left out or negative is no usage (`Reported`).
Count = Annotated[StrictInt, BeforeValidator(_null_is_0)]


class PromptTokensDetails(_Counted, BaseModel):
    """Also, among the extras: `cache_write_1h_tokens` (of `cache_write_tokens`, those cached an hour:
    Anthropic's `ttl: "1h"`, which cost more) and `audio_tokens` (audio input: OpenAI's count, Gemini's AUDIO
    modality; dearer than text on some models)."""

    model_config = OPEN

    cached_tokens: Count = 0
    cache_write_tokens: Count = 0


class CompletionTokensDetails(_Counted, BaseModel):
    """Also, among the extras: `audio_tokens` (audio output: OpenAI's count, Gemini's AUDIO modality; dearer than
    text)."""

    model_config = OPEN

    reasoning_tokens: Count = 0


class Usage(_Counted, BaseModel):
    """Token counts. `prompt_tokens` includes cached and cache-write tokens, as OpenAI counts them. Also, among
    the extras: `web_searches`, the searches a provider's own search tool ran (billed apart from the tokens).
    Its counts, and its details', are strict: a provider's count that is not a plain integer (`10.7`, and `"12"` or
    `true`, which pydantic would take as 12 and 1) is no usage the gateway can read, and the answer is malformed
    (`handler.wire.usage_count`); a detail's that is null or negative is 0 (`Count`), a main count's makes no usage
    (`Reported`, as an answer's usage is read)."""

    model_config = OPEN

    prompt_tokens: StrictInt = 0
    completion_tokens: StrictInt = 0
    total_tokens: Count = 0
    prompt_tokens_details: PromptTokensDetails | None = Omitted()
    completion_tokens_details: CompletionTokensDetails | None = Omitted()

    @property
    def cached_tokens(self) -> int:
        return self.prompt_tokens_details.cached_tokens if self.prompt_tokens_details else 0

    @property
    def cache_write_tokens(self) -> int:
        return self.prompt_tokens_details.cache_write_tokens if self.prompt_tokens_details else 0

    @property
    def cache_write_1h_tokens(self) -> int:
        details = self.prompt_tokens_details
        return details.count("cache_write_1h_tokens") if details else 0

    @property
    def audio_prompt_tokens(self) -> int:
        details = self.prompt_tokens_details
        return details.count("audio_tokens") if details else 0

    @property
    def audio_completion_tokens(self) -> int:
        """The output tokens that are audio (already within `completion_tokens`)."""
        details = self.completion_tokens_details
        return details.count("audio_tokens") if details else 0

    @property
    def web_searches(self) -> int:
        return self.count("web_searches")

    def has_counts(self) -> bool:
        """Whether this usage, or its prompt's details, carry counts beyond the declared ones (most have none)."""
        details = self.prompt_tokens_details
        return bool(self.__pydantic_extra__) or (details is not None and bool(details.__pydantic_extra__))

    @property
    def reasoning_tokens(self) -> int:
        """The output tokens spent reasoning, where the provider counts them (already within `completion_tokens`)."""
        return self.completion_tokens_details.reasoning_tokens if self.completion_tokens_details else 0

    @classmethod
    def of(
        cls,
        prompt: int,
        completion: int,
        cached: int = 0,
        cache_write: int = 0,
        cache_write_1h: int = 0,
        audio: int = 0,
    ) -> Self:
        details = PromptTokensDetails(cached_tokens=cached, cache_write_tokens=cache_write)
        if cache_write_1h:
            details.set_count("cache_write_1h_tokens", cache_write_1h)
        if audio:
            details.set_count("audio_tokens", audio)
        return cls(
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=prompt + completion,
            prompt_tokens_details=details,
        )

    def plus(self, other: Self) -> Self:
        """This usage and `other` together (two answers billed for one request): every count summed (`_combined`)."""
        usage = self._combined(other, operator.add)
        if self.web_searches + other.web_searches:
            usage.set_count("web_searches", self.web_searches + other.web_searches)
        return usage

    def less(self, other: Self) -> Self:
        """This usage without `other`, a part of it (a sampling its counts hold, priced on its own): every count
        `plus` sums, less `other`'s (none below 0); its searches kept."""
        usage = self._combined(other, _less)
        if self.web_searches:
            usage.set_count("web_searches", self.web_searches)
        return usage

    def _combined(self, other: Self, count: Callable[[int, int], int]) -> Self:
        """The token counts of this usage and `other`, each `count(this one's, other's)` (`plus`, `less`): every count
        it has, its details' too (its searches are `plus`'s and `less`'s own), audio output among them: without it, the
        sum of two answers' counts would have none of theirs, nor would what is left of one."""
        usage = type(self).of(
            count(self.prompt_tokens, other.prompt_tokens),
            count(self.completion_tokens, other.completion_tokens),
            count(self.cached_tokens, other.cached_tokens),
            count(self.cache_write_tokens, other.cache_write_tokens),
            count(self.cache_write_1h_tokens, other.cache_write_1h_tokens),
            count(self.audio_prompt_tokens, other.audio_prompt_tokens),
        )
        reasoning = count(self.reasoning_tokens, other.reasoning_tokens)
        spoken = count(self.audio_completion_tokens, other.audio_completion_tokens)
        if reasoning or spoken:
            usage.completion_tokens_details = CompletionTokensDetails(reasoning_tokens=reasoning)
            if spoken:
                usage.completion_tokens_details.set_count("audio_tokens", spoken)
        return usage

    def counted_as(self, prompt: int, completion: int) -> Self:
        """This usage with other prompt and completion counts (an estimate's), its cache and search counts kept."""
        cached, written, hour = self.cached_tokens, self.cache_write_tokens, self.cache_write_1h_tokens
        usage = type(self).of(prompt, completion, cached, written, hour, self.audio_prompt_tokens)
        if self.web_searches:
            usage.set_count("web_searches", self.web_searches)
        return usage


FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]


# The member of an assistant turn holding the search parts Gemini 3's tool context answered with (its built-in
# tool's `toolCall` and `toolResponse` parts, each with its `thoughtSignature`), which Google asks clients to send
# back in the turn that follows: named as a provider's reasoning field, so a Responses answer seals it into a
# reasoning item's `encrypted_content` (`responses_api.reasoning_fields`) and Codex brings it back.
TOOL_CONTEXT = "reasoning_tool_context"


class AssistantMessage(BaseModel):
    model_config = OPEN

    role: Literal["assistant"] = "assistant"
    content: str | None = None
    tool_calls: list[ToolCall] | None = Omitted()
    refusal: str | None = None
    reasoning_content: str | None = ReasoningText()
    block_order: BlockOrder | None = Field(default=None, exclude=True)  # (see `BlockOrder`)
    # The searches a provider's own search tool ran for the answer (`web_search_call` items of a Responses answer:
    # `id`, `status` and `action`, the query and the sources it found), where the translation read them. The gateway's
    # own, as `block_order` is: Chat Completions has no such member; its citations are the message's `annotations`.
    web_searches: list[dict[str, Any]] | None = Field(default=None, exclude=True)


class Choice(BaseModel):
    model_config = OPEN

    index: int = 0
    message: AssistantMessage
    finish_reason: FinishReason | None = None
    logprobs: Any = None
    # Which of the client's stop sequences ended the answer, where the provider says (Anthropic does).
    stop_sequence: str | None = Omitted()


def _less(count: int, part: int) -> int:
    return max(0, count - part)


def completion_id() -> str:
    """An answer's id of OpenAI's form, for one whose provider gave none (Bedrock's Converse, Gemini without its
    `responseId`, a compatible server that leaves it out)."""
    return f"chatcmpl-{secrets.token_hex(12)}"


def reported(counts: Any, *main: str) -> bool:
    """Whether a provider's usage object `counts` gives its `main` counts (the input's and the output's, as its API
    names them), the rule every reader of a usage follows: one that is null, left out (`usage: {}` among them) or
    negative (`handler.wire.no_count`) gives no count of what the request cost, so the usage is none, as `usage: null`
    is, and the answer is estimated (a stream metered as one without its final usage). Read as 0, a reader billed the
    prompt (or a written answer) free as the provider's count. A detail's count (cached, cache-write, reasoning, audio
    tokens) is no main count: null, left out or negative, it is 0 (`Count`, `handler.wire.usage_count`)."""
    return isinstance(counts, dict) and not any(no_count(counts.get(name)) for name in main)


# Chat Completions' main counts (`reported`).
CHAT_COUNTS = ("prompt_tokens", "completion_tokens")


def _uncounted_is_none(usage: Any) -> Any:
    return None if isinstance(usage, dict) and not reported(usage, *CHAT_COUNTS) else usage


# A provider's usage as its answer (or a stream's chunk) gives it: one without a main count, the input's or the
# output's (null, left out or negative, `usage: {}` among them), is none (`reported`), as `usage: null` is. Read as
# 0, it would bill a written answer as free: 3,000 characters with `"completion_tokens": null` 0 tokens out, with
# every count null $0.
Reported = Annotated[Usage | None, BeforeValidator(_uncounted_is_none)]


class ChatCompletion(BaseModel):
    model_config = OPEN

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Reported = Omitted()
    system_fingerprint: str | None = Omitted()


class PlainCompletion:
    """A chat answer in the plain shape most of OpenAI's are (`adapters.providers.openai.adapter.plain_completion`
    says which): members of the kinds `ChatCompletion` declares, text choices with no log probabilities, tool calls
    or citations, and its usage. Kept as the parts of its JSON, in the order and with the members `ChatCompletion`
    writes (`head`, `choices`, `tail`: its declared members' defaults filled in, its extras after them), with its
    `usage` validated alone; written back (`json`) as `answer_json` writes the model, which is never built (its
    validation and dump cost some 7 µs of a warm invocation's own work, for an answer the chat route writes back as
    it came). A reader that needs more than its usage and text (a schema's enforcement, a trace, a
    translation to another API) is given the model instead (`Pipeline.chat`'s `plain`); the Responses API's, which
    makes one message of its text, reads it as it is (`responses_api.plain_response`)."""

    __slots__ = ("body", "head", "choices", "tail", "usage")

    def __init__(
        self,
        body: dict[str, Any],
        head: dict[str, Any],
        choices: list[dict[str, Any]],
        tail: dict[str, Any],
        usage: Usage,
    ) -> None:
        self.body = body  # (the answer as parsed: its extras, `service_tier` among them, read as a model's are)
        self.head = head
        self.choices = choices
        self.tail = tail
        self.usage = usage  # the usage the answer is charged and written with (the pipeline's, once settled)

    def chars(self) -> int:
        """`answer_chars` of the answer: its choices' text and refusals (it has no reasoning nor tool calls), but the
        refusal of a choice a filter ended (`content_filter`), as `answer_chars` counts."""
        total = 0
        for choice in self.choices:
            message = choice["message"]
            total += len(message["content"] or "")
            if message["refusal"] and choice.get("finish_reason") != "content_filter":
                total += len(message["refusal"])
        return total

    def json(self) -> bytes:
        # (Its integers are orjson's own reading, which takes one past 64 bits as a float: each is written back.)
        usage = orjson.Fragment(self.usage.model_dump_json())
        return orjson.dumps({**self.head, "choices": self.choices, "usage": usage, **self.tail})


# --- made on first use ---------------------------------------------------------------------------
#
# A stream's chunks and the embeddings API's models live in handler/chunks.py and handler/embeddings.py, imported on
# the first use of one of their names here (`schemas.ChatCompletionChunk`, `from handler.schemas import ...`): a
# Lambda whose first request is a chat completion that does not stream never makes their nine classes (about 12
# million instructions of its cold start, callgrind). Modules imported at a cold start name them only in
# annotations (under `TYPE_CHECKING`) or as `schemas.<name>` where they run.
if TYPE_CHECKING:
    from handler.chunks import ChatCompletionChunk as ChatCompletionChunk
    from handler.chunks import ChunkChoice as ChunkChoice
    from handler.chunks import ChunkDelta as ChunkDelta
    from handler.chunks import FunctionCallDelta as FunctionCallDelta
    from handler.chunks import ToolCallDelta as ToolCallDelta
    from handler.chunks import completion_chunks as completion_chunks
    from handler.embeddings import Embedding as Embedding
    from handler.embeddings import EmbeddingsRequest as EmbeddingsRequest
    from handler.embeddings import EmbeddingsResponse as EmbeddingsResponse
    from handler.embeddings import EmbeddingsUsage as EmbeddingsUsage

LATER = {
    **dict.fromkeys(
        ["ChatCompletionChunk", "ChunkChoice", "ChunkDelta", "FunctionCallDelta", "ToolCallDelta", "completion_chunks"],
        "handler.chunks",
    ),
    **dict.fromkeys(["Embedding", "EmbeddingsRequest", "EmbeddingsResponse", "EmbeddingsUsage"], "handler.embeddings"),
}


# Other modules of models made on first use, added by the module that imports them on first use when it is imported
# itself (an adapter of a configured provider): `build_deferred_models` makes and builds them with the rest.
LATER_MODULES: set[str] = set()


def __getattr__(name: str) -> Any:
    """One of the `LATER` models, its module imported on first use (and the name kept here for the next)."""
    module = LATER.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
