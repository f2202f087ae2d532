"""Declarative parameter tables, interpreted by one function (the Portkey idea).

A provider that differs from OpenAI only in parameter names, ranges or support declares a table of
`Rule`s instead of code branches; `apply_rules` turns an OpenAI-form body into the provider's and
returns the names it could not honour, for `x-gateway-dropped-params`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

import orjson
from pydantic import BaseModel

from handler.errors import InvalidRequestError
from handler.records import Value
from handler.schemas import DOCUMENT, DOCUMENT_FIELDS, ChatRequest, ResponseFormat, Tool, ToolChoice, allowed_names


class Rule(Value):
    """What to do with one top-level parameter.

    `rename` moves it to another name; `drop` removes it (reported); `clamp` bounds a number
    (reported when it changed the value); `values` maps enum values (an unmapped value is kept);
    `only` keeps it only when its value is one of these (otherwise dropped and reported); `max_items`
    refuses a list of more items (`at_most`).
    """

    __slots__ = ("rename", "drop", "clamp", "values", "only", "max_items")

    def __init__(
        self,
        rename: str | None = None,
        drop: bool = False,
        clamp: tuple[float, float] | None = None,
        values: Mapping[str, Any] | None = None,
        only: tuple[Any, ...] | None = None,
        max_items: int | None = None,
    ) -> None:
        self.rename: Final = rename
        self.drop: Final = drop
        self.clamp: Final = clamp
        self.values: Final = values
        self.only: Final = only
        self.max_items: Final = max_items


# Parameters sent at the API's own default (`false`, a penalty of 0, no biases): a client that sends it asks for
# nothing a provider without the parameter fails to honour, so it is not named as dropped (nor refused under
# `x-gateway-strict`).
DEFAULTS = {"logprobs": False, "store": False, "presence_penalty": 0, "frequency_penalty": 0, "logit_bias": {}}


def token_count_problem(value: Any) -> str | None:
    """What is wrong with a config option that is a number of tokens (`max_output_tokens`): None for a whole
    number of 1 or more (`4096`, or `"4096"`, as `int` reads it)."""
    try:
        whole = not isinstance(value, bool) and int(value) == float(value) and int(value) >= 1
    except (TypeError, ValueError, OverflowError):
        whole = False
    return None if whole else f"'{value}' is not a number of tokens (a whole number, 1 or more)"


def asks(name: str, value: Any) -> bool:
    """Whether a parameter's value asks for anything: not null, nor the API's default (`DEFAULTS`)."""
    if value is None:
        return False
    if name not in DEFAULTS:
        return True
    default = DEFAULTS[name]
    if isinstance(default, bool):
        return value is not default  # (only `false` itself: a 0 is no flag)
    return bool(value != default)  # (0.0 is 0)


def apply_rules(
    body: dict[str, Any], rules: Mapping[str, Rule], defaults: Mapping[str, Any] | None = None
) -> list[str]:
    """Rewrite `body` in place by `rules`; fill `defaults` for absent keys; return what was not honoured."""
    dropped: list[str] = []
    for name, rule in rules.items():
        if name not in body:
            continue
        value = body.pop(name)
        if rule.drop or (rule.only is not None and value not in rule.only):
            if asks(name, value):
                dropped.append(name)
            continue
        if rule.clamp is not None and isinstance(value, int | float) and not isinstance(value, bool):
            low, high = rule.clamp
            bounded = min(max(value, low), high)
            if bounded != value:
                dropped.append(name)
            value = bounded
        if rule.max_items is not None and isinstance(value, list):
            at_most(name, value, rule.max_items)
        if rule.values is not None and isinstance(value, str):
            value = rule.values.get(value, value)
        body[rule.rename or name] = value
    for name, value in (defaults or {}).items():
        body.setdefault(name, value)
    return dropped


def sent_by(rules: Mapping[str, Rule], name: str) -> bool:
    """Whether the member `name` goes to the provider under `rules` (`apply_rules` leaves it out where its rule
    drops it): asked before a request is built, of what it will carry."""
    rule = rules.get(name)
    return rule is None or not rule.drop


def at_most(name: str, items: list[Any], most: int) -> None:
    """Refuse a list longer than the provider takes, as the client's 400 in OpenAI's words (OpenAI refuses a fifth
    stop sequence so). Not cut and named: a cut list asks for another answer (one that runs on past a stop
    sequence the client set), which a header read after it came does not undo."""
    if len(items) > most:
        raise InvalidRequestError(
            f"Invalid '{name}': array too long. Expected an array with maximum length {most}, but got an array with "
            f"length {len(items)} instead.",
            param=name,
        )


def require_turns(turns: list[Any], provider: str) -> None:
    """Refuse, as the client's 400, a conversation that left nothing this provider can be sent (only system
    messages, or only empty or unsendable content): the provider would refuse it with a vaguer error."""
    if not turns:
        raise InvalidRequestError(
            f"{provider} needs at least one user or assistant message with content it can take; this request has none",
            param="messages",
        )


def named_messages(messages: list[Any]) -> list[str]:
    """`["messages.name"]` when a message other than a tool result names its author: a provider with no
    such field reports it dropped rather than losing it without a word."""
    named = any(m.name for m in messages if m.role not in ("tool", "function"))
    return ["messages.name"] if named else []


# A deployment's `prompt_caching` option (`CACHING`): when a translated request to Claude gets the gateway's own cache
# breakpoints (`adapters.providers.prompt_cache`, which places them): `auto`, on the client's `prompt_cache_key`;
# `always`, on every translated request; `never`. Read here, for every request and every config check: the module
# that places them is imported with the first request that asks (a Lambda cold start imports none of it).
CACHING = "prompt_caching"
CACHING_SETTINGS = ("auto", "always", "never")


def caching_problem(value: Any) -> str | None:
    """What is wrong with a configured `prompt_caching`: None for one of `CACHING_SETTINGS` (`never`, not `off`, which
    YAML reads as false)."""
    return None if value in CACHING_SETTINGS else f"one of {', '.join(CACHING_SETTINGS)}, not {str(value)[:60]}"


def caching_wanted(req: ChatRequest, target_options: Mapping[str, Any], provider_options: Mapping[str, Any]) -> bool:
    """Whether `req` gets cache breakpoints under its deployment's `prompt_caching` (a deployment's wins over its
    provider's; `auto` unless set)."""
    configured = target_options.get(CACHING) or provider_options.get(CACHING) or "auto"
    if configured == "auto":
        return (req.model_extra or {}).get("prompt_cache_key") is not None
    return configured == "always"


def cache_control(part: BaseModel) -> dict[str, Any] | None:
    """A content part's prompt-cache marker (`{"type": "ephemeral"}`, perhaps with a `ttl`), the convention
    Chat Completions clients share with Anthropic's blocks; None when the part has none."""
    marker = (part.model_extra or {}).get("cache_control")
    return marker if isinstance(marker, dict) else None


def document_fields(part: BaseModel) -> dict[str, Any]:
    """A content part's Messages document fields (`DOCUMENT`): those that ask for something, none when it has
    none (a title or context that is not an empty string, citations that are `enabled`)."""
    document = (part.model_extra or {}).get(DOCUMENT)
    if not isinstance(document, dict):
        return {}
    asked: dict[str, Any] = {}
    for name in DOCUMENT_FIELDS:
        value = document.get(name)
        if name == "citations":
            if isinstance(value, dict) and value.get("enabled") is True:
                asked[name] = {"enabled": True}
        elif isinstance(value, str) and value:
            asked[name] = value
    return asked


# Gemini's documented stand-in for a function call whose thought signature was never seen (a history from another
# model, or a signature lost): Gemini 3 refuses a step's first call without one. Sent by the Gemini adapter and to
# Gemini's OpenAI-compatible endpoint (`openai.adapter.signed_calls`).
SKIP_SIGNATURE = "skip_thought_signature_validator"
# Gemini's thought signature of a function call rides in the call's id through clients that know nothing of it
# (an OpenAI `tool_calls[].id`, an Anthropic `tool_use.id`: letters, digits, `_` and `-`), so it goes back
# with the call on the next turn, as Gemini 3 requires. Both ways of reaching Gemini write it so and read it back
# (the Gemini adapter, and the `google` profile of Gemini's OpenAI-compatible endpoint): a conversation that moves
# from one to the other (a fallback, a routing rule, a client that switches deployment) keeps its signatures.
SIGNATURE_MARK = "__gts_"


def signed_call_id(call_id: str, signature: str | None) -> str:
    """`call_id` carrying `signature` (base64) in URL-safe base64, or `call_id` itself when Gemini gave none to
    carry: no signature, an empty one, or padding alone (an id ending in an empty mark would carry nothing)."""
    encoded = (signature or "").replace("+", "-").replace("/", "_").rstrip("=")
    return call_id + SIGNATURE_MARK + encoded if encoded else call_id


def call_signature(call_id: str) -> str | None:
    """The thought signature a call id carries, back in standard base64."""
    _, mark, encoded = call_id.partition(SIGNATURE_MARK)
    if not mark or not encoded:
        return None
    return encoded.replace("-", "+").replace("_", "/") + "=" * (-len(encoded) % 4)


def wire_call_id(call_id: str) -> str:
    """The id a call goes to Gemini with: the client's, without the thought signature it may carry."""
    return call_id.partition(SIGNATURE_MARK)[0]


def returned_media_label(name: str | None, call_id: str | None) -> str:
    """The text heading what a tool returned besides text (an image it read, a screenshot, a document) where the API
    takes that only in the user turn beside the tool's result (Chat Completions, Gemini before 3): it names the call,
    so the model reads the image as that call's and not as something the user sent."""
    call = " ".join(word for word in (name, call_id and f"({call_id})") if word)
    return f"[What the tool call {call} returned besides its text:]" if call else "[What a tool returned:]"


# An image part's `detail` the provider has no equivalent for: "low" asks for a cheaper image (OpenAI's 85 tokens),
# "high" for a finer one; "auto", the default, asks for nothing.
IMAGE_DETAIL = "image_url.detail"


def unsent_part_fields(messages: list[Any], carried: frozenset[str]) -> list[str]:
    """The content-part fields of `messages` that ask for something this provider does not carry (`carried`
    holds `IMAGE_DETAIL` and `document.<field>` names; a `file` part's own `filename` carries a document's title
    wherever `file.filename` is carried), as `x-gateway-dropped-params` names (`messages.image_url.detail`,
    `messages.document.citations`)."""
    dropped: list[str] = []
    for message in messages:
        if not isinstance(message.content, list):
            continue
        for part in message.content:
            if part.type == "image_url":
                if part.image_url.get("detail") in ("low", "high") and IMAGE_DETAIL not in carried:
                    dropped.append("messages." + IMAGE_DETAIL)
                continue
            if not part.model_extra:
                continue
            for name in document_fields(part):
                field = f"document.{name}"
                titled = name == "title" and part.type == "file" and "file.filename" in carried
                if field not in carried and not titled:
                    dropped.append("messages." + field)
    return list(dict.fromkeys(dropped))


JSON_SCHEMA_INSTRUCTION = "Answer in JSON: one JSON object, nothing before or after it, following this JSON Schema: "


# The name `x-gateway-dropped-params` gives a `json_schema` response format's `strict: true` where the provider or
# model cannot constrain its answer to the schema (as `tools.strict` names a strict tool's).
STRICT_SCHEMA = "response_format.json_schema.strict"


def strict_schema(fmt: ResponseFormat | None) -> bool:
    """Whether a request's `response_format` asks for a `json_schema` answer with `strict: true`: an answer that
    always fits the schema, which a provider honours only by constraining its output to it."""
    spec = fmt.json_schema if fmt is not None and fmt.type == "json_schema" else None
    return spec is not None and spec.strict is True


def json_schema_instruction(schema: Any) -> str:
    """The system instruction that serves a `json_schema` response format where the provider or model has no
    structured output to send it as: the schema in the prompt (the gateway's `enforce_schema` checks the answer
    where the client asks it)."""
    return JSON_SCHEMA_INSTRUCTION + orjson.dumps(schema or {"type": "object"}).decode()


THINKING_BLOCKS = "thinking_blocks"
# Each `thinking_blocks` entry's position among the answer's thinking blocks, whole or streamed: the OpenAI SDK's
# stream helper merges list deltas by it (an entry without one is a `RuntimeError`). No Claude block has it: it is
# dropped where the blocks are read back (`thinking_blocks`, the Messages front-end).
THINKING_INDEX = "index"


def signed_thinking(text: str, signature: str, index: int) -> dict[str, Any]:
    """A thinking block of Claude's, with the signature that lets it go back on the next turn; `index` its
    position among the answer's thinking blocks (`THINKING_INDEX`)."""
    return {"type": "thinking", "thinking": text, "signature": signature, THINKING_INDEX: index}


def redacted_thinking(data: str, index: int) -> dict[str, Any]:
    """A thinking block Claude's safety systems encrypted: it goes back as it came; `index` its position among the
    answer's thinking blocks (`THINKING_INDEX`)."""
    return {"type": "redacted_thinking", "data": data, THINKING_INDEX: index}


def claude_signed(block: Mapping[str, Any]) -> bool:
    """Whether a thinking block is Claude's own, as it can go back to Claude: a `thinking` block with its signature,
    or a `redacted_thinking` one with its data. A `thinking` block with an empty signature is another provider's
    reasoning (the Messages front-end answers one so, having no signature to give): Anthropic checks the signature of
    every thinking block of a history, thinking on or off, and refuses it ("Invalid `signature` in `thinking`
    block"), as Bedrock relays."""
    if block.get("type") == "thinking":
        signature = block.get("signature")
        return isinstance(signature, str) and bool(signature)
    return block.get("type") == "redacted_thinking" and bool(block.get("data"))


def unsigned_thinking(block: object) -> bool:
    """Whether a content block is a `thinking` block Claude did not sign (see `claude_signed`)."""
    return isinstance(block, dict) and block.get("type") == "thinking" and not claude_signed(block)


def thinking_blocks(message: BaseModel) -> list[dict[str, Any]]:
    """An assistant turn's thinking blocks signed by Claude (`claude_signed`), as a Messages client sent them, kept
    on the internal message by the Messages front-end so a Claude deployment gets them back unchanged; or as a Chat
    client hands back an answer's, without the `index` the gateway numbered them by (Anthropic refuses a field it
    does not know). An unsigned block is another provider's reasoning, which its text (`reasoning_content`) carries
    where a provider takes it back (`unsent_reasoning`)."""
    blocks = (message.model_extra or {}).get("thinking_blocks")
    if not isinstance(blocks, list):
        return []
    return [
        {k: v for k, v in b.items() if k != THINKING_INDEX} for b in blocks if isinstance(b, dict) and claude_signed(b)
    ]


def unsent_reasoning(messages: list[Any]) -> list[str]:
    """`["messages.reasoning_content"]` when an assistant turn's reasoning comes as text alone (a Chat client's
    `reasoning_content`, a Responses client's reasoning item, a Messages client's thinking block with no signature:
    another provider's reasoning, unsigned), for a provider that takes none back (Anthropic and Bedrock take Claude's
    signed thinking blocks only, Gemini its own signatures): reported dropped rather than lost without a word.
    Claude's blocks beside it carry it; `messages.thinking` when a Chat client's `thinking_blocks` hold only blocks
    Claude did not sign, with no text beside them."""
    dropped: list[str] = []
    for m in messages:
        if m.role != "assistant" or thinking_blocks(m):
            continue
        if m.reasoning_content:
            dropped.append("messages.reasoning_content")
        elif (m.model_extra or {}).get("thinking_blocks"):
            dropped.append("messages.thinking")
    return list(dict.fromkeys(dropped))


def chosen_tools(req: ChatRequest) -> tuple[list[Tool], ToolChoice | None]:
    """The tools a provider without OpenAI's `allowed_tools` choice offers its model, and the choice among them: for
    a choice of `allowed_tools`, the tools it allows alone (the model can call no other) and its mode (`auto`,
    `required`); for any other choice, the request's own. A tool allowed but not offered is the client's 400, as at
    OpenAI."""
    tools = req.tools or []
    choice = req.tool_choice
    allowed = allowed_names(choice)
    if allowed is None or not isinstance(choice, dict):
        return tools, choice
    offered = {tool.function.name for tool in tools}
    for i, name in enumerate(allowed):
        if name not in offered:
            raise InvalidRequestError(
                f"Invalid 'tool_choice.allowed_tools.tools[{i}]': no function named '{name}' in 'tools'.",
                param=f"tool_choice.allowed_tools.tools[{i}]",
            )
    return [tool for tool in tools if tool.function.name in allowed], choice["allowed_tools"]["mode"]


class ToolNames:
    """One request's tool names as its provider takes them (`takes`, the provider's rule for a name): `wire` the
    name to send for a client's, `client` the client's for one the provider answered with. A name the provider
    refuses goes as an alias (`adapters.providers.tool_names`, imported at the first such name); a name it takes
    costs one check."""

    __slots__ = ("_req", "_takes", "_aliases", "_clients")

    def __init__(self, req: ChatRequest, takes: Callable[[str], bool]) -> None:
        self._req = req
        self._takes = takes
        self._aliases: Mapping[str, str] | None = None  # made at the first name the provider refuses
        self._clients: dict[str, str] | None = None

    def wire(self, name: str) -> str:
        """`name` as the provider takes it: itself, or its alias."""
        if self._aliases is None:
            if self._takes(name):
                return name
            from adapters.providers.tool_names import aliases  # (a request with a name the provider refuses)

            self._aliases = aliases(self._req, self._takes)
        return self._aliases.get(name, name)

    def client(self, name: str) -> str:
        """The client's name for a call the provider answered with `name`: the tool whose alias it is, else itself.
        Only a request whose tools' names the provider refuses has aliases its model can call: the rest cost a check
        of each tool's name, made at the answer's first call."""
        if self._clients is None:
            self._clients = {}
            if any(not self._takes(tool.function.name) for tool in self._req.tools or ()):
                from adapters.providers.tool_names import aliases

                self._clients = {wire: given for given, wire in aliases(self._req, self._takes).items()}
        return self._clients.get(name, name) if self._clients else name


def url_citation(url: str, title: str | None, start: int, end: int) -> dict[str, Any]:
    """Chat Completions' annotation of the answer's text `start`..`end` (in characters of the message's content) by
    a page a provider's own search found (OpenAI's search models answer with them; Claude's and Gemini's citations
    are given so)."""
    cited: dict[str, Any] = {"start_index": start, "end_index": end, "url": url}
    if title:
        cited["title"] = title
    return {"type": "url_citation", "url_citation": cited}
