"""`/v1/responses`: the OpenAI Responses API in front of any model.

A Responses request (a string or a list of input items, `instructions`, tools, `text.format`, ...)
becomes the internal (Chat Completions) request, any provider serves it, and the answer goes back as
a `response` object (its stream: `handler/api/responses_stream.py`). Fields and tool types with no internal
equivalent are named in `x-gateway-dropped-params`, like any parameter a provider cannot honour.

The conversation is the client's to keep (`store: false`, as Codex sends) or the gateway's
(`store: true`, the API's default: `previous_response_id` then continues it; see `ResponseArchive`).
Reasoning a provider returns travels back to the client inside a reasoning item's `encrypted_content`,
encrypted and signed (`ReasoningSeal`), so the next turn can hand it back to the provider without the
gateway keeping state; a stored response keeps it sealed in the store (`with_sealed_reasoning`).
"""

from __future__ import annotations

import itertools
import operator
import re
import time
from collections.abc import Collection, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from handler.api.offered_search import SearchOffered
from handler.api.reasoning_seal import ReasoningSeal
from handler.errors import InvalidRequestError
from handler.pipeline.pricing import Cost
from handler.schemas import (
    REQUEST,
    TOOL_CONTEXT,
    AssistantMessage,
    ChatCompletion,
    ChatRequest,
    PlainCompletion,
    Usage,
    WebSearch,
    ordered_parts,
    thinks_between,
)
from handler.wire import ENCRYPTED_REASONING, UNREADABLE_REASONING

# Request fields the translation honours (the gateway keeps, echoes or acts on them itself).
MAPPED = frozenset(
    {
        "model",
        "input",
        "instructions",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "reasoning",
        "text",
        "max_output_tokens",
        "metadata",
        "include",
        "prompt_cache_key",
        "store",
        "previous_response_id",
        "user",
        "safety_identifier",
        "temperature",
        "top_p",
        "stream",
        "stream_options",
        "service_tier",
        "truncation",
        "background",  # false: answered now, as asked (true is refused)
        # Client-side bookkeeping (Codex sends its session ids here): nothing a model reads.
        "client_metadata",
    }
)
# Fields that point at state kept at OpenAI: leaving them out would answer a different question.
UNSERVED = {
    "conversation": "send the conversation's items, or continue with previous_response_id",
    "prompt": "send the prompt's text as instructions",
    "background": "send the request without background",
}
INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}
# The `reasoning.summary` values that ask for one (`generate_summary` is its older name).
SUMMARIES = ("auto", "concise", "detailed")


class ReasoningConfig(BaseModel):
    model_config = REQUEST

    effort: str | None = None
    summary: str | None = None
    generate_summary: str | None = None


class TextFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None

    model_config = ConfigDict(
        extra="allow", defer_build=True, populate_by_name=True, serialize_by_alias=True, strict=True
    )


class TextConfig(BaseModel):
    model_config = REQUEST

    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


METADATA_PAIRS = 16


class ResponsesRequest(BaseModel):
    """An OpenAI Responses API request body (`POST /v1/responses`)."""

    model_config = REQUEST

    model: str = Field(min_length=1)
    input: str | list[dict[str, Any]] = Field(default_factory=list)
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    reasoning: ReasoningConfig | None = None
    text: TextConfig | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    metadata: dict[str, str] | None = None
    include: list[str] | None = None
    prompt_cache_key: str | None = None
    store: bool | None = None
    previous_response_id: str | None = None
    user: str | None = None
    safety_identifier: str | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stream: bool | None = None
    service_tier: str | None = None
    truncation: Literal["auto", "disabled"] | None = None

    @field_validator("metadata", mode="before")
    @classmethod
    def _few_pairs(cls, metadata: Any) -> Any:
        """OpenAI's limits on `metadata` (16 pairs, keys of 64 characters, values of 512), checked before its values
        are: a dict is validated whole, and 200,000 wrong values held the event loop for a second."""
        if isinstance(metadata, dict):
            if len(metadata) > METADATA_PAIRS:
                raise PydanticCustomError("metadata", f"at most {METADATA_PAIRS} key-value pairs, not {len(metadata)}")
            for name, value in metadata.items():
                if len(name) > 64 or (isinstance(value, str) and len(value) > 512):
                    raise PydanticCustomError("metadata", f"'{name[:64]}': keys are at most 64 characters, values 512")
        return metadata

    @field_validator("tools")
    @classmethod
    def _typed_tools(cls, tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        """Each tool's `type`, and each of a namespace's, a string where it is given (`typed`)."""
        for i, tool in enumerate(tools or ()):
            typed(tool, f"tools.{i}")
            for j, inner in enumerate(_grouped(tool) if tool.get("type") == "namespace" else ()):
                typed(inner, f"tools.{i}.tools.{j}")
        return tools

    @field_validator("tool_choice")
    @classmethod
    def _typed_choice(cls, choice: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
        """A choice's `type`, and each of the tools an `allowed_tools` choice allows, a string (`typed`)."""
        if isinstance(choice, dict):
            typed(choice, "tool_choice")
            allowed = choice.get("tools") if choice.get("type") == "allowed_tools" else None
            for j, tool in enumerate(allowed if isinstance(allowed, list) else ()):
                if isinstance(tool, dict):
                    typed(tool, f"tool_choice.tools.{j}")
        return choice

    @property
    def stored(self) -> bool:
        """`store` defaults to true in the Responses API."""
        return self.store is not False

    def wants_encrypted_reasoning(self) -> bool:
        return ENCRYPTED_REASONING in (self.include or ())


def typed(tool: dict[str, Any], where: str) -> None:
    """The client's 400 for a tool (or a tool choice) at `where` whose `type` is given and is no string: the
    translation took it for a tool of no type it carries and left it out with a 200 (`tools[['function']]`), and
    OpenAI refuses it. (Raised as the gateway's own error, not pydantic's, to name the member: `tools.0.type`.)"""
    kind = tool.get("type")
    if kind is not None and not isinstance(kind, str):
        raise InvalidRequestError(f"{where}.type must be a string", param=f"{where}.type")


# --- input items -----------------------------------------------------------------------------------


class InputMessage(BaseModel):
    model_config = REQUEST

    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[dict[str, Any]]


class FunctionCallItem(BaseModel):
    model_config = REQUEST

    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str = ""
    namespace: str | None = None  # (the `namespace` tool that holds the function: `Namespaces`)


class FunctionCallOutputItem(BaseModel):
    model_config = REQUEST

    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: str | list[dict[str, Any]]


class SummaryPart(BaseModel):
    model_config = REQUEST

    text: str = ""


class ReasoningItem(BaseModel):
    model_config = REQUEST

    type: Literal["reasoning"]
    summary: list[SummaryPart] = Field(default_factory=list)
    encrypted_content: str | None = None
    content: list[SummaryPart] | None = None


# The Responses API's input item types (OpenAI's `ResponseInputItem` union). The translation carries messages,
# function calls, their outputs and reasoning (an `item_reference` is replaced before by the item it names:
# `responses_routes.StoredItems`); an item of another of these types is left out and named (`input[file_search_call]`),
# but a web search's (`SEARCH_CALL`), and one of a type not among them is the client's 400, as OpenAI answers it,
# whichever deployment would serve it.
ITEM_TYPES = frozenset(
    {
        "message",
        "function_call",
        "function_call_output",
        "reasoning",
        "item_reference",
        "file_search_call",
        "web_search_call",
        "computer_call",
        "computer_call_output",
        "code_interpreter_call",
        "image_generation_call",
        "local_shell_call",
        "local_shell_call_output",
        "shell_call",
        "shell_call_output",
        "apply_patch_call",
        "apply_patch_call_output",
        "custom_tool_call",
        "custom_tool_call_output",
        "mcp_list_tools",
        "mcp_approval_request",
        "mcp_approval_response",
        "mcp_call",
        "tool_search_call",
        "tool_search_output",
        "additional_tools",
        "configuration_update",
        "compaction",
        "compaction_trigger",
        "program",
        "program_output",
    }
)


# A web search that ran (Codex, `store: false`, sends back every item it got): a record of the past, whose results
# are in the text of its turn (its pages there as citations): after it where Claude searched, and before it where
# Gemini's stream gave its grounding with the candidate's last event, after the message, which a stored streamed
# response and a client that keeps items in the order they came have too. No provider takes another's search back
# (Claude's encrypted results, Gemini's grounding are its own), so a translation leaves it out, unnamed where its
# turn has text (`_Conversation.searched`): nothing the model needs is lost, and naming it would mark every later
# turn of the conversation (a 400 under `x-gateway-strict`). One whose turn has no text (a search, then a function
# call) is left out and named (`input[web_search_call]`): what it found is in no message, unless its turn brings back
# Gemini 3's own parts of the search (`TOOL_CONTEXT`, sealed in a reasoning item), which hold its results.
SEARCH_CALL = "web_search_call"


def is_reference(item: dict[str, Any]) -> bool:
    """Whether an input item is an `item_reference`: its type says so, or, as the API takes one, it has an `id` and
    neither a type nor a role (which would make it a message)."""
    kind = item.get("type")
    return kind == "item_reference" or (kind is None and "role" not in item and "id" in item)


def no_such_item(kind: Any, where: str) -> InvalidRequestError:
    """OpenAI's 400 for an input item of no type the API has (a typo, a content part sent as an item, none)."""
    if kind is None:
        return InvalidRequestError(f"Missing required parameter: '{where}.type'.", param=where)
    shown = repr(kind) if len(repr(kind)) <= 64 else repr(kind)[:61] + "..."
    known = ", ".join(f"'{name}'" for name in sorted(ITEM_TYPES))
    return InvalidRequestError(f"Invalid value: {shown}. Supported values are: {known}.", param=where)


def input_items(req: ResponsesRequest) -> list[dict[str, Any]]:
    """The request's input as a list of items (a string input is one user message)."""
    if isinstance(req.input, str):
        return [{"type": "message", "role": "user", "content": req.input}]
    return list(req.input)


def unsealed_reasoning(items: list[dict[str, Any]]) -> list[str]:
    """The ids of the reasoning items sent back without their `encrypted_content` (the client did not ask for
    it): what the gateway kept of them is beside the response their id names (its own ids), or that holds them (a
    provider's: see `StoredItems`)."""
    return [
        item["id"]
        for item in items
        if item.get("type") == "reasoning" and not item.get("encrypted_content") and isinstance(item.get("id"), str)
    ]


def with_sealed_reasoning(items: list[dict[str, Any]], sealed: Mapping[str, str]) -> list[dict[str, Any]]:
    """Stored items as the provider needs them back: a reasoning item the client was given without its
    `encrypted_content` (it did not ask for it) takes the one the gateway sealed for it and kept (`sealed`, by
    item id), so that a signed thinking block goes back whole, as with `store: false`."""
    return [
        {**item, "encrypted_content": sealed[item["id"]]}
        if item.get("type") == "reasoning" and not item.get("encrypted_content") and _held(item.get("id"), sealed)
        else item
        for item in items
    ]


def _held(item_id: Any, sealed: Mapping[str, str]) -> bool:
    """Whether `sealed` holds the reasoning of the item `item_id` names: never for an id that is no string (a client's
    list or object, kept as sent in a stored conversation, would raise in the lookup: a 500 on the request that
    continues it)."""
    return isinstance(item_id, str) and item_id in sealed


def merge(fields: dict[str, Any], more: dict[str, Any]) -> None:
    """Fold a delta's reasoning fields in: lists (signed blocks) and maps (signatures) grow, the rest is set. They
    grow in place, from a copy of the first (not the delta's own): made anew with each, a turn's blocks would be
    copied whole for every sealed item a client sends back (20,000 items, 1.1 s: quadratic)."""
    for name, value in more.items():
        known = fields.get(name)
        if isinstance(value, list):
            if isinstance(known, list):
                known.extend(value)
            else:
                fields[name] = list(value)
        elif isinstance(value, dict):
            if isinstance(known, dict):
                known.update(value)
            else:
                fields[name] = dict(value)
        else:
            fields[name] = value


def _content_part(part: dict[str, Any], where: str) -> dict[str, Any]:
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text", "summary_text"):
        return {"type": "text", "text": str(part.get("text", ""))}
    if kind == "refusal":
        return {"type": "text", "text": str(part.get("refusal", ""))}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str) or not url:
            raise InvalidRequestError(f"{where}: input_image needs an image_url (file_id is not supported)")
        image: dict[str, Any] = {"url": url}
        if part.get("detail") in ("auto", "low", "high"):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        file = {name: part[name] for name in ("file_data", "file_id", "filename") if part.get(name)}
        if not file.get("file_data") and not file.get("file_id"):
            raise InvalidRequestError(f"{where}: input_file needs file_data or file_id (file_url is not supported)")
        return {"type": "file", "file": file}
    raise InvalidRequestError(f"{where}: content part type '{kind}' is not supported")


def _tool_output(output: str | list[dict[str, Any]], where: str) -> str | list[dict[str, Any]]:
    """A function's output as a tool message's content: its text, or its parts when it returned more than
    text (a screenshot): the provider's adapter sends what its API takes there and names what it cannot."""
    if isinstance(output, str):
        return output
    parts = [_content_part(p, f"{where}.output[{i}]") for i, p in enumerate(output)]
    if all(part["type"] == "text" for part in parts):
        return "".join(part["text"] for part in parts)
    return parts


class _Conversation:
    """Chat messages being built from items: an assistant turn collects its text, reasoning and calls
    until an item of another turn arrives (Chat Completions carries a turn's calls on one message)."""

    def __init__(self, seal: ReasoningSeal, dropped: list[str], spaces: Namespaces) -> None:
        self.messages: list[dict[str, Any]] = []
        self.turn: dict[str, Any] | None = None
        # The open turn's text (None until a message item of it: a turn of calls alone has no content) and reasoning,
        # in pieces joined once when it closes. Each item's added to the whole so far copied it: quadratic, and 50,000
        # assistant items of 100 characters held the event loop 14 s.
        self.texts: list[str] | None = None
        self.thoughts: list[str] = []
        self.seal = seal
        self.dropped = dropped
        self.spaces = spaces
        self.searched = False  # (a `web_search_call` of the open turn, which has no text yet)
        self.wrote = False  # (the open turn has text: its searches' results are in it, before them or after)

    def assistant(self) -> dict[str, Any]:
        if self.turn is None:
            self.turn = {"role": "assistant", "content": None}
            self.messages.append(self.turn)
        return self.turn

    def close_turn(self) -> None:
        turn = self.turn
        if self.searched and not (turn and turn.get(TOOL_CONTEXT)):
            # (a search whose results no text of its turn carries, nor Gemini's own parts of it: left out, named)
            self.drop(f"input[{SEARCH_CALL}]")
        self.searched = self.wrote = False
        if turn is None:
            return
        if self.texts is not None:
            turn["content"] = "".join(self.texts)
            self.texts = None
        if self.thoughts:
            turn["reasoning_content"] = "".join(self.thoughts)
            self.thoughts = []
        self.turn = None

    def drop(self, name: str) -> None:
        """Name what the translation leaves out, once however many items it was left out of."""
        if name not in self.dropped:
            self.dropped.append(name)

    def add(self, raw: dict[str, Any], where: str, stored: bool = False) -> None:
        """Translate one item (`stored`: of the conversation `previous_response_id` continues, taken when it was
        sent: one of a type the API does not have, kept by an older release, is left out and named as it was)."""
        kind = raw.get("type", "message" if "role" in raw else None)
        # (A type that is no string is no type the API has: a list or an object, unhashable, would raise in
        # `ITEM_TYPES`'s lookup, a 500.)
        known = isinstance(kind, str) and kind in ITEM_TYPES
        try:
            if kind == "message":
                self._message(InputMessage.model_validate(raw), where)
            elif kind == "function_call":
                call = FunctionCallItem.model_validate(raw)
                turn = self.assistant()
                calls = turn.setdefault("tool_calls", [])
                name = self.spaces.sent_name(call.namespace, call.name)
                calls.append(
                    {"id": call.call_id, "type": "function", "function": {"name": name, "arguments": call.arguments}}
                )
                _mark(turn, "call", len(calls) - 1)
            elif kind == "function_call_output":
                result = FunctionCallOutputItem.model_validate(raw)
                self.close_turn()
                content = _tool_output(result.output, where)
                self.messages.append({"role": "tool", "tool_call_id": result.call_id, "content": content})
            elif kind == "reasoning":
                self._reasoning(ReasoningItem.model_validate(raw))
            elif kind == SEARCH_CALL:
                self.searched = not self.wrote  # (history where its turn has text, either side: `SEARCH_CALL`)
            elif known or stored:
                self.drop(f"input[{kind}]")
            else:
                raise no_such_item(kind, where)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first["loc"])
            raise InvalidRequestError(f"{where}.{loc}: {first['msg']}", param=where) from None

    def _message(self, message: InputMessage, where: str) -> None:
        if isinstance(message.content, str):
            content: str | list[dict[str, Any]] = message.content
        else:
            content = [_content_part(p, f"{where}.content[{i}]") for i, p in enumerate(message.content)]
        if message.role == "assistant":
            # Text after the turn's calls, before their outputs, is the same turn's (Claude's interleaved thinking
            # writes between its calls): a function call's output is what ends a turn. Made a turn of its own, the
            # first turn's calls would be answered after the second's, which OpenAI refuses ("An assistant message with
            # 'tool_calls' must be followed by tool messages responding to each 'tool_call_id'").
            turn = self.assistant()
            text = content if isinstance(content, str) else "".join(p.get("text", "") for p in content)
            if self.texts is None:
                self.texts = []
            self.texts.append(text)
            if text:
                _mark(turn, "text", len(text))
                self.wrote = True
                self.searched = False  # (the turn's searches' results are in its text)
            return
        self.close_turn()
        role = "system" if message.role == "developer" else message.role
        self.messages.append({"role": role, "content": content})

    def _reasoning(self, item: ReasoningItem) -> None:
        turn = self.assistant()
        sealed = self.seal.open(item.encrypted_content) if item.encrypted_content else None
        if item.encrypted_content and sealed is None:
            self.drop(UNREADABLE_REASONING)
        if sealed is not None:
            text = str(sealed.get("text") or "")
            known = _blocks(turn)
            merge(turn, sealed.get("fields") or {})  # a turn may think twice (between its calls)
            for at in range(known, _blocks(turn)):
                _mark(turn, "thinking", at)
        else:
            text = "".join(p.text for p in (item.content or item.summary))
        if text:
            self.thoughts.append(text)


def _mark(turn: dict[str, Any], kind: str, index: int) -> None:
    """Note an assistant turn's part in the order the items came (see `BlockOrder`; kept where Claude thought
    between its calls: `_ordered_turns`)."""
    turn.setdefault("block_order", []).append((kind, index))


def _blocks(turn: dict[str, Any]) -> int:
    blocks = turn.get("thinking_blocks")
    return len(blocks) if isinstance(blocks, list) else 0


def _ordered_turns(messages: list[dict[str, Any]]) -> None:
    """Keep an assistant turn's order only where it says more than the usual one (thinking between its calls)."""
    for message in messages:
        order = message.pop("block_order", None)
        if order and thinks_between(order):
            message["block_order"] = order


def _named(tool: Any, kind: str) -> str | None:
    """The name of a tool of type `kind` (`function`, `namespace`), None for another tool or one with no name."""
    if not isinstance(tool, dict) or tool.get("type") != kind:
        return None
    name = tool.get("name")
    return name if isinstance(name, str) and name else None


def _grouped(tool: dict[str, Any]) -> list[dict[str, Any]]:
    """The tools a `namespace` tool holds (none when it holds no list of them)."""
    inner = tool.get("tools")
    return [one for one in inner if isinstance(one, dict)] if isinstance(inner, list) else []


class Namespaces:
    """The functions of a request's `namespace` tools (Codex groups its sub-agent tools, `spawn_agent`, `wait_agent`,
    ..., in one: `multi_agent_v1`), which only OpenAI's Responses API takes grouped: a translated request offers each
    as a plain function, under its own name where no other tool of the request has that name, else under
    `<namespace>__<name>` (which a provider's adapter sends as an alias where its rules refuse it: `ToolNames`). A
    call of one comes back as OpenAI's does, a `function_call` whose `name` is the function's and `namespace` its
    group's; such a call sent back in a later turn goes to the provider under the name the function was offered by.
    Made from the request's tools alone, so that its request and its answer (whole or streamed) agree on each name."""

    SEPARATOR = "__"
    __slots__ = ("sent", "called")

    def __init__(self, tools: list[dict[str, Any]] | None) -> None:
        self.sent: dict[tuple[str, str], str] = {}  # (namespace, function) -> the name the provider is offered
        self.called: dict[str, tuple[str, str]] = {}  # the reverse, for the answer's calls
        grouped = [
            (space, name)
            for tool in tools or ()
            if (space := _named(tool, "namespace"))
            for inner in _grouped(tool)
            if (name := _named(inner, "function"))
        ]
        if not grouped:
            return
        plain = {name for tool in tools or () if (name := _named(tool, "function"))}
        counts: dict[str, int] = {}
        for _, name in grouped:
            counts[name] = counts.get(name, 0) + 1
        taken = set(plain)
        for space, name in grouped:
            if (space, name) in self.sent:
                continue
            sent = name
            if name in plain or counts[name] > 1:
                sent = prefixed = f"{space}{self.SEPARATOR}{name}"
                attempt = 1
                while sent in taken or sent in counts:  # (a function of that very name: another suffix)
                    attempt += 1
                    sent = f"{prefixed}_{attempt}"
            taken.add(sent)
            self.sent[space, name] = sent
            self.called[sent] = (space, name)

    def sent_name(self, space: str | None, name: str) -> str:
        """The name a call of `name` in `space` goes to the provider by (a call sent back in the history): the one
        the function is offered by, else (a namespace the request no longer offers) its namespace's prefixed."""
        if space is None:
            return name
        return self.sent.get((space, name)) or f"{space}{self.SEPARATOR}{name}"

    def client_name(self, sent: str) -> tuple[str | None, str]:
        """The namespace and name of the function the provider's call names `sent` (no namespace: a plain one)."""
        grouped = self.called.get(sent) if self.called else None
        return grouped if grouped is not None else (None, sent)


def _function(tool: dict[str, Any], name: str, group: str | None = None) -> dict[str, Any]:
    """A function tool in Chat Completions form, offered by `name`. One of a namespace has the namespace's own
    description (`group`) first in its own: no provider but OpenAI's Responses API groups tools, and the group's
    words (Codex's `multi_agent_v1`: what its sub-agents are for) would reach the model nowhere else."""
    function: dict[str, Any] = {"name": name, "parameters": tool.get("parameters") or {"type": "object"}}
    own = tool.get("description") if isinstance(tool.get("description"), str) else None
    description = "\n\n".join(words for words in (group, own) if words)
    if description:
        function["description"] = description
    if tool.get("strict") is not None:
        function["strict"] = tool["strict"]
    return {"type": "function", "function": function}


# The Responses API's hosted web search, by the type's prefix (`web_search`, `web_search_preview`, their dated names).
SEARCH_TOOL = "web_search"


def is_search(tool: Any) -> bool:
    """Whether a tool (or a `tool_choice`'s or `allowed_tools`' tool) is the hosted web search, by any of its names."""
    return isinstance(tool, dict) and str(tool.get("type") or "").startswith(SEARCH_TOOL)


def search_tools(req: ResponsesRequest) -> list[dict[str, Any]]:
    """The request's hosted web search tools (one is usual: they are one search, whatever their names)."""
    return [tool for tool in req.tools or () if is_search(tool)]


def search_forbidden(choice: Any) -> bool:
    """Whether a request's `tool_choice` leaves the model no search to run, as OpenAI reads it: `none` forbids every
    tool, the hosted ones included, and an `allowed_tools` choice every tool it does not list (its functions alone,
    the search not among them). Its search is then reserved and charged nowhere, and no translation sends it."""
    if choice == "none":
        return True
    if not isinstance(choice, dict) or choice.get("type") != "allowed_tools":
        return False
    allowed = choice.get("tools")
    return not (isinstance(allowed, list) and any(map(is_search, allowed)))


def _tools(req: ResponsesRequest, dropped: list[str], spaces: Namespaces) -> list[dict[str, Any]]:
    """The function tools, a namespace's in its place under the names `spaces` gives them; the rest named."""
    tools: list[dict[str, Any]] = []
    for tool in req.tools or ():
        kind = str(tool.get("type", ""))
        name = _named(tool, "function")
        space = _named(tool, "namespace")
        if name is not None:
            tools.append(_function(tool, name))
        elif space is not None:
            group = tool.get("description") if isinstance(tool.get("description"), str) else None
            for inner in _grouped(tool):
                function = _named(inner, "function")
                if function is None:  # (a custom tool among them, as one alone)
                    dropped.append(f"tools[{inner.get('type') or 'untyped'}]")
                else:
                    tools.append(_function(inner, spaces.sent[space, function], group))
        elif not is_search(tool):  # (the request's search is its own: `ResponsesChatRequest.web_search`)
            dropped.append(f"tools[{kind or 'untyped'}]")
    return tools


def translated_search(
    req: ChatRequest, asked: list[dict[str, Any]], most: int, dropped: list[str], choice: Any
) -> list[str]:
    """The hosted web search of a Responses request (`asked`: its search tools as the client sent them) for its
    translation `req`: the search, up to `most` searches (the `max_tool_calls` reserved for), where it is priced
    (`most`, else 0: left out, `responses_routes.hosted_tools`); a provider with its own search tool runs it
    (`ResponsesChatRequest`). `max_tool_calls`, the most calls of the hosted tools, is then the search's limit, and
    no longer named among what the translation leaves out (`dropped`, which is returned), but with the search where
    a deployment is sent none (`WebSearch.unsent`). Else the search tools are named there: so where the request's
    `tool_choice` (`choice`) is `none`, which forbids every tool, the hosted ones included, as OpenAI's does. (With
    the search the only tool, the translation carries no choice at all, none being left to choose among functions:
    the search would go to Claude and Gemini, run, and be reserved and charged.) An `allowed_tools` choice that does
    not allow the search (`search_forbidden`) is honoured by sending none, and nothing is named: the model was to run
    none (sent, Claude ran it beside the one function allowed)."""
    if not asked:
        return [*dropped, *_search_unchosen(req, choice, dropped)]
    if choice != "none" and search_forbidden(choice):
        return dropped
    if not most or not isinstance(req, ResponsesChatRequest) or choice == "none":
        named = sorted({f"tools[{tool['type']}]" for tool in asked})
        return [*dropped, *named, *_search_unchosen(req, choice, dropped)]
    limit = "max_tool_calls" if "max_tool_calls" in dropped else None
    req.web_search = WebSearch.asked(asked[0], most, f"tools[{asked[0]['type']}]")._replace(limit=limit)
    return [name for name in dropped if name != "max_tool_calls"]


def _search_unchosen(req: ChatRequest, choice: Any, dropped: list[str]) -> list[str]:
    """What an `allowed_tools` choice (`choice`) that allows the hosted search names where the translation carries
    no search (`translated_search`): the tools it allows, some gone (`tool_choice.tools`), or the choice itself where
    no tool is left to choose (`tool_choice`); nothing where it is named already."""
    if not _allowed_search(choice) or "tool_choice.tools" in dropped or "tool_choice" in dropped:
        return []
    return ["tool_choice.tools" if req.tools else "tool_choice"]


def _tool_choice(choice: str | dict[str, Any] | None, names: set[str], dropped: list[str], spaces: Namespaces) -> Any:
    """The choice in Chat Completions form, among the function tools `names`. One that asks for a call with none
    left to choose (`required` beside hosted tools alone, a function named with no function tool) goes, named
    `tool_choice` as the pass-through names it (`responses_routes.unchosen`): unnamed, it would leave the model,
    asked to call a tool, answering freely, under `x-gateway-strict` too."""
    if choice is None:
        return None
    if isinstance(choice, str):
        if choice not in ("auto", "none", "required"):
            raise InvalidRequestError(f"tool_choice '{choice}' is not one of auto, none, required", param="tool_choice")
        if not names and choice == "required":
            dropped.append("tool_choice")
        return choice if names else None
    if not names:
        if not _allowed_search(choice, alone=True):  # (the search it allows: `translated_search`)
            dropped.append("tool_choice")
        return None
    chosen = _chosen(choice, spaces)
    if chosen in names:
        return {"type": "function", "function": {"name": chosen}}
    if choice.get("type") == "allowed_tools":
        return _allowed_tools(choice, names, dropped, spaces)
    dropped.append(f"tool_choice[{choice.get('type')}]")
    return None


def _chosen(tool: Any, spaces: Namespaces) -> str | None:
    """The name sent for the function a choice names (one of a namespace: by its `namespace` too), None for another
    tool."""
    name = _named(tool, "function")
    space = tool.get("namespace") if name is not None else None
    return spaces.sent_name(space, name) if name is not None and isinstance(space, str) else name


def _allowed_search(choice: Any, *, alone: bool = False) -> bool:
    """Whether `choice` is an `allowed_tools` choice that allows the hosted search (`alone`: and nothing else)."""
    allowed = choice.get("tools") if isinstance(choice, dict) and choice.get("type") == "allowed_tools" else None
    if not isinstance(allowed, list):
        return False
    return all(map(is_search, allowed)) and bool(allowed) if alone else any(map(is_search, allowed))


def _allowed_tools(choice: dict[str, Any], names: set[str], dropped: list[str], spaces: Namespaces) -> Any:
    """An `allowed_tools` choice in Chat Completions form: the function tools it allows, its mode. One it allows
    that the request does not carry (a hosted tool, left out) is named (`tool_choice.tools`); with none left, the
    mode alone, named too (the model may then call any function). The hosted search it allows is the translation's
    own where it is carried (`translated_search`, which names it where it is not): not named here."""
    mode = "required" if choice.get("mode") == "required" else "auto"
    allowed = [tool for tool in choice.get("tools") or () if isinstance(tool, dict) and not is_search(tool)]
    kept = [name for tool in allowed if (name := _chosen(tool, spaces)) in names]
    if len(kept) < len(allowed) or not kept:
        dropped.append("tool_choice.tools")
    if not kept:
        return mode
    functions = [{"type": "function", "function": {"name": name}} for name in kept]
    return {"type": "allowed_tools", "allowed_tools": {"mode": mode, "tools": functions}}


def _response_format(text: TextConfig | None) -> dict[str, Any] | None:
    fmt = text.format if text else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "json_object"}
    if fmt.schema_ is None:
        raise InvalidRequestError("text.format.schema is required for json_schema", param="text.format.schema")
    schema: dict[str, Any] = {"name": fmt.name or "response", "schema": fmt.schema_}
    if fmt.description:
        schema["description"] = fmt.description
    if fmt.strict is not None:
        schema["strict"] = fmt.strict
    return {"type": "json_schema", "json_schema": schema}


def to_chat_request(
    req: ResponsesRequest, history: list[dict[str, Any]], seal: ReasoningSeal, kept: Mapping[str, str] | None = None
) -> tuple[ChatRequest, list[str]]:
    """The internal request for a Responses one (after the stored `history` items, if any), and the
    Responses fields and items it cannot carry. `kept`: the sealed reasoning the gateway kept for reasoning items
    the input sends back without it (by item id, see `with_sealed_reasoning`)."""
    extra = req.model_extra or {}
    for name, instead in UNSERVED.items() if extra else ():
        if extra.get(name):  # (`background: false` is what the gateway does anyway)
            raise InvalidRequestError(f"{name} is not supported by this model's provider; {instead}", param=name)
    dropped = sorted((req.model_fields_set | extra.keys()) - MAPPED)
    if req.truncation == "auto":
        dropped.append("truncation")
    dropped += [f"include[{name}]" for name in req.include or () if name != ENCRYPTED_REASONING]
    spaces = Namespaces(req.tools)
    conversation = _Conversation(seal, dropped, spaces)
    if req.instructions:
        conversation.messages.append({"role": "system", "content": req.instructions})
    for i, item in enumerate(history):
        conversation.add(item, f"previous[{i}]", stored=True)
    if isinstance(req.input, str):
        # (A string input is one user message, translated as `_message` translates it: the item `input_items` makes
        # of it is valid by its making, and validating it again cost a warm request some 2 µs.)
        conversation.close_turn()
        conversation.messages.append({"role": "user", "content": req.input})
    else:
        items = input_items(req)
        for i, item in enumerate(with_sealed_reasoning(items, kept) if kept else items):
            conversation.add(item, f"input[{i}]")
    conversation.close_turn()
    _ordered_turns(conversation.messages)
    if not any(m["role"] != "system" for m in conversation.messages):
        raise InvalidRequestError("input must hold at least one message or item", param="input")
    tools = _tools(req, dropped, spaces)
    body: dict[str, Any] = {"model": req.model, "messages": conversation.messages}
    if tools:
        body["tools"] = tools
        choice = _tool_choice(req.tool_choice, {t["function"]["name"] for t in tools}, dropped, spaces)
        if choice is not None:
            body["tool_choice"] = choice
        if req.parallel_tool_calls is not None:
            body["parallel_tool_calls"] = req.parallel_tool_calls
    elif req.tool_choice is not None:
        _tool_choice(req.tool_choice, set(), dropped, spaces)  # (none left to choose: named, as `unchosen` does)
    response_format = _response_format(req.text)
    if response_format is not None:
        body["response_format"] = response_format
    if req.text is not None and req.text.verbosity is not None:
        body["verbosity"] = req.text.verbosity
    if req.reasoning is not None and req.reasoning.effort:
        body["reasoning_effort"] = req.reasoning.effort
    if req.max_output_tokens is not None:
        body["max_completion_tokens"] = req.max_output_tokens
    for name in ("temperature", "top_p", "prompt_cache_key", "safety_identifier", "service_tier", "user"):
        if getattr(req, name) is not None:
            body[name] = getattr(req, name)
    if req.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    summary = req.reasoning and (req.reasoning.summary or req.reasoning.generate_summary)
    summary = summary if isinstance(summary, str) and summary in SUMMARIES else None
    try:
        if summary is not None or search_tools(req):
            return ResponsesChatRequest.asking(summary, body), dropped
        return ChatRequest.model_validate(body), dropped
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InvalidRequestError(f"the request cannot be translated: {first['msg']}") from None


class ResponsesChatRequest(SearchOffered, ChatRequest):
    """The internal request of a Responses request that asks for a reasoning summary (`reasoning_summary`) or offers
    the hosted web search (`web_search`, set once the search is priced: `translated_search`). A class of its own: as
    private attributes of `ChatRequest`, they doubled the validation of every Chat Completions request (5 to 10 µs),
    which never has them."""

    _summary: str | None = PrivateAttr(default=None)
    _search: WebSearch | None = PrivateAttr(default=None)

    @classmethod
    def asking(cls, summary: str | None, body: dict[str, Any]) -> ResponsesChatRequest:
        chat = cls.model_validate(body)
        chat._summary = summary
        return chat

    @property
    def reasoning_summary(self) -> str | None:
        return self._summary


# --- the answer ----------------------------------------------------------------------------------


def response_usage(usage: Usage) -> dict[str, Any]:
    """Responses usage: `input_tokens` counts cached tokens and cache writes too, as OpenAI's does; the details say
    how many were read from the cache and how many written to it (a field OpenAI's schema requires)."""
    reasoning = usage.completion_tokens_details.reasoning_tokens if usage.completion_tokens_details else 0
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens, "cache_write_tokens": usage.cache_write_tokens},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


class ResponseIds:
    """The ids of one response and its output items, derived from the gateway's request id."""

    # An output item's id: its type's prefix, the request id's 32 hex digits, its count in the response (3 to 6
    # digits: no response has a million items). Unbounded, one OpenAI id in some 1,850, 48 hex digits the last 16 of
    # them decimal, read as the gateway's, naming a response that never was (found by review, storerev36).
    ITEM_ID = re.compile(r"[a-z]+_([0-9a-f]{32})[0-9]{3,6}")
    # An input item's made id (`responses_items.item_ids`): its type's prefix, the id of the response that first kept
    # it without `resp_` (the gateway's, or a provider's on a response passed through: OpenAI's `resp_<hex>`), and
    # its position there after a `_`.
    INPUT_ITEM_ID = re.compile(r"(?:msg|fc|fco|rs|item)_([0-9A-Za-z]+)_[0-9]{3,}")

    def __init__(self, request_id: str) -> None:
        self.token = request_id.removeprefix("req_")
        self.response = f"resp_{self.token}"
        self.count = 0

    def item(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}_{self.token}{self.count:03d}"

    @classmethod
    def response_of(cls, item_id: str) -> str | None:
        """The id of the response that first kept the item `item_id`, for an id the gateway made (`item`, or an
        input item's, `responses_items.item_ids`); None for any other (a provider's own, or a client's)."""
        made = cls.ITEM_ID.fullmatch(item_id) or cls.INPUT_ITEM_ID.fullmatch(item_id)
        return f"resp_{made.group(1)}" if made else None


def reasoning_fields(extra: dict[str, Any] | None) -> dict[str, Any]:
    """An answer's provider-specific reasoning fields (`thinking_blocks`, `reasoning_details`, signatures):
    sealed with the reasoning so the next turn's assistant message carries them back as they came."""
    return {k: v for k, v in (extra or {}).items() if k.startswith(("reasoning", "thinking")) and v is not None}


def reasoning_item(
    item_id: str, text: str, fields: dict[str, Any], req: ResponsesRequest, seal: ReasoningSeal
) -> dict[str, Any]:
    """A reasoning output item: its text as the summary, sealed for the next turn when `include` asks (and,
    for a stored response, for the gateway: `ReasoningSeal.for_response`)."""
    item: dict[str, Any] = {
        "id": item_id,
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": text}] if text else [],
    }
    if req.wants_encrypted_reasoning() or req.stored:  # (a stored one is kept for `previous_response_id`)
        sealed = seal.seal_item(item_id, {"text": text, "fields": fields})
        if req.wants_encrypted_reasoning():
            item["encrypted_content"] = sealed
    return item


def content_part(kind: str, text: str) -> dict[str, Any]:
    """An output message's content part: its text (`output_text`), or the model's refusal (`refusal`)."""
    if kind == "refusal":
        return {"type": "refusal", "refusal": text}
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def url_citations(annotations: Any, start: int, end: int) -> list[dict[str, Any]]:
    """The Responses API's `url_citation` annotations of the answer's text `start`..`end` (one output text's, whole or
    as far as streamed), from Chat Completions `annotations` (a provider's search tool's citations, or an OpenAI search
    model's, their indices in the answer's text), their indices in that text. A span is the text's if it starts in it
    (one that starts before is an earlier text's, one past it cites what is not written), and ends at the text's end
    at most (and not before its start): no citation points outside the text it annotates."""
    cited: list[dict[str, Any]] = []
    for annotation in annotations if isinstance(annotations, list) else ():
        span = annotation.get("url_citation") if isinstance(annotation, dict) else None
        if not isinstance(span, dict) or not isinstance(span.get("start_index"), int):
            continue
        first = span["start_index"]
        if start <= first < end or start == first == end:
            cited.append(
                {
                    "type": "url_citation",
                    "start_index": first - start,
                    "end_index": max(min(int(span.get("end_index") or 0), end), first) - start,
                    "url": span.get("url"),
                    "title": span.get("title") or "",
                }
            )
    return cited


def search_items(message: AssistantMessage, ids: ResponseIds) -> list[dict[str, Any]]:
    """The `web_search_call` items of the searches a provider's own search tool ran for the answer, with ids of the
    response's (`ws_...`), as OpenAI's answer has them ahead of the message that uses them."""
    return [{**search_call(call), "id": ids.item("ws")} for call in message.web_searches or ()]


def search_call(call: dict[str, Any]) -> dict[str, Any]:
    """A search of the internal form (`AssistantMessage.web_searches`) as OpenAI's `web_search_call` has it: each of
    its sources a `url` alone (a page's `title`, which Gemini's grounding gives for a Messages answer, is no member of
    OpenAI's source)."""
    action = call.get("action")
    if not isinstance(action, dict) or not isinstance(action.get("sources"), list):
        return call
    sources = action["sources"]
    kept = [{"type": "url", "url": s["url"]} if isinstance(s, dict) and "url" in s else s for s in sources]
    return {**call, "action": {**action, "sources": kept}}


def ending_status(finish_reason: str | None) -> str:
    """The status of the output item (message or function call) an answer ends in: `incomplete` when the output
    cap or a content filter cut it there (the response's `incomplete_details`), as OpenAI marks it."""
    return "incomplete" if finish_reason in INCOMPLETE else "completed"


def message_item(item_id: str, parts: list[dict[str, Any]], status: str = "completed") -> dict[str, Any]:
    return {"id": item_id, "type": "message", "role": "assistant", "status": status, "content": parts}


def call_item(
    item_id: str, call_id: str, name: str, arguments: str, status: str = "completed", spaces: Namespaces | None = None
) -> dict[str, Any]:
    """A function call output item: a call of a namespace's function names it as OpenAI does, `namespace` beside the
    function's own `name` (`spaces`: the request's, which gave the name the provider called it by)."""
    space, name = spaces.client_name(name) if spaces is not None else (None, name)
    item = {"id": item_id, "type": "function_call", "call_id": call_id, "name": name, "arguments": arguments}
    if space is not None:
        item["namespace"] = space
    item["status"] = status
    return item


OPENAI_TIERS = frozenset({"auto", "default", "flex", "scale", "priority"})


def served_tier_of(req: ResponsesRequest, status: str, dropped: Collection[str], served: str | None) -> str:
    """`envelope`'s `service_tier`: the tier the answer says it ran at (one of OpenAI's: a compatible server's own
    words, Groq's `on_demand`, are not), else the one asked and sent (`auto` the default once answered), else the
    provider's default."""
    if served in OPENAI_TIERS and served != "auto":
        return served
    asked = req.service_tier
    if asked is None or "service_tier" in dropped or (asked == "auto" and status != "in_progress"):
        return "default"
    return asked


def envelope(
    req: ResponsesRequest,
    response_id: str,
    created_at: int,
    *,
    status: str = "in_progress",
    output: list[dict[str, Any]] | None = None,
    finish_reason: str | None = None,
    dropped: Collection[str] = (),
    served_tier: str | None = None,
) -> dict[str, Any]:
    """The `response` object around its output: the request's settings echoed as OpenAI does. Built for a completed
    response (as the answer, the stream's last event and what is stored), it says when: `completed_at`, in Unix
    seconds, which OpenAI gives a completed response alone (never None on one). Its `service_tier` is the one
    the answer was served at: the one its answer says (`served_tier`: `priority` past OpenAI's ramp limits is served,
    and billed, at `default`), else the one asked, unless the deployment was not sent it (`dropped`, what the attempt
    that answered left out), then its provider's default (it said `flex`, asked and dropped, as OpenAI says a tier it
    served); `auto`, once answered, is the default."""
    incomplete = INCOMPLETE.get(finish_reason or "")
    if incomplete and status == "completed":
        status = "incomplete"
    text = req.text.model_dump(exclude_none=True, by_alias=True) if req.text else {}
    text.setdefault("format", {"type": "text"})
    reasoning = req.reasoning.model_dump(exclude_none=True) if req.reasoning else {}
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "completed_at": int(time.time()) if status == "completed" else None,
        "background": False,
        "error": None,
        "incomplete_details": {"reason": incomplete} if incomplete and status == "incomplete" else None,
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "metadata": req.metadata or {},
        "model": req.model,
        "output": output or [],
        "parallel_tool_calls": req.parallel_tool_calls is not False,
        "previous_response_id": req.previous_response_id,
        "prompt_cache_key": req.prompt_cache_key,
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "safety_identifier": req.safety_identifier,
        "service_tier": served_tier_of(req, status, dropped, served_tier),
        "store": req.stored,
        "temperature": req.temperature if req.temperature is not None else 1.0,
        "text": text,
        "tool_choice": req.tool_choice if req.tool_choice is not None else "auto",
        "tools": req.tools or [],
        "top_p": req.top_p if req.top_p is not None else 1.0,
        "truncation": req.truncation or "disabled",
        "usage": None,
        "user": req.user,
    }


def finish(response: dict[str, Any], usage: Usage, cost: Cost | None) -> dict[str, Any]:
    """Put the usage and the gateway's cost on a finished response."""
    response["usage"] = response_usage(usage)
    response["cost"] = cost.as_event() if cost is not None else None
    return response


def _items(
    message: AssistantMessage, fields: dict[str, Any], req: ResponsesRequest, ids: ResponseIds, seal: ReasoningSeal
) -> list[dict[str, Any]]:
    """Output items in the usual order: the reasoning, the message, the calls."""
    output: list[dict[str, Any]] = []
    if message.reasoning_content or fields:
        output.append(reasoning_item(ids.item("rs"), message.reasoning_content or "", fields, req, seal))
    output += search_items(message, ids)
    parts = [content_part("output_text", message.content)] if message.content else []
    if parts and message.model_extra and message.model_extra.get("annotations"):
        parts[0]["annotations"] = url_citations(message.model_extra["annotations"], 0, len(message.content or ""))
    if message.refusal:  # its own part, as OpenAI answers one: a client parsing the text does not parse it
        parts.append(content_part("refusal", message.refusal))
    if parts:
        output.append(message_item(ids.item("msg"), parts))
    spaces = Namespaces(req.tools)
    for call in message.tool_calls or ():
        fc = ids.item("fc")  # (a call with no id, `""` from some servers, is called by its item's, as streamed)
        output.append(call_item(fc, call.id or fc, call.function.name, call.function.arguments, spaces=spaces))
    return output


def _ordered(message: AssistantMessage, fields: dict[str, Any]) -> list[tuple[str, Any]] | None:
    """The answer's parts in the order the model wrote them (see `BlockOrder`), where it says and a refusal is not
    among them."""
    blocks = fields.get("thinking_blocks")
    if message.block_order is None or message.refusal or not isinstance(blocks, list):
        return None
    return ordered_parts(message.block_order, blocks, message.content or "", message.tool_calls or [])


def _items_in_order(
    message: AssistantMessage,
    parts: list[tuple[str, Any]],
    fields: dict[str, Any],
    req: ResponsesRequest,
    ids: ResponseIds,
    seal: ReasoningSeal,
) -> list[dict[str, Any]]:
    """Output items for parts in the model's order, as its stream has them: a reasoning item for each run of thinking
    blocks (their text its summary, the blocks sealed with it), a message for each run of text, an item per call."""
    output: list[dict[str, Any]] = []
    spaces = Namespaces(req.tools)
    rest = {name: value for name, value in fields.items() if name != "thinking_blocks"}
    searches = search_items(message, ids)  # (ahead of the first text or call: the order they came in is not kept)
    annotations = (message.model_extra or {}).get("annotations")
    written = 0  # the text's characters so far
    for kind, run in itertools.groupby(parts, key=operator.itemgetter(0)):
        if kind != "thinking" and searches:
            output += searches
            searches = []
        same = [part for _, part in run]
        if kind == "thinking":
            text = "".join(str(block.get("thinking") or "") for block in same)
            sealed, rest = {**rest, "thinking_blocks": same}, {}  # (any other field rides with the first)
            output.append(reasoning_item(ids.item("rs"), text, sealed, req, seal))
        elif kind == "text":
            text = "".join(same)
            part = content_part("output_text", text)
            part["annotations"] = url_citations(annotations, written, written + len(text))
            written += len(text)
            output.append(message_item(ids.item("msg"), [part]))
        else:
            for call in same:
                fc = ids.item("fc")
                output.append(call_item(fc, call.id or fc, call.function.name, call.function.arguments, spaces=spaces))
    return output + searches


# Output items whose status is their own, never the answer's ending status: a reasoning item's, and a search's
# (`searching`, `completed`, `failed`: a search that ends the answer, cut or paused, keeps the one it had).
KEEP_STATUS = frozenset({"reasoning", "web_search_call"})


def to_response(
    completion: ChatCompletion,
    req: ResponsesRequest,
    ids: ResponseIds,
    seal: ReasoningSeal,
    cost: Cost | None,
    dropped: Collection[str] = (),
) -> dict[str, Any]:
    """The `response` object for the first choice of a completion (`dropped`: what its deployment was not sent)."""
    choice = completion.choices[0] if completion.choices else None
    output: list[dict[str, Any]] = []
    if choice is not None:
        message = choice.message
        fields = reasoning_fields(message.model_extra)
        parts = _ordered(message, fields) if message.block_order else None
        if parts is not None:  # Claude thought between its calls: the items in the order it wrote them
            output = _items_in_order(message, parts, fields, req, ids, seal)
        else:
            output = _items(message, fields, req, ids, seal)
        if output and output[-1]["type"] not in KEEP_STATUS:
            output[-1]["status"] = ending_status(choice.finish_reason)
    finish_reason = choice.finish_reason if choice else None
    served_tier = (completion.model_extra or {}).get("service_tier")
    return completed(req, ids, output, finish_reason, dropped, served_tier, completion.usage or Usage(), cost)


def plain_response(
    completion: PlainCompletion,
    req: ResponsesRequest,
    ids: ResponseIds,
    cost: Cost | None,
    dropped: Collection[str] = (),
) -> dict[str, Any]:
    """`to_response` of a `PlainCompletion`: the first choice's text and refusal in one message, the items `_items`
    makes of them (a plain answer has no reasoning, calls, searches or citations), read from the answer's JSON
    rather than from the `ChatCompletion` validated from it."""
    choice = completion.choices[0] if completion.choices else None
    output: list[dict[str, Any]] = []
    finish_reason = choice["finish_reason"] if choice is not None else None
    if choice is not None:
        message = choice["message"]
        parts = [content_part("output_text", message["content"])] if message["content"] else []
        if message["refusal"]:
            parts.append(content_part("refusal", message["refusal"]))
        if parts:
            output.append(message_item(ids.item("msg"), parts, ending_status(finish_reason)))
    return completed(
        req, ids, output, finish_reason, dropped, completion.body.get("service_tier"), completion.usage, cost
    )


def completed(
    req: ResponsesRequest,
    ids: ResponseIds,
    output: list[dict[str, Any]],
    finish_reason: str | None,
    dropped: Collection[str],
    served_tier: str | None,
    usage: Usage,
    cost: Cost | None,
) -> dict[str, Any]:
    """The `response` object of an answer that came whole, its items `output` (`to_response`, `plain_response`)."""
    response = envelope(
        req,
        ids.response,
        int(time.time()),
        status="completed",
        output=output,
        finish_reason=finish_reason,
        dropped=dropped,
        served_tier=served_tier,
    )
    return finish(response, usage, cost)
