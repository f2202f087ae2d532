"""The official openai SDK against the gateway's /v1/responses, with each provider type behind it."""

from __future__ import annotations

import threading
import time
import urllib.parse
from typing import Any

import httpx
import openai
import orjson
import pytest
from pydantic import BaseModel

from adapters.providers.params import call_signature
from handler.wire import issued
from tests.fakes import azure as azure_fake
from tests.fakes.anthropic import INTERLEAVED_TEXT, SECOND_THINKING, SIGNATURE, THINKING
from tests.fakes.anthropic import TEXT as ANTHROPIC_TEXT
from tests.fakes.bedrock import SIGNATURE as BEDROCK_SIGNATURE
from tests.fakes.bedrock import THINKING as BEDROCK_THINKING
from tests.fakes.gemini import CALL_SIGNATURE, THOUGHT
from tests.fakes.gemini import TEXT as GEMINI_TEXT
from tests.fakes.openai import REASONING, TEXT
from tests.functional.conftest import FAKE_KEYS, Running, anthropic_client, openai_client, serve_gateway
from tests.functional.responses.fleet import NATIVE, PROVIDER_MODELS

WEATHER: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def dropped(headers: httpx.Headers) -> list[str]:
    raw = headers.get("x-gateway-dropped-params", "")
    return [urllib.parse.unquote(name) for name in raw.split(",") if name]


# --- one request, each provider ------------------------------------------------------------------


@pytest.mark.parametrize(("model", "text"), [("gpt-4o-mini", TEXT), ("claude-haiku-4-5", ANTHROPIC_TEXT)])
def test_create_answers_a_response_with_usage_and_cost(running: Running, key: str, model: str, text: str) -> None:
    raw = openai_client(running, key).responses.with_raw_response.create(
        model=model, input="Hi", instructions="Be brief."
    )
    response = raw.parse()
    assert response.object == "response" and response.id.startswith("resp_")
    assert response.status == "completed" and response.output_text == text
    assert response.usage is not None and response.usage.output_tokens == 7
    assert response.usage.total_tokens == response.usage.input_tokens + 7
    assert response.usage.input_tokens_details.cached_tokens == 0
    assert response.usage.input_tokens_details.cache_write_tokens == 0  # (a field OpenAI's schema requires)
    assert response.usage.output_tokens_details.reasoning_tokens == 0
    body = raw.http_response.json()
    assert body["cost"]["output_tokens"] == 7
    assert raw.headers["x-gateway-model"] and raw.headers["x-request-id"]


@pytest.mark.parametrize("model", PROVIDER_MODELS)
def test_stream_events_assemble_the_final_response_in_the_sdk(fleet: Running, fleet_key: str, model: str) -> None:
    with openai_client(fleet, fleet_key).responses.stream(model=model, input="Hi", instructions="Be brief.") as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    expected = [
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    assert [k for k in kinds if k in expected] == expected
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text and final.output_text == text and final.status == "completed"
    assert final.usage is not None and final.usage.output_tokens > 0
    assert final.usage.input_tokens_details.cache_write_tokens == 0


@pytest.mark.parametrize("stream", [False, True])
def test_an_answer_cut_at_its_output_cap_is_an_incomplete_message(fleet: Running, fleet_key: str, stream: bool) -> None:
    """Claude stopped on `max_tokens`: the response is incomplete, and so is its message item (OpenAI's
    `status: incomplete`), in the answer, the stream's `output_item.done` and its final response, and as stored."""
    sdk = openai_client(fleet, fleet_key)
    asked: Any = {"model": "claude", "input": "Hi", "max_output_tokens": 16, "user": "max-tokens"}
    if stream:
        with sdk.responses.stream(**asked) as stream_events:
            events = list(stream_events)
        assert events[-1].type == "response.incomplete"  # (the SDK's `get_final_response` wants a completed one)
        response = events[-1].response
        (item,) = [e.item for e in events if e.type == "response.output_item.done"]
        assert item.type == "message" and item.status == "incomplete"
    else:
        response = sdk.responses.create(**asked)
    assert response.status == "incomplete" and response.incomplete_details is not None
    assert response.completed_at is None  # (OpenAI: "only present when the status is `completed`")
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text and response.output_text in ANTHROPIC_TEXT and response.output_text != ANTHROPIC_TEXT
    (message,) = response.output
    assert message.type == "message" and message.status == "incomplete"
    assert sdk.responses.retrieve(response.id).output[0].status == "incomplete"


@pytest.mark.parametrize("model", PROVIDER_MODELS)
def test_a_completed_response_says_when_it_completed(fleet: Running, fleet_key: str, model: str) -> None:
    """`completed_at` ("Unix timestamp (in seconds) of when this Response was completed. Only present when the status
    is `completed`") was None on every completed response the gateway built: `responses.create`, `parse`, the
    stream's final response and the stored one. A response relayed from the provider's own Responses API keeps the
    provider's (its fake's: a second after it was created)."""
    sdk = openai_client(fleet, fleet_key)
    whole = sdk.responses.create(model=model, input="Hi")
    with sdk.responses.stream(model=model, input="Hi") as stream:
        for _ in stream:
            pass
        final = stream.get_final_response()
    for response in (whole, final, sdk.responses.retrieve(whole.id), sdk.responses.retrieve(final.id)):
        assert response.status == "completed"
        assert response.completed_at is not None, f"{model}: completed_at is None"
        assert response.created_at <= response.completed_at <= time.time() + 1
        if model in NATIVE:
            assert response.completed_at == response.created_at + 1


@pytest.mark.parametrize("model", PROVIDER_MODELS)
@pytest.mark.parametrize("stream", [False, True])
def test_function_tool_conversation(fleet: Running, fleet_key: str, model: str, stream: bool) -> None:
    """function_call out, function_call_output back in, a text answer: over every provider type."""
    sdk = openai_client(fleet, fleet_key)
    question: Any = [{"role": "user", "content": "Weather in Paris?"}]
    if stream:
        with sdk.responses.stream(model=model, input=question, tools=[WEATHER], tool_choice="required") as events:
            kinds = [e.type for e in events]
            first = events.get_final_response()
        assert "response.function_call_arguments.delta" in kinds
        assert "response.function_call_arguments.done" in kinds
    else:
        first = sdk.responses.create(model=model, input=question, tools=[WEATHER], tool_choice="required", store=False)
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather" and calls[0].call_id
    assert calls[0].arguments and '"city"' in calls[0].arguments
    follow_up: Any = [
        *question,
        *[item.model_dump(exclude_none=True) for item in first.output],
        {"type": "function_call_output", "call_id": calls[0].call_id, "output": "18C and sunny"},
    ]
    second = sdk.responses.create(model=model, input=follow_up, tools=[WEATHER], store=False)
    assert second.status == "completed" and second.output_text
    assert not [item for item in second.output if item.type == "function_call"]


def test_a_call_id_another_provider_wrote_reaches_claude_as_a_stand_in_paired_with_its_output(
    fleet: Running, fleet_key: str
) -> None:
    """A Responses history whose call an OpenAI-compatible provider served (Kimi K2 names its calls
    `functions.get_weather:0`) went to Claude with that id: Anthropic takes `[a-zA-Z0-9_-]` alone, and refused every
    later turn of the session (400 "String should match pattern '^[a-zA-Z0-9_-]+$'")."""
    history: Any = [
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "function_call", "call_id": "functions.get_weather:0", "name": "get_weather", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "functions.get_weather:0", "output": "18C"},
    ]
    answer = openai_client(fleet, fleet_key).responses.create(model="claude", input=history, tools=[WEATHER])
    assert answer.status == "completed" and answer.output_text == ANTHROPIC_TEXT
    messages = fleet.fakes["anthropic"].state.requests[-1]["json"]["messages"]
    use, result = messages[1]["content"][0], messages[2]["content"][0]
    assert use["id"] == result["tool_use_id"] and use["id"].startswith("functions_get_weather_0_")


@pytest.mark.parametrize("model", ["claude", "bedrock-claude", "claude-thinker"])
def test_a_turn_continued_without_tools_reaches_claude_as_anthropic_takes_it(
    fleet: Running, fleet_key: str, model: str
) -> None:
    """A call's output sent back without `tools` (a continuation by `previous_response_id` that asks for a summary,
    an Agents SDK handoff to an agent without tools; OpenAI's Responses API takes it) went to Anthropic with the
    `tool_use` and `tool_result` blocks and no `tools`: Anthropic's 400 "Requests which include `tool_use` or
    `tool_result` blocks must define tools" (anthropic-sdk-python#494). The tools the history calls go declared, with
    `tool_choice: none`, so that none is called and the turns go as Claude wrote them, its signed thinking in place
    (Bedrock's Converse, which has no `none` choice, gets them as text)."""
    sdk = openai_client(fleet, fleet_key)
    first = sdk.responses.create(model=model, input='Weather? CALL get_weather {"city": "Paris"}', tools=[WEATHER])
    call = next(item for item in first.output if item.type == "function_call")
    output: Any = [{"type": "function_call_output", "call_id": call.call_id, "output": "18C and sunny"}]
    raw = sdk.responses.with_raw_response.create(model=model, previous_response_id=first.id, input=output)
    second = raw.parse()
    assert second.status == "completed" and second.output_text
    assert model == "bedrock-claude" or second.output_text == "DONE: 18C and sunny"  # (the fake Anthropic's answer)
    assert not [item for item in second.output if item.type == "function_call"]
    assert dropped(raw.headers) == []
    if model == "bedrock-claude":
        return
    sent = fleet.fakes["anthropic"].state.requests[-1]["json"]
    assert sent["tools"] == [{"name": "get_weather", "input_schema": {"type": "object"}}]
    assert sent["tool_choice"] == {"type": "none"}
    assert [block["type"] for block in sent["messages"][1]["content"]][-1] == "tool_use"


@pytest.mark.parametrize("model", ["claude", "bedrock-claude"])
def test_a_streamed_call_without_arguments_has_an_empty_object_as_when_whole(
    fleet: Running, fleet_key: str, model: str
) -> None:
    """Claude streams a call without arguments with an empty input: the `function_call` item's arguments, and
    those `response.function_call_arguments.done` gives, are `{}`, as in the whole answer, not `""`."""
    sdk = openai_client(fleet, fleet_key)
    clock: Any = {"type": "function", "name": "get_time", "parameters": {"type": "object", "properties": {}}}
    ask: Any = {"model": model, "input": "What time is it? CALL get_time {}", "tools": [clock], "store": False}
    whole = sdk.responses.create(**ask)
    assert [item.arguments for item in whole.output if item.type == "function_call"] == ["{}"]
    with sdk.responses.stream(**ask) as events:
        done = [event.arguments for event in events if event.type == "response.function_call_arguments.done"]
        final = events.get_final_response()
    assert done == ["{}"]
    assert [item.arguments for item in final.output if item.type == "function_call"] == ["{}"]


class Weather(BaseModel):
    city: str
    degrees: int


@pytest.mark.parametrize("model", PROVIDER_MODELS)
def test_parse_returns_the_pydantic_model(fleet: Running, fleet_key: str, model: str) -> None:
    parsed = openai_client(fleet, fleet_key).responses.parse(model=model, input="Weather?", text_format=Weather)
    assert parsed.output_parsed == Weather(city="Paris", degrees=21)


def test_parse_sends_the_schema_to_providers_without_native_support(fleet: Running, fleet_key: str) -> None:
    sdk = openai_client(fleet, fleet_key)
    sdk.responses.create(
        model="claude",
        input="Weather?",
        text={"format": {"type": "json_schema", "name": "weather", "schema": Weather.model_json_schema()}},
    )
    sent = fleet.fakes["anthropic"].state.requests[-1]["json"]
    assert "degrees" in str(sent)


# --- what cannot be honoured ---------------------------------------------------------------------

HOSTED: Any = [
    WEATHER,
    {"type": "web_search", "external_web_access": True},
    {"type": "namespace", "name": "agents", "description": "x", "tools": [WEATHER]},
]


@pytest.mark.parametrize("model", PROVIDER_MODELS)
def test_hosted_tool_types_are_named_as_dropped(fleet: Running, fleet_key: str, model: str) -> None:
    raw = openai_client(fleet, fleet_key).responses.with_raw_response.create(
        model=model, input="Hi", tools=HOSTED, store=False, include=["message.output_text.logprobs"]
    )
    assert raw.parse().status == "completed"
    if model in NATIVE:  # the provider's own Responses API takes them as they are
        assert dropped(raw.headers) == []
    elif model == "claude":  # (its own search runs: test_hosted_search.py)
        assert dropped(raw.headers) == ["include[message.output_text.logprobs]"]
    else:  # (a namespace's functions are offered as plain ones: test_namespaced_tools.py; Gemini 2.5 takes no
        # search beside them)
        assert set(dropped(raw.headers)) == {"tools[web_search]", "include[message.output_text.logprobs]"}


def test_strict_mode_refuses_what_would_be_dropped(fleet: Running, fleet_key: str) -> None:
    sdk = openai_client(fleet, fleet_key)
    native = sdk.responses.create(model="gpt", input="Hi", tools=HOSTED, extra_headers={"x-gateway-strict": "true"})
    assert native.status == "completed"  # nothing to drop on the provider's own API
    sdk = openai_client(fleet, fleet_key)
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.responses.create(model="deepseek", input="Hi", tools=HOSTED, extra_headers={"x-gateway-strict": "true"})
    error = caught.value.body
    assert isinstance(error, dict) and "tools[web_search]" in error["message"]
    assert caught.value.status_code == 400


@pytest.mark.parametrize("model", ["gpt", "claude", "gemini", "gpt-chat", "bedrock-claude"])
@pytest.mark.parametrize("choice", ["required", {"type": "function", "name": "get_weather"}], ids=["required", "named"])
def test_a_tool_choice_left_without_tools_is_named_as_dropped(
    fleet: Running, fleet_key: str, model: str, choice: Any
) -> None:
    """A `tool_choice` that asks for a call beside hosted tools alone: passed through to OpenAI, the tools are left out
    and so is the choice, named (`tools[file_search],tool_choice`). Translated, only `tools[file_search]` was named:
    the client asked that a tool be called, the model answered freely, and `x-gateway-strict` let the choice go."""
    headers = {"authorization": f"Bearer {fleet_key}"}
    body = {"model": model, "input": "Hi", "tool_choice": choice, "store": False}
    unpriced: Any = [{"type": "file_search", "vector_store_ids": ["vs_1"]}]
    with httpx.Client(timeout=30) as client:
        answer = client.post(f"{fleet.url}/v1/responses", json={**body, "tools": unpriced}, headers=headers)
        assert answer.status_code == 200, answer.text
        assert dropped(answer.headers) == ["tools[file_search]", "tool_choice"]
        if model == "gpt":
            return  # (the fleet prices searches: OpenAI runs the one below)
        # (A search, which the fleet prices, is left out of a translation alone; an unpriced tool is refused first.)
        strict = {**headers, "x-gateway-strict": "true"}
        refused = client.post(
            f"{fleet.url}/v1/responses", json={**body, "tools": [{"type": "web_search"}]}, headers=strict
        )
    assert refused.status_code == 400, refused.text
    unhonoured = "tool_choice" if model in ("claude", "gemini") else "tools[web_search], tool_choice"  # (their search)
    assert f"cannot honour: {unhonoured} (x-gateway-strict is on)" in refused.json()["error"]["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_a_service_tier_left_out_is_not_echoed_as_served(fleet: Running, fleet_key: str, stream: bool) -> None:
    """A `service_tier` the deployment was not sent (Claude has no `flex`: named as dropped, and billed at the plain
    price) was echoed in the response as if the answer had run at it; it ran at the provider's default."""
    sdk = openai_client(fleet, fleet_key)
    if stream:
        with sdk.responses.stream(model="claude", input="Hi", service_tier="flex", store=False) as events:
            tiers = {
                event.response.service_tier
                for event in events
                if event.type in ("response.created", "response.completed")
            }
            final = events.get_final_response()
        assert tiers == {"default"}
    else:
        raw = sdk.responses.with_raw_response.create(model="claude", input="Hi", service_tier="flex", store=False)
        assert dropped(raw.headers) == ["service_tier"]
        final = raw.parse()
    assert final.service_tier == "default"
    passed = sdk.responses.create(model="gpt-chat", input="Hi", service_tier="flex", store=False)
    assert passed.service_tier == "flex"  # (sent, and served at it)


@pytest.mark.parametrize("model", ["claude", "gemini", "deepseek", "bedrock-claude"])
@pytest.mark.parametrize("api", ["responses", "chat/completions"])
def test_a_tier_no_deployment_is_sent_is_dropped_whatever_its_name(
    fleet: Running, fleet_key: str, model: str, api: str
) -> None:
    """A `service_tier` asked of a model none of whose deployments is sent one (Claude, Gemini, DeepSeek, Bedrock:
    their translation leaves it out, so it cannot change what they bill) is left out and named dropped, whatever
    tier it names. `flex` was; `priority` was the 400 "service_tier 'priority' is not priced for model ..." before
    anything was sent (the plan-wide check refused a tier no deployment takes, though none would be sent it), and an
    OpenAI SDK app that always sets it lost every route to these models."""
    for tier in ("flex", "priority"):
        text: dict[str, Any] = (
            {"input": "Hi"} if api == "responses" else {"messages": [{"role": "user", "content": "Hi"}]}
        )
        body = {"model": model, **text, "service_tier": tier, "store": False}
        answer = httpx.post(
            f"{fleet.url}/v1/{api}", json=body, headers={"authorization": f"Bearer {fleet_key}"}, timeout=30
        )
        assert answer.status_code == 200, (tier, answer.text)
        assert "service_tier" in dropped(answer.headers), tier
        if api == "responses":
            assert answer.json()["service_tier"] == "default"  # (run at the provider's own, as billed)


def test_a_tier_is_refused_where_a_deployment_would_be_sent_it_unpriced(fleet: Running, fleet_key: str) -> None:
    """`priority` (which the fleet does not price) to OpenAI's Responses API, which is sent it as written: the 400
    before anything is sent. Where a fallback is not sent it (Claude behind OpenAI), the OpenAI deployment is passed
    over (`=unsupported`) and the fallback serves, the tier named dropped."""
    headers = {"authorization": f"Bearer {fleet_key}"}
    body = {"model": "gpt", "input": "Hi", "service_tier": "priority", "store": False}
    refused = httpx.post(f"{fleet.url}/v1/responses", json=body, headers=headers, timeout=30)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "service_tier"
    assert "service_tier 'priority' is not priced for model 'gpt'" in refused.json()["error"]["message"]
    served = httpx.post(f"{fleet.url}/v1/responses", json={**body, "model": "gpt-or-claude"}, headers=headers)
    assert served.status_code == 200, served.text
    assert "service_tier" in dropped(served.headers)
    route = served.headers["x-gateway-route"]
    assert route.startswith("openai/gpt-4o-mini@global=unsupported, anthropic/claude-haiku-4-5@global=200"), route


@pytest.mark.parametrize(
    "body",
    [
        {"model": "gpt", "input": [{"type": "function_call", "name": "f", "arguments": "{}"}]},
        {"model": "gpt", "input": [{"role": "user", "content": [{"type": "input_audio"}]}]},
        {"model": "gpt", "input": "Hi", "tool_choice": "sometimes", "tools": [WEATHER]},
        {"model": "gpt", "input": []},
        {"model": "gpt", "input": "Hi", "max_output_tokens": 0},
    ],
)
def test_bad_input_is_a_400_in_openais_shape(fleet: Running, fleet_key: str, body: dict[str, Any]) -> None:
    answer = httpx.post(f"{fleet.url}/v1/responses", json=body, headers={"authorization": f"Bearer {fleet_key}"})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]


NO_SUCH_ITEMS: Any = [
    {"type": "user_message", "content": "Answer in French."},  # no such type (a client's typo)
    {"type": "input_text", "text": "Answer in French."},  # a content part given as an item
    {"type": 5, "role": "user", "content": "Answer in French."},  # a type that is no string
    {},  # an item with nothing
    # A type that is a list or an object (unhashable: a 500 `internal_error`, found by review).
    {"type": [], "role": "user", "content": "Answer in French."},
    {"type": ["message"], "role": "user", "content": "Answer in French."},
    {"type": {"a": 1}},
]


@pytest.mark.parametrize("model", ["gpt", "claude", "gemini", "gpt-chat", "bedrock-claude", "deepseek"])
@pytest.mark.parametrize(
    "item",
    NO_SUCH_ITEMS,
    ids=["typo", "part-as-item", "number-type", "empty", "list-type", "listed-type", "object-type"],
)
def test_an_item_of_no_type_the_api_has_is_a_400_on_every_deployment(fleet: Running, model: str, item: Any) -> None:
    """An input item whose type the Responses API does not have is OpenAI's 400, naming the item, before anything is
    reserved, whichever deployment would serve it. Translated, it was left out (named `input[user_message]`, or
    `input[5]`, `input[None]`) and the model answered without it, charged to the key."""
    key = fleet.mint(name="no-such-item", budget_usd=1.0)
    headers = {"authorization": f"Bearer {key}"}
    body = {"model": model, "input": [{"role": "user", "content": "Hi"}, item]}
    answer = httpx.post(f"{fleet.url}/v1/responses", json=body, headers=headers)
    assert answer.status_code == 400, (answer.status_code, answer.headers.get("x-gateway-dropped-params"))
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "input[1]"
    said = f"Invalid value: {item['type']!r}." if "type" in item else "Missing required parameter: 'input[1].type'."
    assert error["message"].startswith(said)
    meter = httpx.get(f"{fleet.url}/v1/key", headers=headers).json()
    assert meter["reserved_usd"] == meter["spent_usd"] == 0  # (nothing held for it, nothing charged)


def test_an_item_of_the_api_no_translation_carries_is_named_as_dropped(fleet: Running, fleet_key: str) -> None:
    """An item of a type the Responses API has that a translation cannot carry (a hosted tool's call) is left out
    and named, as before; passed through to OpenAI's own API it goes as it is."""
    searched: Any = {"type": "web_search_call", "id": "ws_1", "status": "completed", "action": {"type": "search"}}
    items: Any = [{"role": "user", "content": "Hi"}, searched]
    raw = openai_client(fleet, fleet_key).responses.with_raw_response.create(model="claude", input=items, store=False)
    assert raw.parse().status == "completed" and dropped(raw.headers) == ["input[web_search_call]"]
    raw = openai_client(fleet, fleet_key).responses.with_raw_response.create(model="gpt", input=items, store=False)
    assert raw.parse().status == "completed" and dropped(raw.headers) == []
    sent = fleet.fakes["openai"].state.requests[-1]["json"]["input"][1]
    assert sent == {name: value for name, value in searched.items() if name != "id"}  # (OpenAI keeps no ids here)


def test_an_upstream_failure_mid_stream_ends_with_response_failed(fleet: Running, fleet_key: str) -> None:
    headers = {"authorization": f"Bearer {fleet_key}"}
    with httpx.stream(
        "POST", f"{fleet.url}/v1/responses", json={"model": "cut", "input": "Hi", "stream": True}, headers=headers
    ) as answer:
        lines = [line for line in answer.iter_lines() if line.startswith("event: ")]
    kinds = [line.removeprefix("event: ") for line in lines]
    assert kinds[0] == "response.created" and kinds[-2:] == ["error", "response.failed"]
    assert "response.completed" not in kinds


SCREENSHOT = (
    "data:image/png;base64,"
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)
SCREENSHOT_CALL: Any = [
    {"role": "user", "content": "What is on my screen?"},
    {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
    {
        "type": "function_call_output",
        "call_id": "call_1",
        "output": [{"type": "input_text", "text": "here"}, {"type": "input_image", "image_url": SCREENSHOT}],
    },
]


def test_an_image_a_function_returned_reaches_claude_in_its_tool_result(fleet: Running, fleet_key: str) -> None:
    raw = openai_client(fleet, fleet_key).responses.with_raw_response.create(
        model="claude", input=SCREENSHOT_CALL, tools=[WEATHER]
    )
    assert raw.parse().status == "completed" and "x-gateway-dropped-params" not in raw.headers
    result = fleet.fakes["anthropic"].state.requests[-1]["json"]["messages"][-1]["content"][0]
    assert result["type"] == "tool_result" and [block["type"] for block in result["content"]] == ["text", "image"]
    assert result["content"][1]["source"]["data"] == SCREENSHOT.split(",", 1)[1]

    openai_client(fleet, fleet_key).responses.create(model="bedrock-claude", input=SCREENSHOT_CALL, tools=[WEATHER])
    result = fleet.fakes["bedrock"].state.requests[-1]["json"]["messages"][-1]["content"][0]["toolResult"]
    assert [next(iter(block)) for block in result["content"]] == ["text", "image"]


def test_an_image_in_a_messages_tool_result_reaches_bedrock_and_is_named_elsewhere(
    fleet: Running, fleet_key: str
) -> None:
    """The same through the Messages API (Claude Code's Read tool returns an image so): a `tool_result` holding
    an image reached Bedrock as text alone, named `messages.tool_result.image`, though Bedrock's tool result
    takes it; it now goes as the deployment's API takes it (Chat Completions and Gemini 2.5 after the result:
    `test_an_image_a_function_returned_follows_its_result`), and is named where it cannot (DeepSeek takes no image)."""
    data = SCREENSHOT.split(",", 1)[1]
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}}
    call = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "here"}, image]}
    messages: Any = [
        {"role": "user", "content": "What does Paris look like?"},
        {"role": "assistant", "content": [call]},
        {"role": "user", "content": [result]},
    ]
    tool = {"name": "get_weather", "description": "Weather", "input_schema": {"type": "object", "properties": {}}}
    claude = anthropic_client(fleet, fleet_key)
    for model in ("bedrock-claude", "gpt-chat", "gemini"):
        raw = claude.messages.with_raw_response.create(model=model, max_tokens=50, messages=messages, tools=[tool])
        assert raw.parse().stop_reason and "x-gateway-dropped-params" not in raw.headers
    sent = fleet.fakes["bedrock"].state.requests[-1]["json"]["messages"][-1]["content"][0]["toolResult"]
    assert [next(iter(block)) for block in sent["content"]] == ["text", "image"]
    # Named as a Messages client calls it: `messages.tool.image_url` was the Chat Completions name (review).
    raw = claude.messages.with_raw_response.create(model="deepseek", max_tokens=50, messages=messages, tools=[tool])
    assert raw.parse().stop_reason and dropped(raw.headers) == ["messages.tool_result.image"]


def test_an_image_a_function_returned_follows_its_result(fleet: Running, fleet_key: str) -> None:
    """A Chat Completions tool message takes text alone and a Gemini 2.5 `functionResponse` JSON alone: the image a
    function returned was left out (`input[function_call_output].input_image`), and OpenAI was sent the result
    `"here"`, Gemini `{"result": "here"}`, the model never seeing the screenshot (found by review with Claude Code's
    Read and Codex's view_image). Both APIs take it in the same turn: OpenAI in a user message after the tool
    messages, Gemini as an `inlineData` part after the function responses, each headed by a text naming the call."""
    sdk = openai_client(fleet, fleet_key)
    for model in ("gpt-chat", "gemini"):
        raw = sdk.responses.with_raw_response.create(model=model, input=SCREENSHOT_CALL, tools=[WEATHER])
        assert raw.parse().status == "completed" and "x-gateway-dropped-params" not in raw.headers
    label = "[What the tool call get_weather (call_1) returned besides its text:]"
    tool, user = fleet.fakes["openai"].state.requests[-1]["json"]["messages"][-2:]
    assert tool == {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "here"}]}
    image = {"type": "image_url", "image_url": {"url": SCREENSHOT}}
    assert user == {"role": "user", "content": [{"type": "text", "text": label}, image]}
    answer = fleet.fakes["gemini"].state.requests[-1]["json"]["contents"][-1]
    assert answer["role"] == "user" and answer["parts"][0]["functionResponse"]["response"] == {"result": "here"}
    inline = {"inlineData": {"mimeType": "image/png", "data": SCREENSHOT.split(",", 1)[1]}}
    assert answer["parts"][1:] == [{"text": label}, inline]


def test_an_image_a_function_returned_is_named_where_the_provider_cannot_take_it(
    fleet: Running, fleet_key: str
) -> None:
    """DeepSeek's API takes no image: the image is left out and named, never dropped unsaid (and under
    `x-gateway-strict` the request is refused)."""
    sdk = openai_client(fleet, fleet_key)
    raw = sdk.responses.with_raw_response.create(model="deepseek", input=SCREENSHOT_CALL, tools=[WEATHER])
    named = "input[function_call_output].input_image"  # (as a Responses client calls it)
    assert raw.parse().status == "completed" and named in dropped(raw.headers)
    sent = fleet.fakes["openai"].state.requests[-1]["json"]
    assert "image" not in orjson.dumps(sent["messages"]).decode()
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.responses.create(
            model="deepseek", input=SCREENSHOT_CALL, tools=[WEATHER], extra_headers={"x-gateway-strict": "true"}
        )
    assert named in str(refused.value)


def test_an_image_a_function_returned_reaches_gemini_3_inside_its_function_response(
    fleet: Running, fleet_key: str
) -> None:
    """Gemini 3 takes media a function returned inside the `functionResponse` (its `parts`); the gateway left the
    image out and named it for every Gemini model. Gemini 2.5 still gets it named (the test above)."""
    raw = openai_client(fleet, fleet_key).responses.with_raw_response.create(
        model="gemini-thinker", input=SCREENSHOT_CALL, tools=[WEATHER]
    )
    assert raw.parse().status == "completed" and "x-gateway-dropped-params" not in raw.headers
    contents = fleet.fakes["gemini"].state.requests[-1]["json"]["contents"]
    (answer,) = [part["functionResponse"] for part in contents[-1]["parts"] if "functionResponse" in part]
    assert answer["name"] == "get_weather" and answer["response"] == {"result": "here"}
    assert answer["parts"] == [{"inlineData": {"mimeType": "image/png", "data": SCREENSHOT.split(",", 1)[1]}}]


STRICT_FORMAT: Any = {
    "format": {
        "type": "json_schema",
        "name": "weather",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {"city": {"type": "string", "pattern": "^[A-Z]"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    }
}
LEFT_OUT: Any = [
    ("deepseek", {"input": "Weather?", "text": STRICT_FORMAT}, "text.format.strict"),
    ("gemini", {"input": "Weather?", "text": STRICT_FORMAT}, "text.format.schema[pattern]"),
    (
        "claude",
        {
            "input": [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "What is this?"},
                        {"type": "input_image", "image_url": SCREENSHOT, "detail": "high"},
                    ],
                }
            ]
        },
        "input_image.detail",
    ),
    (
        "gemini",
        {
            "input": [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "Sum it up."},
                        {"type": "input_file", "file_id": "file-abc"},
                    ],
                }
            ]
        },
        "input_file",
    ),
]


@pytest.mark.parametrize(("model", "body", "name"), LEFT_OUT, ids=["strict", "pattern", "detail", "file"])
def test_what_a_translation_leaves_out_is_named_in_the_responses_clients_words(
    fleet: Running, fleet_key: str, model: str, body: dict[str, Any], name: str
) -> None:
    """`text.format`'s members and an input item's parts, left out by a provider, were named in Chat Completions'
    words (`response_format.json_schema.strict`, `response_format.json_schema.schema[pattern]`,
    `messages.image_url.detail`, `messages.file`), fields of a body the client never sent, and so was the `param` of
    the strict mode's 400."""
    headers = {"authorization": f"Bearer {fleet_key}"}
    sent = {"model": model, "store": False, **body}
    with httpx.Client(timeout=30) as client:
        answer = client.post(f"{fleet.url}/v1/responses", json=sent, headers=headers)
        assert answer.status_code == 200, answer.text
        assert dropped(answer.headers) == [name]
        refused = client.post(f"{fleet.url}/v1/responses", json=sent, headers={**headers, "x-gateway-strict": "true"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == name, refused.text


ALLOWED: Any = {"type": "allowed_tools", "mode": "auto", "tools": [{"type": None}, {"type": ["function"]}]}
UNTYPED = [
    ({"tools": [{"type": ["function"], "name": "get_weather"}]}, "tools.0.type"),
    ({"tools": [WEATHER, {"type": {"web_search": True}}]}, "tools.1.type"),
    ({"tools": [{"type": "namespace", "name": "n", "tools": [{"type": 7, "name": "f"}]}]}, "tools.0.tools.0.type"),
    ({"tools": [WEATHER], "tool_choice": {"type": ["function"], "name": "get_weather"}}, "tool_choice.type"),
    ({"tools": [WEATHER], "tool_choice": ALLOWED}, "tool_choice.tools.1.type"),
]  # fmt: skip


@pytest.mark.parametrize("model", ["gpt", "claude"])
@pytest.mark.parametrize(("body", "param"), UNTYPED, ids=["tool", "second-tool", "namespaced", "choice", "allowed"])
def test_a_tool_or_choice_whose_type_is_no_string_is_the_clients_400(
    fleet: Running, fleet_key: str, model: str, body: dict[str, Any], param: str
) -> None:
    """`"type": ["function"]`: translated, the tool was left out as one of no type the translation carries, named
    `tools[['function']]`, and answered 200; passed through, OpenAI refuses it. Refused, naming the member."""
    headers = {"authorization": f"Bearer {fleet_key}"}
    with httpx.Client(timeout=30) as client:
        sent = {"model": model, "input": "Hi", "store": False, **body}
        refused = client.post(f"{fleet.url}/v1/responses", json=sent, headers=headers)
    assert refused.status_code == 400, (refused.text, refused.headers.get("x-gateway-dropped-params"))
    error = refused.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_request", param) and error["message"].startswith(param)


# --- reasoning without server state ---------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("model", "reasoning_text"),
    [
        ("reasoner", REASONING),
        ("claude-thinker", THINKING),
        ("bedrock-thinker", BEDROCK_THINKING),
    ],
)
def test_reasoning_goes_back_to_the_provider_sealed(
    fleet: Running, fleet_key: str, stream: bool, model: str, reasoning_text: str
) -> None:
    """DeepSeek needs its reasoning back on a tool-calling turn, Claude (on Anthropic and on Bedrock) its
    signed thinking (the fakes refuse the turn without them, as the APIs do). None is kept on the gateway."""
    sdk = openai_client(fleet, fleet_key)
    question: Any = [{"role": "user", "content": "Weather in Paris?"}]
    settings: Any = {
        "model": model,
        "tools": [WEATHER],
        "store": False,
        "include": ["reasoning.encrypted_content"],
        "reasoning": {"summary": "auto"},
    }
    if stream:
        with sdk.responses.stream(input=question, tool_choice="required", **settings) as events:
            kinds = [e.type for e in events]
            first = events.get_final_response()
        assert ("response.reasoning_summary_text.delta" in kinds) == bool(reasoning_text)
    else:
        first = sdk.responses.create(input=question, tool_choice="required", **settings)
    reasoning = [item for item in first.output if item.type == "reasoning"]
    assert len(reasoning) == 1 and "".join(part.text for part in reasoning[0].summary) == reasoning_text
    sealed = reasoning[0].encrypted_content
    assert sealed and (not reasoning_text or reasoning_text not in sealed)
    call = next(item for item in first.output if item.type == "function_call")
    back: Any = [
        *question,
        *[item.model_dump(exclude_none=True) for item in first.output],
        {"type": "function_call_output", "call_id": call.call_id, "output": "18C"},
    ]
    assert sdk.responses.create(input=back, **settings).status == "completed"
    if model == "reasoner":
        sent = fleet.fakes["openai"].state.requests[-1]["json"]["messages"]
        assistant = next(m for m in sent if m["role"] == "assistant")
        assert assistant["reasoning_content"] == REASONING and assistant["tool_calls"][0]["id"] == call.call_id

    at = next(i for i, item in enumerate(back) if item.get("type") == "reasoning")
    back[at] = {**back[at], "summary": [], "encrypted_content": sealed[:-6] + "AAAAA="}  # altered: not trusted
    # Not sent, and named; DeepSeek's thinking mode refuses a tool turn without the field (as the fake does, in
    # DeepSeek's words), so the turn goes with an empty one: the client's 400 otherwise.
    raw = sdk.responses.with_raw_response.create(input=back, **{**settings, "model": "reasoner"})
    assert "input[reasoning].encrypted_content" in dropped(raw.headers)
    sent = fleet.fakes["openai"].state.requests[-1]["json"]["messages"]
    assert next(m for m in sent if m["role"] == "assistant")["reasoning_content"] == ""


@pytest.mark.parametrize("stream", [False, True])
def test_claudes_redacted_reasoning_stays_in_its_place_and_goes_back_in_order(
    fleet: Running, fleet_key: str, stream: bool
) -> None:
    """Claude on Bedrock opens its reasoning with a redacted block, then a signed one: one reasoning item first,
    streamed as whole, and both blocks back in that order (Anthropic takes its thinking back unmodified)."""
    sdk = openai_client(fleet, fleet_key)
    question: Any = [{"role": "user", "content": "Weather in Paris?"}]
    settings: Any = {"model": "bedrock-redacting", "tools": [WEATHER], "include": ["reasoning.encrypted_content"]}
    if stream:
        with sdk.responses.stream(input=question, tool_choice="required", **settings) as events:
            added = [e.output_index for e in events if e.type == "response.output_item.added"]
            first = events.get_final_response()
        assert added == [0, 1]
    else:
        first = sdk.responses.create(input=question, tool_choice="required", **settings)
    assert [item.type for item in first.output] == ["reasoning", "function_call"]
    assert first.output[0].summary[0].text == BEDROCK_THINKING
    call = first.output[1]
    assert call.type == "function_call"
    back: Any = [
        *question,
        *[item.model_dump(exclude_none=True) for item in first.output],
        {"type": "function_call_output", "call_id": call.call_id, "output": "18C"},
    ]
    assert sdk.responses.create(input=back, **settings).status == "completed"
    sent = fleet.fakes["bedrock"].state.requests[-1]["json"]["messages"]
    assistant = next(m for m in sent if m["role"] == "assistant")["content"]
    assert [next(iter(block)) for block in assistant] == ["reasoningContent", "reasoningContent", "toolUse"]
    assert [next(iter(block["reasoningContent"])) for block in assistant[:2]] == ["redactedContent", "reasoningText"]


# Claude's interleaved turn (`claude-interleaved`): the question, its two tools, and the items of its answer in order.
INTERLEAVED_QUESTION: Any = [{"role": "user", "content": "Weather and time in Paris?"}]
INTERLEAVED_TOOLS: Any = [WEATHER, {"type": "function", "name": "get_time", "parameters": {"type": "object"}}]
INTERLEAVED_ITEMS = ["reasoning", "function_call", "reasoning", "message", "function_call"]


@pytest.mark.parametrize("store", [False, True])
@pytest.mark.parametrize("stream", [False, True])
def test_claudes_interleaved_thinking_keeps_its_places_and_goes_back_in_them(
    fleet: Running, fleet_key: str, stream: bool, store: bool
) -> None:
    """Claude thinks, calls a tool, thinks again, writes and calls another: five items in that order, streamed as
    whole, and the turn back to Anthropic as it wrote it (by value, or by `previous_response_id`), which the fake
    requires of thinking blocks as the API does."""
    sdk = openai_client(fleet, fleet_key)
    question = INTERLEAVED_QUESTION
    settings: Any = {"model": "claude-interleaved", "tools": INTERLEAVED_TOOLS, "store": store}
    if not store:
        settings["include"] = ["reasoning.encrypted_content"]
    if stream:
        with sdk.responses.stream(input=question, **settings) as events:
            first = events.get_final_response()
    else:
        first = sdk.responses.create(input=question, **settings)
    assert [item.type for item in first.output] == INTERLEAVED_ITEMS
    reasoning = [item for item in first.output if item.type == "reasoning"]
    assert [[part.text for part in item.summary] for item in reasoning] == [[THINKING], [SECOND_THINKING]]
    assert first.output_text == INTERLEAVED_TEXT
    calls = [item for item in first.output if item.type == "function_call"]
    assert [call.name for call in calls] == ["get_weather", "get_time"]
    results: Any = [{"type": "function_call_output", "call_id": call.call_id, "output": "ok"} for call in calls]
    if store:
        after = sdk.responses.create(input=results, previous_response_id=first.id, **settings)
    else:
        back = [*question, *[item.model_dump(exclude_none=True) for item in first.output], *results]
        after = sdk.responses.create(input=back, **settings)
    assert after.status == "completed"  # (the fake refuses the turn with its blocks moved)
    sent = fleet.fakes["anthropic"].state.requests[-1]["json"]["messages"]
    turn = next(m for m in sent if m["role"] == "assistant")["content"]
    assert [block["type"] for block in turn] == ["thinking", "tool_use", "thinking", "text", "tool_use"]


@pytest.mark.parametrize("model", ["gpt-chat", "deepseek"])
def test_claudes_interleaved_turn_goes_to_chat_completions_as_one_turn(
    fleet: Running, fleet_key: str, model: str
) -> None:
    """Claude's interleaved turn (reasoning, call, reasoning, message, call) handed back to a Chat Completions
    deployment was two assistant turns, the text after the first call starting the second: the first call's output
    came after the second turn, and OpenAI (DeepSeek too) refuses that, 400 "An assistant message with 'tool_calls'
    must be followed by tool messages responding to each 'tool_call_id'". A call's output ends a turn, nothing
    before it."""
    sdk = openai_client(fleet, fleet_key)
    question = INTERLEAVED_QUESTION
    settings: Any = {"tools": INTERLEAVED_TOOLS, "store": False, "include": ["reasoning.encrypted_content"]}
    first = sdk.responses.create(model="claude-interleaved", input=question, **settings)
    assert [item.type for item in first.output] == INTERLEAVED_ITEMS
    calls = [item.call_id for item in first.output if item.type == "function_call"]
    results: Any = [{"type": "function_call_output", "call_id": call, "output": "ok"} for call in calls]
    back = [*question, *[item.model_dump(exclude_none=True) for item in first.output], *results]
    assert sdk.responses.create(model=model, input=back, **settings).status == "completed"
    sent = fleet.fakes["openai"].state.requests[-1]["json"]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "tool"]
    assert [call["id"] for call in sent[1]["tool_calls"]] == calls and sent[1]["content"] == INTERLEAVED_TEXT


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", ["reasoner", "claude-thinker", "bedrock-thinker"])
def test_previous_response_id_hands_the_reasoning_back_as_the_provider_gave_it(
    fleet: Running, fleet_key: str, stream: bool, model: str
) -> None:
    """A stored turn (`store` by default) continued by its id: the provider gets its reasoning back whole
    (Claude's signed thinking: the fakes refuse the turn without it, as the APIs do), though the client, who
    did not ask for `reasoning.encrypted_content`, is shown none, in the answer or in what the gateway lists."""
    sdk = openai_client(fleet, fleet_key)
    settings: Any = {"model": model, "tools": [WEATHER], "reasoning": {"summary": "auto"}}
    if stream:
        with sdk.responses.stream(input="Weather in Paris?", tool_choice="required", **settings) as events:
            first = events.get_final_response()
    else:
        first = sdk.responses.create(input="Weather in Paris?", tool_choice="required", **settings)
    reasoning = next(item for item in first.output if item.type == "reasoning")
    assert reasoning.encrypted_content is None
    call = next(item for item in first.output if item.type == "function_call")
    output: Any = [{"type": "function_call_output", "call_id": call.call_id, "output": "18C"}]
    raw = sdk.responses.with_raw_response.create(previous_response_id=first.id, input=output, **settings)
    assert raw.parse().status == "completed" and "x-gateway-dropped-params" not in raw.headers
    if model == "reasoner":
        sent = fleet.fakes["openai"].state.requests[-1]["json"]["messages"]
        assert next(m for m in sent if m["role"] == "assistant")["reasoning_content"] == REASONING

    assert sdk.responses.retrieve(first.id).output[0].model_dump(exclude_none=True) == reasoning.model_dump(
        exclude_none=True
    )
    listed = sdk.responses.input_items.list(raw.parse().id).data
    assert all(getattr(item, "encrypted_content", None) is None for item in listed)
    third = sdk.responses.create(previous_response_id=raw.parse().id, input="And in Rome?", **settings)
    assert third.status == "completed"


@pytest.mark.parametrize("item_id", [[], {"a": 1}])
@pytest.mark.parametrize("model", ["gpt", "claude"])
def test_a_stored_reasoning_item_whose_id_is_no_string_does_not_break_its_continuation(
    fleet: Running, fleet_key: str, model: str, item_id: Any
) -> None:
    """A reasoning item sent with an id that is a list or an object is kept as sent (it gets an id of the gateway's
    own in what is listed); the turn that continued its conversation looked the id up among the reasoning the gateway
    sealed, and the unhashable id made it a 500 `internal_error` (found by review)."""
    headers = {"authorization": f"Bearer {fleet_key}"}
    items = [{"type": "reasoning", "id": item_id, "summary": []}, {"role": "user", "content": "Hi"}]
    first = httpx.post(f"{fleet.url}/v1/responses", json={"model": model, "input": items}, headers=headers)
    assert first.status_code == 200, first.text
    body = {"model": model, "input": "And?", "previous_response_id": first.json()["id"]}
    later = httpx.post(f"{fleet.url}/v1/responses", json=body, headers=headers)
    assert later.status_code == 200, later.text
    assert later.json()["status"] == "completed"


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", ["claude", "bedrock-thinker"])
def test_a_stored_turn_sent_back_by_value_hands_its_reasoning_back(
    fleet: Running, fleet_key: str, stream: bool, model: str
) -> None:
    """The Agents SDK (any client keeping the context itself) sends a stored turn's output back as input, its
    reasoning item without `encrypted_content` (it did not ask for it), and no `previous_response_id`. The item's
    id finds the signed thinking the gateway kept: Claude gets it back, with thinking on. Another key's stored
    turn is not looked into: its reasoning is the summary it sent, as for any client's."""
    sdk = openai_client(fleet, fleet_key)
    question: Any = [{"role": "user", "content": 'Weather in Paris? CALL get_weather {"city": "Paris"}'}]
    settings: Any = {"model": model, "tools": [WEATHER], "reasoning": {"effort": "medium", "summary": "auto"}}
    if stream:  # (a forced tool choice would turn Claude's thinking off: the model calls the tool itself)
        with sdk.responses.stream(input=question, **settings) as events:
            first = events.get_final_response()
    else:
        first = sdk.responses.create(input=question, **settings)
    assert next(item for item in first.output if item.type == "reasoning").encrypted_content is None
    call = next(item for item in first.output if item.type == "function_call")
    back: Any = [
        *question,
        *[item.model_dump(exclude_none=True) for item in first.output],
        {"type": "function_call_output", "call_id": call.call_id, "output": "18C"},
    ]
    raw = sdk.responses.with_raw_response.create(input=back, **settings)
    assert raw.parse().status == "completed" and "x-gateway-dropped-params" not in raw.headers
    if model == "claude":
        sent = fleet.fakes["anthropic"].state.requests[-1]["json"]
        assert sent["thinking"]["type"] == "enabled"
        turn = next(m for m in sent["messages"] if m["role"] == "assistant")
        assert turn["content"][0] == {"type": "thinking", "thinking": THINKING, "signature": SIGNATURE}
    else:
        sent = fleet.fakes["bedrock"].state.requests[-1]["json"]
        turn = next(m for m in sent["messages"] if m["role"] == "assistant")
        signed = {"reasoningText": {"text": BEDROCK_THINKING, "signature": BEDROCK_SIGNATURE}}
        assert turn["content"][0] == {"reasoningContent": signed}
        return

    stranger = openai_client(fleet, fleet.mint(name="stranger"))
    raw = stranger.responses.with_raw_response.create(input=back, **settings)
    # (The summary it sent is no signed thinking: Claude gets neither, and the item is named.)
    assert raw.parse().status == "completed" and dropped(raw.headers) == ["input[reasoning]", "reasoning.effort"]
    assert "thinking" not in fleet.fakes["anthropic"].state.requests[-1]["json"]


def test_reasoning_sent_back_by_value_costs_one_store_read_per_response_at_most(
    fleet: Running, fleet_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A conversation kept by the client sends every earlier turn's reasoning back, each turn a response: the
    last one kept the reasoning of those before it, so one read finds it all; no reasoning item, no read."""
    store = fleet.gateway.store
    reads: list[str] = []
    real = store.get_response

    async def counted(response_id: str) -> Any:
        reads.append(response_id)
        return await real(response_id)

    sdk = openai_client(fleet, fleet_key)
    settings: Any = {"model": "claude", "tools": [WEATHER], "reasoning": {"effort": "medium", "summary": "auto"}}
    items: Any = [{"role": "user", "content": 'Weather in Paris? CALL get_weather {"city": "Paris"}'}]
    first = sdk.responses.create(input=items, **settings)
    call = next(item for item in first.output if item.type == "function_call")
    items += [item.model_dump(exclude_none=True) for item in first.output]
    items.append({"type": "function_call_output", "call_id": call.call_id, "output": "18C"})
    second = sdk.responses.create(input=items, **settings)
    items += [item.model_dump(exclude_none=True) for item in second.output]
    items.append({"role": "user", "content": "And in Rome?"})
    monkeypatch.setattr(store, "get_response", counted)
    raw = sdk.responses.with_raw_response.create(input=items, **settings)
    assert raw.parse().status == "completed" and "x-gateway-dropped-params" not in raw.headers
    assert reads == [second.id]
    turns = [m for m in fleet.fakes["anthropic"].state.requests[-1]["json"]["messages"] if m["role"] == "assistant"]
    assert [turn["content"][0]["type"] for turn in turns] == ["thinking", "thinking"]

    reads.clear()
    assert sdk.responses.create(input="Hi", **settings).status == "completed" and reads == []


@pytest.mark.parametrize("stream", [False, True])
def test_geminis_thought_signatures_go_back_in_the_call_id(fleet: Running, fleet_key: str, stream: bool) -> None:
    """Gemini 3 refuses a function call sent back without its thought signature: the signature rides in the
    call's id (the one mechanism every front-end shares), so a client that echoes `call_id` sends it back."""
    sdk = openai_client(fleet, fleet_key)
    question: Any = [{"role": "user", "content": "Weather in Paris?"}]
    settings: Any = {"model": "gemini-thinker", "tools": [WEATHER], "store": False}
    if stream:
        with sdk.responses.stream(input=question, tool_choice="required", **settings) as events:
            first = events.get_final_response()
    else:
        first = sdk.responses.create(input=question, tool_choice="required", **settings)
    call = next(item for item in first.output if item.type == "function_call")
    assert call_signature(call.call_id) == CALL_SIGNATURE
    back: Any = [
        *question,
        *[item.model_dump(exclude_none=True) for item in first.output],
        {"type": "function_call_output", "call_id": call.call_id, "output": "18C"},
    ]
    assert sdk.responses.create(input=back, **settings).status == "completed"
    contents = fleet.fakes["gemini"].state.requests[-1]["json"]["contents"]
    parts = [part for content in contents for part in content["parts"] if "functionCall" in part]
    assert parts and parts[0]["thoughtSignature"] == CALL_SIGNATURE


@pytest.mark.parametrize("stream", [False, True])
def test_a_reasoning_summary_codex_asks_for_comes_back_from_gemini(
    fleet: Running, fleet_key: str, stream: bool
) -> None:
    """Codex sends `reasoning.summary: auto` to see what the model thought; Gemini shows its thoughts only when
    `includeThoughts` asks, and they come back as the reasoning item's summary."""
    sdk = openai_client(fleet, fleet_key)
    settings: Any = {"model": "gemini", "input": "Hi", "store": False}
    for reasoning, shown in (({"effort": "low", "summary": "auto"}, [THOUGHT]), ({"effort": "low"}, [])):
        if stream:
            with sdk.responses.stream(reasoning=reasoning, **settings) as events:
                response = events.get_final_response()
        else:
            response = sdk.responses.create(reasoning=reasoning, **settings)
        summaries = [part.text for item in response.output if item.type == "reasoning" for part in item.summary]
        assert summaries == shown and response.output_text == GEMINI_TEXT
        thinking = fleet.fakes["gemini"].state.requests[-1]["json"]["generationConfig"]["thinkingConfig"]
        assert thinking.get("includeThoughts", False) is bool(shown)


@pytest.mark.parametrize(
    ("model", "named"), [("o4-chat", True), ("bedrock-claude", True), ("claude", False), ("gemini", False)]
)
def test_a_reasoning_summary_no_answer_can_show_is_named_as_dropped(
    fleet: Running, fleet_key: str, model: str, named: bool
) -> None:
    """`reasoning.summary` was named as dropped by Gemini alone (as `reasoning_summary`): OpenAI's Chat Completions
    (which never returns reasoning) and a model that cannot reason (Claude 3.5 Haiku on Bedrock) left the client
    without its summary and without a word. Now each names it as the client wrote it; one that shows its reasoning
    does not."""
    raw = openai_client(fleet, fleet_key).responses.with_raw_response.create(
        model=model, input="Hi", reasoning={"effort": "low", "summary": "auto"}, store=False
    )
    assert raw.parse().status == "completed"
    assert ("reasoning.summary" in dropped(raw.headers)) is named and "reasoning_summary" not in dropped(raw.headers)


@pytest.mark.parametrize("stream", [False, True])
def test_a_summary_asked_of_a_claude_that_omits_its_thinking_comes_back(
    fleet: Running, fleet_key: str, stream: bool
) -> None:
    """Claude Opus 4.7 omits its thinking unless asked (Anthropic: "the default depends on the model"): Codex's
    `reasoning.summary` got an empty summary. The request now asks for the thinking `summarized`."""
    sdk = openai_client(fleet, fleet_key)
    settings: Any = {"model": "claude-opus", "input": "Hi", "reasoning": {"effort": "high", "summary": "auto"}}
    if stream:
        with sdk.responses.stream(**settings) as events:
            response = events.get_final_response()
    else:
        response = sdk.responses.create(**settings)
    summaries = [part.text for item in response.output if item.type == "reasoning" for part in item.summary]
    assert summaries == [THINKING] and response.output_text == ANTHROPIC_TEXT
    assert fleet.fakes["anthropic"].state.requests[-1]["json"]["thinking"]["display"] == "summarized"


@pytest.mark.parametrize("stream", [False, True])
def test_parallel_calls_answered_out_of_order_reach_gemini_paired_with_their_results(
    fleet: Running, fleet_key: str, stream: bool
) -> None:
    """The Responses API pairs a `function_call_output` with its call by `call_id`, so Codex may hand back the
    outputs of parallel calls in the order they finished; Gemini pairs them by position."""
    items: Any = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"type": "function_call", "call_id": "call_paris", "name": "get_weather", "arguments": '{"city":"Paris"}'},
        {"type": "function_call", "call_id": "call_rome", "name": "get_weather", "arguments": '{"city":"Rome"}'},
        {"type": "function_call_output", "call_id": "call_rome", "output": "25C in Rome"},
        {"type": "function_call_output", "call_id": "call_paris", "output": "18C in Paris"},
    ]
    sdk = openai_client(fleet, fleet_key)
    settings: Any = {"model": "gemini", "input": items, "tools": [WEATHER], "store": False}
    if stream:
        with sdk.responses.stream(**settings) as events:
            response = events.get_final_response()
    else:
        response = sdk.responses.create(**settings)
    assert response.output_text == (
        'get_weather({"city":"Paris"}) = 18C in Paris; get_weather({"city":"Rome"}) = 25C in Rome'
    )


def test_a_codex_history_served_elsewhere_continues_on_claude_without_thinking(fleet: Running, fleet_key: str) -> None:
    """A Codex session whose tool-calling turn OpenAI served continues on Claude with a reasoning effort: OpenAI's
    encrypted reasoning is nothing Claude can take, so the turn has no signed thinking, and Anthropic refuses
    thinking on it (a 400). Thinking is left off that request, and both losses are named."""
    history: Any = [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAAABopenai-opaque-blob"},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "18C"},
    ]
    settings: Any = {"tools": [WEATHER], "store": False, "include": ["reasoning.encrypted_content"]}
    settings["reasoning"] = {"effort": "medium", "summary": "auto"}
    raw = openai_client(fleet, fleet_key).responses.with_raw_response.create(model="claude", input=history, **settings)
    assert raw.parse().status == "completed"
    assert dropped(raw.headers) == ["input[reasoning].encrypted_content", "reasoning.effort"]
    assert "thinking" not in fleet.fakes["anthropic"].state.requests[-1]["json"]


def test_reasoning_left_out_of_many_items_is_named_once(fleet: Running, fleet_key: str) -> None:
    """Codex hands every turn's reasoning back: a session OpenAI served two turns of, continued on Claude, named
    `input[reasoning].encrypted_content` once for each reasoning item left out (twice by its fourth turn, review)."""

    def turn(n: int) -> list[Any]:
        call = {"type": "function_call", "call_id": f"call_{n}", "name": "get_weather", "arguments": "{}"}
        reasoning = {"type": "reasoning", "id": f"rs_{n}", "summary": [], "encrypted_content": f"gAAAAABblob{n}"}
        return [reasoning, call, {"type": "function_call_output", "call_id": f"call_{n}", "output": "18C"}]

    history: Any = [{"type": "message", "role": "user", "content": "Weather?"}, *turn(1), *turn(2)]
    settings: Any = {"tools": [WEATHER], "store": False, "include": ["reasoning.encrypted_content"]}
    raw = openai_client(fleet, fleet_key).responses.with_raw_response.create(model="claude", input=history, **settings)
    assert raw.parse().status == "completed"
    assert dropped(raw.headers) == ["input[reasoning].encrypted_content"]
    # Passed through to OpenAI: the gateway's own seal (a turn another provider served) and another deployment's
    # reasoning, each left out for a reason of its own, are one name too.
    history[1]["encrypted_content"] = "gwr1.e30=.AAAA"
    history[4]["encrypted_content"] = issued("another-deployment", "gAAAAABblob2")
    raw = openai_client(fleet, fleet_key).responses.with_raw_response.create(
        model="gpt-reasoner", input=history, **settings
    )
    assert raw.parse().status == "completed"
    assert dropped(raw.headers) == ["input[reasoning].encrypted_content"]


def test_a_budgeted_codex_request_leaves_claude_room_to_answer_beside_its_thinking(fleet: Running) -> None:
    """Codex sends no `max_output_tokens`: on a budgeted key the output is capped at the gateway's default (4096),
    and the medium effort's thinking budget (8192) is lowered to half of it, not to 4095, which left the answer
    (text, or the tool call carrying an edit) one token once Claude thought to its budget."""
    key = fleet.mint(name="budgeted-codex", budget_usd=10.0)
    settings: Any = {"model": "claude", "reasoning": {"effort": "medium", "summary": "auto"}, "store": False}
    answer = openai_client(fleet, key).responses.create(input="Refactor foo.py", **settings)
    body = fleet.fakes["anthropic"].state.requests[-1]["json"]
    assert body["max_tokens"] == 4096 and body["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert answer.status == "completed"


def test_a_conversation_moving_to_another_provider_leaves_signed_thinking_behind(
    fleet: Running, fleet_key: str
) -> None:
    sdk = openai_client(fleet, fleet_key)
    question: Any = [{"role": "user", "content": "Weather in Paris?"}]
    settings: Any = {"tools": [WEATHER], "store": False, "include": ["reasoning.encrypted_content"]}
    first = sdk.responses.create(model="claude-thinker", input=question, tool_choice="required", **settings)
    call = next(item for item in first.output if item.type == "function_call")
    back: Any = [
        *question,
        *[item.model_dump(exclude_none=True) for item in first.output],
        {"type": "function_call_output", "call_id": call.call_id, "output": "18C"},
    ]
    for model in ("gpt-chat", "deepseek"):
        assert sdk.responses.create(model=model, input=back, **settings).status == "completed"
        sent = fleet.fakes["openai"].state.requests[-1]["json"]["messages"]
        assistant = next(m for m in sent if m["role"] == "assistant")
        assert "thinking_blocks" not in assistant and assistant["tool_calls"][0]["id"] == call.call_id


@pytest.mark.parametrize("api", ["chat", "messages", "responses"])
@pytest.mark.parametrize("served_by", ["reasoner", "claude-thinker"])
def test_an_earlier_turns_reasoning_a_compatible_server_cannot_take_is_named(
    fleet: Running, fleet_key: str, api: str, served_by: str
) -> None:
    """An OpenAI-compatible server the gateway knows only by its profile (vLLM, xAI, Groq, Together: `gpt-chat` here)
    gets no earlier turn's reasoning; a Responses client's reasoning item handed back (DeepSeek's reasoning, sealed)
    was left out unnamed, and Claude's signed thinking in one was named in words the client never wrote
    (`messages.thinking`). Each is named as the client's API calls it, with Chat's `reasoning_content` and Messages'
    thinking blocks; a Chat client's Claude turn, which carries both, has both named (only `messages.thinking` was, its
    `reasoning_content` left out unnamed)."""
    question: Any = [{"role": "user", "content": "Weather in Paris?"}]
    if api == "chat":
        sdk = openai_client(fleet, fleet_key)
        answer = sdk.chat.completions.create(model=served_by, messages=question).choices[0].message
        turn: Any = answer.model_dump(exclude_none=True)
        assert turn.get("reasoning_content") or turn.get("thinking_blocks")
        raw: Any = sdk.chat.completions.with_raw_response.create(
            model="gpt-chat", messages=[*question, turn, {"role": "user", "content": "And tomorrow?"}]
        )
        # Each field the turn carried back, by its name: a Claude turn has both (its text and its signed blocks).
        names = {"thinking_blocks": "messages.thinking", "reasoning_content": "messages.reasoning_content"}
        expected = [name for field, name in names.items() if field in turn]
    elif api == "messages":
        claude = anthropic_client(fleet, fleet_key)
        thinking: Any = {"type": "enabled", "budget_tokens": 1024}
        message = claude.messages.create(model=served_by, max_tokens=2000, thinking=thinking, messages=question)
        blocks: Any = [block.model_dump(exclude_none=True) for block in message.content]
        assert blocks[0]["type"] == "thinking"
        again: Any = [*question, {"role": "assistant", "content": blocks}, {"role": "user", "content": "And tomorrow?"}]
        raw = claude.messages.with_raw_response.create(model="gpt-chat", max_tokens=2000, messages=again)
        expected = ["messages.thinking"]
    else:
        sdk = openai_client(fleet, fleet_key)
        settings: Any = {"store": False, "include": ["reasoning.encrypted_content"]}
        first = sdk.responses.create(model=served_by, input=question, **settings)
        items: Any = [item.model_dump(exclude_none=True) for item in first.output]
        assert items[0]["type"] == "reasoning"
        back: Any = [*question, *items, {"role": "user", "content": "And tomorrow?"}]
        raw = sdk.responses.with_raw_response.create(model="gpt-chat", input=back, **settings)
        expected = ["input[reasoning]"]
    assert dropped(raw.headers) == expected
    sent = fleet.fakes["openai"].state.requests[-1]["json"]["messages"]
    assistant = next(m for m in sent if m["role"] == "assistant")
    assert "reasoning_content" not in assistant and "thinking_blocks" not in assistant


@pytest.mark.parametrize("api", ["chat", "responses"])
@pytest.mark.parametrize("model", ["gemini", "claude", "bedrock-claude"])
def test_another_providers_reasoning_text_is_named_where_it_cannot_go_back(
    fleet: Running, fleet_key: str, api: str, model: str
) -> None:
    """Anthropic and Bedrock take back Claude's signed thinking only, Gemini none: DeepSeek's reasoning handed back
    as text (Chat's `reasoning_content`, a Responses reasoning item) was left out of the request unnamed."""
    question: Any = [{"role": "user", "content": "Weather in Paris?"}]
    sdk = openai_client(fleet, fleet_key)
    if api == "chat":
        turn: Any = sdk.chat.completions.create(model="reasoner", messages=question).choices[0].message
        again: Any = [*question, turn.model_dump(exclude_none=True), {"role": "user", "content": "And tomorrow?"}]
        raw: Any = sdk.chat.completions.with_raw_response.create(model=model, messages=again)
        assert dropped(raw.headers) == ["messages.reasoning_content"]
    else:
        settings: Any = {"store": False, "include": ["reasoning.encrypted_content"]}
        first = sdk.responses.create(model="reasoner", input=question, **settings)
        back: Any = [*question, *[item.model_dump(exclude_none=True) for item in first.output]]
        raw = sdk.responses.with_raw_response.create(model=model, input=[*back, {"role": "user", "content": "And?"}])
        assert dropped(raw.headers) == ["input[reasoning]"]
    assert REASONING.encode() not in orjson.dumps(fleet.fakes[model_fake(model)].state.requests[-1]["json"])


def model_fake(model: str) -> str:
    return {"claude": "anthropic", "bedrock-claude": "bedrock"}.get(model, model)


def test_another_gateway_process_on_the_same_store_opens_the_seal(fleet: Running, fleet_key: str) -> None:
    """Without `responses_secret`, the seal's key lives in the store: a turn sealed by one process (a Lambda
    instance) is opened by another."""
    environ = {**FAKE_KEYS, "AZURE_OPENAI_API_KEY": azure_fake.API_KEY}
    other, server = serve_gateway(fleet.gateway.config, fleet.store_url, fleet.upstream, fleet.fakes, environ)
    try:
        question: Any = [{"role": "user", "content": "Weather in Paris?"}]
        settings: Any = {"model": "reasoner", "tools": [WEATHER], "store": False}
        settings["include"] = ["reasoning.encrypted_content"]
        first = openai_client(fleet, fleet_key).responses.create(input=question, tool_choice="required", **settings)
        call = next(item for item in first.output if item.type == "function_call")
        back: Any = [
            *question,
            *[item.model_dump(exclude_none=True) for item in first.output],
            {"type": "function_call_output", "call_id": call.call_id, "output": "18C"},
        ]
        raw = openai_client(other, fleet_key).responses.with_raw_response.create(input=back, **settings)
        assert "x-gateway-dropped-params" not in raw.headers
        sent = fleet.fakes["openai"].state.requests[-1]["json"]["messages"]
        assert next(m for m in sent if m["role"] == "assistant")["reasoning_content"] == REASONING
    finally:
        server.stop()


# --- an enforced schema ------------------------------------------------------------------------------------------

NAMED: Any = {"type": "object", "required": ["name"]}  # (no `properties`: the fakes answer what they are told to say)


def enforced_response(fleet: Running, key: str, model: str, said: str, stream: bool) -> httpx.Response:
    body = {
        "model": model,
        "input": f"SAY {said}",
        "text": {"format": {"type": "json_schema", "name": "named", "schema": NAMED}},
        "stream": stream,
    }
    headers = {"authorization": f"Bearer {key}", "x-gateway-enforce-schema": "true"}
    return httpx.post(f"{fleet.url}/v1/responses", json=body, headers=headers, timeout=30)


@pytest.mark.parametrize("model", ["gpt", "gpt-chat"])  # passed through to OpenAI's Responses API; translated
def test_an_enforced_response_that_breaks_its_schema_is_a_502(fleet: Running, model: str) -> None:
    """A response passed through to OpenAI was never checked against its enforced `text.format` (found with the
    review of `/v1/messages`): it is now, as a chat answer is."""
    key = fleet.mint(name=f"responses-schema-{model}")
    fits = enforced_response(fleet, key, model, '{"name": "Zoë"}', stream=False)
    assert fits.status_code == 200 and fits.json()["output"][-1]["content"][0]["text"] == '{"name": "Zoë"}'
    broken = enforced_response(fleet, key, model, "no JSON", stream=False)
    assert broken.status_code == 502 and broken.json()["error"]["code"] == "schema_violation", broken.text
    assert [line.status for line in fleet.ledger(key)] == [200, 502]


@pytest.mark.parametrize("model", ["gpt", "gpt-chat"])
def test_an_enforced_response_stream_that_breaks_its_schema_ends_failed(fleet: Running, model: str) -> None:
    """A Responses stream's answer was never checked, passed through or translated; as a chat stream's, it is now
    checked whole at its end: one that does not fit ends on `error` and `response.failed` (the output as streamed),
    in place of `response.completed`, as a stream that fails does."""
    key = fleet.mint(name=f"responses-schema-stream-{model}")
    fits = enforced_response(fleet, key, model, '{"name": "Zoë"}', stream=True)
    assert [event["type"] for event in sse_payloads(fits.text)][-1] == "response.completed"
    broken = enforced_response(fleet, key, model, "no JSON", stream=True)
    events = sse_payloads(broken.text)
    assert [event["type"] for event in events][-2:] == ["error", "response.failed"], broken.text
    assert events[-2]["code"] == "schema_violation"
    assert "the answer does not match the response schema: the answer is not JSON" in events[-2]["message"]
    assert events[-1]["response"]["output"][-1]["content"][0]["text"] == "no JSON"
    assert [line.status for line in fleet.ledger(key)] == [200, 200]


def sse_payloads(text: str) -> list[dict[str, Any]]:
    return [
        orjson.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ") and line != "data: [DONE]"
    ]


# --- what a request costs the gateway before its key is admitted -------------------------------------------------


def test_a_long_run_of_assistant_items_does_not_hold_the_gateway(fleet: Running, fleet_key: str) -> None:
    """Each assistant item's text was added to its turn's whole so far (a reasoning item's the same way), copying the
    turn for every item: quadratic. 50,000 assistant items of 100 characters (6.7 MB, under the 8 MB body bound)
    held the event loop some 14 s, before the key was admitted, and every other request of the process waited:
    a `/health` sent meanwhile waited 13.7-36 s."""
    items: Any = [{"role": "user", "content": "hi"}]
    items += [{"role": "assistant", "content": "x" * 100}] * 50_000
    items += [{"role": "user", "content": "and?"}]
    body = orjson.dumps({"model": "gpt-chat", "input": items, "store": False})
    assert len(body) < 8 * 1024 * 1024
    answered: dict[str, Any] = {}

    def send() -> None:
        headers = {"authorization": f"Bearer {fleet_key}", "content-type": "application/json"}
        answer = httpx.post(f"{fleet.url}/v1/responses", content=body, headers=headers, timeout=300)
        answered["status"] = answer.status_code

    sender = threading.Thread(target=send)
    sender.start()
    time.sleep(1.0)  # (the body is sent and parsed in well under this: the translation has begun)
    started = time.monotonic()
    health = httpx.get(f"{fleet.url}/health", timeout=300)
    waited = time.monotonic() - started
    sender.join()
    assert health.status_code == 200 and answered.get("status") == 200
    assert waited < 2.0, f"/health waited {waited:.1f} s behind one Responses request's translation"


def test_a_key_that_may_not_use_the_model_is_refused_before_its_conversation_is_read(fleet: Running) -> None:
    """The key's model scope is checked before the stored conversation is read and the input translated: a key that
    may not use the model was refused only after both (a `previous_response_id` of nothing: its 404, where the 403
    says why)."""
    key = fleet.mint(name="gemini-only", models=["gemini"])
    body = {"model": "claude", "input": "Hi", "previous_response_id": "resp_0123456789abcdef0123456789abcdef"}
    answer = httpx.post(f"{fleet.url}/v1/responses", json=body, headers={"authorization": f"Bearer {key}"})
    assert answer.status_code == 403, answer.text
    assert answer.json()["error"]["code"] == "model_not_allowed"


CODEX_TURN: Any = {  # (the body Codex 0.171 sends for a turn, as it reaches the gateway: streamed, nothing stored)
    "model": "claude",
    "instructions": "You are Codex.",
    "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "list the files"}]}],
    "tools": [
        {
            "type": "function",
            "name": "exec_command",
            "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]},
        },
        {"type": "web_search"},
    ],
    "tool_choice": "auto",
    "parallel_tool_calls": False,
    "reasoning": {"effort": "medium", "summary": "auto"},
    "store": False,
    "stream": True,
    "include": ["reasoning.encrypted_content"],
    "prompt_cache_key": "codex-session",
}


@pytest.mark.parametrize(
    ("refusal", "status", "code"), [("budget", 402, "budget_exceeded"), ("scope", 403, "model_not_allowed")]
)
def test_a_refusal_codex_retries_costs_nothing_and_reaches_no_provider(
    fleet: Running, refusal: str, status: int, code: str
) -> None:
    """Codex 0.171 takes a 402 `budget_exceeded` or a 403 `model_not_allowed` for a dropped connection and sends the
    turn again, five times ("Reconnecting... n/5"), whatever `x-should-retry` says, before it shows the gateway's
    message. The interface binds those statuses, so they stay: the six sends are refused before anything is reserved
    or sent, and cost nothing: no provider is called, no ledger line is written, nothing is spent."""
    fields: dict[str, Any] = {"budget_usd": 0.05} if refusal == "budget" else {"models": ["gpt"]}
    key = fleet.mint(name=f"codex-retries-{refusal}", **fields)
    upstream = {name: len(fake.state.requests) for name, fake in fleet.fakes.items()}
    for _ in range(6):  # (the turn, and Codex's five reconnections)
        answer = httpx.post(f"{fleet.url}/v1/responses", json=CODEX_TURN, headers={"authorization": f"Bearer {key}"})
        assert answer.status_code == status, answer.text
        assert answer.json()["error"]["code"] == code and answer.headers["x-should-retry"] == "false"
    assert {name: len(fake.state.requests) for name, fake in fleet.fakes.items()} == upstream
    assert fleet.ledger(key) == []
    spent = httpx.get(f"{fleet.url}/v1/key", headers={"authorization": f"Bearer {key}"}).json()["spent_usd"]
    assert spent == 0
