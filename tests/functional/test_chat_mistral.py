"""The official openai and anthropic SDKs against the gateway, with a fake Mistral API behind it: reasoning answers
(Magistral's, Mistral Small 4's) whose `content` is a list of thinking and text chunks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest

from adapters.providers.registry import REGISTRY
from handler.config import parse_config
from tests.fakes import mistral as fake
from tests.functional.conftest import Running, anthropic_client, serve_gateway
from tests.support.servers import ServerThread
from tests.support.tools import MCP_TOOL_NAME, WEATHER_TOOL, named_call, named_tool

PRICE = {"input": 1, "output": 2}
HI: Any = [{"role": "user", "content": "Hi"}]
CALL_WEATHER: Any = [{"role": "user", "content": 'CALL get_weather {"city":"Oslo"}'}]


@pytest.fixture(scope="module")
def mistral(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """A gateway whose only provider is Mistral, in front of the fake Mistral API."""
    app = fake.create_app()
    upstream = ServerThread(app).start()
    data = {
        "gateway": {"timeouts": {"connect": 2, "first_byte": 1.5, "between_chunks": 1.5}},
        "providers": {
            "mistral": {"type": "mistral", "api_key": "env:MISTRAL_API_KEY", "base_url": f"{upstream.url}/v1"},
            # A strict OpenAI-compatible server (Mistral's API, taken for a generic one): it refuses `stream_options`.
            "strict": {"type": "openai", "api_key": "env:MISTRAL_API_KEY", "base_url": f"{upstream.url}/v1"},
            "strict-told": {
                "type": "openai",
                "api_key": "env:MISTRAL_API_KEY",
                "base_url": f"{upstream.url}/v1",
                "stream_usage": False,
            },
        },
        "models": {
            "magistral": {"deployments": [{"provider": "mistral", "model": "magistral-medium-latest"}], "price": PRICE},
            "small": {"deployments": [{"provider": "mistral", "model": "mistral-small-latest"}], "price": PRICE},
            "strict": {"deployments": [{"provider": "strict", "model": "mistral-large-latest"}], "price": PRICE},
            "strict-told": {
                "deployments": [{"provider": "strict-told", "model": "mistral-large-latest"}],
                "price": PRICE,
            },
            "embed": {
                "kind": "embedding",
                "deployments": [{"provider": "mistral", "model": "mistral-embed"}],
                "price": {"input": 0.1},
            },
        },
    }
    store_url = f"sqlite:///{Path(tmp_path_factory.mktemp('mistral-store')) / 'gateway.db'}"
    config = parse_config(data, set(REGISTRY))
    running, server = serve_gateway(config, store_url, upstream, {"mistral": app}, {"MISTRAL_API_KEY": fake.API_KEY})
    yield running
    server.stop()
    upstream.stop()


@pytest.fixture
def client(mistral: Running) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{mistral.url}/v1", api_key=mistral.mint(name="mistral"), max_retries=0) as sdk:
        yield sdk


def sent(running: Running) -> dict[str, Any]:
    requests: list[dict[str, Any]] = running.fakes["mistral"].state.requests
    return requests[-1]


def test_a_magistral_answer_reads_as_text_and_reasoning(client: openai.OpenAI) -> None:
    """Magistral's `content` is a list of chunks: every call was a 502. Chat Completions clients get the text as
    `content` and the thinking as `reasoning_content`, streamed or not, as from other reasoning providers."""
    message = client.chat.completions.create(model="magistral", messages=HI).choices[0].message
    assert message.content == fake.TEXT
    assert (message.model_extra or {})["reasoning_content"] == fake.THINKING

    chunks = list(
        client.chat.completions.create(
            model="magistral", messages=HI, stream=True, stream_options={"include_usage": True}
        )
    )
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(d.content or "" for d in deltas) == fake.TEXT
    assert "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas) == fake.THINKING
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 28


def test_reasoning_beside_a_tool_call(client: openai.OpenAI) -> None:
    """Each call has an id of its own, as Mistral gives them: the fake gave every call one fixed id, which made Claude
    Code, continuing a session, drop a new call as one already answered and ask again (found by review)."""
    ids: list[str | None] = []
    for stream in (False, True):
        if stream:
            chunks = list(
                client.chat.completions.create(
                    model="magistral", messages=CALL_WEATHER, tools=[WEATHER_TOOL], stream=True
                )
            )
            calls = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or []]
            assert len(calls) == 1 and fake.TOOL_ID.match(str(calls[0].id))
            ids.append(calls[0].id)
            finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
            assert finish == ["tool_calls"]
        else:
            answer = client.chat.completions.create(model="magistral", messages=CALL_WEATHER, tools=[WEATHER_TOOL])
            message = answer.choices[0].message
            assert message.tool_calls is not None and fake.TOOL_ID.match(message.tool_calls[0].id)
            assert not message.content and (message.model_extra or {})["reasoning_content"] == fake.THINKING
            ids.append(message.tool_calls[0].id)
    assert len(set(ids)) == 2


def test_mistral_small_reasons_when_asked(mistral: Running, client: openai.OpenAI) -> None:
    """Mistral Small 4 takes `reasoning_effort` (`high` or `none`); the profile dropped it for every Mistral model."""
    raw = client.chat.completions.with_raw_response.create(model="small", messages=HI, reasoning_effort="medium")
    message = raw.parse().choices[0].message
    assert "x-gateway-dropped-params" not in raw.headers and sent(mistral)["json"]["reasoning_effort"] == "high"
    assert message.content == fake.TEXT and (message.model_extra or {})["reasoning_content"] == fake.THINKING
    plain = client.chat.completions.create(model="small", messages=HI, reasoning_effort="none").choices[0].message
    assert plain.content == fake.TEXT and not (plain.model_extra or {}).get("reasoning_content")


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_messages_client_gets_a_thinking_block_and_the_text(mistral: Running, stream: bool) -> None:
    """Through Anthropic's Messages API, Magistral's reasoning is a `thinking` block before the text."""
    claude = anthropic_client(mistral, mistral.mint(name=f"mistral-messages-{stream}"))
    asked: Any = {"model": "magistral", "max_tokens": 200, "messages": HI}
    if stream:
        with claude.messages.stream(**asked) as events:
            message = events.get_final_message()
    else:
        message = claude.messages.create(**asked)
    kinds = [block.type for block in message.content]
    assert kinds == ["thinking", "text"]
    assert message.content[0].thinking == fake.THINKING  # type: ignore[union-attr]
    assert message.content[1].text == fake.TEXT  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"


PREFILL = "Ahoy there,"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_messages_prefill_is_continued_and_not_repeated(mistral: Running, stream: bool) -> None:
    """A Messages client's final assistant turn (a prefill: Claude's answer continues it) reached Mistral without
    `prefix: true`, and Mistral refused the request: 400, "Expected last role User or Tool (or Assistant with prefix
    True)" (found by review). It goes as Mistral's prefix now; Mistral's answer repeats it at its start, and the
    client gets the continuation alone, as from Claude, whole and streamed (the prefix there across two deltas)."""
    claude = anthropic_client(mistral, mistral.mint(name=f"mistral-prefill-{stream}"))
    asked: Any = {
        "model": "small",
        "max_tokens": 200,
        "messages": [*HI, {"role": "assistant", "content": PREFILL}],
    }
    if stream:
        with claude.messages.with_streaming_response.create(**asked, stream=True) as raw:
            headers = raw.headers
            events = [line for line in raw.iter_lines() if line.startswith("data: ")]
        texts = [orjson.loads(line[6:])["delta"].get("text") for line in events if "text_delta" in line]
        assert "".join(texts) == fake.TEXT  # (how it is cut into deltas is the gateway's: redaction may hold some)
    else:
        raw_whole = claude.messages.with_raw_response.create(**asked)
        headers, message = raw_whole.headers, raw_whole.parse()
        assert [block.type for block in message.content] == ["text"]
        assert message.content[0].text == fake.TEXT  # type: ignore[union-attr]
    assert "x-gateway-dropped-params" not in headers
    assert sent(mistral)["json"]["messages"][-1] == {"role": "assistant", "content": PREFILL, "prefix": True}


def test_a_chat_clients_own_prefix_is_its_business(mistral: Running, client: openai.OpenAI) -> None:
    """A Chat Completions client's `prefix: true` goes as it sent it, and Mistral's answer comes as Mistral wrote it,
    the prefix repeated: the gateway changes nothing of that API's meaning."""
    last: Any = {"role": "assistant", "content": PREFILL, "prefix": True}
    answer = client.chat.completions.create(model="small", messages=[*HI, last])
    assert answer.choices[0].message.content == PREFILL + fake.TEXT
    assert sent(mistral)["json"]["messages"][-1] == last


def test_a_responses_client_gets_a_reasoning_item_and_the_text(client: openai.OpenAI) -> None:
    """Through the Responses API, streamed or not, Magistral's reasoning is a reasoning item before the message."""
    response = client.responses.create(model="magistral", input="Hi")
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert response.output_text == fake.TEXT
    with client.responses.stream(model="magistral", input="Hi") as events:
        final = events.get_final_response()
    assert [item.type for item in final.output] == ["reasoning", "message"] and final.output_text == fake.TEXT


def sent_back(mistral: Running) -> Any:
    """The assistant turn the last request to Mistral carried back."""
    return next(m for m in sent(mistral)["json"]["messages"] if m["role"] == "assistant")


THOUGHT_BACK = [
    {"type": "thinking", "thinking": [{"type": "text", "text": fake.THINKING}]},
    {"type": "text", "text": fake.TEXT},
]


@pytest.mark.parametrize("api", ["chat", "messages", "responses"])
def test_magistrals_reasoning_goes_back_to_it_on_the_next_turn(mistral: Running, api: str) -> None:
    """The reasoning Magistral gave on a turn, handed back as the client's API carries it (`reasoning_content`, a
    thinking block, a reasoning item), was left out of the next request: Mistral got the text alone. It goes back
    as Mistral documents, a `thinking` chunk before the turn's text."""
    key = mistral.mint(name=f"magistral-back-{api}")
    again = "And again?"
    if api == "chat":
        with openai.OpenAI(base_url=f"{mistral.url}/v1", api_key=key, max_retries=0) as sdk:
            first = sdk.chat.completions.create(model="magistral", messages=HI).choices[0].message
            turn: Any = first.model_dump(exclude_none=True)
            raw = sdk.chat.completions.with_raw_response.create(
                model="magistral", messages=[*HI, turn, {"role": "user", "content": again}]
            )
    elif api == "messages":
        claude = anthropic_client(mistral, key)
        message = claude.messages.create(model="magistral", max_tokens=200, messages=HI)
        blocks: Any = [block.model_dump(exclude_none=True) for block in message.content]
        raw = claude.messages.with_raw_response.create(
            model="magistral",
            max_tokens=200,
            messages=[*HI, {"role": "assistant", "content": blocks}, {"role": "user", "content": again}],
        )
    else:
        with openai.OpenAI(base_url=f"{mistral.url}/v1", api_key=key, max_retries=0) as sdk:
            response = sdk.responses.create(model="magistral", input="Hi", store=False)
            items: Any = [item.model_dump(exclude_none=True) for item in response.output]
            raw = sdk.responses.with_raw_response.create(
                model="magistral", input=[{"role": "user", "content": "Hi"}, *items, {"role": "user", "content": again}]
            )
    assert sent_back(mistral)["content"] == THOUGHT_BACK
    assert "reasoning_content" not in sent_back(mistral) and "x-gateway-dropped-params" not in raw.headers


def test_embeddings_reach_mistral_in_its_own_names(mistral: Running, client: openai.OpenAI) -> None:
    """Mistral's embeddings got OpenAI's body untranslated: `dimensions` (Mistral's `output_dimension`) and `user`
    were refused (422 `extra_forbidden`), so any client that set either failed. Now `dimensions` is sent as
    `output_dimension`, `user` is dropped and named, and the SDK's `base64` answer reads as the floats."""
    raw = client.embeddings.with_raw_response.create(model="embed", input=["a b", "c"], dimensions=4, user="u1")
    result = raw.parse()
    body = sent(mistral)["json"]
    assert sent(mistral)["path"] == "/v1/embeddings"
    assert body == {"model": "mistral-embed", "input": ["a b", "c"], "output_dimension": 4, "encoding_format": "base64"}
    assert raw.headers["x-gateway-dropped-params"] == "user"
    assert [d.index for d in result.data] == [0, 1] and result.data[1].embedding == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert result.usage.prompt_tokens == 5  # (the fake's count: a token a word, and one)
    plain = client.embeddings.create(model="embed", input="hi", encoding_format="float")
    assert plain.data[0].embedding == [0.1, 0.2, 0.3] and sent(mistral)["json"]["encoding_format"] == "float"
    # Mistral's own fields, sent as written, are known to `x-gateway-strict` too (they were refused: review).
    own: Any = {"output_dtype": "float", "metadata": {"team": "a"}}
    client.embeddings.create(model="embed", input="hi", extra_body=own, extra_headers={"x-gateway-strict": "true"})
    assert sent(mistral)["json"]["output_dtype"] == "float"


def test_token_ids_are_the_clients_400_before_mistral(mistral: Running, client: openai.OpenAI) -> None:
    """Mistral embeds text only: token ids (OpenAI takes them) are refused here, naming `input`, and not sent."""
    before = len(mistral.fakes["mistral"].state.requests)
    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(model="embed", input=[15339, 1917])
    assert refused.value.param == "input" and "token ids" in refused.value.message
    assert len(mistral.fakes["mistral"].state.requests) == before


REFUSED_STREAM_OPTIONS = (
    "body.stream_options: Extra inputs are not permitted (the gateway asks for a stream's usage with `stream_options`, "
    "which this server refuses: set `stream_usage: false` on provider 'strict' in the gateway's configuration)"
)


def test_a_server_that_refuses_stream_options_streams_once_told(mistral: Running) -> None:
    """A server that refuses `stream_options` (Mistral's 422, a strict vLLM's 400) could not stream through any API:
    the gateway always asked for the usage. Its refusal, Mistral's object of problems, reached the client as a
    Python repr (`{'detail': [{'type': 'extra_forbidden', ...`). It reads as words now, naming the provider option
    that leaves `stream_options` out; with `stream_usage: false` every API streams (Mistral sends the usage unasked,
    so the line is the provider's)."""
    key = mistral.mint(name="strict")
    with openai.OpenAI(base_url=f"{mistral.url}/v1", api_key=key, max_retries=0) as sdk:
        with pytest.raises(openai.BadRequestError) as refused:
            list(sdk.chat.completions.create(model="strict", messages=HI, stream=True))
        assert refused.value.body["message"] == REFUSED_STREAM_OPTIONS  # type: ignore[index]
        assert "stream_options" in sent(mistral)["json"]
        chunks = list(sdk.chat.completions.create(model="strict-told", messages=HI, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == fake.TEXT
        assert "stream_options" not in sent(mistral)["json"]
        with sdk.responses.stream(model="strict-told", input="Hi") as events:
            assert events.get_final_response().output_text == fake.TEXT
    with anthropic_client(mistral, key).messages.stream(model="strict-told", max_tokens=50, messages=HI) as events:
        assert events.get_final_message().content[0].text == fake.TEXT  # type: ignore[union-attr]
    with pytest.raises(anthropic.BadRequestError) as messages_refused:
        anthropic_client(mistral, key).messages.create(model="strict", max_tokens=50, messages=HI, stream=True)
    assert messages_refused.value.body["error"]["message"] == REFUSED_STREAM_OPTIONS  # type: ignore[index]
    lines = [(line.model, line.status, line.cost_source) for line in mistral.ledger(key)]
    assert lines == [("strict", 400, "provider"), *[("strict-told", 200, "provider")] * 3, ("strict", 400, "provider")]


def test_a_tool_result_named_by_a_long_tool_name_goes_by_its_alias(mistral: Running, client: openai.OpenAI) -> None:
    """Mistral keeps a tool result's `name`: the call and the tool went to it by their alias, the result by the
    client's 83 characters (review). The result goes by the same alias."""
    history: Any = [
        *HI,
        {"role": "assistant", "content": None, "tool_calls": [named_call(MCP_TOOL_NAME)]},
        {"role": "tool", "tool_call_id": "call_1", "name": MCP_TOOL_NAME, "content": "18 C and clear"},
    ]
    assert client.chat.completions.create(model="small", messages=history, tools=[named_tool(MCP_TOOL_NAME)])
    body = sent(mistral)["json"]
    alias = body["tools"][0]["function"]["name"]
    assert alias != MCP_TOOL_NAME
    assert body["messages"][1]["tool_calls"][0]["function"]["name"] == body["messages"][2]["name"] == alias


DOT = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="


def roles(running: Running) -> list[str]:
    return [message["role"] for message in sent(running)["json"]["messages"]]


def test_a_messages_tool_result_turn_with_text_reaches_mistral_in_an_order_it_takes(mistral: Running) -> None:
    """Claude Code adds text beside its tool results on most turns: translated, a user message right after the tool
    message, which Mistral refuses ("Unexpected role 'user' after role 'tool'"): every later request of the
    conversation failed (review provrev). A short assistant message goes between; the text and the result reach the
    model whole, nothing named. An image a tool returned, which was left out (`messages.tool_result.image`), now goes
    in a user message after it too."""
    call = {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {"city": "Oslo"}}
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": DOT}}
    result = {"type": "tool_result", "tool_use_id": "toolu_01A", "content": [{"type": "text", "text": "sunny"}, image]}
    raw = anthropic_client(mistral, mistral.mint(name="tool-then-text")).messages.with_raw_response.create(
        model="small",
        max_tokens=100,
        tools=[{"name": "get_weather", "input_schema": {"type": "object"}}],
        messages=[
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": [call]},
            {"role": "user", "content": [result, {"type": "text", "text": "Answer in one word."}]},
        ],
    )
    assert raw.parse().content and "x-gateway-dropped-params" not in raw.headers
    assert roles(mistral) == ["user", "assistant", "tool", "assistant", "user", "user"]
    messages = sent(mistral)["json"]["messages"]
    assert messages[2]["content"] == [{"type": "text", "text": "sunny"}]
    assert messages[3] == {"role": "assistant", "content": "(tool results received)"}
    assert messages[4]["content"][1] == {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{DOT}"}}
    assert messages[5]["content"] == [{"type": "text", "text": "Answer in one word."}]


def test_a_chat_clients_user_message_after_a_tool_message_reaches_mistral_in_an_order_it_takes(
    mistral: Running, client: openai.OpenAI
) -> None:
    """A Chat client's `[..., tool, user]` went as sent, and Mistral refused it."""
    call = {"id": "abcDEF123", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    messages: Any = [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "abcDEF123", "content": "sunny"},
        {"role": "user", "content": "And tomorrow?"},
    ]
    raw = client.chat.completions.with_raw_response.create(model="small", messages=messages, tools=[WEATHER_TOOL])
    assert raw.parse().choices[0].message.content == fake.TEXT and "x-gateway-dropped-params" not in raw.headers
    assert roles(mistral) == ["user", "assistant", "tool", "assistant", "user"]


def test_the_fake_refuses_a_message_order_mistral_refuses(mistral: Running) -> None:
    """The fake took any order, so the gateway's `tool, user` passed every test: it refuses it as Mistral does."""
    call = {"id": "abcDEF123", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    body = {
        "model": "mistral-small-latest",
        "messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "abcDEF123", "content": "sunny"},
            {"role": "user", "content": "thanks"},
        ],
    }
    headers = {"authorization": f"Bearer {fake.API_KEY}"}
    answer = httpx.post(f"{mistral.upstream.url}/v1/chat/completions", json=body, headers=headers, timeout=10)
    assert answer.status_code == 400
    assert answer.json() == {
        "object": "error",
        "message": "Unexpected role 'user' after role 'tool'",
        "type": "invalid_request_message_order",
        "param": None,
        "code": "3230",
    }
    body["messages"].insert(3, {"role": "assistant", "content": "(tool results received)"})
    assert httpx.post(f"{mistral.upstream.url}/v1/chat/completions", json=body, headers=headers, timeout=10).is_success
