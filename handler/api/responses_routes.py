"""Responses API routes: `POST /v1/responses`, `GET` and `DELETE /v1/responses/{id}`, and its input items.

A stored response (the default, `store: true`) keeps the conversation's input items and the response
in the gateway's store for `gateway.responses_ttl_seconds`, with its reasoning sealed as `include:
["reasoning.encrypted_content"]` would have given it; `previous_response_id` continues it, handing the
reasoning back to the provider whole (Claude's signed thinking; OpenAI's encrypted reasoning, which the gateway
asks for when it keeps the turn) though the client was shown its summary only; so does a stored turn's reasoning
item a client sends back by value, found by its id (`StoredItems`). Only the key that made a
response, or one of that key's ancestors, can see it: for any other key it does not exist (404, never 403,
which would tell that it does).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from handler.api.app import answer_response
from handler.api.request_fields import RESPONSES
from handler.api.responses_api import (
    ResponseIds,
    ResponsesRequest,
    input_items,
    is_reference,
    is_search,
    plain_response,
    search_forbidden,
    search_tools,
    to_chat_request,
    to_response,
    translated_search,
    unsealed_reasoning,
    with_sealed_reasoning,
)
from handler.api.responses_items import PageAsked, item_ids, page, stored_ids
from handler.api.responses_native import Relay, relayed_events
from handler.api.responses_stream import responses_events
from handler.api.streaming import EventStream, stream_head, until_client_leaves
from handler.errors import InvalidRequestError, NotFoundError
from handler.pipeline.budgets import SETTLE_BY
from handler.pipeline.exchange import Exchange
from handler.pipeline.passthrough import NativeReply, NativeStream
from handler.pipeline.pipeline import Pipeline
from handler.ports import STORE_DEADLINE, KeyRecord, ResponseTooLarge, StoredResponse, StoreError
from handler.redaction import clipped, scrub
from handler.schemas import PlainCompletion
from handler.wire import redact_error

if TYPE_CHECKING:
    from handler.api.app import Api
    from handler.api.reasoning_seal import Seals


def stream_headers(ex: Exchange) -> dict[str, str]:
    return {**ex.headers(), "cache-control": "no-cache", "x-accel-buffering": "no"}


logger = logging.getLogger("gateway")
# The most store reads one request's input may cost for the stored items it names by id (`StoredItems`: the items
# `item_reference`s stand for, the kept reasoning of reasoning items sent back by value): before the key is
# admitted, so that made-up ids cost no more than this (2,000 of them would be 2,000 reads, 8.9 s on DynamoDB,
# before the request's 429). A client's own turns need one or two: the last response holds the turns it continued.
MAX_KEPT_READS = 8
# OpenAI's code for a `previous_response_id` it cannot continue (a 400), which clients recover from by sending the
# whole conversation.
PREVIOUS_NOT_FOUND = "previous_response_not_found"
MAX_INDEXED_ID = 256  # the longest item id indexed (a provider's are some 50 characters; a DynamoDB key, 2 KB)
UNKEPT = "unkept"  # a record that stands for a response answered but not kept: why, for the client
# Beside a stored conversation: the provider's ids of its items that were answered to the key or a key under it (the
# output of responses it may read), so that a turn continuing it needs no store read to send them (`answered_in`).
ANSWERED = "answered_ids"


# Hosted tools OpenAI bills beyond tokens at rates the gateway does not price: per call (`file_search`), per
# container (`code_interpreter`), per image (`image_generation`).
UNPRICED_HOSTED = frozenset({"file_search", "code_interpreter", "image_generation"})


def hosted_tools(pipeline: Pipeline, ex: Exchange, body: ResponsesRequest, searches: list[dict[str, Any]]) -> list[str]:
    """The Responses API's hosted tools that OpenAI bills beyond tokens. Web search (`searches`, its tools:
    `search_tools`, billed per call): kept when searches are priced, up to `max_tool_calls`
    (`DEFAULT_SEARCHES` when the request sets none) reserved for. The others (`UNPRICED_HOSTED`), and unpriced
    searches: left out of the body a Responses deployment gets (a 400 under `x-gateway-strict`), and out of the
    `tool_choice` (`unchosen`). Returns what was left out."""
    tools = body.tools or []
    left_out = [t for t in tools if str(t.get("type") or "") in UNPRICED_HOSTED]
    pipeline.refuse_unpriced_tools(ex, sorted({f"tools[{tool['type']}]" for tool in left_out}))
    # No tool runs under `tool_choice: none`, hosted ones included, nor one an `allowed_tools` choice does not allow
    # (OpenAI's rule; a translation sends no search then: `translated_search`): nothing is reserved for searches that
    # cannot run, and the searches charged are capped at none.
    if searches and not search_forbidden(body.tool_choice):
        extra = body.model_extra if body.model_extra is not None else {}
        most = pipeline.search_limit(extra.get("max_tool_calls"), "max_tool_calls")
        if pipeline.allow_searches(ex, most, sorted({f"tools[{tool['type']}]" for tool in searches})):
            extra["max_tool_calls"] = most
        else:
            left_out += searches
    if not left_out:
        return []
    names = sorted({f"tools[{tool['type']}]" for tool in left_out})
    kept = [tool for tool in tools if not any(tool is out for out in left_out)]
    body.tools = kept
    return names + unchosen(body, {str(tool["type"]) for tool in left_out}, searched=any(map(is_search, left_out)))


def unchosen(body: ResponsesRequest, left_out: set[str], *, searched: bool) -> list[str]:
    """The `tool_choice` of `body` without the hosted tools left out of its tools (their types, `left_out`; `searched`:
    the search among them), and its names of what that took. A choice of one of them, or with no tool left to choose,
    goes (`tool_choice`); an `allowed_tools` choice keeps the tools still sent (`tool_choice.tools`), as the
    translation's does, or goes when it allowed none of them. Sent upstream as they came, the allowed tools would name
    one the body no longer has, which OpenAI refuses (400, `tool_choice.tools[0]`)."""

    def gone(tool: Any) -> bool:
        # (The searches are left out together, whatever their names: a choice of `web_search_preview` with them.)
        return (isinstance(tool, dict) and str(tool.get("type") or "") in left_out) or (searched and is_search(tool))

    choice = body.tool_choice
    if choice is None:
        return []
    allowed = choice.get("tools") if isinstance(choice, dict) and choice.get("type") == "allowed_tools" else None
    if isinstance(choice, dict) and isinstance(allowed, list) and any(gone(tool) for tool in allowed):
        still = [tool for tool in allowed if not gone(tool)]
        if still and body.tools:
            body.tool_choice = {**choice, "tools": still}
            return ["tool_choice.tools"]
    elif body.tools and not gone(choice):
        return []
    body.tool_choice = None
    body.model_fields_set.discard("tool_choice")  # (left out of the body sent, not sent as null)
    return ["tool_choice"]


class ResponseArchive:
    """Stored responses as one key may see them."""

    def __init__(self, api: Api) -> None:
        self.store = api.gateway.store
        self.ttl = api.gateway.config.gateway.responses_ttl_seconds

    @staticmethod
    def _visible(stored: StoredResponse, key: KeyRecord) -> bool:
        return stored.key_id == key.id or key.id in stored.ancestors

    async def find(self, response_id: str, key: KeyRecord, param: str | None = None) -> dict[str, Any]:
        """The stored `{"items": [...], "response": {...}}`, or a 404 alike for unknown and not yours; continued
        (`param`), OpenAI's 400 `previous_response_not_found`, on which a client sends the whole conversation again
        (a 404 `not_found` it took for a wrong URL: found by review, storerev36). One the store could not keep
        (`keep`) says why to its key: a 404 read, that 400 continued."""
        record = await self._record(response_id, key)
        named = clipped(response_id)
        if record is None:
            if param is not None:
                raise InvalidRequestError(
                    f"Previous response with id '{named}' not found.", code=PREVIOUS_NOT_FOUND, param=param
                )
            raise NotFoundError(f"Response with id '{named}' not found.", code="not_found")
        if UNKEPT in record:
            why = f"Response with id '{named}' was answered but not stored (`store: false` in it): {record[UNKEPT]}."
            if param is None:
                raise NotFoundError(why, code="not_found")
            why += " Continue from an earlier response, or start anew."
            raise InvalidRequestError(why, code=PREVIOUS_NOT_FOUND, param=param)
        return record

    async def _record(self, response_id: str, key: KeyRecord) -> dict[str, Any] | None:
        """The stored record of `response_id` if `key` may see it, else None (unknown, expired, another's; an id
        longer than any the gateway gives, which DynamoDB refuses as a key: a 503 saying to retry, found by review,
        storerev36)."""
        known = response_id.startswith("resp_") and len(response_id) <= MAX_INDEXED_ID
        stored = await self.store.get_response(response_id) if known else None
        if stored is None or not self._visible(stored, key):
            return None
        record: dict[str, Any] = orjson.loads(stored.body)
        return record

    async def keep(
        self,
        key: KeyRecord,
        items: list[dict[str, Any]],
        response: dict[str, Any],
        known_ids: list[str],
        sealed: dict[str, str],
        answered: Collection[str] = (),
    ) -> None:
        """Store the response and its conversation's items with their ids (`known_ids`: those of the turns it
        continues), the sealed reasoning of its reasoning items (`sealed`, by item id: what the client was
        not given, and the provider needs back) and which of their ids were answered to the key or a key under it
        (`answered`, `ANSWERED`); one that cannot be kept (too large, the store failing) is
        still answered, and says so (`store: false`): the provider was paid for it, so it must not be lost."""
        now = time.time()
        ids = item_ids(items, response["id"], known_ids)
        held = held_ids(response)
        record: dict[str, Any] = {"items": items, "item_ids": ids, "response": response, "sealed": sealed}
        if answered:
            record[ANSWERED] = [item_id for item_id in ids if item_id in answered]
        # Kept as the client was answered: without a secret the model said (it was redacted only when read back).
        body = scrub(orjson.dumps(record))
        stored = StoredResponse(response["id"], key.id, list(key.ancestors), now, now + self.ttl, body)
        # A stream that failed is kept as its `response.failed` says, the one its deadline cut among them: its write
        # ends by the invocation's own time, as its settlement's does (`SETTLE_BY`), not by the request's deadline,
        # which has passed (under it the write would be refused at once).
        bound = STORE_DEADLINE.set(SETTLE_BY.get()) if response.get("status") == "failed" else None
        try:
            await self.store.put_response(stored, held)
        except StoreError as exc:
            logger.warning("response not stored: %s", exc, extra={"response_id": response["id"]})
            response["store"] = False
            if isinstance(exc, ResponseTooLarge):
                # What the next turn finds instead: a 400 saying why, not a 404 as if the id were wrong.
                await self._keep_why(stored, str(exc))
        finally:
            if bound is not None:
                STORE_DEADLINE.reset(bound)

    async def _keep_why(self, stored: StoredResponse, why: str) -> None:
        body = orjson.dumps({UNKEPT: why})
        unkept = StoredResponse(stored.id, stored.key_id, stored.ancestors, stored.created_at, stored.expires_at, body)
        try:  # (an older release would read it as a stored response, and fail on it: 500)
            await self.store.put_response(unkept, newer_only=True)
        except StoreError as exc:
            logger.warning("why a response was not stored not kept: %s", exc, extra={"response_id": stored.id})

    async def delete(self, response_id: str, key: KeyRecord) -> None:
        """Delete `key`'s stored response, or the 404 `find` gives; also when another delete took it between the
        two calls (not both told `deleted: true`)."""
        await self.find(response_id, key)
        if not await self.store.delete_response(response_id):
            raise NotFoundError(f"Response with id '{response_id}' not found.", code="not_found")


def held_ids(response: Mapping[str, Any]) -> list[str]:
    """The ids of a response's output items that name no response (a provider's own): indexed with it, so that a
    later request finds them (`StoredItems`)."""
    return [
        item["id"]
        for item in response.get("output") or ()
        if isinstance(item, dict)
        and isinstance(item.get("id"), str)
        and 0 < len(item["id"]) <= MAX_INDEXED_ID
        and ResponseIds.response_of(item["id"]) is None
    ]


def answered_in(record: Mapping[str, Any]) -> list[str]:
    """The provider's item ids a stored record's key, and every key above it, may see: its response's output's, and
    those of its conversation that were answered to it (`ANSWERED`). Not any id of its conversation: an input item
    keeps the id the client sent it with, which may be another key's (sent back by value, as the Agents SDK sends a
    turn)."""
    output = record["response"].get("output") or ()
    own = [item["id"] for item in output if isinstance(item, dict) and isinstance(item.get("id"), str)]
    kept = record.get(ANSWERED)
    return [*own, *(item_id for item_id in kept if isinstance(item_id, str))] if isinstance(kept, list) else own


def held_in(stored: StoredResponse) -> list[str]:
    """`held_ids` of a stored record (`Store.index_held`, for records kept before the index): none for what is not
    a response (the reasoning seal's secret, why one was not kept)."""
    try:
        record = orjson.loads(stored.body)
    except orjson.JSONDecodeError:
        return []
    response = record.get("response") if isinstance(record, dict) else None
    return held_ids(response) if isinstance(response, dict) else []


class StoredItems:
    """The stored items one request's input names by id, as its key may see them: the item an `item_reference`
    stands for, and the sealed reasoning kept for a reasoning item sent back by value without it (the Agents SDK
    sends its history so, without the `encrypted_content` it did not ask for).

    An id is looked for in the continued conversation first (read already), then in the response it names (the
    gateway's own ids embed their response's token: `ResponseIds.response_of`) or, for a provider's id, in those the
    store's index says hold it (`Store.responses_holding`), the newest first. Each response is read once, and all
    of its items are known from then on: a response keeps the turns it continued, so the last one usually holds
    every item a client sends back. At most `MAX_KEPT_READS` store reads (index queries included) are made, before
    the key is admitted: made-up ids cost no more than that (`spent` then says some were not looked for). A store
    failing reads as nothing found, and is not asked again for this request.

    `answered` holds the provider's item ids the key may see (`answered_in` each response read, and the one continued):
    what a provider that keeps answers itself may be sent an item's id for (`answered_of`)."""

    def __init__(
        self,
        archive: ResponseArchive,
        key: KeyRecord,
        history: list[dict[str, Any]],
        history_ids: list[str],
        sealed: dict[str, str],
        answered: Iterable[str] = (),
    ) -> None:
        self.archive = archive
        self.key = key
        self.reads = 0
        self.spent = False
        self.failing = False
        self.read: set[str] = set()
        self.known: dict[str, tuple[dict[str, Any], dict[str, str]]] = {}
        self.answered: set[str] = set(answered)
        for item, item_id in zip(history, history_ids, strict=False):
            self.known.setdefault(item_id, (item, sealed))

    def _spend(self) -> bool:
        if self.failing:
            return False
        if self.reads == MAX_KEPT_READS:
            if not self.spent:
                logger.warning("stored items of more than %d store reads not looked for", MAX_KEPT_READS)
            self.spent = True
            return False
        self.reads += 1
        return True

    async def _read(self, response_id: str) -> None:
        if response_id in self.read or not self._spend():
            return
        self.read.add(response_id)
        try:
            record = await self.archive._record(response_id, self.key)
        except StoreError as exc:
            logger.warning("stored items not read: %s", exc, extra={"response_id": response_id})
            self.failing = True
            return
        if record is None or UNKEPT in record:
            return
        self.answered.update(answered_in(record))
        sealed: dict[str, str] = record.get("sealed") or {}
        for item, item_id in zip(record["items"], stored_ids(record, response_id), strict=False):
            self.known.setdefault(item_id, (item, sealed))
        for item in record["response"].get("output") or ():
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                self.known.setdefault(item["id"], (item, sealed))

    async def find(self, item_id: str) -> tuple[dict[str, Any], dict[str, str]] | None:
        """The stored item with `item_id` and the sealed reasoning kept beside it (by item id), or None."""
        if item_id in self.known:
            return self.known[item_id]
        named = ResponseIds.response_of(item_id)
        for response_id in [named] if named is not None else await self._holding(item_id):
            await self._read(response_id)
            if item_id in self.known:
                return self.known[item_id]
        return None

    async def _holding(self, item_id: str) -> list[str]:
        """The responses whose output holds a provider's item id, by the store's index (one read, if any is left)."""
        if len(item_id) > MAX_INDEXED_ID or not self._spend():
            return []
        try:
            return await self.archive.store.responses_holding(item_id)
        except StoreError as exc:
            logger.warning("stored items not looked up: %s", exc)
            self.failing = True
            return []

    async def answered_of(self, items: list[dict[str, Any]]) -> frozenset[str]:
        """The provider's own ids of `items` that the key may see (`answered`: given in the output of a response it
        may read, found by the store's index), looked for from the last item back: a client's own conversation is
        mostly in its last response. An id a client only wrote on an item (another key's, sent back by value; and so
        kept in the key's own conversation) is not among them, nor one past the request's store reads. Items that
        carry no provider id cost no read."""
        found: set[str] = set()
        for item in reversed(items):
            item_id = item.get("id") if isinstance(item, dict) else None
            if not isinstance(item_id, str) or not item_id or ResponseIds.response_of(item_id) is not None:
                continue  # (the gateway's own ids name no provider's item, and are not sent: `Relay`)
            if item_id not in self.answered:
                for response_id in await self._holding(item_id):
                    await self._read(response_id)
                    if item_id in self.answered:
                        break
            if item_id in self.answered:
                found.add(item_id)
        return frozenset(found)

    async def kept_reasoning(self, reasoning_ids: list[str]) -> dict[str, str]:
        """The sealed reasoning kept for reasoning items sent back by value without it (`reasoning_ids`, in input
        order; see `unsealed_reasoning`): looked for from the last back. An item not found gets none (the request
        goes on, its reasoning as the client sent it)."""
        kept: dict[str, str] = {}
        for item_id in reversed(reasoning_ids):
            found = await self.find(item_id)
            if found is not None and item_id in found[1]:
                kept[item_id] = found[1][item_id]
        return kept

    async def resolved(self, items: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """`items` with each `item_reference` replaced by the stored item it names (with that id), and the sealed
        reasoning kept for the reasoning items among them; a reference to nothing this key may read is a 400."""
        if not any(is_reference(item) for item in items):
            return items, {}
        out: list[dict[str, Any]] = []
        kept: dict[str, str] = {}
        for position, item in enumerate(items):
            if not is_reference(item):
                out.append(item)
                continue
            item_id = item.get("id")
            where = f"input[{position}]"
            if not isinstance(item_id, str) or not item_id:
                raise InvalidRequestError(f"{where}.id: an item_reference names an item by its id", param=f"{where}.id")
            found = await self.find(item_id)
            if found is None:
                why = f"Item with id '{item_id}' not found."
                if self.spent:
                    why += (
                        f" (The input names items of more than {MAX_KEPT_READS} stored responses: send them by value.)"
                    )
                raise InvalidRequestError(why, param=where)
            stored, sealed = found
            out.append({**stored, "id": item_id})
            if stored.get("type") == "reasoning" and item_id in sealed:
                kept[item_id] = sealed[item_id]
        return out, kept


def refuse_duplicates(items: list[dict[str, Any]], history_ids: list[str]) -> None:
    """A 400, as OpenAI answers it, for an input item whose id an earlier item has (in the input, or in the
    conversation `previous_response_id` continues): the turn sent again by value beside the id that stands for it,
    which the model would read twice and the key pay for twice."""
    seen = set(history_ids)
    for position, item in enumerate(items):
        own = item.get("id")
        if isinstance(own, str) and own:
            if own in seen:
                raise InvalidRequestError(
                    f"Duplicate item found with id {own}. Remove duplicate items from your input and try again.",
                    param=f"input[{position}]",
                )
            seen.add(own)


class ResponsesRoutes:
    """The Responses API's handlers, bound to the app's `Api`."""

    def __init__(self, api: Api, seals: Seals) -> None:
        self.api = api
        self.archive = ResponseArchive(api)
        self.seals = seals
        # Whether a provider keeps the answers it serves natively (`responses_store: true`): only then are the items'
        # provider ids looked up (`StoredItems.answered_of`).
        self.keeping = any(adapter.keeps_responses() for adapter in api.gateway.router.adapters.values())

    async def create(self, request: Request) -> Response:
        api = self.api
        key = await api.authenticate(request)
        body = await api.parse(request, ResponsesRequest)
        # A key that may not use the model is refused before its conversation is read from the store and its input
        # translated (`api.exchange` checks it again, after the translation, as on every route): such a key cost a
        # worker the store reads and the translation of whatever it sent.
        api.gateway.keys.check_model(api.lineage(request), body.model, api.gateway.router.spec)
        history: list[dict[str, Any]] = []
        history_ids: list[str] = []
        sealed: dict[str, str] = {}
        answered: list[str] = []
        if body.previous_response_id:
            previous_id = body.previous_response_id
            previous = await self.archive.find(previous_id, key, param="previous_response_id")
            history = [*previous["items"], *previous["response"].get("output", [])]
            history_ids = item_ids(history, previous_id, stored_ids(previous, previous_id))
            sealed = previous.get("sealed") or {}
            answered = answered_in(previous)
        lookup = StoredItems(self.archive, key, history, history_ids, sealed, answered)
        items = input_items(body)
        kept: dict[str, str] = {}
        if isinstance(body.input, list):  # (a string input is one message of no id: nothing in it to look up)
            items, kept = await lookup.resolved(items)
            body.input = items  # (the references replaced: for the translation, the provider and the store)
            refuse_duplicates(items, history_ids)
            # Reasoning items of stored turns a client sends back by value (the Agents SDK does), without the
            # `encrypted_content` it did not ask for: what the gateway kept of them goes back as with the turns' id.
            unsealed = [item_id for item_id in unsealed_reasoning(items) if item_id not in sealed]
            if unsealed:
                kept.update(await lookup.kept_reasoning(unsealed))
        unread = lookup.spent
        # A provider that keeps answers itself is sent an item's id only where the key may see the item (it would
        # read any other from the account's store: `NativeCall.visible`): looked for where one is configured, for a
        # turn it would store, and only for items that carry a provider's id.
        visible = await lookup.answered_of([*history, *items]) if self.keeping and body.stored else frozenset()
        # The translation is needed either way: admission estimates and caps the request in the internal form.
        seal = (await self.seals.seal()).for_response()
        handed_back = with_sealed_reasoning(history, sealed)  # the stored turns as the provider needs them
        req, dropped = to_chat_request(body, handed_back, seal, {**sealed, **kept})
        if unread and "input[reasoning]" not in dropped:
            dropped.append("input[reasoning]")  # (the reasoning of items past `MAX_KEPT_READS`: their summary went)
        ex = api.exchange(request, key, req.model, stream=req.stream, extra=body.model_extra, known=RESPONSES)
        ex.cap_param = "max_output_tokens"
        conversation = [*history, *input_items(body)] if body.stored else []  # (as the client has it, to keep)

        # A deployment that serves the Responses API gets the client's body (`relay.call`), any other the
        # translation (`req`); what either leaves out is reported for the deployment that served. Both get the
        # stored turns' reasoning with what the gateway kept of it.
        # A translation carries the hosted search as the search it asks for, run by a provider with its own search
        # tool where the search is priced (`ex.searches`, the limit reserved): left out and named where unpriced.
        # (No tool, and no choice of tools that may allow the search: nothing hosted to leave out, no search to carry.)
        if body.tools or isinstance(body.tool_choice, dict):
            searches = search_tools(body)
            hosted = hosted_tools(api.pipeline, ex, body, searches)
            dropped = translated_search(req, searches, ex.searches, dropped, body.tool_choice)
            ex.searched = req if req.web_search is not None else None
        else:
            hosted = []
        relay = Relay(body, handed_back, ex, dropped, hosted, kept, visible)

        async def keep(response: dict[str, Any]) -> None:
            if body.stored:
                # (the seals of turns sealed before they were encrypted, sealed anew: the store keeps none readable)
                reasoning = {**sealed, **kept, **(seal.items or {}), **relay.kept}
                await self.archive.keep(
                    key,
                    seal.upgraded_items(conversation),
                    response,
                    history_ids,
                    {item_id: seal.upgraded(token) for item_id, token in reasoning.items()},
                    lookup.answered,
                )

        ids = ResponseIds(ex.request_id)
        if req.stream:
            stream, watch = await stream_head(request, api.pipeline.native_stream(relay.call, req, ex), ex)
            if isinstance(stream, NativeStream):
                return EventStream(relayed_events(stream, relay, keep), stream_headers(ex), watch)
            return EventStream(responses_events(stream, body, ids, seal, keep), stream_headers(ex), watch)
        # (Untraced, a translated answer in the plain shape is read from its JSON: `PlainCompletion`.)
        native = api.pipeline.native(relay.call, req, ex, plain=ex.trace is None)
        outcome = await until_client_leaves(request, native, ex)
        if isinstance(outcome, NativeReply):
            redact_error(outcome.body.get("error"))  # (a failed response's, answered with a 200: before it is kept)
            response = relay.finish(outcome.body)
        elif isinstance(outcome, PlainCompletion):
            response = plain_response(outcome, body, ids, ex.cost, ex.dropped)
        else:
            response = to_response(outcome, body, ids, seal, ex.cost, ex.dropped)
        await keep(response)
        return self.answer(ex, response)

    def answer(self, ex: Exchange, response: dict[str, Any]) -> Response:
        return self.api.answered(ex, answer_response(orjson.dumps(response), ex.headers()), response)

    async def get(self, request: Request) -> Response:
        key = await self.api.authenticate(request)
        record = await self.archive.find(request.path_params["response_id"], key)
        return self.api.json(record["response"])

    async def delete(self, request: Request) -> Response:
        key = await self.api.authenticate(request)
        response_id = request.path_params["response_id"]
        await self.archive.delete(response_id, key)
        return self.api.json({"id": response_id, "object": "response", "deleted": True})

    async def input_items(self, request: Request) -> Response:
        key = await self.api.authenticate(request)
        asked = PageAsked.of(request.query_params)
        response_id = request.path_params["response_id"]
        record = await self.archive.find(response_id, key)
        return self.api.json(page(record["items"], stored_ids(record, response_id), asked))
