"""The official openai SDK against the gateway, with a fake Bedrock Runtime (SigV4-checking) behind it."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import botocore.session
import httpx
import openai
import orjson
import pytest

from adapters import aws
from adapters.providers.bedrock.adapter import sign
from adapters.providers.registry import REGISTRY
from adapters.sigv4 import Credentials
from handler.config import parse_config
from handler.pipeline.routing import RouteControls
from handler.ports import UpstreamRequest
from tests.fakes import bedrock as fake
from tests.functional.conftest import Running, anthropic_client, serve_gateway
from tests.support.servers import ServerThread
from tests.support.tools import (
    ASK_THE_TIME,
    CLOCK_TOOL,
    MCP_TOOL_NAME,
    WEATHER_TOOL,
    allowed_tools,
    called_names,
    mcp_tool_use,
    named_call,
    named_tool,
    responses_function_calls,
    streamed_arguments,
)

pytestmark = pytest.mark.skipif("bedrock" not in REGISTRY, reason="no bedrock adapter registered")

MODEL = "us.anthropic.claude-3-5-haiku-20241022-v1:0"
SONNET = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
GLOBAL_SONNET = "global.anthropic.claude-sonnet-4-5-20250929-v1:0"  # (a global cross-region inference profile)
REDACTING = "us.anthropic.claude-sonnet-4-5-redacts-v1:0"  # (the fake's Claude whose reasoning opens redacted)
LLAMA = "us.meta.llama3-3-70b-instruct-v1:0"
NOVA_2 = "us.amazon.nova-2-lite-v1:0"
# The fake's Claude whose answer ends in a tool use Bedrock could not parse (`malformed_tool_use`), or in output it
# could not read (`malformed_model_output`).
MISCALLING = "us.anthropic.claude-malformed-tool-use-v1:0"
GARBLING = "us.anthropic.claude-malformed-output-v1:0"
PRICE = {"input": 1, "output": 2}
# An hour's cache write at a rate of its own (not the default of twice the input price).
CACHE_PRICE = {"input": 3.0, "output": 15.0, "cached_input": 0.3, "cache_write": 3.75, "cache_write_1h": 7.0}
HI: Any = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def bedrock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """A gateway whose only provider is Bedrock, in front of the fake Bedrock Runtime."""
    app = fake.create_app()
    upstream = ServerThread(app).start()
    deployment = {"provider": "bedrock", "region": fake.REGION}
    data = {
        "gateway": {"timeouts": {"connect": 2, "first_byte": 1.5, "between_chunks": 1.5}},
        "providers": {"bedrock": {"type": "bedrock", "base_url": upstream.url}},
        "models": {
            "claude-haiku": {"deployments": [{**deployment, "model": MODEL}], "price": PRICE},
            "claude-sonnet": {"deployments": [{**deployment, "model": SONNET}], "price": PRICE},
            "claude-redacting": {"deployments": [{**deployment, "model": REDACTING}], "price": PRICE},
            "claude-cached": {"deployments": [{**deployment, "model": SONNET}], "price": CACHE_PRICE},
            "claude-global": {"deployments": [{**deployment, "model": GLOBAL_SONNET}], "price": PRICE},
            "nova-anywhere": {
                "deployments": [{"provider": "bedrock", "model": "amazon.nova-lite-v1:0"}],
                "price": PRICE,
            },
            "throttled": {
                "deployments": [{**deployment, "model": "fail-throttle"}],
                "price": PRICE,
                "fallbacks": ["claude-haiku"],
            },
            "stream-throttled": {
                "deployments": [{**deployment, "model": "stream-exception"}, {**deployment, "model": MODEL}],
                "price": PRICE,
            },
            "over-quota": {
                "deployments": [{**deployment, "model": "fail-quota"}],
                "price": PRICE,
                "fallbacks": ["claude-haiku"],
            },
            "over-quota-alone": {"deployments": [{**deployment, "model": "fail-quota"}], "price": PRICE},
            "rejects": {"deployments": [{**deployment, "model": "fail-validation"}], "price": PRICE},
            "echoes-signature-400": {"deployments": [{**deployment, "model": "echoes-signature-400"}], "price": PRICE},
            "echoes-signature-403": {"deployments": [{**deployment, "model": "echoes-signature-403"}], "price": PRICE},
            "denied": {"deployments": [{**deployment, "model": "us.anthropic.claude-denied-v1:0"}], "price": PRICE},
            "unknown-id-then-haiku": {
                "deployments": [{**deployment, "model": "unknown-id"}, {**deployment, "model": MODEL}],
                "price": PRICE,
            },
            "llama": {"deployments": [{**deployment, "model": LLAMA}], "price": PRICE},
            "nova-2": {"deployments": [{**deployment, "model": NOVA_2}], "price": PRICE},
            "claude-miscalls": {
                "deployments": [{**deployment, "model": MISCALLING}],
                "price": PRICE,
                "fallbacks": ["claude-haiku"],
            },
            "claude-miscalls-alone": {"deployments": [{**deployment, "model": MISCALLING}], "price": PRICE},
            "claude-garbles-alone": {"deployments": [{**deployment, "model": GARBLING}], "price": PRICE},
            "llama-miscalls": {
                "deployments": [{**deployment, "model": "us.meta.llama3-3-malformed-tool-use-v1:0"}],
                "price": PRICE,
                "fallbacks": ["claude-haiku"],
            },
        },
    }
    store_url = f"sqlite:///{Path(tmp_path_factory.mktemp('bedrock-store')) / 'gateway.db'}"
    running, server = serve_gateway(parse_config(data, set(REGISTRY)), store_url, upstream, {"bedrock": app}, {})
    yield running
    server.stop()
    upstream.stop()


@pytest.fixture
def client(bedrock: Running) -> Iterator[openai.OpenAI]:
    """The SDK with its own connection pool, closed after the test so no socket outlives the servers."""
    with openai.OpenAI(base_url=f"{bedrock.url}/v1", api_key=bedrock.mint(name="bedrock"), max_retries=0) as sdk:
        yield sdk


def sent(running: Running) -> dict[str, Any]:
    requests: list[dict[str, Any]] = running.fakes["bedrock"].state.requests
    return requests[-1]


def test_completion_is_signed_and_translated_both_ways(bedrock: Running, client: openai.OpenAI) -> None:
    messages: Any = [{"role": "system", "content": "Be brief."}, *HI]
    raw = client.chat.completions.with_raw_response.create(model="claude-haiku", messages=messages, max_tokens=50)
    completion = raw.parse()
    assert completion.choices[0].message.content == fake.TEXT
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (14, 6)  # 11 + 3 cache reads
    assert raw.headers["x-gateway-route"] == f"bedrock/{MODEL}@us-east-1=200"
    upstream = sent(bedrock)
    assert upstream["path"] == "/model/us.anthropic.claude-3-5-haiku-20241022-v1:0/converse"
    assert "/us-east-1/bedrock/aws4_request" in upstream["headers"]["authorization"]
    assert upstream["json"]["system"] == [{"text": "Be brief."}]
    assert upstream["json"]["inferenceConfig"] == {"maxTokens": 50}


def test_deployment_without_a_region_signs_for_the_functions_region(bedrock: Running, client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="nova-anywhere", messages=HI)
    assert raw.parse().choices[0].message.content == fake.TEXT
    assert sent(bedrock)["path"] == "/model/amazon.nova-lite-v1:0/converse"


def test_a_global_inference_profile_runs_in_global_and_is_pinned_by_it_alone(bedrock: Running) -> None:
    """A `global.` profile is called in its source region (its endpoint, its signature) and AWS routes it to any
    commercial region: it runs in `global`, as `x-gateway-region`, the ledger and a region pin have it. It was
    reported as running in its source region, us-east-1, and a pin to us-east-1 (a client keeping its requests in
    that region) was sent to it."""
    key = bedrock.mint(name="bedrock-global")
    answers = {
        pin: httpx.post(
            f"{bedrock.url}/v1/chat/completions",
            json={"model": "claude-global", "messages": HI},
            headers={"authorization": f"Bearer {key}", **({"x-gateway-region": pin} if pin else {})},
            timeout=30,
        )
        for pin in ("", "GLOBAL", fake.REGION)
    }
    whole, pinned, elsewhere = answers.values()
    assert whole.status_code == pinned.status_code == 200, whole.text
    assert whole.headers["x-gateway-region"] == pinned.headers["x-gateway-region"] == "global"
    assert whole.headers["x-gateway-route"] == f"bedrock/{GLOBAL_SONNET}@{fake.REGION}=200"  # (the deployment's name)
    assert f"/{fake.REGION}/bedrock/aws4_request" in sent(bedrock)["headers"]["authorization"]
    assert elsewhere.status_code == 503 and elsewhere.json()["error"]["code"] == "no_deployment_available"
    assert [line.region for line in bedrock.ledger(key)] == ["global", "global"]


def test_stream_assembles_text_and_ends_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="claude-haiku", messages=HI, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == fake.TEXT
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6


def test_a_streamed_tool_only_answer_has_null_content_as_the_whole_one(client: openai.OpenAI) -> None:
    """Converse's stream opened with `content: ""` before it knew a tool call followed: the SDK's stream helper
    finished with `content == ""` where the same answer unstreamed has None, as OpenAI's has either way."""
    with client.chat.completions.stream(
        model="claude-haiku", messages=HI, tools=[WEATHER_TOOL], tool_choice="required"
    ) as stream:
        events = [event.type for event in stream]
        final = stream.get_final_completion()
    assert final.choices[0].message.tool_calls and final.choices[0].message.content is None
    assert "content.delta" not in events, events
    with client.chat.completions.stream(model="claude-haiku", messages=HI) as stream:
        assert stream.get_final_completion().choices[0].message.content == fake.TEXT


def test_tools_stream_and_not_and_the_result_goes_back(bedrock: Running, client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="claude-haiku", messages=HI, tools=[WEATHER_TOOL], tool_choice="required"
    )
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "tool_calls"
    assert message.tool_calls is not None
    call = message.tool_calls[0]
    assert fake.TOOL_USE_ID.match(call.id) and call.function.name == "get_weather"  # type: ignore[union-attr]
    assert call.function.arguments == '{"city":"Paris"}'  # type: ignore[union-attr]
    assert sent(bedrock)["json"]["toolConfig"]["toolChoice"] == {"any": {}}

    stream = client.chat.completions.create(
        model="claude-haiku", messages=HI, tools=[WEATHER_TOOL], tool_choice="required", stream=True
    )
    arguments, ids = "", []
    for chunk in stream:
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            ids += [delta.id] if delta.id else []
            arguments += delta.function.arguments or "" if delta.function else ""
    assert len(ids) == 1 and fake.TOOL_USE_ID.match(ids[0]) and ids[0] != call.id  # (each call its own id)
    assert arguments == '{"city":"Paris"}'

    follow_up: Any = [
        *HI,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "18 C and clear"},
    ]
    answer = client.chat.completions.create(model="claude-haiku", messages=follow_up, tools=[WEATHER_TOOL])
    assert answer.choices[0].message.content == fake.TEXT
    turns = sent(bedrock)["json"]["messages"]
    assert turns[1]["content"][0]["toolUse"]["toolUseId"] == call.id
    assert turns[2]["content"][0]["toolResult"] == {
        "toolUseId": call.id,
        "content": [{"text": "18 C and clear"}],
    }


def test_a_streamed_call_without_arguments_has_an_empty_object_as_when_whole(client: openai.OpenAI) -> None:
    """Claude on Bedrock streams a call without arguments with an empty input: `{}`, as in the whole answer."""
    whole = client.chat.completions.create(model="claude-haiku", messages=ASK_THE_TIME, tools=[CLOCK_TOOL])
    call = (whole.choices[0].message.tool_calls or [])[0]
    assert call.function.arguments == "{}"  # type: ignore[union-attr]
    stream = client.chat.completions.create(
        model="claude-haiku", messages=ASK_THE_TIME, tools=[CLOCK_TOOL], stream=True
    )
    assert streamed_arguments(stream) == ["{}"]


def test_a_model_without_forced_tool_choice_still_answers(bedrock: Running, client: openai.OpenAI) -> None:
    """Bedrock takes a forced `toolChoice` (`any`, `tool`) from Claude and Nova only; Llama answered every
    `tool_choice: required` or named tool, and every `json_schema` request (a forced tool), with Bedrock's 400
    "This model doesn't support the toolConfig.toolChoice.any field". The choice is now dropped and named, and
    the schema goes in the system prompt."""
    named = {"type": "function", "function": {"name": "get_weather"}}
    for choice in ("required", named):
        raw = client.chat.completions.with_raw_response.create(
            model="llama",
            messages=HI,
            tools=[WEATHER_TOOL],
            tool_choice=choice,  # type: ignore[arg-type]
        )
        assert raw.parse().choices[0].message.content == fake.TEXT
        assert raw.headers["x-gateway-dropped-params"] == "tool_choice"
        assert "toolChoice" not in sent(bedrock)["json"]["toolConfig"]

    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    fmt: Any = {"type": "json_schema", "json_schema": {"name": "city", "schema": schema}}
    for stream in (False, True):
        if stream:
            chunks = client.chat.completions.create(model="llama", messages=HI, response_format=fmt, stream=True)
            content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        else:
            answer = client.chat.completions.create(model="llama", messages=HI, response_format=fmt)
            content = answer.choices[0].message.content or ""
        assert content == '{"city":"Paris"}'
        body = sent(bedrock)["json"]
        assert "toolConfig" not in body and '"city"' in body["system"][-1]["text"]


def test_a_strict_json_schema_is_a_strict_forced_tool_or_named_where_only_an_instruction_serves_it(
    bedrock: Running, client: openai.OpenAI
) -> None:
    """A `json_schema` format with `strict: true` went to Claude as a forced tool without `strict`, and to Llama as
    an instruction in the system prompt, with nothing named, even under `x-gateway-strict`. Claude's forced tool is
    now strict (`toolSpec.strict`, as a client's own strict tool goes); for Llama, which takes no forced tool, the
    schema still goes as an instruction and `strict` is named, a 400 under `x-gateway-strict`."""
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    fmt: Any = {"type": "json_schema", "json_schema": {"name": "city", "schema": schema, "strict": True}}
    raw = client.chat.completions.with_raw_response.create(
        model="claude-haiku", messages=HI, response_format=fmt, extra_headers={"x-gateway-strict": "true"}
    )
    assert raw.parse().choices[0].message.content is not None and "x-gateway-dropped-params" not in raw.headers
    [tool] = sent(bedrock)["json"]["toolConfig"]["tools"]
    assert tool["toolSpec"]["name"] == "json_response" and tool["toolSpec"]["strict"] is True

    raw = client.chat.completions.with_raw_response.create(model="llama", messages=HI, response_format=fmt)
    assert raw.parse().choices[0].message.content == '{"city":"Paris"}'
    assert raw.headers["x-gateway-dropped-params"] == "response_format.json_schema.strict"
    assert '"city"' in sent(bedrock)["json"]["system"][-1]["text"]
    before = len(bedrock.fakes["bedrock"].state.requests)
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="llama", messages=HI, response_format=fmt, extra_headers={"x-gateway-strict": "true"}
        )
    assert refused.value.param == "response_format.json_schema.strict"
    assert len(bedrock.fakes["bedrock"].state.requests) == before


CALL_WEATHER: Any = [{"role": "user", "content": 'CALL get_weather {"city":"Oslo"}'}]


def test_llama_streams_tool_calls_from_converse(bedrock: Running, client: openai.OpenAI) -> None:
    """ConverseStream refuses Llama's tools ("This model doesn't support tool use in streaming mode.", a 400), so every
    streamed agent turn to Llama failed: the request goes to Converse and its whole answer reaches the client as a
    stream, tool call, finish reason and usage included. Without tools Llama streams from ConverseStream."""
    stream = client.chat.completions.create(
        model="llama",
        messages=CALL_WEATHER,
        tools=[WEATHER_TOOL],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    calls = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or []]
    assert [call.function.name for call in calls if call.id] == ["get_weather"]  # type: ignore[union-attr]
    assert all(fake.TOOL_USE_ID.match(call.id) for call in calls if call.id)
    assert "".join(call.function.arguments or "" for call in calls if call.function) == '{"city":"Oslo"}'
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
    upstream = sent(bedrock)
    assert upstream["path"] == f"/model/{LLAMA}/converse" and "toolConfig" in upstream["json"]

    plain = client.chat.completions.create(model="llama", messages=HI, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in plain if c.choices)
    assert text == fake.TEXT and sent(bedrock)["path"] == f"/model/{LLAMA}/converse-stream"


def test_llama_tool_use_streams_to_a_messages_client(bedrock: Running) -> None:
    """The same through Anthropic's Messages API, streamed: a tool_use block with its input, `stop_reason: tool_use`."""
    claude = anthropic_client(bedrock, bedrock.mint(name="llama-messages"))
    tool: Any = {
        "name": "get_weather",
        "description": "Weather in a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
    with claude.messages.stream(model="llama", max_tokens=100, messages=CALL_WEATHER, tools=[tool]) as events:
        message = events.get_final_message()
    assert message.stop_reason == "tool_use"
    use = message.content[-1]
    assert use.type == "tool_use" and use.name == "get_weather" and use.input == {"city": "Oslo"}
    assert sent(bedrock)["path"] == f"/model/{LLAMA}/converse"


@pytest.mark.parametrize(
    ("model", "taken"),
    [("claude-haiku", True), ("nova-anywhere", True), ("llama", False)],
    ids=["claude", "nova", "llama"],
)
def test_a_failed_tools_result_has_converses_error_status_where_the_model_takes_it(
    bedrock: Running, model: str, taken: bool
) -> None:
    """A Messages `tool_result` with `is_error: true` reached Claude on Bedrock as text opening `[tool error] `, without
    Converse's `status: error` (review). AWS's ToolResultBlock: `status` "is only supported by Amazon Nova and
    Anthropic Claude 3 and 4 models"; the others refuse it, and are told in the text, as before. An error result
    with no output has content all the same (Converse: it "cannot be empty when status value is error")."""
    claude = anthropic_client(bedrock, bedrock.mint(name=f"tool-error-{model}"))
    tool: Any = {"name": "Bash", "input_schema": {"type": "object"}}
    call = {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "false"}}
    for content, text in (("Exit code 1", "Exit code 1"), ([], "(no output)")):
        result = {"type": "tool_result", "tool_use_id": "toolu_1", "is_error": True, "content": content}
        messages: Any = [
            {"role": "user", "content": "run"},
            {"role": "assistant", "content": [{"type": "text", "text": "Running it."}, call]},
            {"role": "user", "content": [result, {"type": "text", "text": "why?"}]},
        ]
        answer = claude.messages.create(model=model, max_tokens=50, messages=messages, tools=[tool])
        assert answer.content[-1].type == "text"
        sent_result = sent(bedrock)["json"]["messages"][2]["content"][0]["toolResult"]
        if taken:
            assert sent_result == {"toolUseId": "toolu_1", "content": [{"text": text}], "status": "error"}
        else:
            marked = "[tool error] Exit code 1" if content else "[tool error]"
            assert sent_result == {"toolUseId": "toolu_1", "content": [{"text": marked}]}


def test_a_call_id_past_64_characters_goes_as_a_stand_in_paired_with_its_result(
    bedrock: Running, client: openai.OpenAI
) -> None:
    """Converse refuses a `toolUseId` past 64 characters; a history whose call another provider named at length (a
    Gemini-signed id, an MCP tool's) failed on every later turn."""
    long_id = "call_0__gts_" + "Q" * 200
    call = {"id": long_id, "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
    history: Any = [
        *HI,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": long_id, "content": "18 C and clear"},
    ]
    answer = client.chat.completions.create(model="claude-haiku", messages=history, tools=[WEATHER_TOOL])
    assert answer.choices[0].message.content
    use, result = (sent(bedrock)["json"]["messages"][i]["content"][0] for i in (1, 2))
    assert len(use["toolUse"]["toolUseId"]) == 64 and use["toolUse"]["toolUseId"] == result["toolResult"]["toolUseId"]


@pytest.mark.parametrize("call_id", ["functions.get_weather:0", "call 1", ""], ids=["kimi", "spaced", "empty"])
def test_a_call_id_of_characters_converse_refuses_goes_as_a_stand_in_paired_with_its_result(
    bedrock: Running, client: openai.OpenAI, call_id: str
) -> None:
    """Converse takes a `toolUseId` of 1 to 64 characters of `[a-zA-Z0-9_-]` (AWS's ToolUseBlock and ToolResultBlock);
    other providers' ids are not (Kimi K2 names its calls `functions.get_weather:0`), and one went as it was: Bedrock
    refused every later turn of the session (the fake checked only the length)."""
    call = {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
    history: Any = [
        *HI,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call_id, "content": "18 C and clear"},
    ]
    answer = client.chat.completions.create(model="claude-haiku", messages=history, tools=[WEATHER_TOOL])
    assert answer.choices[0].message.content
    use, result = (sent(bedrock)["json"]["messages"][i]["content"][0] for i in (1, 2))
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", use["toolUse"]["toolUseId"])
    assert use["toolUse"]["toolUseId"] == result["toolResult"]["toolUseId"]


CONVERSE_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")  # what Converse takes for a tool's name


def sent_tool_names(running: Running) -> list[str]:
    return [tool["toolSpec"]["name"] for tool in sent(running)["json"]["toolConfig"]["tools"] if "toolSpec" in tool]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("name", [MCP_TOOL_NAME, "weather.get"], ids=["long", "dotted"])
def test_a_tool_name_converse_refuses_goes_as_an_alias_and_the_call_comes_back_by_the_clients_name(
    bedrock: Running, client: openai.OpenAI, name: str, stream: bool
) -> None:
    """Converse takes a tool's name of 1 to 64 of `[a-zA-Z0-9_-]`: Claude Code's MCP tools (83 characters here) went
    as written, and Bedrock refused the whole request, which the client could not mend. The tool, and the named
    choice of it, now go by an alias; the model's call of the alias comes back by the client's name."""
    choice: Any = {"type": "function", "function": {"name": name}}
    settings: Any = {"model": "claude-haiku", "messages": HI, "tools": [named_tool(name)], "tool_choice": choice}
    assert called_names(client, settings, stream) == [name]
    if stream:
        assert streamed_arguments(client.chat.completions.create(**settings, stream=True)) == ['{"city":"Paris"}']
    (alias,) = sent_tool_names(bedrock)
    assert CONVERSE_NAME.fullmatch(alias) and alias != name
    assert sent(bedrock)["json"]["toolConfig"]["toolChoice"] == {"tool": {"name": alias}}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_messages_clients_mcp_tool_comes_back_by_its_name_past_converses_limit(
    bedrock: Running, stream: bool
) -> None:
    """Claude Code on a Bedrock deployment with an MCP tool of 83 characters: a 400 for every request before."""
    claude = anthropic_client(bedrock, bedrock.mint(name=f"mcp-messages-{stream}"))
    use = mcp_tool_use(claude, "claude-haiku", stream)
    assert use.type == "tool_use" and use.name == MCP_TOOL_NAME and use.input == {"city": "Paris"}
    assert CONVERSE_NAME.fullmatch(sent_tool_names(bedrock)[0])


def test_a_responses_clients_long_function_name_comes_back_as_its_own(bedrock: Running) -> None:
    key = bedrock.mint(name="mcp-responses")
    assert responses_function_calls(bedrock.url, key, "claude-haiku") == [MCP_TOOL_NAME]
    assert CONVERSE_NAME.fullmatch(sent_tool_names(bedrock)[0])


def test_a_call_of_a_long_named_tool_in_the_history_goes_by_its_alias(bedrock: Running, client: openai.OpenAI) -> None:
    """The client sends its call back by its own name: Bedrock gets the alias the tool is declared by."""
    history: Any = [
        *HI,
        {"role": "assistant", "content": None, "tool_calls": [named_call(MCP_TOOL_NAME)]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C and clear"},
    ]
    answer = client.chat.completions.create(model="claude-haiku", messages=history, tools=[named_tool(MCP_TOOL_NAME)])
    assert answer.choices[0].message.content
    (alias,) = sent_tool_names(bedrock)
    assert sent(bedrock)["json"]["messages"][1]["content"][0]["toolUse"]["name"] == alias


def test_a_tool_history_sent_without_tools_is_answered(bedrock: Running, client: openai.OpenAI) -> None:
    """A request after tool turns that offers no tools (a summary, a title), or says `tool_choice: none`:
    Converse refuses its toolUse/toolResult blocks without a toolConfig, so they go as text."""
    call = {"id": "t1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
    history: Any = [
        *HI,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "t1", "content": "18 C and clear"},
        {"role": "user", "content": "Summarise this conversation."},
    ]
    for offered in ({}, {"tools": [WEATHER_TOOL], "tool_choice": "none"}):
        answer = client.chat.completions.with_raw_response.create(model="claude-haiku", messages=history, **offered)
        assert answer.parse().choices[0].message.content == fake.TEXT
        assert "x-gateway-dropped-params" not in answer.headers
        body = sent(bedrock)["json"]
        assert "toolConfig" not in body
        assert body["messages"][2]["content"][:2] == [{"text": "[result of t1]"}, {"text": "18 C and clear"}]


def test_a_tool_history_written_as_text_names_the_clients_tools(bedrock: Running, client: openai.OpenAI) -> None:
    """Without tools to send, the history's calls go as text: a long-named tool's by its alias (review), which the
    model could read back to the client. They are written by the client's names."""
    history: Any = [
        *HI,
        {"role": "assistant", "content": None, "tool_calls": [named_call(MCP_TOOL_NAME, "t1")]},
        {"role": "tool", "tool_call_id": "t1", "content": "18 C and clear"},
        {"role": "user", "content": "Summarise this conversation."},
    ]
    for offered in ({}, {"tools": [named_tool(MCP_TOOL_NAME)], "tool_choice": "none"}):
        assert client.chat.completions.create(model="claude-haiku", messages=history, **offered)
        written = sent(bedrock)["json"]["messages"][1]["content"][0]["text"]
        assert written.startswith(f"[called tool {MCP_TOOL_NAME} (t1)"), written


def test_thinking_is_left_off_a_tool_loop_whose_turn_carries_no_signed_thinking(
    bedrock: Running, client: openai.OpenAI
) -> None:
    """Chat Completions never hands Claude's signed reasoning back, and Bedrock refuses thinking on a tool-use turn
    that does not open with it, as Anthropic does: thinking is not sent on that loop, and the wish is named. A new
    question is thought through as asked."""
    call = {"id": "t1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
    loop: Any = [
        *HI,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "t1", "content": "18 C and clear"},
    ]
    settings: Any = {"model": "claude-sonnet", "tools": [WEATHER_TOOL], "reasoning_effort": "low"}
    raw = client.chat.completions.with_raw_response.create(messages=loop, **settings)
    assert raw.parse().choices[0].message.content == fake.TEXT
    assert raw.headers["x-gateway-dropped-params"] == "reasoning_effort"
    assert "additionalModelRequestFields" not in sent(bedrock)["json"]

    raw = client.chat.completions.with_raw_response.create(messages=HI, **settings)
    assert "x-gateway-dropped-params" not in raw.headers
    assert sent(bedrock)["json"]["additionalModelRequestFields"]["thinking"]["type"] == "enabled"


def test_a_chat_clients_unsigned_thinking_blocks_are_not_sent_to_claude_and_are_named(
    bedrock: Running, client: openai.OpenAI
) -> None:
    """A Chat Completions client that hands back `thinking_blocks` it did not get from Claude (no signature: another
    provider's reasoning) had them sent as `reasoningText.signature: ""`, with thinking kept on the loop: Bedrock
    relays Anthropic's 400 ("Invalid `signature` in `thinking` block"). They are left out and named, and the loop,
    whose turn has no signed thinking, goes on without thinking."""
    call = {"id": "t1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
    unsigned = {"type": "thinking", "thinking": "The user wants the weather.", "signature": ""}
    loop: Any = [
        *HI,
        {"role": "assistant", "content": None, "tool_calls": [call], "thinking_blocks": [unsigned]},
        {"role": "tool", "tool_call_id": "t1", "content": "18 C and clear"},
    ]
    raw = client.chat.completions.with_raw_response.create(
        model="claude-sonnet", messages=loop, tools=[WEATHER_TOOL], reasoning_effort="low"
    )
    assert raw.parse().choices[0].message.content == fake.TEXT
    assert raw.headers["x-gateway-dropped-params"].split(",") == ["messages.thinking", "reasoning_effort"]
    body = sent(bedrock)["json"]
    assert [next(iter(block)) for block in body["messages"][1]["content"]] == ["toolUse"]
    assert "additionalModelRequestFields" not in body


def test_redacted_thinking_comes_back_in_a_stream_as_in_a_whole_answer(bedrock: Running, client: openai.OpenAI) -> None:
    """Claude's redacted reasoning (`redactedContent`) must go back on the next turn: a whole answer kept it, a
    stream lost it. A Messages stream has its `redacted_thinking` block, a Chat stream its `thinking_blocks`."""
    claude = anthropic_client(bedrock, bedrock.mint(name="redacted"))
    asked: Any = {
        "model": "claude-redacting",
        "max_tokens": 2000,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "messages": HI,
    }
    whole = claude.messages.create(**asked)
    with claude.messages.stream(**asked) as events:
        streamed = events.get_final_message()
    assert [block.model_dump(exclude_none=True) for block in streamed.content] == [
        block.model_dump(exclude_none=True) for block in whole.content
    ]
    assert streamed.content[0].model_dump() == {"type": "redacted_thinking", "data": fake.REDACTED}

    settings: Any = {"model": "claude-redacting", "messages": HI, "reasoning_effort": "low"}
    answer = client.chat.completions.create(**settings)
    blocks = (answer.choices[0].message.model_extra or {})["thinking_blocks"]
    chunks = client.chat.completions.create(**settings, stream=True)
    streamed_blocks = [
        block
        for c in chunks
        if c.choices
        for block in (c.choices[0].delta.model_extra or {}).get("thinking_blocks", [])
    ]
    assert streamed_blocks == blocks and blocks[0] == {"type": "redacted_thinking", "data": fake.REDACTED, "index": 0}


def test_the_sdks_stream_helper_accumulates_claudes_thinking_blocks_as_the_whole_answer_has_them(
    bedrock: Running, client: openai.OpenAI
) -> None:
    """Claude on Bedrock answering with a redacted and a signed thinking block broke the OpenAI SDK's
    `chat.completions.stream()` helper (`RuntimeError: Expected list delta entry to have an 'index' key`): each block
    was its own `thinking_blocks` list delta, which the SDK merges by `index`. Each entry has its position among the
    answer's thinking blocks, and the accumulated message has the whole answer's blocks; handed back, both go to
    Bedrock as the reasoning it gave."""
    settings: Any = {"model": "claude-redacting", "messages": HI, "reasoning_effort": "low"}
    whole = client.chat.completions.create(**settings).choices[0].message
    with client.chat.completions.stream(**settings) as events:
        streamed = events.get_final_completion().choices[0].message
    blocks = (streamed.model_extra or {})["thinking_blocks"]
    assert blocks == (whole.model_extra or {})["thinking_blocks"]
    assert blocks == [
        {"type": "redacted_thinking", "data": fake.REDACTED, "index": 0},
        {"type": "thinking", "thinking": fake.THINKING, "signature": fake.SIGNATURE, "index": 1},
    ]
    assert streamed.content == whole.content == fake.TEXT

    turn = {"role": "assistant", "content": streamed.content, "thinking_blocks": blocks}
    client.chat.completions.create(**{**settings, "messages": [*HI, turn, {"role": "user", "content": "And?"}]})
    assert sent(bedrock)["json"]["messages"][1]["content"] == [
        {"reasoningContent": {"redactedContent": fake.REDACTED}},
        {"reasoningContent": {"reasoningText": {"text": fake.THINKING, "signature": fake.SIGNATURE}}},
        {"text": fake.TEXT},
    ]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_an_hours_cache_marker_reaches_bedrock_and_its_writes_are_priced_at_the_hour_rate(
    bedrock: Running, stream: bool
) -> None:
    """`cache_control: {"ttl": "1h"}` went as a plain cache point (Bedrock's five minutes): the cache point carries
    the `ttl` (botocore's CachePointBlock), and the writes Bedrock reports kept an hour (`cacheDetails`) are priced at
    the model's `cache_write_1h`, from Messages and Chat clients alike."""
    key = bedrock.mint(name=f"hour-cache-{stream}")
    hour = {"type": "ephemeral", "ttl": "1h"}
    rules = f"House rules ({stream}): " + "be brief. " * 300
    system: Any = [{"type": "text", "text": rules, "cache_control": hour}]
    asked: Any = {"model": "claude-cached", "max_tokens": 50, "system": system, "messages": HI}
    claude = anthropic_client(bedrock, key)
    if stream:
        with claude.messages.stream(**asked) as events:
            events.get_final_message()
    else:
        claude.messages.create(**asked)
    assert sent(bedrock)["json"]["system"] == [{"text": rules}, {"cachePoint": {"type": "default", "ttl": "1h"}}]
    with openai.OpenAI(base_url=f"{bedrock.url}/v1", api_key=key, max_retries=0) as chat:
        chat_system = {"role": "system", "content": [{"type": "text", "text": rules + "!", "cache_control": hour}]}
        settings: Any = {"model": "claude-cached", "messages": [chat_system, *HI], "max_tokens": 50}
        if stream:
            list(chat.chat.completions.create(**settings, stream=True, stream_options={"include_usage": True}))
        else:
            chat.chat.completions.create(**settings)
    assert sent(bedrock)["json"]["system"][1] == {"cachePoint": {"type": "default", "ttl": "1h"}}
    lines = bedrock.ledger(key)
    assert len(lines) == 2
    for line in lines:
        written = line.cache_write_tokens
        uncached = line.input_tokens - written
        expected = (uncached * 3.0 + written * 7.0 + line.output_tokens * 15.0) / 1e6
        assert written > 0 and line.cost_usd == pytest.approx(expected, rel=1e-9)


def cache_points(body: dict[str, Any]) -> list[str]:
    """Where a Converse body's cache points are: `system`, `tools` or `messages`, one entry a point."""
    found = ["system" for block in body.get("system") or () if "cachePoint" in block]
    found += ["tools" for block in (body.get("toolConfig") or {}).get("tools") or () if "cachePoint" in block]
    return found + ["messages" for m in body["messages"] for block in m["content"] if "cachePoint" in block]


def test_a_clients_cache_markers_reach_no_bedrock_model_that_caches_nothing(bedrock: Running) -> None:
    """A client's own `cache_control` markers (Claude Code marks every request) went to every Bedrock model as cache
    points, and Bedrock refuses a cache point to a model without prompt caching ("You invoked an unsupported model or
    your request did not allow prompt caching"): every such request to Llama failed. They are left out, named, from
    Messages and Chat clients alike; the fake billed Llama cache reads and writes it never makes (review provrev)."""
    key = bedrock.mint(name="uncached-llama")
    marked: Any = {"type": "ephemeral"}
    system: Any = [{"type": "text", "text": "You are terse.", "cache_control": marked}]
    user: Any = [{"role": "user", "content": [{"type": "text", "text": "Hi", "cache_control": marked}]}]
    tool = {**named_tool("get_weather"), "cache_control": marked}
    raw = anthropic_client(bedrock, key).messages.with_raw_response.create(
        model="llama", max_tokens=100, system=system, messages=user
    )
    answer = raw.parse()
    assert sent(bedrock)["model"] == LLAMA and cache_points(sent(bedrock)["json"]) == []
    assert raw.headers["x-gateway-dropped-params"] == "messages.cache_control"
    assert (answer.usage.cache_read_input_tokens, answer.usage.cache_creation_input_tokens) == (0, 0)
    with openai.OpenAI(base_url=f"{bedrock.url}/v1", api_key=key, max_retries=0) as chat:
        messages: Any = [{"role": "system", "content": system}, *user]
        chatted = chat.chat.completions.with_raw_response.create(model="llama", messages=messages, tools=[tool])
    assert cache_points(sent(bedrock)["json"]) == [] and chatted.parse().choices[0].message
    assert chatted.headers["x-gateway-dropped-params"] == "messages.cache_control,tools.cache_control"
    assert [line.cached_tokens for line in bedrock.ledger(key)] == [0, 0]


def test_nova_gets_a_clients_cache_markers_in_system_and_messages_but_not_among_its_tools(bedrock: Running) -> None:
    """Amazon Nova takes cache points in `system` and `messages`, not in `toolConfig.tools` (AWS's supported-models
    table): a marked tool's point made Bedrock refuse the request. The others go, the tool's is left out and named."""
    marked: Any = {"type": "ephemeral"}
    raw = anthropic_client(bedrock, bedrock.mint(name="nova-cache")).messages.with_raw_response.create(
        model="nova-2",
        max_tokens=100,
        system=[{"type": "text", "text": "You are terse.", "cache_control": marked}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "Hi", "cache_control": marked}]}],
        tools=[{"name": "get_weather", "input_schema": {"type": "object"}, "cache_control": marked}],
    )
    assert raw.parse().content and raw.headers["x-gateway-dropped-params"] == "tools.cache_control"
    assert sent(bedrock)["model"] == NOVA_2 and cache_points(sent(bedrock)["json"]) == ["system", "messages"]


@pytest.mark.parametrize(
    ("model", "where", "refused"),
    [
        (LLAMA, "messages", fake.NO_CACHING),
        ("us.anthropic.claude-3-sonnet-20240229-v1:0", "system", fake.NO_CACHING),
        (NOVA_2, "tools", fake.NO_TOOL_POINT),
        (NOVA_2, "messages", None),
        (MODEL, "tools", None),
    ],
)
def test_the_fake_refuses_a_cache_point_where_bedrock_does(
    bedrock: Running, model: str, where: str, refused: str | None
) -> None:
    """The fake cached for any model, and reported reads and writes for Llama: it now refuses a cache point as Bedrock
    does, to a model without prompt caching and among Nova's tools, with a `ValidationException`."""
    point = {"cachePoint": {"type": "default"}}
    body: dict[str, Any] = {"messages": [{"role": "user", "content": [{"text": "Hi"}]}]}
    body["toolConfig"] = {"tools": [{"toolSpec": {"name": "f", "inputSchema": {"json": {"type": "object"}}}}]}
    if where == "system":
        body["system"] = [{"text": "Be terse."}, point]
    else:
        (body["messages"][0]["content"] if where == "messages" else body["toolConfig"]["tools"]).append(point)
    request = UpstreamRequest(
        "POST",
        f"{bedrock.upstream.url}/model/{model}/converse",
        {"content-type": "application/json"},
        orjson.dumps(body),
    )
    sign(request, fake.REGION, Credentials(fake.ACCESS_KEY, fake.SECRET_KEY))
    answer = httpx.post(request.url, headers=request.headers, content=request.body, timeout=10)
    if refused is None:
        assert answer.status_code == 200, answer.text
    else:
        assert answer.status_code == 400 and answer.headers["x-amzn-errortype"].startswith("ValidationException:")
        assert answer.json() == {"message": refused}


def test_throttling_falls_back_stream_and_not(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="throttled", messages=HI)
    assert raw.parse().choices[0].message.content == fake.TEXT
    assert raw.headers["x-gateway-route"].startswith("bedrock/fail-throttle@us-east-1=429, ")

    with client.chat.completions.with_streaming_response.create(
        model="stream-throttled", messages=HI, stream=True
    ) as response:
        route = response.headers["x-gateway-route"]
        text = "".join(c.choices[0].delta.content or "" for c in response.parse() if c.choices)
    assert text == fake.TEXT
    assert route.startswith("bedrock/stream-exception@us-east-1=429, ")


def test_the_accounts_quota_over_http_falls_back_and_alone_is_a_429_to_wait_out(client: openai.OpenAI) -> None:
    """Bedrock's ServiceQuotaExceededException comes with HTTP 400 (botocore's model): it was the client's 400
    (`Too many tokens per day` as a bad request), the fallback never tried, while the same exception in a stream
    was failed over. It is the gateway's AWS account's quota, read as the 429 the adapter's table says."""
    raw = client.chat.completions.with_raw_response.create(model="over-quota", messages=HI)
    assert raw.parse().choices[0].message.content == fake.TEXT
    assert raw.headers["x-gateway-route"] == f"bedrock/fail-quota@{fake.REGION}=429, bedrock/{MODEL}@{fake.REGION}=200"
    with pytest.raises(openai.RateLimitError) as alone:
        client.chat.completions.create(model="over-quota-alone", messages=HI)
    assert "Too many tokens per day" in alone.value.message
    assert alone.value.response.headers["x-should-retry"] == "true" and "retry-after" in alone.value.response.headers


def test_validation_exception_is_a_client_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="rejects", messages=HI)
    assert "Malformed input request" in caught.value.message


@pytest.mark.parametrize("model", ["echoes-signature-400", "echoes-signature-403"])
def test_a_request_signature_bedrock_quotes_back_reaches_no_client(bedrock: Running, model: str) -> None:
    """A Bedrock error that quotes the request's `Authorization` header (a ValidationException, an
    AccessDeniedException): the header's first word was redacted, and the rest, `Signature=` and its 64 hex digits
    with it, reached the client, enough to replay the signed request within AWS's five minutes of skew."""
    answer = httpx.post(
        f"{bedrock.url}/v1/chat/completions",
        json={"model": model, "messages": HI},
        headers={"authorization": f"Bearer {bedrock.mint(name='echo')}"},
    )
    signed = sent(bedrock)["headers"]["authorization"]
    signature = signed.rpartition("Signature=")[2]
    assert answer.status_code in (400, 502) and len(signature) == 64
    assert signature not in answer.text and "Credential=" not in answer.text
    assert "Authorization: [REDACTED]" in answer.text and "[REDACTED]]" not in answer.text


def test_bedrocks_access_denied_gives_clients_its_reason_not_the_operators_aws_account(bedrock: Running) -> None:
    """Bedrock's AccessDeniedException names the caller's IAM role and the resource by their ARNs, each with the
    operator's AWS account id (and its role's name): relayed whole in the 502 its refusal ends as, to every client of
    the deployment, through the Messages API and Chat Completions alike (found by review). The account is redacted,
    the reason kept."""
    key = bedrock.mint(name="denied")
    claude = anthropic_client(bedrock, key)
    with pytest.raises(anthropic.InternalServerError) as messages:
        claude.messages.create(model="denied", max_tokens=10, messages=HI)
    with openai.OpenAI(base_url=f"{bedrock.url}/v1", api_key=key, max_retries=0) as sdk:
        with pytest.raises(openai.InternalServerError) as chat:
            sdk.chat.completions.create(model="denied", messages=HI)
    for refused in (messages.value.response, chat.value.response):
        assert refused.status_code == 502 and fake.ACCOUNT not in refused.text
        assert "is not authorized to perform: bedrock:InvokeModel on resource: arn:aws:bedrock:" in refused.text
        assert "arn:aws:sts::[REDACTED]:assumed-role/" in refused.text


def test_a_model_id_bedrock_does_not_know_fails_over_to_the_next_deployment(client: openai.OpenAI) -> None:
    """Bedrock's ValidationException "The provided model identifier is invalid." is about the configured model id,
    not the client's request: the next deployment answers (it was the client's 400, the next never tried)."""
    raw = client.chat.completions.with_raw_response.create(model="unknown-id-then-haiku", messages=HI)
    assert raw.parse().choices[0].message.content == fake.TEXT
    assert raw.headers["x-gateway-route"] == f"bedrock/unknown-id@{fake.REGION}=400, bedrock/{MODEL}@{fake.REGION}=200"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_stop_sequence_that_fired_is_named_as_on_anthropic(bedrock: Running, stream: bool) -> None:
    """Claude on Bedrock ends at a stop sequence with `stopReason: stop_sequence`, and says which one when the
    request asks (`additionalModelResponseFieldPaths`); the Messages API answered `end_turn` with no sequence,
    where the same model on Anthropic answers `stop_sequence` and the sequence. With one sequence asked of a
    model that does not say (Nova), that one fired."""
    claude = anthropic_client(bedrock, bedrock.mint(name=f"stops-{stream}"))
    for model, stops in (("claude-haiku", ["from", "never"]), ("nova-anywhere", ["from"])):
        asked: Any = {"model": model, "max_tokens": 50, "messages": HI, "stop_sequences": stops}
        if stream:
            with claude.messages.stream(**asked) as events:
                message = events.get_final_message()
        else:
            message = claude.messages.create(**asked)
        assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "from"), model
        assert message.content[0].text == "Hello "  # type: ignore[union-attr]
        paths = sent(bedrock)["json"].get("additionalModelResponseFieldPaths")
        assert paths == (["/stop_sequence"] if model == "claude-haiku" else None)


def test_a_cap_past_the_models_limit_is_sent_again_within_the_limit_bedrock_names(
    bedrock: Running, client: openai.OpenAI
) -> None:
    """Llama 3.3 on Bedrock writes 8,192 tokens at most and refuses a larger `maxTokens` with a ValidationException
    naming its limit (Claude Code asks 32,000 of every model): the gateway sends it again within the limit, which it
    keeps for the deployment."""
    first = client.chat.completions.with_raw_response.create(model="llama", messages=HI, max_tokens=32_000)
    label = first.headers["x-gateway-route"].split("=")[0]
    assert first.headers["x-gateway-route"] == f"{label}=400, {label}=200"
    assert sent(bedrock)["json"]["inferenceConfig"]["maxTokens"] == 8192
    again = client.chat.completions.with_raw_response.create(model="llama", messages=HI, max_tokens=20_000)
    assert again.headers["x-gateway-route"] == f"{label}=200"
    assert sent(bedrock)["json"]["inferenceConfig"]["maxTokens"] == 8192


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_malformed_tool_use_fails_over_and_what_bedrock_billed_is_charged(bedrock: Running, stream: bool) -> None:
    """Bedrock's `stopReason: malformed_tool_use` (the model's tool use did not parse) came back as the words before
    it with `finish_reason: stop`: the client was told a broken call ended normally (found by review). Now it is the
    provider's malformed answer: another deployment is tried, and the line charges what Bedrock billed for both. A
    stream reaches it so when the model's answer comes whole (Llama's tools go to Converse)."""
    key = bedrock.mint(name=f"miscalls-{stream}")
    with openai.OpenAI(base_url=f"{bedrock.url}/v1", api_key=key, max_retries=0) as sdk:
        if stream:
            with sdk.chat.completions.with_streaming_response.create(
                model="llama-miscalls", messages=HI, tools=[WEATHER_TOOL], stream=True
            ) as streamed:
                route = streamed.headers["x-gateway-route"]
                text = "".join(c.choices[0].delta.content or "" for c in streamed.parse() if c.choices)
        else:
            raw = sdk.chat.completions.with_raw_response.create(model="claude-miscalls", messages=HI)
            route, text = raw.headers["x-gateway-route"], raw.parse().choices[0].message.content
        single = sdk.chat.completions.with_raw_response.create(model="claude-haiku", messages=HI)
    assert route.split(", ")[0].endswith("=invalid_response") and route.endswith(f"bedrock/{MODEL}@us-east-1=200")
    assert text == fake.TEXT
    miscalled, answered = bedrock.ledger(key)[-2:]
    # Both usages billed: the miscall's (Llama's reads no cache: `PRICE`, 1 an input token and 2 an output one), and
    # the answer's.
    miscall = (fake.USAGE["inputTokens"] + 2 * fake.USAGE["outputTokens"]) / 1e6 if stream else None
    answer = float(single.headers["x-gateway-cost-usd"])
    assert miscalled.cost_usd == pytest.approx((miscall or answer) + answer)
    assert (miscalled.status, answered.status) == (200, 200)
    with openai.OpenAI(base_url=f"{bedrock.url}/v1", api_key=key, max_retries=0) as sdk:
        with pytest.raises(openai.APIStatusError) as alone:
            sdk.chat.completions.create(model="claude-miscalls-alone", messages=HI)
    assert alone.value.status_code == 502 and "malformed_tool_use" in alone.value.message
    # With nothing else to try, the line of the 502 carries the tokens it charges for, as a stream's did (it said 0
    # in, 0 out at $0.000026: review).
    [failed] = [line for line in bedrock.ledger(key) if line.status == 502]
    cached = fake.USAGE["cacheReadInputTokens"]
    billed = (fake.USAGE["inputTokens"] + cached, cached, fake.USAGE["outputTokens"])
    assert (failed.input_tokens, failed.cached_tokens, failed.output_tokens) == billed
    assert failed.cost_usd == pytest.approx(float(single.headers["x-gateway-cost-usd"]))


@pytest.mark.parametrize(
    ("model", "stop_reason"),
    [("claude-miscalls-alone", "malformed_tool_use"), ("claude-garbles-alone", "malformed_model_output")],
)
def test_a_malformed_stop_mid_stream_is_the_error_of_each_clients_api(
    bedrock: Running, model: str, stop_reason: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream already begun when Bedrock says its answer was malformed ended as a clean `stop` (`end_turn`, a
    completed response). Each API now ends it with its own in-stream error naming Bedrock's stop reason, and the
    line charges what Bedrock billed, with the error's status."""
    # Each such stream counts on the deployment's breaker, as its whole answer does: the module's earlier failures of
    # the model and these three would open it before the last request. Held closed: the answers' shapes are asked.
    monkeypatch.setattr(bedrock.gateway.router.breakers, "threshold", 100)
    key = bedrock.mint(name=f"garbled-{stop_reason}")
    with openai.OpenAI(base_url=f"{bedrock.url}/v1", api_key=key, max_retries=0) as sdk:
        text, finishes = "", []
        with pytest.raises(openai.APIError) as chat:
            for chunk in sdk.chat.completions.create(model=model, messages=HI, stream=True):
                text += chunk.choices[0].delta.content or "" if chunk.choices else ""
                finishes += [chunk.choices[0].finish_reason] if chunk.choices and chunk.choices[0].finish_reason else []
    assert text == fake.MALFORMED_TEXT and finishes == [] and stop_reason in chat.value.message

    claude = anthropic_client(bedrock, key)
    with pytest.raises(anthropic.APIStatusError) as messages:
        with claude.messages.stream(model=model, max_tokens=50, messages=HI) as events:
            events.get_final_message()
    assert stop_reason in messages.value.message

    body = {"model": model, "input": "Hi", "stream": True}
    with httpx.stream(
        "POST", f"{bedrock.url}/v1/responses", json=body, headers={"authorization": f"Bearer {key}"}
    ) as answer:
        events = [line for line in answer.iter_lines() if line.startswith(("event: ", "data: "))]
    kinds = [line.removeprefix("event: ") for line in events if line.startswith("event: ")]
    assert kinds[-2:] == ["error", "response.failed"] and "response.completed" not in kinds
    assert stop_reason in events[-1]

    lines = bedrock.ledger(key)
    assert [line.status for line in lines] == [502, 502, 502]
    assert all(line.cost_source == "provider" and line.output_tokens == 6 for line in lines)


def test_a_messages_clients_ask_for_summarized_thinking_is_named_where_no_reasoning_comes_back(
    bedrock: Running,
) -> None:
    """`thinking.display: summarized` is a Messages client's ask to see the reasoning, as a Responses client's
    `reasoning.summary` is: Llama on Bedrock does not reason, and that went unsaid (only a Gemini deployment named
    the ask). It is named as the client wrote it."""
    claude = anthropic_client(bedrock, bedrock.mint(name="display-llama"))
    thinking: Any = {"type": "enabled", "budget_tokens": 2048, "display": "summarized"}
    raw = claude.messages.with_raw_response.create(
        model="llama", max_tokens=4096, thinking=thinking, messages=[{"role": "user", "content": "Hi"}]
    )
    assert raw.parse().content[0].text == fake.TEXT  # type: ignore[union-attr]
    assert "thinking.display" in raw.headers["x-gateway-dropped-params"].split(",")


def test_a_messages_turn_that_thinks_between_its_calls_reaches_bedrock_in_its_order(bedrock: Running) -> None:
    """Interleaved thinking a Messages client hands back (it thought, called, thought again, wrote, called): Bedrock
    gets the blocks where Claude wrote them (Anthropic takes thinking back unmodified, in order), not all first."""
    turn: Any = [
        {"type": "thinking", "thinking": "One.", "signature": "sig-1"},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "redacted_thinking", "data": "Zm9v"},
        {"type": "text", "text": "And the time:"},
        {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Rome"}},
    ]
    results = [{"type": "tool_result", "tool_use_id": f"toolu_{n}", "content": "sunny"} for n in (1, 2)]
    claude = anthropic_client(bedrock, bedrock.mint(name="interleaved"))  # (its HTTP client is shared: left open)
    claude.messages.create(
        model="claude-haiku",
        max_tokens=100,
        tools=[{"name": "get_weather", "input_schema": {"type": "object"}}],
        messages=[
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": turn},
            {"role": "user", "content": results},
        ],
    )
    assistant = sent(bedrock)["json"]["messages"][1]["content"]
    assert assistant == [
        {"reasoningContent": {"reasoningText": {"text": "One.", "signature": "sig-1"}}},
        {"toolUse": {"toolUseId": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}},
        {"reasoningContent": {"redactedContent": "Zm9v"}},
        {"text": "And the time:"},
        {"toolUse": {"toolUseId": "toolu_2", "name": "get_weather", "input": {"city": "Rome"}}},
    ]


PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


def test_an_images_type_parameters_are_left_out_and_its_detail_named(bedrock: Running, client: openai.OpenAI) -> None:
    """`data:image/png;name=a.png;base64,` was refused ("Bedrock does not take images of type
    'image/png;name=a.png'"), and `detail: low` left out without a word."""
    image = {"url": f"data:image/png;name=a.png;base64,{PNG}", "detail": "low"}
    messages: Any = [
        {"role": "user", "content": [{"type": "text", "text": "What?"}, {"type": "image_url", "image_url": image}]}
    ]
    raw = client.chat.completions.with_raw_response.create(model="claude-haiku", messages=messages)
    assert sent(bedrock)["json"]["messages"][0]["content"][1] == {"image": {"format": "png", "source": {"bytes": PNG}}}
    assert raw.headers["x-gateway-dropped-params"] == "messages.image_url.detail"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_nova_2s_redacted_reasoning_is_not_passed_off_as_its_reasoning(bedrock: Running, stream: bool) -> None:
    """Nova 2's reasoning comes back from Bedrock as the text "[REDACTED]" (AWS's Nova 2 guide: "reasoning content
    is redacted in the output and displays as [REDACTED], though you are still charged for these tokens"). It
    reached a Chat client as its `reasoning_content` and a Messages client as a thinking block, as if the model had
    thought "[REDACTED]": neither gets reasoning text now, and the reasoning tokens are billed all the same."""
    key = bedrock.mint(name=f"nova-2-{stream}")
    billed = fake.USAGE["outputTokens"] + fake.NOVA_REASONING_TOKENS
    with openai.OpenAI(base_url=f"{bedrock.url}/v1", api_key=key, max_retries=0) as chat:
        asked: Any = {"model": "nova-2", "messages": HI, "reasoning_effort": "low"}
        if stream:
            chunks = list(chat.chat.completions.create(**asked, stream=True, stream_options={"include_usage": True}))
            deltas = [c.choices[0].delta for c in chunks if c.choices]
            assert "".join(d.content or "" for d in deltas) == fake.TEXT
            assert not [d for d in deltas if (d.model_extra or {}).get("reasoning_content")]
            usage = chunks[-1].usage
        else:
            completion = chat.chat.completions.create(**asked)
            assert completion.choices[0].message.content == fake.TEXT
            assert (completion.choices[0].message.model_extra or {}).get("reasoning_content") is None
            usage = completion.usage
    assert sent(bedrock)["json"]["additionalModelRequestFields"]["reasoningConfig"]["type"] == "enabled"
    assert usage is not None and usage.completion_tokens == billed

    claude = anthropic_client(bedrock, key)
    thinking: Any = {"model": "nova-2", "max_tokens": 4096, "thinking": {"type": "enabled", "budget_tokens": 2048}}
    if stream:
        with claude.messages.stream(**thinking, messages=HI) as events:
            message = events.get_final_message()
    else:
        message = claude.messages.create(**thinking, messages=HI)
    assert [block.type for block in message.content] == ["text"]
    assert message.usage.output_tokens == billed
    assert [line.output_tokens for line in bedrock.ledger(key)] == [billed, billed]


def test_a_bedrock_deployment_without_aws_credentials_is_passed_over_as_one_without_its_key(
    upstream: tuple[ServerThread, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a machine with no AWS credentials, Bedrock first and Anthropic next: the request ended on the Bedrock
    deployment with a 503 `provider_not_configured` ("no AWS credentials found for Bedrock") and the next was never
    tried, where a provider without its API key is passed over; and each request walked botocore's credential chain
    again (blocking I/O: the instance role's endpoint waits where there is none). Now it is passed over, said so by
    `route explain`, and the chain is walked again only after `aws.MISSING_RETRY_S`."""
    server, fakes = upstream
    walks: list[int] = []

    class NoCredentials:
        def get_credentials(self) -> None:
            walks.append(1)
            time.sleep(1.0)  # (an instance role's endpoint that answers slowly, or never)

    monkeypatch.setattr(botocore.session, "get_session", NoCredentials)
    monkeypatch.setattr(aws, "_process_credentials", aws.AwsCredentials({}))
    bedrock = {"provider": "bedrock", "model": MODEL, "region": fake.REGION}
    data = {
        "providers": {
            "bedrock": {"type": "bedrock", "base_url": f"{server.url}/bedrock"},
            "openai": {"type": "openai", "api_key": "env:OPENAI_API_KEY", "base_url": f"{server.url}/openai/v1"},
        },
        "models": {
            "haiku-else-mini": {
                "deployments": [bedrock, {"provider": "openai", "model": "gpt-4o-mini"}],
                "price": PRICE,
            },
            "haiku-alone": {"deployments": [bedrock], "price": PRICE},
        },
    }
    running, gateway_server = serve_gateway(
        parse_config(data, set(REGISTRY)), f"sqlite:///{tmp_path / 'gateway.db'}", server, fakes
    )
    try:
        key = running.mint(name="no-aws")
        with openai.OpenAI(base_url=f"{running.url}/v1", api_key=key, max_retries=0) as sdk:
            started = time.monotonic()
            answer = sdk.chat.completions.with_raw_response.create(model="haiku-else-mini", messages=HI)
            # The chain is walked on a thread: walked on the event loop, it held every request for its seconds.
            assert time.monotonic() - started < 0.5
            assert answer.headers["x-gateway-route"] == "openai/gpt-4o-mini@global=200"
            with pytest.raises(openai.APIStatusError) as refused:
                sdk.chat.completions.create(model="haiku-alone", messages=HI)
        assert refused.value.status_code == 503 and refused.value.response.headers["x-should-retry"] == "false"
        error = refused.value.response.json()["error"]
        assert error["code"] == "provider_not_configured"
        assert "has no AWS credentials: no AWS credentials found for Bedrock" in error["message"], error
        explained = running.gateway.router.explain("haiku-else-mini", RouteControls(), lambda _: True)
        assert [entry.get("skipped") for entry in explained] == ["provider_not_configured", None]
        assert len(walks) == 1  # (three requests within MISSING_RETRY_S)
        assert [line.status for line in running.ledger(key)] == [200]
    finally:
        gateway_server.stop()


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_an_allowed_tools_choice_offers_converse_the_allowed_tools_by_their_aliases(
    bedrock: Running, client: openai.OpenAI, stream: bool
) -> None:
    """A `tool_choice` of type `allowed_tools` was the gateway's 400. Converse has no list of tools the model may
    call: the tools it allows are offered alone (the model can call no other), each by the name Converse takes, and
    its mode is Converse's choice (`required`: `any`). The call comes back by the client's name."""
    tools = [WEATHER_TOOL, named_tool(MCP_TOOL_NAME)]
    settings: Any = {"model": "claude-haiku", "messages": HI, "tools": tools}
    settings["tool_choice"] = allowed_tools("required", MCP_TOOL_NAME)
    assert called_names(client, settings, stream) == [MCP_TOOL_NAME]
    (alias,) = sent_tool_names(bedrock)
    assert CONVERSE_NAME.fullmatch(alias) and alias != MCP_TOOL_NAME
    assert sent(bedrock)["json"]["toolConfig"]["toolChoice"] == {"any": {}}
