"""A fake Gemini API (Generative Language API v1beta), speaking Google's documented wire format.

It serves `POST /v1beta/models/{model}:generateContent`, `:streamGenerateContent?alt=sse` and
`:batchEmbedContents`, checks `x-goog-api-key`, and refuses what Google refuses (unknown fields, empty
`contents`, roles other than `user`/`model`, a conversation whose last turn is the model's (Google documents no
continuing of one; the words of the 400 are those Gemini's users report), a batch of more than 100 embeddings, an
inline image of a type Gemini does not take, a GIF, a function declared, called or allowed by a name outside Gemini's
rule: `NAME_RULE`; `allowedFunctionNames` beside a mode other than `ANY` or `VALIDATED`, or naming a function not
declared) with Google's error body; a batch of embeddings holding the text `fail-500` answers 500, as one call of
several may, and one holding `limited-once` 429 the first time that text comes (`LIMITED_ONCE_EMBED`; `limited-twice`
the first two times, `LIMITED_TWICE_EMBED`); an
embedding's values scale with its text's length, so that their order shows. With tools and function-calling mode
`ANY` it answers with a `functionCall`; a user message may script a call (`tests.fakes.script`); on a
Gemini 3 model (`GEMINI_3`: `gemini-3-*`, and the `-latest` aliases Google points at it) every function call carries
a `thoughtSignature`, and one sent back without it is refused, as is an empty `thoughtSignature` on any model;
function responses pair with the calls of the turn before by position, as Gemini pairs them: their counts must
agree, and so must a response's `id` and its call's, and a turn answering several calls is answered with the pairs
made (`PAIRED`), so a swap shows; a `gemini-2.5` or Gemini 3 model refuses a non-zero penalty, as Google's do, and a
model before Gemini 3 function calling beside a JSON answer.
`:countTokens` counts a `generateContentRequest`. Behaviour is chosen by the model name, as in the OpenAI fake:
`fail-429` (RESOURCE_EXHAUSTED, retry delay 0s), `fail-500`, `fail-503` (UNAVAILABLE, the model overloaded),
`fail-400` (INVALID_ARGUMENT), `fail-context` (the input token count past the maximum, INVALID_ARGUMENT), `located`
and `unbilled` (400 FAILED_PRECONDITION, Google's refusal of a project by where it calls from, and of its free tier
in a country that has none: `REFUSED_PROJECT`),
`slow` (waits `SLOW_SECONDS`), `stream-cut` (a stream that stops before its finishReason), `bad-json` (a 200 whose
body is not JSON), `malformed-call` (the model's function call Gemini could not parse: a candidate without
content, `finishReason: MALFORMED_FUNCTION_CALL`, its prompt billed, streamed or not), `ends-<reason>` (the same
candidate ending with the `finishReason` named in lower case with hyphens: `ends-too-many-tool-calls` for
`TOO_MANY_TOOL_CALLS`, `ends-image-other`, `ends-other`; what follows a `.` only makes it another model, with a
circuit breaker of its own; `said-ends-<reason>` the same after the model's preamble, `PREAMBLE`, its
`PREAMBLE_TOKENS` billed as output). Usage counts each
modality of the prompt apart (`promptTokensDetails`), as Gemini does:
inline audio (`audio/*`) as `AUDIO_TOKENS_PER_KB` tokens a kilobyte (its stand-in for Gemini's 32 tokens a
second), the rest as text. With `thinkingConfig.includeThoughts` the answer starts with a thought part
(`THOUGHT`, `thought: true`), as Gemini's thought summaries do; without it no thought is shown. Thoughts count
against `maxOutputTokens`: a `thinkingBudget` that reaches it is thought through to the cap, and the answer is
empty (`finishReason: MAX_TOKENS`, a content without parts), as Gemini's is. Every request is recorded on
`app.state.requests`. A request's `stopSequences` end the answer's text before the first it holds (`finishReason`
`STOP`, as Gemini gives it), and its `candidateCount` is the number of candidates answered (each numbered by `index`,
in every stream event, their tokens together in `candidatesTokenCount`), as Gemini's `GenerationConfig` documents.

`POST /v1beta/openai/chat/completions` is Gemini's OpenAI-compatible endpoint (`compatible`): Chat Completions bodies
with the key as `Authorization: Bearer`, a function call's thought signature carried both ways in the tool call's
`extra_content.google.thought_signature`, as Google's OpenAI compatibility page documents it. It refuses what Gemini
refuses of the `contents` it makes of them (an empty signature; on Gemini 3, a step's first call without one; a tool
message answering no call of the turn before it), in Google's error body wrapped in a list, as that endpoint sends
it; it calls a tool a user message scripts or `tool_choice: required` asks for, its id of Gemini's form
(`function-call-` and digits), signed on Gemini 3, and otherwise answers `TEXT`; a stream carries each call whole in
one chunk, its signature beside its id.

With the `google_search` tool (Grounding with Google Search) the answer is grounded as Google's docs show it: its
candidate's `groundingMetadata` holds the query the model ran (`SEARCH_QUERY`), the page it used (`SEARCH_URL`) and
the span of its text the page supports (in bytes of the text); streamed, every event carries the grounding so far
(the query on each, the span as far as the text goes), as Gemini resends it on later events and other clients read
it ("later chunks win"), not only the new part of it.
The search beside function declarations is refused on a model before Gemini 3 (`SEARCH_WITH_FUNCTIONS`), and so is
an unknown field of the tool, as Google refuses them; Gemini 3 takes the two together only with its tool context
(`toolConfig.includeServerSideToolInvocations: true`, `CONTEXT_NEEDED` without it), which a model before it refuses
(`NO_CONTEXT`), and then answers with the search's `toolCall` and `toolResponse` parts before its text or its
function call, as Google's "Combine built-in tools and function calling" page shows them.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests.fakes.script import ScriptedCall, input_for, pieces, scripted_turn, text_for, texts

API_KEY = "test-gemini-key"
TEXT = "Hello from fake Gemini."
THOUGHT = "**Answering briefly**\n\nThe user greets me; a short hello will do."
SLOW_SECONDS = 2.0
MODEL_VERSION = "gemini-2.5-flash"
# What a `said-ends-<reason>` model writes before its reason, as a model does before the call it then fails to make.
PREAMBLE = "Let me look that up."
PREAMBLE_TOKENS = 5
# Gemini 3, by its name or by an alias without a version (`gemini-flash-latest`, `gemini-pro-latest`), which Google
# points at its newest release.
GEMINI_3 = re.compile(r"gemini-3|gemini-[a-z][a-z-]*-latest")
RESPONSE_ID = "fakeGeminiResponse01"
CALL_ARGS = {"city": "Paris"}
MAX_EMBED_BATCH = 100  # Google's bound on one `batchEmbedContents` call
FAIL_EMBED = "fail-500"  # a batch holding a text with it answers 500 (the rest of the request's batches do not)
# A batch holding a text with it answers 429 (RESOURCE_EXHAUSTED, retry delay 0s) the first time that text comes, then
# as any other: a per-minute quota one call of several ran into, which the gateway waits out.
LIMITED_ONCE_EMBED = "limited-once"
LIMITED_TWICE_EMBED = "limited-twice"

REQUEST_FIELDS = {"contents", "systemInstruction", "tools", "toolConfig", "generationConfig", "safetySettings"}
GENERATION_FIELDS = {
    "maxOutputTokens",
    "temperature",
    "topP",
    "topK",
    "candidateCount",
    "stopSequences",
    "presencePenalty",
    "frequencyPenalty",
    "seed",
    "responseMimeType",
    "responseSchema",
    "responseJsonSchema",
    "thinkingConfig",
}
METHODS = {"generateContent", "streamGenerateContent", "batchEmbedContents", "countTokens"}
THINKING_FIELDS = {"thinkingBudget", "thinkingLevel", "includeThoughts"}
# Gemini 3 signs its function calls and refuses a history whose calls come back without their signature.
CALL_SIGNATURE = "CiQBcsjafake+thought/signature=="


def _error(
    code: int,
    message: str,
    status: str,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = details
    return Response(orjson.dumps({"error": error}), code, headers=headers, media_type="application/json")


# Gemini's 400 FAILED_PRECONDITION for a project it will not serve, whatever the request (its troubleshooting guide: the
# free tier is not available in the country, "Please enable billing"; users report the location words from regions
# the API does not serve), by model: `located`, `unbilled`.
REFUSED_PROJECT = {
    "located": "User location is not supported for the API use.",
    "unbilled": (
        "Gemini API free tier is not available in your country. "
        "Please enable billing on your project in Google AI Studio."
    ),
}


def _invalid(message: str) -> Response:
    return _error(400, message, "INVALID_ARGUMENT")


IMAGES = ("image/png", "image/jpeg", "image/webp", "image/heic", "image/heif")  # Gemini's image types
# A function's name as Gemini's FunctionDeclaration documents it ("Must start with a letter or an underscore. Must be
# a-z, A-Z, 0-9, or contain underscores, colons, dots, and dashes, with a maximum length of 64."), and its 400 in the
# words Gemini's users report; a FunctionCall or FunctionResponse of the history names a function as it was declared.
NAME_RULE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_.:-]{0,63}")
BAD_NAME = (
    "The GenerateContentRequest proto is invalid:\n  * {field}.name: [FIELD_INVALID] Invalid function name. Must start "
    "with a letter or an underscore. Must be a-z, A-Z, 0-9, or contain underscores (_), dots (.), colons (:), or "
    "dashes (-), with a maximum length of 64."
)


def _misnamed(body: dict[str, Any]) -> str | None:
    """The first function declared, called or answered in `body` by a name outside `NAME_RULE`, in Gemini's words."""
    named = [
        (f"tools[{i}].function_declarations[{j}]", declaration.get("name"))
        for i, tool in enumerate(body.get("tools") or ())
        for j, declaration in enumerate(tool.get("functionDeclarations") or ())
    ]
    for i, content in enumerate(body.get("contents") or ()):
        for j, part in enumerate(content.get("parts") or ()):
            for kind, field in (("functionCall", "function_call"), ("functionResponse", "function_response")):
                if kind in part:
                    named.append((f"contents[{i}].parts[{j}].{field}", part[kind].get("name")))
    config = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
    named += [
        (f"tool_config.function_calling_config.allowed_function_names[{i}]", name)
        for i, name in enumerate(config.get("allowedFunctionNames") or ())
    ]
    for field, name in named:
        if not isinstance(name, str) or NAME_RULE.fullmatch(name) is None:
            return BAD_NAME.format(field=field)
    return None


def _unallowed(body: dict[str, Any]) -> str | None:
    """Why Gemini refuses the request's `allowedFunctionNames`: set with a mode other than `ANY` or `VALIDATED`
    (its reference: "This should only be set when the Mode is ANY or VALIDATED"), or naming no function declared."""
    config = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
    allowed = config.get("allowedFunctionNames")
    if not allowed:
        return None
    if config.get("mode") not in ("ANY", "VALIDATED"):
        return "allowed_function_names may only be set when the function calling mode is ANY or VALIDATED."
    declared = {d.get("name") for tool in body.get("tools") or () for d in tool.get("functionDeclarations") or ()}
    unknown = [name for name in allowed if name not in declared]
    return f"Function {unknown[0]!r} in allowed_function_names is not declared." if unknown else None


def _validate(body: dict[str, Any]) -> Response | None:
    """What Google refuses before generating: the fake is as strict as the real API about shape."""
    for name in body:
        if name not in REQUEST_FIELDS:
            return _invalid(f'Invalid JSON payload received. Unknown name "{name}": Cannot find field.')
    for name in body.get("generationConfig") or {}:
        if name not in GENERATION_FIELDS:
            return _invalid(
                f"Invalid JSON payload received. Unknown name \"{name}\" at 'generation_config': Cannot find field."
            )
    contents = body.get("contents")
    if not contents:
        return _invalid("* GenerateContentRequest.contents: contents is not specified\n")
    for i, content in enumerate(contents):
        if content.get("role") not in ("user", "model"):
            return _invalid(f"Please use a valid role: user, model. (contents[{i}])")
        if not content.get("parts"):
            return _invalid(f"* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty.\n")
        for part in content["parts"]:
            mime = str((part.get("inlineData") or {}).get("mimeType", ""))
            if mime.startswith("image/") and mime not in IMAGES:
                return _invalid("Request contains an invalid argument.")  # what Gemini 2.0 on answers to a GIF
    misnamed = _misnamed(body)
    if misnamed is not None:
        return _invalid(misnamed)
    thinking = (body.get("generationConfig") or {}).get("thinkingConfig") or {}
    for name in thinking:
        if name not in THINKING_FIELDS:
            return _invalid(
                f"Invalid JSON payload received. Unknown name \"{name}\" at 'generation_config.thinking_config'."
            )
    if "thinkingBudget" in thinking and "thinkingLevel" in thinking:
        return _invalid("thinking_budget and thinking_level cannot both be set.")
    count = (body.get("generationConfig") or {}).get("candidateCount", 1)
    if not 1 <= count <= 8:
        return _invalid("* GenerateContentRequest.generation_config.candidate_count: must be between 1 and 8\n")
    return None


SEARCH_QUERY, SEARCH_URL, SEARCH_TITLE = "fake search", "https://example.com/", "example.com"
SEARCH_WITH_FUNCTIONS = "Tool use with function calling is unsupported by the model."
CONTEXT_NEEDED = (
    "Please enable tool_config.include_server_side_tool_invocations to use Built-in tools with Function calling."
)
NO_CONTEXT = "Tool call context circulation is not enabled for models/{model}"
SEARCH_FIELDS = {"timeRangeFilter", "excludeDomains"}


def _searches(body: dict[str, Any]) -> bool:
    return any("google_search" in tool or "googleSearch" in tool for tool in body.get("tools") or ())


def _search_refused(model: str, body: dict[str, Any]) -> str | None:
    """Google Search beside function calling before Gemini 3, and a field the tool does not have."""
    for tool in body.get("tools") or ():
        search = tool.get("google_search", tool.get("googleSearch"))
        unknown = sorted(set(search) - SEARCH_FIELDS) if isinstance(search, dict) else []
        if unknown:
            return f"Invalid JSON payload received. Unknown name \"{unknown[0]}\" at 'tools[0].google_search'."
    functions = any(tool.get("functionDeclarations") for tool in body.get("tools") or ())
    if _in_context(body) and not GEMINI_3.search(model):
        return NO_CONTEXT.format(model=model)
    if _searches(body) and functions and not GEMINI_3.search(model):
        return SEARCH_WITH_FUNCTIONS
    if _searches(body) and functions and not _in_context(body):
        return CONTEXT_NEEDED
    return None


def _in_context(body: dict[str, Any]) -> bool:
    """Whether the request asks for Gemini 3's tool context (its built-in tools' calls in the answer)."""
    return (body.get("toolConfig") or {}).get("includeServerSideToolInvocations") is True


def _search_parts() -> list[dict[str, Any]]:
    """The search's own parts of an answer in Gemini 3's tool context: its call (signed) and its response."""
    call = {"id": "srch1", "toolType": "GOOGLE_SEARCH_WEB", "args": {"queries": [SEARCH_QUERY]}}
    found = {"id": "srch1", "toolType": "GOOGLE_SEARCH_WEB", "response": {"search_suggestions": SEARCH_QUERY}}
    return [{"toolCall": call, "thoughtSignature": "c2VhcmNoLXNpZw=="}, {"toolResponse": found}]


def _grounded(answer: dict[str, Any], text: str) -> dict[str, Any]:
    """`answer` with each candidate's `groundingMetadata`: the search's page supports its text (`text`) whole."""
    grounding = {
        "webSearchQueries": [SEARCH_QUERY],
        "searchEntryPoint": {"renderedContent": "<style>.container{}</style><div class=container>...</div>"},
        "groundingChunks": [{"web": {"uri": SEARCH_URL, "title": SEARCH_TITLE}}],
        "groundingSupports": [
            {
                "segment": {"startIndex": 0, "endIndex": len(text.encode()), "text": text},
                "groundingChunkIndices": [0],
            }
        ],
    }
    for candidate in answer["candidates"]:
        candidate["groundingMetadata"] = grounding
    return answer


def _penalty(model: str, body: dict[str, Any]) -> str | None:
    """Gemini 2.5 and 3 refuse a non-zero `presencePenalty` or `frequencyPenalty` (0 passes unchecked)."""
    config = body.get("generationConfig") or {}
    if ("gemini-2.5" in model or GEMINI_3.search(model)) and (
        config.get("presencePenalty") or config.get("frequencyPenalty")
    ):
        return f"Penalty is not enabled for models/{model}"
    return None


def _json_with_functions(model: str, body: dict[str, Any]) -> str | None:
    """Gemini before 3 refuses function calling beside a JSON answer (`responseMimeType: application/json`, with or
    without a schema), in the words its users report; with function calling off (mode `NONE`) it takes both.
    Combining them is Gemini 3's (its structured-output page: "Structured outputs with tools")."""
    config = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
    functions = any(tool.get("functionDeclarations") for tool in body.get("tools") or ())
    json_answer = (body.get("generationConfig") or {}).get("responseMimeType") == "application/json"
    if GEMINI_3.search(model) or not functions or not json_answer or config.get("mode") == "NONE":
        return None
    return "Function calling with a response mime type: 'application/json' is unsupported"


def _unsigned_call(model: str, body: dict[str, Any]) -> str | None:
    """A thought signature Gemini never gave (an empty one, on any model: Gemini reads the bytes it signed, "pass it
    back exactly as received"), in the words Gemini's users report; on Gemini 3, a step's first call without one."""
    for content in body.get("contents") or []:
        if any(part.get("thoughtSignature") == "" for part in content.get("parts") or []):
            return "Corrupted thought signature."
    if not GEMINI_3.search(model):
        return None
    for i, content in enumerate(body.get("contents") or []):
        calls = [part for part in content.get("parts") or [] if "functionCall" in part]
        if calls and "thoughtSignature" not in calls[0]:
            name = calls[0]["functionCall"].get("name")
            return f"Function call `{name}` in the `{i}.` content block is missing a `thought_signature`."
    return None


def _function_parts(content: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [part[kind] for part in content.get("parts") or [] if kind in part]


def _pairs(body: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]] | str:
    """The (call, response) pairs of the latest function-response turn, made by position, or why Gemini
    refuses one of the request's turns of function responses."""
    contents = body.get("contents") or []
    pairs: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for i, content in enumerate(contents):
        responses = _function_parts(content, "functionResponse")
        if not responses:
            continue
        calls = _function_parts(contents[i - 1], "functionCall") if i else []
        if len(calls) != len(responses):
            return (
                "Please ensure that the number of function response parts is equal to the number of function "
                "call parts of the function call turn."
            )
        for call, response in zip(calls, responses, strict=True):
            if "id" in response and response["id"] != call.get("id"):
                return f"functionResponse.id {response['id']!r} does not match functionCall.id {call.get('id')!r}"
        pairs = list(zip(calls, responses, strict=True))
    return pairs


# The answer to a turn answering several calls: each call with the response Gemini took for it.
PAIRED = "{name}({args}) = {result}"


def _paired(body: dict[str, Any]) -> str | None:
    contents = body.get("contents") or []
    pairs = _pairs(body)
    if isinstance(pairs, str) or len(pairs) < 2 or not _function_parts(contents[-1], "functionResponse"):
        return None
    return "; ".join(
        PAIRED.format(
            name=call.get("name"), args=orjson.dumps(call.get("args")).decode(), result=texts(response.get("response"))
        )
        for call, response in pairs
    )


def _script(body: dict[str, Any]) -> ScriptedCall | str | None:
    contents = body.get("contents") or []
    users = [texts([p.get("text") for p in c.get("parts") or []]) for c in contents if c.get("role") == "user"]
    last = contents[-1].get("parts") or [] if contents else []
    responses = [p["functionResponse"] for p in last if "functionResponse" in p]
    result = texts(responses[-1].get("response")) if responses else None
    declarations = [d for tool in body.get("tools") or [] for d in tool.get("functionDeclarations") or []]
    return scripted_turn(users, [str(d.get("name")) for d in declarations], result)


def _text(body: dict[str, Any]) -> str:
    """The answer's text, ended before the first of the request's `stopSequences` it holds, as Gemini ends it (its
    `finishReason` is `STOP` then too: Gemini says no more)."""
    paired = _paired(body)
    script = _script(body)
    if paired is not None:
        text = paired
    elif isinstance(script, str):
        text = script
    else:
        text = text_for((body.get("generationConfig") or {}).get("responseJsonSchema"), TEXT)
    stops = [stop for stop in (body.get("generationConfig") or {}).get("stopSequences") or () if stop in text]
    return text[: min(text.index(stop) for stop in stops)] if stops else text


def _candidates(body: dict[str, Any]) -> int:
    """How many candidates the request asks for (`candidateCount`, 1 unless set): each is answered."""
    count = (body.get("generationConfig") or {}).get("candidateCount", 1)
    return count if isinstance(count, int) else 1


def _function_call(body: dict[str, Any]) -> dict[str, Any] | None:
    declarations = [d for tool in body.get("tools") or [] for d in tool.get("functionDeclarations") or []]
    config = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
    script = _script(body)
    if isinstance(script, ScriptedCall):
        return {"name": script.name, "args": script.arguments}
    if not declarations or config.get("mode") != "ANY":
        return None
    allowed = config.get("allowedFunctionNames") or [declarations[0]["name"]]
    schemas = {d["name"]: d.get("parametersJsonSchema") or d.get("parameters") for d in declarations}
    return {"name": allowed[0], "args": input_for(schemas.get(allowed[0]), CALL_ARGS)}


def _call_part(model: str, call: dict[str, Any]) -> dict[str, Any]:
    part: dict[str, Any] = {"functionCall": call}
    if GEMINI_3.search(model):
        part["thoughtSignature"] = CALL_SIGNATURE
    return part


AUDIO_TOKENS_PER_KB = 4


def _audio_bytes(contents: Any) -> int:
    """The decoded size of the inline audio parts, their data blanked in place (it is not text)."""
    size = 0
    for content in contents if isinstance(contents, list) else ():
        for part in content.get("parts") or ():
            inline = part.get("inlineData") if isinstance(part, dict) else None
            if isinstance(inline, dict) and str(inline.get("mimeType", "")).startswith("audio/"):
                size += len(str(inline.get("data", ""))) * 3 // 4
                inline["data"] = ""
    return size


def _ending(model: str) -> str | None:
    """The `finishReason` an `ends-<reason>` model ends its empty candidate with."""
    named = model.partition("ends-")[2].partition(".")[0]
    return named.upper().replace("-", "_") or None


def _usage(body: dict[str, Any], candidates: int, thoughts: int) -> dict[str, Any]:
    contents = orjson.loads(orjson.dumps(body.get("contents", body.get("requests", ""))))
    audio = -(-_audio_bytes(contents) * AUDIO_TOKENS_PER_KB // 1024)
    text = max(1, len(orjson.dumps(contents)) // 4)
    prompt = text + audio
    details = [{"modality": "TEXT", "tokenCount": text}]
    if audio:
        details.append({"modality": "AUDIO", "tokenCount": audio})
    usage = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": candidates,
        "totalTokenCount": prompt + candidates + thoughts,
        "promptTokensDetails": details,
    }
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    return usage


def _thoughts(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The model's thought summary, which Gemini answers with only when `includeThoughts` asks for it."""
    thinking = (body.get("generationConfig") or {}).get("thinkingConfig") or {}
    return [{"text": THOUGHT, "thought": True}] if thinking.get("includeThoughts") else []


def _thought_to_the_cap(body: dict[str, Any]) -> dict[str, Any] | None:
    """The answer of a model whose thinking budget reaches its output cap: its thoughts took all of it."""
    config = body.get("generationConfig") or {}
    cap, budget = config.get("maxOutputTokens"), (config.get("thinkingConfig") or {}).get("thinkingBudget")
    if not isinstance(cap, int) or not isinstance(budget, int) or budget < cap:
        return None
    candidate = {"content": {"role": "model"}, "finishReason": "MAX_TOKENS", "index": 0}
    return {"candidates": [candidate], "usageMetadata": _usage(body, 0, cap), "modelVersion": MODEL_VERSION}


def _answer(parts: list[dict[str, Any]], usage: dict[str, Any], finish: str | None, count: int = 1) -> dict[str, Any]:
    """A `GenerateContentResponse` of `count` candidates (`candidateCount`), each with `parts`, numbered by `index`."""
    candidates: list[dict[str, Any]] = []
    for index in range(count):
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": index}
        if finish:
            candidate["finishReason"] = finish
        candidates.append(candidate)
    return {"candidates": candidates, "usageMetadata": usage, "modelVersion": MODEL_VERSION, "responseId": RESPONSE_ID}


# A function call's id as Gemini's OpenAI-compatible endpoint gives it.
COMPATIBLE_CALL_ID = "function-call-{}"


def _compatible_error(code: int, message: str, status: str) -> Response:
    """Google's error body as Gemini's OpenAI-compatible endpoint sends it: in a list."""
    error = {"code": code, "message": message, "status": status}
    return Response(orjson.dumps([{"error": error}]), code, media_type="application/json")


def _compatible_refusal(body: dict[str, Any]) -> str | None:
    """What Gemini refuses of a Chat Completions history, as it refuses the `contents` made of it (`_unsigned_call`,
    `_pairs`): an empty thought signature on any model, a Gemini 3 step's first call without one, and a tool message
    that answers no call of the assistant turn before it."""
    model = str(body.get("model", ""))
    asked: set[str] = set()  # the ids of the calls of the assistant turn the tool messages now follow
    for i, message in enumerate(body.get("messages") or []):
        if message.get("role") == "tool":
            if message.get("tool_call_id") not in asked:
                return f"messages[{i}]: a tool message's tool_call_id names no function call of the turn before it."
            continue
        calls = message.get("tool_calls") or [] if message.get("role") == "assistant" else []
        asked = {str(call.get("id")) for call in calls}
        for j, call in enumerate(calls):
            google = (call.get("extra_content") or {}).get("google") or {}
            signature = google.get("thought_signature")
            if signature == "":
                return "Corrupted thought signature."
            if j == 0 and signature is None and GEMINI_3.search(model):
                name = (call.get("function") or {}).get("name")
                return f"Function call `{name}` in the `{i}.` content block is missing a `thought_signature`."
    return None


def _compatible_turn(body: dict[str, Any]) -> dict[str, Any] | str:
    """The tool call the model makes (a user message's script, or the first tool where a call is required), with
    its thought signature on Gemini 3; else the answer's text."""
    messages = body.get("messages") or []
    tools = [str(tool["function"]["name"]) for tool in body.get("tools") or []]
    last = messages[-1] if messages else {}
    result = texts(last.get("content")) if last.get("role") == "tool" else None
    script = scripted_turn([texts(m.get("content")) for m in messages if m.get("role") == "user"], tools, result)
    if isinstance(script, str):
        return script
    if isinstance(script, ScriptedCall):
        name, arguments = script.name, script.arguments_json
    elif tools and body.get("tool_choice") == "required":
        name, arguments = tools[0], orjson.dumps(CALL_ARGS).decode()
    else:
        return TEXT
    call: dict[str, Any] = {
        "id": COMPATIBLE_CALL_ID.format(secrets.randbelow(10**20)),
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }
    if GEMINI_3.search(str(body.get("model", ""))):
        call["extra_content"] = {"google": {"thought_signature": CALL_SIGNATURE}}
    return call


def _compatible_answer(body: dict[str, Any]) -> Response:
    """A Chat Completions answer to `body` (`_compatible_turn`), whole or streamed."""
    turn = _compatible_turn(body)
    usage = {"prompt_tokens": max(1, len(orjson.dumps(body.get("messages"))) // 4), "completion_tokens": 5}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    head = {"id": RESPONSE_ID, "created": int(time.time()), "model": body.get("model")}
    finish = "stop" if isinstance(turn, str) else "tool_calls"
    if not body.get("stream"):
        message: dict[str, Any] = {"role": "assistant", "content": turn if isinstance(turn, str) else None}
        if not isinstance(turn, str):
            message["tool_calls"] = [turn]
        choice = {"index": 0, "message": message, "finish_reason": finish}
        answer = {**head, "object": "chat.completion", "choices": [choice], "usage": usage}
        return Response(orjson.dumps(answer), media_type="application/json")
    if isinstance(turn, str):
        deltas: list[dict[str, Any]] = [{"content": piece} for piece in pieces(turn)]
    else:
        deltas = [{"tool_calls": [turn]}]  # (whole, in one delta, with no `index`: as Google streams a call)
    deltas[0]["role"] = "assistant"
    chunks = [
        {**head, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
        for delta in deltas
    ]
    chunks[-1]["choices"][0]["finish_reason"] = finish
    if (body.get("stream_options") or {}).get("include_usage"):
        chunks.append({**head, "object": "chat.completion.chunk", "choices": [], "usage": usage})
    events = b"".join(b"data: " + orjson.dumps(chunk) + b"\n\n" for chunk in chunks) + b"data: [DONE]\n\n"
    return Response(events, media_type="text/event-stream")


def create_app() -> Starlette:
    requests: list[dict[str, Any]] = []
    limited_times: dict[str, int] = {}  # (how often each text of `LIMITED_ONCE_EMBED` or `_TWICE_` was answered 429)

    async def compatible(request: Request) -> Response:
        """Gemini's OpenAI-compatible Chat Completions endpoint."""
        body = orjson.loads(await request.body() or b"{}")
        requests.append(
            {
                "path": request.url.path,
                "model": body.get("model"),
                "method": "chat/completions",
                "headers": dict(request.headers),
                "json": body,
            }
        )
        if request.headers.get("authorization") != f"Bearer {API_KEY}":
            return _compatible_error(400, "API key not valid. Please pass a valid API key.", "INVALID_ARGUMENT")
        refused = _compatible_refusal(body)
        if refused is not None:
            return _compatible_error(400, refused, "INVALID_ARGUMENT")
        return _compatible_answer(body)

    async def dispatch(request: Request) -> Response:
        raw = await request.body()
        try:
            body = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            return _invalid("Invalid JSON payload received.")
        model, _, method = request.path_params["target"].partition(":")
        requests.append(
            {
                "path": request.url.path,
                "query": request.url.query,
                "model": model,
                "method": method,
                "headers": dict(request.headers),
                "json": body,
            }
        )
        key = request.headers.get("x-goog-api-key")
        if not key:
            return _error(
                403,
                "Method doesn't allow unregistered callers (callers without established identity). "
                "Please use API Key or other form of API consumer identity to call this API.",
                "PERMISSION_DENIED",
            )
        if key != API_KEY:
            info = {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            }
            return _error(400, "API key not valid. Please pass a valid API key.", "INVALID_ARGUMENT", [info])
        if method not in METHODS:
            return _error(404, f"models/{model} is not found for API version v1beta.", "NOT_FOUND")
        if "fail-429" in model:
            retry = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0s"}
            return _error(
                429,
                "You exceeded your current quota, please check your plan and billing details.",
                "RESOURCE_EXHAUSTED",
                [retry],
            )
        if "fail-500" in model:
            return _error(500, "An internal error has occurred. Please retry or report.", "INTERNAL")
        if "fail-503" in model:  # (Google's words for a model it has no capacity for now)
            return _error(503, "The model is overloaded. Please try again later.", "UNAVAILABLE")
        refused = next((words for name, words in REFUSED_PROJECT.items() if name in model), None)
        if refused is not None:
            return _error(400, refused, "FAILED_PRECONDITION")
        if "fail-400" in model:
            return _invalid(
                "* GenerateContentRequest.contents[0].parts[0].data: "
                "required oneof field 'data' must have one initialized field\n"
            )
        if "fail-context" in model:  # (Gemini's words for a prompt past the model's window)
            return _invalid("The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).")
        if "slow" in model:
            await asyncio.sleep(SLOW_SECONDS)
        if method == "batchEmbedContents":
            return _embed(model, body)
        if method == "countTokens":
            inner = body.get("generateContentRequest")
            if set(body) - {"contents", "generateContentRequest"} or (inner or {}).get("model") != f"models/{model}":
                return _invalid("countTokens takes `contents` or a `generateContentRequest` naming this model")
            failure = _validate({k: v for k, v in (inner or body).items() if k != "model"})
            if failure is not None:
                return failure
            tokens = max(1, len(orjson.dumps(inner or body)) // 4)
            return Response(orjson.dumps({"totalTokens": tokens}), media_type="application/json")
        failure = _validate(body)
        if failure is not None:
            return failure
        if body["contents"][-1].get("role") == "model":
            return _invalid("Requests ending with a model turn are not supported.")
        pairs = _pairs(body)
        refused = (
            _unsigned_call(model, body)
            or _penalty(model, body)
            or _unallowed(body)
            or _json_with_functions(model, body)
            or _search_refused(model, body)
            or (pairs if isinstance(pairs, str) else None)
        )
        if refused:
            return _invalid(refused)
        if "bad-json" in model:
            return Response(b"{not json", 200, media_type="application/json")
        ending = "MALFORMED_FUNCTION_CALL" if "malformed-call" in model else _ending(model)
        if ending is not None:
            candidate: dict[str, Any] = {"finishReason": ending, "index": 0}
            if ending == "MALFORMED_FUNCTION_CALL":
                candidate["finishMessage"] = "Malformed function call: print(default_api.lookup(q='x')"
            said = "said-" in model
            if said:
                candidate["content"] = {"role": "model", "parts": [{"text": PREAMBLE}]}
            answer = {
                "candidates": [candidate],
                "usageMetadata": _usage(body, PREAMBLE_TOKENS if said else 0, 0),
                "modelVersion": MODEL_VERSION,
                "responseId": RESPONSE_ID,
            }
            if method == "streamGenerateContent":
                return Response(b"data: " + orjson.dumps(answer) + b"\r\n\r\n", media_type="text/event-stream")
            return Response(orjson.dumps(answer), media_type="application/json")
        spent = _thought_to_the_cap(body)
        if spent is not None:
            if method == "streamGenerateContent":
                return Response(b"data: " + orjson.dumps(spent) + b"\r\n\r\n", media_type="text/event-stream")
            return Response(orjson.dumps(spent), media_type="application/json")
        call = _function_call(body)
        if method == "streamGenerateContent":
            if request.query_params.get("alt") != "sse":
                return _invalid("the fake only streams with alt=sse")
            return StreamingResponse(_stream(model, body, call), media_type="text/event-stream")
        parts = [_call_part(model, call)] if call else [{"text": _text(body)}]
        if _searches(body) and _in_context(body):
            parts = _search_parts() + parts  # (the search, then the text or the call it led to)
        count = _candidates(body)
        answer = _answer(_thoughts(body) + parts, _usage(body, 5 * count, 2 * count), "STOP", count)
        if _searches(body) and not call:
            _grounded(answer, _text(body))
        return Response(orjson.dumps(answer), media_type="application/json")

    async def _stream(model: str, body: dict[str, Any], call: dict[str, Any] | None) -> AsyncIterator[bytes]:
        def event(payload: dict[str, Any]) -> bytes:
            return b"data: " + orjson.dumps(payload) + b"\r\n\r\n"

        count = _candidates(body)
        thoughts = _thoughts(body)
        if thoughts:
            yield event(_answer(thoughts, _usage(body, 0, 2 * count), None, count))
        if _searches(body) and _in_context(body):
            yield event(_answer(_search_parts(), _usage(body, 0, 2 * count), None, count))
        if call:
            yield event(_answer([_call_part(model, call)], _usage(body, 5 * count, 2 * count), "STOP", count))
            return
        words = pieces(_text(body))
        for i, word in enumerate(words):
            if "stream-cut" in model and i == 2:
                return
            last = i == len(words) - 1
            usage = _usage(body, 5 * count, 2 * count) if last else _usage(body, 0, 2 * count)
            answer = _answer([{"text": word}], usage, "STOP" if last else None, count)
            # (Each event grounded as far as the text goes: Gemini resends the grounding so far, the same query.)
            yield event(_grounded(answer, "".join(words[: i + 1])) if _searches(body) else answer)

    def _embed(model: str, body: dict[str, Any]) -> Response:
        items = body.get("requests")
        if not isinstance(items, list) or not items:
            return _invalid("* BatchEmbedContentsRequest.requests: requests is not specified\n")
        if len(items) > MAX_EMBED_BATCH:
            return _invalid("* BatchEmbedContentsRequest.requests: at most 100 requests can be in one batch\n")
        texts = [part.get("text", "") for item in items for part in (item.get("content") or {}).get("parts") or ()]
        if any(FAIL_EMBED in text for text in texts):
            return _error(500, "An internal error has occurred. Please retry or report.", "INTERNAL")
        limited = {
            text
            for text in texts
            if (LIMITED_ONCE_EMBED in text and text not in limited_times)
            or (LIMITED_TWICE_EMBED in text and limited_times.get(text, 0) < 2)
        }
        if limited:
            limited_times.update((text, limited_times.get(text, 0) + 1) for text in limited)
            retry = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0s"}
            return _error(429, "Resource has been exhausted (e.g. check quota).", "RESOURCE_EXHAUSTED", [retry])
        embeddings = []
        for i, item in enumerate(items):
            if item.get("model") != f"models/{model}":
                return _invalid(
                    f"Model names should be the same for all requests; requests[{i}].model is {item.get('model')}."
                )
            if not (item.get("content") or {}).get("parts"):
                return _invalid(f"* BatchEmbedContentsRequest.requests[{i}].content: content is not specified\n")
            size, scale = item.get("outputDimensionality") or 3, len(item["content"]["parts"][0].get("text", ""))
            embeddings.append({"values": [round(0.1 * (n + 1) * scale, 6) for n in range(size)]})
        return Response(orjson.dumps({"embeddings": embeddings}), media_type="application/json")

    app = Starlette(
        routes=[
            Route("/v1beta/models/{target}", dispatch, methods=["POST"]),
            Route("/v1beta/openai/chat/completions", compatible, methods=["POST"]),
        ]
    )
    app.state.requests = requests
    return app
