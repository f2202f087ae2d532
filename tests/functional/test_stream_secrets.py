"""No secret the gateway knows reaches a client, whichever API, streamed or not, whole, cut across events, or
JSON-escaped: driven by the official SDKs, which join a stream's deltas as every client does.

The fakes' model says what it is told (`SAY`), streamed four characters at a time, so a key is cut across several
deltas; a scripted call's arguments are streamed in halves, cut inside the key. `escaping-claude` and
`escaping-gpt` write every `/` of their JSON as `\\/`, as PHP's or Java's encoders do.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest

from handler import redaction
from tests.functional.agents_gateway import agents_gateway
from tests.functional.conftest import FAKE_KEYS, Running

PROVIDER_KEY = FAKE_KEYS["OPENAI_API_KEY"]  # the gateway holds it: registered at start-up
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"  # AWS's documented example; its `/` an encoder may escape
SAID = f"SAY The key is {PROVIDER_KEY}, and the secret {AWS_SECRET}; keep them."
SHOWN = "The key is [REDACTED], and the secret [REDACTED]; keep them."
CALLED = f'Look it up. CALL lookup {{"token": "{PROVIDER_KEY}"}}'
LOOKUP_SCHEMA: Any = {"type": "object", "properties": {"token": {"type": "string"}}}


@pytest.fixture(scope="module")
def agents(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    redaction.register(AWS_SECRET)  # as the environment's AWS credentials are, at start-up
    with agents_gateway(Path(tmp_path_factory.mktemp("secrets-store"))) as running:
        yield running


@pytest.fixture(scope="module")
def openai_sdk(agents: Running) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{agents.url}/v1", api_key=agents.mint(name="sdk"), max_retries=0) as sdk:
        yield sdk


@pytest.fixture(scope="module")
def anthropic_sdk(agents: Running) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=agents.url, api_key=agents.mint(name="sdk"), max_retries=0) as sdk:
        yield sdk


def assert_secret_free(data: str | bytes) -> None:
    text = data.decode() if isinstance(data, bytes) else data
    for secret in (PROVIDER_KEY, AWS_SECRET, AWS_SECRET.replace("/", "\\/")):
        assert secret not in text


# --- text, cut across deltas ---------------------------------------------------------------------


@pytest.mark.parametrize("model", ["gpt", "claude", "gemini", "bedrock-claude"])
def test_chat_completions_stream_joins_to_no_secret(openai_sdk: openai.OpenAI, model: str) -> None:
    deltas: list[str] = []
    with openai_sdk.chat.completions.stream(model=model, messages=[{"role": "user", "content": SAID}]) as stream:
        for event in stream:
            if event.type == "content.delta":
                deltas.append(event.delta)
        final = stream.get_final_completion()
    assert final.choices[0].message.content == "".join(deltas) == SHOWN
    assert len(deltas) > 3  # still streamed, not held to the end


@pytest.mark.parametrize("model", ["claude", "gpt"])
def test_messages_stream_joins_to_no_secret(anthropic_sdk: anthropic.Anthropic, model: str) -> None:
    asked: Any = {"model": model, "max_tokens": 200, "messages": [{"role": "user", "content": SAID}]}
    with anthropic_sdk.messages.stream(**asked) as stream:
        deltas = list(stream.text_stream)
        final = stream.get_final_message()
    assert [block.type for block in final.content] == ["text"]
    assert final.content[0].text == "".join(deltas) == SHOWN  # type: ignore[union-attr]
    assert len(deltas) > 3


@pytest.mark.parametrize("model", ["gpt-native", "gpt", "claude"])
def test_responses_stream_joins_to_no_secret(openai_sdk: openai.OpenAI, model: str) -> None:
    deltas: list[str] = []
    with openai_sdk.responses.stream(model=model, input=SAID) as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
            elif event.type == "response.output_text.done":
                assert event.text == SHOWN
        final = stream.get_final_response()
    assert final.output_text == "".join(deltas) == SHOWN
    stored = openai_sdk.responses.retrieve(final.id)
    assert stored.output_text == SHOWN


def test_thinking_cut_across_deltas_joins_to_no_secret(
    openai_sdk: openai.OpenAI, anthropic_sdk: anthropic.Anthropic
) -> None:
    """Claude's thinking (the fake thinks what it is told to say) as each API streams it: thinking deltas passed
    through, `reasoning_content` in Chat Completions, a reasoning summary in the Responses API."""
    thinking: Any = {"type": "enabled", "budget_tokens": 1024}
    asked: Any = {"model": "claude", "max_tokens": 2000, "messages": [{"role": "user", "content": SAID}]}
    with anthropic_sdk.messages.stream(**asked, thinking=thinking) as stream:
        blocks = stream.get_final_message().content
    assert [(b.type, getattr(b, "thinking", None)) for b in blocks][0] == ("thinking", SHOWN)

    reasoned: list[str] = []
    messages: Any = [{"role": "user", "content": SAID}]
    extra = {"reasoning_effort": "low"}
    with openai_sdk.chat.completions.stream(model="claude", messages=messages, extra_body=extra) as chat:
        for event in chat:
            if event.type == "chunk" and event.chunk.choices:
                reasoned.append((event.chunk.choices[0].delta.model_extra or {}).get("reasoning_content") or "")
    assert "".join(reasoned) == SHOWN

    summary: Any = {"effort": "low", "summary": "auto"}
    with openai_sdk.responses.stream(model="claude", input=SAID, reasoning=summary) as responses:
        output = responses.get_final_response().output
    reasoning = [item for item in output if item.type == "reasoning"]
    assert reasoning and reasoning[0].summary[0].text == SHOWN  # type: ignore[union-attr]


# --- tool-call arguments, cut across deltas ------------------------------------------------------


@pytest.mark.parametrize("model", ["gpt-native", "gpt", "claude"])
def test_a_streamed_tool_calls_arguments_carry_no_secret(
    openai_sdk: openai.OpenAI, anthropic_sdk: anthropic.Anthropic, model: str
) -> None:
    shown = {"token": "[REDACTED]"}
    tool: Any = {"type": "function", "function": {"name": "lookup", "parameters": LOOKUP_SCHEMA}}
    messages: Any = [{"role": "user", "content": CALLED}]
    with openai_sdk.chat.completions.stream(model=model, messages=messages, tools=[tool]) as chat:
        called = chat.get_final_completion().choices[0].message.tool_calls
    assert called and orjson.loads(called[0].function.arguments) == shown

    function: Any = {"type": "function", "name": "lookup", "parameters": LOOKUP_SCHEMA}
    with openai_sdk.responses.stream(model=model, input=CALLED, tools=[function]) as responses:
        calls = [item for item in responses.get_final_response().output if item.type == "function_call"]
    assert calls and orjson.loads(calls[0].arguments) == shown  # type: ignore[union-attr]

    asked: Any = {"model": model, "max_tokens": 200, "messages": messages}
    with anthropic_sdk.messages.stream(**asked, tools=[{"name": "lookup", "input_schema": LOOKUP_SCHEMA}]) as stream:
        uses = [block for block in stream.get_final_message().content if block.type == "tool_use"]
    assert uses and uses[0].input == shown  # type: ignore[union-attr]


# --- JSON-escaped, passed through as the provider wrote it ---------------------------------------


def test_a_passed_through_messages_stream_and_answer_carry_no_escaped_secret(
    agents: Running, anthropic_sdk: anthropic.Anthropic
) -> None:
    asked: Any = {"model": "escaping-claude", "max_tokens": 200, "messages": [{"role": "user", "content": SAID}]}
    with anthropic_sdk.messages.stream(**asked) as stream:
        deltas = list(stream.text_stream)
        final = stream.get_final_message()
    assert final.content[0].text == "".join(deltas) == SHOWN  # type: ignore[union-attr]
    assert anthropic_sdk.messages.create(**asked).content[0].text == SHOWN  # type: ignore[union-attr]
    headers = {"x-api-key": agents.mint(), "anthropic-version": "2023-06-01"}
    with httpx.stream("POST", f"{agents.url}/v1/messages", json={**asked, "stream": True}, headers=headers) as raw:
        assert_secret_free(raw.read())


def test_a_passed_through_responses_stream_and_answer_carry_no_escaped_secret(
    agents: Running, openai_sdk: openai.OpenAI
) -> None:
    with openai_sdk.responses.stream(model="escaping-gpt", input=SAID) as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.output_text == "".join(deltas) == SHOWN
    assert openai_sdk.responses.create(model="escaping-gpt", input=SAID).output_text == SHOWN
    headers = {"authorization": f"Bearer {agents.mint()}"}
    body = {"model": "escaping-gpt", "input": SAID, "stream": True}
    with httpx.stream("POST", f"{agents.url}/v1/responses", json=body, headers=headers) as raw:
        assert_secret_free(raw.read())
    answer = httpx.post(f"{agents.url}/v1/responses", json={**body, "stream": False}, headers=headers)
    assert answer.status_code == 200
    assert_secret_free(answer.content)


@pytest.mark.parametrize("model", ["escaping-gpt", "escaping-claude"])
def test_a_whole_chat_answer_carries_no_escaped_secret(openai_sdk: openai.OpenAI, model: str) -> None:
    answer = openai_sdk.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": SAID}]
    )
    assert_secret_free(answer.http_response.content)
    assert answer.parse().choices[0].message.content == SHOWN


@pytest.mark.parametrize("model", ["escaping-gpt", "claude"])
def test_a_stored_response_keeps_no_secret_the_model_said(agents: Running, model: str) -> None:
    """A stored response was redacted only when read back: the store held the secret the model said as the
    provider wrote it (a passed-through answer, `escaping-gpt`) or as the gateway translated it (`claude`)."""
    import asyncio

    from adapters.store import open_store

    headers = {"authorization": f"Bearer {agents.mint()}"}
    answer = httpx.post(f"{agents.url}/v1/responses", json={"model": model, "input": SAID}, headers=headers)
    assert answer.status_code == 200 and answer.json()["output"], answer.text

    async def stored() -> bytes:
        store = open_store(agents.store_url)
        try:
            kept = await store.get_response(answer.json()["id"])
            assert kept is not None
            return kept.body
        finally:
            await store.close()

    body = asyncio.run(stored())
    assert SHOWN.encode() in body  # (the answer is there, as the client saw it)
    assert_secret_free(body)
