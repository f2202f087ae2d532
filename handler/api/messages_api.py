"""The Anthropic Messages API front-end: the request model, and its translation to the internal form.

A Messages request to an Anthropic deployment is not translated at all: it passes through as sent (see
`handler.pipeline.passthrough`). For every other provider it becomes the internal (OpenAI-form) request, keeping
what the internal form can carry: system blocks with their `cache_control`, `system`-role messages inside
`messages` (Claude Code sends them for models it does not know), `thinking` (enabled or adaptive) with
`output_config.effort`, `output_config.format`, images and documents, and signed thinking blocks of earlier
turns (on the internal message as `thinking_blocks`). What it cannot carry is named, for
`x-gateway-dropped-params`, and so are the client's betas whose meaning it loses (`lost_betas`). Rendering answers
back out is in `handler.api.messages_out`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from typing import Any, Literal

import orjson
from pydantic import BaseModel, Field, PrivateAttr

from handler.api.messages_out import SEARCH_NAME
from handler.api.offered_search import SearchOffered
from handler.api.reasoning_seal import ReasoningSeal
from handler.errors import InvalidRequestError
from handler.schemas import (
    DOCUMENT,
    DOCUMENT_FIELDS,
    REQUEST,
    TOOL_CONTEXT,
    TOOL_ERROR_MARK,
    BlockOrder,
    ChatRequest,
    ThinkingConfig,
    WebSearch,
    thinks_between,
)

# Top-level Messages fields the internal form carries; any other the client set is named as dropped.
MAPPED = frozenset(
    {
        "model",
        "messages",
        "system",
        "max_tokens",
        "stop_sequences",
        "temperature",
        "top_p",
        "stream",
        "tools",
        "tool_choice",
        "metadata",
        "thinking",
        "output_config",
    }
)
OUTPUT_CONFIG_MAPPED = frozenset({"effort", "format"})
# Anthropic's `service_tier` values: any other is Anthropic's 400, and so the gateway's whichever deployment serves
# the request (a translation leaves the tier out, which would serve what Anthropic refuses).
MESSAGES_TIERS = ("auto", "standard_only")
TOOL_MAPPED = frozenset({"cache_control", "strict"})


Blocks = str | list[dict[str, Any]]


class AnthropicMessage(BaseModel):
    model_config = REQUEST

    # `system` is not Anthropic's own, but current Claude Code sends it for models it does not know.
    role: Literal["user", "assistant", "system"]
    content: Blocks


class AnthropicTool(BaseModel):
    """A client tool (`input_schema`), or a server tool (`type` such as `web_search_20250305`; an MCP connector's
    `mcp_toolset`, which has no `name`)."""

    model_config = REQUEST

    name: str | None = Field(default=None, min_length=1)
    type: str | None = None
    description: str | None = None
    input_schema: dict[str, Any] | None = None


class AnthropicToolChoice(BaseModel):
    model_config = REQUEST

    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class AnthropicThinking(BaseModel):
    model_config = REQUEST

    type: Literal["enabled", "adaptive", "disabled"]
    budget_tokens: int | None = Field(default=None, ge=0)


class OutputConfig(BaseModel):
    model_config = REQUEST

    effort: str | None = None
    format: dict[str, Any] | None = None


class MessagesCountRequest(BaseModel):
    """An Anthropic `count_tokens` request body: a Messages request without `max_tokens`."""

    model_config = REQUEST

    model: str = Field(min_length=1)
    messages: list[AnthropicMessage] = Field(min_length=1)
    system: Blocks | None = None
    tools: list[AnthropicTool] | None = None
    tool_choice: AnthropicToolChoice | None = None
    thinking: AnthropicThinking | None = None
    output_config: OutputConfig | None = None


class MessagesRequest(MessagesCountRequest):
    """An Anthropic Messages API request body."""

    max_tokens: int = Field(ge=1)
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stream: bool | None = None
    metadata: dict[str, Any] | None = None


def end_user(user_id: str) -> str:
    """The end user a Messages request's `metadata.user_id` names. Claude Code's is a JSON object written as a string,
    `{"device_id": ..., "account_uuid": ..., "session_id": ...}`: kept whole, it would make each session a user of its
    own (the ledger's `user`, `/v1/usage?group_by=user`), and go to OpenAI as `user`, past the 64 characters its
    docs allow a `safety_identifier`. The user is its account where it has one, else its device (a 64-character
    hash); the session is the ledger's `session` already, from Claude Code's `x-claude-code-session-id`. Any other
    `user_id` is the user as written."""
    if not user_id.startswith("{"):
        return user_id
    try:
        named = orjson.loads(user_id)
    except orjson.JSONDecodeError:
        return user_id
    if not isinstance(named, dict):
        return user_id
    for field in ("account_uuid", "device_id"):
        who = named.get(field)
        if isinstance(who, str) and who:
            return who
    return user_id


def sent_fields(model: BaseModel) -> set[str]:
    return set(model.model_fields_set | set(model.model_extra or {}))


def _marked(part: dict[str, Any], block: dict[str, Any]) -> dict[str, Any]:
    """`part` with the block's cache marker, if it had one."""
    if isinstance(block.get("cache_control"), dict):
        part["cache_control"] = block["cache_control"]
    return part


def _text_of(blocks: object, where: str) -> str:
    """The text of a string or of a list of content blocks (`where` names it in the 400 for anything else)."""
    if blocks is None:
        return ""
    if isinstance(blocks, str):
        return blocks
    return "".join(str(b.get("text", "")) for b in _block_list(blocks, where) if b.get("type") == "text")


def _block_list(blocks: object, where: str) -> list[dict[str, Any]]:
    """`blocks` if it is a list of content blocks (objects); else the client's 400, as Anthropic answers."""
    if not isinstance(blocks, list) or not all(isinstance(b, dict) for b in blocks):
        raise InvalidRequestError(f"{where} must be a string or a list of content blocks", param=where)
    return blocks


def _source(block: dict[str, Any]) -> dict[str, Any]:
    """An image's or a document's `source`, which must be an object."""
    source = block.get("source")
    if not isinstance(source, dict):
        kind = block.get("type")
        raise InvalidRequestError(f"a {kind} block's source must be an object", param=f"messages.{kind}.source")
    return source


class Translation:
    """One Messages request on its way to the internal form; `dropped` collects what does not survive."""

    def __init__(self) -> None:
        self.dropped: list[str] = []
        # The assistant turns whose search results carry sealed parts of Gemini 3's search: each turn's place among
        # the internal messages, its seals, and the search blocks to name if none opens (`open_search_context`).
        self.sealed: list[tuple[int, list[str], list[str]]] = []

    def drop(self, name: str) -> None:
        if name not in self.dropped:
            self.dropped.append(name)

    # --- content ----------------------------------------------------------------------------

    def _image(self, block: dict[str, Any]) -> dict[str, Any] | None:
        source = _source(block)
        if source.get("type") == "base64":
            url = f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
        elif source.get("type") == "url":
            url = str(source.get("url", ""))
        else:
            self.drop(f"messages.image.{source.get('type')}")  # a `file` source names an Anthropic upload
            return None
        return _marked({"type": "image_url", "image_url": {"url": url}}, block)

    def _document(self, block: dict[str, Any]) -> list[dict[str, Any]]:
        """A document as a `file` part (base64) or a `text` part (a text or content source), its `title`,
        `context` and `citations` kept on the part (`params.DOCUMENT`) for the adapter to send or name."""
        source = _source(block)
        kind = source.get("type")
        if kind == "base64":
            media_type = source.get("media_type", "application/pdf")
            file = {"file_data": f"data:{media_type};base64,{source.get('data', '')}"}
            if block.get("title"):
                file["filename"] = str(block["title"])
            part: dict[str, Any] = {"type": "file", "file": file}
        elif kind == "text":
            part = {"type": "text", "text": str(source.get("data", ""))}
        elif kind == "content" and isinstance(source.get("content"), list):
            part = {"type": "text", "text": _text_of(source["content"], "messages.document.source.content")}
        else:
            self.drop(f"messages.document.{kind}")  # a URL or an Anthropic upload only Anthropic can fetch
            return []
        document = {name: block[name] for name in DOCUMENT_FIELDS if block.get(name) is not None}
        if document:
            part[DOCUMENT] = document
        return [_marked(part, block)]

    def user_parts(self, blocks: list[dict[str, Any]], messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A user turn's content parts; its tool results become tool messages appended to `messages`."""
        parts: list[dict[str, Any]] = []
        for block in blocks:
            kind = block.get("type")
            if kind == "tool_result":
                messages.append(self._tool_result(block))
            elif kind == "text":
                parts.append(_marked({"type": "text", "text": str(block.get("text", ""))}, block))
            elif kind == "image":
                image = self._image(block)
                if image is not None:
                    parts.append(image)
            elif kind == "document":
                parts.extend(self._document(block))
            else:
                self.drop(f"messages.{kind}")
        return parts

    def _tool_result(self, block: dict[str, Any]) -> dict[str, Any]:
        """A tool result as a tool message: its text, or its parts when it holds more than text (an image a tool
        read, a screenshot), which the deployment's adapter sends where its API takes them (Bedrock's tool
        result does) and names where it cannot."""
        content = block.get("content")
        message: dict[str, Any] = {"role": "tool", "tool_call_id": str(block.get("tool_use_id", ""))}
        error = TOOL_ERROR_MARK if block.get("is_error") else ""
        if error:
            message["is_error"] = True  # (for a provider that takes it: Converse's `status`)
        blocks = _block_list(content, "messages.tool_result.content") if isinstance(content, list) else []
        # The result's cache marker (its own, else the last of its content's: Anthropic takes one on either) goes
        # on the message's last part, which Bedrock follows with a cache point.
        marked = next((b for b in (block, *reversed(blocks)) if isinstance(b.get("cache_control"), dict)), block)
        if any(b.get("type") != "text" for b in blocks):
            parts = [{"type": "text", "text": error}] if error else []
            for item in blocks:
                kind = item.get("type")
                if kind == "text":
                    parts.append({"type": "text", "text": str(item.get("text", ""))})
                elif kind == "image":
                    image = self._image(item)
                    parts += [image] if image is not None else []
                elif kind == "document":
                    parts += self._document(item)
                else:
                    self.drop(f"messages.tool_result.{kind}")
            message["content"] = [*parts[:-1], _marked(parts[-1], marked)] if parts else ""
            return message
        text = error + _text_of(content, "messages.tool_result.content")
        marker = marked.get("cache_control")
        message["content"] = [_marked({"type": "text", "text": text}, marked)] if isinstance(marker, dict) else text
        return message

    def assistant(self, blocks: list[dict[str, Any]], at: int = 0) -> dict[str, Any]:
        """An assistant turn as the internal message (the `at`th); the seals of Gemini 3's search parts its search
        results carry (`search_blocks`' `carried`) are kept in `sealed`, for `open_search_context`."""
        texts: list[dict[str, Any]] = []
        calls: list[dict[str, Any]] = []
        thinking: list[dict[str, Any]] = []
        order: BlockOrder = []  # (the blocks' places, kept where Claude thought between its calls)
        searched: list[str] = []  # (the turn's web search blocks: `SEARCH_BLOCKS`)
        sealed: list[str] = []
        for block in blocks:
            kind = block.get("type")
            if kind == "text":
                texts.append(_marked({"type": "text", "text": str(block.get("text", ""))}, block))
                if texts[-1]["text"]:
                    order.append(("text", len(texts[-1]["text"])))
            elif kind == "tool_use":
                arguments = orjson.dumps(block.get("input") or {}).decode()
                function = {"name": block.get("name"), "arguments": arguments}
                calls.append({"id": str(block.get("id", "")), "type": "function", "function": function})
                order.append(("call", len(calls) - 1))
            elif kind in ("thinking", "redacted_thinking"):
                thinking.append(block)
                order.append(("thinking", len(thinking) - 1))
            elif kind in SEARCH_BLOCKS and (kind != "server_tool_use" or block.get("name") == SEARCH_NAME):
                searched.append(str(kind))
                sealed += sealed_results(block)
            else:
                self.drop(f"messages.{kind}")  # other server tools' use and results: Anthropic's own tools
        # (What a search found is in no text of its turn: named, unless the parts of it sealed in its results bring it
        # back, as a Responses turn's do: `open_search_context` names it where none opens.)
        alone = list(dict.fromkeys(searched)) if not any(part["text"] for part in texts) else []
        if sealed:
            self.sealed.append((at, sealed, alone))
        for kind in alone if not sealed else ():
            self.drop(f"messages.{kind}")
        message: dict[str, Any] = {"role": "assistant"}
        if any("cache_control" in part for part in texts):
            message["content"] = texts
        else:
            message["content"] = "".join(part["text"] for part in texts) or None
            if thinking and thinks_between(order):  # a translated Claude (Bedrock's) gets the blocks in place
                message["block_order"] = order
        if calls:
            message["tool_calls"] = calls
        if thinking:
            message["thinking_blocks"] = thinking
            reasoning = "".join(str(b.get("thinking", "")) for b in thinking if b.get("type") == "thinking")
            if reasoning:
                message["reasoning_content"] = reasoning
        return message

    def opened(self, chat: ChatRequest, seal: ReasoningSeal | None) -> tuple[ChatRequest, list[str]]:
        """`chat`, this translation's request, with the parts of Gemini 3's searches its history carries sealed opened
        with `seal` where there are any (`open_search_context`), and the Messages fields it cannot carry."""
        if self.sealed:
            self.open_search_context(chat, seal)
        return chat, self.dropped

    def open_search_context(self, chat: ChatRequest, seal: ReasoningSeal | None) -> None:
        """Give each assistant turn of `chat` whose search results carry Gemini 3's own parts of its search, sealed
        (`sealed`), those parts (`TOOL_CONTEXT`, as a Responses reasoning item's seal or a Chat client's message
        brings them): the Gemini adapter sends them to Gemini 3 ahead of the turn's text and calls, and no other
        model gets them. A seal that does not open (altered, or another gateway's) is left out and named, as a
        Responses reasoning item's is (`UNREADABLE_SEARCH`), and so is then a search its turn has no text for (as
        every such search is without a `seal` to open them with)."""
        for position, tokens, alone in self.sealed:
            parts: list[Any] = []
            for payload in [seal.open(token) for token in tokens] if seal is not None else []:
                fields = payload.get("fields") if payload is not None else None
                if payload is None:
                    self.drop(UNREADABLE_SEARCH)
                elif isinstance(fields, dict) and isinstance(fields.get(TOOL_CONTEXT), list):
                    parts += fields[TOOL_CONTEXT]
            if parts:
                chat.messages[position].reasoning_tool_context = parts
            for kind in alone if not parts else ():
                self.drop(f"messages.{kind}")

    def system(self, content: Blocks) -> dict[str, Any]:
        if isinstance(content, str):
            return {"role": "system", "content": content}
        parts = []
        for block in content:
            if block.get("type") == "text":
                parts.append(_marked({"type": "text", "text": str(block.get("text", ""))}, block))
            else:
                self.drop(f"system.{block.get('type')}")
        return {"role": "system", "content": parts}

    # --- request ----------------------------------------------------------------------------

    def messages(self, req: MessagesCountRequest) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        if req.system:
            messages.append(self.system(req.system))
        last_user = max((i for i, m in enumerate(req.messages) if m.role == "user"), default=-1)
        for i, message in enumerate(req.messages):
            if message.role == "system":
                # A `clear_at: next_user_message` instruction stops applying once a user turn follows it.
                cleared = (message.model_extra or {}).get("clear_at") == "next_user_message" and i < last_user
                if not cleared:
                    messages.append(self.system(message.content))
                continue
            blocks = (
                [{"type": "text", "text": message.content}] if isinstance(message.content, str) else message.content
            )
            if message.role == "assistant":
                messages.append(self.assistant(blocks, len(messages)))
                continue
            parts = self.user_parts(blocks, messages)
            if parts:
                messages.append({"role": "user", "content": parts})
        return messages

    def tools(self, tools: list[AnthropicTool]) -> list[dict[str, Any]]:
        translated = []
        for i, tool in enumerate(tools):
            if tool.name is None and tool.type in (None, "custom"):
                raise InvalidRequestError(f"tools.{i}.name: a custom tool needs a name", param=f"tools.{i}.name")
            if tool.input_schema is None or tool.type not in (None, "custom"):
                self.drop(f"tools.{tool.type or tool.name}")  # a server tool only Anthropic runs
                continue
            function: dict[str, Any] = {"name": tool.name, "parameters": tool.input_schema}
            if tool.description:
                function["description"] = tool.description
            entry: dict[str, Any] = {"type": "function", "function": function}
            extra = tool.model_extra or {}
            if isinstance(extra.get("cache_control"), dict):
                entry["cache_control"] = extra["cache_control"]
            if isinstance(extra.get("strict"), bool):
                function["strict"] = extra["strict"]
            for name in sorted(set(extra) - TOOL_MAPPED):
                self.drop(f"tools.{name}")  # `defer_loading`, `input_examples`, ...: Anthropic's tool features
            translated.append(entry)
        return translated

    def reasoning(self, req: MessagesCountRequest, body: dict[str, Any]) -> None:
        output = req.output_config
        effort = output.effort if output is not None else None
        if req.thinking is not None:
            thinking = req.thinking.model_dump(exclude_none=True)
            if effort:
                thinking["effort"] = effort
            body["thinking"] = thinking
        elif effort:
            body["thinking"] = EffortAlone(type="adaptive", effort=effort)
        if output is None:
            return
        for name in sorted(sent_fields(output) - OUTPUT_CONFIG_MAPPED):
            self.drop(f"output_config.{name}")
        fmt = output.format
        if fmt is not None:
            if fmt.get("type") == "json_schema" and isinstance(fmt.get("schema"), dict):
                spec = {"name": "response", "schema": fmt["schema"], "strict": True}
                body["response_format"] = {"type": "json_schema", "json_schema": spec}
            else:
                self.drop("output_config.format")

    def request(self, req: MessagesCountRequest) -> ChatRequest:
        self.dropped.extend(sorted(sent_fields(req) - MAPPED))
        body: dict[str, Any] = {"model": req.model, "messages": self.messages(req)}
        if not body["messages"]:
            left_out = ", ".join(name.removeprefix("messages.") for name in self.dropped if name[:9] == "messages.")
            raise InvalidRequestError(
                f"messages: no content this model can take (unsupported content blocks: {left_out or 'none'})",
                param="messages",
            )
        if isinstance(req, MessagesRequest):
            tier = (req.model_extra or {}).get("service_tier")
            if tier is not None and tier not in MESSAGES_TIERS:
                raise InvalidRequestError(
                    "service_tier: Input should be 'auto' or 'standard_only'", param="service_tier"
                )
            body["max_tokens"] = req.max_tokens
            if req.stop_sequences:
                body["stop"] = req.stop_sequences
            for name in ("temperature", "top_p"):
                if getattr(req, name) is not None:
                    body[name] = getattr(req, name)
            if req.stream:
                body["stream"] = True
            if req.metadata and req.metadata.get("user_id"):
                body["user"] = end_user(str(req.metadata["user_id"]))
        if req.tools:
            tools = self.tools(req.tools)
            if tools:
                body["tools"] = tools
        if req.tool_choice is not None and "tools" in body:
            choice = req.tool_choice
            if choice.type == "tool":
                if not choice.name:
                    raise InvalidRequestError("tool_choice.name is required when type is 'tool'", param="tool_choice")
                body["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
            else:
                body["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[choice.type]
            if choice.disable_parallel_tool_use:
                body["parallel_tool_calls"] = False
        self.reasoning(req, body)
        prefill = prefill_of(body["messages"][-1]) if req.messages[-1].role == "assistant" else None
        searches = any(str(tool.type or "").startswith(SEARCH_TOOLS) for tool in req.tools or ())
        try:
            if prefill or searches:
                return MessagesChatRequest.continuing(prefill, body)
            return ChatRequest.model_validate(body)
        except ValueError as exc:
            raise InvalidRequestError(f"the request cannot be translated: {exc}") from None


def prefill_of(message: dict[str, Any]) -> str | None:
    """The text a final assistant turn (translated) prefills the answer with; None for one that called a tool (no
    prefill: Anthropic wants the tool's result next) or has no text."""
    if message["role"] != "assistant" or message.get("tool_calls"):
        return None
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(str(part.get("text", "")) for part in content if part.get("type") == "text")
    return content or None


class MessagesChatRequest(SearchOffered, ChatRequest):
    """The internal request of a Messages request whose final assistant turn prefills the answer (`prefill`), or that
    offers Anthropic's web search tool (`web_search`, set once the search is priced: `carried_search`). A class of its
    own, as `ResponsesChatRequest` is: a private attribute of `ChatRequest` would cost every Chat Completions request's
    validation, and none has one."""

    _prefill: str | None = PrivateAttr(default=None)
    _search: WebSearch | None = PrivateAttr(default=None)

    @classmethod
    def continuing(cls, prefill: str | None, body: dict[str, Any]) -> MessagesChatRequest:
        chat = cls.model_validate(body)
        chat._prefill = prefill
        return chat

    @property
    def prefill(self) -> str | None:
        return self._prefill


# A search result's seal that did not open (altered, or another gateway's): left out and named, as a Responses
# reasoning item's is (`input[reasoning].encrypted_content`).
UNREADABLE_SEARCH = "messages.web_search_tool_result.encrypted_content"
# Anthropic's web search tool, by its type's prefix (`web_search_20250305`, `web_search_20260209`, ...).
SEARCH_TOOLS = "web_search_"
# The blocks of a web search in an assistant turn sent back (Claude's, or those a translation made of Gemini's
# grounding: `messages_out.search_blocks`): its `server_tool_use` and its `web_search_tool_result`. A translation
# leaves them out: their results are the search's own (Claude's sealed in `encrypted_content`, Gemini's pages by URL
# alone), and the text of their turn carries what the search found, its pages there as citations; Gemini 3's own parts
# of the search, sealed in a result, go back with the turn (`Translation.open_search_context`). Left out unnamed
# where the turn has text or brings those parts back (naming them would mark every later turn of the conversation, a
# 400 under `x-gateway-strict`), named where it has neither, as a Responses request's `web_search_call` is.
SEARCH_BLOCKS = ("server_tool_use", "web_search_tool_result")


def forbids_tools(choice: Any) -> bool:
    """Whether a Messages request's `tool_choice` is `none`, which forbids every tool, Anthropic's server tools too."""
    return isinstance(choice, dict) and choice.get("type") == "none"


def carried_search(req: ChatRequest, data: dict[str, Any], dropped: list[str]) -> list[str]:
    """Anthropic's web search tool of a Messages request (`data`, its body, once `server_tools` kept the tool: priced,
    its `max_uses` set) for its translation `req`: the search, which a provider with a search of its own runs as that
    search (Gemini's `google_search`: `ProviderAdapter.hosts_search`), its limit the tool's `max_uses`, its location and
    sites as that search takes them (the rest named: `WebSearch.unhonoured`). The tool's name then leaves what the
    translation names dropped (`dropped`, returned): a deployment that runs no search names it (`WebSearch.unsent`). A
    `tool_choice` of `none` forbids it, as Anthropic's does: then it goes to none. Left out (unpriced), it went with
    the translation's name for it."""
    tools = data.get("tools")
    kept = tools if isinstance(tools, list) else []
    searches = [t for t in kept if isinstance(t, dict) and str(t.get("type") or "").startswith(SEARCH_TOOLS)]
    if not searches or not isinstance(req, MessagesChatRequest) or forbids_tools(data.get("tool_choice")):
        return dropped
    param = f"tools.{searches[0]['type']}"
    most = sum(tool["max_uses"] for tool in searches)
    req.web_search = WebSearch.of_tool(searches[0], param)._replace(most=most)
    return [name for name in dropped if name not in {f"tools.{tool['type']}" for tool in searches}]


class EffortAlone(ThinkingConfig):
    """The internal `thinking` of a Messages request that sent `output_config.effort` without `thinking`: the wish
    the translation takes it for (adaptive thinking at that effort), but no `thinking` of the client's. A provider that
    cannot honour it names the effort (`output_config.effort`), not `thinking`, which the client never wrote."""

    @property
    def sent(self) -> bool:
        return False


def to_chat_request(req: MessagesCountRequest, seal: ReasoningSeal | None = None) -> tuple[ChatRequest, list[str]]:
    """The internal request for a Messages one, and the Messages fields it cannot carry; the sealed parts of Gemini 3's
    searches its history carries opened with `seal` (`Translation.open_search_context`)."""
    translation = Translation()
    return translation.opened(translation.request(req), seal)


def sealed_results(block: dict[str, Any]) -> list[str]:
    """The seals a search result block carries (`messages_out.search_blocks`' `carried`), by the seal's prefix: any
    other `encrypted_content` is Anthropic's (a page sealed for Claude), or empty."""
    if block.get("type") != "web_search_tool_result" or not isinstance(block.get("content"), list):
        return []
    return [
        result["encrypted_content"]
        for result in block["content"]
        if isinstance(result, dict)
        and isinstance(result.get("encrypted_content"), str)
        and result["encrypted_content"].startswith(ReasoningSeal.PREFIXES)
    ]


# --- the client's betas -----------------------------------------------------------------------------

# What a beta turns on, for `lost_betas`: a beta family (its name less its date) whose feature is a field, tool or
# block of the request, by the names the translation gives it when it leaves it out (`Translation.dropped`), or one
# that changes how Claude answers the request as it stands (a predicate on the client's body).
LeftOut = Callable[[Mapping[str, Any], Sequence[str]], bool]


def _left_out(*prefixes: str) -> LeftOut:
    return lambda body, untranslated: any(name.startswith(prefixes) for name in untranslated)


def _thinks(body: Mapping[str, Any], untranslated: Sequence[str]) -> bool:
    thinking = body.get("thinking")
    return isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")


BETA_FEATURES: Mapping[str, LeftOut] = {
    "context-management": _left_out("context_management", "tools.memory_"),
    "compact": _left_out("context_management"),
    "mcp-client": _left_out("mcp_servers", "tools.mcp_toolset"),
    "files-api": _left_out("messages.image.file", "messages.document.file", "messages.container_upload"),
    "code-execution": _left_out("tools.code_execution_"),
    "computer-use": _left_out("tools.computer_", "tools.bash_", "tools.text_editor_"),
    "web-fetch": _left_out("tools.web_fetch_"),
    "skills": _left_out("container"),
    "fast-mode": _left_out("speed"),
    "advanced-tool-use": _left_out(
        "tools.tool_search_tool_", "tools.defer_loading", "tools.input_examples", "tools.allowed_callers"
    ),
    "tool-search-tool": _left_out("tools.tool_search_tool_", "tools.defer_loading"),
    "tool-examples": _left_out("tools.input_examples"),
    "advisor-tool": _left_out("tools.advisor_"),
    "search-results": _left_out("messages.search_result", "messages.tool_result.search_result"),
    # A window of a million tokens: the deployment's model has its own, and Claude Code, which asks it of a model it
    # was given as `name[1m]`, keeps a conversation that long before it compacts.
    "context-1m": lambda body, untranslated: True,
    # Claude's thinking in full rather than summarised: another model's reasoning comes back as its API gives it.
    "dev-full-thinking": _thinks,
}
# Betas whose meaning a translation keeps, or that ask nothing of the answer: never named. Claude Code's own
# (`claude-code`, sent with every request) and sign-in (`oauth`); ways of streaming or encoding what is asked
# (`fine-grained-tool-streaming`, `token-efficient-tools`); caching, which the translation leaves to the provider
# without notice, as it does `cache_control`; room for a longer answer (`output-128k`, `max-tokens-3-5-sonnet`),
# which the gateway fits to the deployment's model whatever the client asked; thinking between tool calls
# (`interleaved-thinking`), as every model that reasons does at each request, a tool's result included (one that
# does not reason has the thinking itself named); and features carried by the translation (`effort`,
# `structured-outputs`) or out of beta (`token-counting`, `pdfs`, `message-batches`).
BETAS_KEPT = frozenset(
    {
        "claude-code", "oauth", "fine-grained-tool-streaming", "token-efficient-tools", "prompt-caching",
        "prompt-caching-scope", "extended-cache-ttl", "output-128k", "max-tokens-3-5-sonnet", "interleaved-thinking",
        "effort", "structured-outputs", "token-counting", "pdfs", "message-batches",
    }
)  # fmt: skip


def beta_family(beta: str) -> str:
    """A beta's name less its date (`context-1m-2025-08-07`: `context-1m`; `claude-code-20250219`: `claude-code`)."""
    head, _, date = beta.rpartition("-")
    if len(date) == 8 and date.isdigit():
        return head
    parts = beta.rsplit("-", 3)
    if len(parts) == 4 and len(parts[1]) == 4 and all(part.isdigit() for part in parts[1:]):
        return parts[0]
    return beta


def lost_betas(header: str, body: Mapping[str, Any], untranslated: Sequence[str]) -> tuple[str, ...]:
    """The betas of a Messages request's `anthropic-beta` `header` that a translation to another model loses, as
    `x-gateway-dropped-params` names them (`anthropic-beta[NAME]`): each whose feature the request uses
    (`BETA_FEATURES`: on its client's `body`, or what the translation left out of it, `untranslated`), and each the
    gateway does not know (what it turns on cannot be told), but none of `BETAS_KEPT`."""
    lost = []
    for beta in dict.fromkeys(value.strip() for value in header.split(",")):
        used = _beta_test(beta)
        if used is not None and used(body, untranslated):
            lost.append(f"anthropic-beta[{beta}]")
    return tuple(lost)


def _unknown(body: Mapping[str, Any], untranslated: Sequence[str]) -> bool:
    return True  # (what a beta the gateway does not know turns on cannot be told: it is named)


@lru_cache(maxsize=256)
def _beta_test(beta: str) -> LeftOut | None:
    """How to tell whether a translation loses `beta`: its family's test (`BETA_FEATURES`, `_unknown`), None for one
    never named (`BETAS_KEPT`). Kept per beta: Claude Code sends the same few with every request (5.6 µs a request,
    each beta's family worked out again each time, are 2)."""
    family = beta_family(beta)
    if not beta or family in BETAS_KEPT:
        return None
    return BETA_FEATURES[family] if family in BETA_FEATURES else _unknown
