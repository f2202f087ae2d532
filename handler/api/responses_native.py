"""`/v1/responses` passed through to deployments that serve the Responses API themselves (OpenAI, Azure).

The request goes through the pipeline's native pass-through (`Pipeline.native`, `native_stream`): a
deployment that speaks the Responses API gets the client's body (the adapter renames the model, caps the
output, and keeps `store: false` unless the operator lets the provider keep answers: the gateway keeps them
itself); any other deployment of the plan gets the translated request. A `previous_response_id` the gateway
stored is expanded into the input it stands for, its reasoning items with the `encrypted_content` the gateway
kept for them. A passed-through answer, or event stream, comes back as the provider sent it; the gateway adds its
`cost` and says what it did with `store`, and keeps for itself the encrypted reasoning it asked the provider for
on the client's behalf (see `Relay`). The provider's encrypted reasoning, given or kept, is marked with the deployment
that issued it (`handler.wire.issued`): it goes back to that deployment alone, since no other provider account can
read it (`adapters.providers.openai.responses.issued_here`).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any

from handler.api.reasoning_seal import ReasoningSeal
from handler.api.responses_api import (
    ResponseIds,
    ResponsesRequest,
    input_items,
    response_usage,
    with_sealed_reasoning,
)
from handler.api.streaming import sse_event
from handler.errors import GatewayError
from handler.pipeline.exchange import Exchange
from handler.pipeline.passthrough import OUTPUT_TEXT_DELTA, NativeStream, guarded, sse_frame
from handler.pipeline.pipeline import answered_as
from handler.ports import RESPONSES_API, NativeCall
from handler.redaction import REDACTED, annotated, positions_moved, tokens_redacted
from handler.wire import (
    ISSUED_PREFIX,
    RESPONSES_TERMINAL,
    ROUTING_MEMBERS,
    UNREADABLE_REASONING,
    event_payload,
    interrupted,
    issued,
    redact_error,
    said_status,
    unsent_routing,
    upstream_error,
)

Finished = Callable[[dict[str, Any]], Awaitable[None]]
# The stream events that carry a whole output item (a reasoning item's `encrypted_content` among its members).
ITEM_EVENTS = frozenset({"response.output_item.added", "response.output_item.done"})
ARGUMENTS_DONE = "response.function_call_arguments.done"
ANNOTATION_ADDED = "response.output_text.annotation.added"
PART_DONE = "response.content_part.done"
TEXT_DONE = "response.output_text.done"
# The events of an output text that give positions in it, or its tokens (`_Progress.text_out`).
TEXT_EVENTS = frozenset({ANNOTATION_ADDED, PART_DONE, TEXT_DONE})
# The events that carry the response in progress, before the terminal one.
LIFECYCLE_EVENTS = frozenset({"response.created", "response.queued", "response.in_progress"})


class Relay:
    """One Responses request as it passes through: the body sent, and the gateway's part of the answer.

    A reasoning item's `encrypted_content` in the answer is marked with the deployment that served it
    (`handler.wire.issued`): a session whose deployments span two provider accounts (two OpenAI organisations,
    OpenAI and an Azure resource) hands each back only to the account that can read it. In the answer of a client
    that did not ask for it (`include`) it is there because the gateway asked, to keep the turn
    (`adapters.providers.openai.responses.request_body`): it is taken out of what the client gets, as the
    translation shows it only when asked, and held in `kept` (by item id, marked) to be stored beside the response
    and handed back to the provider when the turn is continued."""

    def __init__(
        self,
        body: ResponsesRequest,
        history: list[dict[str, Any]],
        ex: Exchange,
        untranslated: list[str],
        dropped: list[str] | None = None,  # what the body sent leaves out of the client's
        kept: Mapping[str, str] | None = None,  # the encrypted reasoning kept for the input's reasoning items
        visible: frozenset[str] = frozenset(),  # the provider's item ids the key may see (`NativeCall.visible`)
    ) -> None:
        self.body = body
        self.ex = ex
        self.hides_reasoning = not body.wants_encrypted_reasoning()
        self.kept: dict[str, str] = {}
        self._issuer: str | None = None  # (the serving deployment's, once an answer carries its reasoning)
        self._names: Mapping[str, str] | None = None  # (the client's names by their aliases, at the first call)
        items: Any = None
        if history or body.previous_response_id or kept:
            items = [*history, *with_sealed_reasoning(input_items(body), kept or {})]
        elif "input" in body.model_fields_set:
            items = body.input
        dropped = list(dropped or ())
        if body.model_extra:
            dropped += sorted(ROUTING_MEMBERS.intersection(body.model_extra))  # (not sent: `SentBody`)
        if isinstance(items, list):
            sent = [self._sendable(item) for item in items if not self._sealed_here(item)]
            if len(sent) < len(items):
                # The gateway's own seal (from a turn another provider served) means nothing to this one.
                dropped.append(UNREADABLE_REASONING)
            items = sent
        self.call = NativeCall(
            RESPONSES_API,
            SentBody(body, items),
            untranslated=tuple(untranslated),
            dropped=tuple(dropped),
            visible=visible,
        )

    @staticmethod
    def _sendable(item: Any) -> Any:
        """An item without an id the gateway made (a stored input item's, a translated turn's output): the provider,
        keeping answers itself, would look it up among its own (404)."""
        if isinstance(item, dict) and isinstance(item.get("id"), str) and ResponseIds.response_of(item["id"]):
            return {name: value for name, value in item.items() if name != "id"}
        return item

    @staticmethod
    def _sealed_here(item: Any) -> bool:
        if not isinstance(item, dict) or item.get("type") != "reasoning":
            return False
        sealed = item.get("encrypted_content")
        return isinstance(sealed, str) and sealed.startswith(ReasoningSeal.PREFIXES)

    def reasoning_out(self, item: Any) -> bool:
        """Mark an output reasoning item's `encrypted_content` with the deployment that issued it, and take it out
        into `kept` when the client did not ask for it; whether the item changed. Only an item that carries one is
        touched: an answer without encrypted reasoning goes as it came."""
        if not (isinstance(item, dict) and item.get("type") == "reasoning"):
            return False
        sealed = item.get("encrypted_content")
        if not isinstance(sealed, str) or not sealed:
            if self.hides_reasoning:  # (a null one: what the client did not ask for is not there at all)
                item.pop("encrypted_content", None)
            return False
        marked = self._marked(sealed)
        if self.hides_reasoning:
            del item["encrypted_content"]
            if isinstance(item.get("id"), str):
                self.kept[item["id"]] = marked
            return True
        item["encrypted_content"] = marked
        return marked is not sealed

    def item_out(self, item: Any) -> bool:
        """An output item as the client's (`reasoning_out`, `call_out`, its text's annotations `placed`); whether it
        changed."""
        changed = self.reasoning_out(item)
        if isinstance(item, dict) and item.get("type") == "message" and isinstance(item.get("content"), list):
            for part in item["content"]:
                changed = placed(part) or changed
        return self.call_out(item) or changed

    def call_out(self, item: Any) -> bool:
        """A function call (an output item, or the event that closes its arguments) by the client's name of its
        tool where the provider was sent an alias (`ProviderAdapter.native_names`); whether it changed."""
        if not (isinstance(item, dict) and isinstance(item.get("name"), str)):
            return False
        if self._names is None:
            attempt = self.ex.attempt
            self._names = attempt.adapter.native_names(self.call) if attempt is not None else {}
        given = self._names.get(item["name"])
        if given is None:
            return False
        item["name"] = given
        return True

    def _marked(self, sealed: str) -> str:
        """`sealed` marked with its issuer, the deployment that served (`ex.attempt`); as it is when marked already
        (the items of a stream that broke off pass here again, `relayed_events`)."""
        if sealed.startswith((ISSUED_PREFIX, *ReasoningSeal.PREFIXES)):
            return sealed
        if self._issuer is None:
            attempt = self.ex.attempt
            if attempt is None:  # (no deployment answered: nothing to mark it with)
                return sealed
            self._issuer = attempt.target.issuer
        return issued(self._issuer, sealed)

    def opening(self, response: dict[str, Any]) -> None:
        """A stream's response in progress (`response.created`, `response.in_progress`) as the client's: what the
        gateway does with `store` and the id the client continued, as the terminal event says them (the provider's
        said `store: false` and no `previous_response_id`: the body it was sent); its output's encrypted reasoning,
        if any, as `reasoning_out` gives it."""
        output = response.get("output")
        if isinstance(output, list):
            for item in output:
                self.item_out(item)
        tools = response.get("tools")
        if tools and isinstance(tools, list):  # (the provider's echo of the body it was sent: aliases too)
            choice = response.get("tool_choice")
            allowed = (
                choice.get("tools") if isinstance(choice, dict) and choice.get("type") == "allowed_tools" else None
            )
            for tool in [*tools, choice, *(allowed if isinstance(allowed, list) else ())]:
                self.call_out(tool)
        response["store"] = self.body.stored
        response["previous_response_id"] = self.body.previous_response_id

    def finish(self, response: dict[str, Any]) -> dict[str, Any]:
        """The gateway's part of an answer: what it did with `store`, the id the client continued, the cost;
        the encrypted reasoning marked with its issuer, and taken out where the client did not ask for it
        (`reasoning_out`)."""
        self.opening(response)
        cost = self.ex.cost
        response["cost"] = cost.as_event() if cost is not None else None
        return response


class SentBody(Mapping[str, Any]):
    """The body a deployment that serves the Responses API gets: the client's, with `input` as `items` (the
    stored turns expanded, the gateway's own seals left out) and without the gateway's `previous_response_id`.
    Built on its first read: a deployment of another API gets the translated request and never reads it."""

    def __init__(self, body: ResponsesRequest, items: Any) -> None:
        self._request = body
        self._items = items
        self._built: dict[str, Any] | None = None

    def _body(self) -> dict[str, Any]:
        if self._built is None:
            sent = self._request.model_dump(exclude_unset=True, by_alias=True)
            sent.pop("previous_response_id", None)  # the gateway's id: the provider never saw it
            unsent_routing(sent)  # (an aggregator's own routing: `handler.wire.ROUTING_MEMBERS`)
            if self._items is not None:
                sent["input"] = self._items
            self._built = sent
        return self._built

    def __getitem__(self, name: str) -> Any:
        return self._body()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._body())

    def __len__(self) -> int:
        return len(self._body())


def relayed_events(stream: NativeStream, relay: Relay, on_finished: Finished) -> AsyncIterator[bytes]:
    """The provider's events as it sent them; the terminal one (which carries the final usage) also carries
    the gateway's additions, settled from that usage. The provider's own failure (an `error` event, a
    `response.failed`) goes on in words redacted as an error answer's are (`redact_error`). `on_finished` gets a
    finished (or failed) response before it goes on. An error after the first byte ends the stream with an `error`
    and a `response.failed` event, of the response the stream began: its output as far as it was streamed
    (`StreamedOutput`), the usage and cost charged (settled before, `guarded`), kept by `on_finished` as the client
    is told it."""

    progress = _Progress()

    async def events() -> AsyncGenerator[bytes]:
        terminal: tuple[str, dict[str, Any], dict[str, Any]] | None = None
        redacted = stream.redactor.placed  # (where secrets were redacted from the text deltas written again)
        async for batch in stream.batches():
            out = b""
            for event in batch:
                if not event.data or event.data == b"[DONE]":
                    continue
                payload = event_payload(event)
                kind = str(payload.get("type") or event.event or "")
                if isinstance(payload.get("sequence_number"), int):
                    progress.last = payload["sequence_number"]
                response = payload.get("response")
                if kind in LIFECYCLE_EVENTS and isinstance(response, dict):
                    progress.response = response
                    relay.opening(response)
                    out += sse_event(event.event or kind, payload)
                elif kind in RESPONSES_TERMINAL and isinstance(response, dict):
                    terminal = (kind, payload, response)
                elif kind in ITEM_EVENTS and relay.item_out(payload.get("item")):
                    out += sse_event(event.event or kind, payload)
                elif kind == ARGUMENTS_DONE and relay.call_out(payload):  # (it names the function now)
                    out += sse_event(event.event or kind, payload)
                elif kind in TEXT_EVENTS and progress.text_out(kind, payload):
                    out += sse_event(event.event or kind, payload)
                elif kind == "error":  # the provider's failure, in its own words: redacted as an error answer's
                    redact_error(payload)
                    out += sse_event(event.event or kind, payload)
                    said = payload.get("error")  # (OpenAI's stream nests its words; its reference has them on top)
                    progress.said = said if isinstance(said, dict) else payload
                else:
                    out += sse_frame(event)
                if redacted and (secrets := redacted.pop(event, None)) and kind == OUTPUT_TEXT_DELTA:
                    progress.redacted(payload, secrets)
                if kind in OUTPUT_EVENTS:
                    progress.output.feed(kind, payload)
            if out:
                yield out
        if terminal is None:
            if progress.said is not None:
                # The provider's `error` event with no closing event after it: the stream's failure is that error, at
                # the status its code names (not a 502 `stream_interrupted` whatever it says, a rate limit too).
                progress.ended_by = said_failure(progress.said)
                raise progress.ended_by
            raise interrupted("response")
        # The terminal event is the provider's last: it goes on once the stream has ended, so that it is
        # settled from the provider's usage (a stream still open is metered as one cut short).
        kind, payload, response = terminal
        if kind == "response.failed":  # the provider's own failure: its status in the ledger and metrics, its breaker
            said = said_failure(response.get("error"))
            stream.failed(said.status, said)
            redact_error(response.get("error"))  # (before it is kept, or sent)
        await stream.complete()
        # An answer that does not fit its enforced schema ends as a stream that fails does (`error`, and a
        # `response.failed` in place of its terminal event); the provider's own failure goes on as it sent it.
        if stream.schema_violation is not None and kind != "response.failed":
            from handler.pipeline.schema_check import violated

            raise violated(stream.schema_violation)
        relay.finish(response)
        await on_finished(response)  # (a failed one too: kept as the client is told it)
        yield sse_event(kind, payload)

    async def failed(exc: GatewayError) -> bytes:
        error, response = _failed(exc, progress)
        relay.finish(response)  # (settled before, `guarded`: its cost is the ledger line's)
        cost = stream.ex.cost
        if cost is not None:
            response["usage"] = response_usage(cost.usage)
        if isinstance(response.get("id"), str):
            await on_finished(response)
        else:  # (a stream that began without its `response.created`: no id to keep it by)
            response["store"] = False
        closing = {"type": "response.failed", "sequence_number": progress.next(), "response": response}
        return error + sse_event("response.failed", closing)

    return guarded(stream, events(), failed)


def said_failure(error: Any) -> GatewayError:
    """A provider's error object in a 200 stream (a `response.failed`'s `error`, an `error` event's words) as the
    client's error, as the same error answered with the status its code or type names (`said_status`) is
    (`answered_as`): a rate limit a 429; a request the provider refused a 400 (OpenAI's `invalid_prompt`, a
    `context_length_exceeded`, not a 502); any other failure the provider's (502): its overload, its refusal of
    the deployment's account (`insufficient_quota`, a 429 by its status alone)."""
    said = error if isinstance(error, dict) else {}
    kind = said.get("type")
    failure = upstream_error(
        said_status(said),
        str(said.get("message") or ""),
        {},
        upstream_type=kind if isinstance(kind, str) else None,
        code=said.get("code"),
        param=said.get("param"),
    )
    return answered_as(failure)


def placed(part: Any) -> bool:
    """An output text part as the client's: its log probabilities (`include: ["message.output_text.logprobs"]`)
    redacted as its text is (`tokens_redacted`); with annotations, whose positions are in its text as the provider
    wrote it, the text redacted now (as `scrub` would write it) and the positions moved to where they are in it
    (`annotated`). Whether it changed. (Once: a part that passes here again, a stream's that broke off, has no
    secret left to move them past.)"""
    if not isinstance(part, dict):
        return False
    changed = tokens_redacted(part.get("logprobs"))
    if not part.get("annotations") or not isinstance(part.get("text"), str):
        return changed
    text = annotated(part["text"], part["annotations"])
    if text is None:
        return changed
    part["text"] = text
    return True


class _Progress:
    """What the client was sent of a stream: the last `sequence_number` (the gateway's own closing events number
    on from it), the response in progress as the provider last gave it (its closing `response.failed` is that
    response's: the OpenAI SDK's stream helper raises "Lifecycle response identity changed" at one of another id),
    and its output items as far as they were streamed (`StreamedOutput`)."""

    def __init__(self) -> None:
        self.last = -1
        self.response: dict[str, Any] | None = None
        self.output = StreamedOutput()
        # Where secrets were redacted from an output text so far, by output and content index: each one's start and
        # length in the text as the provider wrote it (`redactions`), for its annotations' positions (`placed`).
        self.secrets: dict[tuple[int, int], list[tuple[int, int]]] = {}
        self.said: dict[str, Any] | None = None  # the provider's words in the last `error` event it sent, redacted
        self.ended_by: GatewayError | None = None  # the stream's failure, where it is that error (`said_failure`)

    def next(self) -> int:
        self.last += 1
        return self.last

    def redacted(self, delta: dict[str, Any], secrets: list[tuple[int, int]]) -> None:
        """An output text's delta the gateway wrote again, and where the secrets it redacted were in what the
        provider wrote of it (`EventRedactor.placed`), before the client's text so far has it (`output`)."""
        index, part = delta.get("output_index"), delta.get("content_index")
        if not isinstance(index, int) or not isinstance(part, int):
            return
        known = self.secrets.setdefault((index, part), [])
        pieces = self.output.pieces.get((index, "content", part, "text"), ())
        said = sum(map(len, pieces)) + sum(length - len(REDACTED) for _, length in known)  # (the provider's so far)
        known += [(said + start, length) for start, length in secrets]

    def text_out(self, kind: str, payload: dict[str, Any]) -> bool:
        """An event of an output text (`TEXT_EVENTS`) as the client's: an annotation added, its positions moved
        (`placed`); a part done (`placed`, the function); the text done, its log probabilities redacted as its text is
        (`tokens_redacted`). Whether it changed."""
        if kind == ANNOTATION_ADDED:
            return self.placed(payload)
        if kind == PART_DONE:
            return placed(payload.get("part"))
        return tokens_redacted(payload.get("logprobs"))

    def placed(self, added: dict[str, Any]) -> bool:
        """An annotation added to an output text, its positions (in the text as the provider wrote it) moved to
        where they are in the client's, if a secret was redacted before them; whether it changed."""
        index, part = added.get("output_index"), added.get("content_index")
        secrets = self.secrets.get((index, part)) if isinstance(index, int) and isinstance(part, int) else None
        return secrets is not None and positions_moved(added.get("annotation"), secrets)


# The events that build a Responses stream's output items, and what each delta adds to (the member of the item, the
# list of its parts that holds it, and which of those parts the event names).
DELTAS = {
    "response.output_text.delta": ("content", "content_index", "text"),
    "response.refusal.delta": ("content", "content_index", "refusal"),
    "response.reasoning_summary_text.delta": ("summary", "summary_index", "text"),
    "response.reasoning_text.delta": ("content", "content_index", "text"),
    "response.function_call_arguments.delta": ("", "", "arguments"),
    "response.custom_tool_call_input.delta": ("", "", "input"),
}
PARTS = {
    "response.content_part.added": ("content", "content_index"),
    "response.content_part.done": ("content", "content_index"),
    "response.reasoning_summary_part.added": ("summary", "summary_index"),
    "response.reasoning_summary_part.done": ("summary", "summary_index"),
}
OUTPUT_EVENTS = frozenset({*ITEM_EVENTS, *DELTAS, *PARTS})


class StreamedOutput:
    """A passed-through Responses stream's output items as far as the client was sent them, built from its events as
    a client's stream helper builds them: what a `response.failed` the gateway writes when the stream breaks off
    carries (the provider's `response.created` had none). Deltas are kept as pieces, joined only then."""

    def __init__(self) -> None:
        self.items: dict[int, dict[str, Any]] = {}
        self.done: set[int] = set()
        # What the deltas of an item still open added: by output index, item member, part index, part member.
        self.pieces: dict[tuple[int, str, int, str], list[str]] = {}

    def feed(self, kind: str, payload: dict[str, Any]) -> None:
        index = payload.get("output_index")
        if not isinstance(index, int):
            return
        delta = DELTAS.get(kind)
        if delta is not None:
            where, position, member = delta
            text, at = payload.get("delta"), payload.get(position, 0) if position else 0
            if isinstance(text, str) and isinstance(at, int):
                self.pieces.setdefault((index, where, at, member), []).append(text)
        elif kind in PARTS:
            self._part(index, kind, payload)
        elif isinstance(item := payload.get("item"), dict):
            if kind == "response.output_item.done":
                self.items[index] = item
                self.done.add(index)
                return
            lists = {name: list(item[name]) for name in ("content", "summary") if isinstance(item.get(name), list)}
            self.items[index] = {**item, **lists}

    def _part(self, index: int, kind: str, payload: dict[str, Any]) -> None:
        """A content (or summary) part added to an open item, or done (whole: what its deltas added is in it)."""
        where, position = PARTS[kind]
        item, at, part = self.items.get(index), payload.get(position), payload.get("part")
        parts = item.get(where) if item is not None and index not in self.done else None
        if (
            not isinstance(parts, list)
            or not isinstance(at, int)
            or not isinstance(part, dict)
            or not 0 <= at <= len(parts)
        ):
            return
        parts[at : at + 1] = [part]
        if kind.endswith(".done"):
            for member in ("text", "refusal"):
                self.pieces.pop((index, where, at, member), None)

    def items_so_far(self) -> list[dict[str, Any]]:
        """The items in output order: those done as they were, one still open with what was streamed of it and
        `status: incomplete`."""
        out = []
        for index in sorted(self.items):
            item = self.items[index]
            if index not in self.done:
                item = {**item, "status": "incomplete"}
                for (of, where, at, member), pieces in self.pieces.items():
                    if of != index:
                        continue
                    if not where:
                        item[member] = str(item.get(member) or "") + "".join(pieces)
                        continue
                    parts = item.get(where)
                    if isinstance(parts, list) and 0 <= at < len(parts) and isinstance(parts[at], dict):
                        item[where] = parts = list(parts)
                        parts[at] = {**parts[at], member: str(parts[at].get(member) or "") + "".join(pieces)}
            out.append(item)
        return out


def _failed(exc: GatewayError, progress: _Progress) -> tuple[bytes, dict[str, Any]]:
    """The Responses API's way to end a stream that failed: an `error` event, then `response.failed` (of the
    response begun, its id, model and creation time as the provider gave them; its output items as far as they were
    streamed, `StreamedOutput`). The `error` event, and the failed response. Where the failure is the provider's own
    `error` event (`_Progress.ended_by`), the client has that event already: the failed response has its words
    (redacted), and no second `error` event, in the gateway's words, goes before it."""
    response: dict[str, Any] = {"id": None, **(progress.response or {})}
    said = progress.said
    if exc is progress.ended_by and said is not None:
        failed = {"code": said.get("code"), "message": said.get("message")}
        event = b""
    else:
        failed = {"code": exc.code, "message": exc.message}
        error = {"type": "error", "sequence_number": progress.next(), **failed, "param": exc.param}
        event = sse_event("error", error)
    response |= {"object": "response", "status": "failed", "error": failed, "output": progress.output.items_so_far()}
    return event, response
