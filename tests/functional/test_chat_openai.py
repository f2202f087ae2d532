"""The official openai SDK against the gateway, with an OpenAI-compatible upstream behind it."""

from __future__ import annotations

import re
from typing import Any

import httpx
import openai
import orjson
import pytest
from starlette.testclient import TestClient

from tests.fakes import openai as fake
from tests.fakes.openai import TEXT
from tests.functional.conftest import Running, anthropic_client, fresh_minute, openai_client
from tests.support.tools import (
    MCP_TOOL_NAME,
    allowed_tools,
    called_names,
    mcp_tool_use,
    named_call,
    named_tool,
    responses_function_calls,
)

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def client(running: Running, key: str) -> openai.OpenAI:
    return openai_client(running, key)


def test_completion_carries_answer_usage_route_and_cost(running: Running, key: str) -> None:
    raw = client(running, key).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}]
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == TEXT
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens == 7
    headers = raw.headers
    assert headers["x-gateway-provider"] == "openai"
    assert headers["x-gateway-model"] == "gpt-4o-mini"
    assert headers["x-gateway-region"] == "global"
    assert headers["x-gateway-route"] == "openai/gpt-4o-mini@global=200"
    assert headers["x-request-id"].startswith("req_")
    expected = (completion.usage.prompt_tokens * 0.15 + 7 * 0.60) / 1_000_000
    assert float(headers["x-gateway-cost-usd"]) == pytest.approx(expected, abs=1e-10)
    assert float(headers["x-gateway-fee-usd"]) == 0
    assert "gateway;dur=" in headers["server-timing"] and "upstream;dur=" in headers["server-timing"]


def test_upstream_receives_the_provider_key_not_the_gateway_key(running: Running, key: str) -> None:
    requests = running.fakes["openai"].state.requests
    client(running, key).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}])
    sent = requests[-1]
    assert sent["headers"]["authorization"] == "Bearer test-openai-key"
    assert key not in str(sent)
    assert sent["json"]["model"] == "gpt-4o-mini"


def test_stream_assembles_text_and_ends_with_usage_and_cost(running: Running, key: str) -> None:
    stream = client(running, key).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == TEXT
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None and last.usage.completion_tokens == 7
    cost = (last.model_extra or {})["cost"]
    assert cost["provider_usd"] == pytest.approx((last.usage.prompt_tokens * 0.15 + 7 * 0.60) / 1e6)
    assert cost["fee_usd"] == 0 and cost["output_tokens"] == 7


def test_stream_without_include_usage_still_reports_cost(running: Running, key: str) -> None:
    chunks = list(
        client(running, key).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}], stream=True
        )
    )
    assert chunks[-1].usage is None
    assert (chunks[-1].model_extra or {})["cost"]["provider_usd"] > 0
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


@pytest.mark.parametrize("usage", [True, False], ids=["with-usage", "without-usage"])
def test_a_streams_own_stream_options_reach_openai_beside_the_usage(running: Running, key: str, usage: bool) -> None:
    """OpenAI pads every streamed delta with an `obfuscation` member unless `stream_options.include_obfuscation` is
    false (a client on a trusted link turns it off to save bandwidth). The gateway sent its own `{"include_usage":
    true}` in place of the client's `stream_options`: the client's `false` never reached OpenAI, and nothing named it
    (found by review). It goes beside the usage the gateway asks for, and a client that did not ask for the usage
    still gets no usage chunk."""
    raw = client(running, key).chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Hi"}],
        stream=True,
        stream_options={"include_obfuscation": False, **({"include_usage": True} if usage else {})},
    )
    chunks = list(raw.parse())
    sent = running.fakes["openai"].state.requests[-1]["json"]
    assert sent["stream_options"] == {"include_usage": True, "include_obfuscation": False}
    assert "x-gateway-dropped-params" not in raw.headers
    assert [chunk.choices for chunk in chunks if chunk.usage is not None] == ([[]] if usage else [])
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == TEXT


def test_tools_round_trip_stream_and_not(running: Running, key: str) -> None:
    oa = client(running, key)
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    completion = oa.chat.completions.create(
        model="tools-model", messages=messages, tools=[WEATHER_TOOL], tool_choice="required"
    )
    call = completion.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and call.function.arguments == '{"city":"Paris"}'
    assert completion.choices[0].finish_reason == "tool_calls"
    chunks = list(
        oa.chat.completions.create(
            model="tools-model", messages=messages, tools=[WEATHER_TOOL], tool_choice="required", stream=True
        )
    )
    args = "".join(
        tc.function.arguments or ""
        for c in chunks
        if c.choices
        for tc in c.choices[0].delta.tool_calls or []
        if tc.function
    )
    assert args == '{"city":"Paris"}'


def test_embeddings(running: Running, key: str) -> None:
    result = client(running, key).embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert [d.index for d in result.data] == [0, 1] and result.data[0].embedding == [0.1, 0.2, 0.3]


def test_embeddings_of_token_ids_count_an_id_a_token_on_the_keys_tpm(running: Running) -> None:
    """Token ids (LangChain's `OpenAIEmbeddings` sends them) were counted by their digits: 5,000 ids of five digits as
    25,000 tokens, refused 429 on a tpm of 20,000 ("it needs about 25000"), and four lists of 1,000 as about 28,000
    (their repr). OpenAI bills them 5,000 and 4,000; so are they counted now, one input or a batch of them."""
    fresh_minute()  # (the remaining tokens are the minute's: a minute turning between two requests starts afresh)
    oa = client(running, running.mint(name="ids", tpm=20_000))
    single = oa.embeddings.with_raw_response.create(model="text-embedding-3-small", input=[15339] * 5_000)
    assert len(single.parse().data) == 1 and single.parse().usage.prompt_tokens == 5_000
    assert single.headers["x-ratelimit-remaining-tokens"] == "15000"
    oa = client(running, running.mint(name="batch", tpm=20_000))
    batch = oa.embeddings.with_raw_response.create(model="text-embedding-3-small", input=[[15339] * 1_000] * 4)
    assert len(batch.parse().data) == 4 and batch.parse().usage.prompt_tokens == 4_000
    assert batch.headers["x-ratelimit-remaining-tokens"] == "16000"


def test_models_lists_what_the_key_may_use(running: Running, mint) -> None:  # type: ignore[no-untyped-def]
    narrow = mint(models=["gpt-*"])
    ids = {m.id for m in client(running, narrow).models.list()}
    assert "gpt-4o-mini" in ids and "tools-model" not in ids


def test_errors_have_openai_shape(running: Running, key: str) -> None:
    oa = client(running, key)
    with pytest.raises(openai.AuthenticationError) as bad_key:
        client(running, "gwk_aaaaaaaaaaaa_" + "x" * 43).models.list()
    assert bad_key.value.code == "invalid_api_key"
    with pytest.raises(openai.NotFoundError) as unknown:
        oa.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert unknown.value.code == "model_not_found"
    with pytest.raises(openai.InternalServerError) as unconfigured:
        oa.chat.completions.create(model="unconfigured", messages=[{"role": "user", "content": "x"}])
    assert unconfigured.value.status_code == 503 and unconfigured.value.code == "provider_not_configured"
    assert "NOKEY_API_KEY" in unconfigured.value.message


def test_malformed_and_oversized_bodies(running: Running, key: str) -> None:
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    url = f"{running.url}/v1/chat/completions"
    bad = httpx.post(url, content=b"{not json", headers=headers)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"
    wrong_type = httpx.post(url, json={"model": "gpt-4o-mini", "messages": "hi"}, headers=headers)
    assert wrong_type.status_code == 400 and wrong_type.json()["error"]["param"] == "messages"
    huge = httpx.post(url, content=b"x" * (9 * 1024 * 1024), headers=headers)
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "request_too_large"


def test_stream_options_need_a_stream(running: Running, key: str) -> None:
    """OpenAI refuses `stream_options` on a request that does not stream; the gateway took it, and dropped it."""
    headers = {"authorization": f"Bearer {key}"}
    url = f"{running.url}/v1/chat/completions"
    body: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
    for stream in ({}, {"stream": False}, {"stream": None}):
        refused = httpx.post(url, json={**body, **stream, "stream_options": {"include_usage": True}}, headers=headers)
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert (error["type"], error["param"], error["code"]) == (
            "invalid_request_error",
            "stream_options",
            "invalid_request",
        )
        assert error["message"] == "The 'stream_options' parameter is only allowed when 'stream' is enabled."
    assert httpx.post(url, json={**body, "stream_options": None}, headers=headers).status_code == 200  # as OpenAI


def test_a_stop_list_goes_whole_or_is_refused_as_the_provider_refuses_it(running: Running, key: str) -> None:
    """Five stop sequences to an OpenAI model were cut to four (named in `x-gateway-dropped-params`), where OpenAI
    answers a 400: the answer could run on past the fifth. Refused as OpenAI refuses them, nothing sent; four go
    whole, and a provider that takes more (Anthropic) gets all five."""
    headers = {"authorization": f"Bearer {key}"}
    url = f"{running.url}/v1/chat/completions"
    five = ["a", "b", "c", "d", "e"]
    hi = [{"role": "user", "content": "x"}]
    sent_to_openai = running.fakes["openai"].state.requests
    before = len(sent_to_openai)
    refused = httpx.post(url, json={"model": "gpt-4o-mini", "messages": hi, "stop": five}, headers=headers)
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", "stop")
    assert "maximum length 4, but got an array with length 5" in error["message"]
    assert len(sent_to_openai) == before
    four = httpx.post(url, json={"model": "gpt-4o-mini", "messages": hi, "stop": five[:4]}, headers=headers)
    assert four.status_code == 200 and "x-gateway-dropped-params" not in four.headers
    assert sent_to_openai[-1]["json"]["stop"] == five[:4]
    honoured = httpx.post(url, json={"model": "claude-haiku-4-5", "messages": hi, "stop": five}, headers=headers)
    assert honoured.status_code == 200 and "x-gateway-dropped-params" not in honoured.headers
    assert running.fakes["anthropic"].state.requests[-1]["json"]["stop_sequences"] == five


def test_an_earlier_turns_reasoning_details_go_only_to_a_provider_that_takes_them(running: Running, key: str) -> None:
    """An assistant turn's `reasoning_details` (OpenRouter's field; it may hold `reasoning.encrypted` blobs) went to
    OpenAI's and DeepSeek's Chat Completions as the client sent it, and nothing named it: both refuse a message field
    they do not define (OpenAI: 400 "Unknown parameter: 'messages[1].reasoning_details'."), so the turn failed. It is
    left out there and named."""
    details = [
        {"type": "reasoning.encrypted", "data": "gAAAAABopaque==", "id": "rs_1", "format": "openai-responses-v1"}
    ]
    turns = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello", "reasoning_details": details},
        {"role": "user", "content": "Again"},
    ]
    sent = running.fakes["openai"].state.requests
    for model in ("gpt-4o-mini", "deepseek-chat"):
        raw = httpx.post(
            f"{running.url}/v1/chat/completions",
            json={"model": model, "messages": turns},
            headers={"authorization": f"Bearer {key}"},
        )
        assert raw.status_code == 200, raw.text
        assert raw.headers["x-gateway-dropped-params"] == "messages.reasoning_details"
        assert [m.get("reasoning_details") for m in sent[-1]["json"]["messages"]] == [None, None, None]


def test_a_strict_json_schema_to_deepseek_is_named_and_refused_under_strict(running: Running, key: str) -> None:
    """DeepSeek takes only JSON mode: a `json_schema` format goes as `json_object` with the schema in a system
    instruction, which holds the answer to JSON but not to the schema. A `strict: true` format was served so with
    nothing named, even under `x-gateway-strict`; `strict` is now named, and such a request refused under it."""
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    fmt: Any = {"type": "json_schema", "json_schema": {"name": "place", "schema": schema, "strict": True}}
    sent_to_deepseek = running.fakes["openai"].state.requests
    raw = client(running, key).chat.completions.with_raw_response.create(
        model="deepseek-chat", messages=[{"role": "user", "content": "x"}], response_format=fmt
    )
    assert raw.parse().choices[0].message.content == '{"city":"Paris"}'
    assert raw.headers["x-gateway-dropped-params"] == "response_format.json_schema.strict"
    body = sent_to_deepseek[-1]["json"]
    assert body["response_format"] == {"type": "json_object"} and '"city"' in body["messages"][0]["content"]
    before = len(sent_to_deepseek)
    with pytest.raises(openai.BadRequestError) as refused:
        client(running, key).chat.completions.create(
            model="deepseek-chat",
            messages=[{"role": "user", "content": "x"}],
            response_format=fmt,
            extra_headers={"x-gateway-strict": "true"},
        )
    assert refused.value.param == "response_format.json_schema.strict"
    assert len(sent_to_deepseek) == before
    loose: Any = {"type": "json_schema", "json_schema": {"name": "place", "schema": schema}}
    raw = client(running, key).chat.completions.with_raw_response.create(
        model="deepseek-chat", messages=[{"role": "user", "content": "x"}], response_format=loose
    )
    assert raw.parse().choices[0].message.content == '{"city":"Paris"}'
    assert "x-gateway-dropped-params" not in raw.headers


def test_deepseeks_thinking_mode_is_never_sent_what_it_refuses_on_any_api(running: Running, key: str) -> None:
    """DeepSeek's thinking mode refuses `logprobs` and `top_logprobs` (its 400), and takes the sampling and penalties
    without effect. A Chat client asking deepseek-chat to think with `logprobs` was sent them and got DeepSeek's 400
    (a 502); it gets its answer, the two named (a 400 naming them under `x-gateway-strict`, nothing sent). A Messages
    client's thinking turns the mode on too: its `temperature` is named, as the reasoner's always was. A Responses
    client's `top_logprobs` was never sent (the translation names it). Found by review."""
    sent = running.fakes["openai"].state.requests
    headers = {"authorization": f"Bearer {key}"}
    thinking = {"model": "deepseek-chat", "thinking": {"type": "enabled"}}
    chat = {**thinking, "messages": [{"role": "user", "content": "Hi"}], "logprobs": True, "top_logprobs": 3}
    answer = httpx.post(f"{running.url}/v1/chat/completions", json=chat, headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-gateway-dropped-params"] == "logprobs,top_logprobs"
    assert sent[-1]["json"]["thinking"] == {"type": "enabled"} and "logprobs" not in sent[-1]["json"]
    before = len(sent)
    strict = httpx.post(
        f"{running.url}/v1/chat/completions", json=chat, headers={**headers, "x-gateway-strict": "true"}
    )
    assert strict.status_code == 400 and strict.json()["error"]["param"] == "logprobs"
    assert len(sent) == before
    messages = {**thinking, "max_tokens": 2048, "temperature": 0.5, "messages": [{"role": "user", "content": "Hi"}]}
    messages["thinking"] = {"type": "enabled", "budget_tokens": 1024}
    answer = httpx.post(f"{running.url}/v1/messages", json=messages, headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-gateway-dropped-params"] == "temperature" and "temperature" not in sent[-1]["json"]
    responses = {"model": "deepseek-chat", "input": "Hi", "top_logprobs": 3}
    answer = httpx.post(f"{running.url}/v1/responses", json=responses, headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-gateway-dropped-params"] == "top_logprobs" and "top_logprobs" not in sent[-1]["json"]


def test_deepseeks_current_models_think_unless_turned_off(running: Running, key: str) -> None:
    """`deepseek-v4-pro` thinks by default ("Thinking mode is enabled by default", DeepSeek's guide): a Chat client's
    `logprobs` and `temperature` were sent to it as to a model outside thinking mode, and DeepSeek refused the
    request (its 400, the client's: review). Now it gets its answer, the three named; turned off, the model is sent
    them all."""
    sent = running.fakes["openai"].state.requests
    headers = {"authorization": f"Bearer {key}"}
    chat = {"model": "deepseek-v4-pro", "messages": [{"role": "user", "content": "Hi"}], "temperature": 0.2}
    chat |= {"logprobs": True, "top_logprobs": 3}
    answer = httpx.post(f"{running.url}/v1/chat/completions", json=chat, headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-gateway-dropped-params"] == "temperature,logprobs,top_logprobs"
    assert sent[-1]["json"].keys().isdisjoint({"temperature", "logprobs", "top_logprobs", "thinking"})
    off = {**chat, "thinking": {"type": "disabled"}}
    answer = httpx.post(f"{running.url}/v1/chat/completions", json=off, headers=headers)
    assert answer.status_code == 200, answer.text
    assert "x-gateway-dropped-params" not in answer.headers
    assert sent[-1]["json"]["thinking"] == {"type": "disabled"} and sent[-1]["json"]["top_logprobs"] == 3


def test_deepseek_is_sent_the_reasoning_effort_it_takes(running: Running, key: str) -> None:
    """DeepSeek's thinking mode takes `reasoning_effort` ("Thinking Effort Control: {"reasoning_effort":
    "low/high/max"}", its guide) and the gateway sends it on; the fake refused it with OpenAI's 400 for a model without
    reasoning, so an agent asking DeepSeek for an effort failed against the fake alone (found by review)."""
    sent = running.fakes["openai"].state.requests
    chat = {"model": "deepseek-v4-pro", "messages": [{"role": "user", "content": "Hi"}], "reasoning_effort": "high"}
    answer = httpx.post(f"{running.url}/v1/chat/completions", json=chat, headers={"authorization": f"Bearer {key}"})
    assert answer.status_code == 200, answer.text
    assert "x-gateway-dropped-params" not in answer.headers and sent[-1]["json"]["reasoning_effort"] == "high"


DEEPSEEK_CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
BARE_TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


def test_the_fakes_deepseek_thinks_by_default_and_wants_a_tool_turns_reasoning_back() -> None:
    """DeepSeek's thinking mode (on by default for `deepseek-v4-*`) answers with `reasoning_content`, and refuses a
    request whose earlier tool-calling turn came back without it ("The reasoning_content in the thinking mode must be
    passed back to the API"). The fake did neither for `deepseek-v4-pro`, so a gateway path losing a DeepSeek tool
    turn's reasoning would have passed every test (review provrev)."""
    url, headers = "/v1/chat/completions", {"authorization": f"Bearer {fake.API_KEY}"}
    deepseek = TestClient(fake.create_app())
    hi = {"model": "deepseek-v4-pro", "messages": [{"role": "user", "content": "Hi"}]}
    answer = deepseek.post(url, json=hi, headers=headers)
    assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["reasoning_content"] == fake.REASONING
    off = deepseek.post(url, json={**hi, "thinking": {"type": "disabled"}}, headers=headers)
    assert "reasoning_content" not in off.json()["choices"][0]["message"]
    turns: Any = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [DEEPSEEK_CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    lost = deepseek.post(url, json={**hi, "messages": turns, "tools": BARE_TOOLS}, headers=headers)
    assert lost.status_code == 400 and lost.json()["error"]["message"] == fake.LOST_REASONING
    turns[1]["reasoning_content"] = fake.REASONING
    kept = deepseek.post(url, json={**hi, "messages": turns, "tools": BARE_TOOLS}, headers=headers)
    assert kept.status_code == 200, kept.text


def test_a_deepseek_tool_turns_reasoning_goes_back_to_it(running: Running, key: str) -> None:
    """The gateway hands a thinking DeepSeek's reasoning to a Chat client and sends it back with the tool turn, which
    the fake now checks as DeepSeek does."""
    oa = client(running, key)
    asked: Any = [{"role": "user", "content": 'CALL get_weather {"city": "Oslo"}'}]
    first = oa.chat.completions.create(model="deepseek-v4-pro", messages=asked, tools=BARE_TOOLS)
    turn = first.choices[0].message
    assert turn.tool_calls and turn.model_extra and turn.model_extra["reasoning_content"] == fake.REASONING
    result = {"role": "tool", "tool_call_id": turn.tool_calls[0].id, "content": "sunny"}
    second = oa.chat.completions.create(
        model="deepseek-v4-pro", messages=[*asked, turn.model_dump(exclude_none=True), result], tools=BARE_TOOLS
    )
    assert second.choices[0].message.content
    assert running.fakes["openai"].state.requests[-1]["json"]["messages"][1]["reasoning_content"] == fake.REASONING


@pytest.mark.parametrize("thinking", [None, {"type": "disabled"}])
def test_a_tool_turn_another_model_made_goes_to_a_thinking_deepseek_with_an_empty_reasoning(
    running: Running, key: str, thinking: Any
) -> None:
    """A conversation that moves to DeepSeek mid-task (an agent's `/model`) brings tool-calling turns another model
    made, with no `reasoning_content`: DeepSeek's thinking mode refused them (its 400, the client's), and takes them
    with the field empty. Outside thinking mode the turn goes as it came."""
    turns: Any = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [DEEPSEEK_CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    chat = {"model": "deepseek-v4-pro", "messages": turns, "tools": BARE_TOOLS}
    if thinking is not None:
        chat["thinking"] = thinking
    answer = httpx.post(f"{running.url}/v1/chat/completions", json=chat, headers={"authorization": f"Bearer {key}"})
    assert answer.status_code == 200, answer.text
    assistant = running.fakes["openai"].state.requests[-1]["json"]["messages"][1]
    assert assistant.get("reasoning_content") == ("" if thinking is None else None)


def test_upstream_failures_fail_over_or_map(running: Running, key: str) -> None:
    oa = client(running, key)
    raw = oa.chat.completions.with_raw_response.create(model="flaky", messages=[{"role": "user", "content": "x"}])
    assert raw.headers["x-gateway-route"] == "openai/fail-500@global=500, openai/gpt-4o-mini@global=200"
    with pytest.raises(openai.BadRequestError) as rejected:
        oa.chat.completions.create(model="rejects", messages=[{"role": "user", "content": "x"}])
    assert "Invalid value" in rejected.value.message
    with pytest.raises(openai.APIStatusError) as broken:
        oa.chat.completions.create(
            model="broken", messages=[{"role": "user", "content": "x"}], extra_headers={"x-gateway-fallbacks": "none"}
        )
    assert broken.value.status_code == 502
    assert broken.value.body["upstream_status"] == 500  # type: ignore[index]
    assert "test-openai-key" not in str(broken.value.body)
    # Each failure's ledger line has the status its client was answered, as its log line and metrics do (the
    # provider's 500 was written where the client, the log and the metrics had 502); the route keeps the 500.
    lines = running.ledger(key)[-2:]
    assert [(line.status, line.route) for line in lines] == [
        (400, "openai/fail-400@global=400"),
        (502, "openai/fail-500@global=500"),
    ]


def test_a_model_of_the_other_kind_is_named_with_its_article(running: Running, key: str) -> None:
    oa = client(running, key)
    with pytest.raises(openai.BadRequestError) as chat:
        oa.chat.completions.create(model="text-embedding-3-small", messages=[{"role": "user", "content": "x"}])
    assert chat.value.message.endswith("model 'text-embedding-3-small' is an embedding model, not a chat model")
    with pytest.raises(openai.BadRequestError) as embed:
        oa.embeddings.create(model="gpt-4o-mini", input="x")
    assert embed.value.message.endswith("model 'gpt-4o-mini' is a chat model, not an embedding model")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}),
        ("/v1/messages", {"model": "gpt-4o-mini", "max_tokens": 50, "messages": [{"role": "user", "content": "Hi"}]}),
        ("/v1/responses", {"model": "gpt-4o-mini", "input": "Hi"}),
    ],
    ids=["chat", "messages", "responses"],
)
def test_a_stream_refused_before_it_began_is_logged_as_a_stream(
    running: Running, key: str, path: str, body: dict[str, object], capsys: pytest.CaptureFixture[str]
) -> None:
    """A streamed request refused before its first byte (here by its own cost cap) was logged `"stream": false`,
    which put it beside the whole answers in any search of the log lines by stream."""
    answer = httpx.post(
        f"{running.url}{path}",
        json={**body, "stream": True},
        headers={"authorization": f"Bearer {key}", "x-gateway-max-cost-usd": "0.000000001"},
    )
    assert answer.status_code == 402, answer.text
    assert logged(capsys, answer.headers["x-request-id"]) == [(402, True)]
    whole = httpx.post(
        f"{running.url}{path}",
        json=body,
        headers={"authorization": f"Bearer {key}", "x-gateway-max-cost-usd": "0.000000001"},
    )
    assert whole.status_code == 402
    assert logged(capsys, whole.headers["x-request-id"]) == [(402, False)]


def logged(capsys: pytest.CaptureFixture[str], request_id: str) -> list[tuple[int, bool]]:
    """Status and stream flag of each request log line of `request_id` written since the last read."""
    lines = [orjson.loads(line) for line in capsys.readouterr().out.splitlines() if request_id in line]
    return [(line["status"], line["stream"]) for line in lines]


def test_unknown_fields_are_refused_under_strict_and_sent_on_without(running: Running, key: str) -> None:
    """Under `x-gateway-strict` a misspelt `temprature` (and a `bogus_field`) reached OpenAI on each route whose API is
    OpenAI's own (200; OpenAI ignored it and answered at the default temperature): the unknown fields were never
    checked, only those a translation left out. Now each is the client's 400 naming them, with nothing sent; without
    strict they still go on as before."""
    oa = client(running, key)
    unknown: Any = {"bogus_field": 1, "temprature": 0.2}
    strict = {"x-gateway-strict": "true"}
    sent = running.fakes["openai"].state.requests
    calls: list[Any] = [
        lambda **kw: oa.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], **kw),
        lambda **kw: oa.embeddings.create(model="text-embedding-3-small", input="x", **kw),
        lambda **kw: oa.responses.create(model="gpt-4o-mini", input="x", store=False, **kw),
    ]
    for i, call in enumerate(calls):
        before = len(sent)
        with pytest.raises(openai.BadRequestError) as refused:
            call(extra_body=unknown, extra_headers=strict)
        assert refused.value.code == "invalid_request" and refused.value.param == "bogus_field"
        assert "unknown fields: bogus_field, temprature" in refused.value.message
        assert len(sent) == before
        call(extra_body=unknown)
        assert len(sent) == before + 1
        if i < 2:  # (this deployment serves Responses translated: unknown fields are named as dropped)
            assert sent[-1]["json"]["temprature"] == 0.2
    # What the SDK sends of its own passes under strict.
    completion = oa.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "x"}],
        max_completion_tokens=20,
        temperature=0.2,
        seed=1,
        store=False,
        prompt_cache_key="k",
        safety_identifier="u",
        extra_headers=strict,
    )
    assert completion.choices[0].message.content == TEXT


OPENAI_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")  # what OpenAI takes for a function's name


def sent_openai(running: Running) -> dict[str, Any]:
    requests: list[dict[str, Any]] = running.fakes["openai"].state.requests
    return requests[-1]["json"]


def sent_function_names(running: Running) -> list[str]:
    return [tool["function"]["name"] for tool in sent_openai(running)["tools"]]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("name", [MCP_TOOL_NAME, "weather.get"], ids=["long", "dotted"])
def test_a_function_name_openai_refuses_goes_as_an_alias_and_the_call_comes_back_by_the_clients_name(
    running: Running, key: str, name: str, stream: bool
) -> None:
    """OpenAI takes a function's name of at most 64 of `[a-zA-Z0-9_-]`: Claude Code's MCP tools (83 characters here)
    on an OpenAI deployment were its 400 for the whole request. The function and the choice of it now go by an
    alias; the call comes back by the client's name."""
    choice: Any = {"type": "function", "function": {"name": name}}
    settings: Any = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}
    settings |= {"tools": [named_tool(name)], "tool_choice": choice}
    assert called_names(client(running, key), settings, stream) == [name]
    (alias,) = sent_function_names(running)
    assert OPENAI_NAME.fullmatch(alias) and alias != name
    assert sent_openai(running)["tool_choice"] == {"type": "function", "function": {"name": alias}}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_messages_clients_mcp_tool_comes_back_by_its_name_past_openais_limit(
    running: Running, key: str, stream: bool
) -> None:
    use = mcp_tool_use(anthropic_client(running, key), "gpt-4o-mini", stream)
    assert use.type == "tool_use" and use.name == MCP_TOOL_NAME and use.input == {"city": "Paris"}
    assert OPENAI_NAME.fullmatch(sent_function_names(running)[0])


def test_a_responses_clients_long_function_name_comes_back_as_its_own_from_openai(running: Running, key: str) -> None:
    """A Responses request translated to Chat Completions (the fake is no api.openai.com)."""
    assert responses_function_calls(running.url, key, "gpt-4o-mini") == [MCP_TOOL_NAME]
    assert OPENAI_NAME.fullmatch(sent_function_names(running)[0])


def test_a_call_of_a_long_named_function_in_the_history_goes_to_openai_by_its_alias(running: Running, key: str) -> None:
    history: Any = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": None, "tool_calls": [named_call(MCP_TOOL_NAME)]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C and clear"},
    ]
    oa = client(running, key)
    assert oa.chat.completions.create(model="gpt-4o-mini", messages=history, tools=[named_tool(MCP_TOOL_NAME)])
    (alias,) = sent_function_names(running)
    assert sent_openai(running)["messages"][1]["tool_calls"][0]["function"]["name"] == alias


def test_a_call_of_a_long_named_function_no_longer_offered_goes_to_openai_by_its_alias(
    running: Running, key: str
) -> None:
    """Every offered tool's name OpenAI takes: the names were left as they were, and the history's call of a tool
    no longer offered went by the client's 83 characters (review); it goes by its alias, as Bedrock's and Gemini's
    histories do."""
    history: Any = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": None, "tool_calls": [named_call(MCP_TOOL_NAME)]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C and clear"},
    ]
    oa = client(running, key)
    assert oa.chat.completions.create(model="gpt-4o-mini", messages=history, tools=[named_tool("get_weather")])
    assert sent_function_names(running) == ["get_weather"]
    assert OPENAI_NAME.fullmatch(sent_openai(running)["messages"][1]["tool_calls"][0]["function"]["name"])


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_an_allowed_tools_choice_names_a_function_openai_refuses_by_its_alias(
    running: Running, key: str, stream: bool
) -> None:
    """A `tool_choice` of type `allowed_tools` (the tools the model may call, the rest still offered) was the
    gateway's 400 ("Input should be 'none', 'auto' or 'required'"), and its list, had it gone on, would have named
    the client's 83 characters where the tools name the alias: OpenAI's 400. It goes as OpenAI takes it, the list
    by the alias of each name OpenAI refuses; the call comes back by the client's name."""
    settings: Any = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}
    settings |= {
        "tools": [WEATHER_TOOL, named_tool(MCP_TOOL_NAME)],
        "tool_choice": allowed_tools("required", MCP_TOOL_NAME),
    }
    assert called_names(client(running, key), settings, stream) == [MCP_TOOL_NAME]
    weather, alias = sent_function_names(running)
    assert weather == "get_weather" and OPENAI_NAME.fullmatch(alias) and alias != MCP_TOOL_NAME
    assert sent_openai(running)["tool_choice"] == allowed_tools("required", alias)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_an_allowed_tools_choice_goes_to_a_server_without_a_profile_as_the_tools_it_allows_alone(
    running: Running, key: str, stream: bool
) -> None:
    """A `tool_choice` of type `allowed_tools` went as it came to an OpenAI-compatible server the gateway has no
    profile for, and vLLM refused it (400, its request model takes none, auto, required or a named function). It
    goes as Mistral and DeepSeek are sent it: the tools it allows alone, with its mode; the model calls one of them."""
    settings: Any = {"model": "vllm-llama", "messages": [{"role": "user", "content": "Hi"}]}
    settings |= {"tools": [WEATHER_TOOL, named_tool("lookup")], "tool_choice": allowed_tools("required", "lookup")}
    assert called_names(client(running, key), settings, stream) == ["lookup"]
    sent = sent_openai(running)
    assert sent["model"] == "vllm-llama" and sent["tool_choice"] == "required"
    assert sent_function_names(running) == ["lookup"]
