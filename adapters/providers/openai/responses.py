"""OpenAI's Responses API passed through (`/v1/responses` to a deployment that serves it: OpenAI, Azure).

The client's body goes upstream with the deployment's model, its output capped where the key's budget
requires it, and `store: false` unless the operator lets the provider keep answers (the gateway keeps
them itself). The answer's `usage` (in a stream: the terminal event's response) is what is billed.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

from adapters.providers.reasoning import openai_effort
from handler.call_ids import shorten_input_call_ids
from handler.ports import Served
from handler.schemas import CompletionTokensDetails, Usage, reported
from handler.wire import (
    ENCRYPTED_REASONING,
    RESPONSES_TERMINAL,
    UNREADABLE_REASONING,
    StreamEvent,
    event_payload,
    issued_reasoning,
    malformed,
    said_status,
    usage_count,
)

__all__ = ["ResponsesMeter", "aliased_names", "answer_usage", "issued_here", "request_body", "usage_of"]


def usage_of(raw: Any) -> Usage | None:
    """A Responses `usage` object as the gateway's usage (None when there is none, or none of its main counts:
    `reported`; read as 0, `"input_tokens": null` would bill the prompt free). A count that is not a plain integer
    makes the answer malformed (`usage_count`): `int()` would truncate `input_tokens: 10.7` to 10 and bill it as the
    provider's count."""
    if not reported(raw, "input_tokens", "output_tokens"):
        return None
    details = raw.get("input_tokens_details")
    usage = Usage.of(
        usage_count(raw, "input_tokens"),
        usage_count(raw, "output_tokens"),
        cached=usage_count(details, "cached_tokens"),
        cache_write=usage_count(details, "cache_write_tokens"),
    )
    reasoning = usage_count(raw.get("output_tokens_details"), "reasoning_tokens")
    usage.completion_tokens_details = CompletionTokensDetails(reasoning_tokens=reasoning)
    return usage


def request_body(
    client: Mapping[str, Any],
    model: str,
    *,
    stream: bool,
    output_limit: int | None,
    provider_keeps: bool,
    reasons: bool,
    issuer: str = "",
    takes: Callable[[str], bool] | None = None,
    visible: Collection[str] = frozenset(),
) -> tuple[dict[str, Any], list[str]]:
    """The client's body for a deployment: its model, `stream`, the output cap, and `store` only where the
    operator lets the provider keep answers and the client asked for it (`store` defaults to true); and the names
    of what could not go as the client sent it (see `unpersisted`). A call id longer than OpenAI takes goes as its
    stand-in (`call_ids.short_call_id`); a `reasoning.effort` the deployment's model refuses goes as the nearest
    it takes (`reasoning.openai_effort`), named `reasoning.effort`: the client chose the effort for the model it
    named, and the model the plan serves may take other values. Encrypted reasoning the gateway marked with the
    deployment that issued it goes back as issued to that deployment (`issuer`) alone (see `issued_here`). A
    function's name the provider refuses (`takes`: OpenAI's rule) goes as its alias (`aliased_names`), wherever
    the body names it; the relay names the answer's calls back (`handler.api.responses_native.Relay`).

    With `store: false` upstream, a reasoning model's reasoning can go back on a later turn only as its
    `encrypted_content`: `include` asks for it when the gateway keeps the turn (the client's `store`, true by
    default; the gateway holds it beside the stored response, see `handler.api.responses_native.Relay`) or when
    the input hands reasoning back that way. Only for a reasoning model (`reasons`): OpenAI refuses it for others
    (400, "Encrypted content is not supported with this model").

    A provider that stores the request (`provider_keeps`, and the client's `store`) reads an input item sent with its
    id from its account's store, where the answers of every key of the gateway are: only the ids the key may see
    (`visible`) go; the others are left out as with `store: false` (`unpersisted`). Another key's reasoning item sent
    back by id would go as it came, and the turn run on that key's hidden reasoning."""
    body = {**client, "model": model, "stream": stream}
    dropped: list[str] = []
    if isinstance(body.get("input"), list):
        body["input"], dropped = issued_here(shorten_input_call_ids(body["input"]), issuer)
    stored = provider_keeps and client.get("store") is not False
    if isinstance(body.get("input"), list):
        body["input"], unsent = unpersisted(body["input"], visible if stored else ())
        dropped = [*dropped, *unsent]
    if not stored:
        body["store"] = False
        hands_back = isinstance(body.get("input"), list) and any(
            isinstance(i, dict) and i.get("type") == "reasoning" for i in body["input"]
        )
        include = list(body.get("include") or ())
        if (client.get("store") is not False or hands_back) and ENCRYPTED_REASONING not in include and reasons:
            body["include"] = [*include, ENCRYPTED_REASONING]
    if output_limit is not None:
        body["max_output_tokens"] = output_limit
    wish = body.get("reasoning")
    if isinstance(wish, dict) and isinstance(wish.get("effort"), str):
        effort = openai_effort(wish["effort"], model)
        if effort != wish["effort"]:
            body["reasoning"] = {**wish, "effort": effort}
            dropped = [*dropped, "reasoning.effort"]
    made = aliased_names(client, takes) if takes is not None else {}
    if made:
        renamed(body, made)
    return body, dropped


def function_names(body: Mapping[str, Any]) -> list[str]:
    """Every function name a Responses body holds: its function tools', a named `tool_choice`'s (or those an
    `allowed_tools` choice allows), its input's calls'."""
    names = [tool["name"] for tool in _functions(body.get("tools"))]
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        names.append(choice["name"])
    elif isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        names += [tool["name"] for tool in _functions(choice.get("tools"))]
    return names + [item["name"] for item in _functions(body.get("input"), "function_call")]


def _functions(items: Any, kind: str = "function") -> list[dict[str, Any]]:
    """The entries of `items` (a body's tools, its input) of type `kind` that carry a name."""
    if not isinstance(items, list):
        return []
    return [i for i in items if isinstance(i, dict) and i.get("type") == kind and isinstance(i.get("name"), str)]


def aliased_names(body: Mapping[str, Any], takes: Callable[[str], bool]) -> Mapping[str, str]:
    """The alias of each function name of a Responses body the provider refuses (`takes`), by name
    (`tool_names.aliases_of`); none when its tools' names all pass, at the cost of a check of each (as
    `openai.adapter.aliased_functions`)."""
    if all(takes(tool["name"]) for tool in _functions(body.get("tools"))):
        return {}
    from adapters.providers.tool_names import aliases_of  # (a request with a name the provider refuses)

    return aliases_of(function_names(body), takes)


def renamed(body: dict[str, Any], made: Mapping[str, str]) -> None:
    """`body`'s tools, named choice (or the tools an `allowed_tools` choice allows) and input calls by their aliases
    (`made`), in copies: the client's body is
    kept as it came, to be stored."""
    tools = body.get("tools")
    if isinstance(tools, list):
        body["tools"] = [_renamed(tool, made, "function") for tool in tools]
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools" and isinstance(choice.get("tools"), list):
        body["tool_choice"] = {**choice, "tools": [_renamed(tool, made, "function") for tool in choice["tools"]]}
    elif isinstance(choice, dict):
        body["tool_choice"] = _renamed(choice, made, "function")
    items = body.get("input")
    if isinstance(items, list):
        body["input"] = [_renamed(item, made, "function_call") for item in items]


def _renamed(entry: Any, made: Mapping[str, str], kind: str) -> Any:
    if not isinstance(entry, dict) or entry.get("type") != kind or entry.get("name") not in made:
        return entry
    return {**entry, "name": made[entry["name"]]}


def issued_here(items: list[Any], issuer: str) -> tuple[list[Any], list[str]]:
    """Input items for the deployment `issuer` stands for (`Target.issuer`): a reasoning item whose
    `encrypted_content` the gateway marked as that deployment's (`handler.wire.issued`) goes with the blob as the
    provider issued it; one another deployment issued (another organisation's, OpenAI's at an Azure resource) is
    left out, named `input[reasoning].encrypted_content`, as the gateway's own seal is: its provider account alone
    reads it, and this one would refuse the request (400 `invalid_encrypted_content`). The client's items are left
    as they are."""
    kept: list[Any] = []
    dropped: list[str] = []
    for item in items:
        marked = None
        if isinstance(item, dict) and item.get("type") == "reasoning":
            marked = issued_reasoning(item.get("encrypted_content"))
        if marked is None:
            kept.append(item)
        elif marked[0] == issuer:
            kept.append({**item, "encrypted_content": marked[1]})
        else:
            dropped = [UNREADABLE_REASONING]
    return kept, dropped


def unpersisted(items: list[Any], visible: Collection[str] = ()) -> tuple[list[Any], list[str]]:
    """Input items for a request the provider does not store, or stores but must not read another key's items for
    (of its ids, only those in `visible` go: `request_body`). OpenAI looks an item with an `id` up among the items it
    stored, and answers 404 ("Items are not persisted when `store` is set to false") when it kept none: earlier turns'
    output (the gateway's stored conversations, an agent's replayed history) goes without its ids, and a reasoning
    item without its `encrypted_content` (the reasoning itself, which only the provider could look up) is left out,
    named `input[reasoning]`. An `item_reference` goes as it is (the gateway's `/v1/responses` puts the stored item
    in its place before: `handler.api.responses_routes.StoredItems`)."""
    kept: list[Any] = []
    dropped: list[str] = []
    for item in items:
        if not isinstance(item, dict) or item.get("type") == "item_reference" or _seen(item.get("id"), visible):
            kept.append(item)
        elif item.get("type") == "reasoning" and not item.get("encrypted_content"):
            dropped = ["input[reasoning]"]
        else:
            kept.append({name: value for name, value in item.items() if name != "id"} if "id" in item else item)
    return kept, dropped


def _seen(item_id: Any, visible: Collection[str]) -> bool:
    return isinstance(item_id, str) and item_id in visible  # (a client's id may be of any JSON type)


def answer_usage(data: dict[str, Any]) -> Usage | None:
    """The usage of a non-streaming answer (parsed), which must be a Responses API `response`."""
    if data.get("object") != "response":
        raise malformed("upstream answer is not a Responses API response")
    return response_usage(data)


def response_usage(response: dict[str, Any]) -> Usage | None:
    """A response's usage, with the web searches its output shows OpenAI ran (billed per call)."""
    usage = usage_of(response.get("usage"))
    output = response.get("output")
    if usage is not None and isinstance(output, list):
        searches = sum(1 for item in output if isinstance(item, dict) and item.get("type") == "web_search_call")
        if searches:
            usage.set_count("web_searches", searches)
    return usage


class ResponsesMeter:
    """Reads the usage of a Responses stream passed through unchanged: the terminal event's response has
    it. A stream that never got there has none, and is estimated from the deltas' text (`output_chars`).

    A server's failure part way in the shape OpenAI-compatible servers and proxies write it, `{"error": {...}}` with
    no `type` and no event name (Chat Completions' in-stream error, which the openai SDK raises as the stream's end)
    is the stream's error, raised as the Chat Completions parser raises it (`OpenAIStreamParser.feed`): the client
    gets the gateway's `error` and `response.failed` in words redacted as an error answer's, where it got the
    server's event as it came (the key it quoted back, less only its whole form); before the stream's first event,
    the next deployment is tried. OpenAI's own `error` event (typed) is the Responses API's and goes on, redacted
    (`handler.api.responses_native.relayed_events`), once the stream began; as its first event, it is the stream's
    error too, and the next deployment is tried (relayed, it would begin the client's stream with the failure, nothing
    else tried). Either is read at the status its code or type names (`said_status`: a `rate_limit_exceeded` a 429,
    an `insufficient_quota` the deployment's refusal), as an error answer's status is read, not as a 500 whatever it
    says."""

    def __init__(self) -> None:
        self.usage: Usage | None = None
        self.output_chars = 0
        self.final = False
        self.searches = 0  # `web_search_call` items added so far: billed even if the stream is cut
        self.advised = 0  # (the advisor tool is Anthropic's Messages API's)
        self.answer_id: str | None = None  # (no request continues a response by its id the way a thread does)
        self.served: Served | None = None  # the service tier the terminal event's response says it ran at
        self.begun = False  # an event other than an error came: the stream began

    def feed(self, event: StreamEvent) -> None:
        if not event.data or event.data == b"[DONE]":
            return
        payload = event_payload(event)
        kind = str(payload.get("type") or event.event or "")
        if (not kind and "error" in payload) or (kind == "error" and not self.begun):
            from adapters.providers.openai.adapter import error_from_body

            raise error_from_body(said_status(payload), event.data, {})
        self.begun = True
        delta = payload.get("delta")
        if isinstance(delta, str):
            self.output_chars += len(delta)
        item = payload.get("item")
        if kind == "response.output_item.added" and isinstance(item, dict) and item.get("type") == "web_search_call":
            self.searches += 1
        response = payload.get("response")
        if kind in RESPONSES_TERMINAL and isinstance(response, dict):
            self.usage = response_usage(response)
            self.final = True
            tier = response.get("service_tier")
            if isinstance(tier, str):
                self.served = Served({"service_tier": tier})
