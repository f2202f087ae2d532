"""Any OpenAI-compatible Chat Completions API: OpenAI, DeepSeek, Mistral, Groq, Together, xAI, vLLM, ...

The request is the client's body with the upstream model substituted and the profile's parameter
table applied; unknown fields pass through, since an OpenAI-compatible API is the one place they mean
something.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from adapters.providers import reasoning
from adapters.providers.model_rules import rules_for
from adapters.providers.openai.profiles import PROFILES, REPEATS, Profile, profile_for
from adapters.providers.params import (
    IMAGE_DETAIL,
    SKIP_SIGNATURE,
    ToolNames,
    apply_rules,
    asks,
    call_signature,
    chosen_tools,
    returned_media_label,
    sent_by,
    signed_call_id,
    unsent_part_fields,
    wire_call_id,
)
from handler import schemas
from handler.call_ids import MAX_CALL_ID, claude_takes, shorten_message_call_ids
from handler.config import SERVICE_TIER
from handler.errors import InvalidRequestError, UpstreamError
from handler.ports import RESPONSES_API, BuiltRequest, NativeCall, ProviderAdapter, Served, Target, UpstreamRequest
from handler.schemas import (
    CHAT_COUNTS,
    DOCUMENT,
    LATER_MODULES,
    ChatCompletion,
    ChatRequest,
    PlainCompletion,
    PromptTokensDetails,
    Usage,
    completion_id,
    reported,
)
from handler.wire import (
    StreamEvent,
    error_excerpt,
    json_body,
    malformed,
    said_status,
    unsent_routing,
    upstream_error,
    usage_count,
)

M = TypeVar("M", bound=BaseModel)
# The Responses API's wire (adapters/providers/openai/responses.py) is imported with the first Responses request
# passed through: a cold start serving Chat Completions imports none of it. A server's start-up and a snapshot do.
LATER_MODULES.add("adapters.providers.openai.responses")
LATER_MODULES.add("adapters.providers.prefill")  # (a Messages client's prefill's: on first use)


if TYPE_CHECKING:
    from adapters.providers.openai.responses import ResponsesMeter
    from adapters.providers.prefill import RepeatedPrefix
    from handler.schemas import (
        ChatCompletionChunk,
        EmbeddingsRequest,
        EmbeddingsResponse,
        ToolCall,
        ToolCallDelta,
    )


def error_from_body(status: int, body: bytes, headers: Mapping[str, str], note: str = "") -> UpstreamError:
    """OpenAI's error body `{"error": {"message", "type", "param", "code"}}`, tolerating variants; `note`, the
    gateway's own words, follows the provider's."""
    message, kind, code, param = "", None, None, None
    try:
        data = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, list) and data:
        data = data[0]
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict):
            message = readable(error.get("message") or error.get("detail"))
            raw_type = error.get("type") or error.get("code")
            kind = str(raw_type) if raw_type else None
            code, param = error.get("code"), error.get("param")
        elif isinstance(error, str):
            message = error
    if not message:
        message = error_excerpt(body)
    return upstream_error(status, message, headers, upstream_type=kind, code=code, param=param, note=note)


def answered_error(data: Any) -> UpstreamError | None:
    """A 200 answer that is an error object alone, `{"error": {...}}` or Mistral's `{"object": "error", ...}`, read
    as the provider's error answer (None for anything else). OpenRouter answers so an error once the model started,
    whole or streamed ("Errors and Debugging"), the status it would have given in `error.code` (its 502 "Provider
    returned error"); one that names no error status is the status its code or type names (`said_status`: a
    `rate_limit_exceeded` a 429), else a 500. Read as an answer, it would be the provider's
    malformed success: its words lost ("upstream answered without choices") and the request charged its worst case
    for an answer nobody billed. (The caller has found the member its API's answer holds missing: `choices`, `data`, a
    Responses `response`.)"""
    if not isinstance(data, dict):
        return None
    error = data.get("error")
    if not isinstance(error, (dict, str)) and data.get("object") != "error":
        return None
    return error_from_body(said_status(data), orjson.dumps(data), {})


def readable(said: Any) -> str:
    """A provider's error message as words: a string as it came; a validation error's problems (Mistral's 422,
    `{"detail": [{"loc": ["body", "foo"], "msg": "Extra inputs are not permitted", ...}]}`, FastAPI's shape) as
    `body.foo: Extra inputs are not permitted`, joined by "; "; anything else as JSON. Mistral's 422 reached the
    client as a Python repr of that object (`{'detail': [{'type': 'extra_forbidden', ...`)."""
    if isinstance(said, str):
        return said
    if said is None:
        return ""
    if isinstance(said, dict):
        if "detail" in said or "message" in said:
            return readable(said.get("detail") or said.get("message"))
        if isinstance(said.get("msg"), str):
            loc = said.get("loc")
            where = ".".join(str(part) for part in loc) if isinstance(loc, list) and loc else ""
            return f"{where}: {said['msg']}" if where else str(said["msg"])
    if isinstance(said, list) and said:
        return "; ".join(readable(item) for item in said)
    return orjson.dumps(said).decode()


# A server that refuses `stream_options` (a strict compatible one: vLLM with its extra fields forbidden) answers every
# stream 400, naming it: the request was the gateway's, and the fix is the provider's option, so its error says so.
STREAM_OPTIONS_REFUSED = (
    " (the gateway asks for a stream's usage with `stream_options`, which this server refuses: set "
    "`stream_usage: false` on provider '{name}' in the gateway's configuration)"
)


def normalize_usage(usage: Usage | None) -> Usage | None:
    """Fold provider variants into the gateway's usage: DeepSeek reports cache hits as
    `prompt_cache_hit_tokens` rather than `prompt_tokens_details.cached_tokens`, xAI a reasoning model's reasoning
    beside `completion_tokens` rather than in it. The counts the gateway bills that
    `Usage` does not declare (those, and the details' `audio_tokens`) are read as its declared ones are: one that
    is not a plain integer makes the answer malformed (`usage_count`), not read as 0."""
    if usage is None:
        return usage
    for details in (usage.prompt_tokens_details, usage.completion_tokens_details):
        if details is not None and details.model_extra:
            usage_count(details.model_extra, "audio_tokens")
    reasoning = usage.reasoning_tokens
    if reasoning and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens + reasoning:
        # xAI counts a reasoning model's reasoning beside `completion_tokens`, not in it (its total has both), and
        # bills it at the output price: grok-3-mini's 386 reasoning tokens were charged as none, its answer at 1
        # output token, $0.000014 where xAI bills $0.000786. Read as OpenAI counts it, in the completion.
        usage.completion_tokens += reasoning
    if not usage.model_extra:
        return usage
    hits = usage_count(usage.model_extra, "prompt_cache_hit_tokens")
    if hits and not usage.cached_tokens:
        details = usage.prompt_tokens_details or PromptTokensDetails()
        details.cached_tokens = hits
        usage.prompt_tokens_details = details
    return usage


# OpenAI's finish reasons; and those other OpenAI-compatible APIs document, in OpenAI's words. Mistral's
# `model_length` (the context is full) and `error` (generation failed part way) and DeepSeek's
# `insufficient_system_resource` (cut for want of capacity) each end an answer short of what it would have been.
OPENAI_FINISHES = frozenset(("stop", "length", "tool_calls", "content_filter", "function_call"))
CUT_SHORT = frozenset(("model_length", "error", "insufficient_system_resource", "abort"))  # (vLLM's `abort`)


# The members `plain_completion` takes: an answer's, its choices' and their messages' (`annotations` only empty).
PLAIN_ANSWER = frozenset(("id", "object", "created", "model", "choices", "usage", "system_fingerprint", "service_tier"))
PLAIN_CHOICE = frozenset(("index", "message", "logprobs", "finish_reason"))
PLAIN_REPLY = frozenset(("role", "content", "refusal", "annotations"))
PLAIN_USAGE = frozenset(
    ("prompt_tokens", "completion_tokens", "total_tokens", "prompt_tokens_details", "completion_tokens_details")
)


def plain_completion(data: dict[str, Any]) -> PlainCompletion | None:
    """An answer `data` as a `PlainCompletion`, where it has the plain shape: of `PLAIN_ANSWER`'s members, each of the
    kind `ChatCompletion` takes (`object` `chat.completion`, an integer `created`, strings for `id`, `model` and
    `system_fingerprint`, a string or null `service_tier`), choices of `PLAIN_CHOICE`'s members (an integer `index`,
    one of OpenAI's finish reasons or null, null log probabilities) whose messages are an assistant's text or refusal
    (`PLAIN_REPLY`), and a usage of `PLAIN_USAGE`'s members that gives its counts (`reported`) and validates, as
    `normalize_usage` reads it. None for any other: it is validated as the model (`OpenAIAdapter._completion`), which
    conforms, refuses or reads what this does not."""
    if not data.keys() <= PLAIN_ANSWER or data.get("object", "chat.completion") != "chat.completion":
        return None
    answer_id, created, model = data.get("id"), data.get("created"), data.get("model")
    if type(answer_id) is not str or type(created) is not int or type(model) is not str:
        return None
    choices = data["choices"]
    if type(choices) is not list:
        return None
    written = []
    for choice in choices:
        if type(choice) is not dict or not choice.keys() <= PLAIN_CHOICE or choice.get("logprobs") is not None:
            return None
        index, finish, message = choice.get("index", 0), choice.get("finish_reason"), choice.get("message")
        if type(index) is not int or not (finish is None or finish in OPENAI_FINISHES):
            return None
        if type(message) is not dict or not message.keys() <= PLAIN_REPLY or message.get("annotations", []) != []:
            return None
        content, refusal = message.get("content"), message.get("refusal")
        if message.get("role", "assistant") != "assistant" or not (content is None or type(content) is str):
            return None
        if not (refusal is None or type(refusal) is str):
            return None
        reply: dict[str, Any] = {"role": "assistant", "content": content, "refusal": refusal}
        if "annotations" in message:
            reply["annotations"] = []
        written.append({"index": index, "message": reply, "finish_reason": finish, "logprobs": None})
    counts = data.get("usage")
    if type(counts) is not dict or not counts.keys() <= PLAIN_USAGE or not reported(counts, *CHAT_COUNTS):
        return None
    try:
        usage = normalize_usage(Usage.model_validate(counts))
    except (ValidationError, UpstreamError):
        return None
    assert usage is not None
    tail: dict[str, Any] = {}
    fingerprint = data.get("system_fingerprint")
    if fingerprint is not None:
        if type(fingerprint) is not str:
            return None
        tail["system_fingerprint"] = fingerprint
    if "service_tier" in data:
        tier = data["service_tier"]
        if not (tier is None or type(tier) is str):
            return None
        tail["service_tier"] = tier
    head = {"id": answer_id, "object": "chat.completion", "created": created, "model": model}
    return PlainCompletion(data, head, written, tail, usage)


def validated(model: type[M], payload: Any, head: dict[str, Any], upstream_model: str) -> M:
    """`payload` as `model` (an answer or a chunk), with any finish reason outside OpenAI's put in its words: a
    documented value of another API (Mistral's `model_length`) refused the answer as malformed, after the
    provider had billed it, and sent the request to a fallback to be billed again; and an `id`, `created` or `model`
    a compatible server left out (or sent as null, `created` as a float) filled in (`_conform_head`). Only an answer
    that fails validation is looked at again: on the hot path, OpenAI's own are validated once."""
    try:
        return model.model_validate(payload)
    except ValidationError:
        finishes = _conform_finishes(payload)
        if not (_conform_head(payload, head, upstream_model) or finishes):
            raise
        return model.model_validate(payload)


def _conform_head(payload: Any, head: dict[str, Any], upstream_model: str) -> bool:
    """Fill in (in place) the members of an answer's (or a chunk's) head OpenAI's schema requires and a compatible
    server may leave out (`id`, `created`, `model`: llama.cpp's and other servers' answers lack some, or give `created`
    as a float): each missing or null one from `head`, made on first use (an id of OpenAI's form, the time, the
    deployment's model: one for every chunk of a stream, which a client joins by its id), a float `created` as its
    whole seconds. Whether any was. A client reads them all (the OpenAI SDK's models require them); left out, the
    answer would be a 502, its usage unbilled."""
    if not isinstance(payload, dict):
        return False
    changed = False
    for name, kind in (("id", str), ("model", str), ("created", int)):
        value = payload.get(name)
        if isinstance(value, kind) and not isinstance(value, bool):
            continue
        if name == "created" and isinstance(value, float) and value == value and abs(value) < 1e15:
            payload[name] = int(value)
        else:
            if not head:
                head.update(id=completion_id(), created=int(time.time()), model=upstream_model)
            payload[name] = head[name]
        changed = True
    return changed


def billed_unusable(payload: Any, exc: ValidationError, what: str) -> UpstreamError:
    """The error of an answer (or a stream event) that does not read as OpenAI's even conformed, carrying the usage
    it reports, which the provider billed: charged on the request's line, as Bedrock's malformed answers are. A
    usage without its input or output count (null or left out) carries none (`schemas.reported`), and the answer is
    charged as a malformed one without usage is, its reserved worst case: read as 0, `{"completion_tokens": 5}`
    would be charged 0 tokens in as the provider's count."""
    error = malformed(f"the provider sent a malformed {what} ({type(exc).__name__})")
    error.__cause__ = exc
    raw = payload.get("usage") if isinstance(payload, dict) else None
    if schemas.reported(raw, *schemas.CHAT_COUNTS):
        try:
            error.billed = normalize_usage(Usage.model_validate(raw))
        except ValueError:  # (a usage it cannot read either: pydantic's ValidationError, `usage_count`'s)
            pass
    return error


def _conform_finishes(payload: Any) -> bool:
    """Put each choice's finish reason outside OpenAI's in its words (in place): `length` for one that cut the
    answer short, `stop` for any other; whether any was."""
    choices = payload.get("choices") if isinstance(payload, dict) else None
    changed = False
    for choice in choices if isinstance(choices, list) else ():
        reason = choice.get("finish_reason") if isinstance(choice, dict) else None
        if isinstance(reason, str) and reason not in OPENAI_FINISHES:
            choice["finish_reason"] = "length" if reason in CUT_SHORT else "stop"
            changed = True
    return changed


# What a Chat Completions part carries of the gateway's part fields (`params.unsent_part_fields`): an image's
# `detail`, and a document's title as its file's `filename`; a document's `context` and `citations` have no field.
CARRIED = frozenset({IMAGE_DETAIL, "file.filename"})
# The file name a file sent without one gets (`_name_file`), by its media type.
FILE_EXTENSIONS = {"application/pdf": ".pdf", "text/plain": ".txt", "text/csv": ".csv", "text/markdown": ".md"}


def conform_messages(messages: list[dict[str, Any]], profile: Profile) -> None:
    """Rename roles the API does not know and leave out tool-call fields it refuses (in place); refuse, as
    the client's 400, a role or content part the API has no equivalent for."""
    for message in messages:
        if message["role"] in profile.refused_roles:
            raise InvalidRequestError(f"this provider does not take '{message['role']}' messages", param="messages")
        message["role"] = profile.roles.get(message["role"], message["role"])
        if profile.part_types is not None and isinstance(message.get("content"), list):
            for part in message["content"]:
                if part.get("type") not in profile.part_types:
                    raise InvalidRequestError(
                        f"content part '{part.get('type')}' is not supported by this provider", param="messages"
                    )
        for call in message.get("tool_calls") or ():
            for name in profile.strip_tool_call_fields:
                call.pop(name, None)


def signed_calls(messages: list[dict[str, Any]], model: str) -> None:
    """Each tool call's thought signature as Gemini's OpenAI-compatible endpoint reads it back (its
    `extra_content.google.thought_signature`), in place: the one a client sent there, else the one the call's id
    carries (`params.signed_call_id`: the gateway hands Gemini's signatures out so, from this endpoint and from
    Gemini's own API, and a client that keeps Chat Completions' fields alone, or a Messages or Responses client, sends
    them back so). The id goes as Gemini gave it, without the signature, in the call and in its result alike
    (`params.wire_call_id`, as the Gemini adapter sends it). An empty signature a client sent is no signature, and is
    left out (Gemini refuses `""`, "Corrupted thought signature."); a model that signs its calls (Gemini 3) gets its
    documented stand-in on a turn's first call that carries none, which it would refuse unsigned. As the Gemini
    adapter sends a call (`gemini.adapter.given_signature`): a conversation that moves from one to the other (a
    fallback, a routing rule, a client switching deployment) keeps its signatures, where the stand-in went in their
    place and Gemini lost its reasoning."""
    stand_in = rules_for(model).signed_function_calls
    for message in messages:
        answered = message.get("tool_call_id")
        if isinstance(answered, str):
            message["tool_call_id"] = wire_call_id(answered) or answered
        for position, call in enumerate(message.get("tool_calls") or ()):
            call_id = call.get("id")
            carried = call_signature(call_id) if isinstance(call_id, str) else None
            if isinstance(call_id, str):
                call["id"] = wire_call_id(call_id) or call_id  # (an id that is all signature goes whole, as its result)
            extra = call.get("extra_content") or {}
            google = extra.get("google", {})
            if not isinstance(google, dict):
                continue  # (not Gemini's shape: as the client sent it, for the endpoint to judge)
            if google.get("thought_signature") == "":
                del google["thought_signature"]
            if carried is not None and "thought_signature" not in google:
                google["thought_signature"] = carried
            if stand_in and position == 0 and "thought_signature" not in google:
                google["thought_signature"] = SKIP_SIGNATURE
            extra = {name: value for name, value in extra.items() if name != "google"}
            if google:
                extra["google"] = google
            if extra:
                call["extra_content"] = extra
            else:
                call.pop("extra_content", None)


def signature_in_id(call: ToolCall | ToolCallDelta) -> None:
    """The call's id carrying the thought signature Gemini's OpenAI-compatible endpoint gave in its `extra_content`
    (`params.signed_call_id`), in place, as the Gemini adapter hands Gemini's out: a client that keeps Chat
    Completions' fields alone, or a Messages or Responses client (whose APIs have no `extra_content`), sends it back
    so, to either way of reaching Gemini (`signed_calls`). The `extra_content` stays, where Google's documents tell
    a client to look. A signature that would not come back from the id as it was (not standard base64, which is how
    Gemini writes its signatures' bytes) stays there alone: sent back altered, Gemini would refuse it, where the
    stand-in passes. A streamed call's id comes on its first delta; a signature on a later one stays in
    `extra_content` alone (Gemini's endpoint streams a call whole, in one delta)."""
    signature = thought_signature(call)
    if not call.id or signature is None:
        return
    signed = signed_call_id(call.id, signature)
    if call_signature(signed) == signature:
        call.id = signed


def thought_signature(call: ToolCall | ToolCallDelta) -> str | None:
    """The thought signature Gemini's OpenAI-compatible endpoint gave a call in its `extra_content`, if any."""
    google = (call.extra_content or {}).get("google")
    signature = google.get("thought_signature") if isinstance(google, dict) else None
    return signature if isinstance(signature, str) and signature else None


def late_signatures(chunk: ChatCompletionChunk) -> dict[tuple[int, int], dict[str, Any]]:
    """The `extra_content` of `chunk`'s deltas that carry a thought signature for a call begun before (no id of
    their own), by choice and call index, each taken out of its delta (a delta left with nothing else goes)."""
    late: dict[tuple[int, int], dict[str, Any]] = {}
    for choice in chunk.choices:
        calls = choice.delta.tool_calls
        for call in list(calls or ()):
            if call.id or thought_signature(call) is None:
                continue
            late[(choice.index, call.index)] = call.extra_content  # type: ignore[assignment]
            call.extra_content = None
            if call.function is None and call.type is None and not call.model_extra:
                calls.remove(call)  # type: ignore[union-attr]
        if calls == []:
            choice.delta.tool_calls = None
    return late


# The calls of a choice whose ids are kept for a later delta without `index` (`OpenAIStreamParser.calls`): a server's
# `index` past it (or below 0) is relayed as it came, not kept (a list the size of `index: 10**9` was not made).
MAX_CALLS = 1024


class OpenAIStreamParser:
    """Chunks are already in the gateway's form; this validates them and keeps the usage. A compatible API that
    differs in a chunk's shape overrides `conformed`. `model`, the deployment's, heads the chunks of a server that
    names none."""

    served: Served | None = None  # (the service tier it ran at is on its chunks, read from there)
    opening_usage: Usage | None = None  # (its usage comes at the end, or on every chunk as `usage`)
    searches = 0  # (no search of a translation runs at a Chat Completions API)

    def __init__(
        self, model: str, repeated: str | None = None, names: ToolNames | None = None, signed: bool = False
    ) -> None:
        self.usage: Usage | None = None
        self.names = names  # a request with tools: its calls' names as the client gave them (`ToolNames.client`)
        self.signed = signed  # its calls' thought signatures ride in their ids too (`Profile.signed_calls`)
        # A call begun without one waits for the next chunk, which may bring it (`_signed_late`): Gemini 3's and
        # 2.5's alike (2.5 signs its calls where it thinks, though it takes them back unsigned).
        self.waits = signed
        self.ended = False  # `[DONE]` came: the stream is whole, with or without a finish reason
        # A Messages client's prefill the answer repeats (`Profile.prefix`), taken off its text.
        self.repeated: RepeatedPrefix | None = None
        if repeated:
            from adapters.providers.prefill import RepeatedPrefix  # (a prefill's: on first use)

            self.repeated = RepeatedPrefix(repeated)
        self.model = model
        self.head: dict[str, Any] = {}  # what the chunks of a server that leaves their head out get (`_conform_head`)
        self.calls: dict[Any, list[str | None]] = {}  # a server's calls streamed without `index` (`_indexed_calls`)
        self.held: ChatCompletionChunk | None = None  # a call begun with no signature, its next chunk awaited
        # A server that opens every answer `content: ""`, a tool call's too (Mistral's, Ollama's: not OpenAI's, which
        # opens a call with `null`): its empty contents are `null` until a choice's first text (`_opened`).
        self.opens_empty = False
        self.untexted: set[int] = set()  # the choices with no text yet
        self.blank: set[int] = set()  # those of them with no call or refusal either (an answer of nothing, so far)

    def feed(self, event: StreamEvent) -> list[ChatCompletionChunk]:
        data = event.data
        if data == b"[DONE]":
            self.ended = True
            return []
        if not data:
            return []
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise malformed("upstream sent a stream event that is not JSON", "invalid_json") from exc
        # A server's failure part way: `{"error": {...}}`, as OpenAI-compatible servers and proxies write it, or the
        # error object itself, `{"object": "error", "message", "type", "code"}`, as Mistral writes its errors (read as
        # a chunk, it would be a malformed one: the provider's words lost, the request charged its worst case); or a
        # chunk with its `error` beside a choice it finished (`finish_reason: "error"`), as OpenRouter writes an error
        # once the model started ("Errors and Debugging"): read as a chunk, its `error` would go to the client as the
        # provider wrote it (the operator's organisation and key quoted back in it), its finish reason as `length`,
        # and its line be a 200. (Every chunk pays one look more, `"error" in payload`, beside the one for its choices:
        # some 15 ns of the 5 to 7 µs it takes here.)
        if isinstance(payload, dict) and ("choices" not in payload or "error" in payload):
            if "choices" in payload:
                failed = bool(payload["error"])  # (an `"error": null` beside the choices says there was none)
            else:
                failed = "error" in payload or payload.get("object") == "error"
            if failed:  # (at the status its code or type names: a rate limit is a 429 here as in an answer's status)
                raise error_from_body(said_status(payload), data, {})
        payload = self.conformed(payload)
        if self.head:  # (a server that left it out of one chunk leaves it out of the next)
            _conform_head(payload, self.head, self.model)
        try:
            chunk = validated(schemas.ChatCompletionChunk, payload, self.head, self.model)
        except ValidationError as exc:
            try:  # (a call with no `index`: numbered here, and read again; a chunk that reads is never looked at)
                if not self._indexed_calls(payload):
                    raise
                chunk = validated(schemas.ChatCompletionChunk, payload, self.head, self.model)
            except ValidationError:
                unusable = billed_unusable(payload, exc, "stream event")
                self.usage = unusable.billed or self.usage  # (a stream already begun is charged it as it ends)
                raise unusable from exc
        if chunk.usage is not None:
            self.usage = normalize_usage(chunk.usage)
        if self.repeated is not None:
            self.repeated.strip(chunk)
        if (self.names is not None or self.signed) and chunk.choices:
            for choice in chunk.choices:
                for call in choice.delta.tool_calls or ():
                    if call.id and 0 <= call.index < MAX_CALLS:  # (a call begun, for a later delta without `index`)
                        begun = self.calls.setdefault(choice.index, [])
                        if call.index >= len(begun):
                            begun += [None] * (call.index + 1 - len(begun))
                        begun[call.index] = begun[call.index] or call.id
                    if self.names is not None and call.function is not None and call.function.name:
                        call.function.name = self.names.client(call.function.name)
                    if self.signed:
                        signature_in_id(call)
        if self.opens_empty:
            self._opened(chunk)
        if self.waits:
            return self._signed_late(chunk)
        return [chunk]

    def finish(self) -> list[ChatCompletionChunk]:
        return self.held_back()

    def held_back(self) -> list[ChatCompletionChunk]:
        """The chunk held for the next (`_signed_late`), handed out: at the stream's end, or before its error (the
        call the provider began, and billed, goes to the client before the error that ended the stream)."""
        held, self.held = self.held, None
        return [held] if held is not None else []

    def _opened(self, chunk: ChatCompletionChunk) -> None:
        """`chunk`, from a server that opens every answer with `content: ""` and may write `""` beside or after its
        calls, in place: an empty `content` of a choice with no text yet is written `null`, as OpenAI opens a call;
        and a choice that ends with no text, call or refusal ends `""`, as its whole answer has it (and OpenAI's).
        Relayed as they came, a tool-only answer reached a Chat client with `content: ""`, whole and streamed (the
        SDK's stream helper fired `content.delta` and finished with `""`), where OpenAI's, and every translated one,
        has None. (The opening goes at once: held until the next chunk said what came first, a stream whose model
        thought for a minute had sent nothing, and its deadline or a stall was taken for no answer at all, charged its
        worst case.)"""
        from handler.chunks import SENT_NULL  # (made with the stream's first chunk: `handler.schemas.LATER`)

        for choice in chunk.choices:
            delta, index = choice.delta, choice.index
            if delta.content == "":  # (`""`, or null as sent: `SENT_NULL`)
                if index in self.untexted or delta.role is not None or delta.tool_calls:
                    if index not in self.untexted and not delta.tool_calls and not delta.refusal:
                        self.blank.add(index)
                    delta.content = SENT_NULL
                    self.untexted.add(index)
            elif delta.content:
                self.untexted.discard(index)
                self.blank.discard(index)
            if delta.tool_calls or delta.refusal or (delta.model_extra and delta.model_extra.get("audio")):
                self.blank.discard(index)  # (an answer of a call, a refusal or audio: its content stays null)
            if choice.finish_reason and index in self.blank:
                self.blank.discard(index)
                delta.content = ""  # (an answer of nothing)

    def _signed_late(self, chunk: ChatCompletionChunk) -> list[ChatCompletionChunk]:
        """The chunks to relay once `chunk` is read, where calls carry their thought signatures (`signed`): a chunk
        that begins a call with no signature is held until the next one, whose delta of the same call may bring it
        (Gemini's OpenAI-compatible endpoint may give a signature in a delta of its own after its call's): then it
        goes into the held call's id and `extra_content` and out of the late delta (a Chat client's stream helpers
        join a string given twice into one), as if it had come with the call. A Messages or Responses client's call
        takes its id from the call's first delta, and without the signature, Gemini 3 was sent Google's stand-in on
        the next turn and went on without the reasoning behind the call."""
        held, self.held = self.held, None
        if held is not None:
            late = late_signatures(chunk)
            for choice in held.choices if late else ():
                for call in choice.delta.tool_calls or ():
                    extra = late.get((choice.index, call.index))
                    if extra is not None and call.id and thought_signature(call) is None:
                        call.extra_content = {**(call.extra_content or {}), **extra}
                        signature_in_id(call)
        out = [held] if held is not None else []
        for choice in chunk.choices:
            if any(call.id and thought_signature(call) is None for call in choice.delta.tool_calls or ()):
                self.held = chunk
                return out
        out.append(chunk)
        return out

    def conformed(self, payload: Any) -> Any:
        """A chunk's JSON in OpenAI's shape (it is already, from OpenAI)."""
        return payload

    def _indexed_calls(self, payload: Any) -> bool:
        """Number the tool-call deltas of `payload` that have no `index` (or `"index": null`), in place; whether any
        had none. Gemini's OpenAI-compatible endpoint streams each call whole in one delta without one (the gateway's
        `google` profile's host; as openai-python's own stream helpers had to learn), and read as required, every
        streamed tool call from it was a 502. A delta with an id not seen before, or past the first of its chunk,
        begins a call; one with an id seen before is that call's; one with no id goes on with the last call begun
        (per choice, in `calls`: each call's id by its index, None for none; a call begun with its `index` is there
        too, `feed`)."""
        numbered = False
        for choice in payload.get("choices") or () if isinstance(payload, dict) else ():
            delta = choice.get("delta") if isinstance(choice, dict) else None
            deltas = delta.get("tool_calls") if isinstance(delta, dict) else None
            if not isinstance(deltas, list):
                continue
            begun = self.calls.setdefault(choice.get("index", 0), [])
            for position, call in enumerate(deltas):
                if not isinstance(call, dict) or call.get("index") is not None:
                    continue
                call_id = call.get("id") or None
                if call_id is not None and call_id in begun:
                    call["index"] = begun.index(call_id)
                elif call_id is not None or position or not begun:
                    begun.append(call_id)
                    call["index"] = len(begun) - 1
                else:
                    call["index"] = len(begun) - 1
                numbered = True
        return numbered


def unreadable(blocks: Any) -> bool:
    """Whether Claude's thinking blocks hold reasoning no `reasoning_content` carries: a redacted block's (encrypted
    by Claude's safety systems, it has no text)."""
    return isinstance(blocks, list) and any(isinstance(b, dict) and b.get("type") != "thinking" for b in blocks)


def _plain_messages(messages: list[dict[str, Any]], strip: tuple[str, ...], media_after: bool = False) -> list[str]:
    """Leave in the messages only what Chat Completions defines: a Messages client's signed thinking blocks
    are Claude's alone (reported as dropped unless the profile keeps the reasoning text, as DeepSeek's
    does, and they held nothing else: a redacted block's encrypted reasoning); an earlier turn's reasoning text
    (a Chat client's `reasoning_content`, a Responses client's reasoning item) is reported where the profile strips
    it, as OpenAI's own and the generic compatible ones do, and so is OpenRouter's `reasoning_details` where the
    profile strips it (every one but a compatible server's: OpenAI refuses it); prompt-cache markers go too,
    since OpenAI caches prefixes by itself. An assistant turn left with neither content nor a tool call (it was
    all thinking) is an empty answer: the API refuses a null one. A tool message takes text parts only (the API
    refuses an image there): its other parts stay for `media_after_results` where the API takes them in a user
    message (`media_after`, `Profile.media_after_tools`), else are left out and named."""
    dropped: list[str] = []
    for message in messages:
        if message.get("role") == "tool" and isinstance(message.get("content"), list) and not media_after:
            text = [part for part in message["content"] if part.get("type") == "text"]
            dropped += [f"messages.tool.{part.get('type')}" for part in message["content"] if part not in text]
            message["content"] = text or ""
        blocks = message.pop("thinking_blocks", None)
        if blocks and ("reasoning_content" in strip or unreadable(blocks)):
            dropped.append("messages.thinking")
        # (Both, where the message carried both, as a Chat client sends back the Claude turn it was given: each
        # front-end's own names, `handler.ports.CLIENT_NAMES`, fold them into one where its API has one.)
        for name in strip:
            if message.pop(name, None):
                dropped.append(f"messages.{name}")
        calls = message.get("tool_calls") or message.get("function_call")
        if message.get("role") == "assistant" and message.get("content") is None and not calls:
            message["content"] = ""
        if isinstance(message.get("content"), list):
            for part in message["content"]:
                if isinstance(part, dict):
                    part.pop("cache_control", None)
                    part.pop(DOCUMENT, None)
                    if part.get("type") == "file":
                        _name_file(part["file"])
    return list(dict.fromkeys(dropped))


def media_after_results(messages: list[dict[str, Any]], refused: Collection[str] = ()) -> list[str]:
    """Move the parts of each tool message other than text (an image Claude Code's `Read` returned, the `input_image`
    of Codex's `view_image`, a document) into a user message right after the turn's tool messages, each call's
    headed by a text naming it (`params.returned_media_label`), in place. A Chat Completions tool message takes text
    alone ("Image URLs are only allowed for messages with role 'user'"): left out, the image would leave the model told
    the file was read and given an empty result (gpt-4o-mini, Azure). A user message may follow the tool messages,
    and takes images and files. Run on the body as it goes (its ids and names as the API
    sees them). A part of a type the deployment takes in no user message (`refused`: an Azure api-version's lacking,
    `OpenAIAdapter.refused_parts`) is left out, and named in what it returns (`messages.tool.<type>`): moved, it would
    meet the check of the user's parts and make the whole turn the client's 400 (a PDF Claude Code's Read returned, on
    Azure's default api-version). A tool's result never fails the turn that carries it."""
    if not _returns_media(messages):
        return []  # (the usual request: the conversation is not copied, nor its calls' names gathered)
    dropped: list[str] = []
    names: dict[str, str] = {}
    moved: list[dict[str, Any]] = []
    conversation: list[dict[str, Any]] = []
    for message in messages:
        if moved and message.get("role") != "tool":
            conversation.append({"role": "user", "content": moved})
            moved = []
        conversation.append(message)
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            names[str(call.get("id"))] = str(function.get("name") or "")
        content = message.get("content")
        if message.get("role") != "tool" or not isinstance(content, list):
            continue
        media = [part for part in content if part.get("type") != "text"]
        if not media:
            continue
        taken = [part for part in media if part.get("type") not in refused]
        dropped += [f"messages.tool.{part.get('type')}" for part in media if part.get("type") in refused]
        if taken:
            call_id = message.get("tool_call_id")
            moved += [{"type": "text", "text": returned_media_label(names.get(str(call_id)), call_id)}, *taken]
        message["content"] = [part for part in content if part.get("type") == "text"] or ""
    if moved:
        conversation.append({"role": "user", "content": moved})
    messages[:] = conversation
    return list(dict.fromkeys(dropped))


# The assistant message between a tool message and a user message that follows it (`answered_tool_turns`): short,
# not empty (an assistant message needs content or calls), and saying only what happened.
TOOL_RESULTS_READ = "(tool results received)"


def answered_tool_turns(messages: list[dict[str, Any]]) -> None:
    """An assistant message (`TOOL_RESULTS_READ`) before each user message that follows a tool message, in place, for
    an API that takes only an assistant or another tool message there (`Profile.assistant_after_tools`: Mistral, whose
    validator refuses the whole request otherwise, as other clients bridge it: avante.nvim, pi's
    `requiresAssistantAfterToolResult`). A Messages client's tool results with text beside them (Claude Code's, on
    most turns), a Chat client's own `[..., tool, user]`, and the user message carrying what a tool returned besides
    text (`media_after_results`) all reach the model whole, in their order: nothing is left out, so nothing is named.
    A system message after the model has spoken (after an assistant or a tool message, where Mistral refuses it too:
    a Chat client's mid-conversation one, a Responses client's `developer` message, Claude Code's reminders) goes as a
    user message in its place, as Claude Code writes its own reminders for Claude (and Mistral takes a user message
    after a user message): bridged the same way after a tool message."""
    for index in range(1, len(messages)):
        if messages[index].get("role") == "system" and messages[index - 1].get("role") in AFTER_THE_MODEL:
            messages[index] = {**messages[index], "role": "user"}
    for index in range(len(messages) - 1, 0, -1):
        if messages[index - 1].get("role") == "tool" and messages[index].get("role") == "user":
            messages.insert(index, {"role": "assistant", "content": TOOL_RESULTS_READ})


# The messages after which Mistral takes no system message (mistral_common's `_validate_message_order`: a system
# message only after a system or a user one).
AFTER_THE_MODEL = ("assistant", "tool")


def _returns_media(messages: list[dict[str, Any]]) -> bool:
    """Whether a tool's result among `messages` holds a part other than text (`media_after_results`). (A loop, not
    generators: this is on every request, and a conversation of an agent's hundreds of tool results took it 2.5
    times as long as nested `any`.)"""
    for message in messages:
        if message.get("role") == "tool":
            content = message.get("content")
            if isinstance(content, list):
                for part in content:
                    if part.get("type") != "text":
                        return True
    return False


def _name_file(file: dict[str, Any]) -> None:
    """Give a file sent as `file_data` the `filename` OpenAI requires beside it (a Messages document without a
    `title` has none): without it OpenAI answers 400, "Missing required parameter: '...file.file_id'"."""
    data = file.get("file_data")
    if isinstance(data, str) and not file.get("filename"):
        media_type = data[5 : data.find(";")] if data.startswith("data:") else ""
        file["filename"] = "document" + FILE_EXTENSIONS.get(media_type, "")


def openai_takes(name: str) -> bool:
    """Whether OpenAI takes `name` for a function (its FunctionObject: "a-z, A-Z, 0-9, or contain underscores and
    dashes, with a maximum length of 64"). Claude Code's MCP tools run past 64 characters: see `ToolNames`."""
    return len(name) <= MAX_CALL_ID and claude_takes(name)


def tool_names(req: ChatRequest) -> ToolNames | None:
    """The names of a request with tools, as OpenAI takes them; None without tools (nothing to name back)."""
    return ToolNames(req, openai_takes) if req.tools else None


def aliased_functions(body: dict[str, Any], req: ChatRequest) -> None:
    """The body's function names OpenAI refuses as their aliases (`ToolNames`): in the tools, the named choice (or
    those an `allowed_tools` choice allows), the history's calls (of a tool no longer offered too, as Bedrock's and
    Gemini's histories have them) and the tool results' `name` (which Mistral keeps). A request whose names OpenAI
    takes costs a check of each."""
    functions = [tool["function"] for tool in body.get("tools") or ()]
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        functions.append(choice["function"])
    elif isinstance(choice, dict) and isinstance(choice.get("allowed_tools"), dict):
        functions += [tool["function"] for tool in choice["allowed_tools"]["tools"]]
    for message in body["messages"]:
        functions += [call["function"] for call in message.get("tool_calls") or ()]
        if message["role"] == "tool" and isinstance(message.get("name"), str):
            functions.append(message)
    if not functions:
        return
    names = ToolNames(req, openai_takes)
    for function in functions:
        function["name"] = names.wire(function["name"])


def _allowed_alone(body: dict[str, Any], req: ChatRequest) -> None:
    """An `allowed_tools` choice as an API without it takes it: the tools it allows offered alone, and its mode."""
    offered, mode = chosen_tools(req)
    allowed = {tool.function.name for tool in offered}
    body["tools"] = [tool for tool in body["tools"] if tool["function"]["name"] in allowed]
    body["tool_choice"] = mode


# The request most clients send (a conversation of text, perhaps a cap on its output) and what its messages hold:
# `plain_body` writes its upstream body directly. Anything more is translated (`OpenAIAdapter.translated_body`).
PLAIN_FIELDS = frozenset(("model", "messages", "stream", "max_tokens", "max_completion_tokens"))
PLAIN_ROLES = frozenset(("system", "user", "assistant"))
PLAIN_MESSAGE = frozenset(("role", "content"))


def plain_body(req: ChatRequest, target: Target, profile: Profile) -> dict[str, Any] | None:
    """The upstream body of a plain request (`PLAIN_FIELDS`: messages of text in `PLAIN_ROLES`) to a deployment whose
    profile leaves such a body as it is (but for the name of its cap, `Profile.cap_as_max_tokens`) and whose model
    does not reason (a reasoning model takes its cap as `max_completion_tokens`), without the stream's members: the
    body `OpenAIAdapter.translated_body` makes of it, member for member and in its order, built directly, without the
    request's dump and the passes over the body and its messages that a translation needs (docs/performance.md has
    what they cost). None for any other request or deployment. A field written null is sent null, as the
    translation's dump sends it."""
    fields = req.model_fields_set
    if type(req) is not ChatRequest or not fields <= PLAIN_FIELDS or req.model_extra:
        return None
    messages = []
    for message in req.messages:
        content = message.content
        if type(content) is not str or message.role not in PLAIN_ROLES:
            return None
        if not message.model_fields_set <= PLAIN_MESSAGE or message.model_extra:
            return None
        messages.append({"role": message.role, "content": content})
    if profile.rules.keys() & PLAIN_FIELDS or profile.roles.keys() & PLAIN_ROLES:
        return None  # (a rule renames or bounds the cap, a role goes by another name)
    if PLAIN_ROLES.intersection(profile.refused_roles) or reasoning.openai_reasons(target):
        return None
    body: dict[str, Any] = {"model": target.model, "messages": messages}
    if "max_tokens" in fields:
        body["max_tokens"] = req.max_tokens
    if "max_completion_tokens" in fields:
        body["max_tokens" if profile.cap_as_max_tokens else "max_completion_tokens"] = req.max_completion_tokens
    return body


def _plain_tools(tools: list[dict[str, Any]] | None) -> None:
    """A tool without a description has none (OpenAI refuses `"description": null`), and no cache marker."""
    for tool in tools or ():
        tool.pop("cache_control", None)
        function = tool.get("function")
        if isinstance(function, dict) and function.get("description") is None:
            function.pop("description", None)


def _reasoning(body: dict[str, Any], req: ChatRequest, reasons: bool, takes_thinking: bool) -> list[str]:
    """`reasoning_effort` and the output cap as OpenAI's reasoning models take them (`reasoning.LEVELS`).

    A client's own `reasoning_effort` is passed on (any OpenAI-compatible API may define it); a Messages
    client's wish (`thinking`, `output_config.effort`) becomes one only for a model that reasons, and is reported
    as dropped otherwise, by the fields the client sent (`reasoning.asked_with`). A value the model refuses
    (gpt-5.1 takes no `minimal`, gpt-5 no `xhigh`) goes as the nearest it takes (`reasoning.openai_effort`),
    reported by the effort's field when the client named the effort itself: a budget was only ever approximated
    by a level.
    """
    dropped: list[str] = []
    thinking = body.pop("thinking", None)
    wish = reasoning.requested(req)
    switched_off = False
    if takes_thinking and wish is not None and (thinking is not None or wish.off):
        # DeepSeek's switch: thinking on or off, no budget. `reasoning_effort: none` (a Responses client's
        # `reasoning.effort`) turns it off with it: DeepSeek's Chat Completions documents no `none` effort, and its
        # models think unless switched off.
        body["thinking"] = {"type": "disabled" if wish.off else "enabled"}
        switched_off, thinking = wish.off, None
    if req.reasoning_effort is not None:
        level = reasoning.BY_EFFORT.get(req.reasoning_effort)
        if level is not None:
            body["reasoning_effort"] = level.openai
    elif thinking is not None and wish is not None:
        if not reasons:
            dropped += reasoning.asked_with(req)
        elif wish.level is not None:
            body["reasoning_effort"] = wish.level.openai
    if switched_off:
        body.pop("reasoning_effort", None)  # (honoured by the switch)
    effort = body.get("reasoning_effort")
    if isinstance(effort, str):
        body["reasoning_effort"] = reasoning.openai_effort(effort, body["model"])
        named = reasoning.effort_asked_with(req)
        if body["reasoning_effort"] != effort and named is not None:
            dropped.append(named)
    if reasons and "max_tokens" in body:
        # OpenAI's reasoning models refuse `max_tokens`: their cap covers the hidden reasoning too.
        limit = body.pop("max_tokens")
        body.setdefault("max_completion_tokens", limit)
    return dropped


SAMPLING = ("temperature", "top_p")


def unsent_sampling(body: dict[str, Any], reasons: bool) -> list[str]:
    """Leave out `temperature` and `top_p` (in place) where the model does not take them, and name those that asked
    for anything (1, their default, asks nothing): OpenAI's reasoning models refuse them ("Unsupported parameter:
    'temperature' is not supported with this model"; gpt-5 takes only the default, 1), but for gpt-5.1 and later
    with `reasoning_effort: none`, which OpenAI's guide documents as taking them (sent only when the request says
    `none` itself: the model's default effort is not the gateway's to assume); gpt-oss, a reasoning model OpenAI's API
    does not serve, takes them on the servers that host it (`ModelRules.takes_sampling`). (DeepSeek's thinking mode
    takes them without effect: `unsent_in_thinking`.)"""
    if not reasons or ("temperature" not in body and "top_p" not in body):
        return []  # (the usual request: the model's rules are not looked up, nor compiled at a cold start)
    if body.get("reasoning_effort") == "none" or rules_for(body["model"]).takes_sampling:
        return []
    return _unsent(body, SAMPLING)


# What DeepSeek's thinking mode does not take: the sampling and the penalties it takes without effect, and the
# log probabilities it refuses ("Setting logprobs, top_logprobs will trigger an error": DeepSeek's guides).
THINKING_MODE_UNSENT = (*SAMPLING, "presence_penalty", "frequency_penalty", "logprobs", "top_logprobs")


def unsent_in_thinking(body: dict[str, Any], thinks_unasked: bool = False) -> list[str]:
    """Leave out (in place) what DeepSeek's thinking mode does not take (`THINKING_MODE_UNSENT`), and name those that
    asked for anything, where the request runs in it: to DeepSeek's reasoner, which always thinks
    (`ModelRules.thinking_mode`), to a DeepSeek model it turns thinking on for (`thinking: {"type": "enabled"}`,
    which only the `deepseek` provider's profile sends, `Profile.thinking`), and to any other model of an API whose
    models think unless told not to (`thinks_unasked`: DeepSeek's, "Thinking mode is enabled by default") on a request
    that does not turn it off (`thinking: {"type": "disabled"}`). Sent on, `logprobs` and `top_logprobs` are DeepSeek's
    400 where the client would have had its answer and read them named as dropped, and the other four do nothing,
    unnamed (`deepseek-v4-pro` and `deepseek-v4-flash` think as its reasoner does)."""
    if body.keys().isdisjoint(THINKING_MODE_UNSENT):
        return []  # (the usual request: the model's rules are not looked up)
    if not runs_in_thinking(body, thinks_unasked):
        return []
    return _unsent(body, THINKING_MODE_UNSENT)


def runs_in_thinking(body: dict[str, Any], thinks_unasked: bool = False) -> bool:
    """Whether DeepSeek runs `body` in its thinking mode (`unsent_in_thinking`): its reasoner always
    (`ModelRules.thinking_mode`), any model the body turns it on for, and, where the API's models think unless told not
    to (`thinks_unasked`), any the body does not turn it off for."""
    thinking = body.get("thinking")
    switch = thinking.get("type") if isinstance(thinking, dict) else None
    mode = rules_for(body["model"]).thinking_mode
    if mode is None:  # (as the API runs the model)
        mode = thinks_unasked and switch != "disabled"
    return bool(mode or switch == "enabled")


PENALTIES = ("presence_penalty", "frequency_penalty")


def unsent_for_model(body: dict[str, Any]) -> list[str]:
    """Leave out (in place) what the model refuses outright, by its rules (`ModelRules.no_penalties`, `no_stop`), and
    name those that asked for anything: a Chat client's `stop` (a Messages client's `stop_sequences`) to grok-4 was
    xAI's 400, where the answer could come with `stop` named as dropped."""
    if "stop" not in body and "presence_penalty" not in body and "frequency_penalty" not in body:
        return []  # (the usual request: the model's rules are not looked up)
    rules = rules_for(body["model"])
    names = (*(PENALTIES if rules.no_penalties else ()), *(("stop",) if rules.no_stop else ()))
    return _unsent(body, names) if names else []


def _unsent(body: dict[str, Any], names: tuple[str, ...]) -> list[str]:
    """`names` left out of `body` (in place), and those of them that asked for anything (`params.asks`; a temperature
    or top_p of 1, their default, asks nothing either)."""
    values = {name: body.pop(name) for name in names if name in body}
    return [name for name, value in values.items() if asks(name, value) and not (name in SAMPLING and value == 1)]


# The words `auth` is refused naming as written (docs/configuration.md names them): those an operator writes for
# "no key" or for its opposite, in any case. Any other value is not shown: one who reads `auth` as the credential
# writes the key there (`auth: sk-proj-...`), and its first 40 characters would be printed by `gateway config
# check` and `gateway serve`, and kept on Lambda in the init failure's log.
AUTH_WORDS = frozenset({"none", "off", "no", "false", "on", "yes", "true", "null", "disabled", "enabled"})


def auth_shown(value: Any) -> str:
    """How the `auth` option's refused value is named: as written where it is one of `AUTH_WORDS`, by those words for
    the boolean YAML reads from an unquoted `off`, `no`, `false` (or `on`, `yes`, `true`) (it said "not 'False'" of
    `auth: off`), and otherwise not at all: it may be a key."""
    if value is True:
        return "on, yes or true (YAML's boolean true): leave auth out to send the provider's key"
    if value is False:
        return "off, no or false (YAML's boolean false, unquoted): write `auth: none` to send no key"
    if isinstance(value, str) and value.strip().lower() in AUTH_WORDS:
        return f"'{value}'"
    return (
        "the value written (not shown: it may be a key; a provider's key is its `api_key`, best as a reference: "
        "env:NAME, ssm:/path or secretsmanager:NAME)"
    )


class OpenAIAdapter(ProviderAdapter):
    """The `openai` provider type."""

    type_name = "openai"
    default_base_url = "https://api.openai.com/v1"
    key_env_var = "OPENAI_API_KEY"
    supports_embeddings = True
    provider_options = frozenset({"profile", "auth", "headers", "responses_api", "responses_store", "stream_usage"})
    # What an OpenAI-compatible API without OpenAI's Responses API takes (Mistral's, DeepSeek's).
    compatible_options = provider_options - {"responses_api", "responses_store"}

    def __init__(self, name: str, secret: str | None, options: Mapping[str, Any]) -> None:
        super().__init__(name, secret, options)
        profile = self.options.get("profile")
        if profile is not None and profile not in PROFILES:
            raise ValueError(f"unknown profile '{profile}' (one of: {', '.join(sorted(PROFILES))})")
        auth = self.options.get("auth")
        if auth is not None and auth != "none":
            # (`auth: off`, `None` or `false` read the type's environment key and sent it to `base_url`.)
            raise ValueError(f"auth takes one value, 'none' (send no key), or is left out; not {auth_shown(auth)}")
        self.requires_key = auth != "none"
        # Whether a stream asks for its usage (`stream_options.include_usage`): the profile's choice unless set
        # (a boolean, as `option_problem` checked it).
        self.stream_usage: bool | None = self.options.get("stream_usage")
        # By deployment base URL, as the options and the URL make them (read on every request, parsed once).
        self._profiles: dict[str, Profile] = {}
        self._serves_responses: dict[str, bool] = {}

    @classmethod
    def option_problem(cls, option: str, value: Any) -> str | None:
        # (Here, not in the constructor, which stopped at the first: each option's error is said, under its path.)
        if option in ("responses_store", "stream_usage") and value is not None and not isinstance(value, bool):
            # (`"false"`, quoted or written by a template, was read as `bool("false")`: the provider was told to keep
            # every response it served natively, the opposite of what was written.)
            return f"true or false (unquoted), not {value!r:.60}"
        if option == "responses_api" and value not in (None, "native", "translate"):
            return f"'native' or 'translate', not {value!r:.60}"
        return None

    def takes_search_options(self, target: Target) -> bool:
        # (A server the gateway has no profile for that does not search ignores it, as any member it does not know,
        # or refuses it; a profile whose API runs no search for it leaves it out: DeepSeek's, Ollama's.)
        return sent_by(self.profile(target).rules, "web_search_options")

    def takes_service_tier(self, target: Target) -> bool:
        return sent_by(self.profile(target).rules, SERVICE_TIER)  # (DeepSeek's, Mistral's and Ollama's leave it out)

    def profile(self, target: Target) -> Profile:
        profile = self._profiles.get(target.base_url)
        if profile is None:
            profile = self._profiles[target.base_url] = profile_for(self.options.get("profile"), target.base_url)
        return profile

    def headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if self.secret:
            headers["authorization"] = f"Bearer {self.secret}"
        extra = self.options.get("headers")
        if isinstance(extra, dict):
            headers.update({str(k): str(v) for k, v in extra.items()})
        return headers

    def chat_body(self, req: ChatRequest, target: Target, *, stream: bool) -> tuple[dict[str, Any], list[str]]:
        """The upstream body and what the profile could not honour; reused by derived adapters."""
        profile = self.profile(target)
        plain = plain_body(req, target, profile)
        body, dropped = (plain, []) if plain is not None else self.translated_body(req, target, profile)
        if stream:
            body["stream"] = True
            dropped += self.stream_options(body, req, profile)
        return body, dropped

    def stream_options(self, body: dict[str, Any], req: ChatRequest, profile: Profile) -> list[str]:
        """A stream's `stream_options` in `body` (in place), and the client's members of it left out, named
        (`stream_options.<member>`). The usage is always asked for where the API takes it (`stream_usage`): the stream
        is metered from it, and the client's own `include_usage` is the gateway's to honour (the front-end writes the
        usage chunk for a client that asked, and for no other). The client's other members go beside it as it sent
        them, where the API takes them (`Profile.stream_members`): the gateway's own `{"include_usage": true}` in
        their place would keep `include_obfuscation: false` from OpenAI, unnamed. Where the API
        refuses `stream_options` (`stream_usage` off), nothing of it is sent."""
        asked = {name: value for name, value in (req.stream_options or {}).items() if name != "include_usage"}
        usage = profile.stream_usage if self.stream_usage is None else self.stream_usage
        takes = profile.stream_members if usage else frozenset()
        sent = asked if takes is None else {name: value for name, value in asked.items() if name in takes}
        if usage:
            body["stream_options"] = {"include_usage": True, **sent}
        return [f"stream_options.{name}" for name, value in asked.items() if name not in sent and value is not None]

    def translated_body(self, req: ChatRequest, target: Target, profile: Profile) -> tuple[dict[str, Any], list[str]]:
        """`chat_body`'s, but for the stream's members, for any request `plain_body` does not take."""
        body = req.model_dump(exclude_unset=True, by_alias=True)
        body["model"] = target.model
        body.pop("stream", None)
        body.pop("stream_options", None)
        dropped = _plain_messages(body["messages"], profile.strip_message_fields, profile.media_after_tools)
        dropped += unsent_part_fields(req.messages, CARRIED)
        conform_messages(body["messages"], profile)
        if profile.signed_calls:
            signed_calls(body["messages"], target.model)
        if profile.short_call_ids:
            shorten_message_call_ids(body["messages"])
        _plain_tools(body.get("tools"))
        if not profile.allowed_tools and isinstance(req.tool_choice, dict):  # (`allowed_tools`)
            _allowed_alone(body, req)
        aliased_functions(body, req)
        if req.prefill is not None:
            # A Messages client's prefill: continued where the API takes the final assistant message as the prefix of
            # its answer; elsewhere the message goes as an earlier turn, which the answer follows rather than
            # continues, and the prefill is named.
            if profile.prefix is not None:
                body["messages"][-1]["prefix"] = True
            else:
                from adapters.providers.prefill import PREFILL  # (on first use: see `LATER_MODULES`)

                dropped.append(PREFILL)
        reasons = reasoning.openai_reasons(target)
        dropped += _reasoning(body, req, reasons, profile.thinking)
        if profile.cap_as_max_tokens and "max_completion_tokens" in body and reasoning.takes_max_tokens(target):
            body["max_tokens"] = body.pop("max_completion_tokens")
        dropped += unsent_sampling(body, reasons)
        dropped += unsent_in_thinking(body, profile.thinks_unasked)
        dropped += unsent_for_model(body)
        dropped += apply_rules(body, profile.rules)
        if req.model_extra:
            dropped += unsent_routing(body)
        if profile.media_after_tools:
            dropped += media_after_results(body["messages"], self.refused_parts(target))
        if profile.assistant_after_tools:
            answered_tool_turns(body["messages"])
        return body, dropped

    def refused_parts(self, target: Target) -> Collection[str]:
        """The content part types `target` takes in no user message, which no tool's result is moved into one as
        (`media_after_results`): none, but where a derived adapter's API says so (Azure's dated api-versions)."""
        return ()

    def chat_request(self, req: ChatRequest, target: Target, *, stream: bool) -> BuiltRequest:
        body, dropped = self.chat_body(req, target, stream=stream)
        if req.reasoning_summary is not None:
            dropped += reasoning.summary_unshown(req, self.shows_reasoning(body, target))
        request = UpstreamRequest("POST", f"{target.base_url}/chat/completions", self.headers(), orjson.dumps(body))
        return BuiltRequest(request, dropped)

    def reasons_unasked(self, target: Target, turned_off: bool = False) -> bool:
        """A reasoning model (`reasoning.openai_reasons`: by its name, or the deployment's `reasoning:`) reasons at its
        default effort when the request names none, and OpenAI bills that reasoning. So does a Gemini model that thinks
        by default (`reasoning.gemini_thinks_unasked`) through Google's OpenAI-compatible endpoint
        (`Profile.gemini_thinking`), which shows none of its thoughts and counts them in the final usage alone: a
        stream of Gemini 2.5 Flash or Pro left after its first word would be charged that word's estimate, 5 tokens,
        below what Google bills. Turned off (`turned_off`), an OpenAI model reasons no more (one that
        cannot turn it off refuses `none`), a Gemini model unless it cannot turn thinking off
        (`reasoning.gemini_thinks_regardless`: 2.5 Pro, Gemini 3). (DeepSeek's models, thinking by default,
        `Profile.thinks_unasked`, are not among them: they show their reasoning as it comes, `reasoning_content`, and
        what a stream cut short relayed of it is charged.)"""
        if reasoning.openai_reasons(target):
            return not turned_off
        if not (self.profile(target).gemini_thinking and reasoning.gemini_thinks_unasked(target.model)):
            return False
        return not turned_off or reasoning.gemini_thinks_regardless(target.model)

    def shows_reasoning(self, body: dict[str, Any], target: Target) -> bool:
        """Whether the answer to `body` will carry the model's reasoning as text (`Profile.reasoning_shown`): what a
        Responses client's `reasoning.summary` asks to see."""
        return self.profile(target).reasoning_shown

    def serves_responses(self, target: Target) -> bool:
        """Whether `/v1/responses` goes to the upstream's own `/responses`: OpenAI's API has it; an
        OpenAI-compatible server may not, so elsewhere only when the provider's `responses_api` says so."""
        served = self._serves_responses.get(target.base_url)
        if served is None:
            setting = self.options.get("responses_api")
            host = target.base_url.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
            native = type(self) is OpenAIAdapter and host == "api.openai.com"
            served = self._serves_responses[target.base_url] = native if setting is None else setting == "native"
        return served

    def responses_url(self, target: Target) -> str:
        return f"{target.base_url}/responses"

    def speaks(self, api: str, target: Target) -> bool:
        return (api == RESPONSES_API and self.serves_responses(target)) or super().speaks(api, target)

    def native_request(
        self, call: NativeCall, target: Target, *, stream: bool, output_limit: int | None
    ) -> BuiltRequest:
        from adapters.providers.openai.responses import request_body  # (on first use: see LATER_MODULES above)

        body, dropped = request_body(
            call.body,
            target.model,
            stream=stream,
            output_limit=output_limit,
            provider_keeps=self.keeps_responses(),
            visible=call.visible,
            reasons=reasoning.openai_reasons(target),
            issuer=target.issuer,
            takes=openai_takes,
        )
        request = UpstreamRequest("POST", self.responses_url(target), self.headers(), orjson.dumps(body))
        return BuiltRequest(request, dropped)

    def keeps_responses(self) -> bool:
        return bool(self.options.get("responses_store", False))

    def native_names(self, call: NativeCall) -> dict[str, str]:
        """The client's function names of a Responses request passed through, by the aliases they went as
        (`responses.aliased_names`)."""
        from adapters.providers.openai.responses import aliased_names

        return {wire: given for given, wire in aliased_names(call.body, openai_takes).items()}

    def native_usage(self, call: NativeCall, body: dict[str, Any]) -> Usage | None:
        from adapters.providers.openai.responses import answer_usage

        if body.get("object") != "response":  # (a failed response holds its `error`: it is one, read as it is)
            failed = answered_error(body)
            if failed is not None:
                raise failed
        return answer_usage(body)

    def native_meter(self, call: NativeCall) -> ResponsesMeter:
        from adapters.providers.openai.responses import ResponsesMeter

        return ResponsesMeter()

    def chat_response(self, body: bytes, req: ChatRequest, target: Target) -> ChatCompletion:
        return self._completion(self._answer_data(body), req, target)

    def plain_answer(
        self, body: bytes, req: ChatRequest, target: Target
    ) -> tuple[ChatCompletion | PlainCompletion, Served | None]:
        data = self._answer_data(body)
        # (Its tool calls renamed or signed, or a prefill stripped: the model's, which `_completion` changes.)
        altered = tool_names(req) is not None or self.profile(target).signed_calls
        if not altered and self.repeated_prefix(req, target) is None:
            plain = plain_completion(data)
            if plain is not None:
                return plain, None
        return self._completion(data, req, target), None

    def _answer_data(self, body: bytes) -> dict[str, Any]:
        data = json_body(body)
        if not isinstance(data, dict) or "choices" not in data:
            raise answered_error(data) or malformed("upstream answered without choices")
        return self.conformed_answer(data)

    def _completion(self, data: dict[str, Any], req: ChatRequest, target: Target) -> ChatCompletion:
        try:
            completion = validated(ChatCompletion, data, {}, target.model)
        except ValidationError as exc:
            raise billed_unusable(data, exc, "answer") from exc
        completion.usage = normalize_usage(completion.usage)
        for choice in completion.choices:
            if choice.message.content == "" and choice.message.tool_calls:
                choice.message.content = None  # (a tool-only answer of Mistral's or Ollama's: `_opened`)
        names = tool_names(req)
        signed = self.profile(target).signed_calls
        if names is not None or signed:
            for call in (call for choice in completion.choices for call in choice.message.tool_calls or ()):
                if names is not None:
                    call.function.name = names.client(call.function.name)
                if signed:
                    signature_in_id(call)
        repeated = self.repeated_prefix(req, target)
        if repeated is not None:
            from adapters.providers.prefill import strip_repeated

            strip_repeated(completion, repeated)
        return completion

    def repeated_prefix(self, req: ChatRequest, target: Target) -> str | None:
        """The prefill `req`'s answer opens with again (`REPEATS`), for the client to get the continuation alone."""
        prefill = req.prefill
        return prefill if prefill is not None and self.profile(target).prefix == REPEATS else None

    def conformed_answer(self, data: dict[str, Any]) -> dict[str, Any]:
        """An answer's JSON in OpenAI's shape (it is already, from OpenAI); an API that differs overrides it."""
        return data

    def stream_parser(self, req: ChatRequest, target: Target) -> OpenAIStreamParser:
        profile = self.profile(target)
        parser = OpenAIStreamParser(
            target.model, self.repeated_prefix(req, target), tool_names(req), profile.signed_calls
        )
        parser.opens_empty = profile is not PROFILES["openai"]  # (OpenAI's own opens a call with `null`)
        return parser

    def error(self, status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
        if status in (400, 422) and b"stream_options" in body:  # (only a stream is sent `stream_options`)
            return error_from_body(status, body, headers, STREAM_OPTIONS_REFUSED.format(name=self.name))
        return error_from_body(status, body, headers)

    def embeddings_request(self, req: EmbeddingsRequest, target: Target) -> BuiltRequest:
        body = req.model_dump(exclude_unset=True)
        body["model"] = target.model
        request = UpstreamRequest("POST", f"{target.base_url}/embeddings", self.headers(), orjson.dumps(body))
        return BuiltRequest(request, [])

    def embeddings_response(self, body: bytes, req: EmbeddingsRequest, target: Target) -> EmbeddingsResponse:
        data = json_body(body)
        if not isinstance(data, dict) or "data" not in data:
            raise answered_error(data) or malformed("upstream answered embeddings without data")
        try:
            return schemas.EmbeddingsResponse.model_validate(data)
        except ValueError as exc:
            raise malformed("upstream embeddings answer did not parse") from exc
