"""The official anthropic SDK against the gateway's /v1/messages, with any provider behind it."""

from __future__ import annotations

from typing import Any
from unittest.mock import ANY

import anthropic
import httpx
import openai
import pytest

from tests.fakes.openai import TEXT
from tests.functional.conftest import Running, anthropic_client

TOOL = {
    "name": "get_weather",
    "description": "Weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def client(running: Running, key: str, *, bearer: bool = False) -> anthropic.Anthropic:
    return anthropic_client(running, key, bearer=bearer)


@pytest.mark.parametrize("bearer", [False, True])
def test_message_from_an_openai_model(running: Running, key: str, bearer: bool) -> None:
    raw = client(running, key, bearer=bearer).messages.with_raw_response.create(
        model="gpt-4o-mini",
        max_tokens=100,
        system="Be brief.",
        messages=[{"role": "user", "content": "Hi"}],
        extra_body={"top_k": 5},  # this SDK version has no top_k argument
    )
    message = raw.parse()
    assert message.content[0].type == "text" and message.content[0].text == TEXT
    assert message.stop_reason == "end_turn" and message.usage.output_tokens == 7
    assert raw.headers["x-gateway-provider"] == "openai"
    assert raw.headers["x-gateway-dropped-params"] == "top_k"
    sent = running.fakes["openai"].state.requests[-1]["json"]
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."} and sent["max_tokens"] == 100
    assert "top_k" not in sent


def test_stream_events_accumulate_in_the_sdk(running: Running, key: str) -> None:
    with client(running, key).messages.stream(
        model="gpt-4o-mini", max_tokens=50, messages=[{"role": "user", "content": "Hi"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == TEXT
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 7


def test_a_tool_call_cut_at_max_tokens_has_the_same_input_whole_and_streamed(running: Running, key: str) -> None:
    """A tool call an OpenAI-compatible upstream cut at its token limit (`finish_reason: length`, its arguments
    unfinished JSON) had `input: {'_raw': '{"city":"Paris","units":"cel'}` in the whole message, where the SDK's
    streamed one accumulated the fragments to what was whole of them: the two disagreed, `stop_reason: max_tokens`
    both. The whole message now has what the stream accumulates to, as a client of Claude's stream cut mid-call
    gets it. (The two are separate answers: each call has an id of its own.)"""
    asked: Any = {
        "model": "cut-call",
        "max_tokens": 50,
        "tools": [TOOL],
        "messages": [{"role": "user", "content": "Hi"}],
    }
    ac = client(running, key)
    whole = ac.messages.create(**asked)
    with ac.messages.stream(**asked) as stream:
        streamed = stream.get_final_message()
    assert whole.stop_reason == streamed.stop_reason == "max_tokens"
    assert [b.model_dump(exclude={"id"}) for b in whole.content] == [
        b.model_dump(exclude={"id"}) for b in streamed.content
    ]
    block = whole.content[0]
    assert block.type == "tool_use" and block.name == "get_weather" and block.input == {"city": "Paris"}


def test_tool_use_round_trip(running: Running, key: str) -> None:
    ac = client(running, key)
    message = ac.messages.create(
        model="tools-model",
        max_tokens=50,
        tools=[TOOL],
        tool_choice={"type": "any"},
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    )
    block = message.content[0]
    assert message.stop_reason == "tool_use" and block.type == "tool_use" and block.input == {"city": "Paris"}
    with ac.messages.stream(
        model="tools-model",
        max_tokens=50,
        tools=[TOOL],
        tool_choice={"type": "any"},
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    ) as stream:
        final = stream.get_final_message()
    assert final.content[0].type == "tool_use" and final.content[0].input == {"city": "Paris"}
    follow_up = ac.messages.create(
        model="tools-model",
        max_tokens=50,
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": block.id, "name": "get_weather", "input": {"city": "Paris"}}],
            },
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": block.id, "content": "sunny"}]},
        ],
    )
    assert follow_up.content[0].type == "text"
    sent = running.fakes["openai"].state.requests[-1]["json"]["messages"]
    assert sent[1]["tool_calls"][0]["function"]["arguments"] == '{"city":"Paris"}'
    assert sent[2] == {"role": "tool", "tool_call_id": block.id, "content": "sunny"}


def test_errors_are_in_anthropic_shape(running: Running, key: str) -> None:
    with pytest.raises(anthropic.AuthenticationError) as bad:
        client(running, "gwk_aaaaaaaaaaaa_" + "x" * 43).messages.create(
            model="gpt-4o-mini", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert bad.value.body == {"type": "error", "error": {"type": "authentication_error", "message": "invalid API key"}}
    with pytest.raises(anthropic.NotFoundError) as missing:
        client(running, key).messages.create(model="nope", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError) as strict:
        client(running, key).messages.create(
            model="gpt-4o-mini",
            max_tokens=5,
            messages=[{"role": "user", "content": "x"}],
            extra_body={"top_k": 3},
            extra_headers={"x-gateway-strict": "true"},
        )
    assert "top_k" in strict.value.message


def test_a_cost_limit_is_a_billing_error_with_legible_figures(running: Running, key: str) -> None:
    """x-gateway-max-cost-usd refuses as the budget does (`billing_error`), and names the limit it was given
    however small, never as $0.000000."""
    with pytest.raises(anthropic.APIStatusError) as refused:
        client(running, key).messages.create(
            model="claude-haiku-4-5",
            max_tokens=100,
            messages=[{"role": "user", "content": "x"}],
            extra_headers={"x-gateway-max-cost-usd": "0.0000001"},
        )
    assert refused.value.status_code == 402
    error = refused.value.body["error"]  # type: ignore[index]
    assert error["type"] == "billing_error"
    assert (
        "exceeds x-gateway-max-cost-usd $0.0000001, this request's own cap (not the key's budget); a smaller "
        "max_tokens lowers it" in error["message"]
    )
    worst = error["message"].removeprefix("worst-case cost $").partition(" ")[0]
    assert float(worst) > 0.0000001


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
def test_a_missing_key_names_x_api_key_to_an_anthropic_client(running: Running, path: str) -> None:
    body = {"model": "claude-haiku-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    answer = httpx.post(f"{running.url}{path}", json=body, headers={"anthropic-version": "2023-06-01"})
    assert answer.status_code == 401
    assert answer.json()["error"] == {
        "type": "authentication_error",
        "message": "missing API key: send x-api-key: <key> or Authorization: Bearer <key>",
    }


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
def test_messages_of_unsupported_blocks_alone_are_a_400_naming_them(running: Running, key: str, path: str) -> None:
    """Translated for another provider, a conversation left with nothing it can take is refused in words the
    client can act on, not a validation library's report."""
    content = [{"type": "bogus"}]
    body = {"model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": content}]}
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
    answer = httpx.post(f"{running.url}{path}", json=body, headers=headers)
    assert answer.status_code == 400
    assert answer.json() == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "messages: no content this model can take (unsupported content blocks: bogus)",
        },
    }


MALFORMED_BLOCKS = {
    "a tool result of bare strings": [{"type": "tool_result", "tool_use_id": "t", "content": ["a"]}],
    "an image whose source is a string": [{"type": "image", "source": "abc"}],
    "a document whose source is a string": [{"type": "document", "source": "abc"}],
    "a document of bare strings": [{"type": "document", "source": {"type": "content", "content": ["a"]}}],
}


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-haiku-4-5"])
@pytest.mark.parametrize("content", MALFORMED_BLOCKS.values(), ids=MALFORMED_BLOCKS.keys())
def test_malformed_content_blocks_are_the_clients_400_in_anthropic_shape(
    running: Running, key: str, path: str, model: str, content: list[Any]
) -> None:
    """Blocks whose parts are not what Anthropic defines (a string where an object or a list of blocks
    belongs) are refused as Anthropic refuses them, before any provider is asked: never a 500."""
    body = {"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": content}]}
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
    answer = httpx.post(f"{running.url}{path}", json=body, headers=headers)
    assert answer.status_code == 400, answer.text
    assert answer.json()["type"] == "error" and answer.json()["error"]["type"] == "invalid_request_error"


def test_what_a_provider_cannot_honour_is_named_as_the_messages_client_wrote_it(running: Running, key: str) -> None:
    """A Messages client's `metadata.user_id`, which Gemini has no field for, was named `user` (the internal
    form's word) in `x-gateway-dropped-params` (found by review)."""
    raw = client(running, key).messages.with_raw_response.create(
        model="gemini-2.5-flash",
        max_tokens=50,
        metadata={"user_id": "u-1"},
        messages=[{"role": "user", "content": "Hi"}],
    )
    assert raw.headers["x-gateway-provider"] == "gemini"
    assert raw.headers["x-gateway-dropped-params"] == "metadata.user_id"


def test_a_stop_list_too_long_for_the_provider_is_refused_by_the_messages_name(running: Running, key: str) -> None:
    """Five `stop_sequences` to an OpenAI model are refused, as OpenAI refuses five `stop`s; the 400 named `stop`,
    which a Messages client never sent (found by review)."""
    with pytest.raises(anthropic.BadRequestError) as refused:
        client(running, key).messages.create(
            model="gpt-4o-mini",
            max_tokens=50,
            stop_sequences=["a", "b", "c", "d", "e"],
            messages=[{"role": "user", "content": "Hi"}],
        )
    assert "'stop_sequences'" in refused.value.message and "'stop'" not in refused.value.message


PREFILLED: Any = [{"role": "user", "content": "JSON please"}, {"role": "assistant", "content": "{"}]


@pytest.mark.parametrize("model", ["gpt-4o-mini", "deepseek-chat", "gemini-2.5-flash"])
def test_a_prefill_the_provider_cannot_continue_is_named_and_refused_under_strict(
    running: Running, key: str, model: str
) -> None:
    """A Messages client's final assistant turn asks that the answer continue it (a prefill), which OpenAI's Chat
    Completions, DeepSeek's outside its beta URL and Gemini cannot do: OpenAI's and DeepSeek's got it as an earlier
    turn, answered 200 with `x-gateway-dropped-params` empty, and the answer did not continue it (found by review).
    It is named now (`messages.prefill`), and refused under `x-gateway-strict`. Gemini, which refuses a conversation
    ending with the model's turn, is sent the conversation without it."""
    ac = client(running, key)
    raw = ac.messages.with_raw_response.create(model=model, max_tokens=50, messages=PREFILLED)
    assert raw.parse().content[0].type == "text"
    assert raw.headers["x-gateway-dropped-params"] == "messages.prefill"
    with ac.messages.with_streaming_response.create(model=model, max_tokens=50, messages=PREFILLED, stream=True) as s:
        assert s.headers["x-gateway-dropped-params"] == "messages.prefill"
    fake = "gemini" if model.startswith("gemini") else "openai"
    sent = running.fakes[fake].state.requests[-1]["json"]
    if fake == "gemini":
        assert [turn["role"] for turn in sent["contents"]] == ["user"]
    else:
        assert sent["messages"][-1] == {"role": "assistant", "content": "{"}
    with pytest.raises(anthropic.BadRequestError) as strict:
        ac.messages.create(model=model, max_tokens=50, messages=PREFILLED, extra_headers={"x-gateway-strict": "true"})
    assert "messages.prefill" in strict.value.message


def test_a_prefill_reaches_anthropic_as_written(running: Running, key: str) -> None:
    """An Anthropic deployment gets the prefill as the client sent it (Claude continues it): nothing is named."""
    raw = client(running, key).messages.with_raw_response.create(
        model="claude-haiku-4-5", max_tokens=50, messages=PREFILLED
    )
    assert raw.parse().content[0].type == "text" and "x-gateway-dropped-params" not in raw.headers
    assert running.fakes["anthropic"].state.requests[-1]["json"]["messages"] == PREFILLED


def test_a_chat_clients_last_assistant_message_is_not_a_prefill(running: Running, key: str) -> None:
    """A Chat Completions client's conversation ending with an assistant message asks nothing of the kind: nothing is
    named."""
    with openai.OpenAI(base_url=f"{running.url}/v1", api_key=key, max_retries=0) as sdk:
        raw = sdk.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=PREFILLED)
    assert raw.parse().choices[0].message.content and "x-gateway-dropped-params" not in raw.headers


def test_unknown_fields_to_claude_are_refused_under_strict(running: Running, key: str) -> None:
    """A Messages request to an Anthropic deployment passes through as sent: under `x-gateway-strict` its unknown
    fields (`bogus_field`, a misspelt `temprature`) reached Anthropic (200). Now a 400 in Anthropic's shape naming
    them, nothing sent; without strict they pass through as before."""
    ac = client(running, key)
    asked: Any = {"model": "claude-haiku-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    unknown = {"bogus_field": 1, "temprature": 0.2}
    sent = running.fakes["anthropic"].state.requests
    before = len(sent)
    with pytest.raises(anthropic.BadRequestError) as refused:
        ac.messages.create(**asked, extra_body=unknown, extra_headers={"x-gateway-strict": "true"})
    assert refused.value.body == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": ANY},
    }
    assert "unknown fields: bogus_field, temprature" in refused.value.message
    assert len(sent) == before
    ac.messages.create(**asked, extra_body=unknown)
    assert sent[-1]["json"]["temprature"] == 0.2
    thinking: Any = {"type": "adaptive"}
    ac.messages.create(
        **asked,
        thinking=thinking,
        metadata={"user_id": "u"},
        service_tier="auto",
        extra_body={"output_config": {"effort": "low"}, "top_k": 3},
        extra_headers={"x-gateway-strict": "true"},
    )
    # A token count is held to the same fields (it was not checked: a count's unknown fields reached Anthropic).
    counted: Any = {"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "x"}]}
    before = len(sent)
    with pytest.raises(anthropic.BadRequestError) as refused:
        ac.messages.count_tokens(**counted, extra_body=unknown, extra_headers={"x-gateway-strict": "true"})
    assert "unknown fields: bogus_field, temprature" in refused.value.message
    assert len(sent) == before
    assert ac.messages.count_tokens(**counted, system="s", extra_headers={"x-gateway-strict": "true"}).input_tokens
