"""The Gemini adapter against request, response, stream and error bodies in Gemini's documented format."""

from __future__ import annotations

import asyncio
import base64
import struct
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from adapters.providers.gemini import GeminiAdapter
from adapters.providers.gemini.stream import GeminiStreamParser
from adapters.providers.params import SIGNATURE_MARK, SKIP_SIGNATURE, call_signature, signed_call_id
from adapters.providers.registry import REGISTRY
from handler.errors import InvalidRequestError, UpstreamError
from handler.ports import BuiltRequest, Target
from handler.schemas import ChatRequest, EmbeddingsRequest, Usage
from handler.wire import SSEDecoder, StreamEvent
from tests.fakes import gemini as gemini_fake

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures" / "gemini"
BASE = "https://generativelanguage.googleapis.com"

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Local time in a time zone",
        "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}},
    },
}
CALLS = [
    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
    {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": '{"tz":"CET"}'}},
]

# A representative client request; its Gemini form is tests/fixtures/gemini/generate-content-request.json.
REPRESENTATIVE: dict[str, Any] = {
    "model": "public",
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Look at this."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is it?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUg=="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "low"}},
            ],
        },
        {"role": "assistant", "content": None, "tool_calls": CALLS},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21}'},
        {"role": "tool", "tool_call_id": "call_2", "content": "12:00"},
        {"role": "developer", "content": "Answer in English."},
        {"role": "assistant", "content": "A cat. It is 21 degrees at noon in Paris."},
        {"role": "user", "content": "And tomorrow?"},
    ],
    "tools": [WEATHER, TIME],
    "tool_choice": "auto",
    "stop": ["END"],
    "max_completion_tokens": 256,
    "temperature": 0.2,
    "top_p": 0.9,
    "seed": 7,
    "response_format": {
        "type": "json_schema",
        "json_schema": {
            "name": "weather",
            "strict": True,
            "schema": {
                "type": "object",
                "properties": {"forecast": {"type": "string"}, "temp_c": {"type": "number"}},
                "required": ["forecast", "temp_c"],
                "additionalProperties": False,
            },
        },
    },
}


def target(model: str = "gemini-2.5-flash", base_url: str = BASE) -> Target:
    return Target("g", "gemini", model, "global", base_url)


def adapter() -> GeminiAdapter:
    return GeminiAdapter("g", "AIza-test-key", {})


def request(**fields: Any) -> ChatRequest:
    return ChatRequest.model_validate({"model": "public", "messages": [{"role": "user", "content": "hi"}], **fields})


def built(**fields: Any) -> tuple[dict[str, Any], list[str]]:
    result = adapter().chat_request(request(**fields), target(), stream=False)
    return orjson.loads(result.request.body), result.dropped


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def parse_stream(raw: bytes) -> tuple[list[dict[str, Any]], Usage | None]:
    a = adapter()
    decoder, parser = a.frame_decoder(), a.stream_parser(request(), target())
    chunks = []
    for i in range(0, len(raw), 37):  # odd-sized reads: frames split anywhere
        for event in decoder.feed(raw[i : i + 37]):
            chunks.extend(parser.feed(event))
    for event in decoder.finish():
        chunks.extend(parser.feed(event))
    chunks.extend(parser.finish())
    return [c.model_dump(exclude_none=True) for c in chunks], parser.usage


# --- request --------------------------------------------------------------------------------------


def test_registry_maps_the_gemini_type() -> None:
    assert REGISTRY["gemini"] is GeminiAdapter


def test_representative_request_matches_geminis_documented_form() -> None:
    result = adapter().chat_request(ChatRequest.model_validate(REPRESENTATIVE), target(), stream=False)
    expected = orjson.loads(fixture("generate-content-request.json"))
    # Gemini 2.5 refuses function calling with JSON output: the tools win and the format is reported.
    del expected["generationConfig"]["responseMimeType"], expected["generationConfig"]["responseJsonSchema"]
    assert orjson.loads(result.request.body) == expected
    assert result.dropped == ["messages.image_url.detail", "response_format"]  # (its image asks for "low" detail)


def test_a_model_that_takes_tools_with_json_output_gets_both() -> None:
    result = adapter().chat_request(
        ChatRequest.model_validate(REPRESENTATIVE), target("gemini-3-flash-preview"), stream=False
    )
    expected = orjson.loads(fixture("generate-content-request.json"))
    assert orjson.loads(result.request.body) == expected | {"contents": orjson.loads(result.request.body)["contents"]}
    assert result.dropped == ["messages.image_url.detail"]


def sent_to_the_fake(built: BuiltRequest, model: str) -> httpx.Response:
    """What the fake Gemini (tests/fakes/gemini.py, which refuses what Gemini documents it refuses) answers `built`."""
    transport = httpx.ASGITransport(app=gemini_fake.create_app())

    async def send() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://gemini") as client:
            headers = {"x-goog-api-key": gemini_fake.API_KEY, "content-type": "application/json"}
            return await client.post(
                f"/v1beta/models/{model}:generateContent", content=built.request.body, headers=headers
            )

    return asyncio.run(send())


SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}}}


@pytest.mark.parametrize("model", ["gemini-2.0-flash", "gemini-1.5-pro", "gemini-2.5-flash", "gemini-1.5-flash-latest"])
@pytest.mark.parametrize("fmt", [SCHEMA_FORMAT, {"type": "json_object"}], ids=["json_schema", "json_object"])
def test_a_json_answer_beside_function_calling_is_named_where_gemini_refuses_both(model: str, fmt: Any) -> None:
    """Gemini before 3 refuses function calling beside a JSON answer ("Function calling with a response mime type:
    'application/json' is unsupported"); the gateway held that for 2.5 alone, and sent both to 2.0 and 1.5: Gemini's
    400 for a request it claimed to serve. The tools win, the format is named, for every Gemini but 3."""
    result = adapter().chat_request(request(tools=[WEATHER], response_format=fmt), target(model), stream=False)
    assert sent_to_the_fake(result, model).status_code == 200
    assert "responseMimeType" not in orjson.loads(result.request.body).get("generationConfig", {})
    assert result.dropped == ["response_format"]


@pytest.mark.parametrize("model", ["gemini-2.0-flash", "gemini-3-pro-preview"])
def test_a_json_answer_goes_beside_tools_gemini_may_not_call(model: str) -> None:
    """With function calling off (`tool_choice: none`, Gemini's mode `NONE`) every Gemini takes a JSON answer; and
    Gemini 3 takes both."""
    for choice in ("none", "auto") if "gemini-3" in model else ("none",):
        req = request(tools=[WEATHER], tool_choice=choice, response_format=SCHEMA_FORMAT)
        result = adapter().chat_request(req, target(model), stream=False)
        assert sent_to_the_fake(result, model).status_code == 200
        assert orjson.loads(result.request.body)["generationConfig"]["responseMimeType"] == "application/json"
        assert result.dropped == []


@pytest.mark.parametrize("model", ["gemini-flash-latest", "gemini-pro-latest", "gemini-flash-lite-latest"])
def test_a_latest_alias_is_the_newest_gemini(model: str) -> None:
    """Google's aliases without a version point at its newest release (Gemini 3); they were taken for Gemini before
    3: a JSON answer beside tools was dropped (and named), reasoning asked as a 2.5 `thinkingBudget`, and a history
    call without its thought signature sent bare, which Gemini 3 refuses ("... is missing a `thought_signature`")."""
    history = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": CALLS[:1]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21}'},
    ]
    req = request(messages=history, tools=[WEATHER], response_format=SCHEMA_FORMAT, reasoning_effort="low")
    result = adapter().chat_request(req, target(model), stream=False)
    assert sent_to_the_fake(result, model).status_code == 200
    body = orjson.loads(result.request.body)
    assert body["generationConfig"]["responseMimeType"] == "application/json" and result.dropped == []
    assert body["generationConfig"]["thinkingConfig"] == {"thinkingLevel": "low"}
    assert body["contents"][1]["parts"][0]["thoughtSignature"] == SKIP_SIGNATURE


def test_key_goes_in_the_header_never_the_url() -> None:
    result = adapter().chat_request(request(), target(), stream=False)
    assert result.request.url == f"{BASE}/v1beta/models/gemini-2.5-flash:generateContent"
    assert result.request.headers["x-goog-api-key"] == "AIza-test-key"
    assert "AIza-test-key" not in result.request.url and "authorization" not in result.request.headers


@pytest.mark.parametrize(
    ("base_url", "root"),
    [
        (BASE, f"{BASE}/v1beta"),
        (f"{BASE}/v1beta", f"{BASE}/v1beta"),
        ("https://proxy.example/gemini/v1beta/", "https://proxy.example/gemini/v1beta"),
        # Google's stable version: every request was a 404 at `.../v1/v1beta/models/...` (review)
        (f"{BASE}/v1", f"{BASE}/v1"),
        ("https://proxy.example/gemini/v1/", "https://proxy.example/gemini/v1"),
        ("https://v1.proxy.example", "https://v1.proxy.example/v1beta"),  # (a host's name is no version)
    ],
)
def test_a_base_url_that_already_ends_in_the_api_version_is_not_doubled(base_url: str, root: str) -> None:
    """`base_url: https://generativelanguage.googleapis.com/v1beta`, the API's root as Google's documents write it,
    passed config check, and every request was a 404 at `.../v1beta/v1beta/models/...` (502); `.../v1`, the stable
    version's root, the same at `.../v1/v1beta/models/...`. Found by review."""
    gemini = adapter()
    at = target(base_url=gemini.base_url("global", base_url))
    assert gemini.chat_request(request(), at, stream=False).request.url == (
        f"{root}/models/gemini-2.5-flash:generateContent"
    )
    assert gemini.chat_request(request(stream=True), at, stream=True).request.url == (
        f"{root}/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    )
    embeddings = gemini.embeddings_request(EmbeddingsRequest(model="e", input="a"), at)
    assert embeddings.request.url == f"{root}/models/gemini-2.5-flash:batchEmbedContents"


def test_stream_request_uses_sse_endpoint() -> None:
    result = adapter().chat_request(request(stream=True), target("models/gemini-2.5-pro"), stream=True)
    assert result.request.url == f"{BASE}/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse"
    body = orjson.loads(result.request.body)
    assert "stream" not in body and "stream_options" not in body


def test_generation_config_maps_sampling_parameters() -> None:
    fields = {"max_tokens": 10, "n": 2, "stop": "STOP", "presence_penalty": 0.5, "frequency_penalty": -0.5, "seed": 1}
    result = adapter().chat_request(request(**fields), target("gemini-2.0-flash"), stream=False)
    assert orjson.loads(result.request.body)["generationConfig"] == {
        "maxOutputTokens": 10,
        "candidateCount": 2,
        "stopSequences": ["STOP"],
        "presencePenalty": 0.5,
        "frequencyPenalty": -0.5,
        "seed": 1,
    }
    assert result.dropped == []


@pytest.mark.parametrize("model", ["gemini-2.5-flash", "models/gemini-2.5-pro", "gemini-3-pro-preview"])
def test_penalties_are_dropped_and_named_for_models_that_refuse_them(model: str) -> None:
    """Gemini 2.5 and 3 answer 400 "Penalty is not enabled for models/..." to a non-zero penalty; a 0 passes."""
    result = adapter().chat_request(request(presence_penalty=0.5, frequency_penalty=-0.5), target(model), stream=False)
    assert "generationConfig" not in orjson.loads(result.request.body)
    assert result.dropped == ["presence_penalty", "frequency_penalty"]
    result = adapter().chat_request(request(presence_penalty=0, seed=1), target(model), stream=False)
    assert orjson.loads(result.request.body)["generationConfig"] == {"presencePenalty": 0, "seed": 1}
    assert result.dropped == []


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    body, _ = built(max_tokens=10, max_completion_tokens=20)
    assert body["generationConfig"]["maxOutputTokens"] == 20


def test_parameters_gemini_cannot_honour_are_reported() -> None:
    body, dropped = built(
        logit_bias={"50256": -100},
        logprobs=True,
        top_logprobs=2,
        user="u-1",
        parallel_tool_calls=False,
        reasoning_effort="low",
        n=10,
        stop=["a", "b", "c", "d", "e"],
    )
    assert sorted(dropped) == sorted(["logit_bias", "logprobs", "top_logprobs", "user", "parallel_tool_calls", "n"])
    config = body["generationConfig"]
    assert config["candidateCount"] == 8 and config["stopSequences"] == ["a", "b", "c", "d", "e"]  # (OpenAI: 4)
    assert set(config) == {"candidateCount", "stopSequences", "thinkingConfig"}


def test_more_stop_sequences_than_gemini_takes_are_refused_not_cut() -> None:
    with pytest.raises(InvalidRequestError, match="maximum length 5, but got an array with length 6") as refused:
        built(stop=["a", "b", "c", "d", "e", "f"])
    assert refused.value.param == "stop"


@pytest.mark.parametrize(
    ("fields", "model", "expected", "dropped"),
    [
        ({"reasoning_effort": "low"}, "gemini-2.5-flash", {"thinkingBudget": 2048}, []),
        ({"reasoning_effort": "none"}, "gemini-2.5-flash", {"thinkingBudget": 0}, []),
        ({"thinking": {"type": "adaptive"}}, "gemini-2.5-pro", {"thinkingBudget": -1, "includeThoughts": True}, []),
        (
            {"thinking": {"type": "enabled", "budget_tokens": 3000, "display": "omitted"}},
            "gemini-2.5-flash",
            {"thinkingBudget": 3000},
            [],
        ),
        (
            {"thinking": {"type": "adaptive", "effort": "high"}},
            "gemini-3-pro-preview",
            {"thinkingLevel": "high", "includeThoughts": True},
            [],
        ),
        ({"reasoning_effort": "medium"}, "gemini-3-flash", {"thinkingLevel": "medium"}, []),
        ({"reasoning_effort": "medium"}, "gemini-3-pro-preview", {"thinkingLevel": "high"}, []),
        ({"reasoning_effort": "none"}, "gemini-3-pro-preview", {"thinkingLevel": "low"}, []),
        ({"thinking": {"type": "disabled"}}, "gemini-2.5-pro", None, ["thinking"]),
        ({"reasoning_effort": "high"}, "gemini-2.0-flash", None, ["reasoning_effort"]),
        ({"thinking": {"type": "adaptive"}}, "gemini-2.0-flash", None, ["thinking"]),
        # A Responses client's `reasoning.summary` (`ChatRequest.reasoning_summary`): Gemini's thought summaries.
        (
            {"reasoning_effort": "low", "reasoning_summary": "auto"},
            "gemini-2.5-flash",
            {"thinkingBudget": 2048, "includeThoughts": True},
            [],
        ),
        ({"reasoning_summary": "detailed"}, "gemini-3-flash", {"includeThoughts": True}, []),
        ({"reasoning_effort": "none", "reasoning_summary": "auto"}, "gemini-2.5-flash", {"thinkingBudget": 0}, []),
        ({"reasoning_summary": "auto"}, "gemini-2.0-flash", None, ["reasoning_summary"]),
    ],
)
def test_reasoning_becomes_a_thinking_config(
    fields: dict[str, Any], model: str, expected: dict[str, Any] | None, dropped: list[str]
) -> None:
    req = request(**{name: value for name, value in fields.items() if name != "reasoning_summary"})
    if "reasoning_summary" in fields:  # (a Responses request's, as that front-end builds it: not a field)
        from handler.api.responses_api import ResponsesChatRequest

        req = ResponsesChatRequest.asking(fields["reasoning_summary"], req.model_dump(exclude_unset=True))
    result = adapter().chat_request(req, target(model), stream=False)
    body = orjson.loads(result.request.body)
    assert body.get("generationConfig", {}).get("thinkingConfig") == expected and result.dropped == dropped


OMITTED = {"type": "enabled", "display": "omitted"}


@pytest.mark.parametrize(
    ("fields", "model", "expected", "dropped"),
    [
        # The review's requests: Chat's `max_tokens: 1000` with high effort (16,384 was sent), a budgeted Codex
        # request's cap of 4,096. The answer keeps half of a cap this small, as a Claude answer does.
        ({"max_tokens": 1000, "reasoning_effort": "high"}, "gemini-2.5-flash", {"thinkingBudget": 500}, []),
        ({"max_completion_tokens": 4096, "reasoning_effort": "high"}, "gemini-2.5-pro", {"thinkingBudget": 2048}, []),
        # ... and 4,096 tokens of a larger one.
        ({"max_tokens": 20000, "reasoning_effort": "high"}, "gemini-2.5-flash", {"thinkingBudget": 15904}, []),
        ({"max_tokens": 40000, "reasoning_effort": "high"}, "gemini-2.5-flash", {"thinkingBudget": 16384}, []),
        # A budget the client named below the cap is its own split; one that is not is lowered, and named.
        ({"max_tokens": 4000, "thinking": {**OMITTED, "budget_tokens": 3000}}, "gemini-2.5-flash", 3000, []),
        ({"max_tokens": 4000, "thinking": {**OMITTED, "budget_tokens": 4000}}, "gemini-2.5-flash", 2000, ["thinking"]),
        # "As much as the prompt needs" could take the whole cap: the room is its most.
        ({"max_tokens": 8000, "thinking": {"type": "adaptive", "display": "omitted"}}, "gemini-2.5-flash", 4000, []),
        ({"max_tokens": 40000, "thinking": {"type": "adaptive", "display": "omitted"}}, "gemini-2.5-flash", -1, []),
        # Less room than Flash-Lite's least budget (512): no thinking rather than no answer, named; Pro always thinks.
        ({"max_tokens": 600, "reasoning_effort": "low"}, "gemini-2.5-flash-lite", 0, ["reasoning_effort"]),
        ({"max_tokens": 200, "reasoning_effort": "low"}, "gemini-2.5-pro", 128, []),
        # Gemini 3's level: the deepest whose budget fits the room.
        ({"max_tokens": 1000, "reasoning_effort": "high"}, "gemini-3-flash", {"thinkingLevel": "minimal"}, []),
        ({"max_tokens": 4096, "reasoning_effort": "high"}, "gemini-3-flash", {"thinkingLevel": "low"}, []),
        ({"max_tokens": 4096, "reasoning_effort": "high"}, "gemini-3-pro-preview", {"thinkingLevel": "low"}, []),
        ({"max_tokens": 20000, "reasoning_effort": "high"}, "gemini-3-flash", {"thinkingLevel": "medium"}, []),
        ({"max_tokens": 40000, "reasoning_effort": "high"}, "gemini-3-flash", {"thinkingLevel": "high"}, []),
        ({"max_tokens": 1000, "reasoning_effort": "none"}, "gemini-3-flash", {"thinkingLevel": "minimal"}, []),
    ],
)
def test_thinking_leaves_the_answer_room_under_the_output_cap(
    fields: dict[str, Any], model: str, expected: int | dict[str, Any], dropped: list[str]
) -> None:
    """Gemini counts its thoughts against `maxOutputTokens`: a budget that reaches the cap can leave no answer
    (`MAX_TOKENS`, nothing written)."""
    result = adapter().chat_request(request(**fields), target(model), stream=False)
    config = orjson.loads(result.request.body)["generationConfig"]
    assert config["thinkingConfig"] == (expected if isinstance(expected, dict) else {"thinkingBudget": expected})
    assert config["maxOutputTokens"] == fields.get("max_tokens", fields.get("max_completion_tokens"))
    assert result.dropped == dropped


def test_parallel_tool_calls_true_is_geminis_behaviour_and_not_reported() -> None:
    body, dropped = built(parallel_tool_calls=True, temperature=0)
    assert dropped == [] and body["generationConfig"] == {"temperature": 0}


def test_json_object_asks_for_json_without_schema() -> None:
    body, _ = built(response_format={"type": "json_object"})
    assert body["generationConfig"] == {"responseMimeType": "application/json"}
    body, _ = built(response_format={"type": "text"})
    assert "generationConfig" not in body


@pytest.mark.parametrize(
    ("choice", "config"),
    [
        ("none", {"mode": "NONE"}),
        ("auto", {"mode": "AUTO"}),
        ("required", {"mode": "ANY"}),
        ({"type": "function", "function": {"name": "get_time"}}, {"mode": "ANY", "allowedFunctionNames": ["get_time"]}),
    ],
)
def test_tool_choice_maps_to_function_calling_config(choice: Any, config: dict[str, Any]) -> None:
    body, _ = built(tools=[WEATHER, TIME], tool_choice=choice)
    assert body["toolConfig"] == {"functionCallingConfig": config}
    assert [d["name"] for d in body["tools"][0]["functionDeclarations"]] == ["get_weather", "get_time"]


def test_strict_tools_are_reported() -> None:
    strict = {"type": "function", "function": {**WEATHER["function"], "strict": True}}
    body, dropped = built(tools=[strict])
    assert dropped == ["tools.strict"] and "toolConfig" not in body


def test_tool_results_find_their_function_name_and_become_objects() -> None:
    messages = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "tool_calls": CALLS[:1]},
        {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "[1, 2]"}]},
    ]
    body, _ = built(messages=messages)
    assert [c["role"] for c in body["contents"]] == ["user", "model", "user"]
    assert body["contents"][2]["parts"] == [
        {"functionResponse": {"id": "call_1", "name": "get_weather", "response": {"result": [1, 2]}}}
    ]


def test_tool_result_for_an_unknown_call_is_a_client_error() -> None:
    messages = [{"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "call_nope", "content": "1"}]
    with pytest.raises(InvalidRequestError, match="call_nope"):
        built(messages=messages)


def test_media_urls_become_inline_or_file_data_and_unusable_ones_are_reported() -> None:
    content = [
        {"type": "image_url", "image_url": {"url": "https://example.com/photo"}},
        {"type": "image_url", "image_url": {"url": "data:text/plain,hello%20world"}},
        {"type": "image_url", "image_url": {"url": "ftp://example.com/a.png"}},
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
        {"type": "file", "file": {"file_id": "file-abc"}},
    ]
    body, dropped = built(messages=[{"role": "user", "content": content}])
    assert body["contents"][0]["parts"] == [
        {"fileData": {"fileUri": "https://example.com/photo"}},
        {"inlineData": {"mimeType": "text/plain", "data": base64.b64encode(b"hello world").decode()}},
        {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}},
    ]
    assert dropped == ["messages.image_url", "messages.file"]


def test_only_system_messages_are_a_clear_400_not_an_empty_request() -> None:
    with pytest.raises(InvalidRequestError) as refused:
        built(messages=[{"role": "system", "content": "Be brief."}])
    assert refused.value.param == "messages"


# --- answer ---------------------------------------------------------------------------------------


def test_text_answer_joins_parts_keeps_thoughts_apart_and_counts_usage() -> None:
    completion = adapter().chat_response(fixture("generate-content-response.json"), request(), target())
    message = completion.choices[0].message
    assert message.content == "Hello! How can I help you today?"
    assert message.reasoning_content == "The user greets me; answer briefly."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.id == "chatcmpl-mHxKaPK0Io2Ez7IPwY3B-Ac" and completion.model == "gemini-2.5-flash"
    usage = completion.usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (2100, 41, 2141)
    assert usage.cached_tokens == 2048
    assert usage.completion_tokens_details is not None and usage.completion_tokens_details.reasoning_tokens == 32


def test_function_calls_become_tool_calls_with_generated_ids() -> None:
    completion = adapter().chat_response(fixture("function-call-response.json"), request(), target())
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    calls = choice.message.tool_calls or []
    assert [(c.function.name, orjson.loads(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {"tz": "CET"}),
    ]
    assert calls[0].id.startswith("call_0_") and calls[1].id.startswith("call_1_")
    assert calls[0].id != calls[1].id


def test_generated_ids_answer_back_into_function_responses() -> None:
    completion = adapter().chat_response(fixture("function-call-response.json"), request(), target())
    calls = [c.model_dump() for c in completion.choices[0].message.tool_calls or []]
    messages = [
        {"role": "user", "content": "Weather and time?"},
        {"role": "assistant", "tool_calls": calls},
        {"role": "tool", "tool_call_id": calls[1]["id"], "content": '{"time": "12:00"}'},
    ]
    body, _ = built(messages=messages)
    assert body["contents"][2]["parts"][0]["functionResponse"]["name"] == "get_time"


def test_parallel_calls_answered_out_of_order_go_back_in_call_order_with_their_ids() -> None:
    """OpenAI's APIs pair a tool result with its call by id, so a client may answer parallel calls in any order;
    Gemini pairs them by position: Paris's result must not go back in Rome's place."""
    signed = signed_call_id("call_rome", "CiQB+/xz9A==")
    calls = [
        {"id": "call_paris", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
        {"id": signed, "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}},
    ]
    messages = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "tool_calls": calls},
        {"role": "tool", "tool_call_id": signed, "content": "25C in Rome"},
        {"role": "tool", "tool_call_id": "call_paris", "content": "18C in Paris"},
        {"role": "user", "content": "Which is warmer?"},
    ]
    contents = built(messages=messages)[0]["contents"]
    assert [part["functionCall"]["id"] for part in contents[1]["parts"]] == ["call_paris", "call_rome"]
    assert contents[2] == {
        "role": "user",
        "parts": [
            {"functionResponse": {"id": "call_paris", "name": "get_weather", "response": {"result": "18C in Paris"}}},
            {"functionResponse": {"id": "call_rome", "name": "get_weather", "response": {"result": "25C in Rome"}}},
            {"text": "Which is warmer?"},
        ],
    }


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("BLOCKLIST", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("SPII", "content_filter"),
        ("OTHER", "stop"),  # (after text: see test_an_unknown_finish_reason_after_text_keeps_the_text)
        ("ESCALATION", "content_filter"),
        ("IMAGE_SAFETY", "content_filter"),
        ("IMAGE_PROHIBITED_CONTENT", "content_filter"),
        ("IMAGE_RECITATION", "content_filter"),
        ("IMAGE_OTHER", "content_filter"),
        ("NO_IMAGE", "content_filter"),
        ("LANGUAGE", "content_filter"),
        ("CONTINUATION", "length"),
    ],
)
def test_finish_reasons(raw: str, expected: str) -> None:
    answer = {"candidates": [{"content": {"parts": [{"text": "x"}], "role": "model"}, "finishReason": raw}]}
    completion = adapter().chat_response(orjson.dumps(answer), request(), target())
    assert completion.choices[0].finish_reason == expected


def test_every_finish_reason_the_adapter_reads_is_one_of_googles() -> None:
    """Each reason the adapter maps (`FINISH_REASONS`) or reads as no answer (`UNANSWERED`) is one of the google-genai
    SDK's `FinishReason`s (Google's own list: a misspelt name would never match), in one table only. A reason the
    SDK lists that neither table has, as one Google adds later, is read as a reason the adapter does not know
    (`test_an_unknown_finish_reason_with_nothing_said_is_a_malformed_answer_and_logged`), never an empty `stop`:
    `TOO_MANY_TOOL_CALLS`, `MISSING_THOUGHT_SIGNATURE` and `IMAGE_OTHER`, unread, ended answers so (review)."""
    from google.genai.types import FinishReason  # (the conformance suite's reference for Gemini's types)

    from adapters.providers.gemini.adapter import FINISH_REASONS, UNANSWERED

    assert set(FINISH_REASONS) | set(UNANSWERED) <= {reason.value for reason in FinishReason}
    assert not set(FINISH_REASONS) & set(UNANSWERED)
    assert {"IMAGE_OTHER", "NO_IMAGE"} <= {
        reason for reason, mapped in FINISH_REASONS.items() if mapped == "content_filter"
    }


UNANSWERED_REASONS = [
    "MALFORMED_FUNCTION_CALL",
    "UNEXPECTED_TOOL_CALL",
    "TOO_MANY_TOOL_CALLS",
    "MISSING_THOUGHT_SIGNATURE",
    "MALFORMED_RESPONSE",
    "PUP_LIMITED_DISABLED",
]


@pytest.mark.parametrize("raw", UNANSWERED_REASONS)
def test_an_unanswered_finish_is_a_malformed_answer_with_what_it_billed(raw: str) -> None:
    """Not an empty `stop`: the provider's malformed answer (retryable), carrying the usage Gemini billed, whole or
    streamed. `TOO_MANY_TOOL_CALLS` and `MISSING_THOUGHT_SIGNATURE` (no parts, 1,200 prompt tokens billed) were
    `finish_reason: stop` with content '' (review)."""
    answer = {"candidates": [{"finishReason": raw, "index": 0}], "usageMetadata": {"promptTokenCount": 1200}}
    with pytest.raises(UpstreamError) as unusable:
        adapter().chat_response(orjson.dumps(answer), request(), target())
    assert unusable.value.retryable and unusable.value.billed is not None
    assert unusable.value.billed.prompt_tokens == 1200 and raw in unusable.value.message
    with pytest.raises(UpstreamError) as streamed:
        GeminiStreamParser("gemini-2.5-flash").feed(StreamEvent(None, orjson.dumps(answer)))
    assert streamed.value.retryable and streamed.value.billed is not None
    assert streamed.value.billed.prompt_tokens == 1200


@pytest.mark.parametrize("raw", ["TOO_MANY_TOOL_CALLS", "MALFORMED_RESPONSE"])
def test_an_unanswered_finish_after_text_is_no_answer_but_calls_are_the_clients_to_run(raw: str) -> None:
    """The text before it is not the answer (a stream ends in the client's in-stream error); calls the model
    made are."""
    parser = GeminiStreamParser("gemini-2.5-flash")
    parser.feed(StreamEvent(None, orjson.dumps({"candidates": [{"content": {"parts": [{"text": "Let me"}]}}]})))
    with pytest.raises(UpstreamError):
        parser.feed(StreamEvent(None, orjson.dumps({"candidates": [{"finishReason": raw}]})))
    call = {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}
    answer = {"candidates": [{"content": {"parts": [{"text": "Let me"}, call]}, "finishReason": raw}]}
    completion = adapter().chat_response(orjson.dumps(answer), request(tools=[WEATHER]), target())
    assert completion.choices[0].finish_reason == "tool_calls"


def empty_answers(raw: Any) -> list[dict[str, Any]]:
    """An answer of one candidate without parts ending with `raw`, and the same with its `content` but no parts."""
    usage = {"promptTokenCount": 1200, "candidatesTokenCount": 0, "totalTokenCount": 1200}
    return [
        {"candidates": [{"finishReason": raw, "index": 0}], "usageMetadata": usage},
        {"candidates": [{"content": {"role": "model"}, "finishReason": raw, "index": 0}], "usageMetadata": usage},
    ]


# A key in what Gemini sent as its finish reason (Google's key shape): named nowhere, redacted.
KEYED_REASON = "LEAKED_AIzaSyB-0123456789abcdefghijklmnopqrstu"


@pytest.mark.parametrize("raw", ["OTHER", "FINISH_REASON_UNSPECIFIED", "A_REASON_GOOGLE_ADDS_LATER", KEYED_REASON, 7])
def test_an_unknown_finish_reason_with_nothing_said_is_a_malformed_answer_and_logged(
    raw: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A reason the adapter does not know ending a candidate with nothing in it was an empty `stop`, a client's
    finished answer: now the provider's malformed answer (failed over, what it billed charged), whole and
    streamed, and a warning naming the reason, any key in it redacted."""
    for answer in empty_answers(raw):
        with caplog.at_level("WARNING", logger="gateway"), pytest.raises(UpstreamError) as whole:
            adapter().chat_response(orjson.dumps(answer), request(), target())
        with caplog.at_level("WARNING", logger="gateway"), pytest.raises(UpstreamError) as streamed:
            GeminiStreamParser("gemini-2.5-flash").feed(StreamEvent(None, orjson.dumps(answer)))
        for unusable in (whole.value, streamed.value):
            assert unusable.retryable and unusable.upstream_status == 200 and unusable.outcome == "invalid_response"
            assert unusable.billed is not None and unusable.billed.prompt_tokens == 1200
    logged = [(r.getMessage(), getattr(r, "finish_reason", None)) for r in caplog.records]
    assert len(logged) == 4 and all("finishReason" in message for message, _ in logged)
    if raw == KEYED_REASON:
        assert "AIza" not in caplog.text and "AIza" not in whole.value.message
        assert {reason for _, reason in logged} == {"LEAKED_[REDACTED]"}
        assert "LEAKED_[REDACTED]" in whole.value.message
    else:
        assert {reason for _, reason in logged} == {str(raw)} and str(raw) in whole.value.message


def test_an_unknown_finish_reason_after_text_keeps_the_text(caplog: pytest.LogCaptureFixture) -> None:
    """Text (or calls) before a reason the adapter does not know is the model's answer: kept, as `stop` (or
    `tool_calls`), whole and streamed, with the text in an event before the one that ends it; logged."""
    said = {"content": {"parts": [{"text": "Paris."}]}}
    with caplog.at_level("WARNING", logger="gateway"):
        whole = {"candidates": [{**said, "finishReason": "A_NEW_REASON"}]}
        completion = adapter().chat_response(orjson.dumps(whole), request(), target())
        parser = GeminiStreamParser("gemini-2.5-flash")
        chunks = parser.feed(StreamEvent(None, orjson.dumps({"candidates": [said]})))
        chunks += parser.feed(StreamEvent(None, orjson.dumps({"candidates": [{"finishReason": "A_NEW_REASON"}]})))
    assert (completion.choices[0].message.content, completion.choices[0].finish_reason) == ("Paris.", "stop")
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Paris."
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["stop"]
    assert [getattr(r, "answered", None) for r in caplog.records] == [True, True]
    call = {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}
    called = {"candidates": [{"content": {"parts": [call]}, "finishReason": "OTHER"}]}
    completion = adapter().chat_response(orjson.dumps(called), request(tools=[WEATHER]), target())
    assert completion.choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("raw", ["IMAGE_OTHER", "NO_IMAGE", "IMAGE_SAFETY"])
def test_an_image_withheld_is_a_filtered_answer_whole_and_streamed(raw: str) -> None:
    """`IMAGE_OTHER` (and `NO_IMAGE`) ended as an empty `stop`, while `IMAGE_SAFETY` and the others beside them
    are `content_filter` (review): no image, never a finished answer."""
    for answer in empty_answers(raw):
        completion = adapter().chat_response(orjson.dumps(answer), request(), target())
        assert completion.choices[0].finish_reason == "content_filter"
        chunks = GeminiStreamParser("gemini-2.5-flash").feed(StreamEvent(None, orjson.dumps(answer)))
        assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["content_filter"]


def test_several_candidates_become_several_choices() -> None:
    answer = {
        "candidates": [
            {"content": {"parts": [{"text": "a"}], "role": "model"}, "finishReason": "STOP", "index": 0},
            {"content": {"parts": [{"text": "b"}], "role": "model"}, "finishReason": "MAX_TOKENS", "index": 1},
        ]
    }
    completion = adapter().chat_response(orjson.dumps(answer), request(n=2), target())
    assert [(c.index, c.message.content, c.finish_reason) for c in completion.choices] == [
        (0, "a", "stop"),
        (1, "b", "length"),
    ]


def test_blocked_prompt_is_a_content_filter_answer() -> None:
    completion = adapter().chat_response(fixture("prompt-blocked-response.json"), request(), target())
    choice = completion.choices[0]
    assert choice.finish_reason == "content_filter" and choice.message.content is None
    assert choice.message.refusal is not None and "PROHIBITED_CONTENT" in choice.message.refusal
    assert completion.usage is not None and completion.usage.prompt_tokens == 12


@pytest.mark.parametrize("body", [b"<html>oops</html>", b"[]", b"{}", b'{"candidates": []}'])
def test_unusable_200_is_a_retryable_upstream_error(body: bytes) -> None:
    with pytest.raises(UpstreamError) as caught:
        adapter().chat_response(body, request(), target())
    assert caught.value.retryable and caught.value.upstream_status == 200


# --- stream ---------------------------------------------------------------------------------------


def test_stream_starts_with_role_then_text_then_finish_and_keeps_last_usage() -> None:
    chunks, usage = parse_stream(fixture("stream.sse"))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": None}  # (its thought comes first)
    deltas = [ch["delta"] for c in chunks for ch in c["choices"]]
    assert "".join(d.get("content") or "" for d in deltas) == "Hello there! How can I help you today?"
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "Thinking about greetings."
    reasons = [ch.get("finish_reason") for c in chunks for ch in c["choices"]]
    assert reasons[-1] == "stop" and reasons.count("stop") == 1
    assert {c["id"] for c in chunks} == {"chatcmpl-s3xKaKvVBOOVz7IP9fXbwQ4"}
    # the last chunk carries only usage, as an OpenAI stream with include_usage ends
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 30
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (6, 30)


def test_stream_function_calls_arrive_whole() -> None:
    chunks, usage = parse_stream(fixture("function-call-stream.sse"))
    calls = [tc for c in chunks for ch in c["choices"] for tc in ch["delta"].get("tool_calls", [])]
    assert [(tc["index"], tc["function"]["name"], tc["function"]["arguments"]) for tc in calls] == [
        (0, "get_weather", '{"city":"Paris"}'),
        (1, "get_time", '{"tz":"CET"}'),
    ]
    assert all(tc["id"].startswith("call_") and tc["type"] == "function" for tc in calls)
    assert [ch.get("finish_reason") for c in chunks for ch in c["choices"]][-1] == "tool_calls"
    assert usage is not None and usage.prompt_tokens == 74


def test_stream_cut_short_has_no_finish_and_no_usage_chunk_without_metadata() -> None:
    parser = GeminiStreamParser("gemini-2.5-flash")
    event = StreamEvent(None, b'{"candidates": [{"content": {"parts": [{"text": "Hel"}], "role": "model"}}]}')
    chunks = parser.feed(event) + parser.finish()
    assert [c.choices[0].delta.content for c in chunks] == ["", "Hel"]
    assert all(c.choices[0].finish_reason is None for c in chunks) and parser.usage is None


def test_stream_blocked_prompt_ends_with_content_filter() -> None:
    parser = GeminiStreamParser("gemini-2.5-flash")
    chunks = parser.feed(StreamEvent(None, fixture("prompt-blocked-response.json"))) + parser.finish()
    assert chunks[1].choices[0].finish_reason == "content_filter"
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 12


def test_in_stream_error_raises_and_bad_json_is_malformed() -> None:
    parser = adapter().stream_parser(request(), target())
    events = SSEDecoder().feed(b'data: {"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}}\n\n')
    with pytest.raises(UpstreamError, match="overloaded") as caught:
        parser.feed(events[0])
    assert caught.value.upstream_status == 503 and caught.value.retryable
    with pytest.raises(UpstreamError) as bad:
        parser.feed(StreamEvent(None, b"{not json"))
    assert bad.value.upstream_status == 200 and bad.value.retryable


# --- errors ---------------------------------------------------------------------------------------


def test_429_is_retryable_with_googles_retry_delay() -> None:
    error = adapter().error(429, fixture("error-429.json"), {})
    assert error.retryable and error.retry_after == 27.0 and error.upstream_type == "RESOURCE_EXHAUSTED"
    assert "exceeded your current quota" in error.message
    assert adapter().error(429, fixture("error-429.json"), {"retry-after": "2"}).retry_after == 2.0


@pytest.mark.parametrize(("delay", "wait"), [("infs", None), ("nans", None), ("1e300s", 86_400.0), ("-3s", 0.0)])
def test_a_retry_delay_is_read_as_a_retry_after_is(delay: str, wait: float | None) -> None:
    """Google's `retryDelay` is a wait as a `retry-after` is: none for one that is not a number (`infs` crashed the
    gateway's answer, a 500 where a 429 belonged), a day at most."""
    body = fixture("error-429.json").replace(b'"27s"', orjson.dumps(delay))
    assert adapter().error(429, body, {}).retry_after == wait


def test_400_is_not_retryable_and_keeps_googles_message() -> None:
    error = adapter().error(400, fixture("error-400.json"), {})
    assert not error.retryable and error.upstream_status == 400 and error.upstream_type == "INVALID_ARGUMENT"
    assert "contents is not specified" in error.message


def test_list_wrapped_503_is_retryable() -> None:
    error = adapter().error(503, fixture("error-503-list.json"), {})
    assert error.retryable and error.upstream_type == "UNAVAILABLE" and "overloaded" in error.message


def test_rejected_api_key_is_the_gateways_fault_not_the_clients() -> None:
    error = adapter().error(400, fixture("error-400-api-key.json"), {})
    assert error.upstream_status == 401 and error.deployment_fault and error.retryable  # (on the next deployment)
    assert "AIza-test-key" not in error.message


def test_500_and_non_json_bodies_still_map() -> None:
    error = adapter().error(500, b"<html>Internal</html>", {})
    assert error.retryable and "Internal" in error.message


# --- embeddings -----------------------------------------------------------------------------------


def test_embeddings_request_is_a_batch_with_output_dimensionality() -> None:
    req = EmbeddingsRequest(model="e", input=["a", "b"], dimensions=768, user="u")
    result = adapter().embeddings_request(req, target("gemini-embedding-001"))
    assert result.request.url == f"{BASE}/v1beta/models/gemini-embedding-001:batchEmbedContents"
    assert result.request.headers["x-goog-api-key"] == "AIza-test-key" and result.dropped == ["user"]
    assert orjson.loads(result.request.body) == {
        "requests": [
            {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": t}]}, "outputDimensionality": 768}
            for t in ("a", "b")
        ]
    }


def test_embeddings_refuse_token_ids() -> None:
    with pytest.raises(InvalidRequestError):
        adapter().embeddings_request(EmbeddingsRequest(model="e", input=[1, 2, 3]), target())


def test_embeddings_response_in_order_as_floats_or_base64() -> None:
    req = EmbeddingsRequest(model="e", input=["first", "second"])
    result = adapter().embeddings_response(fixture("batch-embed-response.json"), req, target("gemini-embedding-001"))
    assert [d.index for d in result.data] == [0, 1]
    assert result.data[0].embedding == [0.013168523, -0.008711934, -0.046782676, 0.00069968984]
    assert result.usage.prompt_tokens > 0
    req64 = EmbeddingsRequest(model="e", input=["first", "second"], encoding_format="base64")
    encoded = adapter().embeddings_response(fixture("batch-embed-response.json"), req64, target()).data[1].embedding
    assert isinstance(encoded, str)
    assert struct.unpack("<4f", base64.b64decode(encoded)) == pytest.approx(
        [-0.021315768, 0.0127201, 0.0081643835, -0.03429174]
    )


def test_empty_text_parts_are_left_out() -> None:
    content = [{"type": "text", "text": ""}, {"type": "text", "text": "hi"}]
    body, _ = built(messages=[{"role": "user", "content": content}])
    assert body["contents"] == [{"role": "user", "parts": [{"text": "hi"}]}]


def test_gemini_3_gets_a_signature_on_every_function_call_step() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    messages = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "18"},
    ]
    result = adapter().chat_request(request(messages=messages), target("gemini-3-pro-preview"), stream=False)
    part = orjson.loads(result.request.body)["contents"][1]["parts"][0]
    # A history from elsewhere has no signature: Gemini's documented stand-in keeps the request valid.
    assert part["thoughtSignature"] == "skip_thought_signature_validator"


def test_a_message_name_gemini_cannot_carry_is_reported() -> None:
    _, dropped = built(messages=[{"role": "user", "content": "hi", "name": "alice"}])
    assert dropped == ["messages.name"]


def test_a_calls_thought_signature_rides_in_its_id_and_goes_back() -> None:
    signature = "CiQB+/xz9A=="
    identifier = signed_call_id("call_0_ab", signature)
    assert identifier.replace("_", "").replace("-", "").isalnum() and call_signature(identifier) == signature
    messages = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "tool_calls": [{"id": identifier, "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": identifier, "content": "ok"},
        {
            "role": "assistant",
            "tool_calls": [{"id": "call_from_elsewhere", "function": {"name": "f", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "call_from_elsewhere", "content": "ok"},
    ]
    result = adapter().chat_request(request(messages=messages), target("gemini-3-flash"), stream=False)
    contents = orjson.loads(result.request.body)["contents"]
    assert contents[1]["parts"][0]["thoughtSignature"] == signature
    assert contents[3]["parts"][0]["thoughtSignature"] == "skip_thought_signature_validator"
    older = adapter().chat_request(request(messages=messages[:3]), target("gemini-2.5-flash"), stream=False)
    assert orjson.loads(older.request.body)["contents"][1]["parts"][0]["thoughtSignature"] == signature


def test_a_parameter_sent_at_its_default_is_not_named_as_dropped() -> None:
    """`logprobs: false` and `store: false` ask for nothing (under `x-gateway-strict` naming them was a 400 for
    a valid request); `true` is a wish Gemini cannot honour, and named."""
    _, dropped = built(logprobs=False, store=False)
    assert "logprobs" not in dropped and "store" not in dropped
    _, dropped = built(logprobs=True)
    assert "logprobs" in dropped


@pytest.mark.parametrize(
    ("model", "fields", "budget", "named"),
    [
        ("gemini-2.5-flash", {"reasoning_effort": "xhigh"}, 24576, False),  # a level: the most there is
        ("gemini-2.5-flash", {"thinking": {"type": "enabled", "budget_tokens": 40000}}, 24576, True),
        ("gemini-2.5-flash-lite", {"thinking": {"type": "enabled", "budget_tokens": 100}}, 512, True),
        ("gemini-2.5-pro", {"reasoning_effort": "xhigh"}, 32768, False),
        ("gemini-2.5-flash", {"reasoning_effort": "low"}, 2048, False),
    ],
)
def test_a_thinking_budget_stays_within_what_the_model_takes(
    model: str, fields: dict[str, Any], budget: int, named: bool
) -> None:
    """Beyond its range (Flash 24,576, Flash-Lite 512 to 24,576, Pro 128 to 32,768) Gemini answers 400."""
    body, dropped = adapter().chat_body(request(**fields), target(model))
    assert body["generationConfig"]["thinkingConfig"]["thinkingBudget"] == budget
    assert (("thinking" in dropped) or ("reasoning_effort" in dropped)) is named


def test_audio_output_is_counted_apart_from_the_text() -> None:
    """Gemini counts an answer's audio by modality (`candidatesTokensDetails`), as OpenAI's
    `completion_tokens_details.audio_tokens`: priced at the model's `audio_output`, dearer than its text."""
    from adapters.providers.gemini.adapter import usage_of

    meta = {
        "promptTokenCount": 10,
        "candidatesTokenCount": 300,
        "candidatesTokensDetails": [{"modality": "AUDIO", "tokenCount": 250}, {"modality": "TEXT", "tokenCount": 50}],
        "totalTokenCount": 310,
    }
    usage = usage_of(meta)
    assert usage is not None and (usage.completion_tokens, usage.audio_completion_tokens) == (300, 250)
    plain = usage_of({**meta, "candidatesTokensDetails": [{"modality": "TEXT", "tokenCount": 300}]})
    assert plain is not None and plain.audio_completion_tokens == 0 and plain.completion_tokens_details is None


@pytest.mark.parametrize("count", [1200.5, "1200", True], ids=["fraction", "numeral", "bool"])
@pytest.mark.parametrize(
    "changed",
    [
        lambda count: {"promptTokenCount": count},
        lambda count: {"candidatesTokenCount": count},
        lambda count: {"thoughtsTokenCount": count},
        lambda count: {"cachedContentTokenCount": count},
        lambda count: {"promptTokensDetails": [{"modality": "AUDIO", "tokenCount": count}]},
    ],
    ids=["prompt", "candidates", "thoughts", "cached", "audio"],
)
def test_a_usage_count_that_is_no_plain_integer_is_unreadable_not_zero(changed: Any, count: object) -> None:
    """`usageMetadata`'s counts were read as 0 where not an integer: `promptTokenCount: 1200.5` billed no input at
    all, as the provider's count (found by review). Such a count makes the answer malformed."""
    from adapters.providers.gemini.adapter import usage_of

    meta = {"promptTokenCount": 1200, "candidatesTokenCount": 9, "totalTokenCount": 1209}
    assert usage_of(meta) == Usage.of(1200, 9)
    with pytest.raises(ValueError):  # (the pipeline's malformed answer: `wire.SHAPE_ERRORS`)
        usage_of({**meta, **changed(count)})


@pytest.mark.parametrize("given", [None, "", "=="], ids=["missing", "empty", "padding"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_call_gemini_gave_no_signature_goes_back_with_none_of_its_own(given: str | None, stream: bool) -> None:
    """A call whose part has no `thoughtSignature`, an empty one, or one of padding alone (nothing to carry) is
    handed out by its id alone: an id with an empty signature (`__gts_`, which "==" made) carried nothing. On the
    next turn the call goes back with no signature to Gemini 2.5 (none given, none sent, never `""`), and with
    Gemini's documented stand-in to Gemini 3, which refuses a call without one; the fake Gemini takes both."""
    part: dict[str, Any] = {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}
    if given is not None:
        part["thoughtSignature"] = given
    answer = {"candidates": [{"content": {"role": "model", "parts": [part]}, "finishReason": "STOP"}]}
    if stream:
        chunks = adapter().stream_parser(request(), target()).feed(StreamEvent(None, orjson.dumps(answer)))
        call_id = next(c.id for k in chunks for d in k.choices for c in d.delta.tool_calls or ())
    else:
        calls = adapter().chat_response(orjson.dumps(answer), request(), target()).choices[0].message.tool_calls
        call_id = (calls or [])[0].id
    assert call_id is not None and SIGNATURE_MARK not in call_id and call_signature(call_id) is None
    call = {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
    history = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call_id, "content": "18C"},
    ]
    for model, signature in (("gemini-2.5-flash", None), ("gemini-3-pro-preview", SKIP_SIGNATURE)):
        built = adapter().chat_request(request(messages=history, tools=[WEATHER]), target(model), stream=False)
        sent = orjson.loads(built.request.body)["contents"][1]["parts"][0]
        assert sent.get("thoughtSignature") == signature and sent["functionCall"]["id"] == call_id
        assert sent_to_the_fake(built, model).status_code == 200


def test_the_fake_refuses_an_empty_thought_signature_as_gemini_does() -> None:
    """Gemini reads `thoughtSignature` as the bytes it gave; an empty one is none it gave (the check the test above
    leans on: a `""` sent back would be the fake's 400)."""
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    history = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "18C"},
    ]
    built = adapter().chat_request(request(messages=history, tools=[WEATHER]), target(), stream=False)
    body = orjson.loads(built.request.body)
    body["contents"][1]["parts"][0]["thoughtSignature"] = ""
    built.request.body = orjson.dumps(body)
    assert sent_to_the_fake(built, "gemini-2.5-flash").status_code == 400


def test_an_empty_signature_a_client_sends_back_in_extra_content_is_not_sent_on() -> None:
    """A client's `extra_content.google.thought_signature` of `""` is no signature: the call goes as one Gemini gave
    none for (Gemini 2.5: none; Gemini 3: the documented stand-in), never with `""`, which Gemini refuses."""
    call = {
        "id": "c1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": "{}"},
        "extra_content": {"google": {"thought_signature": ""}},
    }
    history = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "18C"},
    ]
    for model, signature in (("gemini-2.5-flash", None), ("gemini-3-pro-preview", SKIP_SIGNATURE)):
        built = adapter().chat_request(request(messages=history, tools=[WEATHER]), target(model), stream=False)
        assert orjson.loads(built.request.body)["contents"][1]["parts"][0].get("thoughtSignature") == signature
        assert sent_to_the_fake(built, model).status_code == 200


@pytest.mark.parametrize("raw", ["OTHER", "TOO_MANY_TOOL_CALLS"])
def test_one_empty_candidate_of_several_does_not_throw_the_others_answers_away(raw: str) -> None:
    """`n: 2`: candidate 0 answers "Paris.", candidate 1 ends `raw` with nothing in it. The whole answer was the
    provider's malformed answer (a 502, or a failover billed on top), candidate 0's answer lost (found by review):
    the empty one ends `stop`, as before, the other is kept, whole and streamed; both empty, it is the answer's
    failure still."""
    usage = {"promptTokenCount": 10, "candidatesTokenCount": 2, "totalTokenCount": 12}
    answered = {"index": 0, "content": {"role": "model", "parts": [{"text": "Paris."}]}, "finishReason": "STOP"}
    empty = {"index": 1, "content": {"role": "model"}, "finishReason": raw}
    answer = {"candidates": [answered, empty], "usageMetadata": usage}
    completion = adapter().chat_response(orjson.dumps(answer), request(n=2), target())
    assert [(c.message.content, c.finish_reason) for c in completion.choices] == [("Paris.", "stop"), ("", "stop")]
    parser = GeminiStreamParser("gemini-2.5-flash")
    chunks = parser.feed(StreamEvent(None, orjson.dumps({"candidates": [{**answered, "finishReason": None}]})))
    chunks += parser.feed(StreamEvent(None, orjson.dumps({"candidates": [empty], "usageMetadata": usage})))
    chunks += parser.feed(StreamEvent(None, orjson.dumps({"candidates": [{"index": 0, "finishReason": "STOP"}]})))
    ends = {choice.index: choice.finish_reason for chunk in chunks for choice in chunk.choices if choice.finish_reason}
    assert ends == {0: "stop", 1: "stop"}
    both_empty = {"candidates": [{**empty, "index": 0}, empty], "usageMetadata": usage}
    with pytest.raises(UpstreamError) as unusable:
        adapter().chat_response(orjson.dumps(both_empty), request(n=2), target())
    assert unusable.value.billed is not None and unusable.value.billed.prompt_tokens == 10


@pytest.mark.parametrize("raw", ["MALFORMED_FUNCTION_CALL", "TOO_MANY_TOOL_CALLS", "MISSING_THOUGHT_SIGNATURE"])
def test_a_preamble_before_an_unanswered_finish_is_no_answer_whole_as_streamed(raw: str) -> None:
    """One candidate writes "Let me check the weather." and ends with a reason of `UNANSWERED` (a call Gemini could
    not parse, ...). Streamed, it was the provider's malformed answer; whole, the preamble was a finished answer
    (`finish_reason: stop`, billed as a success, no failover), the text counted as an answer because a candidate of
    several ending so kept the others' (found by review). Now whole as streamed: the malformed answer, with what
    Gemini billed for the preamble; another candidate's answer beside it is kept, the preamble's choice ends `stop`."""
    usage = {"promptTokenCount": 10, "candidatesTokenCount": 5, "totalTokenCount": 15}
    preamble = {"content": {"role": "model", "parts": [{"text": "Let me check the weather."}]}, "index": 0}
    parser = GeminiStreamParser("gemini-2.5-flash")
    parser.feed(StreamEvent(None, orjson.dumps({"candidates": [preamble], "usageMetadata": usage})))
    with pytest.raises(UpstreamError) as streamed:
        parser.feed(StreamEvent(None, orjson.dumps({"candidates": [{"finishReason": raw, "index": 0}]})))
    answer = {"candidates": [{**preamble, "finishReason": raw}], "usageMetadata": usage}
    with pytest.raises(UpstreamError) as whole:
        adapter().chat_response(orjson.dumps(answer), request(), target())
    for unusable in (whole.value, streamed.value):
        assert unusable.retryable and unusable.outcome == "invalid_response" and raw in unusable.message
        assert unusable.billed is not None
        assert (unusable.billed.prompt_tokens, unusable.billed.completion_tokens) == (10, 5)
    paris = {"index": 1, "content": {"role": "model", "parts": [{"text": "Paris."}]}, "finishReason": "STOP"}
    both = {"candidates": [{**preamble, "finishReason": raw}, paris], "usageMetadata": usage}
    completion = adapter().chat_response(orjson.dumps(both), request(n=2), target())
    assert [(c.message.content, c.finish_reason) for c in completion.choices] == [
        ("Let me check the weather.", "stop"),
        ("Paris.", "stop"),
    ]


DOT = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
# Two calls answered in one turn, the first with an image a tool read (as Claude Code's Read returns it).
IMAGE_RESULTS = [
    {"role": "user", "content": "Look, and the time?"},
    {"role": "assistant", "tool_calls": CALLS},
    {
        "role": "tool",
        "tool_call_id": "call_1",
        "content": [
            {"type": "text", "text": "read"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{DOT}"}},
        ],
    },
    {"role": "tool", "tool_call_id": "call_2", "content": "12:00"},
]


def test_an_image_a_function_returned_goes_beside_the_function_responses_before_gemini_3() -> None:
    """Gemini 2.5 takes no media in a `functionResponse`: the image was left out (`messages.tool.image_url`) and the
    model never saw it. It now follows the turn's function responses (their count is still the calls'), headed by a
    text naming its call; Gemini 3 gets it in the response's own `parts`."""
    result = adapter().chat_request(request(messages=IMAGE_RESULTS), target("gemini-2.5-flash"), stream=False)
    body = orjson.loads(result.request.body)
    assert result.dropped == []
    inline = {"inlineData": {"mimeType": "image/png", "data": DOT}}
    assert body["contents"][2]["parts"] == [
        {"functionResponse": {"id": "call_1", "name": "get_weather", "response": {"result": "read"}}},
        {"functionResponse": {"id": "call_2", "name": "get_time", "response": {"result": "12:00"}}},
        {"text": "[What the tool call get_weather (call_1) returned besides its text:]"},
        inline,
    ]
    result = adapter().chat_request(request(messages=IMAGE_RESULTS), target("gemini-3-pro-preview"), stream=False)
    parts = orjson.loads(result.request.body)["contents"][2]["parts"]
    assert [next(iter(part)) for part in parts] == ["functionResponse", "functionResponse"]
    assert parts[0]["functionResponse"]["parts"] == [inline] and result.dropped == []


# A 1x1 GIF, an image type Gemini does not take (`IMAGE_TYPES`).
GIF = "R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAICRAEAOw=="


@pytest.mark.parametrize("model", ["gemini-2.5-flash", "gemini-3-pro-preview"])
def test_an_image_a_function_returned_of_a_type_gemini_does_not_take_is_named_not_a_400(model: str) -> None:
    """A GIF Claude Code's Read returned: converted for the parts beside the function responses (Gemini 2.5), it met
    the check of a user's images, and the whole turn was the client's 400 ("an image of type 'image/gif' cannot be
    sent to Gemini"), the conversation unable to go on (found by review). A tool's result never fails the turn that
    carries it: the GIF is left out and named, the PNG beside it still goes."""
    gif = {"type": "image_url", "image_url": {"url": f"data:image/gif;base64,{GIF}"}}
    messages = [*IMAGE_RESULTS[:2], {**IMAGE_RESULTS[2], "content": [*IMAGE_RESULTS[2]["content"], gif]}]
    messages.append(IMAGE_RESULTS[3])
    result = adapter().chat_request(request(messages=messages), target(model), stream=False)
    parts = orjson.loads(result.request.body)["contents"][2]["parts"]
    assert result.dropped == ["messages.tool.image_url"]
    inline = {"inlineData": {"mimeType": "image/png", "data": DOT}}
    if model == "gemini-3-pro-preview":
        assert parts[0]["functionResponse"]["parts"] == [inline]
    else:
        assert parts[2:] == [{"text": "[What the tool call get_weather (call_1) returned besides its text:]"}, inline]
