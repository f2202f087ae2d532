"""A tool-only answer from Mistral (or a compatible server that writes `content: ""` beside its calls, as Ollama's)
reached an OpenAI SDK client with `content == ""`, whole and streamed, where OpenAI's has `content: null` (and,
streamed, opens a call with `null`): the SDK's `chat.completions.stream(...)` fired `content.delta` and finished with
`content == ""`. Found by review."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from pydantic import BaseModel

from adapters.providers.registry import REGISTRY
from handler.config import parse_config
from tests.fakes import mistral as fake
from tests.functional.conftest import Running, serve_gateway
from tests.support.scripted import SCRIPTS, chunk, scripted_gateway, usage_chunk, whole
from tests.support.servers import ServerThread


class GetWeather(BaseModel):
    city: str


CALL = [{"role": "user", "content": 'CALL GetWeather {"city":"Oslo"}'}]


@pytest.fixture(scope="module")
def mistral(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    app = fake.create_app()
    upstream = ServerThread(app).start()
    data = {
        "providers": {
            "mistral": {"type": "mistral", "api_key": "env:MISTRAL_API_KEY", "base_url": f"{upstream.url}/v1"}
        },
        "models": {
            "small": {
                "deployments": [{"provider": "mistral", "model": "mistral-small-latest"}],
                "price": {"input": 1, "output": 2},
            }
        },
    }
    store_url = f"sqlite:///{Path(tmp_path_factory.mktemp('mistral-tools')) / 'gateway.db'}"
    running, server = serve_gateway(
        parse_config(data, set(REGISTRY)), store_url, upstream, {"mistral": app}, {"MISTRAL_API_KEY": fake.API_KEY}
    )
    yield running
    server.stop()
    upstream.stop()


@pytest.fixture
def client(mistral: Running) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{mistral.url}/v1", api_key=mistral.mint(name="m"), max_retries=0) as sdk:
        yield sdk


def test_a_whole_tool_only_answer_has_null_content(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model="small",
        messages=CALL,
        tools=[openai.pydantic_function_tool(GetWeather)],  # type: ignore[arg-type]
    )
    message = answer.choices[0].message
    assert message.tool_calls and answer.choices[0].finish_reason == "tool_calls"
    assert message.content is None, f"a tool-only answer's content is {message.content!r}, not null"


def test_the_stream_helper_finishes_a_tool_only_answer_with_null_content(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(
        model="small",
        messages=CALL,
        tools=[openai.pydantic_function_tool(GetWeather)],  # type: ignore[arg-type]
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_completion()
    message = final.choices[0].message
    assert message.tool_calls and message.tool_calls[0].function.parsed_arguments == GetWeather(city="Oslo")
    assert "content.delta" not in kinds, kinds
    assert message.content is None, f"streamed, a tool-only answer's content is {message.content!r}, not null"


# An OpenAI-compatible server that writes a tool-only answer as Ollama's does (the scripted upstream of
# tests/support/scripted.py): opened `content: ""`, the call, closed with another `content: ""`.
CALL_DELTA = {
    "index": 0,
    "id": "call_1",
    "type": "function",
    "function": {"name": "GetWeather", "arguments": '{"city":"Oslo"}'},
}
COMPATIBLE = {"compatible-call": "compatible", "compatible-text": "compatible", "compatible-empty": "compatible"}


@pytest.fixture(scope="module")
def compatible(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    yield from scripted_gateway(tmp_path_factory.mktemp("tool-only"), COMPATIBLE)


@pytest.fixture
def scripts() -> Iterator[None]:
    opening = chunk({"role": "assistant", "content": ""})
    SCRIPTS["compatible-call"] = {
        "stream": [opening, chunk({"tool_calls": [CALL_DELTA]}), chunk({"content": ""}, "tool_calls"), usage_chunk()],
        "whole": whole(
            {"role": "assistant", "content": "", "tool_calls": [{k: v for k, v in CALL_DELTA.items() if k != "index"}]},
            "tool_calls",
        ),
    }
    SCRIPTS["compatible-text"] = {
        "stream": [opening, chunk({"content": "Hel"}), chunk({"content": "lo"}, "stop"), usage_chunk()],
        "whole": whole({"role": "assistant", "content": "Hello"}),
    }
    SCRIPTS["compatible-empty"] = {"stream": [opening, chunk({}, "stop"), usage_chunk()], "whole": whole({})}
    yield
    for model in COMPATIBLE:
        SCRIPTS.pop(model, None)


@pytest.mark.usefixtures("scripts")
def test_a_compatible_servers_tool_only_answer_has_null_content_and_its_text_answers_are_kept(
    compatible: Running,
) -> None:
    with openai.OpenAI(base_url=f"{compatible.url}/v1", api_key=compatible.mint(name="c"), max_retries=0) as sdk:
        tools = [openai.pydantic_function_tool(GetWeather)]
        whole_call = sdk.chat.completions.create(model="compatible-call", messages=CALL, tools=tools)  # type: ignore[arg-type]
        assert whole_call.choices[0].message.content is None and whole_call.choices[0].message.tool_calls
        raw = sdk.chat.completions.create(model="compatible-call", messages=CALL, tools=tools, stream=True)  # type: ignore[arg-type]
        deltas = [c.choices[0].delta for c in raw if c.choices]
        assert deltas[0].role == "assistant" and deltas[0].content is None and not deltas[0].tool_calls
        assert all(delta.content is None for delta in deltas)
        with sdk.chat.completions.stream(model="compatible-call", messages=CALL, tools=tools) as stream:  # type: ignore[arg-type]
            kinds = [event.type for event in stream]
            final = stream.get_final_completion()
        assert "content.delta" not in kinds and final.choices[0].message.content is None
        assert final.choices[0].message.tool_calls[0].function.parsed_arguments == GetWeather(city="Oslo")  # type: ignore[index, union-attr]
        # A text answer opens `""` as OpenAI's does, and an answer of nothing ends with its opening, handed out.
        for model, text in (("compatible-text", "Hello"), ("compatible-empty", "")):
            with sdk.chat.completions.stream(model=model, messages=CALL) as stream:
                first = next(iter(stream))
                final = stream.get_final_completion()
            assert final.choices[0].message.content == text, model
            assert first.type == "chunk" and first.chunk.choices[0].delta.role == "assistant"
