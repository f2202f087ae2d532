"""No secret the gateway knows reaches a client, whichever API, streamed or not, whole, cut across events, or
JSON-escaped: driven by the official SDKs, which join a stream's deltas as every client does.

The fakes' model says what it is told (`SAY`), streamed four characters at a time, so a key is cut across several
deltas; a scripted call's arguments are streamed in halves, cut inside the key. `escaping-claude` and
`escaping-gpt` write every `/` of their JSON as `\\/`, as PHP's or Java's encoders do.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import orjson
import pytest
from openai.types.chat import ParsedChatCompletion

from adapters.store import open_store
from handler import redaction
from handler.api.app import create_app
from handler.api.reasoning_seal import SEAL_SECRET_ID, ReasoningSeal
from handler.ports import StoredResponse
from tests.functional.agents_gateway import agents_gateway
from tests.functional.conftest import FAKE_KEYS, Running
from tests.support.inprocess import PROVIDER_KEYS, serve
from tests.unit.handler.api.test_responses_api import signed_only

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
    raw = data.encode() if isinstance(data, str) else data  # (bytes: a seal's are not text)
    for secret in (PROVIDER_KEY, AWS_SECRET, AWS_SECRET.replace("/", "\\/")):
        assert secret.encode() not in raw


def readable(sealed: str) -> bytes:
    """Whatever a `gwr<n>.<base64>.<base64>` seal gives away to anyone: each of its parts, base64-decoded."""
    parts = sealed.split(".")[1:]
    return b"".join(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)) for part in parts)


def stored_record(agents: Running, response_id: str) -> bytes:
    async def read() -> bytes:
        store = open_store(agents.store_url)
        try:
            kept = await store.get_response(response_id)
            assert kept is not None
            return kept.body
        finally:
            await store.close()

    return asyncio.run(read())


def readable_seals(agents: Running, response_id: str) -> bytes:
    """What anyone reading a stored response's record learns from the seals kept beside it."""
    return b"".join(readable(sealed) for sealed in orjson.loads(stored_record(agents, response_id))["sealed"].values())


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
    headers = {"authorization": f"Bearer {agents.mint()}"}
    answer = httpx.post(f"{agents.url}/v1/responses", json={"model": model, "input": SAID}, headers=headers)
    assert answer.status_code == 200 and answer.json()["output"], answer.text
    body = stored_record(agents, answer.json()["id"])
    assert SHOWN.encode() in body  # (the answer is there, as the client saw it)
    assert_secret_free(body)


# --- reasoning sealed for the next turn ----------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_a_sealed_reasoning_item_carries_no_secret(agents: Running, openai_sdk: openai.OpenAI, stream: bool) -> None:
    """Claude's thinking goes into the reasoning item's `encrypted_content` as Claude wrote it (it checks its
    signature against that exact text, so the gateway cannot redact it there): a secret it quoted, shown
    `[REDACTED]` in the summary, was read back by base64-decoding the blob (a seal was signed, not encrypted). The
    thinking still goes back to Claude whole on the next turn (the fake refuses a block whose text was changed)."""
    asked: Any = {
        "model": "claude",
        "input": SAID,
        "reasoning": {"effort": "low", "summary": "auto"},
        "include": ["reasoning.encrypted_content"],
        "store": False,
    }
    if stream:
        with openai_sdk.responses.stream(**asked) as events:
            response = events.get_final_response()
    else:
        response = openai_sdk.responses.create(**asked)
    [reasoning] = [item for item in response.output if item.type == "reasoning"]
    assert reasoning.summary[0].text == SHOWN  # redacted where the client reads the text
    sealed = reasoning.encrypted_content
    assert sealed and sealed.startswith("gwr")
    assert_secret_free(readable(sealed))

    back: Any = [{"role": "user", "content": SAID}, *[item.model_dump(exclude_none=True) for item in response.output]]
    again = openai_sdk.responses.create(**{**asked, "input": [*back, {"role": "user", "content": "And?"}]})
    assert again.status == "completed"
    sent = agents.fakes["anthropic"].state.requests[-1]["json"]["messages"][1]["content"][0]
    assert sent["type"] == "thinking" and PROVIDER_KEY in sent["thinking"]  # as Claude wrote it, signed


def test_a_stored_responses_sealed_reasoning_keeps_no_readable_secret(
    agents: Running, openai_sdk: openai.OpenAI
) -> None:
    """A stored response keeps its reasoning items' seals beside it (the client may not have asked for them): the
    store's record is scrubbed of the secrets it holds as text, and the seals, which scrubbing cannot read, are
    encrypted. The next turn still hands Claude its thinking whole."""
    first = openai_sdk.responses.create(model="claude", input=SAID, reasoning={"effort": "low", "summary": "auto"})
    body = stored_record(agents, first.id)
    record = orjson.loads(body)
    assert record["sealed"] and record["response"]["output"][0]["type"] == "reasoning"
    assert_secret_free(body)
    assert_secret_free(readable_seals(agents, first.id))
    again = openai_sdk.responses.create(model="claude", input="And?", previous_response_id=first.id)
    assert again.status == "completed"
    sent = agents.fakes["anthropic"].state.requests[-1]["json"]["messages"][1]["content"][0]
    assert sent["type"] == "thinking" and PROVIDER_KEY in sent["thinking"]


def test_a_conversation_sealed_before_seals_were_encrypted_goes_on_and_is_kept_encrypted(
    agents: Running, openai_sdk: openai.OpenAI
) -> None:
    """A response an older release stored holds its reasoning's seals as it made them (`gwr1.`: signed, readable):
    continued after the upgrade, it hands Claude its thinking whole, and the turn kept then holds those seals
    encrypted, so that a conversation begun before does not carry readable ones into every turn it stores."""
    first = openai_sdk.responses.create(model="claude", input=SAID, reasoning={"effort": "low", "summary": "auto"})

    async def as_kept_before() -> str:
        store = open_store(agents.store_url)
        try:
            kept, secret = await store.get_response(first.id), await store.get_response(SEAL_SECRET_ID)
            assert kept is not None and secret is not None
            record = orjson.loads(kept.body)
            seal = ReasoningSeal(secret.body)
            record["sealed"] = {
                item_id: signed_only(secret.body, seal.open(token) or {}) for item_id, token in record["sealed"].items()
            }
            older = "resp_" + "0" * 31 + "1"
            now = time.time()
            body = orjson.dumps(record)
            await store.put_response(StoredResponse(older, kept.key_id, kept.ancestors, now, now + 600, body))
            return older
        finally:
            await store.close()

    older = asyncio.run(as_kept_before())
    assert b"gwr1." in stored_record(agents, older) and PROVIDER_KEY.encode() in readable_seals(agents, older)
    again = openai_sdk.responses.create(model="claude", input="And?", previous_response_id=older)
    assert again.status == "completed"
    sent = agents.fakes["anthropic"].state.requests[-1]["json"]["messages"][1]["content"][0]
    assert sent["type"] == "thinking" and PROVIDER_KEY in sent["thinking"]
    assert b"gwr1." not in stored_record(agents, again.id)
    assert_secret_free(readable_seals(agents, again.id))


# --- a citation or an annotation between two deltas of the secret -------------------------------------------------
# A provider's own stream passed through, scripted (`tests.support.inprocess`): its text cut inside the key, with an
# event of the same text that carries none of it between the halves. Each event had let the first half go, and the
# SDK, which joins a block's (or a part's) text deltas whatever comes between them, held the key whole.

SCRIPTED_KEY = PROVIDER_KEYS["OPENAI_API_KEY"]  # the scripted deployments' key: a secret the gateway knows
CITED = f"The key is {SCRIPTED_KEY} as cited."
CITED_SHOWN = "The key is [REDACTED] as cited."
CITATION = {
    "type": "char_location",
    "cited_text": "The",
    "document_index": 0,
    "document_title": "Keys",
    "start_char_index": 0,
    "end_char_index": 3,
}
ANNOTATION = {"type": "url_citation", "url": "https://example.com/", "title": "x", "start_index": 0, "end_index": 3}
GPT = {"gpt": {"deployments": [{"provider": "openai", "model": "gpt-x"}], "price": {"input": 1, "output": 2}}}


def sse_events(events: list[tuple[str, dict[str, Any]]]) -> Any:
    body = b"".join(b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n" for name, data in events)
    return lambda request: httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})


def cited_message(between: list[dict[str, Any]]) -> Any:
    """Anthropic's stream of a text block with citations (`citations_delta`), its text cut inside the key."""
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x", "content": []}
    message |= {"stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 5, "output_tokens": 1}}
    block = {"type": "text", "text": "", "citations": []}
    ended = {"stop_reason": "end_turn", "stop_sequence": None}
    deltas = [{"type": "text_delta", "text": CITED[:20]}, *between, {"type": "text_delta", "text": CITED[20:]}]
    return sse_events(
        [
            ("message_start", {"type": "message_start", "message": message}),
            ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": block}),
            *(("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": d}) for d in deltas),
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ("message_delta", {"type": "message_delta", "delta": ended, "usage": {"output_tokens": 10}}),
            ("message_stop", {"type": "message_stop"}),
        ]
    )


@pytest.mark.parametrize("cited", [False, True], ids=["deltas_alone", "a_citation_between"])
async def test_a_passed_through_messages_stream_redacts_a_secret_cut_around_a_citation(cited: bool) -> None:
    between = [{"type": "citations_delta", "citation": CITATION}] if cited else []
    served = await serve(
        cited_message(between),
        {"claude": {"deployments": [{"provider": "openai", "model": "claude-x"}], "price": {"input": 1, "output": 2}}},
        provider={"type": "anthropic", "api_key": "env:OPENAI_API_KEY", "base_url": "http://up"},
    )
    asgi = anthropic.DefaultAsyncHttpxClient(transport=httpx2.ASGITransport(app=create_app(served.gateway)))
    sdk = anthropic.AsyncAnthropic(base_url="http://gw", api_key=served.key.key, http_client=asgi)
    asked: Any = {"model": "claude", "max_tokens": 100, "messages": [{"role": "user", "content": "Cite it."}]}
    async with sdk.messages.stream(**asked) as stream:
        deltas = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    await served.gateway.aclose()
    [block] = final.content
    assert block.type == "text" and block.text == "".join(deltas) == CITED_SHOWN
    assert [citation.model_dump(exclude_none=True) for citation in block.citations or ()] == (
        [CITATION] if cited else []
    )


def url_citation(word: str) -> dict[str, Any]:
    """A `url_citation` of `word` in `CITED`, as the provider gives it: its positions in the text it wrote."""
    at = CITED.index(word)
    return {"type": "url_citation", "url": f"https://example.com/{word}", "title": word, "start_index": at} | {
        "end_index": at + len(word)
    }


CITING = ["The", "cited"]  # (a word before the key, and one after it)
NATIVE_GPT = {"type": "openai", "api_key": "env:OPENAI_API_KEY", "base_url": "http://up/v1", "responses_api": "native"}


def annotated_response(between: bool) -> Any:
    """OpenAI's stream of a message whose text cites `CITING` (each `response.output_text.annotation.added` after the
    word it cites, the first of them, with `between`, between two deltas of the key), its text cut inside the key."""
    where = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
    item = {"id": "msg_1", "type": "message", "role": "assistant", "status": "in_progress", "content": []}
    annotations = [url_citation(word) for word in CITING] if between else []
    text = {"type": "output_text", "text": CITED, "annotations": annotations}
    done = {**item, "status": "completed", "content": [text]}
    added = [
        {"type": "response.output_text.annotation.added", **where, "annotation_index": n, "annotation": annotation}
        for n, annotation in enumerate(annotations)
    ]
    response = {"id": "resp_1", "object": "response", "created_at": 1, "model": "gpt-x", "output": []}
    usage = {"input_tokens": 5, "output_tokens": 10, "total_tokens": 15}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": {**response, "status": "in_progress"}},
        {"type": "response.output_item.added", "output_index": 0, "item": item},
        {"type": "response.content_part.added", **where, "part": {**text, "text": "", "annotations": []}},
        {"type": "response.output_text.delta", **where, "delta": CITED[:20]},
        *added[:1],
        {"type": "response.output_text.delta", **where, "delta": CITED[20:]},
        *added[1:],
        {"type": "response.output_text.done", **where, "text": CITED},
        {"type": "response.content_part.done", **where, "part": text},
        {"type": "response.output_item.done", "output_index": 0, "item": done},
        {
            "type": "response.completed",
            "response": {**response, "status": "completed", "output": [done], "usage": usage},
        },
    ]
    return sse_events([(e["type"], {**e, "sequence_number": n}) for n, e in enumerate(events)])


def cites(text: str, annotations: list[Any]) -> list[str]:
    """What each annotation's positions mark in `text`."""
    return [text[annotation.start_index : annotation.end_index] for annotation in annotations]


@pytest.mark.parametrize("annotated", [False, True], ids=["deltas_alone", "an_annotation_between"])
async def test_a_passed_through_responses_stream_redacts_a_secret_cut_around_an_annotation(annotated: bool) -> None:
    """The annotations stay where they came, after the text they cite (the stream's `sequence_number`s in order),
    and cite the words they cited: their positions, in the text the provider wrote, are moved past the key's
    redaction, in the events that add them and in the finished and stored response (`cited` was cited as `sited.`)."""
    served = await serve(annotated_response(annotated), GPT, provider=NATIVE_GPT)
    sdk = openai.AsyncOpenAI(base_url="http://gw/v1", api_key=served.key.key, http_client=served.http)
    async with sdk.responses.stream(model="gpt", input="Cite it.") as stream:
        events = [event async for event in stream]
        final = await stream.get_final_response()
    stored = await sdk.responses.retrieve(final.id)
    await served.gateway.aclose()
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert final.output_text == "".join(deltas) == stored.output_text == CITED_SHOWN
    sequence = [event.sequence_number for event in events]
    assert sequence == sorted(set(sequence))  # (the deltas the key was cut across joined into the first)
    kinds = [event.type.removeprefix("response.output_text.") for event in events]
    assert [kind for kind in kinds if kind in ("delta", "annotation.added")] == ["delta"] + ["annotation.added"] * (
        2 * annotated
    )  # (the two deltas joined into the first, then the annotations in their order)
    added = [event.annotation for event in events if event.type == "response.output_text.annotation.added"]
    cited = CITING if annotated else []
    for given in (added, final.output[0].content[0].annotations, stored.output[0].content[0].annotations):  # type: ignore[union-attr]
        assert cites(CITED_SHOWN, given) == cited


async def test_a_passed_through_answer_s_annotations_cite_what_they_cited_once_the_key_is_redacted() -> None:
    text = {"type": "output_text", "text": CITED, "annotations": [url_citation(word) for word in CITING]}
    message = {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed", "content": [text]}
    answer = {"id": "resp_1", "object": "response", "created_at": 1, "model": "gpt-x", "status": "completed"}
    answer |= {"output": [message], "usage": {"input_tokens": 5, "output_tokens": 10, "total_tokens": 15}}
    served = await serve(lambda request: httpx.Response(200, json=answer), GPT, provider=NATIVE_GPT)
    sdk = openai.AsyncOpenAI(base_url="http://gw/v1", api_key=served.key.key, http_client=served.http)
    whole = await sdk.responses.create(model="gpt", input="Cite it.")
    stored = await sdk.responses.retrieve(whole.id)
    await served.gateway.aclose()
    for response in (whole, stored):
        assert response.output_text == CITED_SHOWN
        assert cites(CITED_SHOWN, response.output[0].content[0].annotations) == CITING  # type: ignore[union-attr]


def annotated_chunks(annotated: bool) -> Any:
    """OpenAI's Chat Completions stream of an answer with an annotation (a search model's `url_citation`), in a delta
    of its own between two deltas of the text, cut inside the key."""
    chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-x"}
    cited = {name: value for name, value in ANNOTATION.items() if name != "type"}
    annotations = [{"type": "url_citation", "url_citation": cited}] if annotated else []
    deltas: list[dict[str, Any]] = [
        {"role": "assistant", "content": CITED[:20]},
        *({"annotations": annotations} for _ in annotations[:1]),
        {"content": CITED[20:]},
    ]
    choices = [[{"index": 0, "delta": delta, "finish_reason": None}] for delta in deltas]
    choices.append([{"index": 0, "delta": {}, "finish_reason": "stop"}])
    body = b"".join(b"data: " + orjson.dumps({**chunk, "choices": c}) + b"\n\n" for c in choices) + b"data: [DONE]\n\n"
    return lambda request: httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})


async def cite_streamed(upstream: Any) -> tuple[list[str], ParsedChatCompletion[None]]:
    """`Cite it.` streamed through the gateway, `upstream` answering it, as the SDK's stream helper reads it: the
    text deltas it gave, and the completion it joined."""
    served = await serve(upstream, GPT)
    sdk = openai.AsyncOpenAI(base_url="http://gw/v1", api_key=served.key.key, http_client=served.http)
    messages: Any = [{"role": "user", "content": "Cite it."}]
    async with sdk.chat.completions.stream(model="gpt", messages=messages) as stream:
        deltas = [event.delta async for event in stream if event.type == "content.delta"]
        final = await stream.get_final_completion()
    await served.gateway.aclose()
    return deltas, final


@pytest.mark.parametrize("annotated", [False, True], ids=["deltas_alone", "an_annotation_between"])
async def test_a_chat_stream_redacts_a_secret_cut_around_an_annotations_delta(annotated: bool) -> None:
    """The streams the gateway writes itself hold a choice's text until it goes on or finishes: a delta of
    annotations alone lets nothing go."""
    deltas, final = await cite_streamed(annotated_chunks(annotated))
    assert final.choices[0].message.content == "".join(deltas) == CITED_SHOWN
    assert len(final.choices[0].message.annotations or ()) == annotated


# A search model's citations in Chat Completions (`message.annotations`, each a `url_citation` with its span), whose
# positions are in the text as the provider wrote it, as a Responses annotation's are.


def chat_url_citation(word: str) -> dict[str, Any]:
    """Chat Completions' `url_citation` of `word` in `CITED`: its positions in the text the provider wrote."""
    cited = {name: value for name, value in url_citation(word).items() if name != "type"}
    return {"type": "url_citation", "url_citation": cited}


def chat_cites(text: str, annotations: list[Any] | None) -> list[str]:
    """What each Chat Completions annotation's span marks in `text`."""
    return [text[a.url_citation.start_index : a.url_citation.end_index] for a in annotations or ()]


async def test_a_chat_answer_s_url_citations_cite_what_they_cited_once_the_key_is_redacted() -> None:
    """The key was redacted from the text (`scrub`) and the spans left where they were in the provider's: the one
    after the key marked `''` (past the text's end), where a key shorter than `[REDACTED]` would have made it mark
    other words."""
    message = {"role": "assistant", "content": CITED, "annotations": [chat_url_citation(word) for word in CITING]}
    answer = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-x"}
    answer |= {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
    answer |= {"usage": {"prompt_tokens": 5, "completion_tokens": 10, "total_tokens": 15}}
    served = await serve(lambda request: httpx.Response(200, json=answer), GPT)
    sdk = openai.AsyncOpenAI(base_url="http://gw/v1", api_key=served.key.key, http_client=served.http)
    whole = await sdk.chat.completions.create(model="gpt", messages=[{"role": "user", "content": "Cite it."}])
    await served.gateway.aclose()
    got = whole.choices[0].message
    assert got.content == CITED_SHOWN
    assert chat_cites(CITED_SHOWN, got.annotations) == CITING


def cited_chunks(how: str) -> Any:
    """OpenAI's Chat Completions stream of `CITED`, cut inside the key, and its annotations in a delta of their own
    after the text: in one read, or a read a chunk (the key is redacted in a later read than the text before it was
    sent in); or, `whole`, the answer whole to a stream request (streamed from it: its text and annotations in one
    delta)."""
    annotations = [chat_url_citation(word) for word in CITING]
    head = {"id": "chatcmpl-1", "created": 1, "model": "gpt-x"}
    if how == "whole":
        message = {"role": "assistant", "content": CITED, "annotations": annotations}
        answer = {
            **head,
            "object": "chat.completion",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        }
        return lambda request: httpx.Response(200, json=answer)
    deltas: list[dict[str, Any]] = [
        {"role": "assistant", "content": CITED[:14]},
        {"content": CITED[14:24]},
        {"content": CITED[24:]},
        {"annotations": annotations},
    ]
    choices = [[{"index": 0, "delta": delta, "finish_reason": None}] for delta in deltas]
    choices.append([{"index": 0, "delta": {}, "finish_reason": "stop"}])
    chunks = [
        b"data: " + orjson.dumps({**head, "object": "chat.completion.chunk", "choices": c}) + b"\n\n" for c in choices
    ]
    chunks.append(b"data: [DONE]\n\n")

    def streamed(request: httpx.Request) -> httpx.Response:
        async def reads() -> Any:
            for chunk in chunks if how == "read_by_read" else [b"".join(chunks)]:
                yield chunk

        return httpx.Response(200, content=reads(), headers={"content-type": "text/event-stream"})

    return streamed


@pytest.mark.parametrize("how", ["one_read", "read_by_read", "whole"])
async def test_a_chat_stream_s_url_citations_cite_what_they_cited_once_the_key_is_redacted(how: str) -> None:
    """The same, streamed: the stream's redactor moves the spans of the annotations that follow a secret it redacted
    from the choice's text, counting what the client was sent of it before."""
    deltas, final = await cite_streamed(cited_chunks(how))
    got = final.choices[0].message
    assert got.content == "".join(deltas) == CITED_SHOWN
    assert chat_cites(CITED_SHOWN, got.annotations) == CITING


# --- texts a client joins beside a delta's fields: a transcript, OpenRouter's reasoning parts ------------------------
# A Chat Completions stream's spoken answer (`delta.audio.transcript`, with `modalities: ["audio"]`) and OpenRouter's
# reasoning parts (`reasoning_details[].text`, by `index`) are joined by the SDK's stream helper as `content` is: they
# went as they came, and a key said across two deltas reached the client whole where the same key in `content` went
# redacted (found by review).

PIECES = ["The key is ", SCRIPTED_KEY[:10], SCRIPTED_KEY[10:], "."]


def chat_sse(model: str, choices: list[list[dict[str, Any]]]) -> httpx.Response:
    """A Chat Completions stream of a chunk for each of `choices`, then its usage."""
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": model}
    usage = {"prompt_tokens": 3, "completion_tokens": 7, "total_tokens": 10}
    chunks = [*({**head, "choices": c} for c in choices), {**head, "choices": [], "usage": usage}]
    body = b"".join(b"data: " + orjson.dumps(chunk) + b"\n\n" for chunk in chunks) + b"data: [DONE]\n\n"
    return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})


def chat_stream(model: str, deltas: list[dict[str, Any]]) -> Any:
    """A Chat Completions stream of `deltas` of one choice, then its finish."""
    choices = [[{"index": 0, "delta": delta}] for delta in deltas]
    return lambda request: chat_sse(model, [*choices, [{"index": 0, "delta": {}, "finish_reason": "stop"}]])


async def test_a_key_spoken_across_two_deltas_of_a_streamed_transcript_is_redacted() -> None:
    """`modalities: ["audio"]`: the spoken answer's transcript in `delta.audio.transcript`, beside no `content`."""
    spoken = chat_stream("gpt-x-audio", [{"audio": {"id": "audio_1", "transcript": piece}} for piece in PIECES])
    price = {"input": 1, "output": 2, "audio_output": 80}
    served = await serve(
        spoken,
        {"gpt": {"deployments": [{"provider": "openai", "model": "gpt-x-audio"}], "price": price}},
        priced_options={"audio_output": True},
    )
    sdk = openai.AsyncOpenAI(base_url="http://gw/v1", api_key=served.key.key, http_client=served.http)
    asked: Any = {"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "pcm16"}}
    messages: Any = [{"role": "user", "content": "Say it."}]
    async with sdk.chat.completions.stream(model="gpt", messages=messages, **asked) as s:
        final = await s.get_final_completion()
    await served.gateway.aclose()
    assert final.choices[0].message.audio.transcript == "The key is [REDACTED]."  # type: ignore[union-attr]


async def test_a_key_reasoned_across_two_deltas_of_openrouters_reasoning_parts_is_redacted() -> None:
    """OpenRouter streams its reasoning twice, in `reasoning` (read as `reasoning_content`, redacted) and in
    `reasoning_details` (relayed beside it as it came), each delta's piece at once in both: neither ends the other."""
    parts = [{"reasoning": p, "reasoning_details": [{"type": "reasoning.text", "text": p, "index": 0}]} for p in PIECES]
    served = await serve(chat_stream("gpt-x", [*parts, {"content": "ok"}]), GPT)
    sdk = openai.AsyncOpenAI(base_url="http://gw/v1", api_key=served.key.key, http_client=served.http)
    async with sdk.chat.completions.stream(model="gpt", messages=[{"role": "user", "content": "Think."}]) as s:
        final = await s.get_final_completion()
    await served.gateway.aclose()
    message = final.choices[0].message.model_dump()
    assert message["reasoning_content"] == message["reasoning_details"][0]["text"] == "The key is [REDACTED]."
    assert message["content"] == "ok"


# --- the same text given again, token by token: log probabilities ----------------------------------------------------
# A text's log probabilities (`logprobs: true`; the Responses API's `include: ["message.output_text.logprobs"]`) give
# it again, token by token, each token with its UTF-8 `bytes` and its likeliest alternatives (`top_logprobs`, the token
# itself among them). The text was `[REDACTED]`, its tokens relayed as they came: a client that joins them (the SDK
# extends a stream's `logprobs.content`) read the key whole (found by review).

TOKENS = ["The", " key", " is ", SCRIPTED_KEY[:8], SCRIPTED_KEY[8:14], SCRIPTED_KEY[14:], "."]
TOKENS_SHOWN = "The key is [REDACTED]."


def logprob(token: str) -> dict[str, Any]:
    """A token's log probability as OpenAI gives it, with its likeliest alternative: the token itself."""
    likeliest = {"token": token, "logprob": -0.1, "bytes": list(token.encode())}
    return {**likeliest, "top_logprobs": [likeliest]}


def assert_tokens_give(tokens: list[Any], text: str) -> None:
    """What a client joins of a text's log probabilities: its tokens, the text their bytes make, their alternatives;
    none with a piece of the key, each as many as the provider counted."""
    assert len(tokens) == len(TOKENS)
    assert "".join(t.token for t in tokens) == bytes(b for t in tokens for b in t.bytes or ()).decode() == text
    alternatives = [a.token for t in tokens for a in t.top_logprobs or ()]
    assert not {SCRIPTED_KEY[:8], SCRIPTED_KEY[8:14]} & {*alternatives, *(t.token for t in tokens)}


def chat_tokens(request: httpx.Request, whole: bool = False) -> httpx.Response:
    """OpenAI's answer of `TOKENS` with their log probabilities: streamed a token a delta, or whole (`whole`, or to
    a request that does not stream)."""
    head = {"id": "chatcmpl-1", "created": 1, "model": "gpt-x"}
    usage = {"prompt_tokens": 3, "completion_tokens": len(TOKENS), "total_tokens": 3 + len(TOKENS)}
    if whole or not orjson.loads(request.content).get("stream"):
        message = {"role": "assistant", "content": "".join(TOKENS)}
        choice = {"index": 0, "message": message, "logprobs": {"content": [logprob(t) for t in TOKENS]}}
        answer = {**head, "object": "chat.completion", "usage": usage}
        return httpx.Response(200, json={**answer, "choices": [{**choice, "finish_reason": "stop"}]})
    deltas = [{"index": 0, "delta": {"content": t}, "logprobs": {"content": [logprob(t)]}} for t in TOKENS]
    return chat_sse("gpt-x", [*([delta] for delta in deltas), [{"index": 0, "delta": {}, "finish_reason": "stop"}]])


@pytest.mark.parametrize("how", ["whole", "streamed", "streamed_from_whole"])
async def test_a_chat_answer_s_log_probabilities_give_no_token_of_the_key_its_text_redacts(how: str) -> None:
    """The tokens of the key say what the text says there: the first `[REDACTED]`, the others nothing, without
    alternatives; the tokens still make the text, and are as many as the provider counted. (`streamed_from_whole`:
    a server that answers a stream request whole, streamed from it in one delta.)"""
    served = await serve(lambda request: chat_tokens(request, whole=how == "streamed_from_whole"), GPT)
    sdk = openai.AsyncOpenAI(base_url="http://gw/v1", api_key=served.key.key, http_client=served.http)
    messages: Any = [{"role": "user", "content": "Say it."}]
    if how != "whole":
        async with sdk.chat.completions.stream(model="gpt", messages=messages, logprobs=True, top_logprobs=1) as s:
            final: Any = await s.get_final_completion()
    else:
        final = await sdk.chat.completions.create(model="gpt", messages=messages, logprobs=True, top_logprobs=1)
    await served.gateway.aclose()
    [choice] = final.choices
    assert choice.message.content == TOKENS_SHOWN
    assert_tokens_give(choice.logprobs.content, TOKENS_SHOWN)


def responses_tokens(request: httpx.Request) -> httpx.Response:
    """OpenAI's Responses answer of `TOKENS`, its output text with their log probabilities: whole, or streamed a
    token a delta, the `.done` events and the response completed with all of them."""
    tokens = [logprob(t) for t in TOKENS]
    where = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
    text = {"type": "output_text", "text": "".join(TOKENS), "annotations": [], "logprobs": tokens}
    item = {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed", "content": [text]}
    response = {"id": "resp_1", "object": "response", "created_at": 1, "model": "gpt-x", "status": "completed"}
    usage = {"input_tokens": 5, "output_tokens": len(TOKENS), "total_tokens": 5 + len(TOKENS)}
    if not orjson.loads(request.content).get("stream"):
        return httpx.Response(200, json={**response, "output": [item], "usage": usage})
    opened = {**response, "status": "in_progress", "output": []}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": opened},
        {"type": "response.output_item.added", "output_index": 0, "item": {**item, "content": []}},
        {"type": "response.content_part.added", **where, "part": {**text, "text": "", "logprobs": []}},
        *({"type": "response.output_text.delta", **where, "delta": t, "logprobs": [logprob(t)]} for t in TOKENS),
        {"type": "response.output_text.done", **where, "text": text["text"], "logprobs": tokens},
        {"type": "response.content_part.done", **where, "part": text},
        {"type": "response.output_item.done", "output_index": 0, "item": item},
        {"type": "response.completed", "response": {**response, "output": [item], "usage": usage}},
    ]
    return sse_events([(e["type"], {**e, "sequence_number": n}) for n, e in enumerate(events)])(request)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_a_passed_through_output_text_s_log_probabilities_give_no_token_of_the_key(stream: bool) -> None:
    """A Responses answer passed through: its output text's tokens as the text, in the answer, in the stream's
    deltas (those a key was cut across joined, with their tokens), its `.done` events and the stored response."""
    served = await serve(responses_tokens, GPT, provider=NATIVE_GPT)
    sdk = openai.AsyncOpenAI(base_url="http://gw/v1", api_key=served.key.key, http_client=served.http)
    asked: Any = {"model": "gpt", "input": "Say it.", "include": ["message.output_text.logprobs"]}
    given: list[list[Any]] = []
    if stream:
        async with sdk.responses.stream(**asked) as s:
            events = [event async for event in s]
            final = await s.get_final_response()
        deltas = [event for event in events if event.type == "response.output_text.delta"]
        assert "".join(event.delta for event in deltas) == TOKENS_SHOWN
        given.append([token for event in deltas for token in event.logprobs])
        given += [event.logprobs for event in events if event.type == "response.output_text.done"]
        given += [event.part.logprobs for event in events if event.type == "response.content_part.done"]  # type: ignore[union-attr]
    else:
        final = await sdk.responses.create(**asked)
    stored = await sdk.responses.retrieve(final.id)
    await served.gateway.aclose()
    for response in (final, stored):
        assert response.output_text == TOKENS_SHOWN
        given.append(response.output[0].content[0].logprobs)  # type: ignore[union-attr]
    assert len(given) == (5 if stream else 2)
    for tokens in given:
        assert_tokens_give(tokens, TOKENS_SHOWN)


# --- a key quoted back masked ---------------------------------------------------------------------------------------
# DeepSeek refuses a bad key with its last four characters (`Authentication Fails, Your api key: ****1c3e is invalid`):
# a key's shape needs its `sk-`, and a run of a known key `FRAGMENT_CHARS` long, so neither found them.

DEEPSEEK_KEY = "sk-8f3a9c2e7b1d4f6a9c0e2b4d6f8a1c3e"  # (DeepSeek's shape: `sk-` and 32 hex digits)
REFUSED_KEY = f"Authentication Fails, Your api key: ****{DEEPSEEK_KEY[-4:]} is invalid"
DEEPSEEK = {
    "m": {"deployments": [{"provider": "openai", "model": "deepseek-chat"}], "price": {"input": 1, "output": 2}}
}
ASKED_OF_EACH_API: dict[str, tuple[str, dict[str, Any]]] = {
    "chat": ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}),
    "messages": ("/v1/messages", {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "Hi"}]}),
    "responses": ("/v1/responses", {"model": "m", "input": "Hi"}),
}


def deepseek_refusal(request: httpx.Request) -> httpx.Response:
    error = {"message": REFUSED_KEY, "type": "authentication_error", "param": None, "code": "invalid_request_error"}
    return httpx.Response(401, json={"error": error})


def deepseek_failing_part_way(request: httpx.Request) -> httpx.Response:
    """A stream that opens, then fails in OpenAI's in-stream shape with DeepSeek's words."""
    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "deepseek-chat"}
    opening = {**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}}]}
    failure = {"error": {"message": REFUSED_KEY, "type": "authentication_error"}}

    async def reads() -> Any:  # (the opening in a read of its own: the client's stream begins before the failure)
        for event in (opening, failure):
            yield b"data: " + orjson.dumps(event) + b"\n\n"

    return httpx.Response(200, content=reads(), headers={"content-type": "text/event-stream"})


@pytest.mark.parametrize("when", ["refused", "refused-streamed", "part-way"])
@pytest.mark.parametrize("api", list(ASKED_OF_EACH_API))
async def test_a_key_deepseek_quotes_back_masked_reaches_no_client_and_no_log(
    api: str, when: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The last four characters of the operator's DeepSeek key reached every client of the gateway in the 502 its
    refusal ends as, `upstream returned 401: Authentication Fails, Your api key: ****1c3e is invalid`, whole or in a
    stream's error, on every API (found by review). What a mask leaves of a key is redacted with it, as OpenAI's
    masked form (`sk-abc*****wxyz`) was."""
    upstream = deepseek_failing_part_way if when == "part-way" else deepseek_refusal
    served = await serve(
        upstream,
        DEEPSEEK,
        provider={"type": "deepseek", "api_key": "env:DEEPSEEK_API_KEY", "base_url": "https://api.deepseek.com"},
        environ={"DEEPSEEK_API_KEY": DEEPSEEK_KEY},
    )
    path, asked = ASKED_OF_EACH_API[api]
    answer = await served.post(path, {**asked, "stream": when != "refused"})
    await served.gateway.aclose()
    assert answer.status_code == (200 if when == "part-way" else 502), answer.text
    assert "Authentication Fails, Your api key: [REDACTED] is invalid" in answer.text
    logged = capsys.readouterr()
    for seen in (answer.text, str(answer.headers), logged.out, logged.err):
        assert f"*{DEEPSEEK_KEY[-4:]}" not in seen and f" {DEEPSEEK_KEY[-4:]} " not in seen


# A LiteLLM proxy (an OpenAI-compatible upstream many put in front of their providers) refuses a virtual key it does
# not know, or one revoked or expired, quoting it masked with dots, its last four characters showing, and naming it
# by its unsalted SHA-256, the id its database keeps it under (LiteLLM's words).
LITELLM_KEY = "sk-Zq8xK2mNv4Rt7Yw1Bc3DU-sA"
LITELLM_HASH = hashlib.sha256(LITELLM_KEY.encode()).hexdigest()
LITELLM_REFUSAL = (
    f"Authentication Error, Invalid proxy server token passed. Received API Key = sk-...{LITELLM_KEY[-4:]}, Key Hash "
    f"(Token) ={LITELLM_HASH}. Unable to find token in cache or `LiteLLM_VerificationTokenTable`"
)
BEHIND_LITELLM = {
    "m": {"deployments": [{"provider": "openai", "model": "gpt-4o-mini"}], "price": {"input": 1, "output": 2}}
}


def litellm_refusal(request: httpx.Request) -> httpx.Response:
    error = {"message": LITELLM_REFUSAL, "type": "token_not_found_in_db", "param": "key", "code": "401"}
    return httpx.Response(401, json={"error": error})


@pytest.mark.parametrize("api", list(ASKED_OF_EACH_API))
async def test_a_key_a_litellm_proxy_quotes_back_by_its_tail_and_its_hash_reaches_no_client_and_no_log(
    api: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The 502 a LiteLLM proxy's 401 ends as gave every client the last four characters of the operator's key (a mask
    of dots, `sk-...U-sA`, where only stars were read as one) and its SHA-256, against which any key can be tested
    (found by review). Both are redacted, the proxy's other words relayed."""
    served = await serve(
        litellm_refusal,
        BEHIND_LITELLM,
        provider={"type": "openai", "api_key": "env:OPENAI_API_KEY", "base_url": "http://litellm:4000/v1"},
        environ={"OPENAI_API_KEY": LITELLM_KEY},
    )
    path, asked = ASKED_OF_EACH_API[api]
    answer = await served.post(path, asked)
    await served.gateway.aclose()
    assert answer.status_code == 502, answer.text
    assert "Received API Key = [REDACTED], Key Hash (Token) =[REDACTED]. Unable to find token" in answer.text
    logged = capsys.readouterr()
    for seen in (answer.text, str(answer.headers), logged.out, logged.err):
        assert f"...{LITELLM_KEY[-4:]}" not in seen and LITELLM_HASH[:12] not in seen


# --- the operator's account, named in a provider's error -------------------------------------------------------------
# OpenAI's 429 for a limit of the organisation names it (its words, with an id of OpenAI's shape).

ORGANIZATION = "org-Xq7cL3dP9vT2mB8kR4wZ1sNy"
ORGANIZATION_LIMITED = (
    f"Rate limit reached for gpt-4o in organization {ORGANIZATION} on tokens per min (TPM): Limit 30000, Used 29500, "
    "Requested 1200. Please try again in 1.4s. Visit https://platform.openai.com/account/rate-limits to learn more."
)


def organization_limited(request: httpx.Request) -> httpx.Response:
    error = {"message": ORGANIZATION_LIMITED, "type": "tokens", "param": None, "code": "rate_limit_exceeded"}
    return httpx.Response(429, json={"error": error}, headers={"x-ratelimit-remaining-tokens": "500"})


ON_OPENAI = {"m": {"deployments": [{"provider": "openai", "model": "gpt-4o"}], "price": {"input": 1, "output": 2}}}


@pytest.mark.parametrize("api", list(ASKED_OF_EACH_API))
async def test_openais_rate_limit_gives_clients_its_reason_not_the_operators_organization(api: str) -> None:
    """OpenAI's 429 names the organisation whose limit was reached, the operator's account at OpenAI: relayed whole
    in the 429 the gateway answers, to every client (found by review). The organisation is redacted, the reason and
    the figures kept (an agent may read them)."""
    served = await serve(organization_limited, ON_OPENAI)
    path, asked = ASKED_OF_EACH_API[api]
    answer = await served.post(path, asked)
    await served.gateway.aclose()
    assert answer.status_code == 429, answer.text
    assert ORGANIZATION not in answer.text and ORGANIZATION[4:12] not in answer.text
    assert "in organization org-[REDACTED] on tokens per min (TPM): Limit 30000, Used 29500" in answer.text


# --- an operator's Basic credential, quoted back decoded --------------------------------------------------------------
# A self-hosted upstream behind a proxy that takes Basic auth (`headers: {authorization: env:UPSTREAM_AUTH}`, the value
# `Basic base64(user:password)`): the proxy refuses it quoting what it decoded.

PASSWORD = "Sup3rS3cretPassw0rd"
BASIC = "Basic " + base64.b64encode(f"svc-gateway:{PASSWORD}".encode()).decode()
BEHIND_BASIC_AUTH = {
    "type": "openai",
    "api_key": "env:OPENAI_API_KEY",
    "base_url": "http://up/v1",
    "headers": {"authorization": "env:UPSTREAM_AUTH"},
}


def refuses_decoded(request: httpx.Request) -> httpx.Response:
    decoded = base64.b64decode(request.headers["authorization"].split(" ", 1)[1]).decode()
    return httpx.Response(401, json={"error": {"message": f"invalid credentials {decoded}", "type": "auth_error"}})


@pytest.mark.parametrize(
    ("api", "stream"), [("chat", False), ("chat", True), ("messages", False), ("responses", False)]
)
async def test_a_basic_credential_quoted_back_decoded_reaches_no_client(api: str, stream: bool) -> None:
    """The header's value and its base64 were the only secrets registered of a Basic credential: a proxy's 401 quoting
    the `user:password` it decoded reached every API's client whole in the 502 (found by review). The decoded
    credential and its password are secrets too; the user alone is not (a name, ordinary text)."""
    environ = {**PROVIDER_KEYS, "UPSTREAM_AUTH": BASIC}
    served = await serve(refuses_decoded, ON_OPENAI, provider=BEHIND_BASIC_AUTH, environ=environ)
    path, asked = ASKED_OF_EACH_API[api]
    answer = await served.post(path, {**asked, "stream": True} if stream else asked)
    await served.gateway.aclose()
    assert answer.status_code == 502, answer.text
    assert PASSWORD not in answer.text and "invalid credentials [REDACTED]" in answer.text, answer.text
