"""Anthropic's routes: `POST /v1/messages`, `POST /v1/messages/count_tokens`, and `GET /v1/models` in
Anthropic's list shape (for a client that sends `anthropic-version`, as Claude Code does)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from handler.api.app import answer_response
from handler.api.messages_api import (
    MessagesCountRequest,
    MessagesRequest,
    Translation,
    carried_search,
    forbids_tools,
    lost_betas,
)
from handler.api.messages_out import anthropic_events, native_events, native_message, to_message
from handler.api.request_fields import MESSAGES
from handler.api.streaming import EventStream, stream_head, until_client_leaves
from handler.errors import InvalidRequestError, NativeOnlyError
from handler.pipeline.exchange import Exchange
from handler.pipeline.keys import allows_model
from handler.pipeline.passthrough import NativeReply, NativeStream
from handler.pipeline.pipeline import Pipeline
from handler.pipeline.pricing import estimate_prompt_tokens
from handler.ports import MESSAGES_API, KeyRecord, NativeCall
from handler.schemas import ChatRequest
from handler.telemetry.observability import observe
from handler.wire import ANTHROPIC_HEADERS, forwarded_query, unsent_routing

if TYPE_CHECKING:
    from collections.abc import Mapping

    from handler.api.app import Api
    from handler.api.reasoning_seal import ReasoningSeal, Seals
    from handler.config import ModelConfig

ANTHROPIC_RAW_HEADERS = frozenset(name.encode() for name in ANTHROPIC_HEADERS)
MODELS_PAGE = 20
MODELS_PAGE_MAX = 1000
# Models have no release date in the config; Anthropic's shape requires one.
EPOCH = "1970-01-01T00:00:00Z"


def native_call(
    request: Request, data: dict[str, Any], untranslated: list[str], dropped: list[str] | None = None
) -> NativeCall:
    """The client's Messages request as it sent it: its body and the headers Anthropic reads (printable ASCII, as
    any header the gateway sends upstream: anything else is the client's 400). `anthropic-beta` may come as a
    comma list or repeated, as Anthropic takes it: every value goes, as one list; `anthropic-version` names one
    version, so different ones are the client's 400. The query's `beta` (Claude Code's `?beta=true`) goes with it,
    for an Anthropic deployment's URL."""
    sent: dict[str, list[str]] = {}
    for raw, value in request.scope["headers"]:  # (one pass: `Headers.getlist` reads them all for each name)
        if raw in ANTHROPIC_RAW_HEADERS:
            sent.setdefault(raw.decode("latin-1"), []).append(value.decode("latin-1"))
    headers = {}
    for name in ANTHROPIC_HEADERS if sent else ():
        values = sent.get(name)
        if not values:
            continue
        if name == "anthropic-beta":
            headers[name] = ",".join(values)
        elif len(set(values)) == 1:
            headers[name] = values[0]
        else:
            raise InvalidRequestError(f"the {name} header must have one value", param=name)
    for name, value in headers.items():
        if not (value.isascii() and value.isprintable()):
            raise InvalidRequestError(f"the {name} header must be printable ASCII", param=name)
    query = forwarded_query(request.scope.get("query_string", b""))
    betas = headers.get("anthropic-beta")
    lost = lost_betas(betas, data, untranslated) if betas else ()
    call = NativeCall(MESSAGES_API, data, headers, tuple(untranslated), tuple(dropped or ()), query, lost)
    return threaded(call) if "thread" in data else call


def threaded(call: NativeCall) -> NativeCall:
    """A request of a message thread (beta `message-threads-*`): Anthropic keeps the thread's conversation, and a
    `continue` brings only what is new, without `system` or `tools`. Only a deployment that speaks Anthropic's
    Messages API can take it, as written: a translation sent a `continue`'s lone tool result (the provider's 400) or
    its last question without the conversation before it (an answer to something else, and charged). Any other
    deployment refuses it with Anthropic's `thread_unsupported_request`, on which the SDK's thread helpers (its tool
    runner's, by default) send the whole conversation again without a thread. A `continue` is reserved for the
    conversation Anthropic holds, which the body does not show (`NativeCall.held`), and goes only where the answer it
    continues was relayed to the key or one of its descendants (`Pipeline._continued_thread`): Anthropic holds every
    key's threads under the one account."""
    thread = call.body["thread"]
    refusal = NativeOnlyError(
        "thread: no deployment this request may go to speaks Anthropic's Messages API, so none can keep a message "
        "thread (Anthropic holds its conversation; another provider would get a part of it as the whole): send the "
        "whole conversation without `thread`",
        code="thread_unsupported_request",
        param="thread",
    )
    held = isinstance(thread, dict) and thread.get("type") == "continue"
    return call._replace(native_only=refusal, held=held)


# Anthropic's server tools billed beyond tokens at rates the gateway does not price: code execution (per
# container-hour).
UNPRICED_SERVER_TOOLS = ("code_execution_",)
# The request's container (code execution's, which skills and programmatic tool calls run in): a container's id
# from an earlier answer, or a new one's settings. Only code execution makes or reads one, and it is always left out,
# so the container goes with it: an id passed on would name what Anthropic keeps under the one account for every
# key (another key's files and state, in a container the gateway keeps no owner of), at its per-hour price.
CONTAINER = "container"


def server_tools(pipeline: Pipeline, ex: Exchange, data: dict[str, Any]) -> list[str]:
    """Anthropic's server tools that Anthropic bills beyond tokens. Web search (`web_search_*`, billed per
    search): kept when searches are priced, each tool's `max_uses` (`DEFAULT_SEARCHES` when it sets none)
    reserved for; under `tool_choice: {"type": "none"}`, which forbids Anthropic's server tools too, passed on as
    written and none reserved. The advisor tool (`advisor_*`: another model's tokens), its calls' worst case reserved
    (`Charges.allow_advisors`). Code execution (`UNPRICED_SERVER_TOOLS`), and unpriced searches: left out of the
    body sent (a 400 under `x-gateway-strict`), with a `tool_choice` that named one or has no tool left to choose;
    and `container` (`CONTAINER`), with code execution. Returns what was left out."""
    contained = [CONTAINER] if CONTAINER in data else []
    if contained:
        pipeline.refuse_unpriced_tools(ex, contained)
        del data[CONTAINER]
    tools = data.get("tools")
    if not isinstance(tools, list):
        return contained
    typed = [t for t in tools if isinstance(t, dict)]
    left_out = [t for t in typed if str(t.get("type") or "").startswith(UNPRICED_SERVER_TOOLS)]
    pipeline.refuse_unpriced_tools(ex, [f"tools.{tool['type']}" for tool in left_out])
    searches = [t for t in typed if str(t.get("type") or "").startswith("web_search_")]
    if searches and not forbids_tools(data.get("tool_choice")):
        most = 0
        for i, tool in enumerate(tools):
            if any(tool is search for search in searches):
                tool["max_uses"] = pipeline.search_limit(tool.get("max_uses"), f"tools.{i}.max_uses")
                most += tool["max_uses"]
        if not pipeline.allow_searches(ex, most, [f"tools.{tool['type']}" for tool in searches]):
            left_out = [*searches, *left_out]
    if any(str(t.get("type") or "").startswith("advisor_") for t in typed):
        pipeline.allow_advisors(ex, tools)
    if not left_out:
        return contained
    names = [f"tools.{tool['type']}" for tool in left_out]
    kept = [tool for tool in tools if not any(tool is out for out in left_out)]
    if kept:
        data["tools"] = kept
    else:
        del data["tools"]
    choice = data.get("tool_choice")
    named = {tool.get("name") for tool in left_out}
    if choice is not None and (not kept or (isinstance(choice, dict) and choice.get("name") in named)):
        del data["tool_choice"]  # Anthropic refuses a choice without tools, or of a tool not offered
        names.append("tool_choice")
    return names + contained


def anthropic_headers(ex: Exchange) -> dict[str, str]:
    """The gateway's headers, and the request id again as `request-id`, where Anthropic's SDK reads it (a
    message's `_request_id`), as Anthropic answers."""
    headers = ex.headers()
    headers["request-id"] = ex.request_id
    return headers


def json_answer(payload: Any, headers: dict[str, str]) -> Response:
    return answer_response(orjson.dumps(payload), headers)


def estimated_tokens(req: ChatRequest) -> int:
    """A count for providers that have none: `estimate_prompt_tokens` is generous (half the bytes, as the rate
    limits count a prompt); a quarter of the bytes is the usual rule of thumb for a token."""
    return math.ceil(estimate_prompt_tokens(req) / 2)


class MessagesRoutes:
    """The Messages API's handlers, bound to the gateway's `Api`."""

    def __init__(self, api: Api, seals: Seals) -> None:
        self.api = api
        self.seals = seals  # (Gemini 3's own parts of a search ride sealed in a search result: `search_blocks`)

    async def translated(self, body: MessagesCountRequest) -> tuple[ChatRequest, list[str]]:
        """The internal request for a Messages one, and the Messages fields it cannot carry (`to_chat_request`), the
        parts of Gemini 3's searches its history carries sealed opened with the gateway's seal (read only then)."""
        translation = Translation()
        req = translation.request(body)
        return translation.opened(req, await self.seals.seal() if translation.sealed else None)

    async def sealing(self, req: ChatRequest) -> ReasoningSeal | None:
        """What a translated answer seals Gemini 3's own parts of a search with (`search_blocks`): they come only with
        a search, so a request that offers none reads no seal; nor does one passed through (Claude seals its own)."""
        return await self.seals.seal() if req.web_search is not None else None

    async def messages(self, request: Request) -> Response:
        api = self.api
        key = await api.authenticate(request, allow_x_api_key=True)
        data = await api.parse_json(request)
        body = api.validate(MessagesRequest, data, request)
        req, untranslated = await self.translated(body)
        ex = api.exchange(
            request, key, req.model, stream=req.stream, anthropic=True, extra=body.model_extra, known=MESSAGES
        )
        pipeline = api.pipeline
        left_out = server_tools(pipeline, ex, data)
        if body.model_extra:
            left_out += unsent_routing(data)  # (an aggregator's own: `handler.wire.ROUTING_MEMBERS`)
        # A translation carries the web search tool kept (priced) as the search it asks for, run by a provider with a
        # search of its own (Gemini's), the limit reserved (`Exchange.searched`: reserved there alone).
        untranslated = carried_search(req, data, untranslated)
        ex.searched = req if req.web_search is not None else None
        call = native_call(request, data, untranslated, left_out)
        if req.stream:
            stream, watch = await stream_head(request, pipeline.native_stream(call, req, ex), ex)
            if isinstance(stream, NativeStream):
                events = native_events(stream)
            else:
                events = anthropic_events(stream, req.model, estimate_prompt_tokens(req), await self.sealing(req))
            return EventStream(
                events, {**anthropic_headers(ex), "cache-control": "no-cache", "x-accel-buffering": "no"}, watch
            )
        outcome = await until_client_leaves(request, pipeline.native(call, req, ex), ex)
        if isinstance(outcome, NativeReply):
            payload = native_message(outcome, ex.cost)
        else:
            payload = to_message(outcome, req.model, ex.cost, await self.sealing(req))
        return api.answered(ex, json_answer(payload, anthropic_headers(ex)), payload)

    async def count_tokens(self, request: Request) -> Response:
        """The provider's own count where it has one (Anthropic, Gemini), else an estimate marked as one
        (`x-gateway-estimate: true`, and `"estimate": true` in the body); a fallback's count, made with the model's
        own deployments passed over, says whose it is (`"counted_by"`: its tokenizer may not be the model's). Free,
        so no budget or tokens a minute; a count a provider makes is held to the key's requests a minute (see
        `Pipeline.count_tokens`)."""
        api = self.api
        key = await api.authenticate(request, allow_x_api_key=True)
        data = await api.parse_json(request)
        body = api.validate(MessagesCountRequest, data, request)
        req, untranslated = await self.translated(body)
        ex = api.exchange(
            request, key, req.model, stream=req.stream, anthropic=True, extra=body.model_extra, known=MESSAGES
        )
        dropped = unsent_routing(data) if body.model_extra else None
        counted = await api.pipeline.count_tokens(native_call(request, data, untranslated, dropped), req, ex)
        headers = anthropic_headers(ex)
        payload: dict[str, Any] = {"input_tokens": counted}
        if counted is not None and ex.attempt is not None and ex.attempt.model != ex.model:
            payload["counted_by"] = ex.attempt.model
        if counted is None:
            # A thread's `continue` reads what its thread holds too, where this process knows it (counted as its
            # last question alone, a thread of 40,000 tokens told a client it had nearly all its context left:
            # found by review, embrev37).
            held = api.pipeline.thread_size(data.get("thread")) if isinstance(data, dict) else 0
            payload = {"input_tokens": estimated_tokens(req) + held, "estimate": True}
            headers["x-gateway-estimate"] = "true"
        response = json_answer(payload, headers)
        observe(ex, 200)
        return response


def anthropic_model(name: str, spec: ModelConfig) -> dict[str, Any]:
    """One model in Anthropic's shape (`ModelInfo`): its context window and output ceiling where the config has
    them (Claude Code's model discovery reads them), else null, as Anthropic's optional fields are."""
    return {
        "type": "model",
        "id": name,
        "display_name": name,
        "created_at": EPOCH,
        "lifecycle": "active",
        "max_input_tokens": spec.context_window,
        "max_tokens": spec.max_output_tokens,
    }


def anthropic_models(request: Request, names: list[str], models: Mapping[str, ModelConfig]) -> dict[str, Any]:
    """Anthropic's model list (`GET /v1/models` with `anthropic-version`): newest first there, by name
    here, paged by `limit`, `after_id` and `before_id` as Anthropic pages it."""
    params = request.query_params
    try:
        limit = int(params.get("limit", MODELS_PAGE))
    except ValueError:
        raise InvalidRequestError("limit must be an integer", param="limit") from None
    if not 1 <= limit <= MODELS_PAGE_MAX:
        raise InvalidRequestError(f"limit must be between 1 and {MODELS_PAGE_MAX}", param="limit")
    ordered = sorted(names)
    after, before = params.get("after_id"), params.get("before_id")
    if before is not None:
        ordered = ordered[: ordered.index(before)] if before in ordered else []
        page = ordered[-limit:]
        has_more = len(ordered) > len(page)
    else:
        if after is not None:
            ordered = ordered[ordered.index(after) + 1 :] if after in ordered else []
        page = ordered[:limit]
        has_more = len(ordered) > len(page)
    data = [anthropic_model(name, models[name]) for name in page]
    return {
        "data": data,
        "has_more": has_more,
        "first_id": page[0] if page else None,
        "last_id": page[-1] if page else None,
    }


def allowed_models(api: Api, lineage: list[KeyRecord], kind: str | None = None) -> list[str]:
    """The models the key and every ancestor may use (of `kind`, if given)."""
    return [
        name
        for name, spec in api.gateway.config.models.items()
        if allows_model(lineage, name) and (kind is None or spec.kind == kind)
    ]
